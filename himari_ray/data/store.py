"""The project's own dataset format: a directory with `arrays.npz` (no pickle) and `metadata.json`.

Written atomically (a temporary sibling directory renamed into place), never over an existing path, and
read with `allow_pickle=False`; every problem is one `UserInputError` naming the file and key.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from himari_ray.types import SPLIT_NAMES, Dataset, FeatureScaler, SplitArrays, UserInputError

FORMAT = "himari-ray-dataset"
FORMAT_VERSION = 1
ARRAY_FIELDS = ("features", "regime_ids", "regime_confidences", "prices", "returns", "timestamps", "tradable")


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
            **ds.metadata,
        }
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
        os.rename(tmp, out)  # atomic on one filesystem: readers see all of it or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _require(meta: dict[str, Any], key: str, path: Path) -> Any:
    if key not in meta:
        raise UserInputError(f"{path}: missing key {key!r}")
    return meta[key]


def load_dataset_dir(path: str | Path) -> Dataset:
    path = Path(path)
    meta_path, arrays_path = path / "metadata.json", path / "arrays.npz"
    if not path.is_dir() or not meta_path.is_file() or not arrays_path.is_file():
        raise UserInputError(f"{path}: not a himari-ray dataset (expected metadata.json and arrays.npz)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{meta_path}: not valid JSON ({exc.msg})") from None
    if meta.get("format") != FORMAT:
        raise UserInputError(f"{meta_path}: format: expected {FORMAT!r}, got {meta.get('format')!r}")
    if _require(meta, "format_version", meta_path) > FORMAT_VERSION:
        raise UserInputError(f"{meta_path}: format_version {meta['format_version']} is newer than this himari-ray")
    names = tuple(_require(meta, "feature_names", meta_path))
    scaler_meta = _require(meta, "scaler", meta_path)
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
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
        # The test split is checked when it is first used (a final evaluation), never at load: the search
        # must provably not touch it, and a test poisons it to prove so.
        if s != "test" and not np.isfinite(fields["features"]).all():
            raise UserInputError(f"{arrays_path}: {s}.features has non-finite values")
        try:
            splits[s] = SplitArrays(**fields)
        except ValueError as exc:
            raise UserInputError(f"{arrays_path}: {s}: {exc}") from None
    scaler = FeatureScaler(
        mean=np.asarray(scaler_meta["mean"], dtype=np.float64),
        std=np.asarray(scaler_meta["std"], dtype=np.float64),
        clip=float(scaler_meta["clip"]),
    )
    extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "feature_names", "scaler")}
    return Dataset(**splits, feature_names=names, scaler=scaler, metadata=extra)
