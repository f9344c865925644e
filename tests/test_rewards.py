"""Reward families: one contract over every registered family, plus hand-computed oracles."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from himari_ray.env.normalization import decision_sigma, expected_abs_z, trailing_sigma
from himari_ray.env.rewards import (
    REWARD_FAMILIES,
    RewardConfig,
    RewardInputs,
    compute_terms,
)
from himari_ray.types import Regime


def random_inputs(n: int = 400, seed: int = 0) -> RewardInputs:
    rng = np.random.default_rng(seed)
    position = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=n)
    return RewardInputs(
        position=position,
        is_trade=position != 0,
        next_return=rng.standard_t(3, size=n) * 0.01,
        regime=rng.integers(0, 4, size=n),
        sigma=np.full(n, 0.01),
        expected_abs_z=0.6,
    )


FAMILIES = sorted(REWARD_FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_contract_finite_shape_and_flat_position_earns_no_pnl(name):
    fam = REWARD_FAMILIES[name]
    inp = random_inputs()
    terms = compute_terms(name, inp, fam.defaults)
    assert "pnl" in terms
    for term, values in terms.items():
        assert values.shape == inp.position.shape, term
        assert np.isfinite(values).all(), term
    flat = inp.position == 0
    assert np.all(terms["pnl"][flat] == 0)
    assert np.any(terms["pnl"][~flat] != 0)


@pytest.mark.parametrize("name", FAMILIES)
def test_contract_monotone_in_every_cost_and_bonus(name):
    fam = REWARD_FAMILIES[name]
    inp = random_inputs(seed=1)
    base = sum(compute_terms(name, inp, fam.defaults).values())
    assert fam.costs, "every family has at least one cost"
    for key in fam.costs + fam.bonuses:
        bumped = sum(compute_terms(name, inp, {**fam.defaults, key: fam.defaults[key] + 0.5}).values())
        delta = bumped - base
        if key in fam.costs:
            assert np.all(delta <= 1e-12), f"{key}: raising a cost raised some reward"
            assert np.any(delta < 0), f"{key}: raising a cost changed nothing"
        else:
            assert np.all(delta >= -1e-12), f"{key}: raising a bonus lowered some reward"
            assert np.any(delta > 0), f"{key}: raising a bonus changed nothing"


@pytest.mark.parametrize("name", FAMILIES)
def test_contract_parameter_names_are_keyword_only_with_seed_defaults(name):
    fam = REWARD_FAMILIES[name]
    assert set(fam.costs + fam.bonuses) <= set(fam.defaults)
    assert "reward_scale" in fam.defaults


def test_pnl_cost_oracle():
    inp = RewardInputs(
        position=np.array([1, -1, 0, 1], dtype=np.int8),
        is_trade=np.array([True, True, False, True]),
        next_return=np.array([0.01, 0.02, 0.03, -0.005]),
        regime=np.zeros(4, dtype=np.int64),
        sigma=np.full(4, 0.01),
        expected_abs_z=0.6,
    )
    t = compute_terms("pnl_cost", inp, {"trade_cost": 0.03, "reward_scale": 100.0})
    np.testing.assert_allclose(t["pnl"], [1.0, -2.0, 0.0, -0.5])
    np.testing.assert_allclose(t["trade_cost"], [-0.03, -0.03, 0.0, -0.03])
    np.testing.assert_allclose(sum(t.values()), [0.97, -2.03, 0.0, -0.53])


def test_adaptive_oracle_session_18():
    """Hand-computed: E = 0.5, sigma = 0.01, the seed's session-18 fractions."""
    regime = np.array([Regime.LOW_VOL, Regime.TRENDING, Regime.HIGH_VOL, Regime.CRISIS, Regime.TRENDING])
    inp = RewardInputs(
        position=np.array([1, 1, -1, 1, 0], dtype=np.int8),
        is_trade=np.array([True, True, True, True, False]),
        next_return=np.array([0.01, -0.02, 0.005, -0.01, 0.03]),
        regime=regime,
        sigma=np.full(5, 0.01),
        expected_abs_z=0.5,
    )
    t = compute_terms("adaptive", inp, REWARD_FAMILIES["adaptive"].defaults)
    # z = [1, -2, 0.5, -1, 3]; pnl = z * pos
    np.testing.assert_allclose(t["pnl"], [1.0, -2.0, -0.5, -1.0, 0.0])
    np.testing.assert_allclose(t["base_trade_cost"], [-0.2, -0.2, -0.2, -0.2, 0.0])  # 0.40 * 0.5
    np.testing.assert_allclose(t["highvol_trade_cost"], [0, 0, -0.2, 0, 0])
    np.testing.assert_allclose(t["crisis_trade_cost"], [0, 0, 0, -0.3, 0])  # 0.60 * 0.5
    np.testing.assert_allclose(t["trending_trade_bonus"], [0, 0.2, 0, 0, 0])
    np.testing.assert_allclose(t["trending_hold_cost"], [0, 0, 0, 0, -0.5])  # 1.0 * 0.5
    np.testing.assert_allclose(t["wrong_penalty"], [0, -0.25, -0.25, -0.25, 0])  # 0.50 * 0.5
    total = sum(t.values())
    np.testing.assert_allclose(total, [0.8, -2.25, -1.15, -1.75, -0.5])
    # reward_scale multiplies every term
    t2 = compute_terms("adaptive", inp, {**REWARD_FAMILIES["adaptive"].defaults, "reward_scale": 2.0})
    np.testing.assert_allclose(sum(t2.values()), 2 * total)


