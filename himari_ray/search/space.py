"""Search spaces (validated before anything starts) and the Tune + Optuna search over them."""

from __future__ import annotations

import json
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from himari_ray.data.dataset import DataSpec, load_dataset
from himari_ray.env.preflight import CONTESTED, PreflightConfig, RegimePreflight, preflight
from himari_ray.env.rewards import REWARD_FAMILIES, RewardConfig, param_problem
from himari_ray.env.trading import EnvConfig
from himari_ray.rl.model import MODEL_PRESETS, ModelConfig
from himari_ray.rl.training import ENV_PARAMS, TRAIN_PARAMS, EvalConfig, RobustConfig, TrainConfig, TrialConfig
from himari_ray.types import REGIME_NAMES, UserInputError, trial_number

#: The scalar the single-objective search minimises (band distance, Sharpe tie-break, profit constraint).
OBJECTIVE = "objective"
#: The multi-objective search's metrics and directions.
MULTI_OBJECTIVE = (["band_distance", "val_sharpe"], ["min", "max"])


class ParamRange(BaseModel):
    """A searched parameter: a numeric range, or a list of choices; optionally searched only `when` another
    (categorical) parameter takes one of the listed values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: float | None = Field(None, description="Lower bound (inclusive).")
    high: float | None = Field(None, description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    integer: bool = Field(False, description="Sample whole numbers.")
    choices: list[str | float] | None = Field(None, description="Categorical values instead of a range.")
    when: dict[str, list[str | float]] | None = Field(
        None, description="Search this parameter only when each named parameter takes one of these values."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ParamRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.integer:
                raise ValueError("choices exclude low, high, log and integer")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or use choices)")
        if not self.low < self.high:
            raise ValueError(f"inverted or empty range: low {self.low} must be < high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        return self

    def probes(self) -> list[Any]:
        """Values that exercise the extremes: every choice, or both bounds."""
        if self.choices is not None:
            return list(self.choices)
        lo, hi = (int(self.low), int(self.high)) if self.integer else (self.low, self.high)
        return [lo, hi]

    def active(self, params: dict[str, Any]) -> bool:
        return self.when is None or all(params.get(k) in values for k, values in self.when.items())


class EnvSettings(BaseModel):
    """Environment settings of a space (the reward family and parameters are top-level keys)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context_len: int = Field(100, ge=1, description="Bars per observation window.")
    episode_len: int | None = Field(512, ge=1, description="Decisions per training episode.")
    position_mode: Literal["per_bar", "carried"] = Field("per_bar", description="How trades are counted.")
    norm_stats: Literal["train", "trailing"] = Field("train", description="Where sigma and E come from.")
    trailing_window: int = Field(168, ge=8, description="Bars in a trailing sigma window.")


class Budget(BaseModel):
    """How much to search."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trials: int = Field(8, ge=1, description="Number of trials (configurations) to run.")
    max_concurrent: int = Field(2, ge=1, description="Trials running at once.")
    seed: int = Field(0, ge=0, description="Seed of the Optuna sampler.")


class ObjectiveSettings(BaseModel):
    """What the search optimises."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["single", "multi"] = Field(
        "single", description="single: band distance with Sharpe as tie-break; multi: band distance down, Sharpe up."
    )
    min_val_net_return: float | None = Field(
        None, description="Profit constraint on validation net return (e.g. 0.0); None: no constraint."
    )


class LeakAlarmSettings(BaseModel):
    """When a trial's validation hit rate is too good to be honest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hit_rate: float = Field(0.60, gt=0.5, le=1.0, description="Hit rate on traded val bars that sounds the alarm.")
    min_trades: int = Field(200, ge=1, description="Traded val bars needed before it can sound.")


class SchedulerSettings(BaseModel):
    """ASHA early stopping (default, with the Optuna searcher), or population-based training."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["asha", "pbt", "pb2"] = Field(
        "asha",
        description="asha: Optuna proposes, ASHA stops laggards; pbt: a population mutates in flight; "
        "pb2: PBT whose mutations a Gaussian-process bandit picks (needs scikit-learn: pip install himari-ray[pb2]).",
    )
    grace_period: int = Field(1, ge=1, description="ASHA: iterations before a trial can be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA halving rate.")
    perturbation_interval: int = Field(2, ge=1, description="PBT: iterations between exploit/explore steps.")
    synch: bool = Field(False, description="PBT/PB2: wait for the whole population at each perturbation point.")
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="PBT: share of the population that exploits the top (0.5 for tiny ones)."
    )
    mutate: list[str] = Field(
        default_factory=list, description="PBT: searched parameters it mutates (e.g. entropy_coeff, lr, reward_scale)."
    )


