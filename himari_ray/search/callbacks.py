"""What Tune calls back during a search: the collapse stopper and the one-line-per-report printer."""

from __future__ import annotations

import heapq
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

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
from himari_ray.search.sections import CollapseSettings
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
    """Elapsed time and an ETA from the throughput of trained iterations across the trials running at once.

    The time before a trial's first report (Ray's start, the trial's actor, env and model, its first
    iteration) says nothing about the next iteration: extrapolating it (one first report after 23 s of
    startup, 143 iterations to go) gave a 56-minute ETA for a 3-minute search. So the estimate waits for a
    steady-state interval (a trial's second report) and models the rest as:

    - each running trial's remaining iterations at the mean seconds per iteration of one trial,
    - each trial not yet started at the mean start-to-first-report latency plus its other iterations,
    - all of it laid out on as many slots as trials have run at once (the searcher's concurrency, as
      observed), each new trial on the slot that frees first, so a last wave of fewer trials counts whole.

    A trial that ends early (ASHA, collapse, preflight, crash) has its unused iterations credited, so the ETA
    shrinks as trials are cut: it never assumes early stops. `now` (or the clock) is injectable so a test can
    script time; every method is plain Python (no Ray)."""

    def __init__(
        self,
        total_trials: int,
        iterations: int,
        start: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total_trials, self.iterations, self.clock = total_trials, iterations, clock
        self.start = clock() if start is None else start
        self.done: dict[int, int] = {}  # trial number -> iterations done or credited
        self.started: dict[int, float] = {}  # trial number -> when it started (this process)
        self.last: dict[int, tuple[float, int]] = {}  # trial number -> (time, iteration) of its last report
        self.running: set[int] = set()
        self.peak = 0  # most trials seen running at once
        self.iter_seconds, self.iter_count = 0.0, 0  # steady-state intervals: seconds and iterations
        self.startups: list[float] = []  # start-to-first-report latency of each trained trial

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    def _run(self, trial_no: int) -> None:
        self.running.add(trial_no)
        self.peak = max(self.peak, len(self.running))

    def start_trial(self, trial_no: int, now: float | None = None) -> None:
        """A trial (new, or resumed from a checkpoint) starts: its first report's latency is measured from here."""
        self.started[trial_no] = self._now(now)
        self.last.pop(trial_no, None)
        self.done.setdefault(trial_no, 0)
        self._run(trial_no)

    def report(self, trial_no: int, iteration: int, now: float | None = None) -> None:
        t = self._now(now)
        if trial_no in self.last:
            t_last, it_last = self.last[trial_no]
            if iteration > it_last:  # PBT may move a trial to another's (older) checkpoint: no interval then
                self.iter_seconds += t - t_last
                self.iter_count += iteration - it_last
        elif trial_no in self.started:
            self.startups.append(t - self.started[trial_no])
        self.last[trial_no] = (t, iteration)
        self.done[trial_no] = max(self.done.get(trial_no, 0), min(iteration, self.iterations))
        self._run(trial_no)

    def complete(self, trial_no: int) -> None:
        self.done[trial_no] = self.iterations
        self.running.discard(trial_no)

    def eta(self, now: float | None = None) -> float:
        """Seconds until the last trial ends, or NaN until a steady-state interval has been seen."""
        if not self.iter_count:
            return math.nan
        t = self._now(now)
        per_iter = self.iter_seconds / self.iter_count
        startup = sum(self.startups) / len(self.startups) if self.startups else per_iter
        fresh = startup + (self.iterations - 1) * per_iter  # one trial from its start to its last report
        remaining = []
        for n in self.running:
            left = self.iterations - self.done.get(n, 0)
            if n in self.last:  # the time already spent on its current iteration
                remaining.append(max(left * per_iter - (t - self.last[n][0]), 0.0))
            else:  # started, no report yet
                remaining.append(max(startup - (t - self.started.get(n, t)), 0.0) + (left - 1) * per_iter)
        unseen = max(self.total_trials - len(self.done.keys() | self.started.keys()), 0)
        return schedule_end(remaining, unseen, fresh, max(self.peak, len(remaining), 1))

    def line(self, now: float | None = None) -> str:
        """`elapsed 1m02s  ETA 3m10s`, or `ETA —` while there is nothing honest to extrapolate from."""
        t = self._now(now)
        eta = self.eta(t)
        shown = "—" if math.isnan(eta) else format_duration(eta)
        return f"elapsed {format_duration(t - self.start)}  ETA {shown}"


def schedule_end(remaining: list[float], unseen: int, length: float, slots: int) -> float:
    """When the last of `unseen` trials of `length` seconds ends, each started on the slot that frees first,
    with `slots` slots busy for `remaining` seconds (fewer entries: the other slots are free now)."""
    free = sorted(remaining) + [0.0] * (slots - len(remaining))
    heapq.heapify(free)
    while unseen and max(free) - free[0] > length:  # uneven slots: fill the earliest ones first
        heapq.heappush(free, heapq.heappop(free) + length)
        unseen -= 1
    # Slots within one trial's length of each other take one trial each per round, in order: skip the rounds.
    rounds, unseen = divmod(unseen, slots)
    free = [f + rounds * length for f in free]
    heapq.heapify(free)
    for _ in range(unseen):
        heapq.heappush(free, heapq.heappop(free) + length)
    return max(free)


def report_printer(
    stream: TextIO | None = None,
    total_trials: int = 0,
    iterations: int = 0,
    clock: Callable[[], float] = time.monotonic,
):
    """Tune callback printing one line per report (with progress when the budget is given) and a line per
    crashed trial naming its error file."""
    from ray import tune

    progress = Progress(total_trials, iterations, clock=clock) if total_trials and iterations else None

    class ReportPrinter(tune.Callback):
        def _sync(self, trials) -> None:
            # Trials a resumed search finished before this driver started never report here: credit them.
            for t in trials:
                if t.status in ("TERMINATED", "ERROR"):
                    progress.complete(trial_number(t.experiment_tag))

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            if progress is not None:
                self._sync(trials)
                progress.start_trial(trial_number(trial.experiment_tag))

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            n = trial_number(trial.experiment_tag)
            text = ""
            if progress is not None:
                self._sync(trials)
                if value(result, PREFLIGHT_SKIPPED):
                    progress.complete(n)  # not trained: its near-instant report is no startup latency
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
