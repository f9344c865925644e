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
from himari_ray.env.trading import EnvConfig, carried_actions, decision_windows, sample_actions
from himari_ray.rl.config import EvalConfig
from himari_ray.schema import (
    BAND_DISTANCE,
    BAND_DISTANCE_MEAN,
    BAND_DISTANCE_PROB,
    BAND_DISTANCE_WORST,
    BEST_BAND_DISTANCE,
    BEST_ITERATION,
    BEST_OBJECTIVE,
    BEST_VAL_SHARPE,
    DEPLOY,
    DEPLOYED_HOLD_PCT,
    HOLD_PCT_ALL,
    ITERATION,
    LEAK_ALARM,
    LEAK_BASELINE_HIT_RATE,
    LEAK_P_VS_BASELINE,
    LEAK_P_VS_CEILING,
    MEMBERS,
    OBJECTIVE,
    PREFLIGHT,
    PREFLIGHT_SKIPPED,
    PROFIT_OK,
    VAL_MAX_DRAWDOWN,
    VAL_NET_RETURN,
    VAL_SHARPE,
    VAL_SHARPE_MEAN,
    VAL_SHARPE_WORST,
    VAL_TURNOVER,
    action_pct,
    decisiveness,
    hold_pct,
    hold_prob,
    split_metric,
)
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


