"""The 44 causal features computed from hourly OHLCV bars (ARCHITECTURE §2.3).

Every value at row t is computed from rows <= t only (trailing windows, forward recursions), so a feature
can never see the bar whose return an action at t earns. Lookbacks are in bars: the caller (`ohlcv.py`) has
already put the data on a regular hourly grid, filling missing hours with flat bars (open = high = low =
close = the previous close, volume 0). Those bars make zero ranges and zero-volume windows ordinary
events, so every ratio here has a documented neutral value for a zero denominator instead of NaN or inf:

| degenerate case | neutral value |
|---|---|
| bar range high == low | close_position 0.5; upper_shadow, lower_shadow, body_size 0 |
| 14-bar range (stoch), 24-bar range (range_position) zero | stoch_k 50 (so stoch_d 50), range_position 0.5 |
| no gains and no losses in 14 bars | rsi_14 50, rsi_norm 0 |
| flat close over the window | zscore_24, zscore_168, mean_rev_score 0 (Bollinger: both dists and bb_width 0) |
| zero std of returns over 24 bars | vol_ratio 1; skewness_24, kurtosis_24 0; hurst_approx 0.5 |
| zero std of returns or of lagged returns over 48 bars | autocorr_1, autocorr_4 0 |
| zero volume over the window (20 or 50 bars) | volume_ma_ratio 1; volume_trend, obv_norm, obv_slope, vwap_dev 0 |
| constant volume over 20 bars (zero included) | volume_zscore 0 |

A window whose values are all equal is detected exactly (rolling max == min) and given an exact mean and a
zero std, so runs of filled bars produce exactly these values rather than rounding residue. Elsewhere "zero"
means below a tolerance relative to the quantity's own scale (e.g. std of close <= 1e-9 x its mean, std of a
return window <= 1e-8 x its mean |return|), so the choice does not change when prices or volumes are rescaled.

Features are scale-free: multiplying every price by 30, or every volume by 7, leaves all 44 unchanged (to
float tolerance), because BTC's price level moves by that much across the years a model trains and trades
on. Where the seed's definition carried a dollar or coin level, it is divided by a trailing level here:
- `atr_14` = SMA14(true range) / mean close over 168 bars. It is deliberately not `atr_norm` (ATR / the
  current close): the two differ by close / its weekly mean, a slow trend signal.
- `obv_slope` = OBV.diff(10) / 10 / mean volume over 50 bars.
- `obv_norm` = (OBV - MA50(OBV)) / volume summed over 50 bars. The seed divided by |MA50(OBV)|, but OBV is a
  running sum of signed volumes that starts wherever the data starts and crosses zero, where that ratio
  explodes; the 50-bar volume sum is positive, has the same units and bounds the feature to [-1, 1].

Parity with the seed (`../shared/data/seed_reference_2018_2019.csv.gz`, its pipeline run unchanged on the
bundled bars; compared on real bars with no outage in the previous 200 hours, 2018-2019). 35 of the 44
features are identical to 1e-4 relative (the reference is stored to 9 significant digits). The others
differ on purpose:

| feature | seed | here | why |
|---|---|---|---|
| `atr_14` | ATR in dollars (median 62.5) | ATR / mean close over 168 bars (0.0088) | scale-free (above) |
| `obv_slope` | OBV.diff(10)/10 in coins (median 299) | ... / mean volume over 50 bars | scale-free (above) |
| `obv_norm` | (OBV - MA50) / abs(MA50): corr 0.66 with ours | / 50-bar volume sum | bounded (above) |
| `autocorr_1`, `autocorr_4` | pandas `Series.autocorr` inside the 48-bar window (47 or 44 pairs): corr 0.98 / 0.94 | 48 pairs r[t], r[t-lag] (lags may reach before the window) | every window the same number of pairs, so the estimate's noise does not depend on the lag |
| `high_low_ratio` | (high - low) / close | high / low - 1 (median 0.4% apart) | depends on the bar's own range only, not on where it closed |
| `vwap_dev` | (close - VWAP) / close | (close - VWAP) / VWAP (median 0.7% apart) | the deviation from the reference price in units of that price |
| `gap_up`, `gap_down` | gap / close | gap / previous close (within 1% in 90% of bars) | the textbook gap: the move from the price the gap starts at |

And one difference in the input: features run over the hourly grid, filled bars included, so every
lookback is measured in hours (ARCHITECTURE §2.1); the seed counted rows, so across an exchange outage its
windows skipped the missing hours. The values differ only in the windows that hold a filled bar (90 missing
hours in 2018-2019). The regime detector, by contrast, runs over the real bars only (`regime.py`), as the
seed did: its labels choose the HOLD band a policy is scored against, and flat filled bars in its windows
mislabelled 179 bars after the 2018-02-08 outage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from himari_ray.types import BARS_PER_YEAR

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "returns": ("ret_1", "ret_4", "ret_12", "ret_24", "ret_48", "ret_168"),
    "momentum": ("rsi_14", "rsi_norm", "macd", "macd_signal", "macd_hist", "stoch_k", "stoch_d", "roc_12"),
    "volatility": (
        "atr_14",
        "atr_norm",
        "bb_upper_dist",
        "bb_lower_dist",
        "bb_width",
        "vol_12h",
        "vol_24h",
        "vol_ratio",
    ),
    "volume": ("obv_norm", "obv_slope", "vwap_dev", "volume_ma_ratio", "volume_trend", "volume_zscore"),
    "candle": (
        "high_low_ratio",
        "close_position",
        "gap_up",
        "gap_down",
        "upper_shadow",
        "lower_shadow",
        "body_size",
        "range_position",
    ),
    "statistical": (
        "skewness_24",
        "kurtosis_24",
        "autocorr_1",
        "autocorr_4",
        "hurst_approx",
        "mean_rev_score",
        "zscore_24",
        "zscore_168",
    ),
}

#: The 44 feature names, in ARCHITECTURE §2.3 order (the column order of `compute_features`).
FEATURE_NAMES: tuple[str, ...] = tuple(name for group in FEATURE_GROUPS.values() for name in group)

#: Warm-up: rows before this index may hold NaN; from it on, every feature is finite for valid input.
#: Set by ret_168 (needs the close 168 bars back); atr_14 and zscore_168 need 168 closes (index 167).
LONGEST_LOOKBACK = 168

OHLCV_INPUT_COLUMNS = ("open", "high", "low", "close", "volume")

#: Relative tolerance below which a price or volume spread counts as zero (far below any exchange tick).
_REL_TOL = 1e-9
#: Absolute tolerance on a std of 1-bar returns (dimensionless) below which it counts as zero.
_RET_TOL = 1e-12


def _ratio(num, den, neutral: float, tol=0.0) -> np.ndarray:
    """num / den where |den| > tol, else `neutral`; NaN anywhere in the inputs (warm-up) stays NaN.

    `tol` may be an array (a per-row scale) so the degenerate test is relative, hence scale-free.
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), den.shape)
    with np.errstate(invalid="ignore"):
        ok = np.abs(den) > tol
    out = np.full(num.shape, neutral, dtype=np.float64)
    np.divide(num, den, out=out, where=ok)
    out[np.isnan(num) | np.isnan(den) | np.isnan(tol)] = np.nan
    return out


