"""Selective (no-trade) deployment (issue 16): trade only where the policy is confident, HOLD elsewhere.

**Confidence measure.** The directional margin `m = P(LONG) - P(SHORT)` of the policy's action
probabilities (n, 3). Direction is what earns: a bar is worth trading when the policy prefers one side
clearly over the other, and m says which side and by how much. P(HOLD) needs no term of its own: the three
probabilities sum to 1, so mass on HOLD shrinks |m| automatically (|m| <= 1 - P(HOLD)).

**Per-bar mode.** Per regime r with threshold tau_r: LONG if m >= tau_r, SHORT if m <= -tau_r, else HOLD
(at tau_r = 0 and m = 0 exactly, LONG). `fit_thresholds` picks tau_r on calibration bars so the HOLD share
of each regime is its band's centre (lo + hi) / 2 percent: a quantile of |m| in that regime. A threshold
above 1 never trades (|m| <= 1); `NEVER_TRADE` (2.0) is what a regime absent from the calibration bars, or
without a band, gets: there is nothing to calibrate it on, and not trading is the safe default.

**Carried mode with hysteresis.** A carried policy's probabilities depend on its current position, so the
input is `by_position` (n, 3, 3): the action probabilities at bar t when the position (previous action id)
is p, as PolicyEvaluator builds for carried mode (softmax its logits first). The path starts flat; m is read
at the probabilities of the current position. When flat: enter LONG if m >= enter_r, SHORT if m <= -enter_r.
When holding: keep the position while the margin in its direction is >= exit_r = ratio * enter_r, else flip
directly if the opposite margin reaches enter_r, else go flat. In a never-trade regime (enter_r > 1) exit_r
is enter_r too, so a position carried in from another regime is closed there. The action at t is the
position held over bar t+1. With ratio <= 1 and probabilities that ignore the position, the path changes
position, and turns over, no more often than the per-bar rule at tau = enter: both agree wherever |m| >=
enter, and in between the path only holds on to its last position or drops it (it can turn a
LONG-HOLD-SHORT into a direct LONG-SHORT flip, at the same cost). The path is computed without a loop over
bars: each bar is a map of the 3 positions, and a prefix scan composes the maps (O(n log n) numpy).

`fit_hysteresis` fits enter_r per regime so each regime's HOLD share of the path is its band's centre. The
path couples regimes (a position carried across a regime change), so it bisects one regime at a time inside
a few coordinate sweeps, each regime keeping the best threshold seen. Tolerance reached: each regime's HOLD
count is within one bar of round(centre * n_r) whenever the count, a step function of enter_r, has a step
there; ties in the margins or coupling can make it jump over the target, and then the closest count seen is
kept. Bisection resolves enter_r to 2**-iterations. Everything is deterministic.

`SelectivePolicy` holds mode, thresholds and exit ratio, serialises to plain JSON floats and applies itself
(`actions`), so the evaluator and a bundle's `act` share one rule.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from himari_ray.env.control import controlled_path
from himari_ray.types import N_ACTIONS, N_REGIMES, REGIME_NAMES, Action

#: A threshold above every |margin| (<= 1): the regime never trades.
NEVER_TRADE = 2.0
#: exit_r = DEFAULT_EXIT_RATIO * enter_r: a position is kept until its margin halves.
DEFAULT_EXIT_RATIO = 0.5
MODES = ("per_bar", "carried")

# Maps of the 3 positions, coded f(0) + 3 f(1) + 9 f(2); _COMPOSE[f, g] codes x -> f(g(x)) (g first).
_DECODE = np.array([[c % 3, c // 3 % 3, c // 9] for c in range(27)], dtype=np.int64)
_COMPOSE = np.array(
    [[_DECODE[f][_DECODE[g]] @ np.array([1, 3, 9]) for g in range(27)] for f in range(27)], dtype=np.int64
)


def margin(probs: np.ndarray) -> np.ndarray:
    """The directional margin P(LONG) - P(SHORT) over the last axis of action probabilities."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[-1:] != (N_ACTIONS,):
        raise ValueError(f"probabilities must end in {N_ACTIONS} actions, got shape {p.shape}")
    return p[..., Action.LONG] - p[..., Action.SHORT]


def _regime_ids(regimes: np.ndarray, n: int) -> np.ndarray:
    reg = np.asarray(regimes)
    if reg.shape != (n,):
        raise ValueError(f"regimes has shape {reg.shape}, expected ({n},)")
    if n and (reg.min() < 0 or reg.max() >= N_REGIMES):
        raise ValueError(f"regimes must be regime ids 0..{N_REGIMES - 1}")
    return reg.astype(np.int64)