def track_best(metrics: dict[str, Any], best: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """Add the trial's best report so far (lowest objective, this one included) to `metrics` as `best_*`
    keys, so trials are compared by their best report and its iteration, not by where they stopped.
    Returns the best (to carry to the next report) and whether this report is it."""
    # A tie goes to the later report (more training, same score), as Tune keeps the later checkpoint of a tie.
    improved = best is None or metrics[OBJECTIVE] <= best[BEST_OBJECTIVE]
    if improved:
        best = {
            BEST_OBJECTIVE: metrics[OBJECTIVE],
            BEST_ITERATION: metrics[ITERATION],
            BEST_BAND_DISTANCE: metrics[BAND_DISTANCE],
            BEST_VAL_SHARPE: metrics[VAL_SHARPE],
        }
    metrics.update(best)
    return best, improved


class GreedyEvaluator:
    """The policy over every decision bar of a split (validation unless `confirm` asks for test), straight
    through the module: greedy actions and the action probabilities behind them.

    Decision bars are t in C-1 .. n-2 of the split; the action at t earns `returns[t+1]`. Bars around exchange
    outages are not scored. Windows are views; each batch is gathered once into a tensor.

    The objective scores the policy as it is deployed (`eval.deploy`). A greedy policy (the default: RLlib's
    `forward_inference` and `act` take the argmax) is scored by its HOLD shares. A sampling policy draws each
    action from its probabilities (`act` does, seeded): its expected HOLD share is its mean P(HOLD), which is
    what it is scored by, and its trading metrics and leak alarm come from one seeded draw per bar (the same
    uniforms at every evaluation). Greedy shares, mean probabilities and decisiveness are reported either
    way, so a near-uniform policy whose greedy shares ride on tiny logit differences is visible as such
    (docs/SCORING.md). In carried mode the policy follows its own path of positions.
    """

    def __init__(self, env: EnvConfig, cfg: EvalConfig, split: str = "val", dataset: Dataset | None = None):
        ds = dataset if dataset is not None else load_dataset(env.data)
        arrays = ds.split(split)
        c, n = env.context_len, len(arrays)
        self.cfg = cfg
        self.split = split  # trading metrics are named after it: val_sharpe, test_sharpe
        self.carried = env.position_mode == "carried"
        # Bars around exchange outages are not scored: no position is held across a gap. In carried mode the
        # policy still decides there (as in the env), since its position carries into the next scored bar.
        tradable = arrays.tradable[c - 1 : n - 1]
        bars = np.arange(c - 1, n - 1) if self.carried else np.flatnonzero(tradable) + (c - 1)
        self.scored = tradable if self.carried else np.ones(len(bars), dtype=bool)
        scaled = ds.scaler.transform(arrays.features)
        self.windows = decision_windows(scaled, c)
        self.window_index = bars - (c - 1)
        # Copies: small, and torch wants writable arrays.
        self.decision_regimes = arrays.regime_ids[bars].copy()
        self.regimes = self.decision_regimes[self.scored]
        self.next_returns = arrays.returns[bars + 1][self.scored].copy()
        # One fixed uniform per decision for a sampling policy: every evaluation draws with the same numbers.
        self.uniforms = np.random.default_rng(cfg.sample_seed).random(len(bars))
        self.features_t = scaled[bars][self.scored]
        # What honest features at bar t achieve: fitted on the train split only, whatever split is scored.
        train = ds.train
        tb = np.flatnonzero(train.tradable[:-1])
        self.baseline = LogisticBaseline(
            ds.scaler.transform(train.features[tb]), train.returns[tb + 1] > 0, cfg.leak_alarm.ridge
        )

    def _logits(self, module: RLModule, position: int) -> np.ndarray:
        """(n, 3) action logits at every decision bar with the policy's position set to `position`."""
        out = []
        # The fast runner keeps its module on the trial's GPU share; a parameterless stand-in stays on CPU.
        device = next(module.parameters(), torch.zeros(0)).device
        for lo in range(0, len(self.decision_regimes), self.cfg.batch_size):
            hi = lo + self.cfg.batch_size
            regimes = torch.from_numpy(self.decision_regimes[lo:hi]).to(device)
            obs = {
                "window": torch.from_numpy(self.windows[self.window_index[lo:hi]]).to(device),
                "regime": regimes,
                "position": torch.full_like(regimes, position),
            }
            logits = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
            out.append(logits.double().cpu().numpy())
        return np.concatenate(out)

    def policy(self, module: RLModule) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3) action probabilities and the deployed policy's actions at the scored bars: argmax, or draws
        with the evaluator's fixed uniforms (`eval.deploy`). In carried mode both follow the policy's own path
        of positions, which its actions make."""
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                if not self.carried:
                    logits = self._logits(module, 0)
                else:
                    by_position = np.stack([self._logits(module, p) for p in range(3)], axis=1)
                    path = carried_actions(by_position, None if self.cfg.deploy == "greedy" else self.uniforms)
                    positions = np.r_[0, path[:-1]]  # the path starts flat; each action is the next position
                    logits = by_position[np.arange(len(path)), positions]
        finally:
            module.train(was_training)
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = z / z.sum(axis=-1, keepdims=True)
        if self.carried and self.cfg.deploy == "sample":
            actions = path
        elif self.cfg.deploy == "sample":
            actions = sample_actions(probs, self.uniforms)
        else:
            actions = probs.argmax(axis=-1)
        return probs[self.scored], actions[self.scored]

    def probabilities(self, module: RLModule) -> np.ndarray:
        """(n, 3) action probabilities at the scored bars (in carried mode along the deployed policy's path)."""
        return self.policy(module)[0]

    def actions(self, module: RLModule) -> np.ndarray:
        """The deployed policy's actions at the scored bars (greedy or sampled, see `eval.deploy`)."""
        return self.policy(module)[1]

    def __call__(self, module: RLModule) -> dict[str, float]:
        """Flat metrics: `<action>_pct_<regime>` (greedy), `hold_prob_<regime>`, `decisiveness_<regime>`,
        `band_distance` (of the deployed policy: greedy shares, or mean P(HOLD) for a sampler),
        `band_distance_prob`, `<split>_<trading metric>` and the leak alarm of the deployed policy's actions,
        `profit_ok` and the scalar `objective`."""
        probs, deployed = self.policy(module)
        actions = probs.argmax(axis=-1)
        shares = action_shares(actions, self.regimes)
        metrics: dict[str, float] = {}
        for regime, row in shares.items():
            for action in ("HOLD", "LONG", "SHORT"):
                metrics[action_pct(action, regime)] = row[action]
            mask = np.ones(len(actions), bool) if regime == "ALL" else self.regimes == Regime[regime]
            empty = not mask.any()
            metrics[hold_prob(regime)] = float("nan") if empty else 100.0 * float(probs[mask, 0].mean())
            metrics[decisiveness(regime)] = float("nan") if empty else float(probs[mask].max(-1).mean())
        metrics[DEPLOY] = self.cfg.deploy
        metrics[BAND_DISTANCE_PROB] = band_distance({r: metrics[hold_prob(r)] for r in REGIME_NAMES}, self.cfg.bands)
        if self.cfg.deploy == "greedy":
            metrics[BAND_DISTANCE] = band_distance({r: shares[r]["HOLD"] for r in REGIME_NAMES}, self.cfg.bands)
            metrics[DEPLOYED_HOLD_PCT] = shares["ALL"]["HOLD"]
        else:  # a sampler's expected HOLD share is its mean P(HOLD): scored without the draws' noise
            metrics[BAND_DISTANCE] = metrics[BAND_DISTANCE_PROB]
            metrics[DEPLOYED_HOLD_PCT] = metrics[hold_prob("ALL")]
        trading = trading_metrics(deployed, self.next_returns, self.cfg.fee)
        for key, value in trading.items():
            metrics[split_metric(self.split, key)] = value
        leak = leak_verdict(deployed, self.next_returns, self.features_t, self.baseline, self.cfg.leak_alarm)
        metrics[LEAK_ALARM] = leak.alarm
        metrics[LEAK_BASELINE_HIT_RATE] = leak.baseline_hit_rate
        metrics[LEAK_P_VS_BASELINE] = leak.p_vs_baseline
        metrics[LEAK_P_VS_CEILING] = leak.p_vs_ceiling
        profit_ok = self.cfg.min_net_return is None or trading["net_return"] > self.cfg.min_net_return
        metrics[PROFIT_OK] = bool(profit_ok)
        metrics[OBJECTIVE] = objective(metrics[BAND_DISTANCE], trading["sharpe"], profit_ok)
        return metrics


#: The validation Sharpe a preflight-skipped configuration counts as for a multi-objective search: worse than
#: the +-5 the single objective clips Sharpe to, so TPE learns the way back to the trainable region from both
#: objectives instead of being told FAIL.
SKIPPED_SHARPE = -10.0


def skipped_report(results: list[RegimePreflight], verdicts: str, penalty: float) -> dict[str, float | str | bool]:
    """The one report of a configuration the preflight rules out: the HOLD% its verdicts force (NaN where
    contested), the penalty as its band distance, and the verdicts."""
    report: dict[str, float | str | bool] = {PREFLIGHT: verdicts, PREFLIGHT_SKIPPED: True}
    for r in results:
        forced = r.forced_hold_pct
        report[hold_pct(r.regime)] = float("nan") if forced is None else forced
        report[hold_prob(r.regime)] = report[hold_pct(r.regime)]
        report[decisiveness(r.regime)] = float("nan")
    report[HOLD_PCT_ALL] = report[hold_prob("ALL")] = report[decisiveness("ALL")] = float("nan")
    report[DEPLOYED_HOLD_PCT] = float("nan")
    report[BAND_DISTANCE] = report[BAND_DISTANCE_PROB] = penalty
    report[OBJECTIVE] = penalty + CONSTRAINT_PENALTY  # below every trained trial, constraint or not
    report[LEAK_ALARM] = False
    report[LEAK_BASELINE_HIT_RATE] = float("nan")
    report[LEAK_P_VS_BASELINE] = report[LEAK_P_VS_CEILING] = 1.0
    report[PROFIT_OK] = False
    # Untrained: no Sharpe to show. The search tells Optuna SKIPPED_SHARPE instead (himari_ray.search.study).
    report[VAL_SHARPE] = float("nan")
    report[VAL_NET_RETURN] = float("nan")
    report[VAL_MAX_DRAWDOWN] = float("nan")
    report[VAL_TURNOVER] = float("nan")
    report[ITERATION] = 0
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
    bands = np.array([m[BAND_DISTANCE] for m in members])
    sharpes = np.nan_to_num(np.array([m[VAL_SHARPE] for m in members]), nan=-np.inf)
    out[BAND_DISTANCE_MEAN], out[BAND_DISTANCE_WORST] = float(bands.mean()), float(bands.max())
    out[VAL_SHARPE_MEAN], out[VAL_SHARPE_WORST] = out[VAL_SHARPE], float(sharpes.min())
    if how == "worst":
        out[BAND_DISTANCE], out[VAL_SHARPE] = out[BAND_DISTANCE_WORST], out[VAL_SHARPE_WORST]
    for key in (LEAK_P_VS_BASELINE, LEAK_P_VS_CEILING):  # the most suspicious member speaks for the trial
        if key in members[0]:
            out[key] = min(m[key] for m in members)
    out[LEAK_ALARM] = any(m[LEAK_ALARM] for m in members)  # one leaking member is enough to distrust all
    out[PROFIT_OK] = all(m[PROFIT_OK] for m in members)
    out[OBJECTIVE] = objective(out[BAND_DISTANCE], out[VAL_SHARPE], out[PROFIT_OK])
    out[MEMBERS] = len(members)
    return out
