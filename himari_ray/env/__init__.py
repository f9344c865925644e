"""Layer 2, environment: the reward families, the trading env, the scoring of actions and the reward-landscape preflight.

Pure numpy and gymnasium; no Ray.
"""
