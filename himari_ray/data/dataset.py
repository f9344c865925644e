"""Datasets (ARCHITECTURE §2): where they come from, how they are built, split and scaled, and loading by spec.

A `DataSpec` names a dataset; `load_dataset(spec)` builds or reads it once per process (env runners and
trials call it with the same spec, so a cache avoids rebuilding it for every env copy).

Building from OHLCV bars: features (himari_ray.features) and regimes (himari_ray.regime) on the regular
hourly grid, warm-up rows dropped, optional causal Kalman denoising, chronological train/val/test splits
and a feature scaler fitted on the train split only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from himari_ray import __version__
from himari_ray.data.denoise import KalmanConfig, denoise_features
from himari_ray.data.features import FEATURE_NAMES, LONGEST_LOOKBACK, compute_features
from himari_ray.data.ohlcv import OHLCV_COLUMNS, ImportReport, read_ohlcv
from himari_ray.data.regime import RegimeDetectorConfig, detect_regimes_real_bars, regime_shares, warmup_bars
from himari_ray.data.seedpickle import read_seed_pickle
from himari_ray.data.store import load_dataset_dir
from himari_ray.data.synthetic import SYNTH_FEATURE_NAMES, synthetic_frame
from himari_ray.types import SPLIT_NAMES, Dataset, FeatureScaler, SplitArrays, StrictModel, UserInputError

#: The bundled real sample: Binance BTC/USDT hourly bars 2018-2019 (freqtrade layout, gzip).
SAMPLE_FILE = "btc_usdt_1h_2018_2019.csv.gz"
#: Bars a built dataset must keep after the warm-up, so each split has room for a context window.
MIN_BARS_AFTER_WARMUP = 300
#: The env's defaults (`EnvConfig.context_len`, `EnvConfig.episode_len`; data sits below env, so they are
#: repeated here and a test keeps them equal): what every bundled space but smoke and deploy (16 and 256) uses.
DEFAULT_CONTEXT_LEN = 100
DEFAULT_EPISODE_LEN = 512
#: The shortest train split a bar file may give: one observation window and one episode of decisions. Any
#: shorter, every episode runs over the same few hundred bars, the selective deployment's calibration slice (the
#: last 20% of train) holds a few dozen, and the preflight prices each regime's p* from a handful: a search
#: would run and report numbers that mean nothing. Refused at import, saying how many bars would do.
MIN_TRAIN_BARS = DEFAULT_CONTEXT_LEN + DEFAULT_EPISODE_LEN
#: Validation and test must each hold a default window and a decision after it (what a search and the final
#: evaluation check first): a window of bars, plus the bar whose return the decision earns, plus one.
MIN_EVAL_BARS = DEFAULT_CONTEXT_LEN + 2


class SplitFractions(StrictModel):
    """Chronological split shares; the test split takes the rest."""

    train_frac: float = Field(0.6, gt=0, lt=1, description="Chronological share of bars in the train split.")
    val_frac: float = Field(0.2, gt=0, lt=1, description="Chronological share of bars in the validation split.")

    @model_validator(mode="after")
    def _fractions_leave_a_test_split(self) -> SplitFractions:
        if self.train_frac + self.val_frac >= 1.0:
            raise ValueError("train_frac + val_frac must be < 1 (the rest is the test split)")
        return self

    def bounds(self, n: int) -> dict[str, tuple[int, int]]:
        n_train = int(n * self.train_frac)
        n_val = int(n * self.val_frac)
        return {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}


class DataSpec(SplitFractions):
    """Which dataset a search trains on."""

    source: Literal["sample", "synthetic", "dataset"] = Field(
        "sample", description="sample: the bundled BTC 2018-2019 bars; synthetic: the seeded market; dataset: a dir."
    )
    path: str | None = Field(None, description="Dataset directory (source: dataset), from `himari-ray data import`.")
    n_bars: int = Field(12_000, ge=1_000, description="Synthetic only: hourly bars to generate (after warm-up).")
    seed: int = Field(0, ge=0, description="Synthetic only: seed of the market.")
    folds: int = Field(0, ge=0, description="Walk-forward folds inside train+val (0: the plain train/val split).")
    fold: int = Field(0, ge=0, description="Which walk-forward fold this spec names (with folds > 0).")

    @model_validator(mode="after")
    def _path_iff_dataset(self) -> DataSpec:
        if (self.source == "dataset") != (self.path is not None):
            raise ValueError("path is required for source 'dataset' and only allowed there")
        if self.folds and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} out of range for {self.folds} folds")
        return self

    def base(self) -> DataSpec:
        """The dataset before any walk-forward fold is cut from it."""
        return self.model_copy(update={"folds": 0, "fold": 0})

    def with_fold(self, folds: int, fold: int) -> DataSpec:
        return self.model_validate({**self.model_dump(), "folds": folds, "fold": fold})


class BuildSettings(SplitFractions):
    """How OHLCV bars become a dataset."""

    detector: RegimeDetectorConfig = Field(default_factory=RegimeDetectorConfig, description="Regime detector.")
    denoise: KalmanConfig = Field(default_factory=KalmanConfig, description="Causal Kalman denoising of features.")


def _describe_splits(splits: dict[str, SplitArrays]) -> dict[str, Any]:
    out = {}
    for name, s in splits.items():
        out[name] = {
            "n": len(s),
            "start": pd.Timestamp(int(s.timestamps[0]), tz="UTC").isoformat() if len(s) else None,
            "end": pd.Timestamp(int(s.timestamps[-1]), tz="UTC").isoformat() if len(s) else None,
            "regime_pct": {k: round(v, 2) for k, v in regime_shares(s.regime_ids).items()},
            "untradable_bars": int((~s.tradable).sum()),
        }
    return out


def _assemble(
    columns: dict[str, np.ndarray],
    names: tuple[str, ...],
    bounds: dict[str, tuple[int, int]],
    metadata: dict[str, Any],
) -> Dataset:
    """Cut aligned columns at `bounds` into splits; the scaler is fitted on the train split alone."""
    splits = {name: SplitArrays(**{k: v[lo:hi] for k, v in columns.items()}) for name, (lo, hi) in bounds.items()}
    meta = {"created_by": f"himari-ray {__version__}", **metadata, "splits": _describe_splits(splits)}
    return Dataset(**splits, feature_names=names, scaler=FeatureScaler.fit(splits["train"].features), metadata=meta)


def causal_columns(bars: pd.DataFrame, detector: RegimeDetectorConfig) -> tuple[dict[str, np.ndarray], int]:
    """Per-bar inputs of every bar after the warm-up, each from bars <= t: raw (not yet denoised) float64
    features, regime ids and confidences, close, returns, times, `tradable` and `real`; and the warm-up length.

    The one computation behind both a dataset (`build_from_bars`) and an exported policy acting on new bars
    (`himari_ray.policy.act`), so a policy sees at inference exactly what it saw in training.
    """
    feats = compute_features(bars[list(OHLCV_COLUMNS)])
    close = bars["close"].to_numpy(np.float64)
    returns = np.r_[0.0, close[1:] / close[:-1] - 1.0]
    real = bars["real"].to_numpy(bool)
    # The detector counts real bars, as the seed did: flat filled bars would dilute its windows after an outage.
    regimes = detect_regimes_real_bars(returns, real, detector)
    warmup = max(LONGEST_LOOKBACK, regimes.warmup)
    # A decision at t earns returns[t+1]: only when bar t and bar t+1 are both real bars, one hour apart.
    tradable = real & np.r_[real[1:], False]
    keep = slice(warmup, None)
    columns = {
        "features": feats.to_numpy(np.float64)[keep],
        "regime_ids": regimes.regime_ids[keep].astype(np.int64),
        "regime_confidences": regimes.confidences[keep].astype(np.float32),
        "prices": close[keep],
        "returns": returns[keep],
        "timestamps": bars.index.asi8[keep].astype(np.int64),
        "tradable": tradable[keep],
        "real": real[keep],
    }
    return columns, warmup


def finite_features(features: np.ndarray, file: str) -> np.ndarray:
    """float32 features, or a one-line error naming the first feature that is not finite (checked after the
    cast: a float64 value past float32's 3.4e38 would become inf there)."""
    with np.errstate(over="ignore"):
        out = features.astype(np.float32)
    bad = ~np.isfinite(out).all(axis=0)
    if bad.any():
        raise UserInputError(f"{file}: feature {FEATURE_NAMES[int(np.argmax(bad))]} is not finite")
    return out


def split_shortfall(n: int, fractions: SplitFractions) -> bool:
    """Whether `n` bars after the warm-up cut into a split too short to train or evaluate on."""
    sizes = [hi - lo for lo, hi in fractions.bounds(n).values()]
    return n < MIN_BARS_AFTER_WARMUP or any(
        have < need for have, need in zip(sizes, (MIN_TRAIN_BARS, MIN_EVAL_BARS, MIN_EVAL_BARS), strict=True)
    )


def split_requirement(warmup: int, fractions: SplitFractions) -> str:
    """What the bars of a file must cover, in words, for an error line."""
    return (
        f"{warmup} of warm-up, then {MIN_TRAIN_BARS} for the train split at --train-frac {fractions.train_frac:g}: "
        f"a {DEFAULT_CONTEXT_LEN}-bar context and one {DEFAULT_EPISODE_LEN}-decision episode; {MIN_EVAL_BARS} each "
        f"for val and test"
    )


def bars_needed(warmup: int, fractions: SplitFractions) -> int:
    """The fewest bars a file needs for `fractions` to cut splits `split_shortfall` accepts."""
    shares = (fractions.train_frac, fractions.val_frac, 1.0 - fractions.train_frac - fractions.val_frac)
    needs = (MIN_TRAIN_BARS, MIN_EVAL_BARS, MIN_EVAL_BARS)
    n = max(MIN_BARS_AFTER_WARMUP, *(math.ceil(k / f) for k, f in zip(needs, shares, strict=True)))
    while split_shortfall(n, fractions):  # int() rounding in `bounds`: a step or two more
        n += 1
    return warmup + n


def build_from_bars(bars: pd.DataFrame, settings: BuildSettings, source: dict[str, Any]) -> Dataset:
    """Features, regimes, warm-up, denoising, splits and train-only scaling from regular hourly bars
    (columns open, high, low, close, volume, real; see `read_ohlcv`)."""
    columns, warmup = causal_columns(bars, settings.detector)
    n = len(bars) - warmup
    if split_shortfall(n, settings):
        raise UserInputError(
            f"{source['file']}: {len(bars)} bars; needs at least {bars_needed(warmup, settings)} "
            f"({split_requirement(warmup, settings)})"
        )
    del columns["real"]  # `tradable` carries it into the dataset
    n_train = settings.bounds(n)["train"][1]
    columns["features"] = finite_features(
        denoise_features(columns["features"], n_train, settings.denoise), source["file"]
    )
    metadata = {"source": source, "settings": settings.model_dump(), "warmup_bars": warmup}
    return _assemble(columns, FEATURE_NAMES, settings.bounds(n), metadata)


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:  # in blocks: the file is not held in memory a second time
        return hashlib.file_digest(fh, "sha256").hexdigest()


def import_ohlcv(path: str | Path, settings: BuildSettings | None = None) -> Dataset:
    """A dataset from an OHLCV file (any layout `read_ohlcv` knows)."""
    settings = settings or BuildSettings()
    path = Path(path)
    warmup = max(LONGEST_LOOKBACK, warmup_bars(settings.detector))
    need = bars_needed(warmup, settings)  # counted in real bars, before the grid is filled
    bars, report = read_ohlcv(path, min_bars=need, why=split_requirement(warmup, settings))
    source = {"kind": "ohlcv", "file": str(path), "sha256": _sha256(path), "import": report.to_dict()}
    return build_from_bars(bars, settings, source)


def import_seed_pickle(path: str | Path, features: Literal["raw", "denoised"] = "raw") -> Dataset:
    """A dataset from the seed's array pickle (restricted unpickler; returns recomputed from prices)."""
    path = Path(path)
    seed = read_seed_pickle(path, features=features)
    parts = [seed[s] for s in SPLIT_NAMES]
    prices = np.concatenate([p["prices"] for p in parts]).astype(np.float64)
    n_feat = parts[0]["features"].shape[1]
    names = tuple(seed["metadata"].get("feature_names") or ())
    if len(names) != n_feat:
        names = FEATURE_NAMES if n_feat == len(FEATURE_NAMES) else tuple(f"feature_{i}" for i in range(n_feat))
    columns = {
        "features": np.concatenate([p["features"] for p in parts]),
        "regime_ids": np.concatenate([p["regime_ids"] for p in parts]).astype(np.int64),
        "regime_confidences": np.concatenate([p["regime_confidences"] for p in parts]).astype(np.float32),
        "prices": prices,
        # One definition everywhere: the seed's own `returns` column is not trusted (its code scored actions
        # on the last bar already seen).
        "returns": np.r_[0.0, prices[1:] / prices[:-1] - 1.0],
        # The pickle has no times: consecutive hours from the epoch keep the contract's dtype and order.
        "timestamps": np.arange(len(prices), dtype=np.int64) * 3_600_000_000_000,
        "tradable": np.ones(len(prices), dtype=bool),
    }
    edges = np.cumsum([0] + [len(p["prices"]) for p in parts])
    bounds = {s: (int(edges[i]), int(edges[i + 1])) for i, s in enumerate(SPLIT_NAMES)}
    metadata = {
        "source": {"kind": "seed_pickle", "file": str(path), "sha256": _sha256(path), "features": features},
        "timestamps": "synthetic: the seed pickle has none",
    }
    return _assemble(columns, names, bounds, metadata)


def synthetic_dataset(n_bars: int, seed: int, fractions: SplitFractions | None = None) -> Dataset:
    fractions = fractions or SplitFractions()
    frame = synthetic_frame(n_bars, seed)
    columns = {
        "features": frame[list(SYNTH_FEATURE_NAMES)].to_numpy(np.float32),
        "regime_ids": frame["regime_id"].to_numpy(np.int64),
        "regime_confidences": frame["regime_confidence"].to_numpy(np.float32),
        "prices": frame["close"].to_numpy(np.float64),
        "returns": frame["ret"].to_numpy(np.float64),
        "timestamps": frame["timestamp"].to_numpy(np.int64),
        "tradable": np.ones(len(frame), dtype=bool),
    }
    metadata = {"source": {"kind": "synthetic", "n_bars": n_bars, "seed": seed}}
    return _assemble(columns, SYNTH_FEATURE_NAMES, fractions.bounds(len(frame)), metadata)


def sample_path() -> Path:
    return Path(str(resources.files("himari_ray.data") / "sample" / SAMPLE_FILE))


def walk_forward_fold(ds: Dataset, folds: int, fold: int) -> Dataset:
    """Fold `fold` of an anchored walk-forward over train+val: train+val is cut into folds + 1 chronological
    chunks; fold k trains on chunks 0..k and validates on chunk k+1 (the last fold's validation runs to the
    end of val). The scaler is refitted on the fold's own training bars. The test split is not carried over:
    a fold has an empty test split, so nothing downstream can read it."""
    pool = {
        f.name: np.concatenate([getattr(ds.train, f.name), getattr(ds.val, f.name)])
        for f in dataclasses.fields(SplitArrays)
    }
    n = len(pool["returns"])
    chunk = n // (folds + 1)
    train_end = (fold + 1) * chunk
    val_end = n if fold == folds - 1 else train_end + chunk
    bounds = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, val_end)}
    meta = {**ds.metadata, "walk_forward": {"folds": folds, "fold": fold}}
    return _assemble(pool, ds.feature_names, bounds, meta)


@functools.lru_cache(maxsize=16)
def load_dataset(spec: DataSpec) -> Dataset:
    """Build or read (once per process) the dataset a spec names; a walk-forward fold is cut from its base."""
    if spec.folds:
        return walk_forward_fold(load_dataset(spec.base()), spec.folds, spec.fold)
    fractions = SplitFractions(train_frac=spec.train_frac, val_frac=spec.val_frac)
    if spec.source == "synthetic":
        return synthetic_dataset(spec.n_bars, spec.seed, fractions)
    if spec.source == "sample":
        return import_ohlcv(sample_path(), BuildSettings(**fractions.model_dump()))
    return load_dataset_dir(spec.path)


__all__ = ["BuildSettings", "DataSpec", "ImportReport", "SplitFractions", "load_dataset"]
