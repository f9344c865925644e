"""`himari-ray export`: a trial's trained module and its feature pipeline, out of a search, into a bundle.

Which trial: `--trial N`, or by default the search's best by the one ranking (`himari_ray.searchdir`: the
first row of `analyze`) among trials that have a checkpoint. Which checkpoint: the one of the trial's best
report, member 0 (a robust trial trains one module per seed and fold; member 0 is the first seed on the
first fold). The module is RLlib's RLModule loaded with
`RLModule.from_checkpoint` from the user's own search directory; what leaves it is TorchScript (and ONNX),
never a pickle. The exported module is checked against the RLModule on every validation window before the
bundle is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from torch import nn

from himari_ray import __version__
from himari_ray.data.dataset import load_dataset
from himari_ray.data.features import FEATURE_NAMES, LONGEST_LOOKBACK
from himari_ray.data.regime import RegimeDetectorConfig, warmup_bars
from himari_ray.env.deploy import deployed_actions
from himari_ray.env.selective import SelectivePolicy
from himari_ray.env.trading import decision_windows
from himari_ray.policy.bundle import (
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    PolicySpec,
    check_new_bundle_path,
    write_bundle,
)
from himari_ray.rl.config import TrialConfig
from himari_ray.rl.evaluate import PolicyEvaluator
from himari_ray.searchdir import (
    MODULE_IN_CHECKPOINT,
    SEARCH_JSON,
    best_checkpoint,
    load_search_run,
    ranked,
    trained,
    trial_dirs,
    trial_state,
)
from himari_ray.types import Dataset, UserInputError, quote


class PolicyNet(nn.Module):
    """The RLModule's inference pass as a plain function of tensors, which TorchScript and ONNX can hold."""

    def __init__(self, module: RLModule):
        super().__init__()
        self.module = module

    def forward(self, window: torch.Tensor, regime: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        # The position (previous action id) matters to a carried policy only; a per_bar module ignores it.
        obs = {"window": window, "regime": regime, "position": position}
        return self.module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]


@contextlib.contextmanager
def _quiet():
    """Libraries' warnings on the way (RLlib's deprecation notices, the ONNX exporter's) are not the user's
    business here: a command prints one result or one error line."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


@dataclass(frozen=True)
class TrialCheckpoint:
    """One trial of a search, located on disk."""

    number: int
    trial_dir: Path
    checkpoint: Path
    iteration: int | None
    config: TrialConfig


def _trial_config(trial_dir: Path) -> TrialConfig:
    path = trial_dir / "params.json"
    try:
        config = json.loads(path.read_text())
        params = {k: v for k, v in config.items() if k != "trial"}
        return TrialConfig.model_validate(config["trial"]).with_params(params)
    except FileNotFoundError:
        raise UserInputError(f"{path}: missing; cannot tell how the trial was configured") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserInputError(f"{path}: not a trial config ({quote(str(exc))})") from None


def find_trial(search_dir: Path, trial: int | None) -> TrialCheckpoint:
    """The trial to export (`trial`, or the search's best by the one ranking, `himari_ray.searchdir`, that
    has a checkpoint) and the checkpoint of its best report."""
    search_dir = Path(search_dir)
    if not (search_dir / SEARCH_JSON).is_file():
        raise UserInputError(f"{search_dir}: not a himari-ray search directory (no search.json)")
    dirs = trial_dirs(search_dir)
    if trial is None:
        search = load_search_run(search_dir)
        if not any(run.reports for run in search.trials):
            raise UserInputError(f"{search_dir}: no trial has reported yet; nothing to export")
        with_ckpt = [run.number for run in ranked(search) if trained(run) and best_checkpoint(run.path) is not None]
        if not with_ckpt:
            raise UserInputError(f"{search_dir}: no trial has a checkpoint (all skipped by the preflight?)")
        trial = with_ckpt[0]
    if trial not in dirs:
        known = ", ".join(map(str, sorted(dirs))) or "none"
        raise UserInputError(f"--trial {trial}: no such trial in {search_dir} (trials: {quote(known)})")
    ckpt = best_checkpoint(dirs[trial])
    if ckpt is None:
        raise UserInputError(
            f"--trial {trial}: {dirs[trial]} has no checkpoint (skipped by the preflight or stopped before one)"
        )
    iteration = trial_state(ckpt).get("iteration")
    return TrialCheckpoint(trial, dirs[trial], ckpt, iteration, _trial_config(dirs[trial]))


def feedable_from_bars(ds: Dataset, where: str) -> RegimeDetectorConfig:
    """The detector settings of a dataset built from OHLCV bars; refuses one whose features `act` cannot compute."""
    settings = ds.metadata.get("settings")
    if tuple(ds.feature_names) != FEATURE_NAMES or not isinstance(settings, dict) or "detector" not in settings:
        kind = ds.metadata.get("source", {}).get("kind", "unknown")
        raise UserInputError(
            f"{where}: trained on {kind} features, not ones computed from OHLCV bars, so `act` could not feed it; "
            "train on bars (data source sample, or a dataset from `himari-ray data import`)"
        )
    return RegimeDetectorConfig.model_validate(settings["detector"])


def _example_inputs(ds: Dataset, context_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Every validation window and its regime, as the evaluator sees them (scaled with the train statistics)."""
    val = ds.val
    windows = decision_windows(ds.scaler.transform(val.features), context_len)
    return np.ascontiguousarray(windows), val.regime_ids[context_len - 1 :].astype(np.int64)


