"""Issue 18's bad-input classes for a search, fuzzed (the helpers and the contract are `test_fuzz.py`'s): every
number a space file sets beyond its sane bound, every seed flag beyond 32 bits, `analyze` and `report` on
result files that cannot be read, and `--resume` against a study storage it cannot reach or a Tune state
that was tampered with. Each is refused in one line, exit 2, nothing written; `analyze` and `report` print
what they can first, then name each unreadable file, one line each.

Everything but the resume tests runs in process in seconds. The resume tests share one real finished
search of the end-to-end space (`finished_search`, Ray once, about a minute; marked slow); a refused resume
never gets as far as starting Ray.

Root cannot be denied a read, so an unreadable result.json is made the ways root cannot read one as a file
either: a directory named result.json, and a symbolic link to nothing (no monkeypatching of the reader).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
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
from himari_ray.search.integrity import SIGNATURE_FILE, SNAPSHOT_DIR, STATE, kind, read_signature
from himari_ray.search.space import REWARD_PARAM_LIMIT, SPACE_LIMITS, SearchSpace, load_space
from himari_ray.types import MAX_SEED, UserInputError
from tests.test_fuzz import FUZZ, REPO, SMOKE, assert_refused, run, tree_state

# --- space files: every number within a sane bound ---------------------------------------------------------

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


# --- seed flags --------------------------------------------------------------------------------------------

#: Every flag that takes a seed (0 .. 2**32 - 1), with the arguments its command needs before it.
SEED_FLAGS = [
    ["search", "--seed"],
    ["preflight", "--seed"],
    ["data", "synth", "--out", "x", "--seed"],
    ["act", "bundle", "bars.csv", "--seed"],
    ["vast", "up", "--out", "x", "--seed"],
]


def test_every_seed_flag_is_listed():
    """A new command with a --seed must join SEED_FLAGS: walk the parser for every `--seed`."""
    import argparse

    from himari_ray.cli import build_parser

    found = set()

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
            elif "--seed" in action.option_strings:
                found.add(path)

    walk(build_parser(), ())
    assert found == {tuple(w for w in flag[:-1] if not w.startswith("-") and w not in ("x", "bundle", "bars.csv"))
                     for flag in SEED_FLAGS}  # fmt: skip


@settings(FUZZ, max_examples=60)
@given(
    flag=st.sampled_from(SEED_FLAGS),
    value=st.one_of(st.integers(MAX_SEED + 1, 10**40), st.integers(-(10**40), -1), st.just(MAX_SEED + 1)),
)
def test_fuzz_seeds_beyond_32_bits_or_negative_are_refused_on_every_flag(flag, value):
    with tempfile.TemporaryDirectory() as d:
        code, _, err = run([*flag, str(value)], Path(d))
        assert_refused(code, err)
        assert err.startswith(f"error: --seed: must be in [0, {MAX_SEED}], got {value}")
        assert list(Path(d).iterdir()) == []


@settings(FUZZ, max_examples=20)
@given(value=st.one_of(st.integers(101, 10**40), st.integers(-(10**40), 0)))
def test_fuzz_confirm_seeds_out_of_range_are_refused(value):
    with tempfile.TemporaryDirectory() as d:
        code, _, err = run(["confirm", "search-dir", "--seeds", str(value)], Path(d))
        assert_refused(code, err)
        assert err.startswith(f"error: --seeds: must be in [1, 100], got {value}")


def test_the_largest_seed_is_accepted(tmp_path):
    code, out, err = run(["preflight", str(REPO / "tests/spaces/e2e.yaml"), "--seed", str(MAX_SEED), "--sample", "2"],
                         tmp_path)  # fmt: skip
    assert code == 0, err
    assert f"(seed {MAX_SEED})" in out
    code, _, err = run(["data", "synth", "--out", "ds", "--n-bars", "1000", "--seed", str(MAX_SEED)], tmp_path)
    assert code == 0, err


# --- analyze and report on unreadable results --------------------------------------------------------------

ITERATIONS = 2


def good_lines(n: int) -> list[str]:
    """Trial n's reports: objective 10n - iteration, so trial 1 ranks first."""
    return [
        json.dumps(
            {
                "training_iteration": it,
                "iteration": it,
                "objective": 10.0 * n - it,
                "band_distance": 10.0 * n - it,
                "val_sharpe": 0.1 * n,
                "deployed_hold_pct": 50.0,
                "profit_ok": True,
                "config": {"lr": 1e-3 * n},
            }
        )
        for it in range(1, ITERATIONS + 1)
    ]


