"""Reward-landscape preflight: which regimes a reward configuration makes HOLD- or trade-dominant,
computed from the data and the reward formula alone, before any training.

For every decision bar of a split the env's own reward table gives the reward of HOLD, of a trade in the right
direction (the oracle) and of a trade in the wrong one. In `per_bar` mode every LONG/SHORT bar pays its cost,
so a trade is priced as entered from flat. In `carried` mode only position changes pay: a position is priced
as held (no cost) plus one entry and one exit spread over the bars it is held, `holding_bars` (by default the
trial's discount horizon 1 / (1 - gamma)); HOLD is priced as staying flat.
A trade that is right with probability p earns p*oracle + (1-p)*wrong, so the *break-even skill*

    p* = (hold - wrong) / (oracle - wrong)

is the directional accuracy a policy needs in that regime before trading pays at all. Coin flip: p = 0.5.
Verdict per regime, for a skill band [skill_low, skill_high]:

| verdict | condition | what PPO converges to |
|---|---|---|
| HOLD-dominant | p* >= skill_high: even a trade right that often loses to HOLD | 100% HOLD |
| trade-dominant | p* <= skill_low: a trade of that skill (at 0.5, a coin flip) beats HOLD | 0% HOLD |
| contested | in between: the band is reachable by skill | anything |

With the band [0.5, 1.0] these are the strict definitions (oracle loses to HOLD / coin flip beats HOLD).
The default band is [0.5, 0.6]. Low end 0.5: a policy starts with no skill, and our own runs collapse to
HOLD whenever a coin-flip trade loses to HOLD, whatever a skilled policy could earn. High end 0.6: honest
features call the next hourly BTC bar ~54% of the time out of sample and nothing honest exceeds ~60% on
the bars it trades (ARCHITECTURE §2.2), so a regime whose trades must be right 70% of the time collapses to HOLD in
practice although a perfect oracle would still trade there (the seed's session 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from himari_ray.env.normalization import decision_sigma
from himari_ray.env.trading import CARRIED_GAMMA, EnvConfig, carried_horizon, reward_table
from himari_ray.types import Dataset, Regime, StrictModel

HOLD_DOMINANT = "HOLD-dominant"
TRADE_DOMINANT = "trade-dominant"
CONTESTED = "contested"


class PreflightConfig(StrictModel):
    """Which split to read and which directional skill an honest policy is credited with."""

    split: str = Field("train", pattern="^(train|val)$", description="Split to read (never test).")
    skill_low: float = Field(0.5, ge=0.5, le=1.0, description="Skill a policy is sure to have (coin flip).")
    skill_high: float = Field(0.60, ge=0.5, le=1.0, description="Skill no honest policy exceeds on traded bars.")
    enabled: bool = Field(True, description="Skip (do not train) configurations that contradict a target band.")
    holding_bars: float | None = Field(
        None,
        ge=1,
        description="carried mode: bars a position is held (entry and exit spread over them); None: 1/(1-gamma).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PreflightConfig:
        if self.skill_low > self.skill_high:
            raise ValueError(f"skill_low {self.skill_low} must be <= skill_high {self.skill_high}")
        return self


DEFAULT = PreflightConfig()
#: The issue's literal definitions: the oracle loses to HOLD / a coin flip beats HOLD.
STRICT = PreflightConfig(skill_low=0.5, skill_high=1.0)


@dataclass(frozen=True)
class RegimePreflight:
    """Expected rewards per decision in one regime, and the verdict."""

    regime: str
    n: int
    hold: float
    coin_flip: float
    oracle: float
    wrong: float
    e_abs_z: float  # mean |r[t+1] / sigma[t]|
    breakeven_skill: float  # p*; inf when even the oracle loses, <= 0.5 when a coin flip wins
    verdict: str

    @property
    def forced_hold_pct(self) -> float | None:
        """HOLD% the verdict forces (100 or 0), None when contested."""
        return {HOLD_DOMINANT: 100.0, TRADE_DOMINANT: 0.0}.get(self.verdict)


def breakeven_skill(hold: float, oracle: float, wrong: float) -> float:
    if oracle <= hold:
        return float("inf")  # no accuracy makes trading pay
    return (hold - wrong) / (oracle - wrong)


def verdict(p_star: float, cfg: PreflightConfig) -> str:
    if p_star >= cfg.skill_high:
        return HOLD_DOMINANT
    if p_star <= cfg.skill_low:
        return TRADE_DOMINANT
    return CONTESTED


def preflight(dataset: Dataset, env: EnvConfig, cfg: PreflightConfig = DEFAULT) -> list[RegimePreflight]:
    """Per regime (in Regime order) expected rewards of HOLD / coin flip / oracle trades on `cfg.split`."""
    arrays = dataset.split(cfg.split)
    full = sum(reward_table(arrays, dataset.train.returns, env).values())  # (n, previous action, action)
    nxt = arrays.returns[1:]
    up = nxt >= 0
    if env.position_mode == "carried":
        # Held positions pay nothing; one entry (from flat) and one exit (to flat) per holding period.
        k = cfg.holding_bars or carried_horizon(CARRIED_GAMMA)
        entry = ((full[:, 0, 1] - full[:, 1, 1]) + (full[:, 0, 2] - full[:, 2, 2])) / 2
        exit_ = ((full[:, 1, 0] - full[:, 0, 0]) + (full[:, 2, 0] - full[:, 0, 0])) / 2
        round_trip = (entry + exit_) / k
        hold = full[:, 0, 0]
        oracle = np.where(up, full[:, 1, 1], full[:, 2, 2]) + round_trip
        wrong = np.where(up, full[:, 2, 2], full[:, 1, 1]) + round_trip
    else:
        table = full[:, 0, :]  # per_bar: the previous action changes nothing
        hold = table[:, 0]
        oracle = np.where(up, table[:, 1], table[:, 2])
        wrong = np.where(up, table[:, 2], table[:, 1])
    z = np.abs(nxt / decision_sigma(arrays.returns, dataset.train.returns, env.reward)[:-1])
    ok = arrays.tradable[:-1]
    regimes = arrays.regime_ids[:-1]
    out = []
    for r in Regime:
        m = ok & (regimes == r)
        n = int(m.sum())
        if n == 0:
            out.append(RegimePreflight(r.name, 0, *([float("nan")] * 6), CONTESTED))
            continue
        h, o, w = float(hold[m].mean()), float(oracle[m].mean()), float(wrong[m].mean())
        p = breakeven_skill(h, o, w)
        out.append(RegimePreflight(r.name, n, h, (o + w) / 2, o, w, float(z[m].mean()), p, verdict(p, cfg)))
    return out


def band_conflicts(results: list[RegimePreflight], bands: dict[str, tuple[float, float]]) -> list[RegimePreflight]:
    """The regimes whose forced HOLD% (100 or 0) lies outside their target band."""
    out = []
    for r in results:
        forced = r.forced_hold_pct
        if forced is None or r.regime not in bands:
            continue
        lo, hi = bands[r.regime]
        if not lo <= forced <= hi:
            out.append(r)
    return out


def describe_p_star(p_star: float) -> str:
    """p* for a line of text: a number, or in words why there is none."""
    if np.isinf(p_star):
        return "never: even a perfect oracle loses to HOLD"
    if np.isnan(p_star):
        return "unknown: no bars of the regime"
    return f"{p_star:.2f}"


def describe_conflicts(conflicts: list[RegimePreflight]) -> str:
    """'LOW_VOL: HOLD-dominant (p* 0.79); TRENDING: trade-dominant (p* 0.21)'."""
    return "; ".join(f"{r.regime}: {r.verdict} (p* {describe_p_star(r.breakeven_skill)})" for r in conflicts)


def skip_penalty(
    conflicts: list[RegimePreflight], bands: dict[str, tuple[float, float]], cfg: PreflightConfig
) -> float:
    """Score of a skipped configuration: the worst band distance any policy can score, plus 100 x how far
    (in skill, capped at 1 per regime) each conflicting regime's p* lies outside the skill band. Skipped
    configurations rank below every trained one, and the sampler still sees which way the contested
    region lies."""
    worst = sum(max(lo, 100.0 - hi) for lo, hi in bands.values())
    margin = 0.0
    for r in conflicts:
        gap = r.breakeven_skill - cfg.skill_high if r.verdict == HOLD_DOMINANT else cfg.skill_low - r.breakeven_skill
        margin += min(1.0, gap)
    return float(worst + 100.0 * margin)


def format_preflight(results: list[RegimePreflight]) -> str:
    """The table, then a note for each p* that is not a number: `never` where even a perfect oracle's trades
    earn less than HOLD (no hit rate makes trading pay), `-` where the split holds no bar of the regime."""
    head = f"{'regime':9} {'bars':>6} {'HOLD':>8} {'coin':>8} {'oracle':>8} {'E|z|':>6} {'p*':>6}  verdict"
    lines = [head]
    for r in results:
        p = "never" if np.isinf(r.breakeven_skill) else "-" if r.n == 0 else f"{r.breakeven_skill:.3f}"
        lines.append(
            f"{r.regime:9} {r.n:6d} {r.hold:8.3f} {r.coin_flip:8.3f} {r.oracle:8.3f} {r.e_abs_z:6.3f} {p:>6}  {r.verdict}"
        )
    never = [r.regime for r in results if np.isinf(r.breakeven_skill)]
    if never:
        lines.append(
            f"p* never ({', '.join(never)}): even a perfect oracle, right on every trade, earns less there than "
            "HOLD, so no hit rate makes trading pay"
        )
    empty = [r.regime for r in results if r.n == 0]
    if empty:
        lines.append(
            f"p* - ({', '.join(empty)}): the split has no decision bar in the regime, so there is nothing to price"
        )
    return "\n".join(lines)
