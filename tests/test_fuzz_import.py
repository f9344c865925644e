"""The bad-input contract for bar files (issue 18), fuzzed through `himari-ray data import`: the files
themselves. CSV syntax, empty files, pseudo-files and non-regular files, size bombs, damaged gzip and
Parquet. Every refusal is one line on stderr naming the file, exit code 2, no traceback, nothing written
under the working directory; a mutation that leaves the bars as they were imports to the same dataset, bar
for bar, and the bundled sample imports the same as gzip, plain text and multi-member gzip. (The values
inside a file that reads are `test_fuzz_import_values.py`'s.)

Everything runs in process (`tests.test_fuzz.run`) and never starts Ray. The bars are the first 1300
hours of the bundled sample (tests/import_kit.py; an import needs 1210 at the default fractions).
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import socket
import tracemalloc
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from himari_ray.data import reading
from himari_ray.data.dataset import sample_path
from himari_ray.data.ohlcv import read_ohlcv
from himari_ray.data.store import load_dataset_dir
from himari_ray.types import UserInputError
from tests.import_kit import CLEAN, FRAME, LINES, N_BARS, checksums, import_file, refused, workdir
from tests.test_fuzz import FUZZ, assert_refused, run, tree_state


@pytest.fixture(scope="module")
def clean_checksums(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("clean")
    (root / "bars.csv").write_text(CLEAN)
    code, _, err = import_file(root, "bars.csv")
    assert code == 0 and err == "", err
    return checksums(root)


def imports_identically(root: Path, name: str, expected: dict[str, str]) -> None:
    code, _, err = import_file(root, name)
    assert code == 0 and err == "", err
    assert checksums(root) == expected


# --- CSV syntax ---------------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=40)
@given(
    kind=st.sampled_from(["open_quote", "extra_field", "missing_field", "quote_inside", "lone_quote_line"]),
    line=st.integers(min_value=1, max_value=N_BARS),
    field=st.integers(min_value=0, max_value=5),
)
def test_fuzz_csv_syntax_is_refused_at_its_line(kind, line, field):
    lines = list(LINES)
    fields = lines[line].rstrip("\n").split(",")
    if kind == "open_quote":  # a quote opening a field and never closed
        fields[field] = '"' + fields[field]
    elif kind == "extra_field":
        fields.append("1")
    elif kind == "missing_field":
        del fields[field]
    elif kind == "quote_inside":  # 12"34: csv and pandas read it literally; not a number
        fields[field] = fields[field][:2] + '"' + fields[field][2:]
    else:
        fields = ['"']
    lines[line] = ",".join(fields) + "\n"
    with workdir() as root:
        (root / "bad.csv").write_text("".join(lines))
        err = refused(root, "bad.csv")
        if kind in ("open_quote", "extra_field", "missing_field", "lone_quote_line"):
            assert f"line {line + 1}:" in err  # the file's line, where the record starts


HARMLESS = {
    "crlf": lambda t: t.replace("\n", "\r\n"),
    "cr": lambda t: t.replace("\n", "\r"),
    "bom": lambda t: "\ufeff" + t,
    "no_final_newline": lambda t: t.rstrip("\n"),
    "quoted": lambda t: "".join(",".join(f'"{f}"' for f in line.split(",")) + "\n" for line in t.splitlines()),
    "blank_lines": None,
    "whitespace_lines": None,
}


@settings(FUZZ, max_examples=8)
@given(kind=st.sampled_from(sorted(HARMLESS)), where=st.lists(st.integers(2, N_BARS), min_size=1, max_size=5))
def test_fuzz_harmless_csv_variations_import_identically(clean_checksums, kind, where):
    lines = list(LINES)
    for i in sorted(where, reverse=True) if HARMLESS[kind] is None else ():
        lines.insert(i, "\n" if kind == "blank_lines" else " \t \n")  # pandas skips both
    text = "".join(lines) if HARMLESS[kind] is None else HARMLESS[kind]("".join(lines))
    with workdir() as root:
        (root / "bars.csv").write_text(text, newline="")
        imports_identically(root, "bars.csv", clean_checksums)


# --- empty files --------------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=30)
@given(
    blank=st.text(alphabet=" \t\r\n\x0b\x0c", max_size=40),
    url=st.sampled_from(["", "https://www.CryptoDataDownload.com", "http://x", "www.cryptodatadownload.com/data"]),
    gz=st.booleans(),
)
def test_fuzz_empty_and_blank_files_are_refused(blank, url, gz):
    text = (url + "\n" + blank) if url else blank
    name = "empty.csv.gz" if gz else "empty.csv"
    with workdir() as root:
        data = text.encode()
        (root / name).write_bytes(gzip.compress(data) if gz else data)
        err = refused(root, name)
        assert ("nothing after the CryptoDataDownload URL line" if url else "empty file") in err


# --- pseudo-files and non-regular files ---------------------------------------------------------------------

SUFFIXES = [".csv", ".csv.gz", ".json", ".parquet", ".feather"]
PSEUDO = ["proc_environ", "proc_status", "proc_dir", "link_to_proc", "fifo", "link_to_fifo", "directory",
          "dev_null", "socket", "missing", "dangling_link"]  # fmt: skip


@contextmanager
def no_hang(seconds: int = 10):
    """A FIFO opened for reading blocks until a writer comes: fail instead of hanging the suite."""

    def hang(*_):
        raise AssertionError("the importer blocked on a non-regular file")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def make_pseudo(kind: str, root: Path, name: str) -> str:
    """The path to import for `kind`: a kernel file, or a non-regular file made at `root / name`."""
    fixed = {"proc_environ": "/proc/self/environ", "proc_status": "/proc/self/status", "proc_dir": "/proc/self",
             "dev_null": "/dev/null", "missing": name}  # fmt: skip
    if kind in fixed:
        return fixed[kind]
    target = root / name
    if kind in ("fifo", "link_to_fifo"):
        os.mkfifo(root / "pipe")
    if kind.startswith("link_to") or kind == "dangling_link":
        target.symlink_to({"link_to_proc": "/proc/self/environ", "link_to_fifo": root / "pipe"}.get(kind, "nowhere"))
    elif kind == "fifo":
        os.rename(root / "pipe", target)
    elif kind == "directory":  # pyarrow would read a directory of Parquet files as one dataset
        target.mkdir()
        pd.DataFrame({"a": [1]}).to_parquet(target / "part.parquet")
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(target))  # the socket file stays after the socket closes
    return name


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("kind", PSEUDO)
def test_pseudo_and_non_regular_files_are_refused_unread(kind, suffix):
    with workdir() as root, no_hang():
        err = refused(root, make_pseudo(kind, root, f"bars{suffix}"))
        if "proc" in kind:
            assert "pseudo-file" in err and "PATH" not in err  # nothing of the environment is quoted


def test_an_existing_out_is_never_touched_whatever_the_input():
    with workdir() as root:
        (root / "out").mkdir()
        (root / "out" / "old.txt").write_text("old")
        for name in ("/proc/self/environ", "missing.csv", "keep"):
            before = tree_state(root)
            code, _, err = import_file(root, name)
            assert_refused(code, err)
            assert "already exists" in err and tree_state(root) == before


# --- size bombs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_512_mib_sparse_file_is_refused_by_its_size(suffix, tmp_path):
    big = tmp_path / f"big{suffix}"  # outside the checked tree: hashing it would read 512 MiB of zeros
    with open(big, "wb") as f:
        f.truncate(512 * 2**20)  # no block is written
    with workdir() as root:
        refused(root, str(big), needle="512 MiB is more than the 128 MiB")


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory) -> Path:
    """200 MiB of zeros after a CSV header, gzipped as a stream (compressed ~0.9 MiB, never held whole)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.csv.gz"
    deflate = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(2**20)
    with path.open("wb") as f:
        f.write(deflate.compress(LINES[0].encode()))
        for _ in range(200):
            f.write(deflate.compress(zeros))
        f.write(deflate.flush())
    return path


