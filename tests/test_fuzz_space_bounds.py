"""Issue 18's bad-input class for space files, fuzzed (the helpers and the contract are `test_fuzz.py`'s):
every number a space file sets, walked from the models' own constraints, has both bounds; beyond one it is
refused in one line naming the file, the section and the key (exit 2, nothing written), within them it is
accepted. Searched ranges are held to the bounds of what they set, fixed reward parameters to their
magnitude, a description to 500 characters, and settings that contradict each other are refused; the
values the issue saw accepted never start a search.

Everything runs in process in seconds and never starts Ray.
"""

from __future__ import annotations

import copy
import tempfile
import types
import typing
from pathlib import Path

import annotated_types as at
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from himari_ray.rl.config import TRAIN_PARAMS
from himari_ray.search.space import REWARD_PARAM_LIMIT, SPACE_LIMITS, SearchSpace, load_space
from himari_ray.types import MAX_SEED, UserInputError
from tests.test_fuzz import FUZZ, SMOKE, assert_refused, run, tree_state

#: Numeric fields bounded by another field rather than a constant: a fold by the number of folds, a searched
#: range's ends by the field the range sets (tested below, per searched name).
BOUNDED_BY_ANOTHER = {"data.fold", "search.low", "search.high"}
#: The tiny preset's sizes, written out: how a space sets one size (the preset name sets none).
TINY = {"d_model": 32, "n_heads": 2, "n_layers": 1, "ffn_dim": 64, "dropout": 0.0, "head_hidden": 32}


def _numeric(annotation: typing.Any) -> type | None:
    if annotation in (int, float):
        return annotation
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None  # a dict of numbers (`fixed`) is checked as reward parameters, below
    nums = [a for a in typing.get_args(annotation) if a in (int, float)]
    return nums[0] if nums else None


def _limit(m: typing.Any) -> float:
    return next(getattr(m, op) for op in ("ge", "gt", "le", "lt") if hasattr(m, op))


def numeric_fields(cls: type[BaseModel] = SearchSpace, prefix: str = "") -> dict[str, tuple]:
    """Every numeric field a space file can set, by dotted key: (int or float, lower bound, upper bound), a
    bound being (operator, value) from the field's own constraints or, for the sections whose models live
    elsewhere, `SPACE_LIMITS`."""
    out: dict[str, tuple] = {}
    for name, f in cls.model_fields.items():
        key = prefix + name
        number = _numeric(f.annotation)
        if number is not None:
            low = next(((type(m).__name__, _limit(m)) for m in f.metadata if isinstance(m, at.Ge | at.Gt)), None)
            high = next(((type(m).__name__, _limit(m)) for m in f.metadata if isinstance(m, at.Le | at.Lt)), None)
            if high is None and key in SPACE_LIMITS:
                high = ("Le", SPACE_LIMITS[key][0])
            out[key] = (number, low, high)
        for sub in typing.get_args(f.annotation) or (f.annotation,):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                out.update(numeric_fields(sub, key + "."))
    return out


FIELDS = numeric_fields()
BOUNDED = sorted(k for k in FIELDS if k not in BOUNDED_BY_ANOTHER)


def test_every_number_a_space_sets_has_both_bounds():
    """The issue's class as a whole: no numeric field of a space or its sub-configs without an upper bound
    (nor a lower one); a new field must say what is sane for it."""
    assert set(FIELDS) >= BOUNDED_BY_ANOTHER
    missing = [k for k in BOUNDED if FIELDS[k][1] is None or FIELDS[k][2] is None]
    assert missing == []
    assert len(BOUNDED) > 55  # every section is walked (model, env, data, eval.leak_alarm, ...)


def set_key(space: dict, key: str, value: typing.Any) -> dict:
    """A copy of a parsed space with the dotted `key` set (a model size makes the model a dict of sizes)."""
    space = copy.deepcopy(space)
    if key.startswith("model.") and not isinstance(space.get("model"), dict):
        space["model"] = dict(TINY)
    node = space
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return space


def consistent(key: str, value: typing.Any) -> dict:
    """The e2e space with `key` at `value` and its partner fields moved out of the way, whatever `value` is
    (a batch holds its minibatch, heads divide the width, thresholds stay ordered, the splits leave a test
    split): so a refusal is about `key`, and an in-bounds value is accepted."""
    space = set_key(SMOKE, key, value)
    fraction = value if isinstance(value, float) and 0 < value < 1 else 0.5
    heads = value if isinstance(value, int) and 1 <= value <= 64 else 1
    partners = {
        "train.iterations": {"scheduler.grace_period": 1},
        "train.train_batch_size": {"train.minibatch_size": 4},
        "train.minibatch_size": {"train.train_batch_size": 2**20},
        "scheduler.grace_period": {"train.iterations": 100_000},
        "model.n_heads": {"model.d_model": 64 * heads},
        "model.d_model": {"model.n_heads": 1},
        "collapse.hold_high": {"collapse.hold_low": 0.0},
        "collapse.hold_low": {"collapse.hold_high": 100.0},
        "preflight.skill_low": {"preflight.skill_high": 1.0},
        "preflight.skill_high": {"preflight.skill_low": 0.5},
        "data.train_frac": {"data.val_frac": (1 - fraction) / 4},
        "data.val_frac": {"data.train_frac": (1 - fraction) / 4},
    }
    for other, v in partners.get(key, {}).items():
        space = set_key(space, other, v)
    return space


