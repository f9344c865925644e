"""Reward families (ARCHITECTURE §3.1): small pure numpy functions over aligned arrays, in one registry.

Each family takes a `RewardInputs` (decision-time arrays plus the return of the *next* bar) and keyword
parameters whose names are the search-space names and whose defaults are the seed's values. It returns its
named reward terms; the reward is their sum. The env precomputes every term for every bar and action, so
these run once per split, never per step.

Normalisation statistics (sigma, E = mean|r/sigma|) are defined without look-ahead: either fixed from the
train split (`norm_stats: train`) or a trailing window ending at the decision bar (`norm_stats: trailing`);
they are computed in `env/normalization.py`. The seed took them per training batch, which mixes future bars into the present bar's reward.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from himari_ray.types import ENV_SECTION, SEARCHABLE, Regime, StrictModel

RewardTerms = dict[str, np.ndarray]


@dataclass(frozen=True)
class RewardInputs:
    """Aligned arrays for decisions at bars t (shape (n,) each, or broadcastable)."""

    position: np.ndarray  # int8: +1 long, -1 short, 0 flat, chosen after seeing bar t
    is_trade: np.ndarray  # bool: the decision pays a trade cost (mode-dependent)
    next_return: np.ndarray  # float64: return of bar t+1, the one the position earns
    regime: np.ndarray  # int64: regime at bar t (known at decision time)
    sigma: np.ndarray  # float64: return scale known at bar t (train std or trailing std)
    expected_abs_z: float  # E = mean |r / sigma| over the train split

    @property
    def z(self) -> np.ndarray:
        """Next return in units of the decision-time return scale."""
        return self.next_return / self.sigma

    @property
    def is_hold(self) -> np.ndarray:
        return self.position == 0

    @property
    def is_wrong(self) -> np.ndarray:
        """A position whose sign disagrees with the next return."""
        return self.position * self.next_return < 0


def pnl_cost(inp: RewardInputs, *, trade_cost: float = 0.03, reward_scale: float = 100.0) -> RewardTerms:
    """Seed session 4: `r*pos*reward_scale - trade_cost*is_trade` (the scale applies to PnL only)."""
    return {
        "pnl": inp.next_return * inp.position * reward_scale,
        "trade_cost": -trade_cost * inp.is_trade,
    }


def _in(regime: np.ndarray, *regimes: Regime) -> np.ndarray:
    return np.isin(regime, regimes).astype(np.float64)


def bonus_penalty(
    inp: RewardInputs,
    *,
    hold_bonus: float = 0.05,
    highvol_hold_bonus: float = 0.0,
    crisis_hold_bonus: float = 0.0,
    trending_hold_penalty: float = 0.0,
    trade_cost: float = 0.08,
    high_vol_penalty: float = 0.10,
    crisis_penalty: float = 0.15,
    trending_bonus: float = 0.05,
    correct_bonus: float = 0.0,
    correct_trend_bonus: float = 0.0,
    wrong_penalty: float = 0.0,
    reward_scale: float = 100.0,
) -> RewardTerms:
    """Seed sessions 3 and 5: PnL*reward_scale plus fixed per-regime HOLD bonuses, trade costs and
    correct/wrong-direction terms. Defaults are session 5's; `SEED_SESSIONS["session3"]` has session 3's.
    The scale applies to PnL only, as in the seed."""
    trade = inp.is_trade.astype(np.float64)
    hold = inp.is_hold.astype(np.float64)
    correct = (inp.position * inp.next_return > 0).astype(np.float64)
    reg = inp.regime
    return {
        "pnl": inp.next_return * inp.position * reward_scale,
        "hold_bonus": hold_bonus * hold,
        "highvol_hold_bonus": highvol_hold_bonus * hold * _in(reg, Regime.HIGH_VOL),
        "crisis_hold_bonus": crisis_hold_bonus * hold * _in(reg, Regime.CRISIS),
        "trending_hold_penalty": -trending_hold_penalty * hold * _in(reg, Regime.TRENDING),
        "trade_cost": -trade_cost * trade,
        "high_vol_penalty": -high_vol_penalty * trade * _in(reg, Regime.HIGH_VOL),
        "crisis_penalty": -crisis_penalty * trade * _in(reg, Regime.CRISIS),
        "trending_bonus": trending_bonus * trade * _in(reg, Regime.TRENDING),
        "correct_bonus": correct_bonus * correct,
        "correct_trend_bonus": correct_trend_bonus * correct * _in(reg, Regime.TRENDING),
        "wrong_penalty": -wrong_penalty * inp.is_wrong,
    }


def opportunity_cost(
    inp: RewardInputs,
    *,
    trade_cost: float = 0.02,
    trending_hold_k: float = 50.0,
    wrong_k: float = 30.0,
    risky_wrong_k: float = 20.0,
    reward_scale: float = 100.0,
) -> RewardTerms:
    """Seed session 6: pnl*reward_scale - trade_cost - trending_hold_k*|r|*is_hold*[TRENDING]
    - wrong_k*|r|*wrong - risky_wrong_k*|r|*wrong*[HIGH_VOL or CRISIS] (no guaranteed HOLD reward)."""
    abs_r = np.abs(inp.next_return)
    wrong = inp.is_wrong.astype(np.float64)
    return {
        "pnl": inp.next_return * inp.position * reward_scale,
        "trade_cost": -trade_cost * inp.is_trade,
        "trending_hold_cost": -trending_hold_k * abs_r * inp.is_hold * _in(inp.regime, Regime.TRENDING),
        "wrong_penalty": -wrong_k * abs_r * wrong,
        "risky_wrong_penalty": -risky_wrong_k * abs_r * wrong * _in(inp.regime, Regime.HIGH_VOL, Regime.CRISIS),
    }


def _normalized_terms(
    inp: RewardInputs,
    unit: float,
    base_trade_cost: float,
    highvol_trade_cost: float,
    crisis_trade_cost: float,
    trending_trade_bonus: float,
    trending_hold_cost: float,
    wrong_penalty: float,
    reward_scale: float,
) -> RewardTerms:
    """z*pos and the six regime terms of sessions 7-18, each cost in units of `unit` (1, or E = mean|z|)."""
    u = unit * reward_scale
    trade = inp.is_trade.astype(np.float64)
    hold = inp.is_hold.astype(np.float64)
    reg = inp.regime
    return {
        "pnl": inp.z * inp.position * reward_scale,
        "base_trade_cost": -base_trade_cost * u * trade,
        "highvol_trade_cost": -highvol_trade_cost * u * trade * _in(reg, Regime.HIGH_VOL),
        "crisis_trade_cost": -crisis_trade_cost * u * trade * _in(reg, Regime.CRISIS),
        "trending_trade_bonus": trending_trade_bonus * u * trade * _in(reg, Regime.TRENDING),
        "trending_hold_cost": -trending_hold_cost * u * hold * _in(reg, Regime.TRENDING),
        "wrong_penalty": -wrong_penalty * u * inp.is_wrong,
    }


def variance_normalized(
    inp: RewardInputs,
    *,
    base_trade_cost: float = 0.25,
    highvol_trade_cost: float = 0.35,
    crisis_trade_cost: float = 0.50,
    trending_trade_bonus: float = 0.25,
    trending_hold_cost: float = 0.60,
    wrong_penalty: float = 0.30,
    reward_scale: float = 1.0,
) -> RewardTerms:
    """Seed sessions 7-13: z = r/sigma, reward z*pos minus fixed costs in units of sigma-normalised PnL.
    Defaults are session 13's calibration (wrong_penalty from session 7, which 9-13 kept); sessions 7 and
    8 are in `SEED_SESSIONS`. `reward_scale` multiplies every term."""
    return _normalized_terms(
        inp, 1.0, base_trade_cost, highvol_trade_cost, crisis_trade_cost, trending_trade_bonus,
        trending_hold_cost, wrong_penalty, reward_scale,
    )  # fmt: skip


def adaptive(
    inp: RewardInputs,
    *,
    base_trade_cost: float = 0.40,
    highvol_trade_cost: float = 0.40,
    crisis_trade_cost: float = 0.60,
    trending_trade_bonus: float = 0.40,
    trending_hold_cost: float = 1.0,
    wrong_penalty: float = 0.50,
    reward_scale: float = 1.0,
) -> RewardTerms:
    """Seed sessions 14-18: variance-normalised PnL z*pos; every cost a fraction of E = mean|z|.

    `reward_scale` multiplies every term (the costs are already relative to the PnL, so scaling the PnL
    alone would only duplicate them); it sets the reward's size against the entropy bonus.
    """
    return _normalized_terms(
        inp, inp.expected_abs_z, base_trade_cost, highvol_trade_cost, crisis_trade_cost, trending_trade_bonus,
        trending_hold_cost, wrong_penalty, reward_scale,
    )  # fmt: skip


@dataclass(frozen=True)
class RewardFamily:
    """A registered family: its function, and which parameters are costs or bonuses (for the contract)."""

    name: str
    fn: Callable[..., RewardTerms]
    costs: tuple[str, ...]  # reward is non-increasing in each; must be >= 0
    bonuses: tuple[str, ...] = ()  # reward is non-decreasing in each; must be >= 0

    @property
    def defaults(self) -> dict[str, float]:
        """Keyword parameters and their seed defaults, read from the function signature."""
        sig = inspect.signature(self.fn)
        return {p.name: float(p.default) for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def __call__(self, inp: RewardInputs, **params: float) -> RewardTerms:
        return self.fn(inp, **params)


_NORMALIZED_COSTS = (
    "base_trade_cost",
    "highvol_trade_cost",
    "crisis_trade_cost",
    "trending_hold_cost",
    "wrong_penalty",
)


REWARD_FAMILIES: dict[str, RewardFamily] = {
    f.name: f
    for f in (
        RewardFamily("pnl_cost", pnl_cost, costs=("trade_cost",)),
        RewardFamily(
            "bonus_penalty",
            bonus_penalty,
            costs=("trending_hold_penalty", "trade_cost", "high_vol_penalty", "crisis_penalty", "wrong_penalty"),
            bonuses=(
                "hold_bonus",
                "highvol_hold_bonus",
                "crisis_hold_bonus",
                "trending_bonus",
                "correct_bonus",
                "correct_trend_bonus",
            ),
        ),
        RewardFamily(
            "opportunity_cost",
            opportunity_cost,
            costs=("trade_cost", "trending_hold_k", "wrong_k", "risky_wrong_k"),
        ),
        RewardFamily(
            "variance_normalized",
            variance_normalized,
            costs=_NORMALIZED_COSTS,
            bonuses=("trending_trade_bonus",),
        ),
        RewardFamily("adaptive", adaptive, costs=_NORMALIZED_COSTS, bonuses=("trending_trade_bonus",)),
    )
}


#: The seed's hand-tuned attempts as (family, parameters): the lessons the preflight must reproduce.
SEED_SESSIONS: dict[str, tuple[str, dict[str, float]]] = {
    "session3": (
        "bonus_penalty",
        {
            "hold_bonus": 0.0,
            "highvol_hold_bonus": 0.02,
            "crisis_hold_bonus": 0.03,
            "trending_hold_penalty": 0.04,
            "trade_cost": 0.01,
            "high_vol_penalty": 0.0,
            "crisis_penalty": 0.02,
            "trending_bonus": 0.02,
            "correct_bonus": 0.08,
            "correct_trend_bonus": 0.06,
            "wrong_penalty": 0.03,
            "reward_scale": 200.0,
        },
    ),
    "session4": ("pnl_cost", {"trade_cost": 0.03, "reward_scale": 100.0}),
    "session5": ("bonus_penalty", {}),
    "session6": ("opportunity_cost", {}),
    "session7": (
        "variance_normalized",
        {
            "base_trade_cost": 0.1,
            "highvol_trade_cost": 0.3,
            "crisis_trade_cost": 0.5,
            "trending_trade_bonus": 0.2,
            "trending_hold_cost": 0.5,
            "wrong_penalty": 0.3,
        },
    ),
    "session8": (
        "variance_normalized",
        {
            "base_trade_cost": 0.1,
            "highvol_trade_cost": 0.6,
            "crisis_trade_cost": 1.0,
            "trending_trade_bonus": 0.2,
            "trending_hold_cost": 0.8,
            "wrong_penalty": 0.5,
        },
    ),
    "session13": ("variance_normalized", {}),
    "session18": ("adaptive", {}),
}


#: Families whose `reward_scale` multiplies every term (the others scale the PnL term only).
SCALES_EVERY_TERM = ("variance_normalized", "adaptive")


def searched_scale_problem(family: str) -> str:
    """Why `reward_scale` is not a searchable name (issue 8: every searched name must act on the policy).

    PPO (RLlib) standardises advantages per train batch, so multiplying every reward term by one constant
    leaves the policy gradient unchanged: it only rescales the critic's targets (and so the value loss's
    weight in the shared encoder and how often `vf_clip_param` bites). Where it scales the PnL alone, only the
    ratio of each cost to it reaches the policy, and the costs are searched already.
    """
    if family in SCALES_EVERY_TERM:
        return (
            f"not searchable: it multiplies every term of {family} and PPO standardises advantages per batch, "
            "so it cannot change the policy (fix it in `fixed:` if the critic's scale matters)"
        )
    return (
        f"not searchable: it scales only the PnL of {family}, so only each cost's ratio to it reaches the "
        "policy; search the costs and fix reward_scale"
    )


def param_problem(family: str, key: str, value: float) -> str | None:
    """Why `value` is not acceptable for parameter `key` of `family` (None when it is)."""
    if family not in REWARD_FAMILIES:
        return f"unknown reward family {family!r}; expected one of {sorted(REWARD_FAMILIES)}"
    fam = REWARD_FAMILIES[family]
    if key not in fam.defaults:
        return f"unknown parameter for family {family}; expected one of {sorted(fam.defaults)}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if key in fam.costs + fam.bonuses and value < 0:
        return f"must be >= 0, got {value}"  # the formulas subtract costs and add bonuses
    if key == "reward_scale" and value <= 0:
        return f"must be > 0, got {value}"
    return None


class RewardConfig(StrictModel):
    """A reward family, its parameters, and how its normalisation statistics are taken."""

    family: str = Field("pnl_cost", description="Name of a family in REWARD_FAMILIES.")
    params: dict[str, float] = Field(
        default_factory=dict, description="Parameter overrides; missing ones take the seed's defaults."
    )
    norm_stats: Literal["train", "trailing"] = Field(
        "train",
        description="sigma from the whole train split, or from a trailing window ending at bar t.",
        json_schema_extra={ENV_SECTION: True, SEARCHABLE: True},
    )
    trailing_window: int = Field(
        168,
        ge=8,
        description="Bars in the trailing sigma window.",
        json_schema_extra={ENV_SECTION: True, SEARCHABLE: True},
    )

    @model_validator(mode="after")
    def _known_family_and_params(self) -> RewardConfig:
        for key, value in self.params.items():
            problem = param_problem(self.family, key, value)
            if problem:
                raise ValueError(f"parameter {key!r}: {problem}")
        if self.family not in REWARD_FAMILIES:
            raise ValueError(f"unknown reward family {self.family!r}; expected one of {sorted(REWARD_FAMILIES)}")
        return self

    def __hash__(self) -> int:  # dict fields are unhashable; the env caches on this
        return hash((self.family, tuple(sorted(self.params.items())), self.norm_stats, self.trailing_window))

    @property
    def resolved_params(self) -> dict[str, float]:
        """Seed defaults overlaid with this config's parameters."""
        return {**REWARD_FAMILIES[self.family].defaults, **self.params}


def compute_terms(family: str, inp: RewardInputs, params: Mapping[str, float]) -> RewardTerms:
    """Every term of `family` at `params`, broadcast to a common shape."""
    terms = REWARD_FAMILIES[family](inp, **params)
    shape = np.broadcast_shapes(*(np.shape(v) for v in terms.values()), np.shape(inp.position))
    return {k: np.broadcast_to(np.asarray(v, dtype=np.float64), shape) for k, v in terms.items()}