class CollapseSettings(BaseModel):
    """Stop a trial whose policy collapsed to all-HOLD or no-HOLD."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    warmup: int = Field(2, ge=1, description="Iterations before the check applies.")
    hold_high: float = Field(99.0, gt=0, le=100, description="Overall HOLD% above this is a collapse.")
    hold_low: float = Field(1.0, ge=0, lt=100, description="Overall HOLD% below this is a collapse.")


class Resources(BaseModel):
    """What one trial asks Ray for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs for the trial process (sampling + learning).")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPU share of the trial's learner, e.g. 0.25.")


class SearchSpace(BaseModel):
    """A search-space file (search_spaces/*.yaml)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Study name.")
    description: str = Field("", description="What this space is for.")
    family: str = Field(description="Reward family (see himari_ray.rewards.REWARD_FAMILIES).")
    fixed: dict[str, float] = Field(default_factory=dict, description="Reward parameters held fixed.")
    search: dict[str, ParamRange] = Field(description="Searched parameters: reward parameters or PPO settings.")
    data: DataSpec = Field(default_factory=DataSpec, description="Dataset.")
    env: EnvSettings = Field(default_factory=EnvSettings, description="Environment.")
    model: Literal["production", "tiny"] | ModelConfig = Field("tiny", description="Preset name or sizes.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="PPO settings.")
    targets: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(EvalConfig().bands), description="HOLD% band per regime."
    )
    fee: float = Field(0.0004, ge=0, description="Fee per unit position change in validation PnL.")
    budget: Budget = Field(default_factory=Budget, description="Trials and concurrency.")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings, description="ASHA settings.")
    collapse: CollapseSettings = Field(default_factory=CollapseSettings, description="Collapse stopper.")
    resources: Resources = Field(default_factory=Resources, description="Per-trial resources.")
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings, description="What is optimised.")
    leak_alarm: LeakAlarmSettings = Field(default_factory=LeakAlarmSettings, description="Look-ahead leak alarm.")
    robust: RobustConfig = Field(default_factory=RobustConfig, description="Seeds and walk-forward folds per trial.")
    preflight: PreflightConfig = Field(
        default_factory=PreflightConfig, description="Skip configurations whose reward landscape rules out the bands."
    )

    @model_validator(mode="after")
    def _names_match_family(self) -> SearchSpace:
        if self.family not in REWARD_FAMILIES:
            raise ValueError(
                f"family: unknown reward family {self.family!r}; expected one of {sorted(REWARD_FAMILIES)}"
            )
        fam = REWARD_FAMILIES[self.family]
        allowed = sorted(fam.defaults) + list(TRAIN_PARAMS) + list(ENV_PARAMS)
        population = self.scheduler.kind in ("pbt", "pb2")
        for key, value in self.fixed.items():
            problem = param_problem(self.family, key, value)
            if problem:
                raise ValueError(f"fixed.{key}: {problem}")
        for key, rng in self.search.items():
            if key not in allowed:
                raise ValueError(f"search.{key}: unknown parameter for family {self.family}; expected one of {allowed}")
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
        if population and self.objective.mode == "multi":
            raise ValueError(
                f"scheduler.kind: {self.scheduler.kind} optimises one metric; it cannot run objective.mode multi"
            )
        if population and not self.scheduler.mutate:
            raise ValueError(f"scheduler.mutate: {self.scheduler.kind} needs at least one parameter to mutate")
        if self.scheduler.kind == "pb2":
            for key in self.scheduler.mutate:
                if self.search[key].choices is not None or self.search[key].integer:
                    raise ValueError(f"scheduler.mutate: pb2 mutates continuous ranges only; {key!r} is not one")
        for regime in self.targets:
            if regime not in REGIME_NAMES:
                raise ValueError(f"targets.{regime}: unknown regime; expected one of {list(REGIME_NAMES)}")
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
        reward = RewardConfig(
            family=self.family,
            params=self.fixed,
            norm_stats=self.env.norm_stats,
            trailing_window=self.env.trailing_window,
        )
        env = EnvConfig(
            data=self.data,
            context_len=self.env.context_len,
            episode_len=self.env.episode_len,
            position_mode=self.env.position_mode,
            reward=reward,
        )
        return TrialConfig(
            env=env,
            model=model,
            train=self.train,
            eval=EvalConfig(
                bands=self.targets,
                fee=self.fee,
                leak_hit_rate=self.leak_alarm.hit_rate,
                leak_min_trades=self.leak_alarm.min_trades,
                min_net_return=self.objective.min_val_net_return,
            ),
            preflight=self.preflight,
            robust=self.robust,
        )


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


def load_space(arg: str) -> tuple[SearchSpace, Path]:
    """Read and validate a space file; any problem is one `UserInputError` naming the file and key."""
    path = resolve_space_path(arg)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"{path}: cannot read YAML: {str(exc).splitlines()[0]}") from None
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


def _ordered_search(space: SearchSpace) -> list[tuple[str, ParamRange]]:
    """Unconditional parameters first, so a `when` always sees the value it depends on."""
    return sorted(space.search.items(), key=lambda kv: kv[1].when is not None)


def sample_landscape_params(space: SearchSpace, n: int, seed: int) -> list[dict[str, Any]]:
    """n uniform (log-uniform where the space says log) draws of every searched parameter that shapes the
    reward landscape (PPO settings are left out), honouring `when` conditions."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        point: dict[str, Any] = {}
        for k, r in _ordered_search(space):
            u = rng.random()
            if not r.active(point):
                continue
            if r.choices is not None:
                point[k] = r.choices[int(u * len(r.choices))]
                continue
            value = float(np.exp(np.log(r.low) + u * np.log(r.high / r.low))) if r.log else r.low + u * (r.high - r.low)
            point[k] = round(value) if r.integer else value
        draws.append({k: v for k, v in point.items() if k not in TRAIN_PARAMS})
    return draws


