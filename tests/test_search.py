"""Search spaces (validation before anything starts) and the seeded Optuna searcher."""

from __future__ import annotations

import pytest
import yaml

from himari_ray.env.coordinates import BREAKEVEN_NAMES
from himari_ray.env.rewards import REWARD_FAMILIES
from himari_ray.search.sampling import make_searcher
from himari_ray.search.space import bundled_spaces, load_space
from himari_ray.types import UserInputError
from tests.conftest import edited_space


@pytest.mark.parametrize("name", sorted(bundled_spaces()))
def test_bundled_spaces_validate(name):
    space, path = load_space(name)
    assert path.name == f"{name}.yaml"
    trial = space.trial_config()
    fam = REWARD_FAMILIES[space.family]
    coordinates = set(BREAKEVEN_NAMES) if space.coordinates == "breakeven" else set()
    allowed = set(fam.defaults) | {"entropy_coeff", "lr", "gamma", "lambda_", "clip_param"} | coordinates
    assert set(space.search) <= allowed - {"reward_scale"}  # reward_scale cannot act (issue 8)
    assert trial.env.reward.family == space.family


def test_adaptive_space_brackets_the_seed_session_18_values():
    space, _ = load_space("adaptive")
    seed = REWARD_FAMILIES["adaptive"].defaults
    for key in (
        "base_trade_cost",
        "highvol_trade_cost",
        "crisis_trade_cost",
        "trending_trade_bonus",
        "trending_hold_cost",
        "wrong_penalty",
    ):
        assert space.search[key].low < seed[key] < space.search[key].high, key
    assert "entropy_coeff" in space.search and "reward_scale" not in space.search


@pytest.mark.parametrize("family", sorted(REWARD_FAMILIES))
def test_every_family_has_a_space_around_the_seed_values(family):
    space, _ = load_space(family)
    assert space.family == family
    defaults = REWARD_FAMILIES[family].defaults
    for key, rng in space.search.items():
        if key in defaults:
            assert rng.low <= defaults[key] <= rng.high, key
            assert not rng.log or rng.low > 0
    assert "entropy_coeff" in space.search and "reward_scale" not in space.search
    searched_or_fixed = set(space.search) | set(space.fixed)
    assert set(REWARD_FAMILIES[family].costs) <= searched_or_fixed, "every cost of the family is searched"


