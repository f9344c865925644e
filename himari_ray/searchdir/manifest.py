"""The search directory's paths and manifest (`search.json`), its trials' checkpoints, and confirm's record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from himari_ray.schema import BEST_ITERATION
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