def preflight_space(
    space: SearchSpace, n: int, seed: int
) -> tuple[list[RegimePreflight], dict[str, dict[str, float]], float]:
    """The seed-value table, and over n sampled configurations: the share of each verdict per regime (percent)
    and the share contested in all four regimes."""
    base = space.trial_config()
    dataset = load_dataset(base.env.data)
    seed_table = preflight(dataset, base.env, space.preflight)
    shares: dict[str, dict[str, float]] = {}
    all_contested = 0
    for params in sample_landscape_params(space, n, seed):
        results = preflight(dataset, base.with_params(params).env, space.preflight)
        all_contested += all(r.verdict == CONTESTED for r in results)
        for r in results:
            row = shares.setdefault(r.regime, {})
            row[r.verdict] = row.get(r.verdict, 0.0) + 100.0 / n
    return seed_table, shares, (100.0 * all_contested / n if n else float("nan"))


def tune_distributions(space: SearchSpace, keys: list[str] | None = None) -> dict[str, Any]:
    from ray import tune

    keys = list(space.search) if keys is None else keys
    out = {}
    for k in keys:
        r = space.search[k]
        if r.choices is not None:
            out[k] = tune.choice(r.choices)
        elif r.integer:
            out[k] = (tune.lograndint if r.log else tune.randint)(int(r.low), int(r.high) + 1)
        else:
            out[k] = (tune.loguniform if r.log else tune.uniform)(r.low, r.high)
    return out


def optuna_distributions(space: SearchSpace) -> dict[str, Any]:
    import optuna

    out: dict[str, Any] = {}
    for k, r in space.search.items():
        if r.choices is not None:
            out[k] = optuna.distributions.CategoricalDistribution(r.choices)
        elif r.integer:
            out[k] = optuna.distributions.IntDistribution(int(r.low), int(r.high), log=r.log)
        else:
            out[k] = optuna.distributions.FloatDistribution(r.low, r.high, log=r.log)
    return out


class DefineByRun:
    """Optuna define-by-run space: asks for each parameter whose `when` holds, unconditional ones first.
    A plain class (not a closure) so Tune can pickle the searcher's state for --resume."""

    def __init__(self, space: SearchSpace):
        self.order = [(k, r.model_dump()) for k, r in _ordered_search(space)]

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = {}
        for name, raw in self.order:
            r = ParamRange.model_validate(raw)
            if not r.active(chosen):
                continue
            # Public suggest_* calls: Tune's captor records the config from exactly these.
            if r.choices is not None:
                chosen[name] = trial.suggest_categorical(name, r.choices)
            elif r.integer:
                chosen[name] = trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
            else:
                chosen[name] = trial.suggest_float(name, r.low, r.high, log=r.log)


