"""The seed's array pickle: a restricted unpickler that admits arrays and plain data only."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from himari_ray.data.seedpickle import read_seed_pickle
from himari_ray.types import UserInputError


def seed_blob(n=(60, 20, 20), f=44, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    out = {"metadata": {"feature_names": [f"f{i}" for i in range(f)], "symbol": "BTC", "n_features": np.int64(f)}}
    for split, m in zip(("train", "val", "test"), n, strict=True):
        out[split] = {
            "features_raw": rng.standard_normal((m, f)),
            "features_denoised": rng.standard_normal((m, f)).astype(np.float32),
            "regime_ids": rng.integers(0, 4, m),
            "regime_confidences": rng.uniform(0.5, 0.95, m).astype(np.float32),
            "prices": 100 + rng.uniform(0, 1, m),
            "returns": rng.standard_normal(m) * 0.01,
            "n_samples": m,
        }
    return out


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_the_seed_format_at_every_protocol(tmp_path, protocol):
    path = tmp_path / "seed.pkl"
    blob = seed_blob()
    path.write_bytes(pickle.dumps(blob, protocol=protocol))
    got = read_seed_pickle(path, features="denoised")
    np.testing.assert_array_equal(got["val"]["features"], blob["val"]["features_denoised"])
    np.testing.assert_array_equal(got["test"]["prices"], blob["test"]["prices"])
    assert got["metadata"]["symbol"] == "BTC"


class _Hostile:
    """Unpickling this would call os.system and create a file: the classic pickle attack."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_hostile_payload_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    blob = seed_blob()
    blob["metadata"]["note"] = _Hostile(target)
    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps(blob))
    # Sanity: plain pickle would run it.
    assert not target.exists()
    with pytest.raises(UserInputError, match=r"unsafe or invalid pickle: refused to load (posix|os)\.system"):
        read_seed_pickle(path)
    assert not target.exists()


def test_object_arrays_and_other_globals_are_refused(tmp_path):
    blob = seed_blob()
    blob["train"]["prices"] = np.array([object()] * 60, dtype=object)
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps(blob))
    with pytest.raises(UserInputError, match=r"refused to load builtins\.object"):
        read_seed_pickle(path)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda b: b["val"]["features_raw"].__setitem__((3, 5), np.nan), "val.features_raw: 1 non-finite"),
        (lambda b: b["test"]["prices"].__setitem__(0, np.inf), "test.prices: 1 non-finite"),
        (lambda b: b["train"].__setitem__("prices", b["train"]["prices"][:-1]), "train.prices: length 59, expected 60"),
        (lambda b: b["val"].__setitem__("n_samples", 21), "val.features_raw: 20 rows but n_samples is 21"),
        (lambda b: b.pop("test"), "missing key 'test'"),
        (lambda b: b["train"].pop("regime_ids"), "train: missing key 'regime_ids'"),
        (lambda b: b["train"]["regime_ids"].__setitem__(0, 7), "train.regime_ids: values must be integers 0..3"),
        (lambda b: b["val"]["prices"].__setitem__(2, -1.0), "val.prices: non-positive price"),
    ],
)
def test_bad_seed_pickles_name_file_and_key(tmp_path, mutate, needle):
    blob = seed_blob()
    mutate(blob)
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(blob))
    with pytest.raises(UserInputError) as err:
        read_seed_pickle(path)
    assert str(err.value).startswith(str(path)) and needle in str(err.value)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(b"hello world")
    with pytest.raises(UserInputError, match=r"x\.pkl"):
        read_seed_pickle(path)


def test_an_allowed_call_asking_for_terabytes_is_refused_before_allocating(tmp_path):
    class Huge:
        def __reduce__(self):
            return (np.core.multiarray._reconstruct, (np.ndarray, (9 * 2**40,), b"b"))

    path = tmp_path / "huge.pkl"
    path.write_bytes(pickle.dumps({"train": {"features_raw": Huge()}, "val": {}, "test": {}, "metadata": {}}))
    with pytest.raises(UserInputError, match="larger than the file"):
        read_seed_pickle(path)
