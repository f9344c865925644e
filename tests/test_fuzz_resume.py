"""Issue 18's bad-input classes for `search --resume`, fuzzed (the helpers and the contract are
`test_fuzz.py`'s): a study storage it cannot reach or use, and a Tune state or signature that was tampered
with. Each is refused in one line, exit 2, the whole tree as it was (file by file, its bytes) and nothing
created; a pickle that would run a command never runs.

Every test resumes a copy of one real finished search of the end-to-end space (`finished_search`, Ray
once, about a minute; marked slow); a refused resume never gets as far as starting Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from himari_ray.search.signed_files import SIGNATURE_FILE, SNAPSHOT_DIR, STATE, kind, read_signature
from tests.test_fuzz import FUZZ, REPO, assert_refused, run, tree_state

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