def objective_spec(space: SearchSpace) -> tuple[str | list[str], str | list[str]]:
    """Metric(s) and direction(s) Optuna optimises for this space."""
    return MULTI_OBJECTIVE if space.objective.mode == "multi" else (OBJECTIVE, "min")


def make_searcher(
    space: SearchSpace,
    seed: int,
    storage: Any | None = None,
    max_concurrent: int | None = None,
    owner: str = "",
):
    """Seeded TPE through Ray Tune's OptunaSearch (optionally persisted), limited in concurrency, telling
    Optuna PRUNED for trials stopped early."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from himari_ray.search.study import PruningOptunaSearch

    metric, mode = objective_spec(space)
    searcher = PruningOptunaSearch(
        space=DefineByRun(space),
        metric=metric,
        mode=mode,
        sampler=optuna.samplers.TPESampler(seed=seed),
        storage=storage,
        study_name=space.name,
        max_iterations=space.train.iterations,
        owner=owner,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent or space.budget.max_concurrent)


def _collapse_stopper(cfg: CollapseSettings):
    from ray import tune

    class CollapseStopper(tune.Stopper):
        """Stops a trial whose overall HOLD% left (hold_low, hold_high) after the warm-up."""

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            if result["training_iteration"] < cfg.warmup:
                return False
            hold = result["hold_pct_ALL"]
            return hold > cfg.hold_high or hold < cfg.hold_low

        def stop_all(self) -> bool:
            return False

    return CollapseStopper()


def format_report(trial_no: int, result: dict[str, Any]) -> str:
    """One line per trial report: per-regime HOLD%, band distance, validation Sharpe."""
    if result["preflight_skipped"]:
        return f"trial {trial_no:3d}  skipped by preflight, not trained: {result['preflight']}"
    holds = " ".join(f"{r}={result[f'hold_pct_{r}']:5.1f}" for r in REGIME_NAMES)
    return (
        f"trial {trial_no:3d}  it {result['training_iteration']:3d}  HOLD% {holds}"
        f"  band {result['band_distance']:6.1f}  sharpe {result['val_sharpe']:6.2f}"
        + ("  LEAK? hit rate {:.0%}".format(result["val_win_rate"]) if result["leak_alarm"] else "")
    )


def _report_printer(stream=sys.stdout):
    from ray import tune

    class ReportPrinter(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            print(format_report(trial_number(trial.experiment_tag), result), file=stream, flush=True)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            print(
                f"trial {trial_number(trial.experiment_tag)} failed: see {trial.local_path}/error.txt",
                file=stream,
                flush=True,
            )

    return ReportPrinter()


def trial_dirname(trial: Any) -> str:
    """Short, sortable trial directories (Tune's default embeds the whole nested config)."""
    return f"trial_{trial_number(trial.experiment_tag):04d}_{trial.trial_id}"


def default_out_dir(space: SearchSpace) -> Path:
    return Path("runs") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_out_dir(out: Path) -> None:
    """Refuse to write into an existing non-empty directory: nothing already on disk is overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"{out}: --out exists and is not empty; choose a new directory")


def default_storage_url(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def _trainable(space: SearchSpace):
    from ray import tune

    from himari_ray.rl.training import train_trial

    members = max(space.robust.folds, 1) * space.robust.seeds  # each member keeps its own env runners
    runners = space.train.num_env_runners * members
    bundles = [{"CPU": space.resources.cpus_per_trial, "GPU": space.resources.gpus_per_trial}] + [
        {"CPU": 1.0}
        for _ in range(runners)  # one bundle per remote env runner
    ]
    return tune.with_resources(train_trial, tune.PlacementGroupFactory(bundles))


def _start_ray(address: str | None) -> None:
    import optuna
    import ray

    # Our one line per report replaces Tune's progress tables and Optuna's per-trial log lines.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return
    if address is not None:
        # Ray 2.60 clusters started with a token require it from every driver (see cluster.yaml).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # a refused join is our one line, not retries
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserInputError(
                f"--address {address}: cannot join the Ray cluster ({str(exc).splitlines()[0]})"
            ) from None
    else:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def run_search(
    space: SearchSpace,
    space_path: Path,
    out: Path,
    trials: int,
    seed: int,
    storage_url: str | None = None,
    address: str | None = None,
) -> Path:
    """Run the search; returns the output directory. Layout: space.yaml, search.json, study.db (unless
    another storage is given), tune/<trial dirs>. Everything is checked before anything is written."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    from himari_ray.search.study import check_compatible, fail_running, open_storage

    check_out_dir(out)
    out = out.resolve()
    url = storage_url or default_storage_url(out)
    _, mode = objective_spec(space)
    if storage_url is not None and space.scheduler.kind != "asha":
        raise UserInputError(
            f"--storage: a {space.scheduler.kind} search draws its own population; it keeps no Optuna study"
        )
    if storage_url is not None:  # an external study: refuse before touching it or the disk
        storage = open_storage(storage_url)
        check_compatible(storage, space.name, optuna_distributions(space), mode if isinstance(mode, list) else [mode])
    out.mkdir(parents=True, exist_ok=True)
    (out / "space.yaml").write_text(space_path.read_text())
    trial_cfg = space.trial_config()
    iterations = trial_cfg.train.iterations
    # What `analyze` and `--resume` need, from files alone.
    manifest = {
        "space": space.name,
        "family": space.family,
        "trials": trials,
        "seed": seed,
        "iterations": iterations,
        "searched": sorted(space.search),
        "collapse": space.collapse.model_dump(),
        "objective": space.objective.model_dump(),
        "robust": space.robust.model_dump(),
        "storage": url if space.scheduler.kind == "asha" else None,
        "data": space.data.model_dump(),
    }
    (out / "search.json").write_text(json.dumps(manifest, indent=2))
    pbt = space.scheduler.kind in ("pbt", "pb2")
    storage = None if pbt else open_storage(url)  # PBT draws its own population: no Optuna study
    _start_ray(address)

    param_space: dict[str, Any] = {"trial": trial_cfg.model_dump(mode="json")}
    if pbt:
        param_space.update(tune_distributions(space))
        search_alg = tune.search.BasicVariantGenerator(random_state=seed)
        common = {
            "time_attr": "training_iteration",
            "metric": OBJECTIVE,
            "mode": "min",
            "perturbation_interval": space.scheduler.perturbation_interval,
            "quantile_fraction": space.scheduler.quantile_fraction,
            "synch": space.scheduler.synch,
        }
        if space.scheduler.kind == "pb2":
            from ray.tune.schedulers.pb2 import PB2

            bounds = {k: [space.search[k].low, space.search[k].high] for k in space.scheduler.mutate}
            scheduler = PB2(hyperparam_bounds=bounds, **common)
        else:
            scheduler = PopulationBasedTraining(
                hyperparam_mutations=tune_distributions(space, space.scheduler.mutate), **common
            )
    else:
        search_alg = make_searcher(space, seed, storage, owner=str(out))
        scheduler = ASHAScheduler(
            metric=OBJECTIVE,
            mode="min",
            time_attr="training_iteration",
            max_t=iterations,
            grace_period=min(space.scheduler.grace_period, iterations),
            reduction_factor=space.scheduler.reduction_factor,
        )
    tuner = tune.Tuner(
        _trainable(space),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=trials,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out),
            stop=_collapse_stopper(space.collapse),
            callbacks=[_report_printer()],
            verbose=0,
            # PBT restores trials from other trials' older checkpoints: keep them all there.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if pbt else 1),
        ),
    )
    tuner.fit()
    if storage is not None:
        fail_running(storage, space.name, str(out))
    return out


