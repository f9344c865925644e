"""`analyze` output: the results of a search as a terminal table, CSV, JSON or Markdown."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from himari_ray.report.analysis import skill_lines
from himari_ray.report.results import SearchResults
from himari_ray.schema import (
    ANALYZE,
    BAND_DISTANCE_WORST,
    ITERATION,
    LEAK_ALARM,
    PREFLIGHT,
    PROFIT_OK,
    VAL_SHARPE_WORST,
    display,
    hold_pct,
    hold_prob,
    label,
    shown,
)
from himari_ray.searchdir import SKIPPED, STATUS_HELP
from himari_ray.types import REGIME_NAMES

FORMATS = ("table", "csv", "json", "markdown")
PARETO_TITLE = "Pareto front (band distance down, validation Sharpe up): trials"


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.1f}"


def _num(v: float, digits: int = 2) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def display_frame(results: SearchResults) -> pd.DataFrame:
    """The trials table as people read it: HOLD/LONG/SHORT % per regime in one column each, returns and
    drawdown in percent, a column only when something in it is worth reading."""
    t = results.trials
    out = pd.DataFrame({"trial": t["trial"], "status": t["status"]})
    out["best it"] = [
        "-" if s == SKIPPED or pd.isna(b) else f"{b}/{n}"
        for s, b, n in zip(t["status"], t[ITERATION], t["iterations"], strict=True)
    ]
    for name in results.manifest.searched:
        out[name] = [v if isinstance(v, str) else f"{v:.4g}" if not math.isnan(v) else "-" for v in t[name]]
    # One column per kind of share, regimes side by side (LOW_VOL/TRENDING/HIGH_VOL/CRISIS): a table that fits
    # a terminal. LONG/SHORT shares per regime are in csv, json and the report.
    out["HOLD% LV/TR/HV/CR"] = ["/".join(_pct(t[hold_pct(r)].iloc[i]) for r in REGIME_NAMES) for i in range(len(t))]
    # Beside the greedy shares, what a sampling policy expects: its mean P(HOLD) per regime (docs/SCORING.md).
    out["P(HOLD)% LV/TR/HV/CR"] = ["/".join(_pct(t[hold_prob(r)].iloc[i]) for r in REGIME_NAMES) for i in range(len(t))]
    # The schema's ANALYZE keys, each under its label and in its unit; a robust search's worst member beside.
    for name in (*shown(ANALYZE), BAND_DISTANCE_WORST, VAL_SHARPE_WORST):
        if name in t.columns:
            out[label(name)] = [display(name, v) for v in t[name]]
    if results.manifest.min_net_return is not None:
        out["profit ok"] = ["yes" if v else "no" for v in t[PROFIT_OK]]
    if t[LEAK_ALARM].any():
        out["leak"] = ["LEAK?" if v else "" for v in t[LEAK_ALARM]]
    if t[PREFLIGHT].astype(bool).any():
        out["preflight"] = t[PREFLIGHT]
    if t["error"].astype(bool).any():
        out["error"] = t["error"]
    return out


def _markdown(frame: pd.DataFrame) -> str:
    cells = [[str(c) for c in frame.columns]] + [[str(v).replace("|", "\\|") for v in row] for row in frame.values]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in frame.columns) + "|")
    return "\n".join(lines)


def summary_lines(results: SearchResults) -> list[str]:
    """The lines under the table: Pareto front, best trials, importance, status legend, problems."""
    lines = []
    front = results.pareto
    if not front.empty:
        lines.append(f"{PARETO_TITLE} {', '.join(map(str, front['trial']))}")
    if not results.best.empty:
        lines.append(
            f"Best trials (ranked, the first is the search's best): {', '.join(map(str, results.best['trial']))}"
        )
    lines.extend(skill_lines(results.run))
    imp, note = results.importance, results.importance_note
    if imp.empty:
        lines.append(note)
    else:
        for target, group in imp.groupby("target", sort=False):
            scores = ", ".join(f"{p} {v:.2f}" for p, v in zip(group["param"], group["importance"], strict=True))
            lines.append(f"{note}, target {target}: {scores}")
    counts = results.status_counts
    m = results.manifest
    lines.append(
        f"{len(results.trials)} of {m.trials or '?'} trials: "
        + "; ".join(f"{n} {s} ({STATUS_HELP[s]})" for s, n in counts.items())
    )
    lines.extend(f"unreadable: {p}" for p in results.problems)
    return lines


def render(results: SearchResults, fmt: str = "table") -> str:
    """The search's results in one of `FORMATS`."""
    if fmt == "csv":
        return results.trials.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return json.dumps(to_json(results), indent=2, allow_nan=False, default=str)
    table = display_frame(results)
    body = _markdown(table) if fmt == "markdown" else table.to_string(index=False)
    summary = summary_lines(results)
    if fmt == "markdown":
        summary = [f"- {line}" for line in summary]
    return body + "\n\n" + "\n".join(summary)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: NaN becomes null (strict JSON has no NaN)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in json.loads(frame.to_json(orient="records", double_precision=15))
    ]


def to_json(results: SearchResults) -> dict[str, Any]:
    m = results.manifest
    return {
        "search": {
            "dir": str(results.out),
            "space": m.space,
            "family": m.family,
            "trials_planned": m.trials,
            "iterations": m.iterations,
            "searched": m.searched,
            "finished": results.run.finished,
            "bands": {k: list(v) for k, v in results.bands.items()},
        },
        "status_counts": results.status_counts,
        "trials": _records(results.trials),
        "best": [int(t) for t in results.best["trial"]] if not results.best.empty else [],
        "pareto": [int(t) for t in results.pareto["trial"]] if not results.pareto.empty else [],
        "importance": _records(results.importance),
        "importance_note": results.importance_note,
        "problems": results.problems,
    }
