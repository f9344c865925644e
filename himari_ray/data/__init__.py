"""Layer 1, data: OHLCV import, the causal features, regimes and denoiser, datasets on disk.

Nothing here knows about environments, models, Ray or searches.
"""
