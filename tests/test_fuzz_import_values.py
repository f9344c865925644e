"""The bad-input contract for bar files (issue 18), fuzzed through `himari-ray data import`: the values
inside a file that reads. Prices and volumes beyond their bounds, non-finite and non-numeric values and bad
timestamps are refused naming the column (and the row); values within the bounds, however wild, import with
every feature finite; files too short for the splits are refused with the count the fractions need. Every
refusal is one line on stderr naming the file, exit code 2, no traceback, nothing written. (The files
themselves, their syntax, sizes and encodings, are `test_fuzz_import.py`'s.)

Everything runs in process (`tests.test_fuzz.run`) and never starts Ray.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from himari_ray.data.dataset import MIN_EVAL_BARS, MIN_TRAIN_BARS, BuildSettings, bars_needed
from himari_ray.data.ohlcv import MAX_PRICE, MAX_VOLUME, MIN_PRICE
from himari_ray.data.store import load_dataset_dir
from himari_ray.types import SPLIT_NAMES
from tests.import_kit import FRAME, LINES, LONG, N_BARS, PRICES, import_file, refused, workdir
from tests.test_fuzz import FUZZ

#: The fewest bars an import takes at the default fractions (warm-up 190, then train 612, val and test 102).
NEED = 1210


# --- extreme, tiny and non-finite values --------------------------------------------------------------------


def scaled(price: float = 1.0, volume: float = 1.0) -> str:
    frame = FRAME.copy()
    frame[PRICES] = frame[PRICES] * price
    frame["volume"] = frame["volume"] * volume
    return frame.to_csv(index=False)


LOW, HIGH = float(FRAME[PRICES].min().min()), float(FRAME[PRICES].max().max())
VOL_HIGH = float(FRAME.volume.max())


@settings(FUZZ, max_examples=40)
@given(
    column=st.sampled_from(["price", "volume"]),
    tiny=st.floats(min_value=-330, max_value=np.log10(MIN_PRICE / LOW) - 0.01),
    huge=st.floats(min_value=np.log10(MAX_PRICE / HIGH) + 0.01, max_value=300),
    pick_tiny=st.booleans(),
)
def test_fuzz_prices_and_volumes_beyond_the_bounds_are_refused(column, tiny, huge, pick_tiny):
    # A tiny volume is not out of bounds (volume may be 0): volumes are only ever made huge.
    if column == "volume":
        huge = max(huge, np.log10(MAX_VOLUME / VOL_HIGH) + 0.01)
    factor = 10.0 ** (tiny if pick_tiny and column == "price" else huge)
    with workdir() as root:
        (root / "x.csv").write_text(scaled(price=factor) if column == "price" else scaled(volume=factor))
        err = refused(root, "x.csv")
        assert "column " in err
        assert any(w in err for w in ("outside", "below", "non-positive", "infinite")), err


@settings(FUZZ, max_examples=6)
@given(
    price=st.floats(min_value=np.log10(MIN_PRICE / LOW) + 0.01, max_value=np.log10(MAX_PRICE / HIGH) - 0.01),
    volume=st.floats(min_value=-12, max_value=np.log10(MAX_VOLUME / VOL_HIGH) - 0.01),
)
def test_fuzz_prices_and_volumes_within_the_bounds_import_with_finite_features(price, volume):
    with workdir() as root:
        (root / "x.csv").write_text(scaled(10.0**price, 10.0**volume))
        code, _, err = import_file(root, "x.csv")
        assert code == 0 and err == "", err  # no warning either: one stream of output, nothing on stderr
        ds = load_dataset_dir(root / "out")
        for name in SPLIT_NAMES:
            assert np.isfinite(ds.split(name).features).all()


def test_the_widest_moves_within_the_bounds_keep_every_feature_finite():
    """Bars jumping between the smallest and the largest price allowed: returns of 1e27, still finite in float32."""
    frame = FRAME.copy()
    level = np.where(np.arange(len(frame)) % 7 < 3, MIN_PRICE, MAX_PRICE)
    for col in PRICES:
        frame[col] = level
    frame["volume"] = np.where(np.arange(len(frame)) % 5 == 0, MAX_VOLUME, 1e-12)
    with workdir() as root:
        frame.to_csv(root / "wild.csv", index=False)
        code, _, err = import_file(root, "wild.csv")
        assert code == 0 and err == "", err
        ds = load_dataset_dir(root / "out")
        assert all(np.isfinite(ds.split(name).features).all() for name in SPLIT_NAMES)


TEXT_VALUES = ["nan", "NaN", "NA", "null", "", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e-400", "abc",
               "0x10", "1e", "--1", "١٢٣"]  # fmt: skip


@settings(FUZZ, max_examples=50)
@given(
    value=st.sampled_from(TEXT_VALUES),
    column=st.sampled_from(["open", "high", "low", "close", "volume"]),
    row=st.integers(min_value=0, max_value=N_BARS - 1),
)
def test_fuzz_non_finite_and_non_numeric_values_are_refused_naming_the_column(value, column, row):
    if column == "volume" and value == "1e-400":
        value = "-1e400"  # 1e-400 reads as volume 0, a valid (empty) bar
    frame = FRAME.astype({column: object})
    frame.loc[row, column] = value
    with workdir() as root:
        frame.to_csv(root / "v.csv", index=False)
        err = refused(root, "v.csv")
        assert f"column {column}:" in err and f"at row {row}" in err, err


@settings(FUZZ, max_examples=20)
@given(
    value=st.sampled_from(["-5", "0", "1e30", "-1e30", "inf", "nan", "", "99999999999999999999", "1969-12-31"]),
    row=st.integers(min_value=0, max_value=N_BARS - 1),
    epoch=st.booleans(),
)
def test_fuzz_bad_timestamps_are_refused_naming_the_column(value, row, epoch):
    frame = FRAME.copy()
    if epoch:  # all-numeric epoch milliseconds: one bad number among them
        frame["timestamp"] = pd.to_datetime(frame.timestamp, utc=True).astype("int64") // 10**6
    frame = frame.astype({"timestamp": object})
    frame.loc[row, "timestamp"] = value
    with workdir() as root:
        frame.to_csv(root / "t.csv", index=False)
        err = refused(root, "t.csv")
        assert "column timestamp:" in err or "missing hours after 1970" in err, err  # 0 is 1970: a stray row


# --- splits too short to train on ---------------------------------------------------------------------------


@settings(FUZZ, max_examples=15)
@given(n=st.integers(min_value=1, max_value=NEED - 1))
def test_fuzz_files_too_short_for_the_splits_are_refused_with_the_count(n):
    with workdir() as root:
        (root / "short.csv").write_text("".join(LINES[: n + 1]))
        refused(root, "short.csv", needle=f"{n} bars; needs at least {NEED} (190 of warm-up, then 612 for the train")


@settings(FUZZ, max_examples=4)
@given(train=st.floats(min_value=0.3, max_value=0.7), val=st.floats(min_value=0.1, max_value=0.25))
def test_fuzz_the_refusal_counts_exactly_what_the_fractions_need(train, val):
    fracs = BuildSettings(train_frac=train, val_frac=val)
    need = bars_needed(190, fracs)
    flags = ["--train-frac", repr(train), "--val-frac", repr(val)]
    assert need < len(LONG)
    with workdir() as root:
        (root / "bars.csv").write_text("".join(LONG[:need]))  # the header and one bar too few
        refused(root, "bars.csv", *flags, needle=f"{need - 1} bars; needs at least {need}")
        (root / "enough.csv").write_text("".join(LONG[: need + 1]))
        code, _, err = import_file(root, "enough.csv", *flags)
        assert code == 0, err
        ds = load_dataset_dir(root / "out")
        assert len(ds.train) >= MIN_TRAIN_BARS and min(len(ds.val), len(ds.test)) >= MIN_EVAL_BARS
