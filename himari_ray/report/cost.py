"""What a launched search cost, from files alone (no Ray): the per-instance price/uptime ledger that
`himari-ray vast up` writes (`ledger.jsonl`, one JSON event per line) and the trials it finished.

Events: `created` (instance id, GPU, count, dollars per hour), `ready`, `destroyed`, and `trials` (how many
trials the launch finished in the study). An instance is charged its hourly price from `created` to
`destroyed`, which is what Vast bills (storage from creation, the GPU once running: we count the whole
span, an upper bound by the minutes an image takes to load). One still running is charged up to `now`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from himari_ray.types import UserInputError, no_json_constant, quote, valid_id

LEDGER_FILE = "ledger.jsonl"
#: Events that name an instance, and the fields each needs besides `time`, `event` and `instance`.
INSTANCE_EVENTS = {"created": ("dph",), "ready": (), "destroyed": ()}
#: A ledger is one short line per event; one larger than this is not ours (and is not read whole).
MAX_LEDGER_BYTES = 16 * 2**20


@dataclass(frozen=True)
class InstanceCost:
    instance: int
    gpu: str
    num_gpus: int
    dollars_per_hour: float
    hours: float
    running: bool

    @property
    def dollars(self) -> float:
        return self.dollars_per_hour * self.hours


@dataclass(frozen=True)
class SearchCost:
    instances: list[InstanceCost]
    wall_hours: float  # first instance created to last destroyed (or now)
    trials: int

    @property
    def dollars(self) -> float:
        return sum(i.dollars for i in self.instances)

    @property
    def dollars_per_trial(self) -> float:
        return self.dollars / self.trials if self.trials else float("nan")

    @property
    def trials_per_hour(self) -> float:
        return self.trials / self.wall_hours if self.wall_hours > 0 else float("nan")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def read_ledger(out: Path) -> list[dict[str, Any]]:
    """The ledger's events in order, checked: [] when the search was not launched by himari-ray (no ledger),
    else one line naming the ledger and the line where it is not what `launch.ledger.Ledger.record` writes
    (so cost, `analyze` and `vast down` read it without a traceback). A last line cut short, without its
    newline, is one being written (or one a killed launch left half-written): it is not read."""
    path = Path(out) / LEDGER_FILE
    if not path.is_file():
        return []
    if path.stat().st_size > MAX_LEDGER_BYTES:
        raise UserInputError(f"{path}: not a launch ledger (larger than {MAX_LEDGER_BYTES // 2**20} MiB)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"{path}: not a launch ledger (not UTF-8 text)") from None
    lines = text.split("\n")
    events = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line, parse_constant=no_json_constant)
        except (ValueError, RecursionError):
            if n == len(lines):  # no newline after it: cut short mid-write
                break
            raise UserInputError(f"{path}: line {n} is not JSON ({quote(line, 40)})") from None
        problem = _event_problem(event)
        if problem:
            raise UserInputError(f"{path}: line {n}: {problem}")
        events.append(event)
    return events


def _event_problem(event: Any) -> str | None:
    """What is wrong with one ledger event, or None."""
    if not isinstance(event, dict):
        return f"expected an event object, got a JSON {type(event).__name__}"
    if not isinstance(event.get("event"), str):
        return "no event name (an 'event' text)"
    if not _finite(event.get("time")):
        return "its 'time' is not a number of seconds"
    kind = event["event"]
    if kind in INSTANCE_EVENTS:
        if isinstance(event.get("instance"), str) or valid_id(event.get("instance")) is None:
            return f"{kind}: 'instance' {quote(event.get('instance'), 30)} is not an instance id"
        for name in INSTANCE_EVENTS[kind]:
            if not _finite(event.get(name)):
                return f"{kind}: {name!r} {quote(event.get(name), 30)} is not a price"
        if kind == "created":
            n = event.get("num_gpus", 0)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                return f"created: 'num_gpus' {quote(n, 30)} is not a GPU count"
    elif kind == "trials":
        n = event.get("finished")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return f"trials: 'finished' {quote(n, 30)} is not a trial count"
    return None  # another event (`down`, or one a later version adds) only needs its time


def _pulled_trials(out: Path) -> int:
    return sum(1 for p in Path(out).glob("boxes/*/tune/trial_*/result.json") if p.stat().st_size > 0)


def search_cost(out: Path, now: float | None = None) -> SearchCost | None:
    """Dollars, instance-hours and trials of the launch in `out`; None when it has no ledger."""
    events = read_ledger(out)
    if not events:
        return None
    now = time.time() if now is None else now
    created: dict[int, dict[str, Any]] = {}
    destroyed: dict[int, float] = {}
    trials = None
    for e in events:
        if e["event"] == "created":
            created[int(e["instance"])] = e
        elif e["event"] == "destroyed":
            destroyed.setdefault(int(e["instance"]), float(e["time"]))
        elif e["event"] == "trials":
            trials = int(e["finished"])
    instances = []
    for iid, e in created.items():
        end = destroyed.get(iid, now)
        instances.append(
            InstanceCost(
                instance=iid,
                gpu=str(e.get("gpu", "?")),
                num_gpus=int(e.get("num_gpus", 0)),
                dollars_per_hour=float(e["dph"]),
                hours=max(end - float(e["time"]), 0.0) / 3600,
                running=iid not in destroyed,
            )
        )
    if not instances:
        return None
    start = min(float(e["time"]) for e in created.values())
    end = max(destroyed.get(i, now) for i in created)
    return SearchCost(instances, (end - start) / 3600, _pulled_trials(out) if trials is None else trials)


def _money(x: float) -> str:
    return f"${x:.2f}" if x >= 1 else f"${x:.4f}"


def format_cost(cost: SearchCost) -> str:
    running = sum(i.running for i in cost.instances)
    per_trial = (
        f"{_money(cost.dollars_per_trial)} per trial, {cost.trials_per_hour:.1f} trials per hour"
        if cost.trials
        else "no trial finished"
    )
    lines = [
        f"cost: {_money(cost.dollars)} for this search on {len(cost.instances)} instance(s), "
        f"{sum(i.hours for i in cost.instances):.3f} instance-hours"
        + (f" ({running} still running and billing)" if running else "")
        + f"; {cost.trials} trials: {per_trial}"
    ]
    for i in cost.instances:
        lines.append(
            f"  instance {i.instance}: {i.num_gpus}x {i.gpu} at ${i.dollars_per_hour:.3f}/h for {i.hours:.3f} h"
            f" = {_money(i.dollars)}" + (" (running)" if i.running else "")
        )
    return "\n".join(lines)


def cost_report(out: Path) -> str | None:
    """The cost lines `analyze` prints for `out`: a launch directory, or one box's search pulled into
    `<launch>/boxes/<name>` (the cost is the whole launch's). None when nothing was launched."""
    out = Path(out)
    launch = out.parent.parent if out.parent.name == "boxes" and not (out / LEDGER_FILE).is_file() else out
    cost = search_cost(launch)
    return None if cost is None else format_cost(cost)