@st.composite
def beyond(draw, key: str) -> typing.Any:
    """A value of field `key` past one of its bounds (the bound itself where the bound is strict)."""
    number, low, high = FIELDS[key]
    op, bound = draw(st.sampled_from([b for b in (low, high) if b is not None]))
    above = op in ("Le", "Lt")
    if op in ("Lt", "Gt") and draw(st.booleans()):
        return number(bound)  # a strict bound is itself out
    if number is int:
        step = draw(st.one_of(st.integers(1, 10), st.integers(11, 10**30)))
        return int(bound) + step if above else int(bound) - step
    step = draw(st.one_of(st.floats(1e-6, 10.0), st.floats(10.0, 1e300), st.just(1e300)))
    value = bound + max(step, abs(bound) * 1e-6) if above else bound - max(step, abs(bound) * 1e-6)
    return value if value != bound else (bound + 1 if above else bound - 1)


@st.composite
def within(draw, key: str) -> typing.Any:
    """A value of field `key` inside its bounds: either bound (where it is inclusive) or a point between."""
    number, (lop, lo), (hop, hi) = FIELDS[key]
    if number is int:
        lo, hi = int(lo) + (lop == "Gt"), int(hi) - (hop == "Lt")
        return draw(st.one_of(st.sampled_from([lo, hi]), st.integers(lo, hi)))
    ends = [e for e, strict in ((lo, lop == "Gt"), (hi, hop == "Lt")) if not strict]
    inner = st.floats(lo, hi, exclude_min=lop == "Gt", exclude_max=hop == "Lt", allow_nan=False)
    return draw(st.one_of(st.sampled_from([float(e) for e in ends]), inner) if ends else inner)