def module_logits(
    module: nn.Module, windows: np.ndarray, regimes: np.ndarray, position: int = 0, batch: int = 4096
) -> np.ndarray:
    out = []
    with torch.no_grad():
        for lo in range(0, len(regimes), batch):
            r = torch.from_numpy(regimes[lo : lo + batch])
            out.append(module(torch.from_numpy(windows[lo : lo + batch]), r, torch.full_like(r, position)))
    return torch.cat(out).numpy()


def _example(windows: np.ndarray, regimes: np.ndarray) -> tuple[torch.Tensor, ...]:
    r = torch.from_numpy(regimes[:2])
    return torch.from_numpy(windows[:2]), r, torch.zeros_like(r)


def to_torchscript(module: RLModule, windows: np.ndarray, regimes: np.ndarray) -> torch.jit.ScriptModule:
    """Trace the inference pass (eval mode: no dropout) on real windows; the batch size stays free."""
    module.eval()
    net = PolicyNet(module).eval()
    example = _example(windows, regimes)
    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.13 marks jit.trace deprecated; TorchScript stays the one format that loads without pickle.
        warnings.simplefilter("ignore")
        return torch.jit.trace(net, example, check_trace=False)


def write_onnx(module: RLModule, windows: np.ndarray, regimes: np.ndarray, path: Path) -> None:
    net = PolicyNet(module).eval()
    batch = torch.export.Dim("batch", min=1)
    example = _example(windows, regimes)
    # The exporter narrates every stage on stdout; `act` and `export` keep stdout for their results.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad(), _quiet():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            example,
            str(path),
            dynamo=True,
            input_names=["window", "regime", "position"],
            output_names=["logits"],
            dynamic_shapes={"window": {0: batch}, "regime": {0: batch}, "position": {0: batch}},
            external_data=False,  # one self-contained file: the bundle is small
        )


def _selective_rule(
    module: RLModule, scripted: nn.Module, ds: Dataset, config: TrialConfig, windows: np.ndarray, regimes: np.ndarray
) -> SelectivePolicy | None:
    """A selective trial's rule, fitted as its evaluator fits it (on the end of train, with the RLModule), and
    checked: the exported module must take the very same actions on every validation window."""
    if config.eval.deploy != "selective":
        return None
    evaluator = PolicyEvaluator(config.env, config.eval, dataset=ds, objective=config.objective)
    module.eval()
    with torch.no_grad():
        rule = evaluator.fit_selective(module)
    positions = range(3) if config.env.position_mode == "carried" else [0]
    by_net = [[module_logits(net, windows, regimes, p) for p in positions] for net in (PolicyNet(module), scripted)]
    ours, theirs = (
        deployed_actions("selective", np.stack(b, axis=1) if len(b) > 1 else b[0], regimes, selective=rule)[0]
        for b in by_net
    )
    if not np.array_equal(ours, theirs):  # a tracing difference at a threshold must never ship
        raise RuntimeError(f"exported module's selective actions differ on {int((ours != theirs).sum())} windows")
    return rule


