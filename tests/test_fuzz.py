"""The bad-input contract, fuzzed: over generated command lines, space files, datasets and search
directories, every refusal is one line on stderr, exit code 2, no traceback, no file written or changed,
nothing executed; an input that happens to be harmless gives the same result as the untouched one.

Everything runs in process through `himari_ray.cli.main` and never gets as far as starting Ray: the
generators only make inputs that the checks before Ray must refuse (or, for `data inspect` and
`preflight`, commands that never start Ray at all). Seeds are fixed (derandomize) so CI sees the same
cases every run; the case counts add up to well over 300. `ISSUE_18_CLASSES` at the end maps each bad-input
class issue 18 names to the tests that cover it, here and in the `test_fuzz_*` files beside this one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from himari_ray.cli import main
from himari_ray.search.space import bundled_spaces

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(
    derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
#: The space the mutations start from: the end-to-end test space (reward_scale fixed, two ranges).
SMOKE = yaml.safe_load((REPO / "tests" / "spaces" / "e2e.yaml").read_text())


def tree_state(root: Path) -> dict[str, str]:
    """Every file under root with a digest of its bytes: to prove nothing was written or changed."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def assert_refused(code: int, err: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and len(lines[0]) <= 420


# --- command lines -----------------------------------------------------------------------------------------

BAD_INTS = st.one_of(
    st.integers(max_value=-1).map(str),
    st.integers(min_value=10**5 + 1, max_value=10**30).map(str),
    st.sampled_from(["", "1e25", "3.5", "nan", "inf", "0x10", "⁵", " ", "--", "1_000_000_000_000"]),
    st.text(min_size=1, max_size=300).filter(lambda s: not s.strip().lstrip("-").isdigit()),
)
INT_FLAGS = [
    ["search", "--trials"],
    ["preflight", "--sample"],
    ["data", "synth", "--out", "x", "--n-bars"],
    ["data", "import", "f.csv", "--out", "x", "--min-dwell"],
]


@settings(FUZZ, max_examples=80)
@given(flag=st.sampled_from(INT_FLAGS), value=BAD_INTS)
def test_fuzz_integer_flags(flag, value):
    with tempfile.TemporaryDirectory() as d:
        code, _, err = run([*flag, value], Path(d))
        assert_refused(code, err)
        assert list(Path(d).iterdir()) == []


@settings(FUZZ, max_examples=40)
@given(
    argv=st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40), max_size=5)
)
def test_fuzz_arbitrary_words_never_crash(argv):
    """Random words after `himari-ray`: refused in one line (or help), never a traceback, nothing written.
    A word list that happens to form a runnable command is not tried (the first word is never one)."""
    with tempfile.TemporaryDirectory() as d:
        argv = ["--bogus-first", *argv]
        code, _, err = run(argv, Path(d))
        assert_refused(code, err)
        assert list(Path(d).iterdir()) == []


# --- space files -------------------------------------------------------------------------------------------

NASTY_VALUES = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -1, -1e9, 1e300, "", "x" * 500, [], {}, None, True]),
    st.text(max_size=30),
)
TOP_KEYS = sorted(SMOKE)


def mutate_space(draw_kind: str, key: str, value, raw: dict) -> str:
    """A space file text that must be refused; each kind is invalid by construction."""
    space = copy.deepcopy(raw)
    if draw_kind == "unknown_key":
        space[f"{key}_typo"] = value if value is not None else 1
    elif draw_kind == "drop_required":
        del space[{"name": "name", "family": "family", "search": "search"}.get(key, "family")]
    elif draw_kind == "bad_number":
        section, field = {
            "train": ("train", "iterations"),
            "budget": ("budget", "trials"),
            "env": ("env", "context_len"),
            "fixed": ("fixed", "reward_scale"),
        }.get(key, ("train", "lr"))
        # Invalid whatever was drawn: numbers become negative or non-finite, anything else non-numeric text or
        # a container (pydantic would coerce True or "5" to a valid count).
        if isinstance(value, bool) or value is None:
            bad = float("nan")
        elif isinstance(value, int | float):
            bad = -abs(value) - 1 if value == value else value
        elif isinstance(value, str):
            bad = "x" + value
        else:
            bad = value
        space.setdefault(section, {})[field] = bad
    elif draw_kind == "inverted_range":
        name = next(iter(space["search"]))
        space["search"][name] = {"low": 1.0, "high": 0.5}
    elif draw_kind == "nan_range":
        name = next(iter(space["search"]))
        space["search"][name] = {"low": float("nan"), "high": 1.0}
    elif draw_kind == "not_a_mapping":
        return yaml.safe_dump([space]) if key < "m" else "just a string\n"
    text = yaml.safe_dump(space)
    if draw_kind == "duplicate_key":
        text = text + f"{key}: {json.dumps(raw.get(key, 1))}\n"
    return text


