"""The bars the `data import` fuzz tests mutate, and how they import them: the first 1300 hours of the bundled
sample (as lines, text and a frame; 2600 hours for the tests that need more), a working directory that holds
one unrelated file, an import run in process, and the check that a refusal is one line naming the file and
wrote nothing."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from himari_ray.data.dataset import sample_path
from tests.test_fuzz import assert_refused, run, tree_state

N_BARS = 1300
with gzip.open(sample_path(), "rt") as _f:
    LONG = [next(_f) for _ in range(2601)]  # the header, then 2600 bars
LINES = LONG[: N_BARS + 1]  # the header, then N_BARS bars
CLEAN = "".join(LINES)
FRAME = pd.read_csv(io.StringIO(CLEAN))
PRICES = ["open", "high", "low", "close"]


@contextmanager
def workdir():
    """A fresh working directory holding one unrelated file, so 'nothing written' is checked on a non-empty tree."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "keep").mkdir()
        (root / "keep" / "notes.txt").write_text("untouched")
        yield root


def import_file(root: Path, name: str, *extra: str) -> tuple[int, str, str]:
    return run(["data", "import", name, "--out", "out", *extra], root)


def refused(root: Path, name: str, *extra: str, needle: str = "") -> str:
    """Import `name` from `root`: one-line refusal naming the file, and nothing written or changed."""
    before = tree_state(root)
    code, _, err = import_file(root, name, *extra)
    assert_refused(code, err)
    assert name in err and needle in err, err
    assert not (root / "out").exists() and tree_state(root) == before
    return err


def checksums(root: Path, out: str = "out") -> dict[str, str]:
    return json.loads((root / out / "metadata.json").read_text())["checksums"]
