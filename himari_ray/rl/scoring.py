"""What a report scores: the objective of each objective mode, the trial's best report, robust aggregation and
the report of a preflight-skipped configuration.

Objective modes (`objective.mode`, the space's `objective:` section):
- `single` (and `multi`, whose scalar ASHA and the best-report choice use): band distance, validation Sharpe
  as a tie-break, the profit constraint as a penalty that ranks a violator after every satisfying report. A
  frequency target: a skill-free sampler can meet it (docs/DEPLOYMENT.md).
- `constrained`: maximise `objective.metric` (validation Sharpe, or edge over the direction-randomised null)
  subject to band distance <= `objective.band_tolerance` (and the profit constraint). Optuna sees the
  constraint itself (`search/study.py`: its constraints, not a penalty); the scalar here only orders
  reports for ASHA and for the trial's best report: a feasible report scores -metric (clipped to +-5), an
  infeasible one 5 plus how far it misses, so every feasible report ranks before every infeasible one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from himari_ray.env.preflight import RegimePreflight
from himari_ray.rl.config import ObjectiveConfig
from himari_ray.schema import (
    BAND_DISTANCE,
    BAND_DISTANCE_MEAN,
    BAND_DISTANCE_PROB,
    BAND_DISTANCE_WORST,
    BEST_BAND_DISTANCE,
    BEST_ITERATION,
    BEST_OBJECTIVE,
    BEST_VAL_SHARPE,
    DEPLOYED_HOLD_PCT,
    FEASIBLE,
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
    VAL_EDGE,
    VAL_EDGE_P,
    VAL_MAX_DRAWDOWN,
    VAL_NET_RETURN,
    VAL_SHARPE,
    VAL_SHARPE_MEAN,
    VAL_SHARPE_WORST,
    VAL_TURNOVER,
    decisiveness,
    for_split,
    hold_pct,
    hold_prob,
)

#: Weight of validation Sharpe (clipped to +-5) in `objective`: a swing of at most 0.04 percentage points, below one bar's
#: share of any regime's HOLD% on a realistic validation split, so Sharpe only breaks band-distance ties.
SHARPE_TIE_BREAK = 0.004

#: Added to `objective` when the profit constraint fails: a violating trial ranks after every satisfying one.
CONSTRAINT_PENALTY = 1000.0

#: |metric| beyond this is clipped in the constrained scalar; feasible reports score in [-METRIC_CLIP, METRIC_CLIP].
METRIC_CLIP = 5.0

#: The report key each `objective.metric` reads.
METRIC_KEYS = {"sharpe": VAL_SHARPE, "edge": VAL_EDGE}


def objective(band: float, sharpe: float, profit_ok: bool) -> float:
    """What the single-objective search minimises: band distance, Sharpe as tie-break, profit constraint."""
    tie = SHARPE_TIE_BREAK * float(np.clip(np.nan_to_num(sharpe), -METRIC_CLIP, METRIC_CLIP))
    return band - tie + (0.0 if profit_ok else CONSTRAINT_PENALTY)


def score(metrics: dict[str, Any], cfg: ObjectiveConfig, split: str = "val") -> None:
    """Set `feasible` and `objective` of a report from its band distance, Sharpe or edge (as `split` names
    them: confirm scores the test split too) and profit flag."""
    band, profit_ok = float(metrics[BAND_DISTANCE]), bool(metrics[PROFIT_OK])
    if cfg.mode != "constrained":
        metrics[FEASIBLE] = profit_ok
        metrics[OBJECTIVE] = objective(band, metrics[for_split(VAL_SHARPE, split)], profit_ok)
        return
    excess = max(band - cfg.band_tolerance, 0.0)
    metrics[FEASIBLE] = bool(excess == 0.0 and profit_ok)
    if metrics[FEASIBLE]:
        raw = np.nan_to_num(metrics[for_split(METRIC_KEYS[cfg.metric], split)], nan=-METRIC_CLIP)
        value = float(np.clip(raw, -METRIC_CLIP, METRIC_CLIP))
        metrics[OBJECTIVE] = -value
    else:  # ordered by how far it misses: the bands first, then the profit constraint
        metrics[OBJECTIVE] = METRIC_CLIP + excess + (0.0 if profit_ok else 1.0)


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
    # Below every trained trial, whatever the mode: constrained scalars stay under METRIC_CLIP + 401.
    report[OBJECTIVE] = penalty + CONSTRAINT_PENALTY
    report[LEAK_ALARM] = False
    report[LEAK_BASELINE_HIT_RATE] = float("nan")
    report[LEAK_P_VS_BASELINE] = report[LEAK_P_VS_CEILING] = 1.0
    report[PROFIT_OK] = report[FEASIBLE] = False
    # Untrained: no Sharpe to show. The search tells Optuna SKIPPED_SHARPE instead (himari_ray.search.study).
    for key in (VAL_SHARPE, VAL_NET_RETURN, VAL_MAX_DRAWDOWN, VAL_TURNOVER, VAL_EDGE):
        report[key] = float("nan")
    report[VAL_EDGE_P] = 1.0
    report[ITERATION] = 0
    track_best(report, None)
    return report


def aggregate(members: list[dict[str, Any]], how: str, cfg: ObjectiveConfig | None = None) -> dict[str, Any]:
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
        elif isinstance(value, str) and all(m.get(key) == value for m in members):
            out[key] = value  # the deployment, the same for every member
    bands = np.array([m[BAND_DISTANCE] for m in members])
    sharpes = np.nan_to_num(np.array([m[VAL_SHARPE] for m in members]), nan=-np.inf)
    out[BAND_DISTANCE_MEAN], out[BAND_DISTANCE_WORST] = float(bands.mean()), float(bands.max())
    out[VAL_SHARPE_MEAN], out[VAL_SHARPE_WORST] = out[VAL_SHARPE], float(sharpes.min())
    if how == "worst":
        out[BAND_DISTANCE], out[VAL_SHARPE] = out[BAND_DISTANCE_WORST], out[VAL_SHARPE_WORST]
    for key in (LEAK_P_VS_BASELINE, LEAK_P_VS_CEILING, VAL_EDGE_P):  # the most suspicious member speaks for all
        if key in members[0]:
            out[key] = max(m[key] for m in members) if key == VAL_EDGE_P else min(m[key] for m in members)
    out[LEAK_ALARM] = any(m[LEAK_ALARM] for m in members)  # one leaking member is enough to distrust all
    out[PROFIT_OK] = all(m[PROFIT_OK] for m in members)
    score(out, cfg or ObjectiveConfig())
    out[MEMBERS] = len(members)
    return out
