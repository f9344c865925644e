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

import io
import json
import warnings
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pandas as pd

from himari_ray.data.reading import (
    MAX_ROWS,
    check_columnar_size,
    check_csv_shape,
    check_input_file,
    read_text,
    regular_file_or_error,
)
from himari_ray.types import UserInputError, quote, shorten

OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
#: The longest outage filled with flat bars; longer is a stray row (a 1970 date among 2018 bars) or two
#: histories in one file, which would otherwise become months of untradable filler.
MAX_GAP_HOURS = 14 * 24
#: Prices a bar may quote: any real market's, in any unit (a token worth a satoshi is 1e-8 BTC; BTC in Iranian
#: rial is about 1e10). Outside them a file is in the wrong unit or corrupt, and the features' products of
#: price and volume would overflow (or underflow to zero) instead of meaning anything.
MIN_PRICE = 1e-12
MAX_PRICE = 1e15
#: Volume a bar may report: more than any asset's whole supply changing hands in one hour.
MAX_VOLUME = 1e18
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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_line(exc: Exception) -> str:
    return shorten(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _lower_columns(path: Path, frame: pd.DataFrame) -> None:
    """Column names stripped and lower-cased in place; a name the importer reads may appear once only."""
    original = [str(c).strip() for c in frame.columns]
    frame.columns = [c.lower() for c in original]
    twice = next((c for c in (*_TIME_COLUMNS, *OHLCV_COLUMNS) if list(frame.columns).count(c) > 1), None)
    if twice is not None:  # "Close" and "close": which one is the bar's close?
        spelled = [o for o in original if o.lower() == twice]
        raise UserInputError(f"{path}: column {twice} appears {len(spelled)} times ({', '.join(map(quote, spelled))})")


def _read_columnar(path: Path, kind: str) -> pd.DataFrame:
    """Parquet or Feather through pyarrow, which pandas needs for both (optional: `pip install pyarrow`)."""
    reader = pd.read_parquet if kind == "parquet" else pd.read_feather
    regular_file_or_error(path)  # pyarrow would read a directory of Parquet files as one dataset
    try:
        check_columnar_size(path, kind)
        frame = reader(path)
    except ImportError:
        raise UserInputError(f"{path}: reading {kind.title()} needs pyarrow (pip install pyarrow)") from None
    except UserInputError:
        raise
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise UserInputError(f"{path}: cannot read {kind.title()} ({_first_line(exc)})") from None
    if isinstance(frame.index, pd.DatetimeIndex) and not any(c in frame.columns for c in _TIME_COLUMNS):
        frame = frame.reset_index(names="date")
    _lower_columns(path, frame)
    return frame


def _read_freqtrade_json(path: Path) -> pd.DataFrame:
    """freqtrade's JSON candles (`orient="values"`): `[[ms_timestamp, open, high, low, close, volume], ...]`."""
    text = read_text(path)
    # Every row opens a bracket: count them before the parser turns each number into a Python object (about 40
    # bytes of text become ~250 bytes of lists and floats).
    if text.count("[") > MAX_ROWS + 1:
        raise UserInputError(f"{path}: more than {MAX_ROWS:,} rows (the most bars a file may hold)")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:  # `[[[[...` nested deeper than the parser's stack
        raise UserInputError(f"{path}: not freqtrade's JSON candles (nested too deep)") from None
    expected = "[ms_timestamp, open, high, low, close, volume]"
    if not isinstance(rows, list) or not rows:
        raise UserInputError(f"{path}: expected freqtrade's JSON candles, a list of {expected} rows; got {quote(rows)}")
    if len(rows) > MAX_ROWS:
        raise UserInputError(f"{path}: {len(rows):,} rows; a bar file may hold at most {MAX_ROWS:,}")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, list) or len(r) != len(OHLCV_COLUMNS) + 1), None)
    if bad is not None:
        raise UserInputError(f"{path}: row {bad}: expected {expected}, got {quote(rows[bad])}")
    return pd.DataFrame(rows, columns=["date", *OHLCV_COLUMNS], dtype=object)