def fake_search(root: Path, trials: int = 4) -> Path:
    """A finished search directory written by hand: its manifest, Tune's state (every trial TERMINATED: a
    partial last line is corruption here, not a report being written) and each trial's result.json."""
    out = root / "s"
    (out / "tune").mkdir(parents=True)
    manifest = {"space": "fake", "trials": trials, "iterations": ITERATIONS, "searched": ["lr"],
                "collapse": {"warmup": 1, "hold_low": 1.0, "hold_high": 99.0}}  # fmt: skip
    (out / "search.json").write_text(json.dumps(manifest))
    state = []
    for n in range(1, trials + 1):
        trial = out / "tune" / f"trial_{n:04d}_t{n}"
        trial.mkdir()
        (trial / "result.json").write_text("\n".join(good_lines(n)) + "\n")
        state.append([json.dumps({"trial_id": f"t{n}", "status": "TERMINATED", "relative_logdir": trial.name}), ""])
    (out / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": state}))
    return out


#: Ways a result.json cannot be read: bytes that are not text, JSON cut short, lines that are JSON but no
#: report (wrong shape, missing keys, an iteration that is NaN, text, a list, a flag or negative), a directory
#: where the file belongs, a link to nothing.
SHAPES = ["[1, 2, 3]", '"a string"', "42", "null", '{"objective": 1.0}', '{"training_iteration": NaN}',
          '{"training_iteration": "NaN", "objective": "NaN"}', '{"training_iteration": [1]}',
          '{"training_iteration": true}', '{"training_iteration": -1}', '{"training_iteration": 1.5}']  # fmt: skip
BREAKAGES = ["binary", "truncated", "wrong_shape", "directory", "dangling_link"]


def break_result(path: Path, how: str, data: bytes, shape: str, cut: float) -> None:
    if how == "binary":
        path.write_bytes(b"\xff\xfe\x00" + data)
    elif how == "truncated":  # cut inside the first report: no whole line is left of it
        text = path.read_text()
        first = text.index("\n")
        path.write_text(text[: 1 + int(cut * (first - 2))])
    elif how == "wrong_shape":
        path.write_text(shape + "\n")
    elif how == "directory":
        path.unlink()
        path.mkdir()
        (path / "inside.json").write_text(good_lines(1)[0])
    else:
        path.unlink()
        path.symlink_to(path.parent / "gone" / "result.json")


@settings(FUZZ, max_examples=60)
@given(
    broken=st.lists(st.tuples(st.integers(1, 4), st.sampled_from(BREAKAGES)), min_size=1, max_size=3,
                    unique_by=lambda t: t[0]),
    data=st.binary(max_size=300),
    shape=st.sampled_from(SHAPES),
    cut=st.floats(0, 1),
    fmt=st.sampled_from(["table", "csv", "json"]),
)  # fmt: skip
def test_fuzz_analyze_prints_the_readable_trials_then_names_each_unreadable_file_exit_2(broken, data, shape, cut, fmt):
    with tempfile.TemporaryDirectory() as d:
        out = fake_search(Path(d))
        bad = {}
        for n, how in broken:
            path = out / "tune" / f"trial_{n:04d}_t{n}" / "result.json"
            break_result(path, how, data, shape, cut)
            bad[n] = path
        before = tree_state(Path(d))
        code, stdout, err = run(["analyze", str(out), "--format", fmt], Path(d))
        lines = err.strip().splitlines()
        assert code == 2 and "Traceback" not in err
        assert len(lines) == len(bad) and all(line.startswith("error: ") and len(line) <= 420 for line in lines), err
        assert sorted(line.split()[1].rstrip(":") for line in lines) == sorted(map(str, bad.values()))
        good = [n for n in range(1, 5) if n not in bad]
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(stdout)))
            trained = sorted(int(r["trial"]) for r in rows if r["objective"])
            assert trained == good  # every readable trial is there, with its best report
            assert all(math.isclose(float(r["objective"]), 10.0 * int(r["trial"]) - ITERATIONS)
                       for r in rows if r["objective"])  # fmt: skip
        elif fmt == "json":
            assert len(json.loads(stdout)["problems"]) == len(bad)
        else:
            assert all(f"unreadable: {p}" in stdout for p in bad.values())
        assert tree_state(Path(d)) == before


