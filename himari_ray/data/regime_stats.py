"""Trailing statistics of returns that the regime detector reads at bar t: volatility, its percentile and trend,
and trend strength. Each row depends on its own trailing window only (bars <= t)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from himari_ray.types import BARS_PER_YEAR

#: A window whose return std is below this is treated as flat (std 0 → trend_strength 0).
_STD_FLOOR = 1e-12


def _trailing(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing windows of x, one per row from `window - 1` on (a view, no copy)."""
    return sliding_window_view(x, window)


def rolling_vol(returns: np.ndarray, window: int) -> np.ndarray:
    """Annualised population std (ddof=0) of the last `window` returns; NaN for the first window - 1 rows.

    Computed per window (two-pass) rather than with an online update, so each row is exact and depends only on
    its own window.
    """
    r = np.asarray(returns, dtype=np.float64)
    out = np.full(len(r), np.nan)
    if len(r) >= window:
        out[window - 1 :] = _trailing(r, window).std(axis=1, ddof=0) * np.sqrt(BARS_PER_YEAR)
    return out


def vol_percentile(vol: np.ndarray, window: int) -> np.ndarray:
    """Share of the last `window` vol values (including the current one) strictly below the current one.

    A rolling min-rank counts 1 + the values strictly below, so the share is (rank - 1) / window; it is NaN
    until `window` defined vols exist. The largest possible value is (window - 1) / window.
    """
    rank = pd.Series(np.asarray(vol, dtype=np.float64)).rolling(window, min_periods=window).rank(method="min")
    return ((rank - 1.0) / window).to_numpy(np.float64)


def trend_strength(returns: np.ndarray, window: int) -> np.ndarray:
    """|sum r| / (std(r) * sqrt(window)) * consistency over the last `window` returns, capped at 1.

    The first factor is the t-statistic of the mean return; consistency (share of bars whose return has the
    sign of the window's sum) discounts trends carried by a few large bars. A flat window (std 0) scores 0.
    """
    r = np.asarray(returns, dtype=np.float64)
    out = np.full(len(r), np.nan)
    if len(r) < window:
        return out
    w = _trailing(r, window)
    total = w.sum(axis=1)
    std = w.std(axis=1, ddof=0)
    direction = np.sign(total)
    consistency = (np.sign(w) == direction[:, None]).mean(axis=1)
    flat = std < _STD_FLOOR
    tstat = np.abs(total) / (np.where(flat, 1.0, std) * np.sqrt(window))
    out[window - 1 :] = np.where(flat, 0.0, np.minimum(1.0, tstat * consistency))
    return out


def vol_trend(vol: np.ndarray, window: int, recent: int) -> np.ndarray:
    """Mean vol of the last `recent` bars / mean vol of the older `window - recent` bars of the window - 1.

    Positive when volatility is rising. A zero baseline gives +inf (rising from nothing) or 0 (still nothing).
    """
    v = np.asarray(vol, dtype=np.float64)
    out = np.full(len(v), np.nan)
    if len(v) < window:
        return out
    w = _trailing(v, window)
    new = w[:, -recent:].mean(axis=1)
    old = w[:, :-recent].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(old > 0, new / np.where(old > 0, old, 1.0) - 1.0, np.where(new > 0, np.inf, 0.0))
    out[window - 1 :] = np.where(np.isnan(old) | np.isnan(new), np.nan, ratio)
    return out
