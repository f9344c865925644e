"""What Tune calls back during a search: the collapse stopper and the one-line-per-report printer."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from himari_ray.schema import (
    BAND_DISTANCE,
    LEAK_ALARM,
    PREFLIGHT,
    PREFLIGHT_SKIPPED,
    TRAINING_ITERATION,
    VAL_SHARPE,
    VAL_WIN_RATE,
    deployed_hold,
    deployment,
    hold_pct,
    hold_prob,
    number,
    value,
)
from himari_ray.search.space import CollapseSettings
from himari_ray.types import REGIME_NAMES, trial_number


def collapse_stopper(cfg: CollapseSettings):
    from ray import tune

    class CollapseStopper(tune.Stopper):
        """Stops a trial whose overall HOLD% (as deployed: greedy, or expected for a sampler) left (hold_low,
        hold_high) after the warm-up."""

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            if result[TRAINING_ITERATION] < cfg.warmup:
                return False
            hold = deployed_hold(result)  # NaN (a skipped trial) compares False: never stopped here
            return hold > cfg.hold_high or hold < cfg.hold_low

        def stop_all(self) -> bool:
            return False

    return CollapseStopper()


def format_duration(seconds: float) -> str:
    """`45s`, `12m05s`, `3h07m`: short enough for every report line."""
    if math.isnan(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_report(trial_no: int, result: dict[str, Any], of: int = 0, progress: str = "") -> str:
    """One line per trial report: trial i of N, per-regime HOLD%, band distance, validation Sharpe, and the
    search's progress (elapsed, ETA) when given."""
    head = f"trial {trial_no:3d}" + (f"/{of}" if of else "")
    tail = f"  {progress}" if progress else ""
    if value(result, PREFLIGHT_SKIPPED):
        return f"{head}  skipped by preflight, not trained: {value(result, PREFLIGHT)}{tail}"
    # The HOLD shares the trial is scored by: greedy, or a sampler's mean P(HOLD).
    sampler = deployment(result) == "sample"
    share, label = (hold_prob, "P(HOLD)%") if sampler else (hold_pct, "HOLD%")
    holds = " ".join(f"{r}={number(result, share(r)):5.1f}" for r in REGIME_NAMES)
    return (
        f"{head}  it {int(number(result, TRAINING_ITERATION)):3d}  {label} {holds}"
        f"  band {number(result, BAND_DISTANCE):6.1f}  sharpe {number(result, VAL_SHARPE):6.2f}"
        + (f"  LEAK? hit rate {number(result, VAL_WIN_RATE):.0%}" if value(result, LEAK_ALARM) else "")
        + tail
    )


class Progress:
    """Elapsed time and an ETA from iterations done against the search's iteration budget (trials x
    iterations). A trial that ends early (ASHA, collapse, preflight, crash) has its unused iterations
    credited, so the ETA shrinks as laggards are cut: it is an estimate that never assumes early stops."""

    def __init__(self, total_trials: int, iterations: int, start: float | None = None):
        self.total_trials, self.iterations = total_trials, iterations
        self.start = time.monotonic() if start is None else start
        self.done: dict[int, int] = {}  # trial number -> iterations done or credited

    def report(self, trial_no: int, iteration: int) -> None:
        self.done[trial_no] = max(self.done.get(trial_no, 0), min(iteration, self.iterations))

    def complete(self, trial_no: int) -> None:
        self.done[trial_no] = self.iterations

    def line(self, now: float | None = None) -> str:
        """`elapsed 1m02s  ETA 3m10s`."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        budget = self.total_trials * self.iterations
        done = min(sum(self.done.values()), budget)
        eta = elapsed * (budget - done) / done if done else math.nan
        return f"elapsed {format_duration(elapsed)}  ETA {format_duration(eta)}"


def report_printer(stream=None, total_trials: int = 0, iterations: int = 0):
    """Tune callback printing one line per report (with progress when the budget is given) and a line per
    crashed trial naming its error file."""
    from ray import tune

    progress = Progress(total_trials, iterations) if total_trials and iterations else None

    class ReportPrinter(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            n = trial_number(trial.experiment_tag)
            text = ""
            if progress is not None:
                if value(result, PREFLIGHT_SKIPPED):
                    progress.complete(n)
                else:
                    progress.report(n, int(number(result, TRAINING_ITERATION)))
                text = progress.line()
            print(format_report(n, result, total_trials, text), file=stream or sys.stdout, flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            if progress is not None:
                progress.complete(trial_number(trial.experiment_tag))

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            if progress is not None:
                progress.complete(trial_number(trial.experiment_tag))
            print(
                f"trial {trial_number(trial.experiment_tag)} failed: see {trial.local_path}/error.txt",
                file=stream or sys.stdout,
                flush=True,
            )

    return ReportPrinter()
