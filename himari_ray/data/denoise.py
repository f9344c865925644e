"""Causal Kalman denoising of the feature columns (ARCHITECTURE §2.5).

Each feature is modelled as a local level (a random walk) seen through white measurement noise:

    level[t] = level[t-1] + w[t],   w ~ N(0, q)
    x[t]     = level[t] + v[t],     v ~ N(0, r)

and `kalman_filter` returns the *filtered* level E[level[t] | x[0..t]], never a smoothed one, so the output
at bar t uses bars <= t only. With q and r fixed, the error variance P converges to the steady state of the
Riccati recursion, prior variance P = (q + sqrt(q² + 4qr)) / 2 and gain K = P / (P + r), after which the
filter is an exponential moving average with weight K. The seed's "EKF" let its process noise grow without
bound, so its gain went to 1 and its output equalled its input; here P stays bounded by construction.

`denoise_features` expresses q and r in units of each feature's variance over the train split (so one
setting fits features of any scale, and val/test rows never influence it). Note that, with the first
observation taken as the initial level (P = r), the filtered output depends on the ratio q / r only:
the per-feature scaling makes the two numbers interpretable, it does not change the answer.
At the defaults q = 0.05, r = 1 the steady-state gain is 0.2: white noise variance drops ninefold
(K / (2 - K)) for a lag of about (1 - K) / K = 4 bars on a slow trend.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from himari_ray.types import StrictModel


class KalmanConfig(StrictModel):
    """Whether and how strongly the features are denoised before the model sees them."""

    enabled: bool = Field(False, description="Apply the causal Kalman filter to every feature column.")
    q: float = Field(
        0.05,
        gt=0,
        allow_inf_nan=False,
        description="Process-noise variance per bar, as a multiple of each feature's train-split variance.",
    )
    r: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="Measurement-noise variance, as a multiple of each feature's train-split variance.",
    )


def steady_state_gain(q: float | np.ndarray, r: float | np.ndarray) -> np.ndarray:
    """Kalman gain the local-level filter converges to: K = P / (P + r), P = (q + sqrt(q² + 4qr)) / 2.

    It depends on q / r only: K -> 1 (no smoothing) as q / r grows, K -> 0 (a flat line) as it shrinks.
    """
    q = np.asarray(q, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    p = (q + np.sqrt(q * q + 4.0 * q * r)) / 2.0
    return p / (p + r)


def kalman_filter(
    x: np.ndarray, q: float | np.ndarray, r: float | np.ndarray, *, return_variance: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Local-level Kalman filter, per column of a 1-D (n,) or 2-D (n, F) array; causal (filtering only).

    `q` and `r` are absolute variances, scalars or one per column, all > 0. Each column starts at its first
    finite value (level = that value, P = r); NaN rows before it (feature warm-up) come back as NaN. A NaN
    after the start is a missing observation: the output there is NaN, and the filter only predicts (P grows
    by q) until the next finite value. Vectorised across columns, one step per row.

    With `return_variance`, also returns the posterior error variance P per row and column (NaN before the
    start), which converges to the bounded steady state of `steady_state_gain`.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"kalman_filter expects a 1-D or 2-D array, got shape {arr.shape}")
    cols = arr[:, None] if arr.ndim == 1 else arr
    n, f = cols.shape
    q_arr = np.broadcast_to(np.asarray(q, dtype=np.float64), (f,)).copy()
    r_arr = np.broadcast_to(np.asarray(r, dtype=np.float64), (f,)).copy()
    if not (np.all(np.isfinite(q_arr)) and np.all(q_arr > 0) and np.all(np.isfinite(r_arr)) and np.all(r_arr > 0)):
        raise ValueError("kalman_filter needs finite q > 0 and r > 0")

    out = np.full((n, f), np.nan)
    var = np.full((n, f), np.nan)
    level = np.zeros(f)
    p = np.zeros(f)
    started = np.zeros(f, dtype=bool)
    for t in range(n):
        obs = cols[t]
        seen = np.isfinite(obs)
        p_prior = p + q_arr
        gain = p_prior / (p_prior + r_arr)
        step = seen & started
        first = seen & ~started
        level = np.where(step, level + gain * (obs - level), level)
        level = np.where(first, obs, level)
        # Posterior variance K·r (= (1-K)·P_prior, without the cancellation); a missed row only predicts.
        p = np.where(step, gain * r_arr, np.where(first, r_arr, np.where(started, p_prior, p)))
        started |= seen
        out[t] = np.where(seen, level, np.nan)
        var[t] = np.where(started, p, np.nan)

    out = out.reshape(arr.shape)
    if return_variance:
        return out, var.reshape(arr.shape)
    return out


def _train_slice(train_rows: slice | int) -> slice:
    return train_rows if isinstance(train_rows, slice) else slice(0, int(train_rows))


def noise_variances(features: np.ndarray, train_rows: slice | int, cfg: KalmanConfig) -> tuple[np.ndarray, np.ndarray]:
    """Absolute (q, r) per column: cfg.q and cfg.r times the column's variance over the train rows only.

    `train_rows` is a slice of rows, or an int n meaning the first n rows. NaN (warm-up) rows are ignored;
    a column that is constant or all NaN on train gets variance 1 (only q / r matters to the output).
    """
    x = np.asarray(features, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    train = x[_train_slice(train_rows)]
    finite = np.isfinite(train)
    count = finite.sum(axis=0)
    filled = np.where(finite, train, 0.0)
    mean = filled.sum(axis=0) / np.maximum(count, 1)
    variance = np.where(finite, (train - mean) ** 2, 0.0).sum(axis=0) / np.maximum(count, 1)
    variance = np.where((count > 1) & (variance > 0) & np.isfinite(variance), variance, 1.0)
    return cfg.q * variance, cfg.r * variance


def denoise_features(features: np.ndarray, train_rows: slice | int, cfg: KalmanConfig) -> np.ndarray:
    """Kalman-filtered copy of an (n, F) feature array, as float64; an unchanged copy when not enabled.

    q and r are scaled by each column's train-split variance (`noise_variances`), so val and test rows
    never influence the filter's settings; the filter itself is causal, so they never influence the past.
    """
    x = np.array(features, dtype=np.float64)
    if not cfg.enabled:
        return x
    q, r = noise_variances(x, train_rows, cfg)
    return np.asarray(kalman_filter(x, q, r), dtype=np.float64)
