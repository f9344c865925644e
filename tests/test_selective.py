"""Selective deployment (himari_ray.env.selective): fitted HOLD shares, the hysteresis path, the policy's dict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from himari_ray.env.metrics import DEFAULT_HOLD_BANDS, action_shares
from himari_ray.env.selective import (
    NEVER_TRADE,
    SelectivePolicy,
    fit_hysteresis,
    fit_thresholds,
    hysteresis_actions,
    margin,
    selective_actions,
)
from himari_ray.types import REGIME_NAMES, Action, Regime


def centre(name: str) -> float:
    lo, hi = DEFAULT_HOLD_BANDS[name]
    return (lo + hi) / 2


def market(seed: int, n: int, dwell: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Noisy (n, 3) probabilities and regimes that dwell `dwell` bars, as a detector's do."""
    rng = np.random.default_rng(seed)
    regimes = np.repeat(rng.integers(0, 4, n // dwell + 1), dwell)[:n]
    return rng.dirichlet([1.0, 1.0, 1.0], size=n), regimes


def reference_path(by_position, regimes, thresholds, ratio):
    """The hysteresis rule bar by bar, written from its definition."""
    pos, out = 0, []
    for t in range(len(regimes)):
        p = by_position[t, pos]
        m = p[1] - p[2]
        enter = thresholds[REGIME_NAMES[regimes[t]]]
        keep = enter if enter > 1 else ratio * enter
        if pos == 0:
            pos = 1 if m >= enter else 2 if m <= -enter else 0
        elif pos == 1:
            pos = 1 if m >= keep else 2 if -m >= enter else 0
        else:
            pos = 2 if -m >= keep else 1 if m >= enter else 0
        out.append(pos)
    return np.array(out)


def changes(actions: np.ndarray) -> tuple[int, float]:
    """How often the position changes bar to bar, and the turnover it pays (from flat)."""
    pos = np.r_[0, np.array([0, 1, -1])[actions]]
    d = np.abs(np.diff(pos))
    return int((d > 0).sum()), float(d.sum())


def test_thresholds_land_hold_share_at_band_centres():
    probs, regimes = market(0, 5000)
    th = fit_thresholds(probs, regimes, DEFAULT_HOLD_BANDS)
    shares = action_shares(selective_actions(probs, regimes, th), regimes)
    for name in REGIME_NAMES:
        assert 0.0 < th[name] < 1.0
        assert abs(shares[name]["HOLD"] - centre(name)) <= 100.0 / shares[name]["n"]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.0, 100.0), st.floats(0.0, 100.0))
def test_thresholds_are_monotone_in_the_band(seed, a, b):
    """A higher band centre never lowers the threshold nor trades a bar the lower one held."""
    probs, regimes = market(seed, 300)
    lo, hi = sorted((a, b))
    low = fit_thresholds(probs, regimes, {name: (lo, lo) for name in REGIME_NAMES})
    high = fit_thresholds(probs, regimes, {name: (hi, hi) for name in REGIME_NAMES})
    assert all(low[name] <= high[name] for name in REGIME_NAMES)
    held_low = selective_actions(probs, regimes, low) == Action.HOLD
    held_high = selective_actions(probs, regimes, high) == Action.HOLD
    assert not (held_low & ~held_high).any()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_actions_follow_the_margin(seed, tau, shift):
    """LONG iff m >= tau, SHORT iff m <= -tau; raising the margin never turns LONG into something else."""
    probs, regimes = market(seed, 200)
    th = dict.fromkeys(REGIME_NAMES, tau)
    a = selective_actions(probs, regimes, th)
    m = probs[:, 1] - probs[:, 2]
    np.testing.assert_array_equal(margin(probs), m)
    np.testing.assert_array_equal(a == Action.LONG, m >= tau)
    np.testing.assert_array_equal(a == Action.SHORT, (m <= -tau) & (m < tau))
    up = probs.copy()
    moved = np.minimum(shift, up[:, Action.SHORT])  # move SHORT mass to LONG: m rises
    up[:, Action.SHORT] -= moved
    up[:, Action.LONG] += moved
    b = selective_actions(up, regimes, th)
    assert not ((a == Action.LONG) & (b != Action.LONG)).any()


def test_margin_on_the_threshold_trades():
    """m == tau trades (>=), both ways; at tau = 0 a zero margin goes LONG."""
    probs = np.array([[0.25, 0.625, 0.125], [0.25, 0.125, 0.625], [0.5, 0.25, 0.25], [0.2, 0.4, 0.4]])
    regimes = np.array([0, 0, 0, 1])
    th = {"LOW_VOL": 0.5, "TRENDING": 0.0, "HIGH_VOL": 0.5, "CRISIS": 0.5}
    np.testing.assert_array_equal(selective_actions(probs, regimes, th), [1, 2, 0, 1])
    by_position = np.repeat(probs[:, None, :], 3, axis=1)
    np.testing.assert_array_equal(hysteresis_actions(by_position, regimes, th, 1.0), [1, 2, 0, 1])


