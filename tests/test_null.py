"""The direction-randomised null and per-regime skill (himari_ray.env.null): validity, power, oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from himari_ray.env.metrics import trading_metrics
from himari_ray.env.null import (
    RegimeSkill,
    cannot_pay,
    direction_null,
    fee_series,
    null_positions,
    null_scores,
    null_signs,
    position_runs,
    positions_of,
    regime_skill,
    wilson_interval,
)
from himari_ray.types import Action, Regime

FEE = 0.0004


def sticky_policy(rng: np.random.Generator, n: int, stay: float = 0.8) -> np.ndarray:
    """Actions of a Markov chain that keeps its action with probability `stay`: blind to the future."""
    fresh = rng.integers(0, 3, n)
    keep = rng.random(n) < stay
    idx = np.where(keep, 0, np.arange(n))
    idx = np.maximum.accumulate(idx)  # each bar copies the last bar that drew afresh
    return fresh[idx]


def binomial_bounds(n: int, p: float, level: float = 0.999) -> tuple[int, int]:
    """Smallest lo and largest hi with P(X < lo) and P(X > hi) each <= (1 - level) / 2, X ~ Bin(n, p)."""
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    cdf = np.cumsum(pmf)
    tail = (1 - level) / 2
    lo = int(np.searchsorted(cdf, tail, side="right"))  # P(X <= lo - 1) <= tail
    hi = int(np.searchsorted(cdf, 1 - tail, side="left"))  # P(X > hi) <= tail
    return lo, hi


def test_no_signal_p_values_are_uniform():
    """iid symmetric returns, a policy blind to them: 300 p-values are uniform up to their 1/201 grid."""
    reps, k = 300, 200
    p_ret, p_sh = np.empty(reps), np.empty(reps)
    for i in range(reps):
        rng = np.random.default_rng(1000 + i)
        r = rng.normal(0.0, 0.01, 400)
        res = direction_null(sticky_policy(rng, 400), r, FEE, k=k, seed=i)
        p_ret[i], p_sh[i] = res.p_return, res.p_sharpe
    lo, hi = binomial_bounds(reps, 0.05)
    grid = np.linspace(0, 1, 201)
    ks_crit = 1.949 / math.sqrt(reps) + 1 / (k + 1)  # 99.9% Kolmogorov bound plus the p-values' grid step
    for p in (p_ret, p_sh):
        assert lo <= int((p < 0.05).sum()) <= hi
        ecdf = (p[None, :] <= grid[:, None]).mean(axis=1)
        assert np.max(np.abs(ecdf - grid)) < ks_crit


def test_planted_signal_is_found():
    """A policy right about the next return's sign 60% of the time over 3000 bars beats its null."""
    rng = np.random.default_rng(7)
    r = rng.normal(0.0, 0.01, 3000)
    right = rng.random(3000) < 0.6
    actions = np.where((r > 0) == right, Action.LONG, Action.SHORT)
    res = direction_null(actions, r, FEE)
    assert res.p_return < 0.01 and res.p_sharpe < 0.01
    assert res.edge_return > 0 and res.edge_sharpe > 0


def test_observed_scores_match_trading_metrics():
    rng = np.random.default_rng(3)
    a, r = sticky_policy(rng, 2000), rng.normal(0.0, 0.01, 2000)
    res = direction_null(a, r, FEE, k=50)
    m = trading_metrics(a, r, FEE)
    assert res.net_return == pytest.approx(m["net_return"], rel=1e-12, abs=1e-14)
    assert res.sharpe == pytest.approx(m["sharpe"], rel=1e-12)
    assert res.buy_and_hold == pytest.approx(m["buy_and_hold"], rel=1e-12)
    assert res.edge_return == pytest.approx(res.net_return - res.null_net_return)
    assert res.edge_sharpe == pytest.approx(res.sharpe - res.null_sharpe)
    assert res.k == 50 and res.n_traded == int((a != Action.HOLD).sum())


