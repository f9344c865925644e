"""Issue 18's bad-input classes for a search's flags and results, fuzzed (the helpers and the contract are
`test_fuzz.py`'s): every seed flag beyond 32 bits, and `analyze` and `report` on result files that cannot be
read. A bad seed is refused in one line, exit 2, nothing written; `analyze` and `report` print what they
can first, then name each unreadable file, one line each. (Space files' bounds are
`test_fuzz_space_bounds.py`'s, `--resume`'s bad input `test_fuzz_resume.py`'s.)

Everything runs in process in seconds and never starts Ray.

Root cannot be denied a read, so an unreadable result.json is made the ways root cannot read one as a file
either: a directory named result.json, and a symbolic link to nothing (no monkeypatching of the reader).
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from himari_ray.types import MAX_SEED
from tests.test_fuzz import FUZZ, REPO, assert_refused, run, tree_state

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


# --- a new search's --storage ------------------------------------------------------------------------------


def other_apps_db(path: Path, tables: int) -> None:
    """A SQLite database of some other application: `tables` tables of its own, a row in each, no Optuna."""
    import sqlite3

    with sqlite3.connect(path) as db:
        for i in range(tables):
            db.execute(f"CREATE TABLE notes_{i} (text TEXT)")
            db.execute(f"INSERT INTO notes_{i} VALUES ('kept')")


@pytest.mark.parametrize("tables", [1, 7])
@pytest.mark.parametrize("command", ["search", "vast up"])
def test_a_new_search_into_another_applications_database_is_refused_and_writes_nothing(
    tmp_path, monkeypatch, tables, command
):
    """Optuna creates its tables in any database it opens: a new search (here or on rented boxes) given
    `--storage` of a database that holds other tables and no study would have added Optuna's beside them.
    Refused first, reading only: one line naming the flag and the tables, exit 2, the database's bytes and
    the directory as they were, and nothing rented (Vast's address is a closed port: any request fails)."""
    monkeypatch.setenv("VAST_API_KEY", "0123456789abcdef")
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    db = tmp_path / "app.db"
    other_apps_db(db, tables)
    before = tree_state(tmp_path)
    space = str(REPO / "tests/spaces/e2e.yaml")
    code, _, err = run([*command.split(), space, "--out", "s", "--storage", f"sqlite:///{db}"], tmp_path)
    assert_refused(code, err)
    assert "--storage" in err and "notes_0" in err and "no Optuna studies table" in err, err
    assert tree_state(tmp_path) == before and not (tmp_path / "s").exists()


def test_a_new_search_takes_a_missing_an_empty_or_an_optuna_database(tmp_path):
    """What a new search's storage may be, read the same way: a file not there yet, an empty one, or a database
    that already holds Optuna's tables (another search's study, or one another driver is creating).
    None of these reads writes anything."""
    import sqlite3

    import optuna

    from himari_ray.search.storage import probe_new_storage

    (tmp_path / "empty.db").touch()
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    # Another driver creating Optuna's schema this moment: some of its tables, not yet `studies`.
    with sqlite3.connect(tmp_path / "half.db") as db:
        db.execute("CREATE TABLE version_info (version_info_id INTEGER)")
    before = tree_state(tmp_path)
    for name in ("missing.db", "empty.db", "optuna.db", "half.db"):
        probe_new_storage(f"sqlite:///{tmp_path / name}")
    assert tree_state(tmp_path) == before and not (tmp_path / "missing.db").exists()
