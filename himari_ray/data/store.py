"""The project's own dataset format: a directory with `arrays.npz` (no pickle) and `metadata.json`.

Written atomically (a temporary sibling directory renamed into place), never over an existing path, and
read with `allow_pickle=False`; every problem is one `UserInputError` naming the file and key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from himari_ray.types import N_REGIMES, SPLIT_NAMES, Dataset, FeatureScaler, SplitArrays, UserInputError

FORMAT = "himari-ray-dataset"
#: 2 added per-split checksums; version-1 datasets (no checksums) still load, with every range check.
FORMAT_VERSION = 2
ARRAY_FIELDS = ("features", "regime_ids", "regime_confidences", "prices", "returns", "timestamps", "tradable")
#: Metadata key of the per-split sha256 digests.
CHECKSUMS = "checksums"
#: The most a dataset's arrays may expand to. `data synth`'s 10 million bars take ~0.85 GiB, 500,000 imported
#: bars (the most a bar file may hold) ~0.1 GiB. numpy allocates each array at the size its zip member
#: declares, so a member declaring more is refused before anything is read; zipfile stops a member at its
#: declared size, so one that lies cannot inflate past it.
MAX_ARRAY_BYTES = 4 * 2**30
#: The most metadata.json may hold (a dataset's is a few KiB; one gap per listed outage at most a few MiB).
MAX_METADATA_BYTES = 64 * 2**20


def split_checksum(split: SplitArrays) -> str:
    """sha256 over a split's arrays (dtype, shape and bytes, in ARRAY_FIELDS order): an edit, truncation or
    bit flip of any of them changes it."""
    h = hashlib.sha256()
    for f in ARRAY_FIELDS:
        arr = np.ascontiguousarray(getattr(split, f))
        h.update(f"{f}:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def check_new_path(out: Path) -> None:
    """Refuse an existing path: a dataset is never overwritten."""
    if out.exists():
        raise UserInputError(f"{out}: already exists; choose a new --out (datasets are never overwritten)")


def save_dataset(ds: Dataset, out: str | Path) -> Path:
    out = Path(out)
    check_new_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        arrays = {f"{s}.{f}": getattr(ds.split(s), f) for s in SPLIT_NAMES for f in ARRAY_FIELDS}
        np.savez_compressed(tmp / "arrays.npz", **arrays)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "feature_names": list(ds.feature_names),
            "scaler": {"mean": ds.scaler.mean.tolist(), "std": ds.scaler.std.tolist(), "clip": ds.scaler.clip},
            **{k: v for k, v in ds.metadata.items() if k != CHECKSUMS},
            CHECKSUMS: {s: split_checksum(ds.split(s)) for s in SPLIT_NAMES},
        }
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
        os.rename(tmp, out)  # atomic on one filesystem: readers see all of it or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _require(meta: dict[str, Any], key: str, path: Path) -> Any:
    if key not in meta:
        raise UserInputError(f"{path}: missing key {key!r}")
    return meta[key]


def load_dataset_dir(path: str | Path) -> Dataset:
    path = Path(path)
    meta_path, arrays_path = path / "metadata.json", path / "arrays.npz"
    if not path.is_dir() or not meta_path.is_file() or not arrays_path.is_file():
        raise UserInputError(f"{path}: not a himari-ray dataset (expected metadata.json and arrays.npz)")
    if meta_path.stat().st_size > MAX_METADATA_BYTES:
        raise UserInputError(f"{meta_path}: more than {_size(MAX_METADATA_BYTES)}; not a dataset's metadata")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{meta_path}: not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise UserInputError(f"{meta_path}: expected a JSON object")
    if meta.get("format") != FORMAT:
        raise UserInputError(f"{meta_path}: format: expected {FORMAT!r}, got {meta.get('format')!r}")
    version = _require(meta, "format_version", meta_path)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserInputError(f"{meta_path}: format_version: expected a positive integer")
    if version > FORMAT_VERSION:
        raise UserInputError(f"{meta_path}: format_version {version} is newer than this himari-ray")
    names = _require(meta, "feature_names", meta_path)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserInputError(f"{meta_path}: feature_names: expected a non-empty list of names")
    names = tuple(names)
    scaler_meta = _require(meta, "scaler", meta_path)
    try:
        with zipfile.ZipFile(arrays_path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
        if declared > MAX_ARRAY_BYTES:
            raise UserInputError(
                f"{arrays_path}: its arrays expand to {_size(declared)}, more than the {_size(MAX_ARRAY_BYTES)} "
                "a dataset may hold; refused unread"
            )
        with np.load(arrays_path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    # zipfile raises many types on a damaged archive (NotImplementedError for a flipped flag bit,
    # RuntimeError "encrypted" for another): each means the same to the user.
    except (
        OSError,
        ValueError,
        EOFError,
        MemoryError,
        KeyError,
        NotImplementedError,
        RuntimeError,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:
        raise UserInputError(f"{arrays_path}: cannot read ({str(exc).splitlines()[0]})") from None
    splits = {}
    for s in SPLIT_NAMES:
        fields = {}
        for f in ARRAY_FIELDS:
            key = f"{s}.{f}"
            if key not in data:
                raise UserInputError(f"{arrays_path}: missing array {key!r}")
            fields[f] = data[key]
        if fields["features"].ndim != 2 or fields["features"].shape[1] != len(names):
            raise UserInputError(
                f"{arrays_path}: {s}.features has shape {fields['features'].shape}; expected (n, {len(names)})"
            )
        try:
            splits[s] = SplitArrays(**fields)
        except ValueError as exc:
            raise UserInputError(f"{arrays_path}: {s}: {exc}") from None
        # The test split is checked when it is first used (a final evaluation), never at load: the search
        # must provably not touch it, and a test poisons it to prove so.
        if s != "test":
            verify_split(splits[s], s, meta, arrays_path)
    scaler = _scaler(scaler_meta, len(names), meta_path)
    extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "feature_names", "scaler")}
    return Dataset(**splits, feature_names=names, scaler=scaler, metadata=extra)


def _scaler(raw: Any, n_features: int, meta_path: Path) -> FeatureScaler:
    """The stored train-split scaler, refused unless it fits the features and every number is usable."""
    try:
        mean = np.asarray(raw["mean"], dtype=np.float64)
        std = np.asarray(raw["std"], dtype=np.float64)
        clip = float(raw["clip"])
    except (KeyError, TypeError, ValueError):
        raise UserInputError(f"{meta_path}: scaler: expected mean, std (lists of numbers) and clip") from None
    if mean.shape != (n_features,) or std.shape != (n_features,):
        raise UserInputError(f"{meta_path}: scaler: mean and std need {n_features} values (one per feature)")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all() and np.isfinite(clip) and clip > 0):
        raise UserInputError(f"{meta_path}: scaler: mean, std and clip must be finite, std and clip positive")
    return FeatureScaler(mean=mean, std=std, clip=clip)


def verify_split(split: SplitArrays, name: str, meta: dict[str, Any], arrays_path: Path) -> None:
    """One split's integrity: its checksum (when the dataset has them) and every range a trainer relies on:
    finite features, positive finite prices, finite returns, regime ids 0-3, confidences in [0, 1], strictly
    increasing timestamps. A tampered or corrupted dataset stops here instead of training on nonsense."""
    expected = meta.get(CHECKSUMS, {}).get(name) if isinstance(meta.get(CHECKSUMS), dict) else None
    if meta.get("format_version", 1) >= 2 and expected is None:
        raise UserInputError(f"{arrays_path}: {name}: no checksum in metadata.json ({CHECKSUMS}.{name})")
    if expected is not None and split_checksum(split) != expected:
        raise UserInputError(f"{arrays_path}: {name}: checksum mismatch (the dataset was edited or corrupted)")
    problems = {
        "features": not np.isfinite(split.features).all(),
        "prices": not (np.isfinite(split.prices).all() and (split.prices > 0).all()),
        "returns": not np.isfinite(split.returns).all(),
        "regime_ids": not ((split.regime_ids >= 0).all() and (split.regime_ids < N_REGIMES).all()),
        "regime_confidences": not ((split.regime_confidences >= 0).all() and (split.regime_confidences <= 1).all()),
        "timestamps": len(split.timestamps) > 1 and not (np.diff(split.timestamps) > 0).all(),
    }
    bad = [k for k, v in problems.items() if v]
    if bad:
        what = {
            "features": "non-finite values",
            "prices": "non-positive or non-finite prices",
            "returns": "non-finite values",
            "regime_ids": f"ids outside 0..{N_REGIMES - 1}",
            "regime_confidences": "values outside [0, 1]",
            "timestamps": "not strictly increasing",
        }[bad[0]]
        raise UserInputError(f"{arrays_path}: {name}.{bad[0]} has {what}")
