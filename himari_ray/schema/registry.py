"""The schema's machinery: a report key's declaration (`Field`, `key`), the registry every key lands in, and
reading a report through it (absent keys read as absent, values shown by unit). The keys themselves are
declared in `himari_ray.schema`; nothing here knows any of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    """One report key: its name, Python type, unit, one-line meaning and the value it reads as when absent."""

    name: str
    kind: type
    doc: str
    #: `%` (0-100), `pp` (percentage points), `fraction` (0-1, shown as %), `s`, ... or empty (a plain number).
    unit: str = ""
    #: Who writes it: `himari` (our trainable) or `tune` (Tune's bookkeeping).
    source: str = "himari"
    #: Its column header in tables (the key itself where empty).
    label: str = ""
    #: Where it is shown: `ANALYZE`, `CONFIRM`, `STUDY` (see the module docstring).
    views: tuple[str, ...] = ()

    @property
    def absent(self) -> Any:
        """What a reader sees for a report that lacks the key: NaN for numbers, False for flags, "" for text."""
        if self.kind in (float, int):
            return math.nan
        if self.kind is bool:
            return False
        if self.kind is str:
            return ""
        return None


#: Every registered key, in registration order.
FIELDS: dict[str, Field] = {}


#: Views: where a key is shown (`Field.views`).
ANALYZE, CONFIRM, STUDY = "analyze", "confirm", "study"


def key(
    name: str,
    kind: type,
    doc: str,
    unit: str = "",
    source: str = "himari",
    label: str = "",
    views: tuple[str, ...] = (),
) -> str:
    """Register a report key and return its name (a plain string: dicts, JSON and Tune see nothing new)."""
    if name in FIELDS:
        raise ValueError(f"report key {name!r} registered twice")
    FIELDS[name] = Field(name, kind, doc, unit, source, label, views)
    return name


def value(report: Mapping[str, Any], name: str) -> Any:
    """`report[name]`, or the key's absent value (NaN for an unknown key) when the report lacks it."""
    if name in report and report[name] is not None:
        return report[name]
    f = FIELDS.get(name)
    return f.absent if f is not None else math.nan


def number(report: Mapping[str, Any], name: str) -> float:
    """A numeric key as a float; NaN when absent or not a number (text where a number belongs)."""
    v = value(report, name)
    if isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def read_report(raw: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """A report with every registered key (or `keys`) present: missing ones read as absent. Extra keys
    (another version's, or Tune's) pass through untouched."""
    out = dict(raw)
    for name in FIELDS if keys is None else keys:
        if out.get(name) is None:
            out[name] = value(raw, name)
    return out


def shown(view: str) -> tuple[str, ...]:
    """The keys shown in `view` (`ANALYZE`, `CONFIRM`, `STUDY`), in registration order."""
    return tuple(name for name, f in FIELDS.items() if view in f.views)


def label(name: str) -> str:
    """A key's column header: its label, else the key itself."""
    f = FIELDS.get(name)
    return f.label if f is not None and f.label else name


def display(name: str, v: Any) -> str:
    """A value of key `name` as tables show it, by the key's unit: `%`/`pp` with one decimal, a `fraction`
    as a percentage with one decimal, a flag as yes/no, any other number with two decimals; "-" when absent."""
    f = FIELDS.get(name)
    unit = f.unit if f is not None else ""
    if isinstance(v, bool) or (f is not None and f.kind is bool):
        return "yes" if v else "no"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "-" if v is None else str(v)
    if math.isnan(x):
        return "-"
    if unit == "fraction":
        return f"{100 * x:.1f}"
    if unit == "p":
        return f"{x:.3f}"
    if unit in ("%", "pp"):
        return f"{x:.1f}"
    return f"{x:.2f}"


def describe() -> str:
    """The schema as a table: key, type, unit, meaning (for documentation and `--help`)."""
    rows = [(f.name, f.kind.__name__, f.unit, f.doc) for f in FIELDS.values()]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{n:<{width}}  {k:<5}  {u:<9}  {d}" for n, k, u, d in rows)
