"""The causal features (ARCHITECTURE §2.3) against values computed by hand: returns, RSI (and its extremes)
and the stochastic on a zigzag, candles and gaps, the true range, ATR and range position, every feature on a
linear ramp, and the statistics (Hurst, autocorrelations, skewness, kurtosis) on alternating and trending
returns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from himari_ray.data.features import compute_features
from tests.features_kit import SQRT_YEAR, frame

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
