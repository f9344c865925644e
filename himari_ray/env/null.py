"""A skill-free null beside every score (issue 16): is a policy's net return more than its trading pattern buys?

A net return or Sharpe alone cannot say whether the policy knows the direction: the bars it trades, how long
it holds and the fees it pays shape the number as much as skill does. So every score gets a null that keeps
all of that and randomises only the direction:

- A *position* is a maximal run of bars with the same non-zero position (`types.POSITION_OF_ACTION`).
- Each of `k` null policies flips the sign of every position independently (a seeded fair coin per position),
  so it trades the same bars for the same holding periods.
- Each null is charged the real policy's own fee series `fee * |p[t] - p[t-1]|` (p[-1] = 0), the same trades'
  timing and cost. Flipping positions one by one would otherwise change turnover: two adjacent opposite
  positions (a direct LONG -> SHORT flip, cost 2) become one position (cost 0) when only one of them flips.
  Only the direction is random; the fees are the policy's.

With next returns iid and symmetric about zero and a policy that does not see the future, the real policy is
just one more draw of its own null, so the one-sided p-value `(1 + #{null >= observed}) / (k + 1)` is valid
(uniform up to its discreteness). `direction_null` returns a frozen `NullResult`: observed net return and
Sharpe (the formulas of `env.metrics.trading_metrics`), the null medians, the edges over them, the p-values,
and the flat (always HOLD) and buy-and-hold returns over the same bars; `null_positions` and `null_scores`
expose the nulls themselves.

Per-regime skill: `regime_skill` gives the hit rate on traded bars (pos * r > 0 among pos != 0) per regime
with a 95% Wilson interval, and `cannot_pay` turns per-regime break-even hit rates p* into one-line findings
for the regimes whose interval lies wholly below p*.

Pure numpy; the (k, n) null is computed in chunks of k so n ~ 20k bars and k = 200 stay within ~16 MB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from himari_ray.types import BARS_PER_YEAR, N_ACTIONS, POSITION_OF_ACTION, REGIME_NAMES, Regime

#: Null policies per score by default: p-values resolve to 1/201.
DEFAULT_NULLS = 200
#: The normal quantile of a two-sided 95% interval.
WILSON_Z = 1.959963984540054
#: Most float64 cells of one (chunk, n) block of null returns (16 MB).
_CHUNK_CELLS = 2_000_000
#: A null equal to the observed score up to rounding counts as a tie (>=), as the exact value would.
_TIE_RTOL = 1e-12


@dataclass(frozen=True)
class NullResult:
    """The observed scores beside a direction-randomised null of `k` policies (see the module docstring)."""

    net_return: float  # observed compounded net return
    sharpe: float  # observed annualised Sharpe of per-bar net returns
    null_net_return: float  # median over the nulls
    null_sharpe: float  # median over the nulls
    edge_return: float  # net_return - null_net_return
    edge_sharpe: float  # sharpe - null_sharpe
    p_return: float  # (1 + #{null net return >= observed}) / (k + 1)
    p_sharpe: float  # (1 + #{null Sharpe >= observed}) / (k + 1)
    flat_return: float  # always HOLD: 0.0
    buy_and_hold: float  # compounded return of holding long over the same bars
    k: int  # null policies drawn
    n_traded: int  # bars with a non-zero position
    n_positions: int  # maximal runs of one non-zero position: the coins each null tosses

    def to_dict(self) -> dict[str, float]:
        """Plain floats and ints keyed by field name, for a metrics dict or JSON."""
        return asdict(self)


def positions_of(actions: np.ndarray) -> np.ndarray:
    """Positions (+1, -1, 0) of action ids; refuses an id outside 0..2 instead of wrapping it."""
    a = np.asarray(actions)
    if a.ndim != 1 or (a.size and (a.min() < 0 or a.max() >= N_ACTIONS)):
        raise ValueError(f"actions must be a 1-D array of action ids 0..{N_ACTIONS - 1}")
    return POSITION_OF_ACTION[a.astype(np.int64)]


def fee_series(positions: np.ndarray, fee: float) -> np.ndarray:
    """`fee * |p[t] - p[t-1]|` with p[-1] = 0: what each bar pays, as in `trading_metrics`."""
    p = np.asarray(positions, dtype=np.float64)
    return fee * np.abs(np.diff(np.r_[0.0, p]))


def position_runs(positions: np.ndarray) -> np.ndarray:
    """Per bar, the index of the position (maximal run of one non-zero position) it belongs to; -1 when flat."""
    p = np.asarray(positions)
    traded = p != 0
    starts = traded & (p != np.r_[0, p[:-1]])  # a run starts where the position changes to a non-zero value
    run = np.cumsum(starts) - 1
    run[~traded] = -1
    return run


def null_signs(n_positions: int, k: int = DEFAULT_NULLS, seed: int = 0) -> np.ndarray:
    """(k, n_positions) int8 fair signs +-1: row i is the direction flip of every position in null i."""
    return (np.random.default_rng(seed).integers(0, 2, size=(k, n_positions), dtype=np.int8) * 2 - 1).astype(np.int8)


def null_positions(actions: np.ndarray, k: int = DEFAULT_NULLS, seed: int = 0) -> np.ndarray:
    """(k, n) int8 positions of the null policies `direction_null` scores with the same `k` and `seed`."""
    pos = positions_of(actions)
    run = position_runs(pos)
    n_runs = int(run.max()) + 1 if len(run) else 0
    if n_runs == 0:
        return np.zeros((k, len(pos)), dtype=np.int8)
    return null_signs(n_runs, k, seed)[:, np.maximum(run, 0)] * pos


def _scores(signed: np.ndarray, gross: np.ndarray, fees: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Net return and Sharpe of each row of bar signs (+-1) applied to `gross = p * r`, net of `fees`."""
    net = signed * gross - fees
    total = np.prod(1.0 + net, axis=1) - 1.0
    sd = net.std(axis=1)
    mean = net.mean(axis=1)
    sharpe = np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0) * np.sqrt(BARS_PER_YEAR)
    return total, sharpe