def test_trailing_sigma_is_causal_and_exact():
    rng = np.random.default_rng(2)
    r = rng.standard_normal(300) * 0.01
    s = trailing_sigma(r, 24, fallback=0.5)
    assert np.all(s[:23] == 0.5)
    np.testing.assert_allclose(s[100], r[77:101].std())
    r2 = r.copy()
    r2[151:] *= 10
    np.testing.assert_array_equal(trailing_sigma(r2, 24, 0.5)[:151], s[:151])


def test_normalisation_statistics_come_from_train():
    rng = np.random.default_rng(3)
    train = rng.standard_normal(1000) * 0.01
    split = rng.standard_normal(200) * 0.05
    cfg = RewardConfig(family="adaptive")
    np.testing.assert_allclose(decision_sigma(split, train, cfg), train.std(), rtol=1e-9)
    e = expected_abs_z(train, cfg)
    np.testing.assert_allclose(e, np.mean(np.abs(train[1:] / train.std())), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "nope"}, "unknown reward family"),
        ({"family": "pnl_cost", "params": {"trade_cst": 0.1}}, "parameter 'trade_cst': unknown parameter"),
        ({"family": "pnl_cost", "params": {"trade_cost": -0.1}}, "must be >= 0"),
        ({"family": "adaptive", "params": {"reward_scale": 0.0}}, "must be > 0"),
    ],
)
def test_reward_config_rejects_bad_input(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        RewardConfig(**kwargs)


def _four_bars() -> RewardInputs:
    """LOW_VOL long right, TRENDING hold, HIGH_VOL short wrong, CRISIS long wrong; |r| = 1%, sigma = 1%."""
    return RewardInputs(
        position=np.array([1, 0, -1, 1], dtype=np.int8),
        is_trade=np.array([True, False, True, True]),
        next_return=np.array([0.01, 0.01, 0.01, -0.01]),
        regime=np.array([Regime.LOW_VOL, Regime.TRENDING, Regime.HIGH_VOL, Regime.CRISIS]),
        sigma=np.full(4, 0.01),
        expected_abs_z=0.5,
    )


def test_bonus_penalty_oracle_session_3():
    from himari_ray.env.rewards import SEED_SESSIONS

    family, params = SEED_SESSIONS["session3"]
    t = compute_terms(family, _four_bars(), {**REWARD_FAMILIES[family].defaults, **params})
    total = sum(t.values())
    # LOW_VOL right long: 0.01*200 - 0.01 (cost) + 0.08 (correct)          = 2.07
    # TRENDING hold: -0.04 (trending hold penalty)                          = -0.04
    # HIGH_VOL wrong short: -2 - 0.01 - 0.03 (wrong)                        = -2.04
    # CRISIS wrong long: -2 - 0.01 - 0.02 (crisis penalty) - 0.03 (wrong)   = -2.06
    np.testing.assert_allclose(total, [2.07, -0.04, -2.04, -2.06])


def test_bonus_penalty_session_5_pays_hold_a_guaranteed_bonus():
    t = compute_terms("bonus_penalty", _four_bars(), REWARD_FAMILIES["bonus_penalty"].defaults)
    # LOW_VOL: 1 - 0.08; TRENDING hold: +0.05; HIGH_VOL: -1 - 0.08 - 0.10; CRISIS: -1 - 0.08 - 0.15
    np.testing.assert_allclose(sum(t.values()), [0.92, 0.05, -1.18, -1.23])


def test_opportunity_cost_oracle_session_6():
    t = compute_terms("opportunity_cost", _four_bars(), REWARD_FAMILIES["opportunity_cost"].defaults)
    # LOW_VOL: 1 - 0.02; TRENDING hold: -50*0.01; HIGH_VOL wrong: -1 - 0.02 - 30*0.01 - 20*0.01; CRISIS same
    np.testing.assert_allclose(sum(t.values()), [0.98, -0.5, -1.52, -1.52])


def test_variance_normalized_oracle_session_8():
    from himari_ray.env.rewards import SEED_SESSIONS

    family, params = SEED_SESSIONS["session8"]
    t = compute_terms(family, _four_bars(), {**REWARD_FAMILIES[family].defaults, **params})
    # z = +-1. LOW_VOL: 1 - 0.1; TRENDING hold: -0.8; HIGH_VOL wrong: -1 - 0.1 - 0.6 - 0.5;
    # CRISIS wrong: -1 - 0.1 - 1.0 - 0.5. Costs do not scale with E (that is the adaptive family).
    np.testing.assert_allclose(sum(t.values()), [0.9, -0.8, -2.2, -2.6])


def test_every_seed_session_names_real_parameters():
    from himari_ray.env.rewards import SEED_SESSIONS

    for name, (family, params) in SEED_SESSIONS.items():
        RewardConfig(family=family, params=params)  # raises on an unknown or negative parameter
        assert set(params) <= set(REWARD_FAMILIES[family].defaults), name


@pytest.mark.parametrize(
    ("family", "reason"),
    [
        ("adaptive", "multiplies every term of adaptive and PPO standardises advantages"),
        ("variance_normalized", "multiplies every term of variance_normalized"),
        ("pnl_cost", "scales only the PnL of pnl_cost"),
    ],
)
def test_reward_scale_is_refused_in_search_but_allowed_fixed(tmp_path, family, reason):
    """Issue 8: every searched name acts. reward_scale times every term leaves PPO's standardised advantages,
    hence the policy gradient, unchanged; it is refused in `search:` with the reason, and stays a fixed value."""
    import yaml

    from himari_ray.search.space import bundled_spaces, load_space
    from himari_ray.types import UserInputError

    raw = yaml.safe_load(bundled_spaces()[family].read_text())
    raw["fixed"] = {k: v for k, v in (raw.get("fixed") or {}).items() if k != "reward_scale"}
    raw["search"]["reward_scale"] = {"low": 0.3, "high": 3.0, "log": True}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserInputError, match=f"search.reward_scale: not searchable: it {reason}"):
        load_space(str(path))
    del raw["search"]["reward_scale"]
    raw["fixed"]["reward_scale"] = 2.0
    path.write_text(yaml.safe_dump(raw))
    assert load_space(str(path))[0].trial_config().env.reward.resolved_params["reward_scale"] == 2.0


