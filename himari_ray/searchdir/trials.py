"""A search's trials read from their directories: reports, statuses, and what could not be read."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from himari_ray.schema import (
    CONFIG,
    OBJECTIVE,
    PREFLIGHT_SKIPPED,
    TRAINING_ITERATION,
    deployed_hold,
    number,
    read_report,
    value,
)
from himari_ray.searchdir.manifest import TUNE_DIR, SearchManifest, trial_dirs

#: What became of a trial, in the words every output uses (`STATUS_HELP` explains each).
FINISHED, STOPPED, COLLAPSED, SKIPPED, CRASHED, RUNNING = (
    "finished",
    "stopped",
    "collapsed",
    "skipped",
    "crashed",
    "running",
)
STATUS_HELP = {
    FINISHED: "trained every iteration",
    STOPPED: "cut short by ASHA as a laggard",
    COLLAPSED: "cut short by the collapse stopper: overall HOLD% left its bounds",
    SKIPPED: "ruled out by the preflight, never trained",
    CRASHED: "raised an error, see error.txt in its directory",
    RUNNING: "training or waiting when the files were read",
}


@dataclass
class TrialRun:
    """One trial from its directory: number (Tune's, from 1), reports in order, and its status."""

    number: int
    trial_id: str
    path: Path
    reports: list[dict[str, Any]]
    status: str = RUNNING
    error: str = ""
    #: Numbers of the lines of `result.json` that are not reports (skipped; the others stand).
    corrupt_lines: list[int] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any] | None:
        return self.reports[-1] if self.reports else None

    @property
    def best(self) -> dict[str, Any] | None:
        """The report with the lowest objective (the search's own ranking); the last one on ties."""
        best, best_value = self.last, math.inf
        for report in self.reports:
            v = number(report, OBJECTIVE)
            if v <= best_value:  # False for NaN: a report without an objective never wins
                best, best_value = report, v
        return best


@dataclass
class SearchRun:
    """A search directory read from disk: manifest, trials in number order, and what could not be read."""

    out: Path
    manifest: SearchManifest
    trials: list[TrialRun]
    #: One line per unreadable file or line, naming it.
    problems: list[str] = field(default_factory=list)
    #: True when Tune's state says the run is over (no trial running or pending).
    finished: bool = False


def is_report(raw: Any) -> bool:
    """Whether a parsed line of `result.json` is a Tune report: an object whose `training_iteration` is a whole
    number (not NaN, text, a list or a flag: every table, curve and status counts iterations with it)."""
    if not isinstance(raw, dict):
        return False
    it = raw.get(TRAINING_ITERATION)
    return isinstance(it, int) and not isinstance(it, bool) and it >= 0


#: Most line numbers a problem lists before it says how many there are in all (a whole binary file is one line).
LISTED_LINES = 10


def _lines_text(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:LISTED_LINES]))
    more = f", ... ({len(lines)} in all)" if len(lines) > LISTED_LINES else ""
    return ("line " if len(lines) == 1 else "lines ") + shown + more


def unreadable_file(path: Path) -> str | None:
    """Why `path` (a trial's result.json) cannot be read as a file at all (None: it is a file, or absent, as
    it is before a trial's first report): a directory or other non-file there, or a symbolic link to nothing.
    Never opened: a FIFO there would block the reader."""
    if path.is_symlink() and not path.exists():
        return f"a symbolic link to nothing ({os.readlink(path)})"
    if path.exists() and not path.is_file():
        return "a directory, not a file" if path.is_dir() else "not a regular file"
    return None


def read_reports(path: Path) -> tuple[list[dict[str, Any]], list[int], bool]:
    """The readable reports of one `result.json`, the numbers of its unreadable lines (not JSON, or not a
    Tune report), and whether the last line is one of them (a report being written while a trial runs)."""
    lines = path.read_text(errors="replace").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    reports: list[dict[str, Any]] = []
    bad: list[int] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not is_report(raw):
                raise ValueError("not a report")
        except ValueError:
            bad.append(i + 1)
            continue
        reports.append(read_report(raw))
    return reports, bad, bool(bad) and bad[-1] == last + 1


