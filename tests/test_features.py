"""The 44 causal features (ARCHITECTURE §2.3): hand-computed values, neutral values on flat bars, causality, scale."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from himari_ray.data.features import FEATURE_GROUPS, FEATURE_NAMES, LONGEST_LOOKBACK, compute_features

BTC_SAMPLE = Path("/work/shared/data/btc_usdt_1h_2018_2019.csv")
SQRT_YEAR = math.sqrt(8760)


def frame(close, open_=None, high=None, low=None, volume=None) -> pd.DataFrame:
    close = np.asarray(close, dtype=np.float64)
    return pd.DataFrame(
        {
            "open": close if open_ is None else np.asarray(open_, dtype=np.float64),
            "high": close if high is None else np.asarray(high, dtype=np.float64),
            "low": close if low is None else np.asarray(low, dtype=np.float64),
            "close": close,
            "volume": np.ones_like(close) if volume is None else np.asarray(volume, dtype=np.float64),
        }
    )


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
# Hand-computed values
# --------------------------------------------------------------------------------------------------------

ZIGZAG = [100, 102, 101, 103, 102, 104, 103, 105, 104, 106, 105, 107, 106, 108, 107, 109]


def test_returns_rsi_stochastic_by_hand():
    c = np.array(ZIGZAG, dtype=float)
    out = compute_features(frame(c, high=c + 0.5, low=c - 0.5))
    # Returns: close 15 is 109; closes 14, 11 and 3 are 107, 107 and 103.
    assert out["ret_1"].iloc[15] == pytest.approx(109 / 107 - 1)
    assert out["ret_4"].iloc[15] == pytest.approx(109 / 107 - 1)
    assert out["ret_12"].iloc[15] == pytest.approx(109 / 103 - 1)
    assert out["roc_12"].iloc[15] == pytest.approx((109 / 103 - 1) * 100)
    assert np.isnan(out["ret_24"].iloc[15])
    # RSI: 14 diffs of +2, -1 alternating: mean gain 1, mean loss 0.5 -> 100 * 1 / 1.5.
    assert np.isnan(out["rsi_14"].iloc[13])  # only 13 diffs known
    assert out["rsi_14"].iloc[14] == pytest.approx(200 / 3)
    assert out["rsi_14"].iloc[15] == pytest.approx(200 / 3)
    assert out["rsi_norm"].iloc[15] == pytest.approx((200 / 3 - 50) / 50)
    # Stochastic over 14 bars, high = close + 0.5, low = close - 0.5.
    k13 = 100 * (108 - 99.5) / (108.5 - 99.5)  # rows 0..13
    k14 = 100 * (107 - 100.5) / (108.5 - 100.5)  # rows 1..14
    k15 = 100 * (109 - 100.5) / (109.5 - 100.5)  # rows 2..15
    assert np.isnan(out["stoch_k"].iloc[12])
    np.testing.assert_allclose(out["stoch_k"].iloc[13:16], [k13, k14, k15])
    assert k14 == 81.25
    assert np.isnan(out["stoch_d"].iloc[14])
    assert out["stoch_d"].iloc[15] == pytest.approx((k13 + k14 + k15) / 3)
    # vol_12h: sample std of the last 12 one-bar returns, annualised.
    r = c[1:] / c[:-1] - 1
    assert out["vol_12h"].iloc[15] == pytest.approx(np.std(r[-12:], ddof=1) * SQRT_YEAR)


def test_rsi_extremes():
    up = compute_features(frame(100.0 + np.arange(20.0)))
    down = compute_features(frame(100.0 - np.arange(20.0)))
    assert up["rsi_14"].iloc[-1] == 100.0 and up["rsi_norm"].iloc[-1] == 1.0  # no losses
    assert down["rsi_14"].iloc[-1] == 0.0 and down["rsi_norm"].iloc[-1] == -1.0  # no gains


def test_candles_and_gaps_by_hand():
    out = compute_features(
        frame(
            close=[105, 101, 103, 103],
            open_=[100, 106, 99, 103],
            high=[110, 108, 104, 103],
            low=[95, 100, 98, 103],
            volume=[1, 1, 1, 0],
        )
    )
    expected = {
        "high_low_ratio": [110 / 95 - 1, 0.08, 104 / 98 - 1, 0.0],
        "close_position": [10 / 15, 1 / 8, 5 / 6, 0.5],  # the flat last bar is neutral
        "upper_shadow": [5 / 15, 2 / 8, 1 / 6, 0.0],
        "lower_shadow": [5 / 15, 1 / 8, 1 / 6, 0.0],
        "body_size": [5 / 15, 5 / 8, 4 / 6, 0.0],
        "gap_up": [np.nan, 1 / 105, 0.0, 0.0],  # bar 1 opens at 106 after a 105 close
        "gap_down": [np.nan, 0.0, 2 / 101, 0.0],  # bar 2 opens at 99 after a 101 close
    }
    for name, values in expected.items():
        np.testing.assert_allclose(out[name].to_numpy(), values, rtol=1e-12, err_msg=name)
    shape = out[["upper_shadow", "lower_shadow", "body_size"]].iloc[:3].sum(axis=1)
    np.testing.assert_allclose(shape, 1.0)


def test_true_range_atr_and_range_position_by_hand():
    # 23 bars at 100 with range 99..101 (true range 2), then a flat bar that gaps to 105 (true range 5).
    c = np.r_[np.full(23, 100.0), 105.0]
    out = compute_features(frame(c, high=np.r_[np.full(23, 101.0), 105.0], low=np.r_[np.full(23, 99.0), 105.0]))
    assert out["atr_norm"].iloc[22] == pytest.approx(2 / 100)
    assert out["atr_norm"].iloc[23] == pytest.approx((13 * 2 + 5) / 14 / 105)
    assert np.isnan(out["atr_14"].iloc[23])  # needs the 168-bar mean close
    assert out["gap_up"].iloc[23] == pytest.approx(0.05)
    assert out["close_position"].iloc[23] == 0.5
    assert np.isnan(out["range_position"].iloc[22])  # needs 24 bars
    assert out["range_position"].iloc[23] == pytest.approx(1.0)  # 105 is the 24-bar high
    c2 = np.r_[np.full(23, 100.0), 100.5]
    out2 = compute_features(frame(c2, high=np.r_[np.full(23, 101.0), 101.0], low=np.r_[np.full(23, 99.0), 100.0]))
    assert out2["range_position"].iloc[23] == pytest.approx((100.5 - 99) / 2)
    assert out2["close_position"].iloc[23] == pytest.approx(0.5)


def test_linear_ramp_by_hand():
    n = 600
    c = 100.0 + np.arange(n)
    vol = np.ones(n)
    vol[-1] = 21.0
    out = compute_features(frame(c, open_=c - 1, high=c, low=c - 1, volume=vol))
    t = n - 2  # last bar with constant volume
    ct = c[t]
    row = out.iloc[t]
    for k in (1, 4, 12, 24, 48, 168):
        assert row[f"ret_{k}"] == pytest.approx(k / (ct - k))
    assert row["rsi_14"] == 100.0 and row["stoch_k"] == 100.0 and row["stoch_d"] == 100.0
    # EMAs of a ramp trail it by (1 - a) / a bars: 5.5 for span 12, 12.5 for span 26.
    assert row["macd"] == pytest.approx(7 / ct * 100, rel=1e-9)
    # macd = 700 / c shrinks by 700 / c² a bar and its EMA9 signal trails by (1 - 0.2) / 0.2 = 4 bars.
    assert row["macd_hist"] == pytest.approx(-4 * 700 / ct**2, rel=0.03)
    assert row["atr_norm"] == pytest.approx(1 / ct)  # every true range is 1
    assert row["atr_14"] == pytest.approx(1 / (ct - 83.5))  # ATR over the 168-bar mean close
    sd20 = math.sqrt(20 * 21 / 12)  # sample std of 20 consecutive integers
    assert row["bb_upper_dist"] == pytest.approx((9.5 - 2 * sd20) / ct)
    assert row["bb_lower_dist"] == pytest.approx((9.5 + 2 * sd20) / ct)
    assert row["bb_width"] == pytest.approx(4 * sd20 / (ct - 9.5))
    assert row["zscore_24"] == pytest.approx(11.5 / math.sqrt(24 * 25 / 12))
    assert row["mean_rev_score"] == pytest.approx(24.5 / math.sqrt(50 * 51 / 12))
    assert row["zscore_168"] == pytest.approx(83.5 / math.sqrt(168 * 169 / 12))
    assert row["close_position"] == 1.0 and row["body_size"] == 1.0
    assert row["upper_shadow"] == 0.0 and row["lower_shadow"] == 0.0
    assert row["gap_up"] == 0.0 and row["gap_down"] == 0.0
    assert row["range_position"] == 1.0
    assert row["high_low_ratio"] == pytest.approx(ct / (ct - 1) - 1)
    # Volume: OBV rises by 1 a bar, so OBV - MA50(OBV) = 24.5 over a 50-bar volume sum of 50.
    assert row["obv_norm"] == pytest.approx(0.49)
    assert row["obv_slope"] == pytest.approx(1.0)
    tp_mean = ct - 9.5 - 1 / 3  # typical price (h + l + c) / 3 = c - 1/3, averaged over 20 bars
    assert row["vwap_dev"] == pytest.approx((ct - tp_mean) / tp_mean)
    assert row["volume_ma_ratio"] == 1.0 and row["volume_trend"] == 0.0 and row["volume_zscore"] == 0.0
    last = out.iloc[-1]  # volume 21 after 49 bars of 1
    assert last["volume_ma_ratio"] == pytest.approx(21 / 2)
    assert last["volume_zscore"] == pytest.approx(19 / math.sqrt(20))
    assert last["volume_trend"] == pytest.approx(3 / 1.4 - 1)


def _from_returns(r: np.ndarray) -> pd.DataFrame:
    return frame(100.0 * np.cumprod(1.0 + np.r_[0.0, r]))


def test_statistics_by_hand_on_alternating_returns():
    # Returns +1%, -1%, ...: each 24 window has mean 0, R/S = 1, lag-1 correlation -1, lag-4 correlation +1.
    out = compute_features(_from_returns(0.01 * (-1.0) ** np.arange(80))).iloc[-1]
    assert out["hurst_approx"] == pytest.approx(0.0, abs=1e-9)
    assert out["autocorr_1"] == pytest.approx(-1.0)
    assert out["autocorr_4"] == pytest.approx(1.0)
    assert out["skewness_24"] == pytest.approx(0.0, abs=1e-9)
    # Two-point symmetric distribution: m4 / m2² = 1, so excess kurtosis G2 = 23 / (22·21) · (25 - 69).
    assert out["kurtosis_24"] == pytest.approx(23 / (22 * 21) * (25 - 3 * 23))


def test_hurst_by_hand_on_trending_returns():
    # Returns rising linearly: Y_k = e·k(k-24)/2, so R = 72e and S = e·sqrt((24² - 1) / 12).
    r = 0.001 + 1e-4 * np.arange(60)
    out = compute_features(_from_returns(r)).iloc[-1]
    expected = math.log(72 / math.sqrt(575 / 12)) / math.log(24)
    assert out["hurst_approx"] == pytest.approx(expected, rel=1e-6)
    assert out["skewness_24"] == pytest.approx(0.0, abs=1e-6)  # a uniform grid is symmetric


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
