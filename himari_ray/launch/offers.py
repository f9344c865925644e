"""Which Vast.ai offers a launch may rent: a typed filter, its one-line parser, the API query it becomes,
and a second check of every offer the API returns (we never rent above the user's price because a server
ignored a field)."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from himari_ray.types import UserInputError

#: GPU models as Vast names them (`gpu_name`); users may write RTX_4090 or rtx 4090.
KNOWN_GPUS = (
    "RTX 3060", "RTX 3070", "RTX 3080", "RTX 3090", "RTX 3090 Ti", "RTX 4060 Ti", "RTX 4070", "RTX 4070 Ti",
    "RTX 4080", "RTX 4090", "RTX 5090", "RTX A4000", "RTX A5000", "RTX A6000", "RTX 4000Ada", "RTX 5000Ada",
    "RTX 6000Ada", "A10", "A40", "A100 PCIE", "A100 SXM4", "A100X", "H100 PCIE", "H100 SXM", "H100 NVL",
    "H200", "H200 NVL", "GH200 SXM", "B200", "L4", "L40", "L40S", "Tesla T4", "Tesla V100", "Q RTX 8000",
)  # fmt: skip


class OfferFilter(BaseModel):
    """What an offer must have to be rented."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_name: str | None = Field(None, description="GPU model as Vast names it (None: any).")
    min_gpus: int = Field(1, ge=1, description="Fewest GPUs in one instance.")
    max_gpus: int | None = Field(None, ge=1, description="Most GPUs in one instance (None: no limit).")
    max_dph: float | None = Field(None, gt=0, description="Highest total price in dollars per hour (None: any).")
    min_reliability: float = Field(0.95, ge=0, le=1, description="Lowest host reliability Vast reports (0-1).")
    min_disk_gb: float = Field(30.0, gt=0, description="Smallest free disk in GB (also what is rented).")
    min_gpu_ram_gb: float | None = Field(None, gt=0, description="Least memory per GPU in GB (None: any).")


def gpu_name(text: str, flag: str = "--gpu") -> str:
    """Vast's spelling of a GPU model, or one line listing the known ones."""
    wanted = re.sub(r"[\s_]+", " ", text.strip()).lower()
    for name in KNOWN_GPUS:
        if name.lower() == wanted:
            return name
    raise UserInputError(
        f"{flag} {text!r}: unknown GPU model; known: {', '.join(n.replace(' ', '_') for n in KNOWN_GPUS)}"
    )


# filter field -> (OfferFilter field for >= / =, for <=)
_FIELDS = {
    "gpu_name": ("gpu_name", None),
    "num_gpus": ("min_gpus", "max_gpus"),
    "dph": (None, "max_dph"),
    "reliability": ("min_reliability", None),
    "disk": ("min_disk_gb", None),
    "gpu_ram": ("min_gpu_ram_gb", None),
}
_ALIASES = {"gpu": "gpu_name", "gpus": "num_gpus", "price": "dph", "dph_total": "dph", "disk_space": "disk"}
_TOKEN = re.compile(r"^([a-z_]+)\s*(>=|<=|==|=)\s*(\S+)$")