@pytest.mark.parametrize("name", ["bomb.csv.gz", "bomb.json.gz"])
def test_a_gzip_bomb_is_refused_after_reading_a_few_mib(gzip_bomb, name):
    with workdir() as root:
        os.symlink(gzip_bomb, root / name)
        refused(root, name, needle="gzip expands more than 100x")
        tracemalloc.start()
        try:
            with pytest.raises(UserInputError, match="decompression bomb"):
                read_ohlcv(root / name)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB held: the bomb was not read as a stream"


@settings(FUZZ, max_examples=10)
@given(repeats=st.integers(min_value=30_000, max_value=200_000), row=st.integers(min_value=1, max_value=N_BARS))
def test_fuzz_high_ratio_gzip_is_refused(repeats, row):
    """One bar repeated: a few hundred KiB that would inflate past 100x (real bars compress 3-10x)."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = LINES[row].encode() * 1000
    data = deflate.compress(LINES[0].encode())
    data += b"".join(deflate.compress(block) for _ in range(repeats // 1000)) + deflate.flush()
    with workdir() as root:
        (root / "rep.csv.gz").write_bytes(data)
        refused(root, "rep.csv.gz", needle="expands more than 100x")


def test_output_past_the_cap_is_refused_at_any_ratio(monkeypatch):
    """Text that compresses only 2x: the size cap, not the ratio cap, stops it."""
    monkeypatch.setattr(reading, "MAX_INPUT_BYTES", 2 * 2**20)
    text = np.random.default_rng(0).bytes(3 * 2**19).hex().encode()  # 3 MiB of hex digits
    with workdir() as root:
        (root / "hex.csv.gz").write_bytes(gzip.compress(text))
        refused(root, "hex.csv.gz", needle="decompresses to more than the 2 MiB")


ROW_BOMBS = {
    "rows.csv": (lambda p: p.write_text("timestamp\n" + "1\n" * 600_000), "more than 500,000 rows"),
    "rows.json": (lambda p: p.write_text("[" + ",".join(["[1,2,3,4,5,6]"] * 600_000) + "]"), "more than 500,000 rows"),
    "rows.parquet": (lambda p: pd.DataFrame({"close": np.ones(600_000)}).to_parquet(p), "600,000 rows; a bar file"),
    "wide.csv": (lambda p: p.write_text(("1," * 19 + "1\n") * 310_000), "more than the 6,000,000 fields"),
}


@pytest.mark.parametrize("name", ROW_BOMBS)
def test_too_many_rows_or_fields_are_refused_before_parsing(name):
    """A few MiB (a few KiB of Parquet) that pandas would turn into hundreds of MiB of objects."""
    make, needle = ROW_BOMBS[name]
    with workdir() as root:
        make(root / name)
        refused(root, name, needle=needle)


# --- damaged gzip and Parquet -------------------------------------------------------------------------------


def _parquet() -> bytes:
    buf = io.BytesIO()
    FRAME.assign(timestamp=pd.to_datetime(FRAME.timestamp, utc=True)).to_parquet(buf)
    return buf.getvalue()


CLEAN_FILES = {"bars.csv.gz": gzip.compress(CLEAN.encode(), mtime=0), "bars.parquet": _parquet()}


@settings(FUZZ, max_examples=80)
@given(
    name=st.sampled_from(sorted(CLEAN_FILES)),
    kind=st.sampled_from(["cut", "flip", "zero", "magic_only", "tail_only"]),
    at=st.floats(min_value=0, max_value=1, exclude_max=True),
    xor=st.integers(min_value=1, max_value=255),
)
def test_fuzz_damaged_gzip_and_parquet_are_refused_or_harmless(clean_checksums, name, kind, at, xor):
    data = bytearray(CLEAN_FILES[name])
    i = int(at * len(data))
    magic = data[:4]
    if kind == "flip":
        data[i] ^= xor
    else:
        data = {"cut": data[:i], "zero": b"", "magic_only": magic, "tail_only": magic + data[-i - 8 :]}[kind]
    with workdir() as root:
        (root / name).write_bytes(bytes(data))
        before = tree_state(root)
        code, _, err = import_file(root, name)
        if code == 0:  # a flip in gzip's mtime or OS byte (the bars are CRC-checked), or in a Parquet value
            assert kind == "flip" and err == ""  # (Parquet pages carry no checksum: it may pass as another bar)
            if name.endswith(".gz"):
                assert checksums(root) == clean_checksums
        else:
            assert_refused(code, err)
            assert name in err and tree_state(root) == before


# --- valid files still import as before ---------------------------------------------------------------------


def test_the_bundled_sample_imports_identically_as_gzip_plain_and_multi_member():
    raw = gzip.decompress(sample_path().read_bytes())
    half = raw.index(b"\n", len(raw) // 2) + 1
    with workdir() as root:
        (root / "plain.csv").write_bytes(raw)
        (root / "multi.csv.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]) + b"\0" * 8)
        digests = []
        for i, name in enumerate([str(sample_path()), "plain.csv", "multi.csv.gz"]):
            code, _, err = run(["data", "import", name, "--out", f"ds{i}"], root)
            assert code == 0 and err == "", err
            digests.append(checksums(root, f"ds{i}"))
        assert digests[0] == digests[1] == digests[2]
        assert len(load_dataset_dir(root / "ds0").train) == 10_397  # 60% of the grid after the warm-up, as before