def test_reward_scale_on_every_term_leaves_standardised_advantages_unchanged():
    """Why it cannot act: with gamma 0 an advantage is reward minus baseline; PPO standardises advantages per
    batch, so a constant factor on every term (and on a critic that learned the scaled reward) cancels."""
    rng = np.random.default_rng(0)
    n = 512
    inp = RewardInputs(
        position=rng.choice([-1, 0, 1], n).astype(np.int8),
        is_trade=rng.random(n) < 0.5,
        next_return=rng.normal(0, 0.01, n),
        regime=rng.integers(0, 4, n),
        sigma=np.full(n, 0.01),
        expected_abs_z=0.8,
    )
    baseline = rng.normal(0, 0.1, n)

    def standardised(scale: float) -> np.ndarray:
        reward = sum(compute_terms("adaptive", inp, {"reward_scale": scale}).values())
        adv = reward - scale * baseline
        return (adv - adv.mean()) / adv.std()

    np.testing.assert_allclose(standardised(3.0), standardised(1.0), atol=1e-12)
    # A PnL-only scale (pnl_cost) does change them: it moves the costs' weight against the PnL.
    pnl = [sum(compute_terms("pnl_cost", inp, {"reward_scale": s}).values()) for s in (50.0, 200.0)]
    assert not np.allclose((pnl[0] - pnl[0].mean()) / pnl[0].std(), (pnl[1] - pnl[1].mean()) / pnl[1].std())
