"""The causal regime detector's decision table (ARCHITECTURE §2.4): every leaf, each threshold hit exactly
(which are inclusive, which strict), all of them at once through the vectorised decision, and the label's
confidence: half at a threshold, its maximum far from every one, growing with the distance between."""

from __future__ import annotations

import numpy as np
import pytest

from himari_ray.data.regime import (
    CONF_MAX,
    CONF_MIN,
    RegimeDetectorConfig,
    regime_confidence,
    regime_decision,
)
from himari_ray.types import Regime

LOW, TREND, HIGH, CRISIS = Regime.LOW_VOL, Regime.TRENDING, Regime.HIGH_VOL, Regime.CRISIS


# (vol_pct, trend, vol_trend, expected): one row per leaf, then each threshold hit exactly.
LEAVES = [
    (0.95, 0.0, 0.0, CRISIS),  # crisis
    (0.80, 0.8, 0.0, TREND),  # high band, strong trend
    (0.80, 0.4, 0.9, HIGH),  # high band, not strong
    (0.60, 0.8, 0.9, TREND),  # mid band, strong trend
    (0.60, 0.4, 0.3, HIGH),  # mid band, weak trend, rising vol
    (0.60, 0.4, 0.0, TREND),  # mid band, weak trend, steady vol
    (0.60, 0.1, 0.2, HIGH),  # mid band, no trend, rising vol
    (0.60, 0.1, 0.0, LOW),  # mid band, no trend, steady vol
    (0.40, 0.4, 0.9, TREND),  # low band, weak trend
    (0.40, 0.1, 0.9, LOW),  # low band, no trend
    (0.10, 0.9, 0.9, LOW),  # calm
]
BOUNDARIES = [
    (0.90, 0.0, 0.0, CRISIS),  # crisis_pct inclusive
    (0.75, 0.0, 0.0, HIGH),  # high_pct inclusive
    (0.75, 0.6, 0.0, TREND),  # trend_strong inclusive in the high band
    (0.75, 0.59, 0.0, HIGH),
    (0.50, 0.0, 0.2, HIGH),  # mid_pct inclusive
    (0.50, 0.6, 0.9, TREND),  # trend_strong inclusive in the mid band
    (0.60, 0.3, 0.2, HIGH),  # trend_weak inclusive in the mid band
    (0.60, 0.3, 0.10, TREND),  # vol_trend_mid is strict (>)
    (0.60, 0.3, 0.1000001, HIGH),
    (0.60, 0.29, 0.05, LOW),  # vol_trend_low is strict (>)
    (0.60, 0.29, 0.0500001, HIGH),
    (0.25, 0.3, 0.0, TREND),  # low_pct inclusive, trend_weak inclusive in the low band
    (0.25, 0.29, 0.0, LOW),
    (0.2499, 0.3, 0.9, LOW),  # just below low_pct
    (0.8999, 0.0, 0.0, HIGH),  # just below crisis_pct
]


@pytest.mark.parametrize(("vp", "tr", "vt", "expected"), LEAVES + BOUNDARIES)
def test_decision_table(vp, tr, vt, expected):
    got = regime_decision(np.array([vp]), np.array([tr]), np.array([vt]), RegimeDetectorConfig())
    assert got.dtype == np.int64 and got.tolist() == [int(expected)]


def test_decision_is_vectorised_over_all_leaves():
    vp, tr, vt, exp = (np.array(col, dtype=float) for col in zip(*LEAVES + BOUNDARIES, strict=True))
    np.testing.assert_array_equal(regime_decision(vp, tr, vt), exp.astype(np.int64))


def test_confidence_half_at_threshold_and_max_far_away():
    cfg = RegimeDetectorConfig()
    at = regime_confidence(np.array([0.90, 0.75, 0.60, 0.60, 0.40]), np.array([0.0, 0.9, 0.6, 0.45, 0.3]),
                           np.array([0.0, 0.0, 0.0, 0.10, 0.0]), cfg)  # fmt: skip
    np.testing.assert_allclose(at, CONF_MIN)
    far = regime_confidence(np.array([0.625, 0.0, 0.625, 0.375]), np.array([1.0, 0.0, 0.0, 0.0]),
                            np.array([0.0, 0.0, -0.5, 0.0]), cfg)  # fmt: skip
    np.testing.assert_allclose(far, CONF_MAX)


def test_confidence_grows_monotonically_with_distance_from_threshold():
    # Mid band, no trend, vol_trend moving away from vol_trend_low (0.05) on the LOW_VOL side.
    vt = np.linspace(0.05, -0.5, 50)
    conf = regime_confidence(np.full(50, 0.625), np.zeros(50), vt)
    assert (np.diff(conf) >= 0).all() and conf[0] == pytest.approx(0.5) and conf[-1] == pytest.approx(0.95)
    # vol_pct moving from crisis_pct upwards.
    vp = np.linspace(0.90, 0.999, 50)
    conf = regime_confidence(vp, np.zeros(50), np.zeros(50))
    assert (np.diff(conf) >= 0).all() and conf[0] == pytest.approx(0.5)