def parse_filter(text: str, base: OfferFilter | None = None, flag: str = "--filter") -> OfferFilter:
    """`gpu=RTX_4090 num_gpus>=2 dph<=1.5 reliability>=0.98 disk>=50 gpu_ram>=24` on top of `base`."""
    values: dict[str, Any] = dict((base or OfferFilter()).model_dump(exclude_unset=True))
    for token in re.findall(r"[a-z_]+\s*(?:>=|<=|==|=)\s*\S+|\S+", text.strip()):
        m = _TOKEN.match(token)
        if not m:
            raise UserInputError(f"{flag} {text!r}: cannot read {token!r}; expected FIELD OP VALUE, e.g. dph<=1.5")
        key, op, raw = m.group(1), m.group(2), m.group(3)
        key = _ALIASES.get(key, key)
        if key not in _FIELDS:
            raise UserInputError(f"{flag} {text!r}: unknown field {key!r}; known: {', '.join(_FIELDS)}")
        low, high = _FIELDS[key]
        if key == "gpu_name":
            if op not in ("=", "=="):
                raise UserInputError(f"{flag} {text!r}: gpu_name takes =, not {op}")
            values["gpu_name"] = gpu_name(raw, flag=f"{flag} gpu_name")
            continue
        try:
            number = float(raw)
        except ValueError:
            raise UserInputError(f"{flag} {text!r}: {key} needs a number, got {raw!r}") from None
        if key == "num_gpus":
            if number != int(number):
                raise UserInputError(f"{flag} {text!r}: num_gpus needs a whole number, got {raw!r}")
            number = int(number)
        targets = {">=": [low], "<=": [high], "=": [low, high], "==": [low, high]}[op]
        if None in targets:
            raise UserInputError(f"{flag} {text!r}: {key} takes {'<=' if high else '>='}, not {op}")
        for t in targets:
            values[t] = number
    try:
        return OfferFilter(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserInputError(f"{flag} {text!r}: {first['loc'][0]}: {first['msg']}") from None


def vast_query(f: OfferFilter, limit: int = 64) -> dict[str, Any]:
    """The JSON query Vast's /bundles/ endpoint takes, cheapest first."""
    q: dict[str, Any] = {
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "verified": {"eq": True},
        "num_gpus": {"gte": f.min_gpus, **({"lte": f.max_gpus} if f.max_gpus else {})},
        "reliability2": {"gte": f.min_reliability},
        "disk_space": {"gte": f.min_disk_gb},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "limit": limit,
    }
    if f.gpu_name:
        q["gpu_name"] = {"eq": f.gpu_name}
    if f.max_dph:
        q["dph_total"] = {"lte": f.max_dph}
    if f.min_gpu_ram_gb:
        q["gpu_ram"] = {"gte": f.min_gpu_ram_gb * 1024}  # Vast reports MB
    return q


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def offer_problem(offer: Any, f: OfferFilter) -> str | None:
    """Why an offer Vast returned cannot be checked against `f` (or rented), in a few words; None when it can.
    Each field the second check or the launch reads must be there with the right type: an offer without a
    price is never rented at "no price"."""
    from himari_ray.types import valid_id

    if not isinstance(offer, dict):
        return "not a JSON object"
    if valid_id(offer.get("id")) is None or isinstance(offer.get("id"), str):
        return "missing id" if "id" not in offer else "id not an offer id"
    if not isinstance(offer.get("gpu_name"), str):
        return "missing gpu_name" if "gpu_name" not in offer else "gpu_name not text"
    n = offer.get("num_gpus")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return "missing num_gpus" if n is None else "num_gpus not a whole number"
    reliability = "reliability2" if "reliability2" in offer else "reliability"
    needed = ["dph_total", reliability, "disk_space"] + (["gpu_ram"] if f.min_gpu_ram_gb else [])
    for name in needed:
        if name not in offer:
            return f"missing {name}"
        if not _number(offer[name]):
            return f"{name} not a number"
    return None


def usable_offers(offers: list[Any], f: OfferFilter) -> tuple[list[dict[str, Any]], str]:
    """The offers that can be checked against `f`, and a note on the others ("" if none).

    Offers Vast returns with a field missing or mistyped are never rented, since the filter cannot be
    checked on them (a missing price is not a low price). They are not dropped silently either: the note
    counts them by reason ("skipped 3 of 7 offers Vast returned: 2 missing gpu_name, 1 dph_total not a
    number"), `vast offers` and `vast up` print it, and when no offer at all could be checked the caller
    refuses (a changed API, not an empty market), which is what a user reading "no offer matches" would
    otherwise be misled by."""
    usable, why = [], Counter[str]()
    for offer in offers:
        problem = offer_problem(offer, f)
        if problem is None:
            usable.append(offer)
        else:
            why[problem] += 1
    if not why:
        return usable, ""
    reasons = ", ".join(f"{n} {problem}" for problem, n in why.most_common(4))
    if len(why) > 4:
        reasons += f", {sum(n for _, n in why.most_common()[4:])} other"
    return usable, f"skipped {sum(why.values())} of {len(offers)} offers Vast returned: {reasons}"


def matches(offer: dict[str, Any], f: OfferFilter) -> bool:
    """The filter checked again on what the API returned (an offer `offer_problem` passed)."""
    n = int(offer.get("num_gpus", 0))
    return (
        (f.gpu_name is None or offer.get("gpu_name") == f.gpu_name)
        and n >= f.min_gpus
        and (f.max_gpus is None or n <= f.max_gpus)
        and (f.max_dph is None or float(offer.get("dph_total", float("inf"))) <= f.max_dph)
        and float(offer.get("reliability2", offer.get("reliability", 0.0))) >= f.min_reliability
        and float(offer.get("disk_space", 0.0)) >= f.min_disk_gb
        and (f.min_gpu_ram_gb is None or float(offer.get("gpu_ram", 0.0)) >= f.min_gpu_ram_gb * 1024)
    )


def _shown(text: str, limit: int) -> str:
    """Server text fit for a terminal's table: no control characters (an escape sequence would run), one line,
    at most `limit` characters."""
    return " ".join("".join(c if c.isprintable() else "?" for c in text).split())[:limit]


def format_offers(offers: list[dict[str, Any]]) -> str:
    if not offers:
        return "no offer matches"
    lines = [f"{'offer':>10} {'gpu':14} {'n':>2} {'$/hour':>7} {'reliab.':>7} {'disk GB':>7}  location"]
    for o in offers:
        lines.append(
            f"{o['id']:>10} {_shown(o['gpu_name'], 14):14} {o['num_gpus']:>2} {float(o['dph_total']):7.3f}"
            f" {float(o.get('reliability2', o.get('reliability', 0))):7.3f} {float(o['disk_space']):7.0f}"
            f"  {_shown(str(o.get('geolocation') or ''), 40)}"
        )
    return "\n".join(lines)
