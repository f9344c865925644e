"""OHLCV import: each layout from a small fixture, repairs that are reported, gaps, and bad input."""

from __future__ import annotations

import gzip
import json
import sys

import numpy as np
import pandas as pd
import pytest

from himari_ray.data.ohlcv import read_ohlcv
from himari_ray.types import UserInputError

T0 = pd.Timestamp("2021-03-01 00:00", tz="UTC")


def bars(n: int = 6, start: pd.Timestamp = T0) -> pd.DataFrame:
    close = 100.0 + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "ts": pd.date_range(start, periods=n, freq="h"),
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": 10.0 + np.arange(n),
        }
    )


def assert_regular(frame: pd.DataFrame, n: int) -> None:
    assert list(frame.columns) == ["open", "high", "low", "close", "volume", "real"]
    assert len(frame) == n and frame.index[0] == T0
    assert (np.diff(frame.index.asi8) == 3_600_000_000_000).all()
    np.testing.assert_allclose(frame["close"], 100.0 + np.arange(n))
    np.testing.assert_allclose(frame["volume"], 10.0 + np.arange(n))


def test_freqtrade_csv_iso_dates(tmp_path):
    b = bars()
    path = tmp_path / "BTC_USDT-1h.csv"
    b.rename(columns={"ts": "date"}).assign(date=b.ts.dt.strftime("%Y-%m-%d %H:%M:%S+00:00")).to_csv(path, index=False)
    frame, report = read_ohlcv(path)
    assert_regular(frame, 6)
    assert report.layout == "csv" and report.duplicates_removed == 0 and report.gaps == []