def resume_search(out: Path, address: str | None = None) -> Path:
    """Continue a search whose driver died: finished trials stay, unfinished ones continue from their last
    checkpoint, and the total number of trials is the one first asked for."""
    from ray import tune

    from himari_ray.search.study import fail_running, open_storage

    out = Path(out).resolve()
    manifest_path = out / "search.json"
    if not manifest_path.is_file() or not (out / "tune").is_dir() or not (out / "space.yaml").is_file():
        raise UserInputError(f"{out}: not a himari-ray search directory (no search.json, space.yaml and tune/)")
    manifest = json.loads(manifest_path.read_text())
    space, _ = load_space(str(out / "space.yaml"))
    if manifest["data"]["source"] == "dataset":  # a search run with --data: train on that dataset again
        space = space.model_copy(update={"data": DataSpec.model_validate(manifest["data"])})
    if not tune.Tuner.can_restore(str(out / "tune")):
        raise UserInputError(f"{out}: the search has no saved Tune state to resume from")
    storage = open_storage(manifest["storage"]) if manifest["storage"] else None
    _start_ray(address)
    tuner = tune.Tuner.restore(
        str(out / "tune"), trainable=_trainable(space), resume_unfinished=True, resume_errored=True
    )
    tuner.fit()
    if storage is not None:
        fail_running(storage, space.name, str(out))
    return out
