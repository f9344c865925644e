"""The look-ahead leak alarm: is a policy right more often, on the bars it trades, than honest features allow?

A fixed hit-rate threshold cannot tell a leak from selectivity: a train-only logistic model trading its 30%
most confident validation bars of the bundled sample is right 60% of the time, while ~54% is the figure for
all bars (issue 8). So the alarm compares like with like, with two one-sided tests:

1. **Against an honest baseline at the same selectivity.** A logistic regression on the same train-scaled
   features at bar t, fitted on the train split only, trades the same number of validation bars as the
   policy (its most confident ones). H0: policy hit rate <= baseline hit rate + `margin` (a window model may
   honestly see a little more than one bar); unpooled two-proportion z-test. The two trade overlapping bars,
   so their outcomes are positively correlated and the independent-samples variance overstates the variance
   of the difference: the test is conservative (fewer false alarms, not more).
2. **Against a ceiling.** If the features themselves carry the future, the baseline learns it too and test 1
   is blind; so H0: policy hit rate <= `ceiling` (no honest hourly policy is right 65% of the time on its
   trades, ARCHITECTURE §2.2); exact binomial tail.

The alarm sounds when either p-value is below `false_alarm_rate / 2` (Bonferroni), with at least
`min_trades` traded bars: an honest policy meeting both nulls sounds with probability <= `false_alarm_rate`
per evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from himari_ray.types import POSITION_OF_ACTION


class LeakAlarmConfig(BaseModel):
    """When a policy's validation hit rate is too good to be honest (see himari_ray.env.leak)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_trades: int = Field(100, ge=10, description="Traded val bars needed before the alarm can sound.")
    margin: float = Field(
        0.05, ge=0, le=0.5, description="Hit-rate points a policy may honestly beat the baseline at equal selectivity."
    )
    ceiling: float = Field(0.65, gt=0.5, lt=1.0, description="Hit rate on traded bars no honest policy reaches.")
    false_alarm_rate: float = Field(
        1e-4, gt=0, lt=0.5, description="Chance per evaluation that an honest policy sounds the alarm (both tests)."
    )
    ridge: float = Field(1.0, gt=0, description="L2 penalty of the baseline logistic regression.")


class LogisticBaseline:
    """L2-regularised logistic regression of `next return > 0` on the features at bar t, by Newton steps
    (44 features: each step is one small linear solve)."""

    def __init__(self, x: np.ndarray, up: np.ndarray, ridge: float = 1.0, steps: int = 25):
        x1 = np.c_[np.asarray(x, np.float64), np.ones(len(x))]
        y = np.asarray(up, np.float64)
        w = np.zeros(x1.shape[1])
        penalty = ridge * np.eye(x1.shape[1])
        penalty[-1, -1] = 0.0  # the intercept is not shrunk
        for _ in range(steps):
            p = 1.0 / (1.0 + np.exp(-x1 @ w))
            grad = x1.T @ (p - y) + penalty @ w
            hess = (x1 * (p * (1 - p))[:, None]).T @ x1 + penalty
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.max(np.abs(step)) < 1e-8:
                break
        self.w = w

    def prob_up(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(np.asarray(x, np.float64) @ self.w[:-1] + self.w[-1])))

    def hits_at(self, x: np.ndarray, next_returns: np.ndarray, k: int) -> int:
        """Correct calls among the k bars it is most confident about (LONG above 0.5, SHORT below)."""
        if k <= 0:
            return 0
        p = self.prob_up(x)
        top = np.argsort(-np.abs(p - 0.5), kind="stable")[:k]
        return int((np.where(p[top] >= 0.5, 1.0, -1.0) * next_returns[top] > 0).sum())


def binomial_tail(hits: int, n: int, p: float) -> float:
    """P(X >= hits) for X ~ Binomial(n, p), exactly (log-space terms)."""
    if hits <= 0:
        return 1.0
    k = np.arange(hits, n + 1)
    logs = (
        np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    return float(min(1.0, np.exp(logs).sum()))


def two_proportion_p(hits_a: int, n_a: int, hits_b: int, n_b: int, margin: float) -> float:
    """One-sided p-value of H0: rate_a <= rate_b + margin (unpooled z-test; normal approximation)."""
    a, b = hits_a / n_a, hits_b / n_b
    var = a * (1 - a) / n_a + b * (1 - b) / n_b
    sd = math.sqrt(max(var, 0.25 / (n_a + n_b) ** 2))  # floor: two perfect records are not infinitely sure
    return 0.5 * math.erfc((a - b - margin) / sd / math.sqrt(2))


@dataclass(frozen=True)
class LeakVerdict:
    alarm: bool
    baseline_hit_rate: float
    p_vs_baseline: float
    p_vs_ceiling: float


def leak_verdict(
    actions: np.ndarray,
    next_returns: np.ndarray,
    features_t: np.ndarray,
    baseline: LogisticBaseline,
    cfg: LeakAlarmConfig,
) -> LeakVerdict:
    """The alarm for a policy's `actions` on decision bars with `next_returns` (the return of bar t+1) and
    the scaled features of bar t, against `baseline` trading the same number of bars."""
    pos = POSITION_OF_ACTION[np.asarray(actions)]
    traded = pos != 0
    n = int(traded.sum())
    if n == 0:
        return LeakVerdict(False, float("nan"), 1.0, 1.0)
    hits = int((pos * next_returns > 0)[traded].sum())
    base_hits = baseline.hits_at(features_t, next_returns, n)
    p_base = two_proportion_p(hits, n, base_hits, n, cfg.margin)
    p_ceil = binomial_tail(hits, n, cfg.ceiling)
    alarm = n >= cfg.min_trades and min(p_base, p_ceil) < cfg.false_alarm_rate / 2
    return LeakVerdict(bool(alarm), base_hits / n, p_base, p_ceil)
