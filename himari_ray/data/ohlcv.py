"""OHLCV import: the common exchange-export layouts, validated, on a regular hourly UTC grid.

Layouts recognised from the file itself:
- freqtrade / generic CSV, Parquet or Feather: a header with `date` or `timestamp` and open, high, low, close,
  volume (freqtrade's `.feather` candles: `date, open, high, low, close, volume`, dates as UTC datetimes);
- freqtrade's `.json` (or `.json.gz`) candles: a list of `[ms_timestamp, open, high, low, close, volume]` rows;
- Binance klines: no header, 12 columns, open time in ms (or µs, as Binance writes since 2025);
- CryptoDataDownload: a URL line first, then `unix,date,symbol,open,high,low,close,Volume <BASE>,...`,
  newest first.

Gap policy (ARCHITECTURE §2.1): missing hours are inserted as *filled* bars (open = high = low = close = the last
close, volume 0) so that every lookback is measured in hours, and each row carries `real`. A decision at
bar t may earn returns[t+1] only if bars t and t+1 are both real (`tradable`), so no action ever earns the
move across an outage as if it were one hour. Features at real bars after a gap do see the jump in their
trailing windows: that is the true price change since the last known price, known at that bar.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from himari_ray.types import UserInputError, quote, shorten

OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
#: The longest outage filled with flat bars; longer is a stray row (a 1970 date among 2018 bars) or two
#: histories in one file, which would otherwise become months of untradable filler.
MAX_GAP_HOURS = 14 * 24
_TIME_COLUMNS = ("timestamp", "date", "datetime", "time", "open_time", "unix")
_BINANCE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume",
    "close_time", "quote_volume", "trades", "taker_base_volume", "taker_quote_volume", "ignore",
)  # fmt: skip
HOUR_NS = 3_600_000_000_000


@dataclass(frozen=True)
class ImportReport:
    """What the importer repaired or noticed, for the dataset's metadata and `data inspect`."""

    layout: str
    rows_read: int
    duplicates_removed: int
    was_unsorted: bool
    gaps: list[tuple[str, int]] = field(default_factory=list)  # (last real bar before the gap, hours missing)

    @property
    def missing_hours(self) -> int:
        return sum(h for _, h in self.gaps)

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "rows_read": self.rows_read,
            "duplicates_removed": self.duplicates_removed,
            "was_unsorted": self.was_unsorted,
            "gaps": [list(g) for g in self.gaps],
            "missing_hours": self.missing_hours,
        }


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt archive
            raise UserInputError(f"{path}: corrupt gzip ({exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserInputError(f"{path}: not a UTF-8 text file (CSV) nor Parquet") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_line(exc: Exception) -> str:
    return shorten(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _read_columnar(path: Path, kind: str) -> pd.DataFrame:
    """Parquet or Feather through pyarrow, which pandas needs for both (optional: `pip install pyarrow`)."""
    reader = pd.read_parquet if kind == "parquet" else pd.read_feather
    try:
        frame = reader(path)
    except ImportError:
        raise UserInputError(f"{path}: reading {kind.title()} needs pyarrow (pip install pyarrow)") from None
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise UserInputError(f"{path}: cannot read {kind.title()} ({_first_line(exc)})") from None
    if isinstance(frame.index, pd.DatetimeIndex) and not any(c in frame.columns for c in _TIME_COLUMNS):
        frame = frame.reset_index(names="date")
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    return frame


def _read_freqtrade_json(path: Path) -> pd.DataFrame:
    """freqtrade's JSON candles (`orient="values"`): `[[ms_timestamp, open, high, low, close, volume], ...]`."""
    try:
        rows = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    expected = "[ms_timestamp, open, high, low, close, volume]"
    if not isinstance(rows, list) or not rows:
        raise UserInputError(f"{path}: expected freqtrade's JSON candles, a list of {expected} rows; got {quote(rows)}")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, list) or len(r) != len(OHLCV_COLUMNS) + 1), None)
    if bad is not None:
        raise UserInputError(f"{path}: row {bad}: expected {expected}, got {quote(rows[bad])}")
    return pd.DataFrame(rows, columns=["date", *OHLCV_COLUMNS], dtype=object)