def _by_id(thresholds: Mapping[str, float]) -> np.ndarray:
    """Thresholds as an array indexed by regime id; every regime must have one."""
    missing = [name for name in REGIME_NAMES if name not in thresholds]
    if missing:
        raise ValueError(f"thresholds lack regime(s) {missing}")
    return np.array([float(thresholds[name]) for name in REGIME_NAMES])


def _target_holds(n: int, band: tuple[float, float]) -> int:
    """HOLD bars out of n at the band's centre, rounded half up (Python's round would go to even)."""
    lo, hi = band
    return math.floor((lo + hi) / 200.0 * n + 0.5)


def fit_thresholds(
    probs: np.ndarray, regimes: np.ndarray, bands: Mapping[str, tuple[float, float]]
) -> dict[str, float]:
    """Per regime, the tau that puts its HOLD share on these bars at its band's centre (per-bar rule)."""
    m = np.abs(margin(probs))
    if m.ndim != 1:
        raise ValueError(f"probabilities must have shape (n, {N_ACTIONS}), got {np.shape(probs)}")
    reg = _regime_ids(regimes, len(m))
    out: dict[str, float] = {}
    for rid, name in enumerate(REGIME_NAMES):
        a = np.sort(m[reg == rid])
        n = len(a)
        if n == 0 or name not in bands:
            out[name] = NEVER_TRADE
            continue
        k = _target_holds(n, bands[name])
        if k <= 0:
            tau = 0.0  # |m| >= 0 everywhere: every bar trades
        elif k >= n:
            tau = NEVER_TRADE
        else:
            # HOLD iff |m| < tau: any tau in (a[k-1], a[k]] holds exactly k bars (fewer where a[k-1] == a[k]).
            tau = a[k - 1] + (a[k] - a[k - 1]) / 2
            tau = float(a[k]) if tau <= a[k - 1] else float(tau)
        out[name] = tau
    return out


