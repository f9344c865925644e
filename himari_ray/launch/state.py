"""`launch.json`: what one launch rented and for which study, written after every change and read, checked,
by `up` and by `status`, `logs`, `pull` and `down`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from himari_ray.types import UserInputError, no_json_constant, quote, valid_id

STATE_FILE = "launch.json"
#: launch.json holds a few lines per instance; one larger than this is not ours (and is not read whole).
MAX_STATE_BYTES = 16 * 2**20
#: What `up` names a launch (`himari-<hex>`); its instances are `<label>-<n>`. A label is matched against
#: every instance of the account by `down`, so one that could match another launch's is refused.
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]*(?:-[A-Za-z0-9._]+)*")


def _state_problem(data: Any) -> str | None:
    """What is wrong with launch.json's content, or None. Checks what status/logs/pull/down and `up` read."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got a JSON {type(data).__name__}"
    label = data.get("label")
    if not isinstance(label, str) or not _LABEL.fullmatch(label) or len(label) > 64:
        return f"label: {quote(label, 40)} is not a launch label (like himari-1a2b3c4d)"
    for key in ("study", "space", "storage"):
        if key in data and not isinstance(data[key], str):
            return f"{key}: expected text, got {quote(data[key], 40)}"
    instances = data.get("instances")
    if not isinstance(instances, dict):
        return f"instances: expected an object of instance id -> instance, got {quote(instances, 40)}"
    for key, info in instances.items():
        if valid_id(key) is None:
            return f"instances: {quote(key, 30)} is not an instance id"
        if not isinstance(info, dict):
            return f"instances.{key}: expected an object, got {quote(info, 40)}"
        for name, ok, what in (
            ("label", lambda v: isinstance(v, str) and v.startswith(f"{label}-"), f"text starting {label}-"),
            ("gpu", lambda v: isinstance(v, str), "text"),
            ("num_gpus", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a GPU count"),
            ("dph", lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e6, "a price"),
        ):
            if not ok(info.get(name)):
                return f"instances.{key}.{name}: expected {what}, got {quote(info.get(name), 40)}"
        if "owner" in info and not isinstance(info["owner"], str):
            return f"instances.{key}.owner: expected text, got {quote(info['owner'], 40)}"
    return None


class LaunchState:
    """launch.json: what was rented, for which study; written after every change."""

    def __init__(self, out: Path, data: dict[str, Any]):
        self.out, self.data = Path(out), data

    @classmethod
    def load(cls, out: Path) -> LaunchState:
        """launch.json, checked: one line naming it and the key where it is not what `up` writes."""
        path = Path(out) / STATE_FILE
        if not path.is_file():
            raise UserInputError(f"{out}: not a launch directory (no {STATE_FILE}); give the --out of `vast up`")
        if path.stat().st_size > MAX_STATE_BYTES:
            raise UserInputError(f"{path}: not a launch state (larger than {MAX_STATE_BYTES // 2**20} MiB)")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=no_json_constant)
        except UnicodeDecodeError:
            raise UserInputError(f"{path}: not a launch state (not UTF-8 text)") from None
        except (ValueError, RecursionError):
            raise UserInputError(f"{path}: not valid JSON (cut short or edited?); `vast up` writes it whole") from None
        problem = _state_problem(data)
        if problem:
            raise UserInputError(f"{path}: {problem}")
        return cls(out, data)

    def save(self) -> None:
        tmp = self.out / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.out / STATE_FILE)

    @property
    def instances(self) -> dict[int, dict[str, Any]]:
        return {int(k): v for k, v in self.data["instances"].items()}
