"""Scoring a policy: the evaluator straight through the RLModule (greedy shares, probabilities, leak alarm),
the objective, robust aggregation and the report of a preflight-skipped configuration."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule

from himari_ray.data.dataset import load_dataset
from himari_ray.env.leak import LogisticBaseline, leak_verdict
from himari_ray.env.metrics import action_shares, band_distance, trading_metrics
from himari_ray.env.preflight import (
    RegimePreflight,
)
from himari_ray.env.trading import EnvConfig, decision_windows
from himari_ray.rl.config import EvalConfig
from himari_ray.types import REGIME_NAMES, Dataset, Regime

#: Weight of validation Sharpe (clipped to +-5) in `objective`: a swing of at most 0.04 percentage points, below one bar's
#: share of any regime's HOLD% on a realistic validation split, so Sharpe only breaks band-distance ties.
SHARPE_TIE_BREAK = 0.004


#: Added to `objective` when the profit constraint fails: a violating trial ranks after every satisfying one.
CONSTRAINT_PENALTY = 1000.0


def objective(band: float, sharpe: float, profit_ok: bool) -> float:
    """What the single-objective search minimises: band distance, Sharpe as tie-break, profit constraint."""
    tie = SHARPE_TIE_BREAK * float(np.clip(np.nan_to_num(sharpe), -5.0, 5.0))
    return band - tie + (0.0 if profit_ok else CONSTRAINT_PENALTY)


#: Report keys this module adds beyond the per-action shares and `val_<trading metric>` (the lead wires them
#: into himari_ray.schema). `{regime}` is a regime name or ALL.
HOLD_PROB = "hold_prob_{regime}"  # the policy's mean P(HOLD) in percent: the HOLD% a sampling policy expects
DECISIVENESS = "decisiveness_{regime}"  # mean top-action probability, 1/3 (uniform) .. 1 (certain)
BAND_DISTANCE = "band_distance"  # band distance of the greedy HOLD shares: what the objective scores
BAND_DISTANCE_PROB = "band_distance_prob"  # band distance of the mean HOLD probabilities
LEAK_ALARM = "leak_alarm"  # bool: the hit rate on traded bars is significantly too good (himari_ray.env.leak)
LEAK_BASELINE_HIT_RATE = "leak_baseline_hit_rate"  # train-only logistic baseline's hit rate at the same selectivity
LEAK_P_VS_BASELINE = "leak_p_vs_baseline"  # one-sided p-value: policy hit rate > baseline + margin
LEAK_P_VS_CEILING = "leak_p_vs_ceiling"  # one-sided p-value: policy hit rate > the honest ceiling
BEST_OBJECTIVE = "best_objective"  # lowest objective the trial has reported so far (this report included)
BEST_ITERATION = "best_iteration"  # iteration of that report; its checkpoint is kept beside the latest
BEST_BAND_DISTANCE = "best_band_distance"  # band distance of that report
BEST_VAL_SHARPE = "best_val_sharpe"  # validation Sharpe of that report


def track_best(metrics: dict[str, Any], best: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """Add the trial's best report so far (lowest objective, this one included) to `metrics` as `best_*`
    keys, so trials are compared by their best report and its iteration, not by where they stopped.
    Returns the best (to carry to the next report) and whether this report is it."""
    improved = best is None or metrics["objective"] < best[BEST_OBJECTIVE]
    if improved:
        best = {
            BEST_OBJECTIVE: metrics["objective"],
            BEST_ITERATION: metrics["iteration"],
            BEST_BAND_DISTANCE: metrics[BAND_DISTANCE],
            BEST_VAL_SHARPE: metrics["val_sharpe"],
        }
    metrics.update(best)
    return best, improved


class GreedyEvaluator:
    """The policy over every decision bar of a split (validation unless `confirm` asks for test), straight
    through the module: greedy actions and the action probabilities behind them.

    Decision bars are the tradable t in C-1 .. n-2 of the split; the action at t earns `returns[t+1]`.
    Windows are views; each batch is gathered once into a tensor.

    Greedy (argmax) shares are what the objective scores, because greedy is how the policy is deployed:
    RLlib's `forward_inference` and an exported policy act deterministically, and sampling would pay fees to
    trade on noise. The mean probabilities are reported beside them, with decisiveness, so a near-uniform
    policy whose greedy shares ride on tiny logit differences is visible as such.
    """

    def __init__(self, env: EnvConfig, cfg: EvalConfig, split: str = "val", dataset: Dataset | None = None):
        ds = dataset if dataset is not None else load_dataset(env.data)
        arrays = ds.split(split)
        c, n = env.context_len, len(arrays)
        self.cfg = cfg
        self.split = split  # trading metrics are named after it: val_sharpe, test_sharpe
        # Bars around exchange outages are skipped: no position is held across a gap.
        bars = np.flatnonzero(arrays.tradable[c - 1 : n - 1]) + (c - 1)
        scaled = ds.scaler.transform(arrays.features)
        self.windows = decision_windows(scaled, c)
        self.window_index = bars - (c - 1)
        # Copies: small, and torch wants writable arrays.
        self.regimes = arrays.regime_ids[bars].copy()
        self.next_returns = arrays.returns[bars + 1].copy()
        self.features_t = scaled[bars]
        # What honest features at bar t achieve: fitted on the train split only, whatever split is scored.
        train = ds.train
        tb = np.flatnonzero(train.tradable[:-1])
        self.baseline = LogisticBaseline(
            ds.scaler.transform(train.features[tb]), train.returns[tb + 1] > 0, cfg.leak_alarm.ridge
        )

    def probabilities(self, module: RLModule) -> np.ndarray:
        """(n, 3) action probabilities of the module on every decision bar."""
        was_training = module.training
        module.eval()
        out = []
        try:
            with torch.no_grad():
                for lo in range(0, len(self.regimes), self.cfg.batch_size):
                    hi = lo + self.cfg.batch_size
                    obs = {
                        "window": torch.from_numpy(self.windows[self.window_index[lo:hi]]),
                        "regime": torch.from_numpy(self.regimes[lo:hi]),
                    }
                    logits = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
                    out.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())
        finally:
            module.train(was_training)
        return np.concatenate(out)

    def actions(self, module: RLModule) -> np.ndarray:
        return self.probabilities(module).argmax(axis=-1)

    def __call__(self, module: RLModule) -> dict[str, float]:
        """Flat metrics: `<action>_pct_<regime>` (greedy), `hold_prob_<regime>`, `decisiveness_<regime>`,
        `band_distance` (greedy), `band_distance_prob`, `val_<trading metric>`, the leak alarm and its
        statistics, `profit_ok` and the scalar `objective`."""
        probs = self.probabilities(module)
        actions = probs.argmax(axis=-1)
        shares = action_shares(actions, self.regimes)
        metrics: dict[str, float] = {}
        for regime, row in shares.items():
            for action in ("HOLD", "LONG", "SHORT"):
                metrics[f"{action.lower()}_pct_{regime}"] = row[action]
            mask = np.ones(len(actions), bool) if regime == "ALL" else self.regimes == Regime[regime]
            empty = not mask.any()
            metrics[HOLD_PROB.format(regime=regime)] = float("nan") if empty else 100.0 * float(probs[mask, 0].mean())
            metrics[DECISIVENESS.format(regime=regime)] = float("nan") if empty else float(probs[mask].max(-1).mean())
        metrics[BAND_DISTANCE] = band_distance({r: shares[r]["HOLD"] for r in REGIME_NAMES}, self.cfg.bands)
        metrics[BAND_DISTANCE_PROB] = band_distance(
            {r: metrics[HOLD_PROB.format(regime=r)] for r in REGIME_NAMES}, self.cfg.bands
        )
        trading = trading_metrics(actions, self.next_returns, self.cfg.fee)
        for key, value in trading.items():
            metrics[f"{self.split}_{key}"] = value
        leak = leak_verdict(actions, self.next_returns, self.features_t, self.baseline, self.cfg.leak_alarm)
        metrics[LEAK_ALARM] = leak.alarm
        metrics[LEAK_BASELINE_HIT_RATE] = leak.baseline_hit_rate
        metrics[LEAK_P_VS_BASELINE] = leak.p_vs_baseline
        metrics[LEAK_P_VS_CEILING] = leak.p_vs_ceiling
        profit_ok = self.cfg.min_net_return is None or trading["net_return"] > self.cfg.min_net_return
        metrics["profit_ok"] = bool(profit_ok)
        metrics["objective"] = objective(metrics[BAND_DISTANCE], trading["sharpe"], profit_ok)
        return metrics


#: The validation Sharpe a preflight-skipped configuration counts as for a multi-objective search: worse than
#: the +-5 the single objective clips Sharpe to, so TPE learns the way back to the trainable region from both
#: objectives instead of being told FAIL.
SKIPPED_SHARPE = -10.0


def skipped_report(results: list[RegimePreflight], verdicts: str, penalty: float) -> dict[str, float | str | bool]:
    """The one report of a configuration the preflight rules out: the HOLD% its verdicts force (NaN where
    contested), the penalty as its band distance, and the verdicts."""
    report: dict[str, float | str | bool] = {"preflight": verdicts, "preflight_skipped": True}
    for r in results:
        forced = r.forced_hold_pct
        report[f"hold_pct_{r.regime}"] = float("nan") if forced is None else forced
        report[HOLD_PROB.format(regime=r.regime)] = report[f"hold_pct_{r.regime}"]
        report[DECISIVENESS.format(regime=r.regime)] = float("nan")
    report["hold_pct_ALL"] = report[HOLD_PROB.format(regime="ALL")] = float("nan")
    report[DECISIVENESS.format(regime="ALL")] = float("nan")
    report[BAND_DISTANCE] = report[BAND_DISTANCE_PROB] = penalty
    report["objective"] = penalty + CONSTRAINT_PENALTY  # below every trained trial, constraint or not
    report[LEAK_ALARM] = False
    report[LEAK_BASELINE_HIT_RATE] = float("nan")
    report[LEAK_P_VS_BASELINE] = report[LEAK_P_VS_CEILING] = 1.0
    report["profit_ok"] = False
    # Untrained: no Sharpe to show. The search tells Optuna SKIPPED_SHARPE instead (himari_ray.search.study).
    report["val_sharpe"] = float("nan")
    report["val_net_return"] = float("nan")
    report["val_max_drawdown"] = float("nan")
    report["val_turnover"] = float("nan")
    report["iteration"] = 0
    track_best(report, None)
    return report


def aggregate(members: list[dict[str, Any]], how: str) -> dict[str, Any]:
    """One report from several members' (seeds x folds) metrics: means, `<metric>_worst` for band distance
    and Sharpe, and the objective over the chosen aggregate. A single member passes through unchanged."""
    if len(members) == 1:
        return members[0]
    out: dict[str, Any] = {}
    for key, value in members[0].items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            column = np.array([m[key] for m in members], dtype=np.float64)
            out[key] = float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
    bands = np.array([m["band_distance"] for m in members])
    sharpes = np.nan_to_num(np.array([m["val_sharpe"] for m in members]), nan=-np.inf)
    out["band_distance_mean"], out["band_distance_worst"] = float(bands.mean()), float(bands.max())
    out["val_sharpe_mean"], out["val_sharpe_worst"] = out["val_sharpe"], float(sharpes.min())
    if how == "worst":
        out["band_distance"], out["val_sharpe"] = out["band_distance_worst"], out["val_sharpe_worst"]
    for key in (LEAK_P_VS_BASELINE, LEAK_P_VS_CEILING):  # the most suspicious member speaks for the trial
        if key in members[0]:
            out[key] = min(m[key] for m in members)
    out["leak_alarm"] = any(m["leak_alarm"] for m in members)  # one leaking member is enough to distrust all
    out["profit_ok"] = all(m["profit_ok"] for m in members)
    out["objective"] = objective(out["band_distance"], out["val_sharpe"], out["profit_ok"])
    out["members"] = len(members)
    return out
