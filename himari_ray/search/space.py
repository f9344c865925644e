"""Search-space files: the whole space's schema (validated before anything starts: its sections' models are
in sections.py, the checks that tie them together and bound their numbers here), bundled spaces, loading with
one-line errors."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from himari_ray.data.dataset import DataSpec, load_dataset
from himari_ray.env.coordinates import BREAKEVEN_NAMES, BREAKEVEN_PREFIX, COORDINATE_PARAMS, coordinate_problem
from himari_ray.env.preflight import PreflightConfig
from himari_ray.env.rewards import REWARD_FAMILIES, RewardConfig, param_problem, searched_scale_problem
from himari_ray.env.trading import EnvConfig
from himari_ray.rl.config import ROUTES, EvalConfig, ObjectiveConfig, RobustConfig, TrainConfig, TrialConfig
from himari_ray.rl.model import MODEL_PRESETS, ModelConfig
from himari_ray.search.sections import (
    ENV_SECTION_SOURCES,
    Budget,
    CollapseSettings,
    EnvSettings,
    ParamRange,
    Resources,
    SchedulerSettings,
)
from himari_ray.types import MAX_SEED, StrictModel, UserInputError

#: Keys of older space files and where each now lives: refused with this hint, never silently dropped.
MOVED_KEYS = {
    "targets": "eval.bands",
    "fee": "eval.fee",
    "leak_alarm": "eval.leak_alarm (hit_rate is gone: the alarm now tests significance, see docs/SCORING.md)",
}

#: Upper bounds on the numbers of a space whose models live in other modules (the environment's, the reward's,
#: the model's, the data's, the preflight's and the leak alarm's configs keep their own lower bounds): a space
#: key -> (the largest sane value, why). Checked on the value a space sets and on both ends (and every choice)
#: of a range that searches it.
SPACE_LIMITS: dict[str, tuple[float, str]] = {
    "env.context_len": (4_096, "attention costs grow with its square; 4,096 hourly bars is half a year"),
    "env.episode_len": (1_000_000, "more decisions than a century of hourly bars holds"),
    "env.trailing_window": (100_000, "a sigma window of 11 years of hourly bars is the train split's own sigma"),
    "model.d_model": (4_096, "16 times the production width; past it a trial outgrows one GPU"),
    "model.n_heads": (64, "heads of at least 64 dimensions at the widest model"),
    "model.n_layers": (64, "21 times the production depth"),
    "model.ffn_dim": (16_384, "4 times the widest model's width"),
    "model.head_hidden": (4_096, "the widest model's width"),
    "data.n_bars": (1_000_000, "the synthetic market is built in memory: 114 years of hourly bars"),
    "data.seed": (MAX_SEED, "numpy takes 32-bit seeds"),
    "data.folds": (20, "past 20 a fold's validation window is a few hundred bars"),
    "preflight.holding_bars": (10_000, "a position held over a year of hourly bars is buy-and-hold"),
    "eval.leak_alarm.min_trades": (1_000_000, "more traded bars than any validation split holds"),
    "eval.leak_alarm.ridge": (1e6, "a penalty that flattens the baseline to its intercept"),
}
#: Largest magnitude of a reward parameter (fixed, or either end of a searched range): rewards are float32 in
#: the env and the learner; costs and scales are O(1) to O(100) in every family (reward_scale 100), so a value
#: past 1e6 is a typo (1e300 overflows float32 to inf and every advantage to NaN).
REWARD_PARAM_LIMIT = 1e6


def _shown(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def _limit_problem(key: str, value: Any, limit: float | None = None, why: str = "") -> str | None:
    """Why a number set or searched at `key` is out of its sane bound (None where it is not, or not a number)."""
    if limit is None:
        if key not in SPACE_LIMITS:
            return None
        limit, why = SPACE_LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) <= limit:
        return None
    return f"{_shown(value)} is beyond {'+-' if value < 0 else ''}{_shown(limit)} ({why})"


def _dotted(model: BaseModel, key: str) -> Any:
    node: Any = model
    for part in key.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


class SearchSpace(StrictModel):
    """A search-space file (search_spaces/*.yaml)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64, description="Study name (64 characters at most).")
    # <= 500 characters: a line or two for tables and the study's attributes, not a document.
    description: str = Field("", max_length=500, description="What this space is for (500 characters at most).")
    family: str = Field(description="Reward family (see himari_ray.env.rewards.REWARD_FAMILIES).")
    fixed: dict[str, float] = Field(default_factory=dict, description="Reward parameters held fixed.")
    search: dict[str, ParamRange] = Field(description="Searched parameters: reward parameters or PPO settings.")
    coordinates: Literal["native", "breakeven"] = Field(
        "native",
        description="breakeven: search breakeven_<REGIME> (the p* each regime's cost implies) instead of the "
        "family's per-regime costs, inverted at trial time (himari_ray/env/coordinates.py).",
    )
    data: DataSpec = Field(default_factory=DataSpec, description="Dataset.")
    env: EnvSettings = Field(default_factory=EnvSettings, description="Environment.")
    model: Literal["production", "tiny"] | ModelConfig = Field(
        "tiny", union_mode="left_to_right", description="Preset name (MODEL_PRESETS) or sizes."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _sizes_or_preset(cls, v: Any) -> Any:
        # Sizes are checked as sizes: an error names the size at fault, not the presets a dict is not.
        return ModelConfig.model_validate(v) if isinstance(v, dict) else v

    train: TrainConfig = Field(default_factory=TrainConfig, description="PPO settings.")
    budget: Budget = Field(default_factory=Budget, description="Trials and concurrency.")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings, description="ASHA settings.")
    collapse: CollapseSettings = Field(default_factory=CollapseSettings, description="Collapse stopper.")
    resources: Resources = Field(default_factory=Resources, description="Per-trial resources.")
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description="What is optimised.")
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="How each policy is scored: bands, fee, profit constraint, leak alarm."
    )
    robust: RobustConfig = Field(default_factory=RobustConfig, description="Seeds and walk-forward folds per trial.")
    preflight: PreflightConfig = Field(
        default_factory=PreflightConfig, description="Skip configurations whose reward landscape rules out the bands."
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_moved_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for key, where in MOVED_KEYS.items():
                if key in raw:
                    raise ValueError(f"{key}: moved; write it as {where}")
            if isinstance(raw.get("objective"), dict) and "min_val_net_return" in raw["objective"]:
                raise ValueError("objective.min_val_net_return: moved; write it as eval.min_net_return")
        return raw

    @model_validator(mode="after")
    def _names_match_family(self) -> SearchSpace:
        if self.family not in REWARD_FAMILIES:
            raise ValueError(
                f"family: unknown reward family {self.family!r}; expected one of {sorted(REWARD_FAMILIES)}"
            )
        fam = REWARD_FAMILIES[self.family]
        allowed = sorted(fam.defaults) + list(ROUTES)
        if self.coordinates == "breakeven":
            allowed += list(BREAKEVEN_NAMES)
            _check_breakeven(self)
        elif any(k.startswith(BREAKEVEN_PREFIX) for k in self.search):
            key = next(k for k in self.search if k.startswith(BREAKEVEN_PREFIX))
            raise ValueError(f"search.{key}: break-even coordinates need `coordinates: breakeven`")
        population = self.scheduler.kind in ("pbt", "pb2")
        for key, value in self.fixed.items():
            problem = param_problem(self.family, key, value)
            if problem:
                raise ValueError(f"fixed.{key}: {problem}")
        for key, rng in self.search.items():
            if key not in allowed:
                raise ValueError(f"search.{key}: unknown parameter for family {self.family}; expected one of {allowed}")
            if key == "reward_scale":
                raise ValueError(f"search.reward_scale: {searched_scale_problem(self.family)}")
            if key in self.fixed:
                raise ValueError(f"search.{key}: also set in fixed; a parameter is either searched or fixed")
            if rng.low is not None:
                problem = param_problem(self.family, key, rng.low) if key in fam.defaults else None
                if problem or (key in ("entropy_coeff", "lr") and rng.low < 0):
                    raise ValueError(f"search.{key}.low: {problem or f'must be >= 0, got {rng.low}'}")
            for other, values in (rng.when or {}).items():
                target = self.search.get(other)
                if target is None or target.choices is None or target.when is not None:
                    raise ValueError(
                        f"search.{key}.when: {other!r} must be a searched parameter with choices (and no when)"
                    )
                if not set(values) <= set(target.choices):
                    raise ValueError(f"search.{key}.when.{other}: {values} not among its choices {target.choices}")
        if population and any(r.when for r in self.search.values()):
            raise ValueError(f"scheduler.kind: {self.scheduler.kind} cannot search conditional (when) parameters")
        for key in self.scheduler.mutate:
            if key not in self.search:
                raise ValueError(f"scheduler.mutate: {key!r} is not a searched parameter")
        if population and self.objective.mode != "single":
            raise ValueError(
                f"scheduler.kind: {self.scheduler.kind} optimises one metric; it cannot run objective.mode {self.objective.mode}"
            )
        if population and not self.scheduler.mutate:
            raise ValueError(f"scheduler.mutate: {self.scheduler.kind} needs at least one parameter to mutate")
        if self.scheduler.kind == "pb2":
            for key in self.scheduler.mutate:
                if self.search[key].choices is not None or self.search[key].integer:
                    raise ValueError(f"scheduler.mutate: pb2 mutates continuous ranges only; {key!r} is not one")
        return self

    @model_validator(mode="after")
    def _within_limits(self) -> SearchSpace:
        """Every number of the space within its sane bound: the sections whose models live elsewhere
        (`SPACE_LIMITS`), the reward's parameters (`REWARD_PARAM_LIMIT`), and the settings counted in
        iterations against `train.iterations`. A searched value is held to the bound of the value it sets."""
        for key in SPACE_LIMITS:
            problem = _limit_problem(key, _dotted(self, key))
            if problem:
                raise ValueError(f"{key}: {problem}")
        params = REWARD_FAMILIES[self.family].defaults
        why = "a reward parameter past that overflows the float32 rewards"
        for key, value in self.fixed.items():
            problem = _limit_problem(key, value, REWARD_PARAM_LIMIT, why)
            if problem:
                raise ValueError(f"fixed.{key}: {problem}")
        for key, rng in self.search.items():
            where = f"env.{key}" if key in ENV_SECTION_SOURCES else None
            ends = {"low": rng.low, "high": rng.high} if rng.choices is None else dict(enumerate(rng.choices))
            for end, value in ends.items():
                if key in params:
                    problem = _limit_problem(key, value, REWARD_PARAM_LIMIT, why)
                else:
                    problem = _limit_problem(where, value) if where else None
                if problem:
                    label = f"search.{key}.{end}" if rng.choices is None else f"search.{key}.choices[{end}]"
                    raise ValueError(f"{label}: {problem}")
        iterations = self.train.iterations
        if self.scheduler.kind == "asha" and self.scheduler.grace_period > iterations:
            raise ValueError(
                f"scheduler.grace_period: {self.scheduler.grace_period} exceeds train.iterations {iterations} "
                "(ASHA could never stop a trial)"
            )
        if self.scheduler.kind != "asha" and self.scheduler.perturbation_interval > iterations:
            raise ValueError(
                f"scheduler.perturbation_interval: {self.scheduler.perturbation_interval} exceeds train.iterations "
                f"{iterations} ({self.scheduler.kind} would never perturb a trial)"
            )
        return self

    def check_probes(self) -> None:
        """Every choice and both bounds of every range must make a valid trial (e.g. a trailing window too
        short, an unknown position mode): found now, not in the middle of a search."""
        base = self.trial_config()
        for key, rng in self.search.items():
            for value in rng.probes():
                try:
                    base.with_params({key: value})
                except ValidationError as err:
                    first = err.errors()[0]
                    raise UserInputError(
                        f"search.{key}: value {value!r}: {first['msg'].removeprefix('Value error, ')}"
                    ) from None

    def trial_config(self) -> TrialConfig:
        """The base configuration every trial starts from (searched values are overlaid per trial)."""
        model = MODEL_PRESETS[self.model] if isinstance(self.model, str) else self.model
        section = self.env.model_dump()
        by_config = {
            cls: {k: section[k] for k, c in ENV_SECTION_SOURCES.items() if c is cls}
            for cls in (EnvConfig, RewardConfig)
        }
        reward = RewardConfig(family=self.family, params=self.fixed, **by_config[RewardConfig])
        env = EnvConfig(data=self.data, reward=reward, **by_config[EnvConfig])
        return TrialConfig(
            env=env,
            model=model,
            train=self.train,
            eval=self.eval,
            objective=self.objective,
            preflight=self.preflight,
            robust=self.robust,
        )


def _check_breakeven(space: SearchSpace) -> None:
    """`coordinates: breakeven`: a family with per-regime costs, every regime's p* searched inside (0, 1), and
    the costs the coordinates set neither searched nor fixed."""
    problem = coordinate_problem(space.family)
    if problem:
        raise ValueError(f"coordinates: {problem}")
    for name in BREAKEVEN_NAMES:
        rng = space.search.get(name)
        if rng is None:
            raise ValueError(f"search.{name}: missing; coordinates: breakeven searches every regime's p*")
        if rng.choices is not None or rng.integer or not (rng.low > 0.0 and rng.high < 1.0):
            raise ValueError(
                f"search.{name}: a break-even skill is a range inside (0, 1), e.g. {{low: 0.51, high: 0.59}}"
            )
    for regime, param in COORDINATE_PARAMS[space.family].items():
        for where in ("search", "fixed"):
            if param in getattr(space, where):
                raise ValueError(f"{where}.{param}: set by coordinates: breakeven (from breakeven_{regime})")


def bundled_spaces() -> dict[str, Path]:
    """Space files shipped with the package (the top-level search_spaces/ directory)."""
    root = resources.files("himari_ray.spaces")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_space_path(arg: str) -> Path:
    """A path to a space file, or the name of a bundled one (`smoke`, `adaptive`)."""
    path = Path(arg)
    if path.is_file():
        return path
    bundled = bundled_spaces()
    if arg in bundled or (path.stem in bundled and not path.parent.parts):
        return bundled[path.stem]
    raise UserInputError(f"{arg}: no such space file (bundled spaces: {', '.join(sorted(bundled))})")


def _format_validation_error(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (misspelled?)"
    return f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}"


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently,
    so a space could search one range and show another)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_space(arg: str) -> tuple[SearchSpace, Path]:
    """Read and validate a space file; any problem is one `UserInputError` naming the file and key."""
    path = resolve_space_path(arg)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError:
        raise UserInputError(f"{path}: not a text (UTF-8) file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"{path}: cannot read YAML: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: expected a mapping of keys at the top level")
    try:
        space = SearchSpace.model_validate(raw)
        space.trial_config()
    except ValidationError as err:
        raise UserInputError(_format_validation_error(path, err)) from None
    try:
        space.check_probes()
    except UserInputError as err:
        raise UserInputError(f"{path}: {err}") from None
    return space, path


def with_dataset(space: SearchSpace, path: Path) -> SearchSpace:
    """The space trained on a dataset directory instead of its own data (checked now, before anything starts)."""
    spec = DataSpec(source="dataset", path=str(Path(path).resolve()))
    ds = load_dataset(spec)
    c = space.env.context_len
    for split in ("train", "val"):
        if len(ds.split(split)) <= c + 1:
            raise UserInputError(f"{path}: {split} split has {len(ds.split(split))} bars; context_len {c} needs more")
    return space.model_copy(update={"data": spec})


def ordered_search(space: SearchSpace) -> list[tuple[str, ParamRange]]:
    """Unconditional parameters first, so a `when` always sees the value it depends on."""
    return sorted(space.search.items(), key=lambda kv: kv[1].when is not None)