def test_nulls_keep_traded_bars_holding_periods_and_the_policys_fees():
    """Every null trades the same bars, flips whole positions only, and pays the policy's own fee series,
    including where a direct LONG -> SHORT flip would have cost it less had it paid its own."""
    rng = np.random.default_rng(11)
    n, k = 600, 40
    a = sticky_policy(rng, n, stay=0.6)
    r = rng.normal(0.0, 0.01, n)
    pos = positions_of(a).astype(np.float64)
    nulls = null_positions(a, k=k, seed=5)
    assert nulls.shape == (k, n)
    np.testing.assert_array_equal(nulls != 0, np.broadcast_to(pos != 0, (k, n)))
    run = position_runs(pos)
    for q in nulls:  # one sign per position: the null's sign never changes inside a run
        flip = q * pos
        for j in range(run.max() + 1):
            assert len(np.unique(flip[run == j])) == 1
    totals, sharpes = null_scores(a, r, FEE, k=k, seed=5)
    charged = nulls * r - fee_series(pos, FEE)  # the policy's fees, not the null's own
    np.testing.assert_allclose(totals, np.prod(1.0 + charged, axis=1) - 1.0, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sharpes, charged.mean(1) / charged.std(1) * math.sqrt(8760), rtol=1e-10)
    own = np.array([fee_series(q, FEE) for q in nulls])
    assert not np.allclose(own, fee_series(pos, FEE))  # so charging the null its own fees would differ


def test_chunking_does_not_change_the_nulls(monkeypatch):
    import himari_ray.env.null as null

    rng = np.random.default_rng(2)
    a, r = sticky_policy(rng, 500), rng.normal(0.0, 0.01, 500)
    whole = null_scores(a, r, FEE, k=30, seed=1)
    monkeypatch.setattr(null, "_CHUNK_CELLS", 1200)  # 2 nulls per chunk
    chunked = null_scores(a, r, FEE, k=30, seed=1)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])


def test_three_bar_oracle():
    """LONG, LONG, HOLD: one position, so each null is the policy itself or its mirror."""
    a = np.array([Action.LONG, Action.LONG, Action.HOLD])
    r = np.array([0.01, 0.02, 0.03])
    fee, k, seed = 0.001, 200, 4
    own = np.array([0.01 - fee, 0.02, -fee])
    mirror = np.array([-0.01 - fee, -0.02, -fee])
    obs_ret, mir_ret = np.prod(1 + own) - 1, np.prod(1 + mirror) - 1
    obs_sh = own.mean() / own.std() * math.sqrt(8760)
    mir_sh = mirror.mean() / mirror.std() * math.sqrt(8760)
    plus = null_signs(1, k, seed)[:, 0] == 1
    res = direction_null(a, r, fee, k=k, seed=seed)
    assert res.net_return == pytest.approx(obs_ret) and res.sharpe == pytest.approx(obs_sh)
    assert obs_ret > mir_ret and obs_sh > mir_sh  # so exactly the copies of the policy tie or beat it
    assert res.p_return == pytest.approx((1 + plus.sum()) / (k + 1))
    assert res.p_sharpe == pytest.approx((1 + plus.sum()) / (k + 1))
    assert res.null_net_return == pytest.approx(np.median(np.where(plus, obs_ret, mir_ret)))
    assert res.edge_sharpe == pytest.approx(obs_sh - np.median(np.where(plus, obs_sh, mir_sh)))
    assert res.buy_and_hold == pytest.approx(1.01 * 1.02 * 1.03 - 1)
    assert res.flat_return == 0.0 and res.n_positions == 1 and res.n_traded == 2


