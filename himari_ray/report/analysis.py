"""Search results as tables (pandas), from a search directory's files alone: no Ray.

One row per trial, from its **best report** (lowest objective: the search's own ranking), with the
iteration it came from; trials are numbered as Tune numbers them (from 1), the number in every trial
directory, report line and figure. Column names are the report schema's keys (`himari_ray.schema`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from himari_ray.env.null import RegimeSkill, cannot_pay
from himari_ray.schema import (
    ANALYZE,
    BAND_DISTANCE,
    BAND_DISTANCE_WORST,
    ITERATION,
    LEAK_ALARM,
    OBJECTIVE,
    PREFLIGHT,
    PREFLIGHT_SKIPPED,
    PROFIT_OK,
    TIME_TOTAL_S,
    TRAINING_ITERATION,
    VAL_NET_RETURN,
    VAL_SHARPE,
    VAL_SHARPE_WORST,
    action_pct,
    breakeven_p,
    fee_breakeven_p,
    hit_interval,
    hit_rate,
    hold_pct,
    hold_prob,
    number,
    shown,
    traded,
    value,
)
from himari_ray.searchdir import SKIPPED, SearchRun, best_trial, ranked, searched_value
from himari_ray.types import ACTION_NAMES, REGIME_NAMES

#: Trading metrics beside the shares, in table order: the schema's ANALYZE keys.
TABLE_METRICS = shown(ANALYZE)
#: Reported numbers a learning curve carries per iteration.
CURVE_METRICS = (OBJECTIVE, BAND_DISTANCE, VAL_SHARPE, VAL_NET_RETURN, *(hold_pct(r) for r in REGIME_NAMES))


def trials_frame(search: SearchRun) -> pd.DataFrame:
    """One row per trial (best report), in the one ranking (`himari_ray.searchdir.rank`): trained trials
    meeting the constraints, full-budget before cut short, by objective; then skipped, then the rest."""
    rows = []
    for run in ranked(search):
        best = run.best
        report = best if best is not None else {}
        row: dict[str, Any] = {
            "trial": run.number,
            "status": run.status,
            ITERATION: number(report, ITERATION),
            "iterations": number(run.last or {}, TRAINING_ITERATION),
        }
        for name in search.manifest.searched:
            row[name] = searched_value(report, name) if report else math.nan
        for regime in REGIME_NAMES:
            for action in ACTION_NAMES:
                row[action_pct(action, regime)] = number(report, action_pct(action, regime))
            row[hold_prob(regime)] = number(report, hold_prob(regime))
        for metric in (*TABLE_METRICS, OBJECTIVE, BAND_DISTANCE_WORST, VAL_SHARPE_WORST):
            row[metric] = number(report, metric)
        row[PROFIT_OK] = bool(value(report, PROFIT_OK)) if report else False
        row[LEAK_ALARM] = bool(value(report, LEAK_ALARM))
        row[PREFLIGHT] = str(value(report, PREFLIGHT))
        row["error"] = run.error
        row["trial_dir"] = str(run.path)
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table[ITERATION] = table[ITERATION].astype("Int64")  # whole numbers; <NA> for a trial without a report
    table["iterations"] = table["iterations"].astype("Int64")
    table["pareto"] = table["trial"].isin(pareto_front(table)["trial"])
    if table[BAND_DISTANCE_WORST].isna().all():  # a robust search's worst member; absent otherwise
        table = table.drop(columns=[BAND_DISTANCE_WORST, VAL_SHARPE_WORST])
    return table.reset_index(drop=True)


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Trained trials (meeting the profit constraint, if any) that no other such trial beats on both band
    distance (lower) and validation Sharpe (higher); sorted by band distance."""
    if table.empty:
        return table
    ok = table[(table["status"] != SKIPPED) & table[BAND_DISTANCE].notna() & table[VAL_SHARPE].notna()]
    if PROFIT_OK in ok.columns:
        ok = ok[ok[PROFIT_OK].astype(bool)]
    band = ok[BAND_DISTANCE].to_numpy(dtype=float)
    sharpe = ok[VAL_SHARPE].to_numpy(dtype=float)
    keep = np.array(
        [
            not np.any((band <= band[i]) & (sharpe >= sharpe[i]) & ((band < band[i]) | (sharpe > sharpe[i])))
            for i in range(len(ok))
        ],
        dtype=bool,
    )  # a boolean mask even when empty: `ok[[]]` would select no columns instead of no rows
    return ok[keep].sort_values([BAND_DISTANCE, "trial"])


def best_trials(table: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The n best trained trials, in the one ranking (the first is the search's best trial)."""
    if table.empty:
        return table
    trained = table[(table["status"] != SKIPPED) & table[OBJECTIVE].notna()]
    return trained.head(n)  # the table is ranked already


def curves(search: SearchRun) -> pd.DataFrame:
    """Learning curves, long format: one row per (trial, iteration) with the curve metrics."""
    rows = []
    for run in search.trials:
        for report in run.reports:
            if value(report, PREFLIGHT_SKIPPED):
                continue
            row = {"trial": run.number, ITERATION: int(number(report, TRAINING_ITERATION))}
            row.update({m: number(report, m) for m in CURVE_METRICS})
            row[TIME_TOTAL_S] = number(report, TIME_TOTAL_S)
            rows.append(row)
    columns = ["trial", ITERATION, *CURVE_METRICS, TIME_TOTAL_S]
    return pd.DataFrame(rows, columns=columns)


def status_counts(table: pd.DataFrame) -> dict[str, int]:
    if table.empty:
        return {}
    return {str(k): int(v) for k, v in table["status"].value_counts().items()}


def skill_lines(search: SearchRun) -> list[str]:
    """The best trial's skill per regime on validation, as deployed: hit rate on traded bars with its 95%
    interval beside the preflight's break-even p*, and one finding per regime whose interval lies wholly
    below p* (trading there cannot pay). A finding, not an error: nothing here stops a search."""
    best = best_trial(search)
    report = best.best if best is not None else None
    if report is None or not math.isfinite(number(report, traded(REGIME_NAMES[0]))):
        return []  # a search written before the per-regime skill was reported
    skill = {}
    for name in REGIME_NAMES:
        low, high = hit_interval(name)
        n = number(report, traded(name))
        rate = number(report, hit_rate(name))
        skill[name] = RegimeSkill(
            name, int(n), round(rate * n) if n else 0, rate, number(report, low), number(report, high)
        )
    cells = [
        f"{s.regime} {s.hit_rate:.2f} [{s.low:.2f}, {s.high:.2f}] on {s.traded} bars, p* "
        f"{number(report, breakeven_p(s.regime)):.2f} (fees alone {number(report, fee_breakeven_p(s.regime)):.3f})"
        if s.traded
        else f"{s.regime} not traded"
        for s in skill.values()
    ]
    lines = [
        f"Skill of trial {best.number} (validation hit rate with its 95% interval; break-even p* of the reward, "
        "and of the fee alone): " + "; ".join(cells)
    ]
    for kind, key in (("the trial's reward", breakeven_p), ("its fees", fee_breakeven_p)):
        below = cannot_pay(skill, {name: number(report, key(name)) for name in REGIME_NAMES})
        lines += [f"Finding ({kind}): {line}" for line in below]
    return lines
