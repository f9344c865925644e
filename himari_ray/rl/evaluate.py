"""Scoring a policy: the greedy validation evaluator straight through the RLModule, the objective, robust aggregation and the report of a preflight-skipped configuration."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule

from himari_ray.data.dataset import load_dataset
from himari_ray.env.metrics import action_shares, band_distance, trading_metrics
from himari_ray.env.preflight import (
    RegimePreflight,
)
from himari_ray.env.trading import EnvConfig, decision_windows, greedy_carried_actions
from himari_ray.rl.config import EvalConfig
from himari_ray.schema import (
    BAND_DISTANCE,
    BAND_DISTANCE_MEAN,
    BAND_DISTANCE_WORST,
    HOLD_PCT_ALL,
    ITERATION,
    LEAK_ALARM,
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
    hold_pct,
    val,
)
from himari_ray.types import REGIME_NAMES, Dataset

#: Weight of validation Sharpe (clipped to +-5) in `objective`: a swing of at most 0.04 percentage points, below one bar's
#: share of any regime's HOLD% on a realistic validation split, so Sharpe only breaks band-distance ties.
SHARPE_TIE_BREAK = 0.004


#: Added to `objective` when the profit constraint fails: a violating trial ranks after every satisfying one.
CONSTRAINT_PENALTY = 1000.0


def objective(band: float, sharpe: float, profit_ok: bool) -> float:
    """What the single-objective search minimises: band distance, Sharpe as tie-break, profit constraint."""
    tie = SHARPE_TIE_BREAK * float(np.clip(np.nan_to_num(sharpe), -5.0, 5.0))
    return band - tie + (0.0 if profit_ok else CONSTRAINT_PENALTY)


class GreedyEvaluator:
    """Argmax policy over every decision bar of the validation split, straight through the module.

    Decision bars are the tradable t in C-1 .. n-2 of the split; the action at t earns `returns[t+1]`.
    Windows are views; each batch is gathered once into a tensor.
    """

    def __init__(self, env: EnvConfig, cfg: EvalConfig, split: str = "val", dataset: Dataset | None = None):
        ds = dataset if dataset is not None else load_dataset(env.data)
        arrays = ds.split(split)
        c, n = env.context_len, len(arrays)
        self.cfg = cfg
        self.carried = env.position_mode == "carried"
        # Bars around exchange outages are not scored: no position is held across a gap. In carried mode the
        # policy still decides there (as in the env), since its position carries into the next scored bar.
        tradable = arrays.tradable[c - 1 : n - 1]
        bars = np.arange(c - 1, n - 1) if self.carried else np.flatnonzero(tradable) + (c - 1)
        self.scored = tradable if self.carried else np.ones(len(bars), dtype=bool)
        self.windows = decision_windows(ds.scaler.transform(arrays.features), c)
        self.window_index = bars - (c - 1)
        # Copies: small, and torch wants writable arrays.
        self.decision_regimes = arrays.regime_ids[bars].copy()
        self.regimes = self.decision_regimes[self.scored]
        self.next_returns = arrays.returns[bars + 1][self.scored].copy()

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
            out.append(module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS].cpu().numpy())
        return np.concatenate(out)

    def actions(self, module: RLModule) -> np.ndarray:
        """Greedy actions at the scored bars; in carried mode along the policy's own path of positions."""
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                if not self.carried:
                    return self._logits(module, 0).argmax(axis=-1)
                logits = np.stack([self._logits(module, p) for p in range(3)], axis=1)
        finally:
            module.train(was_training)
        return greedy_carried_actions(logits)[self.scored]

    def __call__(self, module: RLModule) -> dict[str, float]:
        """Flat metrics: `<action>_pct_<regime>`, `band_distance`, `val_<trading metric>`, `leak_alarm`,
        `profit_ok` and the scalar `objective`."""
        actions = self.actions(module)
        shares = action_shares(actions, self.regimes)
        metrics: dict[str, float] = {}
        for regime, row in shares.items():
            for action in ("HOLD", "LONG", "SHORT"):
                metrics[action_pct(action, regime)] = row[action]
        metrics[BAND_DISTANCE] = band_distance({r: shares[r]["HOLD"] for r in REGIME_NAMES}, self.cfg.bands)
        trading = trading_metrics(actions, self.next_returns, self.cfg.fee)
        for key, value in trading.items():
            metrics[val(key)] = value
        n_traded = trading["traded_share"] * len(actions)
        # Honest features call the next hourly bar ~54% of the time; far more on traded bars means the
        # policy is reading the future somewhere upstream (ARCHITECTURE §2.2).
        metrics[LEAK_ALARM] = bool(
            n_traded >= self.cfg.leak_min_trades and trading["win_rate"] > self.cfg.leak_hit_rate
        )
        profit_ok = self.cfg.min_net_return is None or trading["net_return"] > self.cfg.min_net_return
        metrics[PROFIT_OK] = bool(profit_ok)
        metrics[OBJECTIVE] = objective(metrics[BAND_DISTANCE], trading["sharpe"], profit_ok)
        return metrics


def skipped_report(results: list[RegimePreflight], verdicts: str, penalty: float) -> dict[str, float | str | bool]:
    """The one report of a configuration the preflight rules out: the HOLD% its verdicts force (NaN where
    contested), the penalty as its band distance, and the verdicts."""
    report: dict[str, float | str | bool] = {PREFLIGHT: verdicts, PREFLIGHT_SKIPPED: True}
    for r in results:
        forced = r.forced_hold_pct
        report[hold_pct(r.regime)] = float("nan") if forced is None else forced
    report[HOLD_PCT_ALL] = float("nan")
    report[BAND_DISTANCE] = penalty
    report[OBJECTIVE] = penalty + CONSTRAINT_PENALTY  # below every trained trial, constraint or not
    report[LEAK_ALARM] = False
    report[PROFIT_OK] = False
    report[VAL_SHARPE] = float("nan")
    report[VAL_NET_RETURN] = float("nan")
    report[VAL_MAX_DRAWDOWN] = float("nan")
    report[VAL_TURNOVER] = float("nan")
    report[ITERATION] = 0
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
    out[LEAK_ALARM] = any(m[LEAK_ALARM] for m in members)  # one leaking member is enough to distrust all
    out[PROFIT_OK] = all(m[PROFIT_OK] for m in members)
    out[OBJECTIVE] = objective(out[BAND_DISTANCE], out[VAL_SHARPE], out[PROFIT_OK])
    out[MEMBERS] = len(members)
    return out