def _read_raw(path: Path) -> tuple[pd.DataFrame, str]:
    """The file as a frame with lower-case column names, and the layout it was recognised as."""
    name = path.name.lower()
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_columnar(path, "parquet"), "parquet"
    if path.suffix.lower() in (".feather", ".ftr"):
        return _read_columnar(path, "feather"), "feather"
    if name.endswith((".json", ".json.gz")):
        return _read_freqtrade_json(path), "freqtrade-json"
    text = _read_text(path)
    lines = text.splitlines()
    if not lines:
        raise UserInputError(f"{path}: empty file")
    first = lines[0].strip()
    if first.lower().startswith("http") or "cryptodatadownload" in first.lower():
        frame = pd.read_csv(io.StringIO("\n".join(lines[1:])), dtype=str)
        layout = "cryptodatadownload"
    elif _is_number(first.split(",")[0]):
        frame = pd.read_csv(io.StringIO(text), header=None, dtype=str)
        if frame.shape[1] != len(_BINANCE_COLUMNS):
            raise UserInputError(
                f"{path}: headerless file with {frame.shape[1]} columns; Binance klines have {len(_BINANCE_COLUMNS)}"
            )
        frame.columns = list(_BINANCE_COLUMNS)
        layout = "binance"
    else:
        frame = pd.read_csv(io.StringIO(text), dtype=str)
        layout = "csv"
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if layout == "cryptodatadownload" and "volume" not in frame.columns:
        # `Volume BTC` (base asset) comes before `Volume USDT` (quote): the base volume is the bar's volume.
        base = next((c for c in frame.columns if c.startswith("volume ")), None)
        if base is not None:
            frame = frame.rename(columns={base: "volume"})
    return frame, layout


def _parse_time(path: Path, frame: pd.DataFrame) -> pd.Series:
    col = next((c for c in _TIME_COLUMNS if c in frame.columns), None)
    if col is None:
        raise UserInputError(f"{path}: missing timestamp column (one of {', '.join(_TIME_COLUMNS)})")
    raw = frame[col]
    if pd.api.types.is_datetime64_any_dtype(raw):  # Parquet/Feather datetimes (naive ones are taken as UTC)
        return pd.to_datetime(raw, utc=True)
    numeric = pd.to_numeric(raw, errors="coerce")
    try:
        if numeric.notna().all():
            # Epoch numbers: seconds, milliseconds or microseconds, told apart by magnitude.
            magnitude = float(numeric.abs().median())
            unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us"
            ts = pd.to_datetime(numeric.astype("int64"), unit=unit, utc=True)
        else:
            ts = pd.to_datetime(raw, utc=True, format="mixed")
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime):
        bad = raw[pd.to_datetime(raw, utc=True, errors="coerce", format="mixed").isna()]
        example = bad.iloc[0] if len(bad) else raw.iloc[0]
        raise UserInputError(f"{path}: column {col}: unparsable timestamp {quote(example)}") from None
    if ts.isna().any():
        row = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise UserInputError(f"{path}: column {col}: missing timestamp at row {row}")
    # A bar from the future is a typo (and beyond 2262 does not even fit nanoseconds): say which row.
    late = ts > pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)
    if late.any():
        row = int(np.flatnonzero(late.to_numpy())[0])
        raise UserInputError(
            f"{path}: column {col}: timestamp {quote(str(raw.iloc[row]))} at row {row} is in the future"
        )
    return ts