def load(space: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "space.yaml"
        path.write_text(yaml.safe_dump(space))
        load_space(str(path))


def refused_by_preflight(space: dict) -> str:
    """The one line `preflight` refuses `space` with (asserted: exit 2, nothing written)."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "space.yaml").write_text(yaml.safe_dump(space))
        before = tree_state(root)
        code, _, err = run(["preflight", "space.yaml"], root)
        assert_refused(code, err)
        assert "space.yaml: " in err and tree_state(root) == before
        return err


@settings(FUZZ, max_examples=150)
@given(data=st.data(), key=st.sampled_from(BOUNDED))
def test_fuzz_every_bounded_number_beyond_its_bound_is_refused_naming_it(data, key):
    value = data.draw(beyond(key), label="value")
    err = refused_by_preflight(consistent(key, value))
    section, leaf = key.rsplit(".", 1)
    # The file, the section and the key: `model: d_model 64 is not divisible by n_heads 65` names n_heads too.
    assert f"space.yaml: {section}" in err and leaf in err, err


@settings(FUZZ, max_examples=150)
@given(data=st.data(), key=st.sampled_from(BOUNDED))
def test_fuzz_every_bounded_number_within_its_bounds_is_accepted(data, key):
    load(consistent(key, data.draw(within(key), label="value")))


#: What a searched range sets, and that field's bounds: PPO settings (their TrainConfig fields), an
#: environment setting (its SPACE_LIMITS bound) and a reward parameter (REWARD_PARAM_LIMIT).
SEARCHED = {
    **{name: (FIELDS[f"train.{name}"][1], FIELDS[f"train.{name}"][2]) for name in TRAIN_PARAMS},
    "trailing_window": (FIELDS["env.trailing_window"][1], FIELDS["env.trailing_window"][2]),
    "trade_cost": (("Ge", 0.0), ("Le", REWARD_PARAM_LIMIT)),
}


def searched(name: str, rng: dict) -> dict:
    space = copy.deepcopy(SMOKE)
    space["search"].pop("entropy_coeff")
    space["search"][name] = rng
    return space


@settings(FUZZ, max_examples=60)
@given(
    name=st.sampled_from(sorted(SEARCHED)),
    end=st.sampled_from(["low", "high", "choice"]),
    far=st.one_of(st.floats(1e-3, 1e6), st.just(1e300)),
)
def test_fuzz_a_searched_range_is_held_to_the_bounds_of_what_it_sets(name, end, far):
    (_, lo), (_, hi) = SEARCHED[name]
    mid = (lo + hi) / 2 if name != "lr" else 1e-3
    if end == "high":
        rng = {"low": mid, "high": hi + far * max(1.0, hi)}
    elif end == "low":
        rng = {"low": lo - far, "high": mid}
    else:
        rng = {"choices": [mid, hi + far * max(1.0, hi)]}
    if name == "trailing_window":
        rng = {k: [int(c) for c in v] if k == "choices" else int(v) for k, v in rng.items()}
        if end != "choice":
            rng["integer"] = True
    err = refused_by_preflight(searched(name, rng))
    assert f"space.yaml: search.{name}" in err, err


@pytest.mark.parametrize("name", sorted(SEARCHED))
def test_a_searched_range_within_its_bounds_is_accepted(name):
    (lop, lo), (_, hi) = SEARCHED[name]
    low = lo if lop == "Ge" else hi / 1000
    rng = {"low": int(low), "high": int(hi), "integer": True} if name == "trailing_window" else {"low": low, "high": hi}
    load(searched(name, rng))


@settings(FUZZ, max_examples=30)
@given(value=st.one_of(st.floats(REWARD_PARAM_LIMIT, 1e300, exclude_min=True), st.floats(-1e300, 0.0), st.just(1e300)))
def test_fuzz_a_fixed_reward_parameter_beyond_its_magnitude_is_refused(value):
    err = refused_by_preflight(set_key(SMOKE, "fixed.reward_scale", value))
    assert "space.yaml: fixed.reward_scale: " in err


@settings(FUZZ, max_examples=20)
@given(value=st.floats(1e-6, REWARD_PARAM_LIMIT))
def test_fuzz_a_fixed_reward_parameter_within_its_magnitude_is_accepted(value):
    load(set_key(SMOKE, "fixed.reward_scale", value))


@settings(FUZZ, max_examples=20)
@given(text=st.text(min_size=501, max_size=5000))
def test_fuzz_a_description_past_500_characters_is_refused(text):
    assert "space.yaml: description: " in refused_by_preflight(set_key(SMOKE, "description", text))


@settings(FUZZ, max_examples=40)
@given(
    kind=st.sampled_from(["grace_period", "perturbation_interval", "collapse", "skill"]),
    a=st.integers(0, 1000),
    b=st.integers(1, 1000),
)
def test_fuzz_settings_that_contradict_each_other_are_refused(kind, a, b):
    """Each field within its own bounds, the pair impossible: an ASHA grace period or a PBT interval past the
    iterations a trial has, collapse thresholds or preflight skills inverted."""
    space = copy.deepcopy(SMOKE)
    iterations = 1 + a % 50
    space["train"]["iterations"] = iterations
    space["scheduler"] = {"grace_period": 1}
    if kind == "grace_period":
        space["scheduler"]["grace_period"], key = iterations + b, "scheduler.grace_period"
    elif kind == "perturbation_interval":
        space["scheduler"] = {"kind": "pbt", "perturbation_interval": iterations + b, "mutate": ["entropy_coeff"]}
        key = "scheduler.perturbation_interval"
    elif kind == "collapse":  # hold_high at or below hold_low
        low = 1.0 + (a % 980) / 10
        space["collapse"] = {"warmup": 1, "hold_low": low, "hold_high": low * (1 - (b % 100) / 100)}
        key = "collapse"
    else:  # skill_low above skill_high
        high = 0.5 + (a % 500) / 1000
        space["preflight"] = {"enabled": False, "skill_low": min(high + (b % 500 + 1) / 1000, 1.0), "skill_high": high}
        key = "preflight"
    assert f"space.yaml: {key}: " in refused_by_preflight(space)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("budget.trials", 10**9),
        ("fixed.reward_scale", 1e300),
        ("description", "x" * 5000),
        ("collapse.hold_low", 99.5),  # above hold_high 99
        ("scheduler.grace_period", 1000),  # past 2 iterations
        ("train.seed", 2**40),
    ],
)
def test_the_issues_absurd_spaces_never_start_a_search(tmp_path, key, value):
    """The values the issue saw accepted, through `search` itself: refused before --out exists."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(set_key(SMOKE, key, value)))
    code, _, err = run(["search", "space.yaml", "--out", "out"], tmp_path)
    assert_refused(code, err)
    assert f"space.yaml: {key.split('.')[0]}" in err and not (tmp_path / "out").exists()


def test_values_at_their_bounds_pass_the_preflight(tmp_path):
    space = set_key(set_key(SMOKE, "budget.trials", 100_000), "fixed.reward_scale", REWARD_PARAM_LIMIT)
    space = set_key(set_key(space, "train.seed", 2**31 - 1), "budget.seed", MAX_SEED)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    code, out, err = run(["preflight", "space.yaml"], tmp_path)
    assert code == 0, err
    assert "reward_scale=1e+06" in out


def test_a_space_bound_error_names_the_file_and_key_and_why(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(set_key(SMOKE, "env.context_len", 10**7)))
    with pytest.raises(UserInputError) as err:
        load_space(str(path))
    assert str(err.value) == (
        f"{path}: env.context_len: 10,000,000 is beyond 4,096 (attention costs grow with its square; 4,096 "
        "hourly bars is half a year)"
    )
