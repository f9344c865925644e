"""The per-instance price/uptime ledger a launch appends to; `himari_ray.report.cost` reads it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from himari_ray.report.cost import LEDGER_FILE, read_ledger


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
        """Every event, checked (`report.cost.read_ledger`: one line naming the ledger and line otherwise)."""
        return read_ledger(self.path.parent)

    def destroyed(self) -> set[int]:
        return {int(e["instance"]) for e in self.events() if e["event"] == "destroyed"}