def read_ohlcv(path: str | Path, min_bars: int = 1) -> tuple[pd.DataFrame, ImportReport]:
    """Read, validate and regularise an OHLCV file.

    Returns a frame indexed by hourly UTC bar open times with float64 columns open, high, low, close,
    volume and a bool column `real` (False for bars filled into gaps), and what was repaired.
    Raises `UserInputError` (one line naming the file and the problem) for anything beyond repair.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    frame, layout = _read_raw(path)
    missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
    if missing:
        raise UserInputError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {shorten(', '.join(map(str, frame.columns)))})"
        )
    if frame.empty:
        raise UserInputError(f"{path}: no bars (a header, or nothing, but no rows)")
    ts = _parse_time(path, frame)
    values = {}
    for col in OHLCV_COLUMNS:
        num = pd.to_numeric(frame[col], errors="coerce")
        bad = num.isna() | ~np.isfinite(num.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserInputError(
                f"{path}: column {col}: non-numeric or missing value {quote(frame[col].iloc[row])} at row {row}"
            )
        values[col] = num.to_numpy(dtype=np.float64)
    # pandas 3 infers a resolution per parse (s, ms, us...): fix ns so integer arithmetic on times is uniform.
    bars = pd.DataFrame(values, index=pd.DatetimeIndex(ts, name="timestamp").as_unit("ns"))
    for col in PRICE_COLUMNS:
        bad_rows = np.flatnonzero(bars[col].to_numpy() <= 0)
        if len(bad_rows):
            row = int(bad_rows[0])
            raise UserInputError(f"{path}: column {col}: non-positive price {bars[col].iloc[row]} at row {row}")
    if (bars["volume"] < 0).any():
        row = int(np.flatnonzero(bars["volume"].to_numpy() < 0)[0])
        raise UserInputError(f"{path}: column volume: negative volume at row {row}")
    inverted = (bars["high"] < bars[["open", "close", "low"]].max(axis=1)) | (
        bars["low"] > bars[["open", "close"]].min(axis=1)
    )
    if inverted.any():
        row = int(np.flatnonzero(inverted.to_numpy())[0])
        raise UserInputError(f"{path}: row {row}: high/low do not bracket open/close")

    rows_read = len(bars)
    was_unsorted = not bars.index.is_monotonic_increasing
    bars = bars.sort_index(kind="stable")
    dup_index = bars.index.duplicated(keep="first")
    if dup_index.any():
        dups = bars[bars.index.duplicated(keep=False)]
        conflicting = dups.groupby(level=0).nunique().gt(1).any(axis=1)
        if conflicting.any():
            when = conflicting[conflicting].index[0]
            raise UserInputError(f"{path}: conflicting duplicate bars at {when.isoformat()} (different prices)")
        bars = bars[~dup_index]
    if (bars.index.asi8 % HOUR_NS != 0).any():
        when = bars.index[np.flatnonzero(bars.index.asi8 % HOUR_NS != 0)[0]]
        raise UserInputError(f"{path}: bar at {when.isoformat()} is not on an hour boundary (hourly bars expected)")
    steps = np.diff(bars.index.asi8) // HOUR_NS
    if len(steps) and np.median(steps) != 1:
        raise UserInputError(f"{path}: bars are {int(np.median(steps))} hours apart; hourly bars expected")
    gap_at = np.flatnonzero(steps > 1)
    gaps = [(bars.index[i].isoformat(), int(steps[i] - 1)) for i in gap_at]
    if len(steps) and steps.max() - 1 > MAX_GAP_HOURS:
        i = int(np.argmax(steps))
        raise UserInputError(
            f"{path}: {int(steps[i] - 1)} missing hours after {bars.index[i].isoformat()} (more than "
            f"{MAX_GAP_HOURS // 24} days): a stray row or two histories in one file? Split or clean it"
        )

    grid = pd.date_range(bars.index[0], bars.index[-1], freq="h", name="timestamp", unit="ns")
    real = grid.isin(bars.index)
    regular = bars.reindex(grid)
    close = regular["close"].ffill()
    for col in PRICE_COLUMNS:
        regular[col] = regular[col].fillna(close)
    regular["volume"] = regular["volume"].fillna(0.0)
    regular["real"] = real
    if int(real.sum()) < min_bars:
        raise UserInputError(f"{path}: {int(real.sum())} bars; needs at least {min_bars} (longest lookback + warm-up)")
    report = ImportReport(
        layout=layout,
        rows_read=rows_read,
        duplicates_removed=int(dup_index.sum()),
        was_unsorted=was_unsorted,
        gaps=gaps,
    )
    return regular, report
