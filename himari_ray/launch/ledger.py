"""The per-instance price/uptime ledger a launch appends to; `himari_ray.report.cost` reads it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from himari_ray.report.cost import LEDGER_FILE


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
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def destroyed(self) -> set[int]:
        if not self.path.is_file():
            return set()
        events = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        return {int(e["instance"]) for e in events if e["event"] == "destroyed"}
