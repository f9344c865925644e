"""Search results from disk: the per-trial table, without importing or starting Ray.

Reads what a search writes: `search.json` (its manifest) and Tune's per-trial `result.json` files
(one JSON object per report) under `tune/`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from himari_ray.types import REGIME_NAMES, UserInputError

TABLE_METRICS = ("band_distance", "val_sharpe", "val_net_return", "val_max_drawdown", "val_turnover")


def _read_reports(path: Path) -> list[dict[str, Any]]:
    reports = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                reports.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a report being written while we read; the earlier ones stand
    return reports


def load_manifest(out: Path) -> dict[str, Any]:
    path = Path(out) / "search.json"
    if not path.is_file():
        raise UserInputError(f"{out}: not a himari-ray search directory (no search.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: not valid JSON ({exc.msg})") from None


def trial_status(last: dict[str, Any], manifest: dict[str, Any]) -> str:
    """skipped (preflight), complete, collapsed (stopper), or stopped (ASHA) - from the last report alone."""
    if last["preflight_skipped"]:
        return "skipped"
    if last["training_iteration"] >= manifest["iterations"]:
        return "complete"
    c = manifest["collapse"]
    hold = last["hold_pct_ALL"]
    if last["training_iteration"] >= c["warmup"] and (hold > c["hold_high"] or hold < c["hold_low"]):
        return "collapsed"
    return "stopped"


def trials_table(out: Path) -> pd.DataFrame:
    """One row per trial (its last report), sorted by band distance, then validation Sharpe (higher first)."""
    out = Path(out)
    manifest = load_manifest(out)
    rows = []
    for result_file in sorted((out / "tune").glob("trial_*/result.json")):
        reports = _read_reports(result_file)
        if not reports:
            continue
        last = reports[-1]
        row: dict[str, Any] = {
            "trial": int(result_file.parent.name.split("_")[1]),  # trial_<n:04d>_<id>, see search
            "status": trial_status(last, manifest),
            "iter": last["training_iteration"],
        }
        for name in manifest["searched"]:
            row[name] = last["config"].get(name, float("nan"))  # a conditional parameter may be off
        for regime in REGIME_NAMES:
            row[f"HOLD% {regime}"] = last[f"hold_pct_{regime}"]
        for metric in TABLE_METRICS:
            row[metric] = last[metric]
        if "band_distance_worst" in last:  # a robust trial (several seeds or folds): its worst member too
            row["band_worst"] = last["band_distance_worst"]
            row["sharpe_worst"] = last["val_sharpe_worst"]
        row["preflight"] = last["preflight"]
        row["leak"] = "LEAK?" if last["leak_alarm"] else ""
        row["profit_ok"] = last["profit_ok"]
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table["_neg_sharpe"] = -table["val_sharpe"]
    table = table.sort_values(["band_distance", "_neg_sharpe", "trial"]).drop(columns="_neg_sharpe")
    # Keep the table narrow: a column only when something in it is worth reading.
    if not table["preflight"].astype(bool).any():
        table = table.drop(columns="preflight")
    if not table["leak"].astype(bool).any():
        table = table.drop(columns="leak")
    if manifest["eval"]["min_net_return"] is None:
        table = table.drop(columns="profit_ok")
    return table


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Trained trials (meeting the profit constraint, if any) that no other such trial beats on both band
    distance (lower) and validation Sharpe (higher); sorted by band distance."""
    if table.empty:
        return table
    ok = table[table["status"] != "skipped"]
    if "profit_ok" in ok.columns:
        ok = ok[ok["profit_ok"].astype(bool)]
    band = ok["band_distance"].to_numpy()
    sharpe = ok["val_sharpe"].to_numpy()
    keep = [
        not np.any((band <= band[i]) & (sharpe >= sharpe[i]) & ((band < band[i]) | (sharpe > sharpe[i])))
        for i in range(len(ok))
    ]
    return ok[keep].sort_values("band_distance")


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "no trial has reported yet"

    def pct(v: float) -> str:
        return "nan" if math.isnan(v) else f"{v:.1f}"

    def num(v: float) -> str:
        return f"{v:.4g}"

    formatters = {
        c: pct if c.startswith("HOLD%") or c in ("band_distance", "band_worst") else num
        for c in table.columns
        if table[c].dtype.kind == "f"
    }
    return table.to_string(index=False, formatters=formatters)
