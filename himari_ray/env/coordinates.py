"""Search coordinates in the reward landscape's own terms: per regime, the break-even skill p* a cost implies.

A space searched in a family's native cost parameters spends most trials where the landscape is already
decided (on the bundled sample, 0% of uniform draws of the `adaptive` space are contested in all four
regimes): the costs that make a regime contested form a thin sheet that moves with E|z| per regime. The
preflight (`preflight.py`) says which p* a configuration implies; this module runs it backwards. A space
with `coordinates: breakeven` searches `breakeven_<REGIME>`, the p* wanted in each regime, and at trial time
`invert_breakeven` finds the family's per-regime cost parameters that give exactly those p* on the split the
preflight reads. A sampler drawing p* uniformly inside the skill band (0.5, 0.6) then lands in the contested
region by construction, and every trial trains.

Why it is exact: every reward family is linear in each cost parameter, and the preflight's expected rewards
(HOLD, oracle, wrong) are means of reward-table entries, so with q = the coordinate parameters

    gap_R(q) = (hold_R - wrong_R) - p*_R (oracle_R - wrong_R)

is affine in q and vanishes exactly where regime R's break-even skill is p*_R. One preflight at q = 0 and one
per parameter at q = e_j give the affine map; one linear solve gives q. Each regime has its own parameter
(`COORDINATE_PARAMS`: the base cost for LOW_VOL, the regime surcharges for HIGH_VOL and CRISIS, the trade
bonus for TRENDING), so the system is triangular and always solvable.

Reachability: costs are >= 0, so a p* the family cannot reach is clamped to the nearest reachable one. In
`adaptive`, LOW_VOL's base cost applies everywhere; the HIGH_VOL and CRISIS surcharges can only raise their
p* above what the base cost implies there, and the TRENDING bonus only lower it. A coordinate asking for the
other direction sets its parameter to 0 and the regime keeps the base cost's p*, which lies between 0.5 and
LOW_VOL's p* (E|z| is lowest in LOW_VOL), so it is still contested. `breakeven_of` reports what was realised.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from himari_ray.env.preflight import DEFAULT, PreflightConfig, RegimePreflight, preflight
from himari_ray.env.trading import EnvConfig
from himari_ray.types import REGIME_NAMES, Dataset

#: Searched names `breakeven_LOW_VOL`, ...: the break-even skill p* wanted in that regime.
BREAKEVEN_PREFIX = "breakeven_"
BREAKEVEN_NAMES = tuple(f"{BREAKEVEN_PREFIX}{r}" for r in REGIME_NAMES)

_NORMALIZED = {
    "LOW_VOL": "base_trade_cost",
    "TRENDING": "trending_trade_bonus",
    "HIGH_VOL": "highvol_trade_cost",
    "CRISIS": "crisis_trade_cost",
}

#: Per family, the parameter that sets each regime's p*. Families without a per-regime cost (pnl_cost,
#: opportunity_cost) cannot place four regimes independently and offer no coordinates.
COORDINATE_PARAMS: dict[str, dict[str, str]] = {
    "adaptive": _NORMALIZED,
    "variance_normalized": _NORMALIZED,
    "bonus_penalty": {
        "LOW_VOL": "trade_cost",
        "TRENDING": "trending_bonus",
        "HIGH_VOL": "high_vol_penalty",
        "CRISIS": "crisis_penalty",
    },
}


def is_coordinate(name: str) -> bool:
    return name in BREAKEVEN_NAMES


def split_coordinates(params: Mapping[str, object]) -> tuple[dict[str, float], dict[str, object]]:
    """({regime: p*} for the `breakeven_<REGIME>` keys, every other key)."""
    targets = {k.removeprefix(BREAKEVEN_PREFIX): float(v) for k, v in params.items() if is_coordinate(k)}  # type: ignore[arg-type]
    rest = {k: v for k, v in params.items() if not is_coordinate(k)}
    return targets, rest


def coordinate_problem(family: str) -> str | None:
    """Why `family` cannot be searched in break-even coordinates (None when it can)."""
    if family not in COORDINATE_PARAMS:
        return (
            f"family {family} has no per-regime cost to place each regime's p* with; "
            f"breakeven coordinates need one of {sorted(COORDINATE_PARAMS)}"
        )
    return None


def _with_params(env: EnvConfig, values: Mapping[str, float]) -> EnvConfig:
    reward = env.reward.model_copy(update={"params": {**env.reward.params, **values}})
    return env.model_copy(update={"reward": reward})


def _by_regime(results: list[RegimePreflight]) -> dict[str, RegimePreflight]:
    return {r.regime: r for r in results}


def invert_breakeven(
    dataset: Dataset, env: EnvConfig, targets: Mapping[str, float], cfg: PreflightConfig = DEFAULT
) -> dict[str, float]:
    """The family's cost parameters (>= 0) whose preflight p* on `cfg.split` equals `targets` per regime, every
    other reward parameter as `env` has it. Unreachable targets clamp their parameter to 0 (module docstring);
    a regime absent from the split leaves its parameter at 0."""
    problem = coordinate_problem(env.reward.family)
    if problem:
        raise ValueError(problem)
    unknown = set(targets) - set(REGIME_NAMES)
    if unknown:
        raise ValueError(f"unknown regimes {sorted(unknown)}; expected {list(REGIME_NAMES)}")
    mapping = COORDINATE_PARAMS[env.reward.family]
    regimes = [r for r in REGIME_NAMES if r in targets]
    names = [mapping[r] for r in regimes]
    p = np.array([targets[r] for r in regimes])

    def gaps(values: Mapping[str, float]) -> np.ndarray:
        res = _by_regime(preflight(dataset, _with_params(env, values), cfg))
        return np.array(
            [(res[r].hold - res[r].wrong) - t * (res[r].oracle - res[r].wrong) for r, t in zip(regimes, p, strict=True)]
        )

    zero = dict.fromkeys(names, 0.0)
    g0 = gaps(zero)
    m = np.column_stack([gaps({**zero, n: 1.0}) - g0 for n in names])
    q = np.zeros(len(names))
    free = [i for i in range(len(names)) if np.isfinite(g0[i]) and np.isfinite(m[:, i]).all()]
    # Active set: solve the free parameters' own regimes; clamp the most negative to 0 and solve again.
    while free:
        sol = np.linalg.solve(m[np.ix_(free, free)], -g0[free])
        if (sol >= 0).all():
            q[free] = sol
            break
        free.pop(int(np.argmin(sol)))
    return {n: float(v) for n, v in zip(names, q, strict=True)}


def breakeven_of(dataset: Dataset, env: EnvConfig, cfg: PreflightConfig = DEFAULT) -> dict[str, float]:
    """The p* per regime that `env`'s reward implies on `cfg.split` (what a set of coordinates realised)."""
    return {r.regime: r.breakeven_skill for r in preflight(dataset, env, cfg)}
