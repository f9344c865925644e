"""Evaluation metrics (ARCHITECTURE §5): per-regime action shares, band distance, trading quality net of fees.

Pure numpy over aligned arrays; analytic oracles in tests/test_metrics.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from himari_ray.types import BARS_PER_YEAR, N_ACTIONS, POSITION_OF_ACTION, REGIME_NAMES, Action, Regime

#: The seed's target HOLD bands, in percent.
DEFAULT_HOLD_BANDS: dict[str, tuple[float, float]] = {
    "LOW_VOL": (40.0, 60.0),
    "TRENDING": (20.0, 40.0),
    "HIGH_VOL": (60.0, 70.0),
    "CRISIS": (70.0, 80.0),
}


def action_shares(actions: np.ndarray, regimes: np.ndarray) -> dict[str, dict[str, float]]:
    """Per regime (and `ALL`), the share in percent of each action; NaN for a regime with no bars."""
    actions = np.asarray(actions)
    regimes = np.asarray(regimes)
    out: dict[str, dict[str, float]] = {}
    for name, mask in [("ALL", np.ones(len(actions), bool))] + [(r.name, regimes == r) for r in Regime]:
        n = int(mask.sum())
        counts = np.bincount(actions[mask], minlength=N_ACTIONS) if n else np.zeros(N_ACTIONS)
        out[name] = {a.name: (100.0 * counts[a] / n if n else float("nan")) for a in Action}
        out[name]["n"] = float(n)
    return out


def band_distance(
    hold_pct: Mapping[str, float],
    bands: Mapping[str, tuple[float, float]] = DEFAULT_HOLD_BANDS,
    weights: Mapping[str, float] | None = None,
) -> float:
    """Sum over regimes of the percentage points by which HOLD% lies outside its band (0 inside).

    A regime absent from the data (NaN share) contributes nothing: there is nothing to miss.
    """
    total = 0.0
    for regime, (lo, hi) in bands.items():
        h = hold_pct[regime]
        if np.isnan(h):
            continue
        w = 1.0 if weights is None else weights[regime]
        total += w * (max(lo - h, 0.0) + max(h - hi, 0.0))
    return float(total)


def trading_metrics(actions: np.ndarray, next_returns: np.ndarray, fee: float = 0.0) -> dict[str, float]:
    """Trading quality of positions held over the next bar, net of `fee` per unit of position change.

    positions p[t] = POSITION_OF_ACTION[actions[t]] earn next_returns[t] (the return of bar t+1);
    net[t] = p[t] * next_returns[t] - fee * |p[t] - p[t-1]| with p[-1] = 0.
    """
    pos = POSITION_OF_ACTION[np.asarray(actions)].astype(np.float64)
    r = np.asarray(next_returns, dtype=np.float64)
    turnover = np.abs(np.diff(np.r_[0.0, pos]))
    net = pos * r - fee * turnover
    equity = np.cumprod(1.0 + net)
    peak = np.maximum.accumulate(np.r_[1.0, equity])[1:]
    sd = net.std()
    downside = np.sqrt(np.mean(np.minimum(net, 0.0) ** 2))
    traded = pos != 0
    n_traded = int(traded.sum())
    hits = (pos * r > 0)[traded]
    ann = np.sqrt(BARS_PER_YEAR)
    return {
        "net_return": float(equity[-1] - 1.0) if len(net) else 0.0,
        "sharpe": float(net.mean() / sd * ann) if sd > 0 else 0.0,
        "sortino": float(net.mean() / downside * ann) if downside > 0 else 0.0,
        "max_drawdown": float(np.max(1.0 - equity / peak)) if len(net) else 0.0,
        "turnover": float(turnover.mean()) if len(net) else 0.0,
        "win_rate": float(hits.mean()) if n_traded else float("nan"),
        "traded_share": float(n_traded / len(net)) if len(net) else 0.0,
        "buy_and_hold": float(np.prod(1.0 + r) - 1.0),
    }


__all__ = ["DEFAULT_HOLD_BANDS", "REGIME_NAMES", "action_shares", "band_distance", "trading_metrics"]
