"""The causal HOLD-share controller of selective deployment (env/control.py): static at step 0, causal, steering
each regime's HOLD share to its target where static thresholds drift off it, and round-tripping a bundle."""

from __future__ import annotations

import numpy as np
import pytest

from himari_ray.env.control import controlled_path
from himari_ray.env.selective import SelectivePolicy, hysteresis_actions, selective_actions
from himari_ray.types import REGIME_NAMES

BANDS = {"LOW_VOL": (40.0, 60.0), "TRENDING": (20.0, 40.0), "HIGH_VOL": (60.0, 70.0), "CRISIS": (70.0, 80.0)}
CENTRES = {name: (lo + hi) / 200 for name, (lo, hi) in BANDS.items()}


def probs_from_margin(m: np.ndarray, hold: float = 0.2) -> np.ndarray:
    """(…, 3) probabilities with directional margin m: P(L) - P(S) = m, P(HOLD) = hold where it fits."""
    m = np.clip(m, -(1 - 1e-9), 1 - 1e-9)
    h = np.minimum(hold, 1 - np.abs(m))
    long_ = (1 - h + m) / 2
    return np.stack([h, long_, 1 - h - long_], axis=-1)


def market(n: int, seed: int, drift_after: int | None = None, scale: float = 1.0):
    """Regimes in runs, autocorrelated margins; after `drift_after` every margin is `scale` times larger."""
    rng = np.random.default_rng(seed)
    regimes = np.repeat(rng.integers(0, 4, n // 40 + 1), 40)[:n]
    noise = np.zeros(n)
    for t in range(1, n):
        noise[t] = 0.8 * noise[t - 1] + rng.normal(0, 0.1)
    m = np.tanh(noise)
    if drift_after is not None:
        m[drift_after:] = np.tanh(scale * noise[drift_after:])
    return regimes, m


def by_position(m: np.ndarray, stick: float = 0.1) -> np.ndarray:
    """(n, 3, 3) carried probabilities: holding a side adds `stick` to that side's margin (a sticky policy)."""
    return np.stack([probs_from_margin(m), probs_from_margin(m + stick), probs_from_margin(m - stick)], axis=1)


def shares(actions: np.ndarray, regimes: np.ndarray) -> dict[str, float]:
    return {name: float((actions[regimes == i] == 0).mean()) for i, name in enumerate(REGIME_NAMES)}


@pytest.mark.parametrize("mode", ["per_bar", "carried"])
def test_step_zero_is_the_static_rule(mode):
    regimes, m = market(3000, 0)
    probs = probs_from_margin(m) if mode == "per_bar" else by_position(m)
    rule = SelectivePolicy.fit(mode, probs[:1000], regimes[:1000], BANDS)
    controlled = SelectivePolicy(mode, rule.thresholds, rule.exit_ratio, 0.0)
    static = (
        selective_actions(probs, regimes, rule.thresholds)
        if mode == "per_bar"
        else hysteresis_actions(probs, regimes, rule.thresholds, rule.exit_ratio)
    )
    assert np.array_equal(controlled.actions(probs, regimes), static)
    # the controller's own loop with a zero step is the same rule too (per_bar and hysteresis alike)
    margins = probs[..., 1] - probs[..., 2]
    loop = controlled_path(margins, regimes, rule.thresholds, CENTRES, 0.0, mode == "carried", rule.exit_ratio)
    assert np.array_equal(loop, static)


@pytest.mark.parametrize("mode", ["per_bar", "carried"])
def test_the_controller_never_reads_a_later_bar(mode):
    regimes, m = market(2000, 1)
    probs = probs_from_margin(m) if mode == "per_bar" else by_position(m)
    rule = SelectivePolicy.fit(mode, probs[:500], regimes[:500], BANDS, hold_control=0.05)
    base = rule.actions(probs, regimes)
    rng = np.random.default_rng(2)
    for cut in rng.integers(1, 2000, 8):
        changed, reg = probs.copy(), regimes.copy()
        changed[cut:] = rng.dirichlet(np.ones(3), size=changed[cut:].shape[:-1])
        reg[cut:] = rng.integers(0, 4, 2000 - cut)
        counted = np.ones(2000, bool)
        counted[cut:] = rng.random(2000 - cut) < 0.5
        after = rule.actions(changed, reg, counted)
        assert np.array_equal(after[:cut], base[:cut]), cut
        assert not np.array_equal(after[cut:], base[cut:])


@pytest.mark.parametrize("mode", ["per_bar", "carried"])
def test_the_controller_holds_the_band_centres_where_static_thresholds_drift_off(mode):
    """Margins twice as large after the calibration part: static thresholds trade far more than fitted."""
    regimes, m = market(12_000, 3, drift_after=3000, scale=2.5)
    probs = probs_from_margin(m) if mode == "per_bar" else by_position(m)
    static = SelectivePolicy.fit(mode, probs[:3000], regimes[:3000], BANDS)
    steered = SelectivePolicy.fit(mode, probs[:3000], regimes[:3000], BANDS, hold_control=0.03)
    assert static.thresholds == steered.thresholds  # the same fit; only what happens after it differs
    later = slice(3000, None)
    got_static = shares(static.actions(probs[later], regimes[later]), regimes[later])
    got_steered = shares(steered.actions(probs[later], regimes[later]), regimes[later])
    miss_static = max(abs(got_static[r] - CENTRES[r]) for r in REGIME_NAMES)
    miss_steered = max(abs(got_steered[r] - CENTRES[r]) for r in REGIME_NAMES)
    assert miss_static > 0.10, got_static
    assert miss_steered < 0.03, got_steered


def test_a_controlled_rule_round_trips_and_an_old_bundle_stays_static():
    rule = SelectivePolicy("carried", dict.fromkeys(REGIME_NAMES, 0.3), 0.5, 0.03, CENTRES)
    again = SelectivePolicy.from_dict(rule.to_dict())
    assert again == rule and again.to_dict() == rule.to_dict()
    old = {"mode": "per_bar", "thresholds": dict.fromkeys(REGIME_NAMES, 0.2), "exit_ratio": 0.5}
    assert SelectivePolicy.from_dict(old).hold_control == 0.0
    with pytest.raises(ValueError, match="targets"):
        SelectivePolicy("per_bar", dict.fromkeys(REGIME_NAMES, 0.2), 0.5, 0.03, None)
    with pytest.raises(ValueError, match="hold_control"):
        SelectivePolicy("per_bar", dict.fromkeys(REGIME_NAMES, 0.2), 0.5, 2.0, CENTRES)


def test_end_regimes_are_not_steered():
    """A regime fitted to never trade (or always) keeps its threshold: there is no share to steer."""
    regimes, m = market(2000, 4)
    probs = probs_from_margin(m)
    thresholds = {"LOW_VOL": 2.0, "TRENDING": 0.0, "HIGH_VOL": 0.2, "CRISIS": 0.2}
    actions = SelectivePolicy("per_bar", thresholds, 1.0, 0.1, CENTRES).actions(probs, regimes)
    assert (actions[regimes == 0] == 0).all()
    assert (actions[regimes == 1] != 0).all()