@settings(FUZZ, max_examples=15)
@given(how=st.sampled_from(BREAKAGES), shape=st.sampled_from(SHAPES), data=st.binary(max_size=100))
def test_fuzz_analyze_with_no_readable_trial_names_every_file(how, shape, data):
    with tempfile.TemporaryDirectory() as d:
        out = fake_search(Path(d), trials=3)
        for path in sorted(out.glob("tune/trial_*/result.json")):
            break_result(path, how, data, shape, 0.5)
        code, stdout, err = run(["analyze", str(out)], Path(d))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 3 and all(line.startswith("error: ") for line in lines), err
        assert stdout == ""


def test_a_binary_result_lists_ten_line_numbers_at_most(tmp_path):
    out = fake_search(tmp_path)
    path = out / "tune" / "trial_0002_t2" / "result.json"
    path.write_bytes(b"\xff\n" * 5000)
    code, _, err = run(["analyze", str(out)], tmp_path)
    assert code == 2
    assert err.strip() == (f"error: {path}: lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... (5000 in all) are not JSON "
                           "reports (skipped); trial 2 shows its 0 other report(s)")  # fmt: skip


def test_a_search_whose_results_all_read_exits_0_and_says_nothing_on_stderr(tmp_path):
    code, stdout, err = run(["analyze", str(fake_search(tmp_path))], tmp_path)
    assert code == 0 and err == "" and "4 of 4 trials: 4 finished" in stdout


@pytest.mark.parametrize("how", BREAKAGES)
def test_report_writes_what_it_can_then_names_the_unreadable_file_exit_2(tmp_path, how):
    pytest.importorskip("matplotlib")
    out = fake_search(tmp_path)
    path = out / "tune" / "trial_0003_t3" / "result.json"
    break_result(path, how, b"\x00\x01", SHAPES[0], 0.5)
    code, stdout, err = run(["report", str(out), "--out", "r.html"], tmp_path)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith(f"error: {path}: "), err
    assert "report: r.html (4 trials" in stdout and str(path) in (tmp_path / "r.html").read_text()


# --- --resume: unreachable storage, tampered state ---------------------------------------------------------

