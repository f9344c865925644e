"""Reading a user's bar file within bounds, before any parser sees it.

A parser handed a FIFO waits forever, one handed a 512 MiB sparse file or a gzip bomb fills memory, and one
handed a ragged or half-quoted CSV raises its own exception types. Everything here either returns bounded
input or raises one `UserInputError` line naming the file and the problem:

- only regular files are read (not directories, FIFOs, devices or sockets), at most `MAX_INPUT_BYTES` on
  disk; files under /proc and /sys are refused unread (their size reads 0, their content is live state), and
  so is any other file whose size reads 0 but which has content;
- gzip is decompressed as a stream, 64 KiB at a time, and refused as soon as the output passes
  `MAX_INPUT_BYTES` or `MAX_GZIP_RATIO` times the compressed bytes read so far (never inflated whole first);
- CSV text is checked line by line (the `csv` module, strict quoting): one field count throughout, no
  unterminated quote, at most `MAX_ROWS` rows and `MAX_FIELDS` fields (what pandas then holds as strings).

The limits are generous for real data: decades of hourly bars are a few hundred thousand rows and tens of
MiB of CSV (the bundled 2018-2019 sample: 17,431 rows, 1.1 MiB).
"""

from __future__ import annotations

import csv
import io
import os
import stat
import zlib
from pathlib import Path

from himari_ray.types import UserInputError, shorten

#: The most bytes read from a file, and the most a compressed file may expand to: 128 MiB, about a million
#: hourly bars of Binance klines (the widest layout, ~130 bytes a row): more than `MAX_ROWS` in any layout.
MAX_INPUT_BYTES = 128 * 2**20
#: The most rows (bars) a file may hold, and the most hours a file's bars may span: 500,000 hours are 57 years.
MAX_ROWS = 500_000
#: The most fields a CSV may hold: `MAX_ROWS` rows of Binance klines (12 columns, the widest layout). pandas
#: keeps every field as a string before the numbers are parsed (about 90 bytes each): 6 million are ~0.5 GiB,
#: where 128 MiB of "1,1,1,..." would be 67 million.
MAX_FIELDS = MAX_ROWS * 12
#: Gzipped CSV of real bars shrinks about 3-10x (the bundled sample: 2.9x); a file inflating more than 100x
#: is refused (zeros compress about 1000x: that is what a decompression bomb is made of).
MAX_GZIP_RATIO = 100
#: Output the ratio cap waits for, so a tiny file of repeated rows is not refused for compressing well.
_RATIO_GRACE_BYTES = 2**20
_CHUNK = 64 * 2**10
GZIP_MAGIC = b"\x1f\x8b"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_input_file(path: Path) -> int:
    """The file's size on disk, or a one-line refusal: missing, a directory, not a regular file, too big."""
    try:
        st = path.stat()  # follows links: a link to a FIFO is a FIFO
    except (FileNotFoundError, NotADirectoryError):
        raise UserInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if _is_pseudo(path):
        raise UserInputError(f"{path}: a kernel pseudo-file (procfs or sysfs), not a bar file")
    if stat.S_ISDIR(st.st_mode):
        raise UserInputError(f"{path}: is a directory; give the bar file itself")
    if not stat.S_ISREG(st.st_mode):
        raise UserInputError(f"{path}: {_kind(st.st_mode)}, not a file; give a bar file")
    if st.st_size > MAX_INPUT_BYTES:
        raise UserInputError(f"{path}: {_mib(st.st_size)} is more than the {_mib(MAX_INPUT_BYTES)} a bar file may hold")
    return st.st_size


#: Kernel pseudo-filesystems: their files are live state (a process's environment, memory), never bars, and an
#: error quoting their first line (the "header") could quote a secret.
PSEUDO_ROOTS = ("/proc", "/sys")


