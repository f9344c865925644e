"""The report's figures as PNG bytes (matplotlib, the optional `report` extra; Agg backend, no display).

Each figure says what it shows in its title, its units on its axes, and names its marks in a legend.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only: never a window, also on a headless worker
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from himari_ray.report.results import SearchResults
from himari_ray.schema import BAND_DISTANCE, ITERATION, VAL_SHARPE, hold_pct, hold_prob
from himari_ray.searchdir import COLLAPSED, CRASHED, FINISHED, RUNNING, SKIPPED, STOPPED
from himari_ray.types import REGIME_NAMES

STATUS_COLOR = {
    FINISHED: "tab:blue",
    STOPPED: "tab:orange",
    COLLAPSED: "tab:red",
    SKIPPED: "tab:gray",
    CRASHED: "black",
    RUNNING: "tab:green",
}
BAND_COLOR = "tab:green"


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _label(row: pd.Series) -> str:
    return f"trial {int(row['trial'])} ({row[BAND_DISTANCE]:.1f} pp, it {int(row[ITERATION])})"


def hold_vs_bands(results: SearchResults) -> bytes:
    """Per regime, the validation HOLD share the best trials were scored by (greedy, or a sampler's mean
    P(HOLD)) as bars, the target band as a shaded box whose edges are drawn over the bars."""
    best = results.best
    sampler = results.deployment == "sample"
    share = hold_prob if sampler else hold_pct
    fig, ax = plt.subplots(figsize=(9, 5.2))
    n = max(len(best), 1)
    width = 0.8 / n
    ticks = []
    for i, regime in enumerate(REGIME_NAMES):
        lo, hi = results.bands.get(regime, (math.nan, math.nan))
        ticks.append(regime if math.isnan(lo) else f"{regime}\nband {lo:g}-{hi:g}%")
        if math.isnan(lo):
            continue
        ax.add_patch(
            plt.Rectangle((i - 0.45, lo), 0.9, hi - lo, color=BAND_COLOR, alpha=0.25, zorder=1,
                          label="target band" if i == 0 else None)
        )  # fmt: skip
        ax.hlines([lo, hi], i - 0.45, i + 0.45, colors="darkgreen", linestyles="--", lw=1.2, zorder=3)
    colors = plt.cm.viridis(np.linspace(0, 0.85, n))
    for j, (_, row) in enumerate(best.iterrows()):
        xs = np.arange(len(REGIME_NAMES)) - 0.4 + width * (j + 0.5)
        ys = [row[share(r)] for r in REGIME_NAMES]
        bars = ax.bar(xs, ys, width=width * 0.92, color=colors[j], alpha=0.9, zorder=2, label=_label(row))
        ax.bar_label(bars, labels=[f"{y:.0f}" if not math.isnan(y) else "" for y in ys], fontsize=7, padding=1)
    for i, regime in enumerate(REGIME_NAMES):
        if best.empty or best[share(regime)].isna().all():
            ax.text(i, 50, "no validation\nbars in this\nregime", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_xticks(range(len(REGIME_NAMES)), ticks)
    ax.set_ylim(0, 108)  # room for a label over a 100% bar
    ax.set_yticks(range(0, 101, 20))
    what = "expected HOLD share, mean P(HOLD) (sampling policy)" if sampler else "HOLD share (greedy policy)"
    ax.set_ylabel("mean P(HOLD) on validation (%)" if sampler else "HOLD share of validation decisions (%)")
    ax.set_title(
        f"{what[0].upper() + what[1:]} per regime: the {len(best)} best trials vs the target bands", fontsize=10
    )
    ax.legend(
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3,
        title="trial (band distance, iteration of its best report)", title_fontsize=8, frameon=False,
    )  # fmt: skip
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def band_distance_over_trials(results: SearchResults) -> bytes:
    """Each trial's band distance (best report) in trial order, coloured by status, with the best so far."""
    t = results.trials.sort_values("trial")
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for status, group in t.groupby("status"):
        ax.scatter(group["trial"], group[BAND_DISTANCE], s=36, color=STATUS_COLOR.get(status, "k"), label=status)
    trained = t[(t["status"] != SKIPPED) & t[BAND_DISTANCE].notna()]
    if not trained.empty:
        best = np.minimum.accumulate(trained[BAND_DISTANCE].to_numpy(dtype=float))
        ax.step(trained["trial"], best, where="post", color="k", lw=1.5, label="best so far (trained trials)")
    ax.set_xlabel("trial (in the order the search started them)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("band distance (pp outside the bands; lower is better)")
    ax.set_title("Band distance over the search")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def pareto(results: SearchResults) -> bytes:
    """Trained trials by band distance (x, lower better) and validation Sharpe (y, higher better); the front."""
    t = results.trials
    trained = t[(t["status"] != SKIPPED) & t[BAND_DISTANCE].notna() & t[VAL_SHARPE].notna()]
    front = results.pareto
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(trained[BAND_DISTANCE], trained[VAL_SHARPE], color="tab:gray", s=30, label="trained trial")
    if not front.empty:
        ax.plot(front[BAND_DISTANCE], front[VAL_SHARPE], "o-", color="tab:red", ms=7, label="Pareto front")
    for _, row in trained.iterrows():
        ax.annotate(str(int(row["trial"])), (row[BAND_DISTANCE], row[VAL_SHARPE]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("band distance (pp; lower is better)")
    ax.set_ylabel("validation Sharpe (annualised, net of fees; higher is better)")
    ax.set_title("Band distance vs validation Sharpe (best report per trial)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def importance(results: SearchResults) -> bytes | None:
    """Optuna's parameter importance as horizontal bars, one panel per target; None when there is none."""
    imp = results.importance
    if imp.empty:
        return None
    targets = list(dict.fromkeys(imp["target"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets) + 2, 0.5 * imp["param"].nunique() + 2))
    for ax, target in zip(np.atleast_1d(axes), targets, strict=True):
        group = imp[imp["target"] == target].sort_values("importance")
        ax.barh(group["param"], group["importance"], color="tab:purple")
        for y, v in enumerate(group["importance"]):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.12)
        ax.set_xlabel("importance (share of the total, sums to 1)")
        ax.set_title(f"Parameter importance for {target}")
    fig.suptitle(results.importance_note, fontsize=8)
    return _png(fig)


def learning_curves(results: SearchResults) -> bytes:
    """Band distance and validation Sharpe per iteration for the best trials."""
    curves, best = results.curves, results.best
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(best), 1)))
    for color, trial in zip(colors, best["trial"], strict=False):
        c = curves[curves["trial"] == trial].sort_values(ITERATION)
        ax1.plot(c[ITERATION], c[BAND_DISTANCE], "o-", color=color, ms=3, label=f"trial {int(trial)}")
        ax2.plot(c[ITERATION], c[VAL_SHARPE], "o-", color=color, ms=3, label=f"trial {int(trial)}")
        at = c[c[ITERATION] == best.loc[best["trial"] == trial, ITERATION].iloc[0]]  # its best report
        ax1.plot(at[ITERATION], at[BAND_DISTANCE], "*", color=color, ms=12, mec="k")
        ax2.plot(at[ITERATION], at[VAL_SHARPE], "*", color=color, ms=12, mec="k")
    ax1.plot([], [], "*", color="gray", ms=12, mec="k", label="best report")
    ax1.set_title("Band distance per iteration (best trials)")
    ax1.set_ylabel("band distance (pp; lower is better)")
    ax2.set_title("Validation Sharpe per iteration (best trials)")
    ax2.set_ylabel("Sharpe (annualised, net of fees)")
    ax2.axhline(0, color="k", lw=0.6)
    for ax in (ax1, ax2):
        ax.set_xlabel("training iteration")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


#: The report's figures in order: (title, function).
FIGURES = (
    ("HOLD share vs target bands", hold_vs_bands),
    ("Band distance over trials", band_distance_over_trials),
    ("Pareto front", pareto),
    ("Parameter importance", importance),
    ("Learning curves", learning_curves),
)
