"""Dataset build from real bars: causality end to end, train-only statistics, gaps, the on-disk format."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from himari_ray.data.dataset import BuildSettings, DataSpec, build_from_bars, import_ohlcv, load_dataset, sample_path
from himari_ray.data.features import FEATURE_NAMES
from himari_ray.data.ohlcv import read_ohlcv
from himari_ray.data.store import load_dataset_dir, save_dataset
from himari_ray.env.trading import EnvConfig, HimariTradingEnv
from himari_ray.rl.config import EvalConfig
from himari_ray.rl.evaluate import PolicyEvaluator
from himari_ray.types import UserInputError

SOURCE = {"kind": "test", "file": "bars"}


@pytest.fixture(scope="module")
def sample_bars():
    return read_ohlcv(sample_path())[0]


@pytest.fixture(scope="module")
def sample_dataset():
    return load_dataset(DataSpec(source="sample"))


def test_bundled_sample_is_real_and_sane(sample_dataset):
    ds = sample_dataset
    assert ds.feature_names == FEATURE_NAMES and len(FEATURE_NAMES) == 44
    assert ds.metadata["source"]["import"]["missing_hours"] == 90
    for name in ("train", "val", "test"):
        s = ds.split(name)
        assert np.isfinite(s.features).all()
        shares = np.bincount(s.regime_ids, minlength=4) / len(s)
        assert (shares > 0.05).all(), (name, shares)
        np.testing.assert_allclose(s.returns[1:], s.prices[1:] / s.prices[:-1] - 1)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 17_520 - ds.metadata["warmup_bars"]


def _perturb_bars_after(bars: pd.DataFrame, t: int) -> pd.DataFrame:
    out = bars.copy()
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.5, 2.0, len(out) - t - 1)
    for col in ("open", "high", "low", "close"):
        out.iloc[t + 1 :, out.columns.get_loc(col)] *= scale
    out.iloc[t + 1 :, out.columns.get_loc("volume")] *= rng.uniform(0.1, 10, len(out) - t - 1)
    return out


def test_pipeline_is_causal_end_to_end_with_denoising(sample_bars):
    """Change every bar after t (t inside val, so train statistics are untouched): every feature, regime,
    confidence, price and return of the dataset at bars <= t is bit-identical."""
    settings = BuildSettings(denoise={"enabled": True})
    base = build_from_bars(sample_bars, settings, SOURCE)
    warm = base.metadata["warmup_bars"]
    t = warm + len(base.train) + 500  # a bar inside val
    other = build_from_bars(_perturb_bars_after(sample_bars, t), settings, SOURCE)
    k = 500  # index of bar t inside val
    for field in ("features", "regime_ids", "regime_confidences", "prices", "returns", "tradable"):
        np.testing.assert_array_equal(getattr(base.val, field)[: k + 1], getattr(other.val, field)[: k + 1])
        assert not np.array_equal(getattr(base.test, field), getattr(other.test, field)) or field == "tradable"
    np.testing.assert_array_equal(base.scaler.mean, other.scaler.mean)


def test_val_and_test_never_move_the_scaler_or_the_denoiser(sample_bars):
    settings = BuildSettings(denoise={"enabled": True})
    base = build_from_bars(sample_bars, settings, SOURCE)
    t = base.metadata["warmup_bars"] + len(base.train) - 1  # last train bar
    other = build_from_bars(_perturb_bars_after(sample_bars, t), settings, SOURCE)
    np.testing.assert_array_equal(base.scaler.mean, other.scaler.mean)
    np.testing.assert_array_equal(base.scaler.std, other.scaler.std)
    np.testing.assert_array_equal(base.train.features, other.train.features)
    assert not np.array_equal(base.val.features, other.val.features)


def test_gap_bars_are_untradable_earn_nothing_and_are_not_evaluated(sample_dataset):
    ds = sample_dataset
    val = ds.val
    gaps = np.flatnonzero(~val.tradable)
    assert len(gaps) > 0
    cfg = EnvConfig(data=DataSpec(source="sample"), split="val", context_len=16, episode_len=8)
    env = HimariTradingEnv(cfg, ds)
    t = int(gaps[gaps >= 16][0])
    env.reset(options={"start_bar": t})
    _, reward, *_, info = env.step(1)
    assert info["tradable"] is False and reward == 0.0
    assert all(v == 0.0 for k, v in info.items() if k.startswith("r_"))
    # untradable bars are exactly the filled ones and the last real bar before each gap
    ev = PolicyEvaluator(cfg, EvalConfig())
    assert len(ev.regimes) == int(val.tradable[15 : len(val) - 1].sum())


def test_store_round_trip_and_never_overwrites(tmp_path, small_dataset):
    out = save_dataset(small_dataset, tmp_path / "ds")
    back = load_dataset_dir(out)
    for name in ("train", "val", "test"):
        for f in dataclasses.fields(back.split(name)):
            np.testing.assert_array_equal(getattr(back.split(name), f.name), getattr(small_dataset.split(name), f.name))
    np.testing.assert_array_equal(back.scaler.std, small_dataset.scaler.std)
    assert back.feature_names == small_dataset.feature_names
    assert back.metadata["splits"]["val"]["n"] == len(small_dataset.val)
    before = (out / "metadata.json").read_bytes()
    with pytest.raises(UserInputError, match="already exists"):
        save_dataset(small_dataset, out)
    assert (out / "metadata.json").read_bytes() == before
    # No pickle inside: numpy refuses to load object arrays without allow_pickle.
    with np.load(out / "arrays.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_store_errors_name_file_and_key(tmp_path, small_dataset):
    out = save_dataset(small_dataset, tmp_path / "ds")
    meta = json.loads((out / "metadata.json").read_text())
    del meta["feature_names"]
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match=r"metadata\.json: missing key 'feature_names'"):
        load_dataset_dir(out)
    with pytest.raises(UserInputError, match="not a himari-ray dataset"):
        load_dataset_dir(tmp_path)


def _edit_arrays(out, **changes) -> None:
    with np.load(out / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, fn in changes.items():
        arrays[key.replace("__", ".")] = fn(arrays[key.replace("__", ".")])
    np.savez_compressed(out / "arrays.npz", **arrays)


def _without_checksums(out) -> None:
    """Strip the checksums (a version-1 dataset has none): the range checks must still catch the edit."""
    from himari_ray.data.store import CHECKSUMS

    meta = json.loads((out / "metadata.json").read_text())
    del meta[CHECKSUMS]
    meta["format_version"] = 1
    (out / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"val__prices": lambda a: -a}, r"val: checksum mismatch"),
        ({"train__features": lambda a: a[:, :-1]}, r"train\.features has shape"),
        ({"val__returns": lambda a: a[:-1]}, r"val: SplitArrays\.\w+ has length|val: checksum"),
    ],
)
def test_a_tampered_dataset_is_refused_in_one_line(tmp_path, small_dataset, edit, message):
    out = save_dataset(small_dataset, tmp_path / "ds")
    _edit_arrays(out, **edit)
    with pytest.raises(UserInputError, match=message):
        load_dataset_dir(out)


@pytest.mark.parametrize(
    ("key", "fn", "message"),
    [
        ("val.prices", lambda a: -a, r"val\.prices has non-positive"),
        ("train.regime_ids", lambda a: np.full_like(a, 7), r"train\.regime_ids has ids outside 0\.\.3"),
        ("val.returns", lambda a: np.where(np.arange(len(a)) == 3, np.inf, a), r"val\.returns has non-finite"),
        ("train.timestamps", lambda a: a[::-1].copy(), r"train\.timestamps has not strictly increasing"),
    ],
)
def test_range_checks_catch_an_edit_even_with_checksums_removed(tmp_path, small_dataset, key, fn, message):
    out = save_dataset(small_dataset, tmp_path / "ds")
    _edit_arrays(out, **{key.replace(".", "__"): fn})
    _without_checksums(out)
    with pytest.raises(UserInputError, match=message):
        load_dataset_dir(out)


def test_a_wrong_length_scaler_or_truncated_file_is_refused(tmp_path, small_dataset):
    out = save_dataset(small_dataset, tmp_path / "ds")
    meta = json.loads((out / "metadata.json").read_text())
    meta["scaler"]["std"] = meta["scaler"]["std"][:-1]
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match=r"scaler: mean and std need \d+ values"):
        load_dataset_dir(out)
    out2 = save_dataset(small_dataset, tmp_path / "ds2")
    data = (out2 / "arrays.npz").read_bytes()
    (out2 / "arrays.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"arrays\.npz: cannot read"):
        load_dataset_dir(out2)


def test_import_refuses_files_shorter_than_the_lookback(tmp_path):
    path = tmp_path / "short.csv"
    pd.read_csv(sample_path()).head(400).to_csv(path, index=False)
    with pytest.raises(UserInputError, match=r"short\.csv: 400 bars; needs at least"):
        import_ohlcv(path)


def test_seed_pickle_import_recomputes_returns_and_fits_train_scaler(tmp_path):
    rng = np.random.default_rng(0)
    blob = {"metadata": {}}
    for split, m in (("train", 300), ("val", 100), ("test", 100)):
        blob[split] = {
            "features_raw": rng.standard_normal((m, 44)) + (5.0 if split == "test" else 0.0),
            "features_denoised": rng.standard_normal((m, 44)),
            "regime_ids": rng.integers(0, 4, m),
            "regime_confidences": rng.uniform(0.5, 0.95, m),
            "prices": 100 * np.exp(np.cumsum(rng.standard_normal(m) * 0.01)),
            "returns": np.zeros(m),  # the seed's column is not trusted
            "n_samples": m,
        }
    path = tmp_path / "seed.pkl"
    path.write_bytes(pickle.dumps(blob))
    from himari_ray.data.dataset import import_seed_pickle

    ds = import_seed_pickle(path)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [300, 100, 100]
    assert ds.feature_names == FEATURE_NAMES
    np.testing.assert_allclose(ds.val.returns[1:], ds.val.prices[1:] / ds.val.prices[:-1] - 1)
    np.testing.assert_allclose(ds.scaler.mean, blob["train"]["features_raw"].mean(axis=0), atol=1e-6)