def _is_pseudo(path: Path) -> bool:
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a link loop: stat() already refused what does not exist
        return False
    return any(resolved == Path(root) or Path(root) in resolved.parents for root in PSEUDO_ROOTS)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def read_bounded(path: Path) -> bytes | bytearray:
    """The file's bytes, gunzipped if it is gzip, never more than `MAX_INPUT_BYTES` in memory."""
    size = check_input_file(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
            if head == GZIP_MAGIC:
                return _gunzip(path, fh, head)
            raw = head + fh.read(MAX_INPUT_BYTES + 1 - len(head))
    except OSError as exc:  # e.g. EIO on a procfs file that refuses reads
        raise UserInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_INPUT_BYTES:  # a file that grew while it was read
        raise UserInputError(f"{path}: more than the {_mib(MAX_INPUT_BYTES)} a bar file may hold")
    if size == 0 and raw:  # stat says empty, reading says otherwise: a pseudo-file mounted somewhere else
        raise UserInputError(f"{path}: a pseudo-file (its size reads 0, it has content), not a bar file")
    return raw


def _gunzip(path: Path, fh: io.BufferedReader, head: bytes) -> bytearray:
    """Stream-decompress a (possibly multi-member) gzip file, checking both caps after every chunk.

    Each `decompress` call returns at most `_CHUNK` bytes; a call that returns a full chunk may leave output
    inside zlib with no input left, so the next call drains it (with no new input) before reading more."""
    out = bytearray()
    inflater = _inflater()  # None between members
    consumed = 0  # compressed bytes the inflater has taken so far
    data, drain = head, False
    while True:
        if inflater is None:  # between members: another member, or the zero padding gzip allows, may follow
            data = data.lstrip(b"\0")
            if not data:
                data = fh.read(_CHUNK)
                if not data:
                    break
                continue
            if len(data) < len(GZIP_MAGIC):
                data += fh.read(_CHUNK)
            if data[: len(GZIP_MAGIC)] != GZIP_MAGIC:
                raise UserInputError(f"{path}: corrupt gzip (trailing bytes after the compressed data)")
            inflater = _inflater()
        if not data and not drain:
            data = fh.read(_CHUNK)
            if not data:
                break
        try:
            piece = inflater.decompress(data, _CHUNK)
        except zlib.error as exc:
            raise UserInputError(f"{path}: corrupt gzip ({exc})") from None
        if inflater.eof:  # a member ended; what follows it is in unused_data
            rest = inflater.unused_data
            consumed += len(data) - len(rest)
            data, drain, inflater = rest, False, None
        else:
            tail = inflater.unconsumed_tail
            consumed += len(data) - len(tail)
            data, drain = tail, len(piece) == _CHUNK
        out += piece
        _check_expansion(path, len(out), consumed)
    if inflater is not None:
        raise UserInputError(f"{path}: corrupt gzip (truncated: the compressed stream ends early)")
    return out


def _inflater():  # zlib.Decompress has no public type name
    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # 16 +: a gzip header and trailer, checked


def _check_expansion(path: Path, size: int, consumed: int) -> None:
    if size > MAX_INPUT_BYTES:
        raise UserInputError(f"{path}: decompresses to more than the {_mib(MAX_INPUT_BYTES)} a bar file may hold")
    if size > _RATIO_GRACE_BYTES and size > MAX_GZIP_RATIO * max(consumed, 1):
        raise UserInputError(
            f"{path}: gzip expands more than {MAX_GZIP_RATIO}x (a decompression bomb, not bars?); refused"
        )


def read_text(path: Path) -> str:
    """The file as text (UTF-8, a BOM allowed), bounded and gunzipped as `read_bounded` does."""
    raw = read_bounded(path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserInputError(f"{path}: not a UTF-8 text file (CSV) nor Parquet") from None


def check_csv_shape(path: Path, text: str, first_is: str, first_line: int = 1) -> None:
    """Refuse CSV text pandas would misread or fail on with its own exceptions: an unterminated quote, a row
    with another field count than the first line (`first_is`: "header" or "first row"; pandas would take
    extra fields as an index and pad short rows with NaN), more than `MAX_ROWS` rows or `MAX_FIELDS` fields.
    Blank and whitespace-only lines are skipped, as pandas skips them. Errors name the file's line a record
    starts on (`text` begins at line `first_line`; an unterminated quote is reported where it opens)."""
    if (
        max(text.count("\n"), text.count("\r")) > MAX_ROWS + 2
    ):  # cheap first: a header (and a URL line) on top of MAX_ROWS bars
        raise UserInputError(f"{path}: more than {MAX_ROWS:,} rows (the most bars a file may hold)")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # newline="": \r\n and \r end lines too
    width, rows, start = 0, 0, first_line
    try:
        while True:
            start = reader.line_num + first_line
            row = next(reader, None)
            if row is None:
                break
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            rows += 1
            if rows == 1:
                width = len(row)
            elif len(row) != width:
                raise UserInputError(
                    f"{path}: line {start}: {len(row)} fields, the {first_is} has {width} (a ragged row)"
                )
            if rows > MAX_ROWS + 1:
                raise UserInputError(f"{path}: more than {MAX_ROWS:,} rows (the most bars a file may hold)")
            if rows * width > MAX_FIELDS:
                raise UserInputError(
                    f"{path}: {width} columns x {rows:,} rows is more than the {MAX_FIELDS:,} fields a bar file "
                    "may hold (drop the columns that are not bars)"
                )
    except csv.Error as exc:
        raise UserInputError(f"{path}: line {start}: not CSV ({_csv_reason(str(exc))})") from None


def _csv_reason(message: str) -> str:
    if "end of data" in message:
        return "an unterminated quoted field"
    if "field limit" in message:  # one quoted field swallowing the rest of the file
        return f"a field longer than {csv.field_size_limit():,} characters: an unterminated quote?"
    return shorten(message)


def check_columnar_size(path: Path, kind: str) -> None:
    """Refuse a Parquet or Feather file with more than `MAX_ROWS` rows or more than `MAX_INPUT_BYTES` of
    uncompressed data, before pandas reads it: from the metadata (Parquet: its row groups' sizes) or one
    record batch at a time (Feather). pyarrow's own exceptions (a damaged file) are left to the caller."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = size = 0
    if kind == "parquet":
        meta = pq.ParquetFile(path).metadata
        rows, size = meta.num_rows, sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    else:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                rows, size = rows + batch.num_rows, size + batch.nbytes
                if rows > MAX_ROWS or size > MAX_INPUT_BYTES:
                    break
    if rows > MAX_ROWS:
        raise UserInputError(f"{path}: {rows:,} rows; a bar file may hold at most {MAX_ROWS:,}")
    if size > MAX_INPUT_BYTES:
        raise UserInputError(f"{path}: expands to more than the {_mib(MAX_INPUT_BYTES)} a bar file may hold")


def regular_file_or_error(path: Path) -> Path:
    """`path` when it names a readable regular file (for readers that open it themselves, e.g. pyarrow)."""
    check_input_file(path)
    if not os.access(path, os.R_OK):
        raise UserInputError(f"{path}: cannot read (permission denied)")
    return path