def _read_csv(path: Path, text: str, header: bool, first_line: int = 1) -> pd.DataFrame:
    """pandas' CSV parser on text `check_csv_shape` passed; whatever it still raises is one line."""
    check_csv_shape(path, text, "header" if header else "first row", first_line)
    try:
        with warnings.catch_warnings():  # e.g. a DtypeWarning: the text is checked value by value after
            warnings.simplefilter("ignore")
            return pd.read_csv(io.StringIO(text), header=0 if header else None, dtype=str)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, OverflowError) as exc:
        raise UserInputError(f"{path}: not CSV ({_first_line(exc)})") from None


def _read_raw(path: Path) -> tuple[pd.DataFrame, str]:
    """The file as a frame with lower-case column names, and the layout it was recognised as."""
    name = path.name.lower()
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_columnar(path, "parquet"), "parquet"
    if path.suffix.lower() in (".feather", ".ftr"):
        return _read_columnar(path, "feather"), "feather"
    if name.endswith((".json", ".json.gz")):
        return _read_freqtrade_json(path), "freqtrade-json"
    text = read_text(path)
    if not text.strip():  # nothing, or only newlines and spaces
        raise UserInputError(f"{path}: empty file (no header, no bars)")
    lines = text.splitlines()
    first = lines[0].strip()
    if first.lower().startswith("http") or "cryptodatadownload" in first.lower():
        rest = "\n".join(lines[1:])
        if not rest.strip():
            raise UserInputError(f"{path}: nothing after the CryptoDataDownload URL line (no header, no bars)")
        frame = _read_csv(path, rest, header=True, first_line=2)
        layout = "cryptodatadownload"
    elif _is_number(first.split(",")[0]):
        frame = _read_csv(path, text, header=False)
        if frame.shape[1] != len(_BINANCE_COLUMNS):
            raise UserInputError(
                f"{path}: headerless file with {frame.shape[1]} columns; Binance klines have {len(_BINANCE_COLUMNS)}"
            )
        frame.columns = list(_BINANCE_COLUMNS)
        layout = "binance"
    else:
        frame = _read_csv(path, text, header=True)
        layout = "csv"
    _lower_columns(path, frame)
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
        if pd.isna(raw.iloc[row]):
            raise UserInputError(f"{path}: column {col}: missing timestamp at row {row}")
        raise UserInputError(
            f"{path}: column {col}: timestamp {quote(str(raw.iloc[row]))} at row {row} is out of range"
        )
    # A bar from the future is a typo (and beyond 2262 does not even fit nanoseconds): say which row.
    late = ts > pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)
    if late.any():
        row = int(np.flatnonzero(late.to_numpy())[0])
        raise UserInputError(
            f"{path}: column {col}: timestamp {quote(str(raw.iloc[row]))} at row {row} is in the future"
        )
    # Before the Unix epoch: a sign error or a typo (no market has hourly bars that old; before 1677 a time does
    # not even fit nanoseconds).
    early = ts < pd.Timestamp(0, tz="UTC")
    if early.any():
        row = int(np.flatnonzero(early.to_numpy())[0])
        raise UserInputError(f"{path}: column {col}: timestamp {quote(str(raw.iloc[row]))} at row {row} is before 1970")
    return ts


def _numbers(path: Path, frame: pd.DataFrame, col: str) -> np.ndarray:
    """A column as float64, or one line naming the first value that is not a finite number."""
    raw = frame[col]
    num = pd.to_numeric(raw, errors="coerce")
    values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        text = raw.iloc[row]
        if np.isinf(values[row]):  # "inf", or "1e400": past the largest float
            problem = f"infinite value {quote(text)}"
        elif pd.isna(text):  # an empty field, or one pandas reads as missing ("NaN", "NA", "null")
            problem = "missing value (empty, NaN or NA)"
        else:
            problem = f"non-numeric or missing value {quote(text)}"
        raise UserInputError(f"{path}: column {col}: {problem} at row {row}")
    return values


def _nonzero(text: object) -> bool:
    """Whether a field's text is a number other than zero (one that underflowed to 0.0 when parsed)."""
    try:
        return Decimal(str(text).strip()) != 0
    except (InvalidOperation, ValueError):
        return False


