"""The policy bundle: a directory that holds a trained policy and everything needed to feed it new bars.

Files (all listed with their SHA-256 in `manifest.json`):
- `policy.ts`: the module as TorchScript, `forward(window: float32 (B, C, F), regime: int64 (B,)) -> logits (B, 3)`;
- `policy.onnx`: the same function as ONNX (inputs `window`, `regime`; output `logits`), when `onnx` is installed;
- `scaler.npz`: the train-split feature mean and std (`allow_pickle=False`);
- `policy.json`: feature names, context length, scaler clip, regime detector and denoiser settings, the trial's
  full config, the search's manifest and where the policy came from (`PolicySpec`);
- `space.yaml`: the search's space file, as it was run.

Nothing in a bundle is a Python pickle: TorchScript archives load through TorchScript's own restricted
unpickler, the rest is JSON and npz. Loading verifies every checksum and refuses a bundle with a changed,
missing or extra file. The checksums catch damage and edits to single files; to authenticate a bundle from
someone else, compare the SHA-256 of its `manifest.json` with the one `export` printed (`act --sha256`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from himari_ray.data.denoise import KalmanConfig
from himari_ray.data.regime import RegimeDetectorConfig
from himari_ray.types import ACTION_NAMES, REGIME_NAMES, FeatureScaler, UserInputError, quote

FORMAT = "himari-ray-policy"
#: 2: the module takes (window, regime, position); 1 took (window, regime), and `act` still reads those.
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
POLICY_FILE = "policy.json"
SCALER_FILE = "scaler.npz"
TORCHSCRIPT_FILE = "policy.ts"
ONNX_FILE = "policy.onnx"
SPACE_FILE = "space.yaml"


class PolicySpec(BaseModel):
    """What `act` needs besides the weights, and where the policy came from (`policy.json`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = Field(FORMAT, description="Always himari-ray-policy.")
    format_version: int = Field(FORMAT_VERSION, description="Bumped when a reader of older bundles would misread.")
    created_by: str = Field(description="himari-ray version that wrote the bundle.")
    feature_names: tuple[str, ...] = Field(description="Feature columns in the order the module reads them.")
    context_len: int = Field(ge=1, description="C: bars of features in each window the module sees.")
    scaler_clip: float = Field(gt=0, description="Scaled features are clipped to +-this, as in training.")
    detector: RegimeDetectorConfig = Field(description="Regime detector settings of the training dataset.")
    denoise: KalmanConfig = Field(description="Causal Kalman denoiser settings of the training dataset.")
    warmup_bars: int = Field(ge=0, description="Bars the features and regimes need before their first value.")
    actions: tuple[str, ...] = Field(ACTION_NAMES, description="Action names by id (logit order).")
    regimes: tuple[str, ...] = Field(REGIME_NAMES, description="Regime names by id.")
    trial: int | None = Field(description="Tune trial number in the search (None: not from a search).")
    iteration: int | None = Field(description="Training iteration of the exported checkpoint.")
    member: int = Field(0, ge=0, description="Which member (seed x fold) of a robust trial.")
    search_dir: str | None = Field(description="The search directory the policy was exported from.")
    search: dict[str, Any] = Field(default_factory=dict, description="The search's manifest (search.json).")
    trial_config: dict[str, Any] = Field(description="The trial's full TrialConfig (searched values applied).")
    dataset: dict[str, Any] = Field(default_factory=dict, description="Training dataset's source and splits.")
    files: dict[str, str] = Field(default_factory=dict, description="Which file holds which format of the module.")
    selective: dict[str, Any] | None = Field(
        None,
        description="A selective deployment's fitted rule (env.selective.SelectivePolicy.to_dict): its per-regime "
        "thresholds, fitted on the end of the training split, as the evaluator fitted them.",
    )


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    spec: PolicySpec
    scaler: FeatureScaler
    module: torch.jit.ScriptModule
    manifest_sha256: str

    @property
    def carried(self) -> bool:
        """Whether the policy acts on the position it holds (its trial's `position_mode` is carried)."""
        return (self.spec.trial_config.get("env") or {}).get("position_mode") == "carried"

    def logits(self, windows: np.ndarray, regimes: np.ndarray, position: int = 0, batch_size: int = 4096) -> np.ndarray:
        """(B, 3) float32 logits for scaled windows (B, C, F) and regime ids (B,), the policy holding
        `position` (the previous action id; only a carried policy reads it)."""
        out = []
        with torch.no_grad():
            for lo in range(0, len(regimes), batch_size):
                w = torch.from_numpy(np.ascontiguousarray(windows[lo : lo + batch_size], dtype=np.float32))
                r = torch.from_numpy(np.ascontiguousarray(regimes[lo : lo + batch_size], dtype=np.int64))
                args = (w, r) if self.spec.format_version < 2 else (w, r, torch.full_like(r, position))
                out.append(self.module(*args).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.spec.actions)), dtype=np.float32)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_new_bundle_path(out: Path) -> None:
    if out.exists():
        raise UserInputError(f"{out}: already exists; choose a new --out (bundles are never overwritten)")


