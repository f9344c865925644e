"""Break-even coordinates (env/coordinates.py): exact inversion of the preflight, clamping, the trial config
wiring, the space schema and the landscape they make contested."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from himari_ray.data.dataset import DataSpec, load_dataset
from himari_ray.env.coordinates import BREAKEVEN_NAMES, COORDINATE_PARAMS, breakeven_of, invert_breakeven
from himari_ray.env.preflight import CONTESTED, PreflightConfig, preflight
from himari_ray.env.rewards import RewardConfig
from himari_ray.env.trading import EnvConfig
from himari_ray.rl.config import TrialConfig
from himari_ray.search.landscape import preflight_space
from himari_ray.search.space import bundled_spaces, load_space
from himari_ray.types import REGIME_NAMES, UserInputError
from tests.conftest import edited_space

SAMPLE = DataSpec()


@pytest.fixture(scope="module")
def sample():
    return load_dataset(SAMPLE)


def _env(family: str, mode: str = "per_bar", **params: float) -> EnvConfig:
    return EnvConfig(data=SAMPLE, position_mode=mode, reward=RewardConfig(family=family, params=params))


def _apply(env: EnvConfig, costs: dict[str, float]) -> EnvConfig:
    return env.model_copy(update={"reward": env.reward.model_copy(update={"params": {**env.reward.params, **costs}})})


@pytest.mark.parametrize(
    ("family", "params"),
    [
        ("adaptive", {"trending_hold_cost": 0.0, "wrong_penalty": 0.0}),
        ("adaptive", {"trending_hold_cost": 0.01, "wrong_penalty": 0.1}),
        ("variance_normalized", {"wrong_penalty": 0.05, "trending_hold_cost": 0.0}),
        ("bonus_penalty", {"hold_bonus": 0.0, "correct_bonus": 0.02}),
    ],
)
def test_inversion_realises_the_requested_breakeven_exactly(sample, family, params):
    env = _env(family, **params)
    targets = {"LOW_VOL": 0.55, "TRENDING": 0.52, "HIGH_VOL": 0.57, "CRISIS": 0.585}
    costs = invert_breakeven(sample, env, targets)
    assert set(costs) == set(COORDINATE_PARAMS[family].values()) and min(costs.values()) > 0
    realised = breakeven_of(sample, _apply(env, costs))
    for regime, p in targets.items():
        assert realised[regime] == pytest.approx(p, abs=1e-9), regime


def test_unreachable_breakeven_clamps_its_cost_to_zero_and_stays_contested(sample):
    """HIGH_VOL's surcharge can only raise its p* above what the base cost gives it; asking for less sets it to
    0 and HIGH_VOL keeps the base cost's p*, between 0.5 and LOW_VOL's."""
    env = _env("adaptive", trending_hold_cost=0.0, wrong_penalty=0.0)
    targets = {"LOW_VOL": 0.58, "TRENDING": 0.53, "HIGH_VOL": 0.505, "CRISIS": 0.57}
    costs = invert_breakeven(sample, env, targets)
    assert costs["highvol_trade_cost"] == 0.0 and costs["crisis_trade_cost"] > 0
    realised = breakeven_of(sample, _apply(env, costs))
    assert realised["LOW_VOL"] == pytest.approx(0.58) and realised["CRISIS"] == pytest.approx(0.57)
    assert 0.505 < realised["HIGH_VOL"] < 0.58
    assert all(r.verdict == CONTESTED for r in preflight(sample, _apply(env, costs)))


def test_inversion_reads_the_preflights_split(sample):
    env = _env("adaptive", trending_hold_cost=0.0, wrong_penalty=0.0)
    targets = dict.fromkeys(REGIME_NAMES, 0.55)
    on_val = PreflightConfig(split="val")
    costs = invert_breakeven(sample, env, targets, on_val)
    assert breakeven_of(sample, _apply(env, costs), on_val)["CRISIS"] == pytest.approx(0.55)
    assert costs != invert_breakeven(sample, env, targets)


def test_families_without_per_regime_costs_are_refused(sample):
    with pytest.raises(ValueError, match="no per-regime cost"):
        invert_breakeven(sample, _env("pnl_cost"), {"LOW_VOL": 0.55})


def test_trial_config_inverts_coordinates_last():
    base = TrialConfig(env=_env("adaptive", trending_hold_cost=0.0))
    params = {f"breakeven_{r}": p for r, p in zip(REGIME_NAMES, (0.54, 0.52, 0.56, 0.58), strict=True)}
    trial = base.with_params({**params, "wrong_penalty": 0.1, "entropy_coeff": 0.02})
    assert trial.train.entropy_coeff == 0.02 and trial.env.reward.params["wrong_penalty"] == 0.1
    assert not any(k.startswith("breakeven") for k in trial.env.reward.params)
    realised = breakeven_of(load_dataset(SAMPLE), trial.env, trial.preflight)
    assert [round(realised[r], 9) for r in REGIME_NAMES] == [0.54, 0.52, 0.56, 0.58]  # with wrong_penalty in place


def _space(tmp_path, **changes):
    raw = yaml.safe_load(bundled_spaces()["calibrate"].read_text())
    raw.update(model="tiny")
    return str(edited_space(raw, tmp_path, **changes))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"family": "pnl_cost", "fixed": {}}, "coordinates: family pnl_cost has no per-regime cost"),
        ({"search.breakeven_CRISIS": None}, "search.breakeven_CRISIS: missing"),
        ({"search.breakeven_LOW_VOL": {"low": 0.5, "high": 1.2}}, "search.breakeven_LOW_VOL: a break-even skill"),
        ({"search.base_trade_cost": {"low": 0.0, "high": 0.5}}, "search.base_trade_cost: set by coordinates"),
        ({"fixed.crisis_trade_cost": 0.3}, "fixed.crisis_trade_cost: set by coordinates: breakeven"),
        ({"coordinates": None}, "breakeven_CRISIS: break-even coordinates need `coordinates: breakeven`"),
    ],
)
def test_space_schema_refuses_bad_coordinates(tmp_path, changes, expected):
    with pytest.raises(UserInputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_space(_space(tmp_path, **changes))


def test_calibrate_space_is_contested_by_construction():
    """Issue 8's target (>= 90% of sampled configurations contested in all four regimes), against the same
    family searched in its native costs."""
    space, _ = load_space("calibrate")
    assert space.coordinates == "breakeven" and set(BREAKEVEN_NAMES) <= set(space.search)
    assert "reward_scale" not in space.search
    _, shares, all_four = preflight_space(space, 40, seed=1)
    assert all_four == 100.0 and all(s.get(CONTESTED) == pytest.approx(100.0) for s in shares.values())
    native, _ = load_space("adaptive")
    _, _, native_all_four = preflight_space(native, 40, seed=1)
    assert native_all_four < 10.0


def test_probes_and_sampled_draws_stay_finite(sample):
    space, _ = load_space("calibrate")
    rng = np.random.default_rng(0)
    for _ in range(5):
        params = {k: float(rng.uniform(r.low, r.high)) for k, r in space.search.items() if k in BREAKEVEN_NAMES}
        costs = space.trial_config().with_params(params).env.reward.params
        assert all(np.isfinite(v) and v >= 0 for v in costs.values())


def test_inversion_in_carried_mode_prices_position_changes(sample):
    env = _env("adaptive", mode="carried", trending_hold_cost=0.0, wrong_penalty=0.0)
    targets = {"LOW_VOL": 0.55, "TRENDING": 0.52, "HIGH_VOL": 0.57, "CRISIS": 0.585}
    cfg = PreflightConfig(holding_bars=10.0)
    costs = invert_breakeven(sample, env, targets, cfg)
    realised = breakeven_of(sample, _apply(env, costs), cfg)
    assert all(realised[r] == pytest.approx(p, abs=1e-9) for r, p in targets.items())
    # Spread over 10 bars, an entry plus an exit cost 5x what a per_bar trade pays every bar for the same p*.
    per_bar = invert_breakeven(sample, _env("adaptive", trending_hold_cost=0.0, wrong_penalty=0.0), targets)
    assert costs["base_trade_cost"] == pytest.approx(5 * per_bar["base_trade_cost"], rel=1e-9)
