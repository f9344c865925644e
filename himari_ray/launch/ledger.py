"""The per-instance price/uptime ledger a launch appends to; `himari_ray.report.cost` reads it."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from himari_ray.report.cost import LEDGER_FILE
from himari_ray.types import UserInputError, quote

#: Events that name an instance, and the fields each needs besides `time`, `event` and `instance`.
INSTANCE_EVENTS = {"created": ("dph",), "ready": (), "destroyed": ()}
#: A ledger is one short line per event; one larger than this is not ours (and is not read whole).
MAX_LEDGER_BYTES = 16 * 2**20


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _no_constant(name: str) -> Any:
    raise ValueError(name)


class Ledger:
    """Append-only: one JSON event per line, written and flushed as it happens, so a launch that dies still
    leaves what it rented and when on disk."""

    def __init__(self, out: Path):
        self.path = Path(out) / LEDGER_FILE

    def record(self, event: str, instance: int | None = None, **fields: Any) -> None:
        line = {
            "time": time.time(),
            "event": event,
            **({"instance": instance} if instance is not None else {}),
            **fields,
        }
        with self.path.open("a+b") as f:
            self._drop_cut_line(f)
            f.write((json.dumps(line) + "\n").encode())

    @staticmethod
    def _drop_cut_line(f: Any) -> None:
        """A last line without its newline is half an event a killed launch was writing (`events` skips it):
        appending after it would glue the next event onto it, so it is cut off first."""
        end = f.seek(0, 2)
        if end == 0:
            return
        f.seek(max(end - 65536, 0))
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut < 0 and end > len(tail):  # a line longer than any event: not ours to cut, only to end
            f.write(b"\n")
            return
        f.truncate(end - len(tail) + cut + 1)
        f.seek(0, 2)

    def events(self) -> list[dict[str, Any]]:
        """Every event, checked: one line naming the ledger and the line where it is not what `record` writes
        (cost.py and `destroyed` then read it without a traceback). A last line cut short, without its
        newline, is one being written (or one a killed launch left half-written): it is not read."""
        from himari_ray.launch.vast import valid_id

        if not self.path.is_file():
            return []
        if self.path.stat().st_size > MAX_LEDGER_BYTES:
            raise UserInputError(f"{self.path}: not a launch ledger (larger than {MAX_LEDGER_BYTES // 2**20} MiB)")
        raw = self.path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserInputError(f"{self.path}: not a launch ledger (not UTF-8 text)") from None
        lines = text.split("\n")
        events = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line, parse_constant=_no_constant)
            except (ValueError, RecursionError):
                if n == len(lines):  # no newline after it: cut short mid-write
                    break
                raise UserInputError(f"{self.path}: line {n} is not JSON ({quote(line, 40)})") from None
            problem = _event_problem(event, valid_id)
            if problem:
                raise UserInputError(f"{self.path}: line {n}: {problem}")
            events.append(event)
        return events

    def destroyed(self) -> set[int]:
        return {int(e["instance"]) for e in self.events() if e["event"] == "destroyed"}


def _event_problem(event: Any, valid_id: Any) -> str | None:
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
