"""Scoring a policy as it is deployed, straight through the RLModule: HOLD shares, probabilities, trading
quality beside a skill-free null, per-regime hit rates, the leak alarm and the objective (rl/scoring.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule

from himari_ray.data.dataset import load_dataset
from himari_ray.env.deploy import deployed_actions, softmax
from himari_ray.env.leak import LogisticBaseline, leak_verdict
from himari_ray.env.metrics import action_shares, band_distance, trading_metrics
from himari_ray.env.null import direction_null, regime_skill
from himari_ray.env.preflight import PreflightConfig, preflight
from himari_ray.env.selective import SelectivePolicy
from himari_ray.env.trading import EnvConfig, decision_windows
from himari_ray.rl.config import EvalConfig, ObjectiveConfig
from himari_ray.rl.scoring import score
from himari_ray.schema import (
    BAND_DISTANCE,
    BAND_DISTANCE_PROB,
    DEPLOY,
    DEPLOYED_HOLD_PCT,
    LEAK_ALARM,
    LEAK_BASELINE_HIT_RATE,
    LEAK_P_VS_BASELINE,
    LEAK_P_VS_CEILING,
    PROFIT_OK,
    VAL_EDGE,
    VAL_EDGE_P,
    VAL_EDGE_SHARPE,
    VAL_EDGE_SHARPE_P,
    VAL_NULL_RETURN,
    action_pct,
    breakeven_p,
    decisiveness,
    fee_breakeven_p,
    for_split,
    hit_interval,
    hit_rate,
    hold_prob,
    split_metric,
    threshold,
    traded,
)
from himari_ray.types import POSITION_OF_ACTION, REGIME_NAMES, Dataset, Regime


class PolicyEvaluator:
    """The policy over every decision bar of a split (validation unless `confirm` asks for test), straight
    through the module, scored as it is deployed (`eval.deploy`).

    Decision bars are t in C-1 .. n-2 of the split; the action at t earns `returns[t+1]`. Bars around exchange
    outages are not scored. Windows are views; each batch is gathered once into a tensor.

    - greedy: the argmax (RLlib's `forward_inference` and `act`), scored by its HOLD shares.
    - sample: draws from the probabilities with the evaluator's fixed uniforms (`act` draws the same way,
      seeded); its expected HOLD share is its mean P(HOLD), which is what it is scored by.
    - selective: trades where the directional margin P(LONG) - P(SHORT) clears a per-regime threshold
      (env/selective.py). The thresholds are fitted on the **calibration slice**, the last
      `eval.calibration_frac` of the train split's decision bars, putting each regime's HOLD share at its
      band's centre there; validation and test bars never reach the fit. Scored by its HOLD shares.
    Greedy (or, selective, deployed) shares, mean probabilities and decisiveness are reported either way, so a
    near-uniform policy whose greedy shares ride on tiny logit differences is visible (docs/SCORING.md). In
    carried mode the policy follows its own path of positions. Beside every score: the nulls of
    env/null.py (edge, p-value) and each regime's hit rate against the preflight's break-even p*.
    """

    def __init__(
        self,
        env: EnvConfig,
        cfg: EvalConfig,
        split: str = "val",
        dataset: Dataset | None = None,
        objective: ObjectiveConfig | None = None,
        preflight_cfg: PreflightConfig | None = None,
    ):
        ds = dataset if dataset is not None else load_dataset(env.data)
        self.cfg, self.objective = cfg, objective or ObjectiveConfig()
        self.split = split  # trading metrics are named after it: val_sharpe, test_sharpe
        self.carried = env.position_mode == "carried"
        self.context_len = env.context_len
        self.scaler = ds.scaler
        self.windows, self.decision_regimes, self.scored, bars = self._decisions(ds.split(split))
        self.window_index = bars - (env.context_len - 1)  # decision i decides at bar window_index[i] + C - 1
        arrays = ds.split(split)
        self.regimes = self.decision_regimes[self.scored]
        self.next_returns = arrays.returns[bars + 1][self.scored].copy()
        # One fixed uniform per decision for a sampling policy: every evaluation draws with the same numbers.
        self.uniforms = np.random.default_rng(cfg.sample_seed).random(len(bars))
        self.features_t = ds.scaler.transform(arrays.features)[bars][self.scored]
        # What honest features at bar t achieve: fitted on the train split only, whatever split is scored.
        train = ds.train
        tb = np.flatnonzero(train.tradable[:-1])
        self.baseline = LogisticBaseline(
            ds.scaler.transform(train.features[tb]), train.returns[tb + 1] > 0, cfg.leak_alarm.ridge
        )
        # The calibration slice: the end of train, before validation begins (a selective deployment's fit).
        self.calibration = self._calibration_slice(ds) if cfg.deploy == "selective" else None
        # The break-even hit rate of each regime under this trial's reward, from the train split.
        self.breakeven = {r.regime: r.breakeven_skill for r in preflight(ds, env, preflight_cfg or PreflightConfig())}

    def _decisions(self, arrays: Any, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(windows, regimes, scored mask, bars) of the decision bars of `arrays` from decision `start` on.
        In carried mode the policy decides at every bar (its position carries into the next scored one);
        per_bar decides at tradable bars only."""
        c, n = self.context_len, len(arrays)
        tradable = arrays.tradable[c - 1 : n - 1]
        bars = np.arange(c - 1, n - 1) if self.carried else np.flatnonzero(tradable) + (c - 1)
        bars = bars[bars >= c - 1 + start]
        scored = tradable[bars - (c - 1)] if self.carried else np.ones(len(bars), dtype=bool)
        windows = decision_windows(self.scaler.transform(arrays.features), c)[bars - (c - 1)]
        return windows, arrays.regime_ids[bars].copy(), scored, bars

    def _calibration_slice(self, ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_decisions = len(ds.train) - self.context_len
        start = n_decisions - max(1, math.ceil(self.cfg.calibration_frac * n_decisions))
        windows, regimes, scored, _ = self._decisions(ds.train, start)
        return windows, regimes, scored

    def _logits(self, module: RLModule, windows: np.ndarray, regimes: np.ndarray) -> np.ndarray:
        """Action logits at every given decision: (n, 3) per_bar, (n, 3, 3) by position carried."""
        positions = range(3) if self.carried else [0]
        # The fast runner keeps its module on the trial's GPU share; a parameterless stand-in stays on CPU.
        device = next(module.parameters(), torch.zeros(0)).device
        by_position = []
        for position in positions:
            out = []
            for lo in range(0, len(regimes), self.cfg.batch_size):
                hi = lo + self.cfg.batch_size
                r = torch.from_numpy(regimes[lo:hi]).to(device)
                obs = {
                    "window": torch.from_numpy(np.ascontiguousarray(windows[lo:hi])).to(device),
                    "regime": r,
                    "position": torch.full_like(r, position),
                }
                out.append(module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS].double().cpu())
            by_position.append(torch.cat(out).numpy() if out else np.zeros((0, 3)))
        return np.stack(by_position, axis=1) if self.carried else by_position[0]

    def fit_selective(self, module: RLModule) -> SelectivePolicy:
        """The selective rule fitted on the calibration slice (the end of train) for this module (in eval mode,
        without gradients: the caller's)."""
        assert self.calibration is not None, "eval.deploy is not selective"
        windows, regimes, scored = self.calibration
        probs = softmax(self._logits(module, windows, regimes))
        mode = "carried" if self.carried else "per_bar"
        return SelectivePolicy.fit(
            mode, probs, regimes, self.cfg.bands, self.cfg.exit_ratio, scored=scored, hold_control=self.cfg.hold_control
        )

    def policy(self, module: RLModule) -> tuple[np.ndarray, np.ndarray, SelectivePolicy | None]:
        """(n, 3) action probabilities and the deployed policy's actions at the scored bars (carried: along
        the path its actions make), and the fitted selective rule of a selective deployment."""
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                logits = self._logits(module, self.windows, self.decision_regimes)
                selective = self.fit_selective(module) if self.cfg.deploy == "selective" else None
        finally:
            module.train(was_training)
        actions, probs = deployed_actions(
            self.cfg.deploy, logits, self.decision_regimes, self.uniforms, selective, counted=self.scored
        )
        return probs[self.scored], actions[self.scored], selective

    def actions(self, module: RLModule) -> np.ndarray:
        """The deployed policy's actions at the scored bars."""
        return self.policy(module)[1]

    def __call__(self, module: RLModule) -> dict[str, Any]:
        """Flat metrics: `<action>_pct_<regime>` (greedy shares; a selective deployment's own), `hold_prob_` and
        `decisiveness_<regime>`, `band_distance` (of the deployed policy), `band_distance_prob`, the
        `<split>_` trading metrics, edge and p-values of the deployed actions, per-regime hit rates, the leak
        alarm, `profit_ok`, `feasible` and the scalar `objective`."""
        probs, deployed, selective = self.policy(module)
        shown = deployed if self.cfg.deploy == "selective" else probs.argmax(axis=-1)
        shares = action_shares(shown, self.regimes)
        metrics: dict[str, Any] = {DEPLOY: self.cfg.deploy}
        for regime, row in shares.items():
            for action in ("HOLD", "LONG", "SHORT"):
                metrics[action_pct(action, regime)] = row[action]
            mask = np.ones(len(shown), bool) if regime == "ALL" else self.regimes == Regime[regime]
            empty = not mask.any()
            metrics[hold_prob(regime)] = float("nan") if empty else 100.0 * float(probs[mask, 0].mean())
            metrics[decisiveness(regime)] = float("nan") if empty else float(probs[mask].max(-1).mean())
        metrics[BAND_DISTANCE_PROB] = band_distance({r: metrics[hold_prob(r)] for r in REGIME_NAMES}, self.cfg.bands)
        if self.cfg.deploy == "sample":  # a sampler's expected HOLD share is its mean P(HOLD): no draws' noise
            metrics[BAND_DISTANCE] = metrics[BAND_DISTANCE_PROB]
            metrics[DEPLOYED_HOLD_PCT] = metrics[hold_prob("ALL")]
        else:
            metrics[BAND_DISTANCE] = band_distance({r: shares[r]["HOLD"] for r in REGIME_NAMES}, self.cfg.bands)
            metrics[DEPLOYED_HOLD_PCT] = shares["ALL"]["HOLD"]
        trading = trading_metrics(deployed, self.next_returns, self.cfg.fee)
        for key, value in trading.items():
            metrics[split_metric(self.split, key)] = value
        self._skill(metrics, deployed, selective)
        leak = leak_verdict(deployed, self.next_returns, self.features_t, self.baseline, self.cfg.leak_alarm)
        metrics[LEAK_ALARM] = leak.alarm
        metrics[LEAK_BASELINE_HIT_RATE] = leak.baseline_hit_rate
        metrics[LEAK_P_VS_BASELINE] = leak.p_vs_baseline
        metrics[LEAK_P_VS_CEILING] = leak.p_vs_ceiling
        metrics[PROFIT_OK] = bool(self.cfg.min_net_return is None or trading["net_return"] > self.cfg.min_net_return)
        score(metrics, self.objective, self.split)
        return metrics

    def _skill(self, metrics: dict[str, Any], deployed: np.ndarray, selective: SelectivePolicy | None) -> None:
        """The null beside the score, per-regime hit rates beside p*, and a selective rule's thresholds."""
        null = direction_null(deployed, self.next_returns, self.cfg.fee, self.cfg.null_draws, self.cfg.null_seed)
        for key, value in (
            (VAL_NULL_RETURN, null.null_net_return),
            (VAL_EDGE, null.edge_return),
            (VAL_EDGE_P, null.p_return),
            (VAL_EDGE_SHARPE, null.edge_sharpe),
            (VAL_EDGE_SHARPE_P, null.p_sharpe),
        ):
            metrics[for_split(key, self.split)] = value
        pos = POSITION_OF_ACTION[deployed].astype(np.float64)
        changes, moves = np.abs(np.diff(np.r_[0.0, pos])), np.abs(self.next_returns) * (pos != 0)
        for name, skill in regime_skill(deployed, self.next_returns, self.regimes).items():
            mask = self.regimes == Regime[name]
            gross = float(moves[mask].sum())
            # Break-even of the hit rate: n m (2p - 1) = fee x changes, with m the mean |r| of traded bars.
            metrics[fee_breakeven_p(name)] = (
                0.5 + self.cfg.fee * float(changes[mask].sum()) / (2 * gross) if gross > 0 else float("nan")
            )
            metrics[hit_rate(name)] = skill.hit_rate
            metrics[hit_interval(name)[0]], metrics[hit_interval(name)[1]] = skill.low, skill.high
            metrics[traded(name)] = skill.traded
            metrics[breakeven_p(name)] = float(self.breakeven.get(name, float("nan")))
            metrics[threshold(name)] = float("nan") if selective is None else selective.thresholds[name]
