"""`himari-ray act`: an exported policy's action for every bar of a raw OHLCV file.

The bars go through the same functions that built the training dataset (`read_ohlcv`, then
`causal_columns` for features and regimes, `denoise_features`, the train-split scaler from the bundle), so
the policy sees at bar t exactly what it would have seen in training: nothing after bar t.

A bar gets an action once the features and regimes have warmed up (`warmup_bars`) and a full context of
`context_len` bars exists; earlier bars are listed without one. Filled bars (hours missing from the file,
`real` False) get an action too, computed like every other, but no exchange traded then: act on real bars.
The denoiser, when the training dataset used it, starts at the first bar after the warm-up, so its first
~50 outputs depend on where the file starts; give it history enough before the bars you trade.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from himari_ray.data.dataset import causal_columns, finite_features
from himari_ray.data.denoise import denoise_features
from himari_ray.data.ohlcv import read_ohlcv
from himari_ray.env.deploy import deployed_actions
from himari_ray.env.selective import SelectivePolicy
from himari_ray.env.trading import decision_windows
from himari_ray.policy.bundle import Bundle
from himari_ray.schema import deploy_of
from himari_ray.types import UserInputError

#: Columns of `act`'s output, in order.
OUTPUT_COLUMNS = ("timestamp", "close", "real", "regime", "action", "p_hold", "p_long", "p_short")


def min_bars(bundle: Bundle) -> int:
    """Bars a file needs for one action: the warm-up plus a full context."""
    return bundle.spec.warmup_bars + bundle.spec.context_len


def deployment(bundle: Bundle) -> str:
    """How the policy was scored, hence how it acts: greedy, sample or selective (the trial's `eval.deploy`)."""
    return deploy_of(bundle.spec.trial_config.get("eval"))


def selective_rule(bundle: Bundle) -> SelectivePolicy | None:
    """A selective bundle's fitted rule, or one line saying the bundle lacks it."""
    if deployment(bundle) != "selective":
        return None
    try:
        return SelectivePolicy.from_dict(bundle.spec.selective)
    except ValueError as exc:
        raise UserInputError(f"{bundle.path / 'policy.json'}: key 'selective': {exc}") from None


def decision_inputs(bundle: Bundle, bars_path: str | Path) -> tuple[pd.DataFrame, dict, np.ndarray, np.ndarray]:
    """The bars of the file, their causal columns (with `warmup`), and the scaled windows and regime ids of
    every decision bar, computed exactly as the training dataset was."""
    spec = bundle.spec
    path = Path(bars_path)
    bars, _ = read_ohlcv(path)
    n_real, need = int(bars["real"].sum()), min_bars(bundle)
    if n_real < need:
        raise UserInputError(
            f"{path}: {n_real} bars; this policy needs at least {need} for one action "
            f"(warm-up {spec.warmup_bars} + context {spec.context_len})"
        )
    columns, warmup = causal_columns(bars, spec.detector)
    # The denoiser's q and r are multiples of each feature's variance over the rows given; its output depends
    # on q / r alone (himari_ray.data.denoise), so these rows reproduce the training dataset's filter.
    raw = denoise_features(columns["features"], len(columns["features"]), spec.denoise)
    features = finite_features(raw, str(path))
    c = spec.context_len
    windows = decision_windows(bundle.scaler.transform(features), c)
    return bars, {**columns, "warmup": warmup}, windows, columns["regime_ids"][c - 1 :]


def _first_decision_at(bars: pd.DataFrame, skipped: int, start: str | None, path: Path) -> int:
    """The index, among the decision bars, of the first at or after `start` (0 without one)."""
    if start is None:
        return 0
    try:
        when = pd.Timestamp(start)
    except (ValueError, TypeError):
        raise UserInputError(f"--start {start!r}: not a timestamp (e.g. 2019-07-01T00:00:00Z)") from None
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    times = bars.index[skipped:]
    i = int(times.searchsorted(when))
    if i >= len(times):
        raise UserInputError(f"--start {start}: after the last bar of {path} ({times[-1] if len(times) else '-'})")
    return i


def act_on_bars(
    bundle: Bundle, bars_path: str | Path, seed: int = 0, start: str | None = None
) -> tuple[pd.DataFrame, int]:
    """One row per hourly bar of the file (`OUTPUT_COLUMNS`) and the number of leading bars without an action.

    `action` is what the policy was scored as doing (`deployment`, through the evaluator's own rule,
    env/deploy.py): the argmax, a draw from its probabilities with a generator seeded by `seed` (same file,
    same seed: same actions), or the selective rule with the bundle's thresholds (no draws); `p_*` are the
    policy's probabilities (softmax of its logits). A carried policy acts on the position its previous action
    left it in, starting flat at the first decision bar; its probabilities are those along that path.

    `start` (a timestamp): the deployment begins at the first decision bar at or after it, flat, with a
    selective rule's fitted thresholds (its HOLD-share controller, env/control.py, starts there); earlier bars
    only warm the features up and get no action. The evaluator starts the same way at its split's first bar.
    """
    bars, columns, windows, regimes = decision_inputs(bundle, bars_path)
    warmup = columns["warmup"]
    spec = bundle.spec
    c = spec.context_len
    first = warmup + c - 1  # the first decision bar
    begin = _first_decision_at(bars, first, start, Path(bars_path))
    windows, regimes = windows[begin:], regimes[begin:]
    deploy = deployment(bundle)
    uniforms = np.random.default_rng(seed).random(len(regimes)) if deploy == "sample" else None
    if bundle.carried:
        # The policy follows its own path of positions, flat at the first decision bar, as in training.
        logits = np.stack([bundle.logits(windows, regimes, p) for p in range(3)], axis=1)
    else:
        logits = bundle.logits(windows, regimes)
    # The bars the evaluator scores (bar and next bar both real; the file's last bar is the one being decided
    # live): a selective rule's controller counts only those, as the evaluator's does.
    real = bars["real"].to_numpy(dtype=bool)
    counted = (real & np.r_[real[1:], True])[first + begin :]
    actions, probs = deployed_actions(deploy, logits, regimes, uniforms, selective_rule(bundle), counted)

    n = len(bars)
    skipped = first + begin  # bars before the first action
    frame = pd.DataFrame(
        {
            "timestamp": bars.index.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "close": bars["close"].to_numpy(),
            "real": bars["real"].to_numpy(),
        }
    )
    regime_col = np.full(n, "", dtype=object)
    regime_col[warmup:] = np.asarray(spec.regimes, dtype=object)[columns["regime_ids"]]
    action_col = np.full(n, "", dtype=object)
    action_col[skipped:] = np.asarray(spec.actions, dtype=object)[actions]
    frame["regime"] = regime_col
    frame["action"] = action_col
    for i, name in enumerate(("p_hold", "p_long", "p_short")):
        col = np.full(n, np.nan)
        col[skipped:] = probs[:, i]
        frame[name] = col
    return frame, skipped


def write_actions(frame: pd.DataFrame, out: Path | None) -> None:
    """CSV to `out` (written to a temporary sibling, then renamed: never a half-written file) or stdout."""
    if out is None:
        print(frame.to_csv(index=False, float_format="%.10g"), end="")
        return
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        frame.to_csv(tmp, index=False, float_format="%.10g")
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
