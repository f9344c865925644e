"""A search directory as files: its manifest, each trial's reports and what became of the trial (no Ray).

Reads what a search writes: `search.json` (the manifest), and under `tune/` one directory per trial
(`trial_<n:04d>_<trial id>`, n = Tune's trial number, counted from 1: the number every himari-ray output
uses) holding `result.json` (one JSON object per report), `error.txt` when the trial crashed, and Tune's
`experiment_state-*.json` (trial statuses, plain JSON; its pickled fields are never decoded).
"""

from __future__ import annotations

import json
import math
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
from himari_ray.types import UserInputError

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
    manifest: dict[str, Any]
    trials: list[TrialRun]
    #: One line per unreadable file or line, naming it.
    problems: list[str] = field(default_factory=list)
    #: True when Tune's state says the run is over (no trial running or pending).
    finished: bool = False


def load_manifest(out: Path) -> dict[str, Any]:
    path = Path(out) / "search.json"
    if not Path(out).is_dir():
        raise UserInputError(f"{out}: no such directory")
    if not path.is_file():
        raise UserInputError(f"{out}: not a himari-ray search directory (no search.json)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    for key in ("iterations", "searched", "collapse"):
        if not isinstance(manifest, dict) or key not in manifest:
            raise UserInputError(f"{path}: missing key {key!r}; not a himari-ray search manifest")
    return manifest


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
            if not isinstance(raw, dict) or TRAINING_ITERATION not in raw:
                raise ValueError("not a report")
        except ValueError:
            bad.append(i + 1)
            continue
        reports.append(read_report(raw))
    return reports, bad, bool(bad) and bad[-1] == last + 1


def tune_statuses(tune_dir: Path) -> tuple[dict[str, str], bool]:
    """Trial id -> Tune's status (RUNNING, PENDING, TERMINATED, ERROR, PAUSED) from the newest
    `experiment_state-*.json`, and whether it shows no trial left to run. Empty when unreadable."""
    states = sorted(tune_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
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


def trial_status(run: TrialRun, manifest: dict[str, Any], tune_status: str | None, search_over: bool) -> str:
    """What became of a trial, from its files: skipped, finished, crashed, running, collapsed or stopped."""
    last = run.last
    if last is not None and value(last, PREFLIGHT_SKIPPED):
        return SKIPPED
    iterations = int(manifest["iterations"])
    if last is not None and number(last, TRAINING_ITERATION) >= iterations:
        return FINISHED
    if run.error or tune_status == "ERROR":
        return CRASHED
    if not search_over and tune_status in (None, "RUNNING", "PENDING", "PAUSED"):
        return RUNNING  # Tune's state lags a few seconds: a trial it does not list yet has just started
    if last is None:
        return RUNNING if not search_over else CRASHED
    c = manifest["collapse"]
    hold = deployed_hold(last)
    if number(last, TRAINING_ITERATION) >= c["warmup"] and (hold > c["hold_high"] or hold < c["hold_low"]):
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
    manifest = load_manifest(out)
    tune_dir = out / "tune"
    statuses, state_over = tune_statuses(tune_dir) if tune_dir.is_dir() else ({}, False)
    trials: list[TrialRun] = []
    problems: list[str] = []
    for trial_dir in sorted(tune_dir.glob("trial_*")) if tune_dir.is_dir() else []:
        parts = trial_dir.name.split("_")
        if len(parts) < 3 or not parts[1].isdigit() or not trial_dir.is_dir():
            continue  # not a trial directory of ours (trial_<n:04d>_<id>, see search/driver.py)
        run = TrialRun(number=int(parts[1]), trial_id="_".join(parts[2:]), path=trial_dir, reports=[])
        result, trailing = trial_dir / "result.json", False
        if result.is_file():
            try:
                run.reports, run.corrupt_lines, trailing = read_reports(result)
            except OSError as exc:
                problems.append(f"{result}: unreadable ({exc.strerror})")
            if trailing and statuses.get(run.trial_id, "RUNNING") in ("RUNNING", "PENDING") and not state_over:
                run.corrupt_lines.pop()  # the report being written as we read, not corruption
        if (trial_dir / "error.txt").is_file():
            run.error = _first_error_line(trial_dir / "error.txt")
        trials.append(run)
    finished = state_over and len(trials) >= int(manifest.get("trials", 0))
    for run in trials:
        run.status = trial_status(run, manifest, statuses.get(run.trial_id), finished)
        if run.corrupt_lines:
            n = len(run.corrupt_lines)
            where = ("line " if n == 1 else "lines ") + ", ".join(map(str, run.corrupt_lines))
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
    targets = search.manifest.get("targets") or {}
    return {k: (float(v[0]), float(v[1])) for k, v in targets.items()}