CLI = [sys.executable, "-m", "himari_ray"]


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    """One real finished search of the end-to-end space (2 trials of 2 iterations; Ray once, in its own
    process), signed with the tests' key: what every resume below starts from, on a copy."""
    out = tmp_path_factory.mktemp("fuzz-resume") / "search"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*CLI, "search", str(REPO / "tests/spaces/e2e.yaml"), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def resume_refused(src: Path, change, expect: str) -> None:
    """Copy the search, `change(copy)`, resume it: refused in one line containing `expect`, the whole tree
    (file by file, its bytes) as it was."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s"
        shutil.copytree(src, out, symlinks=True)
        change(out)
        before = tree_state(Path(d))
        names = sorted(str(p.relative_to(d)) for p in Path(d).rglob("*"))
        code, _, err = run(["search", "--resume", str(out)], Path(d))
        assert_refused(code, err)
        assert expect in err, err
        assert tree_state(Path(d)) == before
        assert sorted(str(p.relative_to(d)) for p in Path(d).rglob("*")) == names  # nothing created either


def with_storage(url: str):
    def change(out: Path) -> None:
        manifest = json.loads((out / "search.json").read_text())
        manifest.update(storage=url, study_file=None)
        (out / "search.json").write_text(json.dumps(manifest))

    return change


def replace_study(how: str):
    def change(out: Path) -> None:
        db = out / "study.db"
        db.unlink()
        if how == "not_optuna":  # a SQLite database of something else: Optuna would add its tables to it
            with sqlite3.connect(db) as conn:
                conn.execute("CREATE TABLE notes (text TEXT)")
        elif how == "other_study":
            import optuna

            optuna.create_study(study_name="someone-else", storage=f"sqlite:///{db}")
        elif how == "garbage":
            db.write_bytes(b"not a database " * 64)
        elif how == "empty":
            db.write_bytes(b"")
        elif how == "directory":
            db.mkdir()

    return change


STORAGES = [
    (with_storage("sqlite:////nonexistent/dir/x.db"), "/nonexistent/dir/x.db: the search's study is missing"),
    (with_storage("postgresql://nobody@127.0.0.1:1/none"), "cannot open the study storage"),
    (with_storage("mysql://nobody@127.0.0.1:1/none"), "cannot open the study storage"),
    (with_storage("not a url"), "cannot open the study storage"),
    (replace_study("not_optuna"), "not an Optuna study storage (no studies table)"),
    (replace_study("other_study"), "holds no study named 'e2e'"),
    (replace_study("garbage"), "cannot read the study storage"),
    (replace_study("empty"), "study is missing or empty"),
    (replace_study("directory"), "study is missing or empty"),
    (replace_study("missing"), "study is missing or empty"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(STORAGES)))
def test_resume_with_a_study_storage_it_cannot_use_is_refused_and_writes_nothing(finished_search, case):
    change, expect = STORAGES[case]
    resume_refused(finished_search, change, expect)


def signed_files(out: Path) -> list[str]:
    """Every signed file under tune/ a resume refuses when changed: all but Tune's rewritten state files,
    which are rolled back to their signed copies (a kill leaves them half-written) rather than refused."""
    return sorted(r for r in read_signature(out) if r.startswith("tune/") and kind(Path(r[5:])) != STATE)


@pytest.mark.slow
@settings(FUZZ, max_examples=25)
@given(pick=st.floats(0, 1, exclude_max=True), offset=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255))
def test_fuzz_resume_of_a_tampered_tune_state_is_refused_before_anything_changes(finished_search, pick, offset, flip):
    files = signed_files(finished_search)
    rel = files[int(pick * len(files))]

    def change(out: Path) -> None:
        path = out / rel
        data = bytearray(path.read_bytes())
        if data:
            data[int(offset * len(data))] ^= flip
        else:
            data = bytearray([flip])
        path.write_bytes(bytes(data))
        # and what a kill leaves for a resume to repair: refused, none of it may happen
        newest = max((out / "tune").glob("experiment_state-*.json"))
        newest.write_bytes(newest.read_bytes() + b" ")

    resume_refused(finished_search, change, "changed since the search signed it")


@pytest.mark.slow
@pytest.mark.parametrize("what", ["state_without_signed_copy", "signature_garbage", "signature_missing", "pickle"])
def test_resume_of_tampered_state_without_a_signed_copy_is_refused(finished_search, what):
    def change(out: Path) -> None:
        if what == "state_without_signed_copy":
            state = max((out / "tune").glob("searcher-state-*.pkl"))
            shutil.rmtree(out / SNAPSHOT_DIR)
            state.write_bytes(state.read_bytes()[:-1] + b"!")
        elif what == "signature_garbage":
            (out / SIGNATURE_FILE).write_bytes(b"\x00garbage")
        elif what == "signature_missing":
            (out / SIGNATURE_FILE).unlink()
        else:  # a pickle that would run a command where Tune's own was
            (out / "tune" / "tuner.pkl").write_bytes(b"cos\nsystem\n(S'touch /tmp/pwned-by-resume'\ntR.")

    expect = {"state_without_signed_copy": "changed since the search signed it", "signature_garbage": "unreadable",
              "signature_missing": "missing", "pickle": "changed since the search signed it"}[what]  # fmt: skip
    resume_refused(finished_search, change, expect)
    assert not Path("/tmp/pwned-by-resume").exists()