def selective_actions(probs: np.ndarray, regimes: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
    """Per-bar rule: LONG if m >= tau_r, SHORT if m <= -tau_r, else HOLD; int64 action ids."""
    m = margin(probs)
    if m.ndim != 1:
        raise ValueError(f"probabilities must have shape (n, {N_ACTIONS}), got {np.shape(probs)}")
    tau = _by_id(thresholds)[_regime_ids(regimes, len(m))]
    return np.where(m >= tau, Action.LONG, np.where(m <= -tau, Action.SHORT, Action.HOLD)).astype(np.int64)


def _margins_by_position(by_position: np.ndarray) -> np.ndarray:
    m = margin(by_position)
    if m.ndim != 2 or m.shape[1] != N_ACTIONS:
        raise ValueError(f"by_position must have shape (n, {N_ACTIONS}, {N_ACTIONS}), got {np.shape(by_position)}")
    return m


def _transition_codes(m: np.ndarray, reg: np.ndarray, enter_by_id: np.ndarray, ratio: float) -> np.ndarray:
    """Per bar, the coded map from current position to the next under the hysteresis rule."""
    enter = enter_by_id[reg]
    exit_ = np.where(enter > 1.0, enter, ratio * enter)  # a never-trade regime keeps nothing either
    flat, long_, short = m[:, 0], m[:, Action.LONG], -m[:, Action.SHORT]  # margins in each position's direction
    from_flat = np.where(flat >= enter, Action.LONG, np.where(flat <= -enter, Action.SHORT, Action.HOLD))
    from_long = np.where(long_ >= exit_, Action.LONG, np.where(-long_ >= enter, Action.SHORT, Action.HOLD))
    from_short = np.where(short >= exit_, Action.SHORT, np.where(-short >= enter, Action.LONG, Action.HOLD))
    return from_flat + 3 * from_long + 9 * from_short


def _run_path(codes: np.ndarray) -> np.ndarray:
    """Positions after each bar starting flat: an inclusive prefix scan of the per-bar maps."""
    cur = codes.astype(np.int64, copy=True)
    step = 1
    while step < len(cur):
        cur[step:] = _COMPOSE[cur[step:], cur[:-step]]  # the right side is gathered before it is written
        step *= 2
    return _DECODE[cur, 0]


def hysteresis_actions(
    by_position: np.ndarray,
    regimes: np.ndarray,
    thresholds: Mapping[str, float],
    exit_ratio: float = DEFAULT_EXIT_RATIO,
) -> np.ndarray:
    """Carried-mode path under the hysteresis rule (module docstring): int64 action ids, one per bar."""
    m = _margins_by_position(by_position)
    reg = _regime_ids(regimes, len(m))
    return _run_path(_transition_codes(m, reg, _by_id(thresholds), exit_ratio))


def fit_hysteresis(
    by_position: np.ndarray,
    regimes: np.ndarray,
    bands: Mapping[str, tuple[float, float]],
    exit_ratio: float = DEFAULT_EXIT_RATIO,
    scored: np.ndarray | None = None,
    sweeps: int = 4,
    iterations: int = 30,
) -> dict[str, float]:
    """Enter thresholds per regime putting each regime's HOLD share of the path at its band's centre.

    HOLD shares count only the `scored` bars (all by default; the evaluator's carried path also decides on
    bars around outages it does not score). Tolerance: see the module docstring."""
    m = _margins_by_position(by_position)
    reg = _regime_ids(regimes, len(m))
    mask = np.ones(len(m), bool) if scored is None else np.asarray(scored, dtype=bool)
    n_by = np.bincount(reg[mask], minlength=N_REGIMES)
    start = fit_thresholds(np.asarray(by_position)[mask, 0], reg[mask], bands)  # the flat-position fit
    enter = _by_id(start)
    targets = np.array(
        [_target_holds(int(n_by[i]), bands[name]) if name in bands else 0 for i, name in enumerate(REGIME_NAMES)]
    )

    def holds(e: np.ndarray) -> np.ndarray:
        path = _run_path(_transition_codes(m, reg, e, exit_ratio))
        return np.bincount(reg[mask & (path == Action.HOLD)], minlength=N_REGIMES)

    fitted = [i for i, name in enumerate(REGIME_NAMES) if n_by[i] and name in bands]
    for i in fitted:  # the ends need no search: 0 trades everywhere, NEVER_TRADE nowhere, whatever the path
        if targets[i] <= 0:
            enter[i] = 0.0
        elif targets[i] >= n_by[i]:
            enter[i] = NEVER_TRADE
    searched = [i for i in fitted if 0 < targets[i] < n_by[i]]
    for _ in range(sweeps):
        counts = holds(enter)
        if all(counts[i] == targets[i] for i in searched):
            break
        before = enter.copy()
        for i in searched:
            best_err, best = abs(int(holds(enter)[i]) - targets[i]), enter[i]
            lo, hi = 0.0, 1.0
            trial = enter.copy()
            for _ in range(iterations):
                if best_err == 0:
                    break
                trial[i] = (lo + hi) / 2
                c = int(holds(trial)[i])
                if abs(c - targets[i]) < best_err:  # strict: the earliest of equal errors is kept
                    best_err, best = abs(c - targets[i]), trial[i]
                if c < targets[i]:
                    lo = trial[i]  # too few holds: a higher bar to enter and keep
                else:
                    hi = trial[i]
            enter[i] = best
        if np.array_equal(before, enter):
            break
    return {name: float(enter[i]) for i, name in enumerate(REGIME_NAMES)}


def _number(value: Any, key: str) -> float:
    """A finite real (not a bool) as float, or a ValueError naming `key`."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"selective policy: {key} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SelectivePolicy:
    """A selective deployment rule: `mode` per_bar (thresholds on m) or carried (hysteresis path), one
    threshold per regime (all of `REGIME_NAMES`; > 1 never trades), the carried mode's exit ratio, and the
    causal HOLD-share controller's step and per-regime HOLD targets (env/control.py; step 0: static)."""

    mode: str
    thresholds: Mapping[str, float]
    exit_ratio: float = DEFAULT_EXIT_RATIO
    hold_control: float = 0.0
    targets: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"selective policy: mode must be one of {list(MODES)}, got {self.mode!r}")
        if not isinstance(self.thresholds, Mapping):
            raise ValueError(f"selective policy: thresholds must be a mapping, got {self.thresholds!r}")
        for key in self.thresholds:
            if key not in REGIME_NAMES:
                raise ValueError(f"selective policy: thresholds.{key} is not a regime; expected {list(REGIME_NAMES)}")
        clean = {}
        for name in REGIME_NAMES:
            if name not in self.thresholds:
                raise ValueError(f"selective policy: thresholds.{name} is missing")
            clean[name] = _number(self.thresholds[name], f"thresholds.{name}")
            if clean[name] < 0:
                raise ValueError(f"selective policy: thresholds.{name} must be >= 0, got {clean[name]}")
        ratio = _number(self.exit_ratio, "exit_ratio")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"selective policy: exit_ratio must lie in (0, 1], got {ratio}")
        step = _number(self.hold_control, "hold_control")
        if not 0.0 <= step <= 1.0:
            raise ValueError(f"selective policy: hold_control must lie in [0, 1], got {step}")
        targets = None
        if step > 0:
            if not isinstance(self.targets, Mapping) or set(self.targets) != set(REGIME_NAMES):
                raise ValueError(f"selective policy: hold_control needs targets for every regime {list(REGIME_NAMES)}")
            targets = {name: _number(self.targets[name], f"targets.{name}") for name in REGIME_NAMES}
            if any(not 0.0 <= v <= 1.0 for v in targets.values()):
                raise ValueError(f"selective policy: targets must be HOLD fractions in [0, 1], got {targets}")
        object.__setattr__(self, "thresholds", clean)  # a private copy: the caller's dict may change later
        object.__setattr__(self, "exit_ratio", ratio)
        object.__setattr__(self, "hold_control", step)
        object.__setattr__(self, "targets", targets)

    @classmethod
    def fit(
        cls,
        mode: str,
        probs_or_by_position: np.ndarray,
        regimes: np.ndarray,
        bands: Mapping[str, tuple[float, float]],
        exit_ratio: float = DEFAULT_EXIT_RATIO,
        scored: np.ndarray | None = None,
        hold_control: float = 0.0,
    ) -> SelectivePolicy:
        """Fit the thresholds on calibration bars: (n, 3) probabilities per_bar, (n, 3, 3) by position carried
        (whose path also decides on bars it does not score: `scored` marks the ones whose HOLD share counts).
        With `hold_control` > 0 they are the controller's starting point, its targets the bands' centres."""
        # A band-less regime is fitted never to trade, so its target (0) is never steered to.
        targets = {n: sum(bands[n]) / 200.0 if n in bands else 0.0 for n in REGIME_NAMES} if hold_control > 0 else None
        if mode == "carried":
            thresholds = fit_hysteresis(probs_or_by_position, regimes, bands, exit_ratio, scored=scored)
            return cls(mode, thresholds, exit_ratio, hold_control, targets)
        mask = slice(None) if scored is None else np.asarray(scored, dtype=bool)
        fitted = fit_thresholds(np.asarray(probs_or_by_position)[mask], np.asarray(regimes)[mask], bands)
        return cls(mode, fitted, exit_ratio, hold_control, targets)

    def actions(
        self, probs_or_by_position: np.ndarray, regimes: np.ndarray, counted: np.ndarray | None = None
    ) -> np.ndarray:
        """The deployed actions: (n, 3) probabilities per_bar, (n, 3, 3) probabilities by position carried.
        Under the HOLD-share controller `counted` marks the decisions it counts (the scored ones; all if None)."""
        if self.hold_control > 0:
            assert self.targets is not None
            m = margin(probs_or_by_position)
            return controlled_path(
                m, regimes, self.thresholds, self.targets, self.hold_control, self.mode == "carried",
                self.exit_ratio, counted,
            )  # fmt: skip
        if self.mode == "carried":
            return hysteresis_actions(probs_or_by_position, regimes, self.thresholds, self.exit_ratio)
        return selective_actions(probs_or_by_position, regimes, self.thresholds)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values: {"mode", "thresholds": {regime: float}, "exit_ratio"}, and for a controlled
        rule "hold_control" and "targets": {regime: HOLD fraction} (a static rule is written as before them)."""
        out: dict[str, Any] = {"mode": self.mode, "thresholds": dict(self.thresholds), "exit_ratio": self.exit_ratio}
        if self.hold_control > 0:
            out["hold_control"], out["targets"] = self.hold_control, dict(self.targets or {})
        return out

    @classmethod
    def from_dict(cls, data: Any) -> SelectivePolicy:
        """The inverse of `to_dict`; a ValueError naming the key for anything missing, unknown or out of range."""
        if not isinstance(data, Mapping):
            raise ValueError(f"selective policy: expected a mapping, got {type(data).__name__}")
        for key in data:
            if key not in ("mode", "thresholds", "exit_ratio", "hold_control", "targets"):
                raise ValueError(f"selective policy: unknown key {key!r}")
        for key in ("mode", "thresholds", "exit_ratio"):
            if key not in data:
                raise ValueError(f"selective policy: {key} is missing")
        # A bundle exported before the controller existed has neither key: its rule is static.
        return cls(
            data["mode"], data["thresholds"], data["exit_ratio"], data.get("hold_control", 0.0), data.get("targets")
        )


__all__ = [
    "DEFAULT_EXIT_RATIO",
    "MODES",
    "NEVER_TRADE",
    "SelectivePolicy",
    "fit_hysteresis",
    "fit_thresholds",
    "hysteresis_actions",
    "margin",
    "selective_actions",
]
