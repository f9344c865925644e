"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from himari_ray.env.metrics import DEFAULT_HOLD_BANDS, action_shares, band_distance, trading_metrics


def test_band_distance_reproduces_seed_session_13():
    """ARCHITECTURE §5: LOW_VOL 33, TRENDING 8, HIGH_VOL 45, CRISIS 41 scores 7 + 12 + 15 + 29 = 63."""
    hold = {"LOW_VOL": 33.0, "TRENDING": 8.0, "HIGH_VOL": 45.0, "CRISIS": 41.0}
    assert band_distance(hold) == pytest.approx(63.0)


def test_band_distance_zero_inside_above_band_and_weights():
    inside = {"LOW_VOL": 50.0, "TRENDING": 20.0, "HIGH_VOL": 70.0, "CRISIS": 75.0}
    assert band_distance(inside) == 0.0
    above = {**inside, "TRENDING": 45.0}
    assert band_distance(above) == pytest.approx(5.0)
    weights = {"LOW_VOL": 1.0, "TRENDING": 2.0, "HIGH_VOL": 1.0, "CRISIS": 1.0}
    assert band_distance(above, DEFAULT_HOLD_BANDS, weights) == pytest.approx(10.0)
    absent = {**above, "CRISIS": float("nan")}
    assert band_distance(absent) == pytest.approx(5.0)


def test_action_shares_per_regime():
    actions = np.array([0, 0, 1, 2, 0, 1])
    regimes = np.array([0, 0, 0, 1, 1, 1])
    s = action_shares(actions, regimes)
    assert s["LOW_VOL"]["HOLD"] == pytest.approx(200 / 3)
    assert s["LOW_VOL"]["LONG"] == pytest.approx(100 / 3)
    assert s["TRENDING"] == {
        "HOLD": pytest.approx(100 / 3),
        "LONG": pytest.approx(100 / 3),
        "SHORT": pytest.approx(100 / 3),
        "n": 3.0,
    }
    assert s["ALL"]["HOLD"] == pytest.approx(50.0)
    assert math.isnan(s["CRISIS"]["HOLD"]) and s["CRISIS"]["n"] == 0


def test_trading_metrics_oracle():
    # actions: LONG, LONG, SHORT, HOLD -> positions 1, 1, -1, 0
    actions = np.array([1, 1, 2, 0])
    nxt = np.array([0.01, -0.02, -0.01, 0.05])
    m = trading_metrics(actions, nxt, fee=0.001)
    # turnover |1-0|, |1-1|, |-1-1|, |0+1| = 1, 0, 2, 1
    net = np.array([0.01 - 0.001, -0.02, 0.01 - 0.002, 0.0 - 0.001])
    equity = np.cumprod(1 + net)
    assert m["net_return"] == pytest.approx(equity[-1] - 1)
    assert m["sharpe"] == pytest.approx(net.mean() / net.std() * np.sqrt(8760))
    assert m["turnover"] == pytest.approx(1.0)
    assert m["win_rate"] == pytest.approx(2 / 3)
    assert m["traded_share"] == pytest.approx(0.75)
    assert m["buy_and_hold"] == pytest.approx(np.prod(1 + nxt) - 1)
    peak = np.maximum.accumulate(np.r_[1.0, equity])[1:]
    assert m["max_drawdown"] == pytest.approx(np.max(1 - equity / peak))


def test_always_hold_earns_nothing():
    m = trading_metrics(np.zeros(50, dtype=int), np.full(50, 0.01), fee=0.001)
    assert m["net_return"] == 0.0 and m["sharpe"] == 0.0 and m["turnover"] == 0.0
    assert math.isnan(m["win_rate"])
