"""What Tune calls back during a search: the collapse stopper and the one-line-per-report printer."""

from __future__ import annotations

import sys
from typing import Any

from himari_ray.search.space import CollapseSettings
from himari_ray.types import REGIME_NAMES, trial_number


def collapse_stopper(cfg: CollapseSettings):
    from ray import tune

    class CollapseStopper(tune.Stopper):
        """Stops a trial whose overall HOLD% left (hold_low, hold_high) after the warm-up."""

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            if result["training_iteration"] < cfg.warmup:
                return False
            hold = result["hold_pct_ALL"]
            return hold > cfg.hold_high or hold < cfg.hold_low

        def stop_all(self) -> bool:
            return False

    return CollapseStopper()


def format_report(trial_no: int, result: dict[str, Any]) -> str:
    """One line per trial report: per-regime greedy HOLD%, band distance (greedy, and by the policy's mean
    HOLD probabilities), decisiveness (mean top-action probability), validation Sharpe."""
    if result["preflight_skipped"]:
        return f"trial {trial_no:3d}  skipped by preflight, not trained: {result['preflight']}"
    holds = " ".join(f"{r}={result[f'hold_pct_{r}']:5.1f}" for r in REGIME_NAMES)
    return (
        f"trial {trial_no:3d}  it {result['training_iteration']:3d}  HOLD% {holds}"
        f"  band {result['band_distance']:6.1f} (by probabilities {result['band_distance_prob']:5.1f},"
        f" decisiveness {result['decisiveness_ALL']:.2f})  sharpe {result['val_sharpe']:6.2f}"
        + (
            "  LEAK? hit rate {:.0%} vs {:.0%} honest at equal selectivity".format(
                result["val_win_rate"], result["leak_baseline_hit_rate"]
            )
            if result["leak_alarm"]
            else ""
        )
    )


def report_printer(stream=None):
    """Prints to `stream`, or to whatever sys.stdout is when a report arrives: Tune pickles its callbacks
    with the experiment state, and a replaced stdout (a notebook, pytest's capture) cannot be pickled."""
    from ray import tune

    class ReportPrinter(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            print(format_report(trial_number(trial.experiment_tag), result), file=stream or sys.stdout, flush=True)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            print(
                f"trial {trial_number(trial.experiment_tag)} failed: see {trial.local_path}/error.txt",
                file=stream or sys.stdout,
                flush=True,
            )

    return ReportPrinter()