def export_module(
    module: RLModule,
    ds: Dataset,
    config: TrialConfig,
    out: Path,
    provenance: dict[str, Any],
    space_text: str = "",
    onnx: bool | None = None,
) -> tuple[str, int]:
    """Write a bundle for `module`, trained on `ds` under `config`. Returns the manifest's SHA-256 and the
    number of validation windows on which the exported module was checked against `module`."""
    check_new_bundle_path(out)
    detector = feedable_from_bars(ds, provenance.get("search_dir") or str(out))
    settings = ds.metadata["settings"]
    c = config.env.context_len
    windows, regimes = _example_inputs(ds, c)
    scripted = to_torchscript(module, windows, regimes)
    for position in range(3) if config.env.position_mode == "carried" else [0]:
        expected = module_logits(PolicyNet(module).eval(), windows, regimes, position).argmax(-1)
        got = module_logits(scripted, windows, regimes, position).argmax(-1)
        if not np.array_equal(expected, got):  # a tracing bug must never ship
            raise RuntimeError(
                f"exported module disagrees with the RLModule on {int((expected != got).sum())} windows "
                f"(position {position})"
            )
    selective = _selective_rule(module, scripted, ds, config, windows, regimes)
    with_onnx = find_spec("onnx") is not None if onnx is None else onnx
    spec = PolicySpec(
        created_by=f"himari-ray {__version__}",
        feature_names=tuple(ds.feature_names),
        context_len=c,
        scaler_clip=ds.scaler.clip,
        detector=detector,
        denoise=settings["denoise"],
        warmup_bars=max(LONGEST_LOOKBACK, warmup_bars(detector)),
        trial_config=config.model_dump(mode="json"),
        dataset={k: ds.metadata[k] for k in ("source", "splits", "warmup_bars") if k in ds.metadata},
        files={"torchscript": TORCHSCRIPT_FILE, **({"onnx": ONNX_FILE} if with_onnx else {})},
        selective=None if selective is None else selective.to_dict(),
        **provenance,
    )

    def write(d: Path) -> None:
        scripted.save(str(d / TORCHSCRIPT_FILE))
        if with_onnx:
            write_onnx(module, windows, regimes, d / ONNX_FILE)

    return write_bundle(out, spec, ds.scaler, write, space_text), len(regimes)


def export_search(search_dir: Path, trial: int | None, out: Path) -> tuple[TrialCheckpoint, str, int]:
    """`himari-ray export`: the checkpoint of the chosen trial's best report (member 0) as a bundle at `out`."""
    search_dir, out = Path(search_dir), Path(out)
    check_new_bundle_path(out)
    found = find_trial(search_dir, trial)
    member = found.config.members()[0]
    ds = load_dataset(member.env.data)
    feedable_from_bars(ds, f"trial {found.number}")  # before loading Ray's checkpoint: refuse early
    with _quiet():  # a deprecation notice from inside RLlib's own loader
        # RLlib reads a checkpoint path as a URI: a relative one (export run, not /abs/run) has no scheme.
        module = RLModule.from_checkpoint(str((found.checkpoint / "member_0" / MODULE_IN_CHECKPOINT).resolve()))
    manifest = json.loads((search_dir / "search.json").read_text())
    space = search_dir / "space.yaml"
    provenance = {
        "trial": found.number,
        "iteration": found.iteration,
        "member": 0,
        "search_dir": str(search_dir.resolve()),
        "search": manifest,
    }
    digest, n = export_module(module, ds, member, out, provenance, space.read_text() if space.is_file() else "")
    return found, digest, n
