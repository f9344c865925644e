"""The reward's normalisation statistics, per `RewardConfig.norm_stats`: the return scale sigma known at each
decision bar (the train split's std, or a trailing std over bars <= t) and E = mean |z| over the train split."""

from __future__ import annotations

import numpy as np

from himari_ray.env.rewards import RewardConfig


def trailing_sigma(returns: np.ndarray, window: int, fallback: float) -> np.ndarray:
    """Std of returns[t-window+1 .. t] for each t: known at bar t. Early bars use `fallback`."""
    r = np.asarray(returns, dtype=np.float64)
    out = np.full(len(r), fallback, dtype=np.float64)
    if len(r) >= window:
        win = np.lib.stride_tricks.sliding_window_view(r, window)
        out[window - 1 :] = win.std(axis=1)
    return np.maximum(out, 1e-8)


def decision_sigma(returns: np.ndarray, train_returns: np.ndarray, cfg: RewardConfig) -> np.ndarray:
    """The return scale known at each decision bar of a split, per `cfg.norm_stats`."""
    train_sigma = float(np.std(train_returns)) + 1e-12
    if cfg.norm_stats == "train":
        return np.full(len(returns), train_sigma)
    return trailing_sigma(returns, cfg.trailing_window, fallback=train_sigma)


def expected_abs_z(train_returns: np.ndarray, cfg: RewardConfig) -> float:
    """E = mean |r[t+1] / sigma[t]| over the train split only."""
    r = np.asarray(train_returns, dtype=np.float64)
    sigma = decision_sigma(r, r, cfg)
    return float(np.mean(np.abs(r[1:] / sigma[:-1])))