def test_threshold_above_one_never_trades():
    probs, regimes = market(1, 2000)
    probs[::7] = [0.0, 1.0, 0.0]  # certainty: margin exactly 1
    th = {**fit_thresholds(probs, regimes, DEFAULT_HOLD_BANDS), "CRISIS": 1.0 + 1e-9}
    crisis = regimes == Regime.CRISIS
    assert (selective_actions(probs, regimes, th)[crisis] == Action.HOLD).all()
    by_position = np.repeat(probs[:, None, :], 3, axis=1)
    path = hysteresis_actions(by_position, regimes, th, 0.5)
    assert (path[crisis] == Action.HOLD).all()  # a position carried into CRISIS is closed there too
    assert (path[~crisis] != Action.HOLD).any()


def test_regime_absent_from_calibration_never_trades():
    probs, regimes = market(2, 1000)
    regimes[regimes == Regime.HIGH_VOL] = Regime.LOW_VOL
    th = fit_thresholds(probs, regimes, DEFAULT_HOLD_BANDS)
    assert th["HIGH_VOL"] == NEVER_TRADE > 1.0
    assert fit_thresholds(probs, regimes, {"LOW_VOL": (40.0, 60.0)})["CRISIS"] > 1.0  # no band either
    assert fit_thresholds(probs, regimes, {name: (0.0, 0.0) for name in REGIME_NAMES})["LOW_VOL"] == 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**16),
    st.integers(1, 80),
    st.lists(st.floats(0.0, 1.2), min_size=4, max_size=4),
    st.floats(0.01, 1.0),
)
def test_hysteresis_path_matches_the_rule_bar_by_bar(seed, n, taus, ratio):
    rng = np.random.default_rng(seed)
    by_position = rng.dirichlet([0.5, 0.5, 0.5], size=(n, 3))
    regimes = rng.integers(0, 4, n)
    th = dict(zip(REGIME_NAMES, taus, strict=True))
    np.testing.assert_array_equal(
        hysteresis_actions(by_position, regimes, th, ratio), reference_path(by_position, regimes, th, ratio)
    )


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.0, 1.0), st.floats(0.01, 1.0))
def test_hysteresis_never_changes_position_more_often_than_the_per_bar_rule(seed, tau, ratio):
    probs, regimes = market(seed, 300, dwell=10)
    th = dict.fromkeys(REGIME_NAMES, tau)
    per_bar = changes(selective_actions(probs, regimes, th))
    carried = changes(hysteresis_actions(np.repeat(probs[:, None, :], 3, axis=1), regimes, th, ratio))
    assert carried[0] <= per_bar[0] and carried[1] <= per_bar[1] + 1e-9


