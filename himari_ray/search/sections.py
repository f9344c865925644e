"""The models of a space file's sections: a searched parameter's range, and the `env:`, `budget:`,
`scheduler:`, `collapse:` and `resources:` sections, each checking only its own values. They stand apart
from space.py because nothing here needs the whole space: what ties sections together (parameter names
against the reward family, settings counted in iterations against `train.iterations`, the bounds on numbers
whose models live in other layers) stays there, with the model that composes these and the loading of it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from himari_ray.env.rewards import RewardConfig
from himari_ray.env.trading import EnvConfig
from himari_ray.types import ENV_SECTION, MAX_COUNT, MAX_SEED, StrictModel, flagged


class ParamRange(StrictModel):
    """A searched parameter: a numeric range, or a list of choices; optionally searched only `when` another
    (categorical) parameter takes one of the listed values."""

    low: float | None = Field(None, description="Lower bound (inclusive).")
    high: float | None = Field(None, description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    integer: bool = Field(False, description="Sample whole numbers.")
    # <= 1,000 choices: more than a search budget tries; a list that long is a generated mistake.
    choices: list[str | float] | None = Field(
        None, max_length=1_000, description="Categorical values instead of a range."
    )
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


#: Where each key of a space's `env:` section is defined: the runtime configs' `ENV_SECTION` fields.
ENV_SECTION_SOURCES: dict[str, type[BaseModel]] = {
    name: cls for cls in (EnvConfig, RewardConfig) for name in flagged(cls, ENV_SECTION)
}


def _section(name: str, doc: str, sources: dict[str, type[BaseModel]]) -> type[BaseModel]:
    """A space-file section whose fields *are* the runtime configs' fields (type, default, bounds and
    description copied from their one definition), so a setting has one name and one meaning everywhere."""
    fields: dict[str, Any] = {
        key: (cls.model_fields[key].annotation, cls.model_fields[key]) for key, cls in sources.items()
    }
    model = create_model(name, __config__=ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False), **fields)
    model.__doc__ = doc
    return model


EnvSettings = _section(
    "EnvSettings",
    "A space's `env:` section: the environment's and the reward's settings of `EnvConfig` and `RewardConfig` "
    "(the reward family and its parameters are the space's top-level `family`, `fixed` and `search`).",
    ENV_SECTION_SOURCES,
)


class Budget(StrictModel):
    """How much to search."""

    # <= 100,000 trials: beyond any budget (each trains a PPO run), and the CLI's --trials has the same cap.
    trials: int = Field(8, ge=1, le=MAX_COUNT, description="Number of trials (configurations) to run.")
    # <= 10,000 at once: more trials than any cluster holds; Ray would only queue them.
    max_concurrent: int = Field(2, ge=1, le=10_000, description="Trials running at once.")
    # <= 2**32 - 1: Optuna's samplers seed numpy, which takes 32 bits (the CLI's --seed has the same bound).
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the Optuna sampler.")
    sampler: Literal["tpe", "random"] = Field(
        "tpe", description="Optuna sampler: tpe, or random (the baseline the calibration benchmark compares TPE to)."
    )


class SchedulerSettings(StrictModel):
    """ASHA early stopping (default, with the Optuna searcher), or population-based training."""

    kind: Literal["asha", "pbt", "pb2"] = Field(
        "asha",
        description="asha: Optuna proposes, ASHA stops laggards; pbt: a population mutates in flight; "
        "pb2: PBT whose mutations a Gaussian-process bandit picks (needs scikit-learn: pip install himari-ray[pb2]).",
    )
    # grace_period and perturbation_interval <= train.iterations (checked in SearchSpace): ASHA could never stop
    # a trial, PBT never perturb one; <= 100,000 here, the most iterations a trial has.
    grace_period: int = Field(1, ge=1, le=100_000, description="ASHA: iterations before a trial can be stopped.")
    # <= 100: past that ASHA keeps one trial in a hundred at its first rung, which is stopping all but one.
    reduction_factor: float = Field(2.0, gt=1, le=100, description="ASHA halving rate.")
    perturbation_interval: int = Field(
        2, ge=1, le=100_000, description="PBT: iterations between exploit/explore steps."
    )
    synch: bool = Field(False, description="PBT/PB2: wait for the whole population at each perturbation point.")
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="PBT: share of the population that exploits the top (0.5 for tiny ones)."
    )
    mutate: list[str] = Field(
        default_factory=list, description="PBT: searched parameters it mutates (e.g. entropy_coeff, lr, a cost)."
    )


class CollapseSettings(StrictModel):
    """Stop a trial whose policy collapsed to all-HOLD or no-HOLD."""

    # <= 100,000 iterations (the most a trial has); a warmup past train.iterations turns the check off, as the
    # tests that keep every trial do.
    warmup: int = Field(2, ge=1, le=100_000, description="Iterations before the check applies.")
    # Percentages, and hold_low < hold_high (checked below): inverted, every policy would be a collapse.
    hold_high: float = Field(99.0, gt=0, le=100, description="Overall HOLD% above this is a collapse.")
    hold_low: float = Field(1.0, ge=0, lt=100, description="Overall HOLD% below this is a collapse.")

    @model_validator(mode="after")
    def _ordered(self) -> CollapseSettings:
        if not self.hold_low < self.hold_high:
            raise ValueError(
                f"hold_low {self.hold_low:g} must be < hold_high {self.hold_high:g} (inverted, every trial collapses)"
            )
        return self


class Resources(StrictModel):
    """What one trial asks Ray for."""

    # <= 1,024 CPUs and 8 GPUs: more than one node has, and a trial's learner runs on one node (the learner's
    # own num_gpus_per_learner has the same bound).
    cpus_per_trial: float = Field(1.0, gt=0, le=1_024, description="CPUs for the trial process (sampling + learning).")
    gpus_per_trial: float = Field(0.0, ge=0, le=8, description="GPU share of the trial's learner, e.g. 0.25.")
