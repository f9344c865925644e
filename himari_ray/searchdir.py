"""The search directory: what a search writes and every reader reads, in one place (no Ray).

A search directory holds `search.json` (the manifest, `SearchManifest`), `space.yaml` (the space used),
`study.db` (the Optuna study, unless an external storage was given), and under `tune/` one directory per
trial (`trial_<n:04d>_<trial id>`, n = Tune's trial number, counted from 1: the number every himari-ray
output uses) holding `result.json` (one JSON object per report), `params.json`, its checkpoints,
`error.txt` when the trial crashed, and Tune's `experiment_state-*.json` (trial statuses, plain JSON; its
pickled fields are never decoded).

**One ranking** (`rank`): `analyze`, `report`, `confirm`, `export`, the hints a search prints at its end and
the Optuna study all name the same best trial. A trial is judged by its best report (lowest objective, ties
to the later report: more training, same score). Trials that trained every iteration come first, before
trials cut short (ASHA's laggards, the collapse stopper's): the study records those PRUNED, and Optuna's
`best_trial` considers only COMPLETE trials, so the two agree. Among them, trials that meet the constraints
(the profit constraint, and a constrained objective's band tolerance: Optuna's `best_trial` reads feasible
trials only) come first; then the objective, then the validation Sharpe (higher first), then the number.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from himari_ray.schema import (
    BAND_DISTANCE,
    BEST_ITERATION,
    CONFIG,
    OBJECTIVE,
    PREFLIGHT_SKIPPED,
    PROFIT_OK,
    TRAINING_ITERATION,
    VAL_SHARPE,
    deployed_hold,
    number,
    read_report,
    value,
)
from himari_ray.types import STUDY_FILE, TRIAL_STATE_FILE, UserInputError

SEARCH_JSON = "search.json"
SPACE_YAML = "space.yaml"
TUNE_DIR = "tune"
#: What `confirm` writes: its record (the test split's read, per-seed and summary figures) and its markdown.
CONFIRM_JSON = "confirm.json"
CONFIRM_MD = "confirm.md"
#: Where an RLlib Algorithm checkpoint keeps the module (Ray 2.60, single-agent, one local learner).
MODULE_IN_CHECKPOINT = Path("learner_group") / "learner" / "rl_module" / "default_policy"


class SearchManifest(BaseModel):
    """`search.json`: what `analyze`, `confirm`, `export` and `--resume` need of a search, from files alone."""

    # Read from disk, written by this or another version: keys a newer version adds are ignored, not refused.
    model_config = ConfigDict(frozen=True, extra="ignore")

    space: str = Field("", description="The space's name (also the Optuna study's name).")
    family: str = Field("", description="The reward family searched.")
    trials: int = Field(0, description="Trials the search was asked for.")
    seed: int = Field(0, description="The searcher's seed.")
    iterations: int = Field(description="PPO iterations a trial trains when not cut short.")
    searched: list[str] = Field(default_factory=list, description="The searched parameter names.")
    collapse: dict[str, float] = Field(
        default_factory=dict, description="The collapse stopper's settings (warmup, hold_low, hold_high)."
    )
    objective: dict[str, Any] = Field(default_factory=dict, description="The space's objective section.")
    eval: dict[str, Any] = Field(default_factory=dict, description="The space's eval section (dumped EvalConfig).")
    robust: dict[str, Any] = Field(default_factory=dict, description="The space's robustness section.")
    storage: str | None = Field(None, description="An external study's URL, without its password.")
    study_file: str | None = Field(None, description="The study's file inside the directory (default storage).")
    search_id: str = Field("", description="The search's id: the owner tag of its Optuna trials.")
    tune_storage: str | None = Field(None, description="Where Tune kept the trials, when not in the directory.")
    data: dict[str, Any] = Field(default_factory=dict, description="The space's data section.")
    version: str = Field("", description="The himari-ray version that wrote it.")

    @classmethod
    def migrate(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """An older manifest's keys in today's places: `targets` was a second copy of `eval.bands`."""
        raw = dict(raw)
        targets = raw.pop("targets", None)
        if targets is not None and "bands" not in (raw.get("eval") or {}):
            raw["eval"] = {**(raw.get("eval") or {}), "bands": targets}
        return raw

    @classmethod
    def load(cls, out: Path) -> SearchManifest:
        """The manifest of search directory `out`, or one line naming the file and what is wrong."""
        path = Path(out) / SEARCH_JSON
        if not Path(out).is_dir():
            raise UserInputError(f"{out}: no such directory")
        if not path.is_file():
            raise UserInputError(f"{out}: not a himari-ray search directory (no {SEARCH_JSON})")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserInputError(f"{path}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        except OSError as exc:
            raise UserInputError(f"{path}: unreadable ({exc.strerror})") from None
        if not isinstance(raw, dict):
            raise UserInputError(f"{path}: not a himari-ray search manifest (not a JSON object)")
        try:
            return cls.model_validate(cls.migrate(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"])) or "?"
            raise UserInputError(f"{path}: key {where!r}: {err['msg']}; not a himari-ray search manifest") from None

    def write(self, out: Path) -> None:
        """Write `search.json` atomically: a reader never sees half of it."""
        tmp = Path(out) / f".{SEARCH_JSON}.tmp"
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(Path(out) / SEARCH_JSON)

    @property
    def bands(self) -> dict[str, tuple[float, float]]:
        """The target HOLD% band of each regime the trials were scored against."""
        return {k: (float(v[0]), float(v[1])) for k, v in (self.eval.get("bands") or {}).items()}

    @property
    def min_net_return(self) -> float | None:
        """The profit constraint (eval.min_net_return; older searches: objective.min_val_net_return)."""
        return self.eval.get("min_net_return", self.objective.get("min_val_net_return"))

    def storage_url(self, out: Path) -> str | None:
        """The Optuna storage of the search in `out`: its own `study.db` (wherever the directory now lives:
        a moved or copied search uses its own file), an external URL (without its password), or None (PBT
        keeps no study)."""
        out = Path(out).resolve()
        if self.study_file:
            return f"sqlite:///{out / self.study_file}"
        url = self.storage
        # Searches written before `study_file` stored the absolute path of their own study.db.
        if url and url.startswith("sqlite:///") and url.endswith(f"/{STUDY_FILE}") and (out / STUDY_FILE).is_file():
            return f"sqlite:///{out / STUDY_FILE}"
        return url


def trial_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's `himari_trial_state.json` ({"iteration": n, "best": {...}}); empty where unreadable."""
    try:
        state = json.loads((checkpoint / TRIAL_STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def best_checkpoint(trial_dir: Path) -> Path | None:
    """The checkpoint of the trial's best report (lowest objective: the one its table row shows and the
    search keeps beside the latest); the latest where that one is not on disk (an older search)."""
    ckpts = sorted(p for p in trial_dir.glob("checkpoint_*") if (p / "member_0" / MODULE_IN_CHECKPOINT).is_dir())
    if not ckpts:
        return None
    best = (trial_state(ckpts[-1]).get("best") or {}).get(BEST_ITERATION)
    return next((c for c in ckpts if trial_state(c).get("iteration") == best), ckpts[-1])


def trial_dirs(out: Path) -> dict[int, Path]:
    """Trial number -> directory, for every `tune/trial_<n>_<id>` directory of the search in `out`."""
    dirs: dict[int, Path] = {}
    for d in sorted((Path(out) / TUNE_DIR).glob("trial_*")):
        parts = d.name.split("_")
        if len(parts) >= 3 and parts[1].isdigit() and d.is_dir():
            dirs[int(parts[1])] = d
    return dirs


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


# ---- The one ranking --------------------------------------------------------------------------------------
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


def read_confirm(out: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(`confirm`'s record, None), (None, None) when the search was never confirmed, or (None, one line
    naming the file) when the record cannot be read."""
    path = Path(out) / CONFIRM_JSON
    if not path.exists():
        return None, None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path}: unreadable ({type(exc).__name__}); confirm's results are not shown"
    if not isinstance(record, dict):
        return None, f"{path}: not a confirm record (a JSON {type(record).__name__}); confirm's results are not shown"
    return record, None
