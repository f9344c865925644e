"""A causal HOLD-share controller for selective deployment (`eval.hold_control`).

Why: thresholds fitted on the end of train put each regime's HOLD share at its band's centre *there*; on later
bars the policy's margins drift (a regime's bars in another year, another volatility), and the static shares
drift with them. Measured on the bundled sample (the deployment benchmark's 12 carried trials, validation
only): static thresholds miss the bands by 10.5 pp on average, almost all of it in CRISIS, whose share swung
between 54% and 86% against a 70-80% band; a larger calibration slice made it worse (16 pp at 40% of train),
so the miss is drift, not too few calibration bars.

The rule: each regime keeps its threshold on a log scale and, after every counted decision in that regime,
adds `step * (target - held)` to it: a decision that held (held = 1) lowers the threshold by
`step * (1 - target)`, one that traded raises it by `step * target`. The moves cancel in the long run only at a
HOLD share equal to the target (a Robbins-Monro quantile tracker); `step` trades how fast it follows drift
(about 1 / step of the regime's decisions) against how much the threshold wanders.

What it reads: the policy's own margins and actions at bars up to t, and the regime ids. Never a return,
never a bar after t (`tests/test_control.py` changes every later bar and checks nothing before moves). The
start is the fitted thresholds, at the first decision the deployment makes: the evaluator's first validation
(or test) decision, `act`'s `--start` bar (or its file's first decision bar). Regimes whose fit is an end
(threshold 0: trade always; `NEVER_TRADE`: never) are not controlled: there is no share to steer.

`step = 0` is the static rule exactly (`selective_actions` per_bar, `hysteresis_actions` carried).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from himari_ray.types import REGIME_NAMES, Action

#: A controlled threshold stays in [MIN_THRESHOLD, 1]: above 1 no margin clears it (the regime would stop
#: trading and the controller would only wait to come back), and below the floor log-steps would take ages to
#: climb back from an absurdly small value.
MIN_THRESHOLD = 1e-4


def controlled_path(
    margins: np.ndarray,
    regimes: np.ndarray,
    thresholds: Mapping[str, float],
    targets: Mapping[str, float],
    step: float,
    carried: bool,
    exit_ratio: float = 1.0,
    counted: np.ndarray | None = None,
) -> np.ndarray:
    """Actions under the controlled rule, in order (int64 action ids).

    `margins`: (n,) per_bar, or (n, 3) carried (the margin at each possible current position); `thresholds` the
    fitted starting thresholds; `targets` each regime's HOLD fraction (its band's centre / 100); `counted`
    (n,) marks the decisions that count towards a regime's share (the scored ones; all by default): the
    controller moves only there. Per_bar: LONG if m >= tau, SHORT if m <= -tau, else HOLD. Carried: the
    hysteresis rule of env/selective.py with exit = exit_ratio * enter, starting flat."""
    m = np.asarray(margins, dtype=np.float64)
    reg = np.asarray(regimes, dtype=np.int64)
    n = len(reg)
    count = np.ones(n, bool) if counted is None else np.asarray(counted, dtype=bool)
    start = [float(thresholds[name]) for name in REGIME_NAMES]
    controlled = [step > 0 and 0.0 < t <= 1.0 and name in targets for t, name in zip(start, REGIME_NAMES, strict=True)]
    log_tau = [math.log(max(t, MIN_THRESHOLD)) if c else 0.0 for t, c in zip(start, controlled, strict=True)]
    target = [float(targets.get(name, 0.0)) for name in REGIME_NAMES]
    lo, hi = math.log(MIN_THRESHOLD), 0.0
    out = np.empty(n, dtype=np.int64)
    rows, regs, counts = m.tolist(), reg.tolist(), count.tolist()
    hold, long_, short = int(Action.HOLD), int(Action.LONG), int(Action.SHORT)
    pos = hold
    for t in range(n):
        r = regs[t]
        enter = math.exp(log_tau[r]) if controlled[r] else start[r]
        if not carried:
            mt = rows[t]
            a = long_ if mt >= enter else (short if mt <= -enter else hold)
        else:
            exit_ = enter if enter > 1.0 else exit_ratio * enter  # a never-trade regime keeps nothing either
            mt = rows[t][pos]
            if pos == hold:
                a = long_ if mt >= enter else (short if mt <= -enter else hold)
            elif pos == long_:
                a = long_ if mt >= exit_ else (short if -mt >= enter else hold)
            else:
                a = short if -mt >= exit_ else (long_ if mt >= enter else hold)
            pos = a
        out[t] = a
        if controlled[r] and counts[t]:
            log_tau[r] = min(hi, max(lo, log_tau[r] + step * (target[r] - (a == hold))))
    return out


__all__ = ["MIN_THRESHOLD", "controlled_path"]