def _check_magnitudes(path: Path, bars: pd.DataFrame) -> None:
    """Prices inside [MIN_PRICE, MAX_PRICE] and volumes up to MAX_VOLUME, or one line naming the first value
    outside: such a value is a unit error or corruption, and would end in an overflow deep in the features."""
    for col in OHLCV_COLUMNS:
        values = bars[col].to_numpy()
        low, high = (0.0, MAX_VOLUME) if col == "volume" else (MIN_PRICE, MAX_PRICE)
        outside = (values < low) | (values > high)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            what = "volume" if col == "volume" else "price"
            raise UserInputError(
                f"{path}: column {col}: {what} {values[row]:g} at row {row} is outside [{low:g}, {high:g}] "
                "(wrong unit or a corrupt value?)"
            )


def read_ohlcv(
    path: str | Path, min_bars: int = 1, why: str = "longest lookback + warm-up"
) -> tuple[pd.DataFrame, ImportReport]:
    """Read, validate and regularise an OHLCV file.

    Returns a frame indexed by hourly UTC bar open times with float64 columns open, high, low, close,
    volume and a bool column `real` (False for bars filled into gaps), and what was repaired.
    Raises `UserInputError` (one line naming the file and the problem) for anything beyond repair.
    """
    path = Path(path)
    check_input_file(path)
    frame, layout = _read_raw(path)
    missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
    if missing:
        found = shorten(", ".join(map(str, frame.columns)))
        sep = next((d for d in (";", "\t", "|") if len(frame.columns) == 1 and d in str(frame.columns[0])), None)
        hint = f"; the header splits on {sep!r}, not on commas: save it as comma-separated CSV" if sep else ""
        raise UserInputError(f"{path}: missing column(s) {', '.join(missing)} (found: {found}){hint}")
    if frame.empty:
        raise UserInputError(f"{path}: no bars (a header, or nothing, but no rows)")
    ts = _parse_time(path, frame)
    values = {col: _numbers(path, frame, col) for col in OHLCV_COLUMNS}
    # pandas 3 infers a resolution per parse (s, ms, us...): fix ns so integer arithmetic on times is uniform.
    bars = pd.DataFrame(values, index=pd.DatetimeIndex(ts, name="timestamp").as_unit("ns"))
    for col in PRICE_COLUMNS:
        bad_rows = np.flatnonzero(bars[col].to_numpy() <= 0)
        if len(bad_rows):
            row = int(bad_rows[0])
            text = frame[col].iloc[row]
            if bars[col].iloc[row] == 0 and _nonzero(text):  # "1e-400": below the smallest float, read as 0
                raise UserInputError(
                    f"{path}: column {col}: price {quote(text)} at row {row} is below {MIN_PRICE:g} "
                    "(wrong unit or a corrupt value?)"
                )
            raise UserInputError(f"{path}: column {col}: non-positive price {bars[col].iloc[row]} at row {row}")
    if (bars["volume"] < 0).any():
        row = int(np.flatnonzero(bars["volume"].to_numpy() < 0)[0])
        raise UserInputError(f"{path}: column volume: negative volume at row {row}")
    _check_magnitudes(path, bars)
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

    span = int((bars.index[-1] - bars.index[0]) // pd.Timedelta(hours=1)) + 1
    if span > MAX_ROWS:  # every missing hour becomes a filled bar: the grid, not the file, is what fills memory
        raise UserInputError(f"{path}: bars span {span:,} hours; a bar file may span at most {MAX_ROWS:,}")
    grid = pd.date_range(bars.index[0], bars.index[-1], freq="h", name="timestamp", unit="ns")
    real = grid.isin(bars.index)
    regular = bars.reindex(grid)
    close = regular["close"].ffill()
    for col in PRICE_COLUMNS:
        regular[col] = regular[col].fillna(close)
    regular["volume"] = regular["volume"].fillna(0.0)
    regular["real"] = real
    if int(real.sum()) < min_bars:
        raise UserInputError(f"{path}: {int(real.sum())} bars; needs at least {min_bars} ({why})")
    report = ImportReport(
        layout=layout,
        rows_read=rows_read,
        duplicates_removed=int(dup_index.sum()),
        was_unsorted=was_unsorted,
        gaps=gaps,
    )
    return regular, report