def test_timestamp_column_in_epoch_ms(tmp_path):
    b = bars()
    path = tmp_path / "x.csv"
    b.assign(timestamp=b.ts.astype("int64") // 10**6).drop(columns="ts").to_csv(path, index=False)
    frame, _ = read_ohlcv(path)
    assert_regular(frame, 6)


@pytest.mark.parametrize("unit_div", [10**6, 10**3], ids=["ms", "us"])
def test_binance_klines_headerless_12_columns(tmp_path, unit_div):
    b = bars()
    open_time = b.ts.astype("int64") // unit_div
    kl = pd.DataFrame(
        {
            0: open_time, 1: b.open, 2: b.high, 3: b.low, 4: b.close, 5: b.volume,
            6: open_time + 3_599_999, 7: b.volume * b.close, 8: 100, 9: 1.0, 10: 2.0, 11: 0,
        }
    )  # fmt: skip
    path = tmp_path / "BTCUSDT-1h-2021-03.csv"
    kl.to_csv(path, header=False, index=False)
    frame, report = read_ohlcv(path)
    assert_regular(frame, 6)
    assert report.layout == "binance"


def test_cryptodatadownload_url_line_newest_first(tmp_path):
    b = bars()
    cdd = pd.DataFrame(
        {
            "unix": b.ts.astype("int64") // 10**6,
            "date": b.ts.dt.strftime("%Y-%m-%d %H:%M:%S"),
            "symbol": "BTC/USDT",
            "open": b.open, "high": b.high, "low": b.low, "close": b.close,
            "Volume BTC": b.volume, "Volume USDT": b.volume * b.close, "tradecount": 5,
        }
    ).iloc[::-1]  # fmt: skip
    path = tmp_path / "Binance_BTCUSDT_1h.csv"
    path.write_text("https://www.CryptoDataDownload.com\n" + cdd.to_csv(index=False))
    frame, report = read_ohlcv(path)
    assert_regular(frame, 6)  # volume is the base asset's (BTC), not USDT
    assert report.layout == "cryptodatadownload" and report.was_unsorted


def test_parquet_with_datetime_index(tmp_path):
    b = bars().set_index("ts")
    b.index.name = "date"
    path = tmp_path / "BTC_USDT-1h.parquet"
    b.to_parquet(path)
    frame, report = read_ohlcv(path)
    assert_regular(frame, 6)
    assert report.layout == "parquet"


def test_gzip_csv(tmp_path):
    path = tmp_path / "x.csv.gz"
    bars().rename(columns={"ts": "timestamp"}).to_csv(path, index=False, compression="gzip")
    assert_regular(read_ohlcv(path)[0], 6)


def write(tmp_path, frame: pd.DataFrame, name: str = "in.csv"):
    path = tmp_path / name
    frame.rename(columns={"ts": "timestamp"}).to_csv(path, index=False)
    return path


def test_unsorted_and_identical_duplicates_are_repaired_and_reported(tmp_path):
    b = bars()
    messy = pd.concat([b.iloc[[3, 0, 1]], b.iloc[[1]], b.iloc[[2, 5, 4]]])
    frame, report = read_ohlcv(write(tmp_path, messy))
    assert_regular(frame, 6)
    assert report.was_unsorted and report.duplicates_removed == 1 and report.rows_read == 7


def test_gap_is_filled_flat_marked_and_reported(tmp_path):
    b = bars(8).drop(index=[3, 4, 5])  # three missing hours after 02:00
    frame, report = read_ohlcv(write(tmp_path, b))
    assert len(frame) == 8
    assert report.gaps == [((T0 + pd.Timedelta(hours=2)).isoformat(), 3)] and report.missing_hours == 3
    np.testing.assert_array_equal(frame["real"], [True, True, True, False, False, False, True, True])
    filled = frame.iloc[3:6]
    assert (filled[["open", "high", "low", "close"]] == 102.0).all().all()  # the last known close
    assert (filled["volume"] == 0).all()


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda f: f.drop(columns="volume"), "missing column(s) volume"),
        (lambda f: f.drop(columns="timestamp"), "missing timestamp column"),
        (lambda f: f.assign(close=f.close.astype(object).where(f.index != 2, "abc")), "column close: non-numeric"),
        (lambda f: f.assign(low=f.low.where(f.index != 1, -5.0)), "column low: non-positive price -5.0 at row 1"),
        (lambda f: f.assign(open=f.open.where(f.index != 4, 0.0)), "column open: non-positive price 0.0 at row 4"),
        (lambda f: f.assign(high=f.high.where(f.index != 3, 50.0)), "row 3: high/low do not bracket"),
        (lambda f: pd.concat([f, f.iloc[[2]].assign(close=f.close[2] + 0.5)]), "conflicting duplicate bars"),
        (lambda f: f.assign(timestamp=f.timestamp.where(f.index != 1, "not a date")), "unparsable timestamp"),
    ],
)
def test_bad_input_names_the_file_and_problem(tmp_path, mutate, needle):
    path = tmp_path / "bad.csv"
    mutate(bars().rename(columns={"ts": "timestamp"})).to_csv(path, index=False)
    with pytest.raises(UserInputError) as err:
        read_ohlcv(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and needle in msg and "\n" not in msg


def test_non_hourly_and_too_short_files(tmp_path):
    four_hourly = bars().assign(ts=pd.date_range(T0, periods=6, freq="4h"))
    with pytest.raises(UserInputError, match="4 hours apart"):
        read_ohlcv(write(tmp_path, four_hourly))
    with pytest.raises(UserInputError, match="6 bars; needs at least 500"):
        read_ohlcv(write(tmp_path, bars(), "short.csv"), min_bars=500)
    with pytest.raises(UserInputError, match="no such file"):
        read_ohlcv(tmp_path / "nope.csv")


def freqtrade_frame(n: int = 6) -> pd.DataFrame:
    """freqtrade's own candle DataFrame: `date` as UTC datetimes (ns), then the five OHLCV columns."""
    return bars(n).rename(columns={"ts": "date"}).assign(date=lambda f: f.date.astype("datetime64[ns, UTC]"))


def freqtrade_json_rows(n: int = 6) -> list[list[float]]:
    """What freqtrade's jsondatahandler writes (`orient="values"`): [ms_timestamp, open, high, low, close, volume]."""
    f = freqtrade_frame(n)
    ms = f.date.astype("int64") // 10**6
    return [
        [int(t), *map(float, row)]
        for t, row in zip(ms, f[["open", "high", "low", "close", "volume"]].values, strict=True)
    ]


def test_freqtrade_feather_candles(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "BTC_USDT-1h.feather"
    freqtrade_frame().to_feather(path)
    frame, report = read_ohlcv(path)
    assert_regular(frame, 6)  # ns datetimes read as times, not as a number of unknown unit
    assert report.layout == "feather"


def test_feather_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    path = tmp_path / "BTC_USDT-1h.feather"
    path.write_bytes(b"ARROW1")

    def no_pyarrow(*args, **kwargs):  # what pandas raises when pyarrow is not installed
        raise ImportError("Missing optional dependency 'pyarrow'.  Use pip or conda to install pyarrow.")

    monkeypatch.setattr(pd, "read_feather", no_pyarrow)
    # The importer reads the file's size from pyarrow before pandas reads it: `import pyarrow` fails too.
    for name in ("pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(UserInputError, match=r"reading Feather needs pyarrow \(pip install pyarrow\)$"):
        read_ohlcv(path)


@pytest.mark.parametrize("name", ["BTC_USDT-1h.json", "BTC_USDT-1h.json.gz"])
def test_freqtrade_json_candles(tmp_path, name):
    path = tmp_path / name
    text = json.dumps(freqtrade_json_rows())
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    frame, report = read_ohlcv(path)
    assert_regular(frame, 6)
    assert report.layout == "freqtrade-json"


def test_freqtrade_json_and_csv_import_to_the_same_dataset(tmp_path):
    """The real sample as freqtrade JSON and as CSV: one dataset, bar for bar."""
    from himari_ray.data.dataset import import_ohlcv, sample_path

    csv = pd.read_csv(sample_path(), nrows=1300)  # the fewest bars an import takes (1210), and some
    csv_path = tmp_path / "bars.csv"
    csv.to_csv(csv_path, index=False)
    ms = pd.to_datetime(csv.timestamp, utc=True).astype("int64") // 10**6
    rows = [
        [int(t), *map(float, r)]
        for t, r in zip(ms, csv[["open", "high", "low", "close", "volume"]].values, strict=True)
    ]
    json_path = tmp_path / "bars.json"
    json_path.write_text(json.dumps(rows))
    a, b = import_ohlcv(csv_path), import_ohlcv(json_path)
    np.testing.assert_array_equal(a.train.features, b.train.features)
    np.testing.assert_array_equal(a.val.timestamps, b.val.timestamps)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[[1614556800000, 1, 2", "not valid JSON"),
        ('{"a": 1}', "a list of [ms_timestamp, open, high, low, close, volume] rows"),
        ("[[1614556800000, 1.0, 2.0, 0.5, 1.5]]", "row 0: expected [ms_timestamp"),
        ('[[1614556800000, 1.0, 2.0, 0.5, "x", 3.0]]', "column close: non-numeric or missing value 'x'"),
    ],
)
def test_bad_freqtrade_json_is_one_line(tmp_path, content, needle):
    path = tmp_path / "BTC_USDT-1h.json"
    path.write_text(content)
    with pytest.raises(UserInputError) as err:
        read_ohlcv(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and needle in msg and "\n" not in msg


def test_long_user_data_in_an_error_is_cut_to_one_readable_line(tmp_path):
    """A freqtrade JSON saved as .csv was read as one enormous header: the error quoted all of it."""
    path = tmp_path / "candles.csv"
    path.write_text(json.dumps(freqtrade_json_rows(200)))
    with pytest.raises(UserInputError) as err:
        read_ohlcv(path)
    msg = str(err.value)
    assert "missing column(s)" in msg and "characters)" in msg
    assert len(msg) < len(str(path)) + 200 and "\n" not in msg
    bad_value = "x" * 5000 + "\nsecond line"
    path = tmp_path / "bad.csv"
    bars().rename(columns={"ts": "timestamp"}).assign(close=["1", bad_value, "1", "1", "1", "1"]).to_csv(
        path, index=False
    )
    with pytest.raises(UserInputError) as err:
        read_ohlcv(path)
    msg = str(err.value)
    assert "non-numeric or missing value 'xxx" in msg and len(msg) < len(str(path)) + 200 and "\n" not in msg


def test_quote_and_shorten():
    from himari_ray.types import QUOTE_LIMIT, quote, shorten

    assert quote("abc") == "'abc'" and shorten("a\n  b") == "a b"
    long = quote("y" * 1000)
    assert long.startswith("'yyy") and long.endswith("… (1002 characters)") and len(long) < QUOTE_LIMIT + 25


def _sample_lines(n: int) -> list[str]:
    from himari_ray.data.dataset import sample_path

    with gzip.open(sample_path(), "rt") as f:
        return [next(f) for _ in range(n)]


@pytest.mark.parametrize(
    ("name", "make", "needle"),
    [
        ("header.csv", lambda lines: lines[0], "no bars"),
        ("future.csv", lambda lines: lines[0] + "2999-01-01 00:00:00,1,1,1,1,1\n" + "".join(lines[1:]), "in the future"),
        ("stray.csv", lambda lines: lines[0] + "1970-01-01 00:00:00,1,1,1,1,1\n" + "".join(lines[1:]),
         "missing hours after 1970-01-01"),
        ("cut.csv.gz", None, "corrupt gzip"),
    ],
)  # fmt: skip
def test_files_that_would_mislead_or_crash_are_one_line(tmp_path, name, make, needle):
    lines = _sample_lines(400)
    path = tmp_path / name
    if make is None:
        path.write_bytes(gzip.compress("".join(lines).encode())[:3000])
    else:
        path.write_text(make(lines))
    with pytest.raises(UserInputError, match=needle) as err:
        read_ohlcv(path)
    assert "\n" not in str(err.value)


def test_the_split_floor_is_the_envs_default_window_and_episode():
    """The train split holds one default window and episode; val and test a window and two bars (1210 in all)."""
    from himari_ray.data.dataset import (
        DEFAULT_CONTEXT_LEN,
        DEFAULT_EPISODE_LEN,
        MIN_EVAL_BARS,
        MIN_TRAIN_BARS,
        BuildSettings,
        bars_needed,
    )
    from himari_ray.env.trading import EnvConfig

    env = EnvConfig()
    assert (env.context_len, env.episode_len) == (DEFAULT_CONTEXT_LEN, DEFAULT_EPISODE_LEN)
    assert env.context_len + env.episode_len == MIN_TRAIN_BARS and env.context_len + 2 == MIN_EVAL_BARS
    assert bars_needed(190, BuildSettings()) == 1210


COSTLY_SPACE = """\
name: costly
family: pnl_cost
fixed: {reward_scale: 100.0, trade_cost: 5.0}
search: {entropy_coeff: {low: 0.001, high: 0.05, log: true}}
env: {context_len: 16, episode_len: 128, position_mode: per_bar}
model: tiny
"""


def test_preflight_says_why_there_is_no_break_even(tmp_path):
    """A cost above every move: even a perfect oracle loses to HOLD. The table says so in words, never 'inf'."""
    from tests.test_fuzz import run

    (tmp_path / "costly.yaml").write_text(COSTLY_SPACE)
    assert run(["data", "synth", "--n-bars", "1500", "--out", "ds"], tmp_path)[0] == 0
    code, out, err = run(["preflight", "costly.yaml", "--data", "ds"], tmp_path)
    assert code == 0, err
    assert " inf" not in out and "p* inf" not in out
    assert "p* never (LOW_VOL, TRENDING, HIGH_VOL, CRISIS): even a perfect oracle" in out
    assert "(p* never: even a perfect oracle loses to HOLD)" in out