def tune_statuses(tune_dir: Path) -> tuple[dict[str, str], bool]:
    """Trial id -> Tune's status (RUNNING, PENDING, TERMINATED, ERROR, PAUSED) from the newest
    `experiment_state-*.json`, and whether it shows no trial left to run. Empty when unreadable.

    Newest by name, as Tune restores: each driver names its state by the time it started, and a resumed
    run's last copy rewrites every state file under tune/ in the same instant, so by modification time the
    killed driver's stale state can come out last."""
    states = sorted(tune_dir.glob("experiment_state-*.json"))
    if not states:
        return {}, False
    try:
        data = json.loads(states[-1].read_text())
        out = {}
        for entry in data["trial_data"]:
            trial = json.loads(entry[0])
            out[str(trial["trial_id"])] = str(trial["status"])
    except (ValueError, KeyError, TypeError, IndexError, OSError):
        return {}, False
    return out, bool(out) and all(s in ("TERMINATED", "ERROR") for s in out.values())


def trial_status(run: TrialRun, manifest: SearchManifest, tune_status: str | None, search_over: bool) -> str:
    """What became of a trial, from its files: skipped, finished, crashed, running, collapsed or stopped."""
    last = run.last
    if last is not None and value(last, PREFLIGHT_SKIPPED):
        return SKIPPED
    iterations = manifest.iterations
    if last is not None and number(last, TRAINING_ITERATION) >= iterations:
        return FINISHED
    if run.error or tune_status == "ERROR":
        return CRASHED
    if not search_over and tune_status in (None, "RUNNING", "PENDING", "PAUSED"):
        return RUNNING  # Tune's state lags a few seconds: a trial it does not list yet has just started
    if last is None:
        return RUNNING if not search_over else CRASHED
    c = manifest.collapse
    hold = deployed_hold(last)
    warm = number(last, TRAINING_ITERATION) >= c.get("warmup", math.inf)
    if warm and (hold > c.get("hold_high", math.inf) or hold < c.get("hold_low", -math.inf)):
        return COLLAPSED
    return STOPPED


def _first_error_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "error.txt unreadable"
    # Tune writes the traceback; its last line names the exception.
    return lines[-1][:200] if lines else "error.txt empty"


def load_search_run(out: Path) -> SearchRun:
    """Read a search directory; a corrupt trial is named in `problems`, the readable ones still load."""
    out = Path(out)
    manifest = SearchManifest.load(out)
    tune_dir = out / TUNE_DIR
    statuses, state_over = tune_statuses(tune_dir) if tune_dir.is_dir() else ({}, False)
    trials: list[TrialRun] = []
    problems: list[str] = []
    for n, trial_dir in trial_dirs(out).items():
        run = TrialRun(number=n, trial_id=trial_dir.name.split("_", 2)[2], path=trial_dir, reports=[])
        result, trailing = trial_dir / "result.json", False
        if (why := unreadable_file(result)) is not None:
            problems.append(f"{result}: unreadable: {why}; trial {n} shows no report")
        elif result.is_file():
            try:
                run.reports, run.corrupt_lines, trailing = read_reports(result)
            except OSError as exc:
                problems.append(f"{result}: unreadable ({exc.strerror}); trial {n} shows no report")
            if trailing and statuses.get(run.trial_id, "RUNNING") in ("RUNNING", "PENDING") and not state_over:
                run.corrupt_lines.pop()  # the report being written as we read, not corruption
        if (trial_dir / "error.txt").is_file():
            run.error = _first_error_line(trial_dir / "error.txt")
        trials.append(run)
    finished = state_over and len(trials) >= manifest.trials
    for run in trials:
        run.status = trial_status(run, manifest, statuses.get(run.trial_id), finished)
        if run.corrupt_lines:
            n = len(run.corrupt_lines)
            where = _lines_text(run.corrupt_lines)
            problems.append(
                f"{run.path / 'result.json'}: {where} {'is not a JSON report' if n == 1 else 'are not JSON reports'}"
                f" (skipped); "
                f"trial {run.number} shows its {len(run.reports)} other report(s)"
            )
    return SearchRun(out=out, manifest=manifest, trials=trials, problems=problems, finished=finished)


def searched_value(report: dict[str, Any], name: str) -> Any:
    """A searched parameter's value in a report's config (NaN when a conditional parameter was off)."""
    config = value(report, CONFIG)
    return config.get(name, math.nan) if isinstance(config, dict) else math.nan


def bands_of(search: SearchRun) -> dict[str, tuple[float, float]]:
    """The target HOLD% bands the trials were scored against (from a report's config, else the manifest)."""
    for run in search.trials:
        for report in run.reports:
            config = value(report, CONFIG)
            try:
                return {k: (float(v[0]), float(v[1])) for k, v in config["trial"]["eval"]["bands"].items()}
            except (KeyError, TypeError, IndexError, ValueError):
                continue
    return search.manifest.bands