def write_space(tmp_path, **changes):
    """The smoke space in the pnl_cost family's native costs (what these schema tests are written against)."""
    raw = yaml.safe_load(bundled_spaces()["smoke"].read_text())
    raw.pop("coordinates", None)
    raw.update(family="pnl_cost", fixed={"reward_scale": 100.0})
    raw["search"] = {
        "trade_cost": {"low": 0.0005, "high": 0.05, "log": True},
        "entropy_coeff": {"low": 0.001, "high": 0.05, "log": True},
    }
    return edited_space(raw, tmp_path, **changes)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"search.trade_cst": {"low": 0.01, "high": 0.1}}, "search.trade_cst: unknown parameter"),
        ({"trian": {"iterations": 2}}, "trian: unknown key"),
        ({"train.iteratons": 2}, "train.iteratons: unknown key"),
        ({"search.trade_cost": {"low": 0.5, "high": 0.1}}, "search.trade_cost: inverted or empty range"),
        ({"search.trade_cost": {"low": -0.1, "high": 0.1}}, "search.trade_cost.low: must be >= 0"),
        ({"family": "nope"}, "family: unknown reward family"),
        ({"fixed.trade_cost": 0.1}, "search.trade_cost: also set in fixed"),
        ({"budget.trials": -3}, "budget.trials: Input should be greater than or equal to 1"),
        ({"eval.bands.CRASH": [1, 2]}, "eval.bands: unknown regime 'CRASH'"),
        ({"eval.leak_alarm": {"hit_rate": 0.6}}, "eval.leak_alarm.hit_rate: unknown key"),
        # keys of older space files: refused with where they live now, never silently dropped
        ({"targets": {"LOW_VOL": [40, 60]}}, "targets: moved; write it as eval.bands"),
        ({"fee": 0.001}, "fee: moved; write it as eval.fee"),
        ({"leak_alarm": {"min_trades": 50}}, "leak_alarm: moved; write it as eval.leak_alarm"),
        ({"objective": {"min_val_net_return": 0.0}}, "objective.min_val_net_return: moved; write it as eval.min_net"),
        ({"train.minibatch_size": 4096}, "train.minibatch_size: minibatch_size 4096 exceeds"),
        (
            {"search": {"trade_cost": {"low": 0.1, "high": 0.2}}, "fixed": {"trade_cost": -0.1}},
            "fixed.trade_cost: must be >= 0",
        ),
        ({"fixed.reward_scale": 0.0}, "fixed.reward_scale: must be > 0"),
        ({"search": None}, "search: Field required"),
        ({"preflight": {"skill_low": 0.7, "skill_high": 0.6}}, "preflight: skill_low 0.7 must be <= skill_high 0.6"),
    ],
)
def test_bad_space_names_file_and_key(tmp_path, changes, expected):
    path = write_space(tmp_path, **changes)
    with pytest.raises(UserInputError) as err:
        load_space(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: ")
    assert expected in msg
    assert "\n" not in msg


def test_missing_space_file():
    with pytest.raises(UserInputError, match=r"missing\.yaml: no such space file \(bundled spaces: adaptive, .*smoke"):
        load_space("missing.yaml")


def suggestions(seed: int, n: int = 14) -> list[dict]:
    """Drive the real OptunaSearch (TPE) through n trials with a fixed, deterministic objective."""
    space, _ = load_space("smoke")
    searcher = make_searcher(space, seed=seed, max_concurrent=1)
    out = []
    for i in range(n):
        tid = f"t{i}"
        cfg = searcher.suggest(tid)
        out.append(cfg)
        score = abs(cfg["breakeven_LOW_VOL"] - 0.505) * 1000 + cfg["breakeven_CRISIS"]
        searcher.on_trial_complete(tid, {"band_distance": score, "training_iteration": 1})
    return out


def test_same_seed_same_optuna_suggestions():
    a, b = suggestions(seed=5), suggestions(seed=5)
    assert a == b  # includes TPE suggestions after the random start-up trials
    assert suggestions(seed=6) != a


def test_space_settings_reach_the_trial_config(tmp_path):
    path = write_space(
        tmp_path,
        preflight={"enabled": False, "skill_high": 0.7},
        objective={"mode": "multi"},
        eval={"fee": 0.001, "min_net_return": 0.0, "leak_alarm": {"min_trades": 50, "ceiling": 0.7}},
    )
    space = load_space(str(path))[0]
    trial = space.trial_config()
    assert not trial.preflight.enabled and trial.preflight.skill_high == 0.7
    assert trial.eval is space.eval  # the space's eval section is the runtime config itself
    assert trial.eval.leak_alarm.min_trades == 50 and trial.eval.leak_alarm.ceiling == 0.7
    assert trial.eval.min_net_return == 0.0 and trial.eval.fee == 0.001


def conditional_space(tmp_path, **extra):
    return write_space(
        tmp_path,
        **{
            "search.norm_stats": {"choices": ["train", "trailing"]},
            "search.trailing_window": {"low": 24, "high": 336, "integer": True, "when": {"norm_stats": ["trailing"]}},
            "search.position_mode": {"choices": ["per_bar", "carried"]},
            **extra,
        },
    )


def test_conditional_parameters_are_suggested_only_when_their_condition_holds(tmp_path):
    space, _ = load_space(str(conditional_space(tmp_path)))
    searcher = make_searcher(space, seed=1, max_concurrent=1)
    seen = set()
    for i in range(16):
        cfg = searcher.suggest(f"t{i}")
        assert ("trailing_window" in cfg) == (cfg["norm_stats"] == "trailing"), cfg
        if "trailing_window" in cfg:
            assert isinstance(cfg["trailing_window"], int) and 24 <= cfg["trailing_window"] <= 336
        seen.add((cfg["norm_stats"], cfg["position_mode"]))
        trial = space.trial_config().with_params(cfg)  # every suggestion lands where it belongs
        assert trial.env.reward.norm_stats == cfg["norm_stats"] and trial.env.position_mode == cfg["position_mode"]
        searcher.on_trial_complete(
            f"t{i}", {"objective": float(i), "training_iteration": 1, "preflight_skipped": False}
        )
    assert len(seen) == 4


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"search.trailing_window": {"low": 24, "high": 336, "when": {"trade_cost": [0.1]}}},
            "search.trailing_window.when: 'trade_cost' must be a searched parameter with choices",
        ),
        (
            {"search.trailing_window": {"low": 24, "high": 336, "when": {"norm_stats": ["weekly"]}}},
            "search.trailing_window.when.norm_stats: ['weekly'] not among its choices",
        ),
        (
            {"search.trailing_window": {"low": 4, "high": 336, "integer": True}},
            "search.trailing_window: value 4: Input should be greater than or equal to 8",
        ),
        ({"search.position_mode": {"choices": ["per_bar", "sideways"]}}, "search.position_mode: value 'sideways'"),
        ({"search.norm_stats": {"low": 1, "high": 2, "choices": ["train"]}}, "choices exclude low, high"),
    ],
)
def test_bad_conditional_spaces_name_the_key(tmp_path, extra, expected):
    path = conditional_space(tmp_path, **extra)
    with pytest.raises(UserInputError) as err:
        load_space(str(path))
    assert str(err.value).startswith(str(path)) and expected in str(err.value), str(err.value)


