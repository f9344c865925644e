"""The seeded synthetic market (ARCHITECTURE §2.2): ground truth for tests and benchmarks.

A Markov chain over the four regimes with the seed's shares and realistic persistence; regime-specific
volatility and Student-t tails; and weak but real predictability of the next return (a persistent latent
signal seen through noise, and a one-bar reversal), tuned so a linear predictor calls the next bar's
direction ~53-54% of the time out of sample, as honest features do on real BTC hourly bars.

Regime ids are the chain's state of bar t: the state that generated bar t's return, known once bar t closed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from himari_ray.types import N_REGIMES, Regime

#: Stationary regime shares the chain is built to reproduce (the seed's detector on BTC 2020-2024).
SYNTH_REGIME_SHARES = np.array([0.453, 0.262, 0.169, 0.116])
#: Hourly return volatility per regime (LOW_VOL, TRENDING, HIGH_VOL, CRISIS): BTC-like magnitudes.
SYNTH_REGIME_VOL = np.array([0.004, 0.007, 0.011, 0.016])
#: Mean bars between regime switches; one switch rate for all regimes keeps the shares exact.
SYNTH_MEAN_DWELL = 48.0
#: Drift during a TRENDING spell, in units of that regime's volatility (sign drawn per spell).
SYNTH_TREND_DRIFT = 0.06
#: Weight of the latent signal s_t (persistent, observed only with noise) in the next return.
SYNTH_SIGNAL_WEIGHT = 0.07
#: One-bar reversal: weight of -z_t in the next return (the main source of real BTC predictability).
SYNTH_REVERSAL = 0.05
#: Degrees of freedom of the Student-t innovations (fat tails).
SYNTH_TAIL_DF = 3.0
#: Longest feature lookback; bars before it are warm-up and dropped.
SYNTH_WARMUP = 48

SYNTH_FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",
    "ret_4",
    "ret_12",
    "ret_24",
    "abs_ret_1",
    "vol_12h",
    "vol_24h",
    "vol_ratio",
    "ema_ret_12",
    "zscore_24",
    "signal_obs",
    "noise_0",
)


def _regime_path(n: int, rng: np.random.Generator) -> np.ndarray:
    """Markov chain P = (1-λ)I + λ·1πᵀ: stationary distribution exactly π, persistence from λ."""
    lam = 1.0 / SYNTH_MEAN_DWELL
    switch = rng.random(n) < lam
    draws = rng.choice(N_REGIMES, size=n, p=SYNTH_REGIME_SHARES)
    regimes = np.empty(n, dtype=np.int64)
    current = int(draws[0])
    for t in range(n):
        if switch[t]:
            current = int(draws[t])  # may redraw the same regime: that is what keeps π stationary
        regimes[t] = current
    return regimes


def synthetic_features(
    prices: np.ndarray, returns: np.ndarray, signal_obs: np.ndarray, noise: np.ndarray
) -> pd.DataFrame:
    """The synthetic market's features: trailing windows only, so row t depends on bars <= t."""
    close = pd.Series(prices)
    ret = pd.Series(returns)
    vol12 = ret.rolling(12).std()
    vol24 = ret.rolling(24).std()
    ma24 = close.rolling(24).mean()
    sd24 = close.rolling(24).std()
    return pd.DataFrame(
        {
            "ret_1": ret,
            "ret_4": close.pct_change(4),
            "ret_12": close.pct_change(12),
            "ret_24": close.pct_change(24),
            "abs_ret_1": ret.abs(),
            "vol_12h": vol12 * np.sqrt(8760),
            "vol_24h": vol24 * np.sqrt(8760),
            "vol_ratio": vol12 / vol24,
            "ema_ret_12": ret.ewm(span=12, adjust=False).mean(),
            "zscore_24": (close - ma24) / sd24,
            "signal_obs": signal_obs,
            "noise_0": noise,
        }
    )[list(SYNTH_FEATURE_NAMES)]


def synthetic_frame(n_bars: int, seed: int) -> pd.DataFrame:
    """A seeded regime-switching market with fat tails and weak, real predictability.

    Return of bar t+1 (the one an action at t earns), with k the regime of bar t+1:
        r[t+1] = vol[k] * (drift[t+1] + w_s * s[t] - w_r * z[t] + c * eps[t+1])
    where s is a persistent latent signal, z[t] = r[t] / vol[k(t)], eps Student-t (unit variance) and c
    keeps the variance at vol[k]². Features at t are computed from bars <= t only; `signal_obs` is s[t] seen
    through noise, so it is informative but never certain.
    """
    rng = np.random.default_rng(seed)
    n = n_bars + SYNTH_WARMUP
    regimes = _regime_path(n, rng)

    # Trend direction: one sign per TRENDING spell.
    spell_start = np.r_[True, regimes[1:] != regimes[:-1]]
    spell_sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    sign = spell_sign[np.maximum.accumulate(np.where(spell_start, np.arange(n), 0))]
    drift = np.where(regimes == Regime.TRENDING, SYNTH_TREND_DRIFT * sign, 0.0)

    # Latent signal: AR(1) with unit stationary variance.
    phi = 0.9
    shocks = rng.standard_normal(n) * np.sqrt(1 - phi**2)
    signal = np.empty(n)
    signal[0] = rng.standard_normal()
    for t in range(1, n):
        signal[t] = phi * signal[t - 1] + shocks[t]

    df = SYNTH_TAIL_DF
    eps = rng.standard_t(df, size=n) / np.sqrt(df / (df - 2.0))
    c = np.sqrt(1.0 - SYNTH_SIGNAL_WEIGHT**2 - SYNTH_REVERSAL**2)
    vol = SYNTH_REGIME_VOL[regimes]
    returns = np.zeros(n)
    z_prev = 0.0
    for t in range(1, n):
        zt = drift[t] + SYNTH_SIGNAL_WEIGHT * signal[t - 1] - SYNTH_REVERSAL * z_prev + c * eps[t]
        returns[t] = np.clip(vol[t] * zt, -0.5, 0.5)
        z_prev = returns[t] / vol[t]
    prices = 10_000.0 * np.cumprod(1.0 + returns)

    feats = synthetic_features(prices, returns, signal + 0.7 * rng.standard_normal(n), rng.standard_normal(n))
    # Confidence: how settled the regime has been over the last 12 bars (causal), mapped into [0.5, 0.95].
    same = pd.Series((regimes[1:] == regimes[:-1]).astype(float)).rolling(12, min_periods=1).mean()
    confidence = 0.5 + 0.45 * np.r_[0.0, same.to_numpy()]

    timestamps = pd.date_range("2020-01-01", periods=n, freq="h", tz="UTC")
    frame = feats.assign(
        regime_id=regimes,
        regime_confidence=confidence,
        close=prices,
        ret=returns,
        timestamp=timestamps.as_unit("ns").asi8,
    )
    return frame.iloc[SYNTH_WARMUP:].reset_index(drop=True)