def _p_value(null: np.ndarray, observed: float) -> float:
    """One-sided `(1 + #{null >= observed}) / (k + 1)`, ties within rounding counted as ties."""
    tol = _TIE_RTOL * max(1.0, abs(observed))
    return float((1 + np.count_nonzero(null >= observed - tol)) / (len(null) + 1))


def _prepare(actions: np.ndarray, next_returns: np.ndarray, fee: float, k: int) -> tuple[np.ndarray, ...]:
    """Positions, returns, gross p * r, the policy's fee series and each bar's position index (-1 flat)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pos = positions_of(actions)
    r = np.asarray(next_returns, dtype=np.float64)
    if r.shape != pos.shape:
        raise ValueError(f"next_returns has shape {r.shape}, expected {pos.shape} (one per action)")
    return pos, r, pos * r, fee_series(pos, fee), position_runs(pos)


def null_scores(
    actions: np.ndarray, next_returns: np.ndarray, fee: float = 0.0, k: int = DEFAULT_NULLS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(k,) net returns and (k,) Sharpes of the nulls of `null_positions(actions, k, seed)`, each charged the
    policy's own fee series. Chunked over k, never looped over bars."""
    pos, _, gross, fees, run = _prepare(actions, next_returns, fee, k)
    n_runs = int(run.max()) + 1 if len(run) else 0
    if n_runs == 0:
        return _scores(np.zeros((k, len(pos))), gross, fees)
    runs = np.maximum(run, 0)  # flat bars have gross 0, so the sign they pick up is irrelevant
    signs = null_signs(n_runs, k, seed)
    totals, sharpes = np.empty(k), np.empty(k)
    chunk = max(1, _CHUNK_CELLS // max(len(pos), 1))
    for lo in range(0, k, chunk):
        totals[lo : lo + chunk], sharpes[lo : lo + chunk] = _scores(signs[lo : lo + chunk, runs], gross, fees)
    return totals, sharpes


def direction_null(
    actions: np.ndarray,
    next_returns: np.ndarray,
    fee: float = 0.0,
    k: int = DEFAULT_NULLS,
    seed: int = 0,
) -> NullResult:
    """Score the deployed `actions` (the action at t earns next_returns[t]) against `k` direction-randomised
    nulls that keep its traded bars, holding periods and fee series (module docstring)."""
    pos, r, gross, fees, run = _prepare(actions, next_returns, fee, k)
    buy_and_hold = float(np.prod(1.0 + r) - 1.0)
    n_runs = int(run.max()) + 1 if len(run) else 0
    if n_runs == 0:  # never traded: every null is the policy itself, so there is no edge and nothing to reject
        return NullResult(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, buy_and_hold, k, 0, 0)
    # The observed scores go through the same arithmetic as the nulls, so a null that repeats the policy's
    # directions ties it exactly instead of by rounding luck.
    obs_return, obs_sharpe = (float(x[0]) for x in _scores(np.ones((1, len(pos))), gross, fees))
    totals, sharpes = null_scores(actions, next_returns, fee, k, seed)
    null_return, null_sharpe = float(np.median(totals)), float(np.median(sharpes))
    return NullResult(
        net_return=obs_return,
        sharpe=obs_sharpe,
        null_net_return=null_return,
        null_sharpe=null_sharpe,
        edge_return=obs_return - null_return,
        edge_sharpe=obs_sharpe - null_sharpe,
        p_return=_p_value(totals, obs_return),
        p_sharpe=_p_value(sharpes, obs_sharpe),
        flat_return=0.0,
        buy_and_hold=buy_and_hold,
        k=k,
        n_traded=int(np.count_nonzero(pos)),
        n_positions=n_runs,
    )


@dataclass(frozen=True)
class RegimeSkill:
    """Hit rate on one regime's traded bars with its Wilson interval (NaN where nothing was traded)."""

    regime: str
    traded: int
    hits: int
    hit_rate: float
    low: float
    high: float


def wilson_interval(hits: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion: sane at 0 and n hits, unlike the normal one."""
    if n <= 0:
        return float("nan"), float("nan")
    p = hits / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def regime_skill(
    actions: np.ndarray, next_returns: np.ndarray, regimes: np.ndarray, z: float = WILSON_Z
) -> dict[str, RegimeSkill]:
    """Per regime (every name of `types.REGIME_NAMES`), the hit rate pos * r > 0 on bars with pos != 0."""
    pos = positions_of(actions)
    r = np.asarray(next_returns, dtype=np.float64)
    reg = np.asarray(regimes)
    if r.shape != pos.shape or reg.shape != pos.shape:
        raise ValueError(
            f"actions, next_returns and regimes must have one shape, got {pos.shape}, {r.shape}, {reg.shape}"
        )
    traded = pos != 0
    hit = pos * r > 0
    out: dict[str, RegimeSkill] = {}
    for regime in Regime:
        mask = traded & (reg == regime)
        n, h = int(mask.sum()), int((hit & mask).sum())
        lo, hi = wilson_interval(h, n, z)
        out[regime.name] = RegimeSkill(regime.name, n, h, h / n if n else float("nan"), lo, hi)
    return out


def p_star_text(p_star: float) -> str:
    """A break-even hit rate as shown: two decimals, `never` where no hit rate pays (+inf or above 1: even an
    oracle right on every trade earns less than HOLD there, as the preflight says), `-` where unknown."""
    if math.isnan(p_star):
        return "-"
    return "never" if p_star > 1 else f"{p_star:.2f}"


def cannot_pay(skill: Mapping[str, RegimeSkill], breakeven: Mapping[str, float]) -> list[str]:
    """One line per regime (in `REGIME_NAMES` order) whose hit-rate interval lies wholly below its break-even
    hit rate p*. A NaN p* (unknown) or an untraded regime says nothing; p* of +inf or above 1 (no hit rate
    pays there) is reported for any regime that traded."""
    findings = []
    for name in REGIME_NAMES:
        s, p_star = skill.get(name), breakeven.get(name, float("nan"))
        if s is None or s.traded == 0 or math.isnan(p_star) or not s.high < p_star:
            continue
        findings.append(
            f"{name}: hit rate {s.hit_rate:.2f} [{s.low:.2f}, {s.high:.2f}] on {s.traded} traded bars is below "
            f"break-even p* {p_star_text(p_star)}: trading there cannot pay"
        )
    return findings


__all__ = [
    "DEFAULT_NULLS",
    "WILSON_Z",
    "NullResult",
    "RegimeSkill",
    "cannot_pay",
    "direction_null",
    "fee_series",
    "null_positions",
    "null_scores",
    "null_signs",
    "p_star_text",
    "position_runs",
    "positions_of",
    "regime_skill",
    "wilson_interval",
]