def test_flat_policy_has_no_edge():
    r = np.array([0.01, -0.02, 0.03])
    res = direction_null(np.zeros(3, dtype=np.int64), r, FEE)
    assert res.p_return == 1.0 and res.p_sharpe == 1.0
    assert res.edge_return == 0.0 and res.edge_sharpe == 0.0 and res.net_return == 0.0
    assert res.buy_and_hold == pytest.approx(1.01 * 0.98 * 1.03 - 1)
    assert set(res.to_dict()) >= {"p_return", "edge_return", "buy_and_hold"}


def test_position_runs_split_direct_flips_and_bad_input_is_refused():
    pos = np.array([0, 1, 1, -1, -1, 0, 1, 0, 0, -1])
    np.testing.assert_array_equal(position_runs(pos), [-1, 0, 0, 1, 1, -1, 2, -1, -1, 3])
    with pytest.raises(ValueError, match="action ids"):
        positions_of(np.array([0, 3]))
    with pytest.raises(ValueError, match="next_returns"):
        direction_null(np.array([1, 1]), np.array([0.1]))
    with pytest.raises(ValueError, match="k must"):
        direction_null(np.array([1, 1]), np.array([0.1, 0.1]), k=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=1, max_size=30), st.integers(0, 2**16))
def test_p_values_lie_on_the_grid_and_ties_count(actions, seed):
    a = np.array(actions)
    r = np.random.default_rng(seed).normal(0.0, 0.01, len(a))
    res = direction_null(a, r, FEE, k=20, seed=seed)
    for p in (res.p_return, res.p_sharpe):
        assert 1 / 21 - 1e-12 <= p <= 1.0
        assert (p * 21) == pytest.approx(round(p * 21))


def test_wilson_interval_oracle():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_regime_skill_counts_traded_bars_only():
    a = np.array([1, 2, 0, 1, 1, 0])
    r = np.array([0.01, 0.01, 0.05, -0.01, 0.02, 0.0])
    reg = np.array([0, 0, 0, 3, 3, 1])
    skill = regime_skill(a, r, reg)
    assert skill["LOW_VOL"].traded == 2 and skill["LOW_VOL"].hits == 1 and skill["LOW_VOL"].hit_rate == 0.5
    assert skill["CRISIS"].traded == 2 and skill["CRISIS"].hits == 1
    assert (skill["CRISIS"].low, skill["CRISIS"].high) == pytest.approx(wilson_interval(1, 2))
    assert skill["TRENDING"].traded == 0 and math.isnan(skill["TRENDING"].hit_rate)
    assert skill["HIGH_VOL"].traded == 0


def test_cannot_pay_findings():
    n, hits = 612, 294  # 0.48, interval [0.44, 0.52]
    a = np.ones(n + 100, dtype=np.int64)
    r = np.r_[np.full(hits, 0.01), np.full(n - hits, -0.01), np.full(60, 0.01), np.full(40, -0.01)]
    reg = np.r_[np.full(n, Regime.CRISIS), np.full(100, Regime.LOW_VOL)]
    skill = regime_skill(a, r, reg)
    assert cannot_pay(skill, {"CRISIS": 0.53, "LOW_VOL": 0.53}) == [
        "CRISIS: hit rate 0.48 [0.44, 0.52] on 612 traded bars is below break-even p* 0.53: trading there cannot pay"
    ]
    assert cannot_pay(skill, {"CRISIS": 0.51}) == []  # the interval reaches p*: it may pay
    assert cannot_pay(skill, {"CRISIS": float("nan"), "LOW_VOL": float("nan")}) == []
    inf = cannot_pay(skill, {"LOW_VOL": float("inf"), "TRENDING": float("inf")})
    assert (
        len(inf) == 1 and inf[0].startswith("LOW_VOL:") and "p* never" in inf[0]
    )  # TRENDING never traded; no "inf" shown (issue 18)
    empty = RegimeSkill("HIGH_VOL", 0, 0, float("nan"), float("nan"), float("nan"))
    assert cannot_pay({"HIGH_VOL": empty}, {"HIGH_VOL": 0.9}) == []
