"""Import of the seed's array pickle through a restricted unpickler (ARCHITECTURE §2.2).

Plain `pickle.load` runs whatever callable a file names, so an untrusted pickle is arbitrary code. This
unpickler resolves only the handful of globals numpy arrays need; anything else is refused before it runs.

The seed's format: `{'train': {'features_raw', 'features_denoised', 'regime_ids', 'regime_confidences',
'prices', 'returns', 'n_samples'}, 'val': {...}, 'test': {...}, 'metadata': {...}}`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

from himari_ray.types import N_REGIMES, SPLIT_NAMES, UserInputError

#: The only globals a pickle may name: what numpy needs to rebuild arrays and scalars, and `_codecs.encode`,
#: which protocol-2 pickles use for raw bytes. None of them can run code named by the file.
SAFE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)
SEED_ARRAYS = ("regime_ids", "regime_confidences", "prices", "returns")


class RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy arrays, plain containers (dict, list, tuple, set) and scalars; refuses everything else.

    An array's shape comes from the pickle before its bytes do: an allowed call can ask for 9 TiB. Every
    array is therefore capped at the file's own size (its data has to be in the file), checked before the
    allocation."""

    def __init__(self, fh: Any, max_bytes: int):
        super().__init__(fh)
        self.max_bytes = max_bytes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (only numpy arrays and plain data allowed)")
        found = super().find_class(module, name)
        if name != "_reconstruct":
            return found
        cap = self.max_bytes

        def reconstruct(cls: Any, shape: Any, dtype_code: Any) -> Any:
            n = int(np.prod(np.asarray(shape, dtype=np.int64), dtype=np.float64))
            if n > cap:
                raise pickle.UnpicklingError(f"an array of {n:,} elements is larger than the file ({cap:,} bytes)")
            return found(cls, shape, dtype_code)

        return reconstruct


def restricted_load(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh, max_bytes=path.stat().st_size + 4096).load()
    except pickle.UnpicklingError as exc:
        raise UserInputError(f"{path}: unsafe or invalid pickle: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, MemoryError) as exc:
        raise UserInputError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def _array(path: Path, key: str, value: Any, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise UserInputError(f"{path}: {key}: expected a numpy array, got {type(value).__name__}")
    if value.dtype.kind not in "biuf":
        raise UserInputError(f"{path}: {key}: expected numbers, got dtype {value.dtype}")
    if value.ndim != ndim:
        raise UserInputError(f"{path}: {key}: expected {ndim}-D, got shape {value.shape}")
    bad = int((~np.isfinite(value)).sum())
    if bad:
        raise UserInputError(f"{path}: {key}: {bad} non-finite value(s) (NaN/inf)")
    return value


def read_seed_pickle(path: str | Path, features: Literal["raw", "denoised"] = "raw") -> dict[str, Any]:
    """Validated splits from the seed's pickle: {split: {features, regime_ids, regime_confidences, prices}}
    plus `metadata`. Returns are recomputed from prices by the caller (one definition everywhere)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    blob = restricted_load(path)
    if not isinstance(blob, dict):
        raise UserInputError(f"{path}: expected a dict at the top level, got {type(blob).__name__}")
    feature_key = f"features_{features}"
    out: dict[str, Any] = {"metadata": blob.get("metadata", {})}
    n_features = None
    for split in SPLIT_NAMES:
        part = blob.get(split)
        if not isinstance(part, dict):
            raise UserInputError(f"{path}: missing key {split!r} (a dict of arrays)")
        for key in (feature_key, *SEED_ARRAYS):
            if key not in part:
                raise UserInputError(f"{path}: {split}: missing key {key!r}")
        feats = _array(path, f"{split}.{feature_key}", part[feature_key], 2)
        n = len(feats)
        if "n_samples" in part and int(part["n_samples"]) != n:
            raise UserInputError(f"{path}: {split}.{feature_key}: {n} rows but n_samples is {part['n_samples']}")
        if n_features is not None and feats.shape[1] != n_features:
            raise UserInputError(f"{path}: {split}.{feature_key}: {feats.shape[1]} features, other splits {n_features}")
        n_features = feats.shape[1]
        arrays = {"features": feats.astype(np.float32)}
        for key in SEED_ARRAYS:
            arr = _array(path, f"{split}.{key}", part[key], 1)
            if len(arr) != n:
                raise UserInputError(f"{path}: {split}.{key}: length {len(arr)}, expected {n}")
            arrays[key] = arr
        regimes = arrays["regime_ids"]
        if regimes.min() < 0 or regimes.max() >= N_REGIMES or np.any(regimes != np.round(regimes)):
            raise UserInputError(f"{path}: {split}.regime_ids: values must be integers 0..{N_REGIMES - 1}")
        if arrays["prices"].min() <= 0:
            raise UserInputError(f"{path}: {split}.prices: non-positive price")
        conf = arrays["regime_confidences"]
        if conf.min() < 0 or conf.max() > 1:
            raise UserInputError(f"{path}: {split}.regime_confidences: values must lie in [0, 1]")
        out[split] = arrays
    return out