def test_a_skipped_trial_reaches_a_multi_objective_study_with_both_values_and_a_crash_fails(tmp_path):
    """Skipped by the preflight: COMPLETE with its penalty and SKIPPED_SHARPE, so TPE learns from it (it was
    FAIL, issue 8); a crashed trial stays FAIL; every Optuna trial names its Tune trial."""
    from optuna.trial import TrialState

    from himari_ray.rl.scoring import SKIPPED_SHARPE
    from himari_ray.search.study import TUNE_TRIAL_ID_ATTR

    space, _ = load_space(str(write_space(tmp_path, objective={"mode": "multi"})))
    limiter = make_searcher(space, seed=0, max_concurrent=2)
    limiter.suggest("skipped")
    limiter.suggest("crashed")
    skipped = {"band_distance": 412.0, "val_sharpe": float("nan"), "preflight_skipped": True, "training_iteration": 1}
    limiter.on_trial_complete("skipped", skipped)
    limiter.on_trial_complete("crashed", {"band_distance": 30.0, "training_iteration": 1}, error=True)
    trials = limiter.searcher._ot_study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[0].values == [412.0, SKIPPED_SHARPE]
    assert [t.user_attrs[TUNE_TRIAL_ID_ATTR] for t in trials] == ["skipped", "crashed"]


def test_random_search_is_a_sampler_choice_of_the_budget(tmp_path):
    import optuna

    space, _ = load_space(str(write_space(tmp_path, **{"budget.sampler": "random"})))
    assert isinstance(make_searcher(space, seed=0).searcher._sampler, optuna.samplers.RandomSampler)
    assert isinstance(make_searcher(load_space("smoke")[0], seed=0).searcher._sampler, optuna.samplers.TPESampler)


def test_the_space_env_section_is_built_from_the_runtime_configs():
    """One name per concept: each key of a space's `env:` section is the very field of EnvConfig or
    RewardConfig (type, default, bounds, description), and every searchable env name is one of them."""
    from himari_ray.rl.config import ROUTES, TrainConfig
    from himari_ray.search.space import ENV_SECTION_SOURCES, EnvSettings

    ENV_PARAMS = [name for name, cls in ROUTES.items() if cls is not TrainConfig]

    for key, cls in ENV_SECTION_SOURCES.items():
        ours, theirs = EnvSettings.model_fields[key], cls.model_fields[key]
        assert (ours.annotation, ours.default, ours.description, ours.metadata) == (
            theirs.annotation,
            theirs.default,
            theirs.description,
            theirs.metadata,
        ), key
    assert set(ENV_PARAMS) <= set(ENV_SECTION_SOURCES)
    base = load_space("smoke")[0].trial_config()
    assert (base.env.context_len, base.env.reward.norm_stats) == (16, "train")