@settings(FUZZ, max_examples=120)
@given(
    kind=st.sampled_from(
        ["unknown_key", "drop_required", "bad_number", "inverted_range", "nan_range", "not_a_mapping", "duplicate_key"]
    ),
    key=st.sampled_from(TOP_KEYS),
    value=NASTY_VALUES,
    command=st.sampled_from(["search", "preflight"]),
)
def test_fuzz_space_files(kind, key, value, command):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "space.yaml").write_text(mutate_space(kind, key, value, SMOKE))
        before = tree_state(root)
        argv = [command, "space.yaml"] + (["--out", "out"] if command == "search" else [])
        code, _, err = run(argv, root)
        assert_refused(code, err)
        assert "space.yaml" in err
        assert tree_state(root) == before


@settings(FUZZ, max_examples=20)
@given(data=st.binary(min_size=1, max_size=2000))
def test_fuzz_binary_space_files(data):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "space.yaml").write_bytes(b"\xff\xfe" + data)  # never valid UTF-8 at the start
        code, _, err = run(["search", "space.yaml", "--out", "out"], root)
        assert_refused(code, err)
        assert not (root / "out").exists()


# --- datasets ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-ds")
    code, _, err = run(["data", "synth", "--n-bars", "1500", "--out", "ds"], root)
    assert code == 0, err
    code, clean, _ = run(["data", "inspect", "ds"], root)
    assert code == 0
    return root / "ds", clean


@settings(FUZZ, max_examples=60)
@given(offset=st.floats(min_value=0, max_value=1, exclude_max=True), flip=st.integers(min_value=1, max_value=255))
def test_fuzz_bit_flips_in_arrays_are_refused_or_harmless(saved_dataset, offset, flip):
    src, clean = saved_dataset
    with tempfile.TemporaryDirectory() as d:
        ds = Path(d) / "ds"
        shutil.copytree(src, ds)
        data = bytearray((ds / "arrays.npz").read_bytes())
        data[int(offset * len(data))] ^= flip
        (ds / "arrays.npz").write_bytes(bytes(data))
        before = tree_state(Path(d))
        code, out, err = run(["data", "inspect", "ds"], Path(d))
        if code == 0:  # e.g. a flipped timestamp in the zip directory: the arrays are intact
            assert out.replace(str(ds), "") == clean.replace(str(src), "")
        else:
            assert_refused(code, err)
        assert tree_state(Path(d)) == before