def _rolling_mean_std(x: pd.Series, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean and sample std, exact (mean = x, std = 0) on windows whose values are all equal.

    pandas' online rolling algorithms leave residues of order 1e-9 x the level on a flat window that follows
    moves (e.g. a std of 2e-5 dollars on a flat BTC stretch), which would turn a neutral z-score into noise.
    Rolling max == min detects a flat window exactly, so filled bars give exactly the neutral values.
    """
    roll = x.rolling(window)
    flat = (roll.max() == roll.min()).to_numpy()
    mean = np.where(flat, x.to_numpy(), roll.mean().to_numpy())
    std = np.where(flat, 0.0, roll.std().to_numpy())
    return mean, std


def _rolling_mean(x: pd.Series, window: int) -> np.ndarray:
    return _rolling_mean_std(x, window)[0]


def _zscore(x: pd.Series, window: int) -> np.ndarray:
    """Trailing z-score of a price level; 0 when the window is flat (or its std <= 1e-9 x its mean)."""
    mean, std = _rolling_mean_std(x, window)
    return _ratio(x.to_numpy() - mean, std, 0.0, tol=_REL_TOL * np.abs(mean))


def _windows(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing windows as a (n, window) view; rows before the first full window are all NaN.

    Row t holds x[t-window+1 .. t], so any statistic of row t is causal.
    """
    if len(x) == 0:
        return np.empty((0, window))
    padded = np.concatenate([np.full(window - 1, np.nan), x])
    return sliding_window_view(padded, window)


def _moments(r: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row centred deviations, population variance and a 'degenerate' mask for trailing return windows.

    A window counts as flat when its std is at most 1e-8 x its mean |r| (or exactly 0): a geometric ramp's
    returns are equal up to float noise, and the shape statistics of that noise mean nothing.
    """
    w = _windows(r, window)
    with np.errstate(invalid="ignore"):
        dev = w - w.mean(axis=1, keepdims=True)
        m2 = (dev**2).mean(axis=1)
        flat = np.sqrt(m2) <= 1e-8 * np.abs(w).mean(axis=1)
    return dev, m2, flat


def _skew_kurt(r: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected rolling skewness and excess kurtosis (the estimators pandas' rolling skew/kurt use).

    Two-pass per window on a sliding view: exact, causal and immune to the cancellation of online sums.
    """
    n = float(window)
    dev, m2, flat = _moments(r, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        m3 = (dev**3).mean(axis=1)
        m4 = (dev**4).mean(axis=1)
        skew = np.sqrt(n * (n - 1)) / (n - 2) * m3 / m2**1.5
        kurt = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * m4 / m2**2 - 3 * (n - 1))
    nan = np.isnan(m2)
    skew = np.where(flat, 0.0, skew)
    kurt = np.where(flat, 0.0, kurt)
    skew[nan] = np.nan
    kurt[nan] = np.nan
    return skew, kurt


def _autocorr(r: np.ndarray, lag: int, window: int) -> np.ndarray:
    """Rolling correlation of r[t] with r[t-lag] over the last `window` pairs; 0 if either side is flat."""
    lagged = np.concatenate([np.full(lag, np.nan), r])[: len(r)]
    cur = _windows(r, window)
    past = _windows(lagged, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        dc = cur - cur.mean(axis=1, keepdims=True)
        dp = past - past.mean(axis=1, keepdims=True)
        sc = np.sqrt((dc**2).mean(axis=1))
        sp = np.sqrt((dp**2).mean(axis=1))
        flat = (sc <= 1e-8 * np.abs(cur).mean(axis=1)) | (sp <= 1e-8 * np.abs(past).mean(axis=1))
        corr = (dc * dp).mean(axis=1) / (sc * sp)
    out = np.where(flat, 0.0, np.clip(corr, -1.0, 1.0))
    out[np.isnan(sc) | np.isnan(sp)] = np.nan
    return out


def _hurst(r: np.ndarray, window: int) -> np.ndarray:
    """Rescaled-range Hurst estimate on one window: log(R/S) / log(window); 0.5 (random walk) when flat.

    R is the range of the cumulative mean-adjusted returns, S their population std (classic R/S).
    """
    dev, m2, flat = _moments(r, window)
    cum = np.cumsum(dev, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rng = cum.max(axis=1) - cum.min(axis=1)
        h = np.log(rng / np.sqrt(m2)) / np.log(window)
    out = np.where(flat | ~(rng > 0), 0.5, h)
    out[np.isnan(m2)] = np.nan
    return out


def compute_features(ohlcv: pd.DataFrame) -> pd.DataFrame:
    """The 44 features of ARCHITECTURE §2.3 for every bar, as float64 columns `FEATURE_NAMES` on `ohlcv`'s index.

    `ohlcv` needs float columns open, high, low, close, volume on a regular hourly grid (rows are used by
    position; the index is only carried over). Rows before `LONGEST_LOOKBACK` are warm-up and may be NaN.
    """
    missing = [c for c in OHLCV_INPUT_COLUMNS if c not in ohlcv.columns]
    if missing:
        raise ValueError(f"compute_features needs columns {OHLCV_INPUT_COLUMNS}; missing {missing}")
    o, h, lo, c, v = (ohlcv[col].to_numpy(dtype=np.float64) for col in OHLCV_INPUT_COLUMNS)
    close, high, low, vol = pd.Series(c), pd.Series(h), pd.Series(lo), pd.Series(v)
    prev_close = close.shift(1).to_numpy()
    ret1 = close.pct_change(1)
    r = ret1.to_numpy()
    f: dict[str, np.ndarray] = {}

    # Returns.
    for k in (1, 4, 12, 24, 48, 168):
        f[f"ret_{k}"] = close.pct_change(k).to_numpy()

    # Momentum. RSI as 100·G/(G+L) is the textbook 100 - 100/(1+G/L), with L = 0 -> 100 and G = L = 0 -> 50.
    delta = close.diff()
    avg_gain = _rolling_mean(delta.clip(lower=0), 14)
    avg_loss = _rolling_mean((-delta).clip(lower=0), 14)
    f["rsi_14"] = _ratio(100.0 * avg_gain, avg_gain + avg_loss, 50.0, tol=1e-12 * c)
    f["rsi_norm"] = (f["rsi_14"] - 50.0) / 50.0
    ema12 = close.ewm(span=12, adjust=False).mean().to_numpy()
    ema26 = close.ewm(span=26, adjust=False).mean().to_numpy()
    macd = (ema12 - ema26) / c * 100.0
    f["macd"] = macd
    f["macd_signal"] = pd.Series(macd).ewm(span=9, adjust=False).mean().to_numpy()
    f["macd_hist"] = macd - f["macd_signal"]
    low14 = low.rolling(14).min().to_numpy()
    high14 = high.rolling(14).max().to_numpy()
    f["stoch_k"] = _ratio(100.0 * (c - low14), high14 - low14, 50.0)
    f["stoch_d"] = _rolling_mean(pd.Series(f["stoch_k"]), 3)
    f["roc_12"] = f["ret_12"] * 100.0

    # Volatility.
    true_range = np.fmax(h - lo, np.fmax(np.abs(h - prev_close), np.abs(lo - prev_close)))  # row 0: h - l
    atr = _rolling_mean(pd.Series(true_range), 14)
    f["atr_14"] = atr / _rolling_mean(close, 168)
    f["atr_norm"] = atr / c
    ma20, sd20 = _rolling_mean_std(close, 20)
    upper, lower = ma20 + 2.0 * sd20, ma20 - 2.0 * sd20
    f["bb_upper_dist"] = (c - upper) / c
    f["bb_lower_dist"] = (c - lower) / c
    f["bb_width"] = (upper - lower) / ma20
    vol12 = _rolling_mean_std(ret1, 12)[1] * np.sqrt(BARS_PER_YEAR)
    vol24 = _rolling_mean_std(ret1, 24)[1] * np.sqrt(BARS_PER_YEAR)
    f["vol_12h"] = vol12
    f["vol_24h"] = vol24
    f["vol_ratio"] = _ratio(vol12, vol24, 1.0, tol=_RET_TOL)

    # Volume.
    obv = pd.Series(np.nan_to_num(np.sign(delta.to_numpy())) * v).cumsum()
    vma50 = _rolling_mean(vol, 50)
    vsum50 = vma50 * 50.0
    f["obv_norm"] = _ratio(obv.to_numpy() - _rolling_mean(obv, 50), vsum50, 0.0)
    f["obv_slope"] = _ratio(obv.diff(10).to_numpy() / 10.0, vma50, 0.0)
    typical = (h + lo + c) / 3.0
    tpv20 = _rolling_mean(pd.Series(typical * v), 20) * 20.0
    vma20, vsd20 = _rolling_mean_std(vol, 20)
    vsum20 = vma20 * 20.0
    # (close - VWAP) / VWAP with VWAP = tpv20 / vsum20, written without the intermediate 0/0.
    f["vwap_dev"] = _ratio(c * vsum20 - tpv20, tpv20, 0.0)
    f["volume_ma_ratio"] = _ratio(v, vma20, 1.0)
    vma10 = _rolling_mean(vol, 10)
    f["volume_trend"] = _ratio(vma10 - vma50, vma50, 0.0)
    f["volume_zscore"] = _ratio(v - vma20, vsd20, 0.0, tol=_REL_TOL * vma20)

    # Candle. Shadows and body are fractions of the bar's own range (they sum to 1 when it is not zero).
    bar_range = h - lo
    f["high_low_ratio"] = h / lo - 1.0
    f["close_position"] = _ratio(c - lo, bar_range, 0.5)
    f["gap_up"] = np.maximum(o - prev_close, 0.0) / prev_close
    f["gap_down"] = np.maximum(prev_close - o, 0.0) / prev_close
    f["upper_shadow"] = _ratio(h - np.maximum(o, c), bar_range, 0.0)
    f["lower_shadow"] = _ratio(np.minimum(o, c) - lo, bar_range, 0.0)
    f["body_size"] = _ratio(np.abs(c - o), bar_range, 0.0)
    low24 = low.rolling(24).min().to_numpy()
    high24 = high.rolling(24).max().to_numpy()
    f["range_position"] = _ratio(c - low24, high24 - low24, 0.5)

    # Statistical (returns windows as sliding views: exact two-pass moments, no rolling.apply).
    f["skewness_24"], f["kurtosis_24"] = _skew_kurt(r, 24)
    f["autocorr_1"] = _autocorr(r, 1, 48)
    f["autocorr_4"] = _autocorr(r, 4, 48)
    f["hurst_approx"] = _hurst(r, 24)
    f["mean_rev_score"] = _zscore(close, 50)
    f["zscore_24"] = _zscore(close, 24)
    f["zscore_168"] = _zscore(close, 168)

    return pd.DataFrame({name: np.asarray(f[name], dtype=np.float64) for name in FEATURE_NAMES}, index=ohlcv.index)
