"""The bad-input contract, fuzzed: over generated command lines, space files, datasets and search
directories, every refusal is one line on stderr, exit code 2, no traceback, no file written or changed,
nothing executed; an input that happens to be harmless gives the same result as the untouched one.

Everything runs in process through `himari_ray.cli.main` and never gets as far as starting Ray: the
generators only make inputs that the checks before Ray must refuse (or, for `data inspect` and
`preflight`, commands that never start Ray at all). Seeds are fixed (derandomize) so CI sees the same
cases every run; the case counts add up to well over 300.
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