@settings(FUZZ, max_examples=60)
@given(
    path=st.lists(st.sampled_from(["scaler", "mean", "std", "clip", "feature_names", "format", "format_version",
                                   "checksums", "train", "val", "splits", 0, 1]), min_size=1, max_size=3),
    value=NASTY_VALUES,
)  # fmt: skip
def test_fuzz_metadata_edits_are_refused_or_harmless(saved_dataset, path, value):
    src, _ = saved_dataset
    with tempfile.TemporaryDirectory() as d:
        ds = Path(d) / "ds"
        shutil.copytree(src, ds)
        meta = json.loads((ds / "metadata.json").read_text())
        node = meta
        for key in path[:-1]:
            nxt = (
                node.get(key)
                if isinstance(node, dict)
                else (node[key] if isinstance(key, int) and key < len(node) else None)
            )
            if not isinstance(nxt, dict | list):
                break
            node = nxt
        last = path[-1]
        if isinstance(node, dict):
            node[str(last)] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
        text = json.dumps(meta, allow_nan=True)
        (ds / "metadata.json").write_text(text)
        before = tree_state(Path(d))
        code, _, err = run(["data", "inspect", "ds"], Path(d))
        if code != 0:
            assert_refused(code, err)
        assert tree_state(Path(d)) == before


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@settings(FUZZ, max_examples=25)
@given(
    wrap=st.sampled_from(["bare", "in_dict", "in_split", "in_list", "as_array_dtype"]),
    protocol=st.integers(min_value=2, max_value=5),
)
def test_fuzz_pickles_that_run_code_are_refused_and_nothing_runs(wrap, protocol):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        marker = root / "pwned"
        payload = _Payload(marker)
        obj = {
            "bare": payload,
            "in_dict": {"train": payload},
            "in_split": {"train": {"features_raw": payload}, "val": {}, "test": {}, "metadata": {}},
            "in_list": [np.zeros(3), payload],
            "as_array_dtype": {"train": {"prices": np.array([payload], dtype=object)}},
        }[wrap]
        (root / "seed.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
        code, _, err = run(["data", "import", "seed.pkl", "--out", "ds"], root)
        assert_refused(code, err)
        assert not marker.exists() and not (root / "ds").exists()


# --- search directories ------------------------------------------------------------------------------------

SEARCH_CORRUPTIONS = ["no_manifest", "manifest_garbage", "manifest_not_object", "no_space", "space_garbage",
                      "no_tune", "empty_dir"]  # fmt: skip


@settings(FUZZ, max_examples=30)
@given(kind=st.sampled_from(SEARCH_CORRUPTIONS), junk=st.binary(max_size=200))
def test_fuzz_resume_of_broken_search_directories_is_refused(kind, junk):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s"
        (out / "tune").mkdir(parents=True)
        (out / "search.json").write_text(json.dumps({"space": "smoke", "data": {"source": "sample"}}))
        shutil.copyfile(bundled_spaces()["smoke"], out / "space.yaml")
        if kind == "no_manifest":
            (out / "search.json").unlink()
        elif kind == "manifest_garbage":
            (out / "search.json").write_bytes(b"{" + junk)
        elif kind == "manifest_not_object":
            (out / "search.json").write_text("[1, 2]")
        elif kind == "no_space":
            (out / "space.yaml").unlink()
        elif kind == "space_garbage":
            (out / "space.yaml").write_bytes(b"\xff" + junk)
        elif kind == "no_tune":
            shutil.rmtree(out / "tune")
        elif kind == "empty_dir":
            shutil.rmtree(out)
            out.mkdir()
        before = tree_state(Path(d))
        code, _, err = run(["search", "--resume", "s"], Path(d))
        assert_refused(code, err)
        assert tree_state(Path(d)) == before


# --- issue 18's classes, each to the tests that cover it ---------------------------------------------------

#: Every bad-input class issue 18 names, with the tests that generate its cases (here or in the `test_fuzz_*`
#: files beside this one, split by what they read). A class without a test, or a test that is gone, fails below.
ISSUE_18_CLASSES: dict[str, tuple[str, ...]] = {
    "secrets: a --storage password or a Vast key never printed or written": (
        "test_secrets.py::test_search_with_an_unreachable_password_storage_prints_and_writes_no_password",
        "test_secrets.py::test_vast_up_with_an_unreachable_password_storage_prints_and_writes_no_password",
        "test_secrets.py::test_ray_records_the_driver_command_line_redacted",
        "test_secrets.py::test_a_key_in_the_environment_with_whitespace_inside_is_refused_by_every_vast_command",
        "test_secrets.py::test_a_key_file_with_whitespace_or_control_inside_is_one_line_that_never_quotes_it",
    ),
    "resume after SIGKILL: only whole files signed, resumed at any kill point": (
        "test_sigkill_sweep.py::test_sigkill_at_seeded_instants_then_resume_finishes_every_search",
        "test_integrity.py::test_a_file_caught_mid_write_is_never_signed",
        "test_integrity.py::test_a_trial_file_cut_short_is_restored_and_a_changed_one_refused",
    ),
    "CSV/Parquet syntax: unterminated quotes, ragged rows, empty files, a bare URL line": (
        "test_fuzz_import.py::test_fuzz_csv_syntax_is_refused_at_its_line",
        "test_fuzz_import.py::test_fuzz_empty_and_blank_files_are_refused",
        "test_fuzz_import.py::test_fuzz_damaged_gzip_and_parquet_are_refused_or_harmless",
    ),
    "procfs, sysfs, FIFOs and directories as bar files": (
        "test_fuzz_import.py::test_pseudo_and_non_regular_files_are_refused_unread",
    ),
    "huge inputs: a sparse file, a gzip bomb, too many rows": (
        "test_fuzz_import.py::test_a_512_mib_sparse_file_is_refused_by_its_size",
        "test_fuzz_import.py::test_a_gzip_bomb_is_refused_after_reading_a_few_mib",
        "test_fuzz_import.py::test_fuzz_high_ratio_gzip_is_refused",
        "test_fuzz_import.py::test_too_many_rows_or_fields_are_refused_before_parsing",
    ),
    "extreme or tiny prices and volumes, non-finite values, short splits": (
        "test_fuzz_import_values.py::test_fuzz_prices_and_volumes_beyond_the_bounds_are_refused",
        "test_fuzz_import_values.py::test_the_widest_moves_within_the_bounds_keep_every_feature_finite",
        "test_fuzz_import_values.py::test_fuzz_non_finite_and_non_numeric_values_are_refused_naming_the_column",
        "test_fuzz_import_values.py::test_fuzz_files_too_short_for_the_splits_are_refused_with_the_count",
    ),
    "space files: absurd counts, magnitudes, descriptions, inverted or contradictory settings": (
        "test_fuzz_space_bounds.py::test_fuzz_every_bounded_number_beyond_its_bound_is_refused_naming_it",
        "test_fuzz_space_bounds.py::test_fuzz_a_searched_range_is_held_to_the_bounds_of_what_it_sets",
        "test_fuzz_space_bounds.py::test_fuzz_a_description_past_500_characters_is_refused",
        "test_fuzz_space_bounds.py::test_fuzz_settings_that_contradict_each_other_are_refused",
        "test_fuzz.py::test_fuzz_space_files",
    ),
    "seeds beyond 2**32-1 on the command line": (
        "test_fuzz_search.py::test_fuzz_seeds_beyond_32_bits_or_negative_are_refused_on_every_flag",
    ),
    "analyze and report on unreadable, binary or wrongly shaped result.json": (
        "test_fuzz_search.py::test_fuzz_analyze_prints_the_readable_trials_then_names_each_unreadable_file_exit_2",
        "test_fuzz_search.py::test_report_writes_what_it_can_then_names_the_unreadable_file_exit_2",
    ),
    "--resume with unusable study storage or tampered Tune state, refused before anything changes": (
        "test_fuzz_resume.py::test_resume_with_a_study_storage_it_cannot_use_is_refused_and_writes_nothing",
        "test_fuzz_resume.py::test_fuzz_resume_of_a_tampered_tune_state_is_refused_before_anything_changes",
        "test_fuzz.py::test_fuzz_resume_of_broken_search_directories_is_refused",
    ),
    "a new search's --storage in another application's database": (
        "test_fuzz_search.py::test_a_new_search_into_another_applications_database_is_refused_and_writes_nothing",
    ),
    "vast: binary key files, corrupt ledgers and launch files, non-numeric instance ids": (
        "test_fuzz_vast.py::test_fuzz_key_files",
        "test_fuzz_vast_launch.py::test_fuzz_byte_corruptions_of_a_real_launch",
        "test_fuzz_vast_launch.py::test_fuzz_instance_ids_in_the_files",
        "test_fuzz_vast_launch.py::test_fuzz_instance_ids_on_the_command_line",
        "test_cost.py::test_analyze_with_a_corrupt_launch_ledger_is_one_line_naming_it_exit_2",
    ),
    "vast: offers with missing fields, network errors, vast up failing into an empty --out": (
        "test_fuzz_vast.py::test_fuzz_offer_records",
        "test_fuzz_vast.py::test_fuzz_network_failures",
        "test_fuzz_vast.py::test_fuzz_vast_up_failures_leave_no_trace",
    ),
}


def test_every_class_of_issue_18_names_tests_that_exist_and_every_fuzz_file_is_listed():
    import ast

    here = Path(__file__).parent
    defined = {
        path.name: {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        for path in here.glob("test_*.py")
    }
    named = [ref for refs in ISSUE_18_CLASSES.values() for ref in refs]
    missing = [ref for ref in named if ref.split("::")[1] not in defined.get(ref.split("::")[0], set())]
    assert not missing, missing
    unlisted = {f for f in defined if f.startswith("test_fuzz_")} - {ref.split("::")[0] for ref in named}
    assert not unlisted, unlisted
