"""The 44 causal features (ARCHITECTURE §2.3): names and contract, pandas' rolling moments, bounded ranges,
neutral values on flat bars, causality, scale, real bars. Hand-computed values are `test_features_by_hand.py`'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from himari_ray.data.features import FEATURE_GROUPS, FEATURE_NAMES, LONGEST_LOOKBACK, compute_features
from tests.features_kit import SQRT_YEAR, frame

BTC_SAMPLE = Path("/work/shared/data/btc_usdt_1h_2018_2019.csv")


def random_walk_ohlcv(n: int, seed: int = 0) -> pd.DataFrame:
    """Fat-tailed BTC-like hourly bars with consistent OHLC and lognormal volume."""
    rng = np.random.default_rng(seed)
    close = 10_000.0 * np.cumprod(1.0 + 0.006 * rng.standard_t(3, n))
    open_ = np.r_[close[0], close[:-1]] * (1.0 + rng.normal(0.0, 0.0005, n))
    high = np.maximum(open_, close) * (1.0 + np.abs(rng.normal(0.0, 0.003, n)))
    low = np.minimum(open_, close) * (1.0 - np.abs(rng.normal(0.0, 0.003, n)))
    return frame(close, open_, high, low, rng.lognormal(3.0, 1.0, n))


def fill_flat(df: pd.DataFrame, missing: np.ndarray) -> pd.DataFrame:
    """What the importer does to missing hours: open = high = low = close = last close, volume 0."""
    out = df.copy()
    close = out["close"].mask(missing).ffill()
    for col in ("open", "high", "low", "close"):
        out.loc[missing, col] = close[missing]
    out.loc[missing, "volume"] = 0.0
    return out


#: What every feature must be on a long run of identical flat bars (after warm-up): the neutral values.
FLAT_VALUES = {
    **{name: 0.0 for name in FEATURE_GROUPS["returns"]},
    "rsi_14": 50.0,
    "rsi_norm": 0.0,
    "macd": 0.0,
    "macd_signal": 0.0,
    "macd_hist": 0.0,
    "stoch_k": 50.0,
    "stoch_d": 50.0,
    "roc_12": 0.0,
    "atr_14": 0.0,
    "atr_norm": 0.0,
    "bb_upper_dist": 0.0,
    "bb_lower_dist": 0.0,
    "bb_width": 0.0,
    "vol_12h": 0.0,
    "vol_24h": 0.0,
    "vol_ratio": 1.0,
    "obv_norm": 0.0,
    "obv_slope": 0.0,
    "vwap_dev": 0.0,
    "volume_ma_ratio": 1.0,
    "volume_trend": 0.0,
    "volume_zscore": 0.0,
    "high_low_ratio": 0.0,
    "close_position": 0.5,
    "gap_up": 0.0,
    "gap_down": 0.0,
    "upper_shadow": 0.0,
    "lower_shadow": 0.0,
    "body_size": 0.0,
    "range_position": 0.5,
    "skewness_24": 0.0,
    "kurtosis_24": 0.0,
    "autocorr_1": 0.0,
    "autocorr_4": 0.0,
    "hurst_approx": 0.5,
    "mean_rev_score": 0.0,
    "zscore_24": 0.0,
    "zscore_168": 0.0,
}


@pytest.fixture(scope="module")
def walk() -> pd.DataFrame:
    return random_walk_ohlcv(1000, seed=4)


@pytest.fixture(scope="module")
def walk_features(walk) -> pd.DataFrame:
    return compute_features(walk)


# --------------------------------------------------------------------------------------------------------
# Names and contract
# --------------------------------------------------------------------------------------------------------


def test_exactly_44_names_in_design_order():
    assert len(FEATURE_NAMES) == 44 and len(set(FEATURE_NAMES)) == 44
    assert {g: len(names) for g, names in FEATURE_GROUPS.items()} == {
        "returns": 6,
        "momentum": 8,
        "volatility": 8,
        "volume": 6,
        "candle": 8,
        "statistical": 8,
    }
    assert tuple(n for names in FEATURE_GROUPS.values() for n in names) == FEATURE_NAMES
    assert FEATURE_NAMES[:3] == ("ret_1", "ret_4", "ret_12") and FEATURE_NAMES[-1] == "zscore_168"
    assert set(FLAT_VALUES) == set(FEATURE_NAMES)


def test_output_keeps_index_columns_and_float64(walk):
    df = walk.iloc[:300].set_index(pd.date_range("2021-01-01", periods=300, freq="h", tz="UTC"))
    out = compute_features(df)
    assert out.index.equals(df.index)
    assert tuple(out.columns) == FEATURE_NAMES
    assert (out.dtypes == np.float64).all()


@pytest.mark.parametrize("n", [0, 1, 3])
def test_frames_shorter_than_every_window(walk, n):
    out = compute_features(walk.iloc[:n])
    assert out.shape == (n, 44)


def test_missing_column_is_refused(walk):
    with pytest.raises(ValueError, match="volume"):
        compute_features(walk.drop(columns="volume"))


def test_no_nan_after_warmup_and_warmup_is_tight(walk_features):
    x = walk_features.to_numpy()
    assert np.isfinite(x[LONGEST_LOOKBACK:]).all()
    assert LONGEST_LOOKBACK == 168
    assert np.isnan(x[LONGEST_LOOKBACK - 1]).any()  # ret_168 is not known yet one bar earlier


# --------------------------------------------------------------------------------------------------------
# Against pandas' rolling moments, and the bounded features' ranges
# --------------------------------------------------------------------------------------------------------


def test_moment_statistics_match_pandas_rolling(walk, walk_features):
    r = walk["close"].pct_change()
    lo = LONGEST_LOOKBACK
    np.testing.assert_allclose(walk_features["skewness_24"][lo:], r.rolling(24).skew()[lo:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(walk_features["kurtosis_24"][lo:], r.rolling(24).kurt()[lo:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(walk_features["autocorr_1"][lo:], r.rolling(48).corr(r.shift(1))[lo:], atol=1e-10)
    np.testing.assert_allclose(walk_features["autocorr_4"][lo:], r.rolling(48).corr(r.shift(4))[lo:], atol=1e-10)
    np.testing.assert_allclose(walk_features["vol_24h"][lo:], r.rolling(24).std()[lo:] * SQRT_YEAR, rtol=1e-10)


def test_bounded_features_stay_in_range(walk_features):
    x = walk_features.iloc[LONGEST_LOOKBACK:]
    for name, (lo, hi) in {
        "rsi_14": (0, 100),
        "stoch_k": (0, 100),
        "close_position": (0, 1),
        "range_position": (0, 1),
        "body_size": (0, 1),
        "obv_norm": (-1, 1),
        "autocorr_1": (-1, 1),
        "gap_up": (0, 1),
    }.items():
        assert x[name].between(lo, hi).all(), name


# --------------------------------------------------------------------------------------------------------
# Degenerate (flat) bars
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("volume", [5.0, 0.0])
def test_constant_price_gives_the_neutral_values(volume):
    out = compute_features(frame(np.full(300, 100.0), volume=np.full(300, volume)))
    tail = out.iloc[LONGEST_LOOKBACK:]
    assert np.isfinite(tail.to_numpy()).all()
    for name, value in FLAT_VALUES.items():
        np.testing.assert_array_equal(tail[name], value, err_msg=name)


def test_flat_filled_gaps_are_finite_and_neutral():
    df = random_walk_ohlcv(1200, seed=9)
    missing = np.zeros(len(df), dtype=bool)
    for start, length in ((200, 1), (260, 5), (400, 30), (700, 250)):
        missing[start : start + length] = True
    out = compute_features(fill_flat(df, missing))
    assert np.isfinite(out.iloc[LONGEST_LOOKBACK:].to_numpy()).all()
    end_of_long_gap = out.iloc[949]  # after 250 flat bars every trailing window (up to 168) is flat
    for name, value in FLAT_VALUES.items():
        tol = 1e-6 if name.startswith("macd") else 1e-12  # EMAs decay towards 0 without reaching it
        assert end_of_long_gap[name] == pytest.approx(value, abs=tol), name
    first_flat = out.iloc[200]  # a single filled bar: zero range, zero volume
    assert first_flat["close_position"] == 0.5 and first_flat["body_size"] == 0.0
    assert first_flat["gap_up"] == 0.0 and first_flat["gap_down"] == 0.0 and first_flat["ret_1"] == 0.0
    assert first_flat["volume_ma_ratio"] == 0.0


# --------------------------------------------------------------------------------------------------------
# Causality and scale invariance
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 50, LONGEST_LOOKBACK, 400, 998])
def test_features_at_t_ignore_every_later_value(walk, walk_features, t):
    rng = np.random.default_rng(t)
    perturbed = walk.copy()
    later = perturbed.index > t
    perturbed.loc[later] = perturbed.loc[later].to_numpy() * rng.uniform(0.5, 2.0, (int(later.sum()), 5))
    out = compute_features(perturbed)
    np.testing.assert_array_equal(out.iloc[: t + 1].to_numpy(), walk_features.iloc[: t + 1].to_numpy())
    assert not np.allclose(out.iloc[t + 1 :].to_numpy(), walk_features.iloc[t + 1 :].to_numpy(), equal_nan=True)


@pytest.mark.parametrize(("price_factor", "volume_factor"), [(30.0, 1.0), (1.0, 7.0), (1 / 30, 7.0)])
def test_features_are_scale_free(walk, walk_features, price_factor, volume_factor):
    scaled = walk.copy()
    scaled[["open", "high", "low", "close"]] *= price_factor
    scaled["volume"] *= volume_factor
    out = compute_features(scaled)
    np.testing.assert_array_equal(np.isnan(out.to_numpy()), np.isnan(walk_features.to_numpy()))
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(out[name], walk_features[name], rtol=1e-7, atol=1e-9, err_msg=name)


# --------------------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not BTC_SAMPLE.exists(), reason="BTC sample not present")
def test_btc_sample_is_finite_after_warmup():
    raw = pd.read_csv(BTC_SAMPLE)
    raw.index = pd.to_datetime(raw["timestamp"], utc=True)
    grid = pd.date_range(raw.index[0], raw.index[-1], freq="h")
    df = raw.reindex(grid)[["open", "high", "low", "close", "volume"]].astype(float)
    missing = df["close"].isna().to_numpy()
    assert missing.sum() > 0  # the sample has outages: exercises the flat filled bars
    df = fill_flat(df, missing)
    out = compute_features(df)
    x = out.iloc[LONGEST_LOOKBACK:]
    assert np.isfinite(x.to_numpy()).all()
    assert x["rsi_14"].between(0, 100).all() and x["obv_norm"].between(-1, 1).all()
    # Scale-free in practice: atr_14 of 2018-2019 BTC (price 3k-20k) stays within a few percent.
    assert x["atr_14"].max() < 0.1 and x["atr_norm"].median() == pytest.approx(0.01, rel=0.5)