def persistent_signal(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) probabilities whose margin is a slow AR(1) signal under bar-to-bar noise, and regimes."""
    rng = np.random.default_rng(seed)
    signal = np.zeros(n)
    for t in range(1, n):
        signal[t] = 0.98 * signal[t - 1] + 0.2 * rng.normal()
    z = signal + rng.normal(0.0, 1.0, n)
    e = np.exp(np.c_[np.zeros(n), z, -z])
    return e / e.sum(axis=1, keepdims=True), market(seed, n)[1]


def test_hysteresis_cuts_turnover_on_noisy_probabilities():
    probs, regimes = persistent_signal(3, 4000)
    by_position = np.repeat(probs[:, None, :], 3, axis=1)
    th = fit_thresholds(probs, regimes, DEFAULT_HOLD_BANDS)
    per_bar = changes(selective_actions(probs, regimes, th))
    carried = changes(hysteresis_actions(by_position, regimes, th, 0.5))
    assert carried[0] < 0.9 * per_bar[0] and carried[1] < 0.9 * per_bar[1]
    # Fitted to the same HOLD shares, the path still trades far less: fewer, longer positions.
    fitted = hysteresis_actions(by_position, regimes, fit_hysteresis(by_position, regimes, DEFAULT_HOLD_BANDS))
    hold = action_shares(fitted, regimes)["ALL"]["HOLD"]
    assert hold == pytest.approx(action_shares(selective_actions(probs, regimes, th), regimes)["ALL"]["HOLD"], abs=0.5)
    assert changes(fitted)[1] < 0.8 * per_bar[1]
    same = changes(hysteresis_actions(by_position, regimes, th, 1.0))
    assert same == per_bar  # ratio 1 keeps exactly what would be entered: the per-bar rule itself


def test_fitted_carried_path_holds_at_band_centres():
    """Position-dependent probabilities (a held position makes HOLD likelier): the fit still lands."""
    rng = np.random.default_rng(4)
    n = 6000
    regimes = np.repeat(rng.integers(0, 4, n // 40 + 1), 40)[:n]
    by_position = rng.dirichlet([1.0, 1.0, 1.0], size=(n, 3))
    by_position[:, 1:, 0] += 0.3
    by_position /= by_position.sum(axis=2, keepdims=True)
    th = fit_hysteresis(by_position, regimes, DEFAULT_HOLD_BANDS)
    shares = action_shares(hysteresis_actions(by_position, regimes, th), regimes)
    for name in REGIME_NAMES:
        assert abs(shares[name]["HOLD"] - centre(name)) <= 2 * 100.0 / shares[name]["n"]
    scored = rng.random(n) < 0.9
    th_scored = fit_hysteresis(by_position, regimes, DEFAULT_HOLD_BANDS, scored=scored)
    path = hysteresis_actions(by_position, regimes, th_scored)
    shares = action_shares(path[scored], regimes[scored])
    for name in REGIME_NAMES:
        assert abs(shares[name]["HOLD"] - centre(name)) <= 2 * 100.0 / shares[name]["n"]


def test_policy_round_trip_and_fit():
    probs, regimes = market(5, 1000)
    per_bar = SelectivePolicy.fit("per_bar", probs, regimes, DEFAULT_HOLD_BANDS)
    again = SelectivePolicy.from_dict(json.loads(json.dumps(per_bar.to_dict())))
    assert again == per_bar
    np.testing.assert_array_equal(again.actions(probs, regimes), selective_actions(probs, regimes, per_bar.thresholds))
    by_position = np.repeat(probs[:, None, :], 3, axis=1)
    carried = SelectivePolicy.fit("carried", by_position, regimes, DEFAULT_HOLD_BANDS, exit_ratio=0.25)
    assert SelectivePolicy.from_dict(carried.to_dict()) == carried and carried.exit_ratio == 0.25
    np.testing.assert_array_equal(
        carried.actions(by_position, regimes), hysteresis_actions(by_position, regimes, carried.thresholds, 0.25)
    )
    with pytest.raises(ValueError, match="by_position"):
        carried.actions(probs, regimes)
    with pytest.raises(ValueError, match="regimes"):
        per_bar.actions(probs, regimes[:-1])


GOOD = {"mode": "per_bar", "thresholds": dict.fromkeys(REGIME_NAMES, 0.3), "exit_ratio": 0.5}


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ({**GOOD, "mode": "greedy"}, "mode"),
        ({k: v for k, v in GOOD.items() if k != "exit_ratio"}, "exit_ratio"),
        ({**GOOD, "extra": 1}, "extra"),
        ({**GOOD, "exit_ratio": 0.0}, "exit_ratio"),
        ({**GOOD, "exit_ratio": 1.5}, "exit_ratio"),
        ({**GOOD, "exit_ratio": True}, "exit_ratio"),
        ({**GOOD, "thresholds": [0.3] * 4}, "thresholds"),
        ({**GOOD, "thresholds": {**GOOD["thresholds"], "CRISIS": float("nan")}}, "thresholds.CRISIS"),
        ({**GOOD, "thresholds": {**GOOD["thresholds"], "CRISIS": "0.3"}}, "thresholds.CRISIS"),
        ({**GOOD, "thresholds": {**GOOD["thresholds"], "CRISIS": -0.1}}, "thresholds.CRISIS"),
        ({**GOOD, "thresholds": {**GOOD["thresholds"], "BULL": 0.3}}, "thresholds.BULL"),
        ({**GOOD, "thresholds": {k: 0.3 for k in REGIME_NAMES[:3]}}, "thresholds.CRISIS"),
    ],
)
def test_bad_dicts_are_refused_naming_the_key(bad, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        SelectivePolicy.from_dict(bad)


def test_policy_keeps_its_own_copy_of_the_thresholds():
    th = dict.fromkeys(REGIME_NAMES, 0.3)
    policy = SelectivePolicy("per_bar", th)
    th["CRISIS"] = 0.9
    assert policy.thresholds["CRISIS"] == 0.3
    assert SelectivePolicy.from_dict(GOOD).to_dict() == GOOD
    with pytest.raises(ValueError, match="mapping"):
        SelectivePolicy.from_dict([GOOD])
