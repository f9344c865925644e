"""**The one ranking**: `analyze`, `report`, `confirm`, `export`, the hints a search prints at its end and
the Optuna study all name the same best trial. A trial is judged by its best report (lowest objective, ties
to the later report: more training, same score). Trials that trained every iteration come first, before
trials cut short (ASHA's laggards, the collapse stopper's): the study records those PRUNED, and Optuna's
`best_trial` considers only COMPLETE trials, so the two agree. Among them, trials that meet the constraints
(the profit constraint, and a constrained objective's band tolerance: Optuna's `best_trial` reads feasible
trials only) come first; then the objective, then the validation Sharpe (higher first), then the number.
"""

from __future__ import annotations

import math
from typing import Any

from himari_ray.schema import (
    BAND_DISTANCE,
    OBJECTIVE,
    PREFLIGHT_SKIPPED,
    PROFIT_OK,
    TRAINING_ITERATION,
    VAL_SHARPE,
    number,
    value,
)
from himari_ray.searchdir.manifest import SearchManifest
from himari_ray.searchdir.trials import CRASHED, SearchRun, TrialRun


def trained(run: TrialRun) -> bool:
    """Whether the trial trained and was scored: a best report with an objective, not a preflight skip, and
    not crashed (a trial that crashed and was retried to the end is finished, as its status says)."""
    best = run.best
    if run.status == CRASHED or best is None or value(best, PREFLIGHT_SKIPPED):
        return False
    return math.isfinite(number(best, OBJECTIVE))


def feasible(report: dict[str, Any], manifest: SearchManifest) -> bool:
    """The report meets the search's constraints: the profit constraint and, under a constrained objective,
    band distance within its tolerance."""
    if not value(report, PROFIT_OK) and manifest.min_net_return is not None:
        return False
    tolerance = manifest.objective.get("band_tolerance") if manifest.objective.get("mode") == "constrained" else None
    return tolerance is None or number(report, BAND_DISTANCE) <= float(tolerance)


def rank_key(run: TrialRun, manifest: SearchManifest) -> tuple[float, ...]:
    """Sort key of one trial (lower ranks first); see the module docstring. After the trained trials come
    the preflight's skips (by their penalty), then trials without a usable report (crashed, or running)."""
    best = run.best
    if not trained(run):
        if best is not None and value(best, PREFLIGHT_SKIPPED):
            return (1.0, 0.0, 0.0, number(best, OBJECTIVE), math.inf, float(run.number))
        return (2.0, 0.0, 0.0, math.inf, math.inf, float(run.number))
    assert best is not None
    full = number(run.last or best, TRAINING_ITERATION) >= manifest.iterations
    sharpe = number(best, VAL_SHARPE)
    return (
        0.0,
        0.0 if full else 1.0,
        0.0 if feasible(best, manifest) else 1.0,
        number(best, OBJECTIVE),
        -sharpe if math.isfinite(sharpe) else math.inf,
        float(run.number),
    )


def ranked(search: SearchRun) -> list[TrialRun]:
    """Every trial, best first, by the one ranking."""
    return sorted(search.trials, key=lambda run: rank_key(run, search.manifest))


def best_trial(search: SearchRun) -> TrialRun | None:
    """The search's best trained trial by the one ranking, or None when no trial trained."""
    top = ranked(search)
    return top[0] if top and trained(top[0]) else None


def untrained_reason(run: TrialRun) -> str | None:
    """Why a trial has no policy to confirm or export (None: it trained)."""
    if run.status == CRASHED:
        return "crashed (see error.txt)"
    if not run.reports:
        return "never reported"
    if not trained(run):
        return "was skipped by the preflight, never trained"
    return None