def write_bundle(
    out: Path, spec: PolicySpec, scaler: FeatureScaler, write_module: Callable[[Path], None], space_text: str = ""
) -> str:
    """Write a bundle atomically (a temporary sibling renamed into place, never over an existing path);
    `write_module(dir)` writes the module file(s) named in `spec.files`. Returns the manifest's SHA-256."""
    out = Path(out)
    check_new_bundle_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_module(tmp)
        np.savez(tmp / SCALER_FILE, mean=scaler.mean, std=scaler.std)
        (tmp / POLICY_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
        (tmp / SPACE_FILE).write_text(space_text)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "files": {name: sha256_file(tmp / name) for name in files},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        digest = sha256_file(tmp / MANIFEST_FILE)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the bundle from the people it is shipped to
        os.rename(tmp, out)  # atomic on one filesystem: readers see all of it or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest


def _verify(path: Path, expected_sha256: str | None) -> tuple[dict[str, Any], str]:
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir() or not manifest_path.is_file():
        raise UserInputError(f"{path}: not a himari-ray policy bundle (no {MANIFEST_FILE}; see `himari-ray export`)")
    digest = sha256_file(manifest_path)
    if expected_sha256 is not None and digest != expected_sha256.strip().lower():
        raise UserInputError(
            f"{manifest_path}: SHA-256 {digest} is not the expected {quote(expected_sha256)}; refusing to load"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        fmt = manifest["format"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise UserInputError(f"{manifest_path}: not a valid bundle manifest; refusing to load") from None
    if fmt != FORMAT:
        raise UserInputError(f"{manifest_path}: format: expected {FORMAT!r}, got {quote(fmt)}")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise UserInputError(f"{manifest_path}: files: expected a map of file name to SHA-256; refusing to load")
    present = {p.name for p in path.iterdir()} - {MANIFEST_FILE}
    if present - set(files):
        extra = sorted(present - set(files))[0]
        raise UserInputError(f"{path}: {quote(extra)} is not in {MANIFEST_FILE} (tampered bundle); refusing to load")
    for name, want in files.items():
        if name not in present:
            raise UserInputError(f"{path}: {quote(name)} listed in {MANIFEST_FILE} is missing; refusing to load")
        if sha256_file(path / name) != want:
            raise UserInputError(
                f"{path / name}: does not match its SHA-256 in {MANIFEST_FILE} (tampered or damaged bundle); "
                "refusing to load"
            )
    for required in (POLICY_FILE, SCALER_FILE, TORCHSCRIPT_FILE):
        if required not in files:
            raise UserInputError(f"{manifest_path}: lists no {required}; refusing to load")
    return manifest, digest


def load_bundle(path: str | Path, expected_sha256: str | None = None) -> Bundle:
    """Verify every checksum (and the manifest's own SHA-256 when given), then load; one line on any problem."""
    path = Path(path)
    manifest, digest = _verify(path, expected_sha256)
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise UserInputError(f"{path / MANIFEST_FILE}: format_version is newer than this himari-ray")
    try:
        spec = PolicySpec.model_validate_json((path / POLICY_FILE).read_text())
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) or "(top level)"
        raise UserInputError(f"{path / POLICY_FILE}: {where}: {first['msg']}") from None
    try:
        with np.load(path / SCALER_FILE, allow_pickle=False) as npz:
            mean, std = npz["mean"], npz["std"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(f"{path / SCALER_FILE}: cannot read ({quote(str(exc))})") from None
    if mean.shape != (len(spec.feature_names),) or std.shape != mean.shape:
        raise UserInputError(f"{path / SCALER_FILE}: shape {mean.shape}; expected ({len(spec.feature_names)},)")
    try:
        module = torch.jit.load(str(path / TORCHSCRIPT_FILE), map_location="cpu")
    except RuntimeError as exc:
        raise UserInputError(f"{path / TORCHSCRIPT_FILE}: cannot load ({quote(str(exc))})") from None
    module.eval()
    scaler = FeatureScaler(mean=mean.astype(np.float64), std=std.astype(np.float64), clip=spec.scaler_clip)
    return Bundle(path=path, spec=spec, scaler=scaler, module=module, manifest_sha256=digest)
