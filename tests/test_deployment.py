"""Selective deployment end to end (issue 16): thresholds fitted on the end of train and nothing after it,
`act` reproducing the evaluator's actions exactly, the null and the per-regime skill in every report, and the
constrained objective ranking every band-violating report after every satisfying one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from himari_ray.data.dataset import DataSpec, import_ohlcv
from himari_ray.data.store import save_dataset
from himari_ray.env.trading import EnvConfig
from himari_ray.policy.act import act_on_bars
from himari_ray.policy.bundle import load_bundle
from himari_ray.policy.export import export_module
from himari_ray.rl.config import EvalConfig, ObjectiveConfig, TrialConfig
from himari_ray.rl.evaluate import PolicyEvaluator
from himari_ray.rl.scoring import score
from himari_ray.schema import (
    BAND_DISTANCE,
    FEASIBLE,
    OBJECTIVE,
    PROFIT_OK,
    VAL_EDGE,
    VAL_EDGE_P,
    VAL_SHARPE,
    VAL_TURNOVER,
    breakeven_p,
    hit_rate,
    hold_pct,
    threshold,
)
from himari_ray.types import ACTION_NAMES, REGIME_NAMES
from tests.export_kit import CONTEXT, NO_SEARCH, make_module

SELECTIVE = EvalConfig(deploy="selective", calibration_frac=0.3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, bars_file):
    ds = import_ohlcv(bars_file)
    root = tmp_path_factory.mktemp("deploy")
    save_dataset(ds, root / "data")
    return ds, root / "data"


def env(path, mode: str = "per_bar") -> EnvConfig:
    return EnvConfig(data=DataSpec(source="dataset", path=str(path)), context_len=CONTEXT, position_mode=mode)


def changed_after_train(ds):
    """The same dataset with every value of validation and test replaced by other, plausible values."""
    rng = np.random.default_rng(11)

    def scramble(split):
        return dataclasses.replace(
            split,
            features=(split.features[::-1] * 1.7 + rng.normal(0, 1, split.features.shape)).astype(np.float32),
            regime_ids=rng.integers(0, 4, len(split)),
            returns=rng.normal(0, 0.05, len(split)),
            prices=split.prices[::-1].copy(),
        )

    return dataclasses.replace(ds, val=scramble(ds.val), test=scramble(ds.test))


@pytest.mark.parametrize("mode", ["per_bar", "carried"])
def test_thresholds_never_read_validation_or_test(dataset, mode):
    ds, path = dataset
    module = make_module(ds.n_features, carried=mode == "carried")
    honest = PolicyEvaluator(env(path, mode), SELECTIVE, dataset=ds)
    scrambled = PolicyEvaluator(env(path, mode), SELECTIVE, dataset=changed_after_train(ds))
    rule = honest.fit_selective(module)
    assert rule.to_dict() == scrambled.fit_selective(module).to_dict()
    # and the fit does read the end of train: a scrambled calibration slice moves the thresholds
    calib = dataclasses.replace(ds, train=changed_after_train(dataclasses.replace(ds, val=ds.train)).val)
    assert PolicyEvaluator(env(path, mode), SELECTIVE, dataset=calib).fit_selective(module).to_dict() != rule.to_dict()
    assert any(0 < t < 1 for t in rule.thresholds.values())


def test_the_fitted_shares_sit_at_the_band_centres_on_the_calibration_slice_and_transfer_roughly(dataset):
    ds, path = dataset
    module = make_module(ds.n_features)
    ev = PolicyEvaluator(env(path), SELECTIVE, dataset=ds)
    rule = ev.fit_selective(module)
    windows, regimes, _ = ev.calibration
    probs = np.exp(ev._logits(module, windows, regimes))
    actions = rule.actions(probs / probs.sum(-1, keepdims=True), regimes)
    for i, name in enumerate(REGIME_NAMES):
        mask = regimes == i
        if mask.sum() < 20:
            continue
        lo, hi = SELECTIVE.bands[name]
        assert abs(100 * (actions[mask] == 0).mean() - (lo + hi) / 2) <= 100 / mask.sum() + 1e-9, name
    metrics = ev(module)
    for name in REGIME_NAMES:  # the report carries each regime's threshold, hit rate and p*
        assert metrics[threshold(name)] == rule.thresholds[name]
        assert np.isfinite(metrics[hold_pct(name)]) and breakeven_p(name) in metrics and hit_rate(name) in metrics
    assert 0 < metrics[VAL_EDGE_P] <= 1 and np.isfinite(metrics[VAL_EDGE])


@pytest.mark.parametrize("hold_control", [0.0, 0.05])
@pytest.mark.parametrize("mode", ["per_bar", "carried"])
def test_act_equals_the_evaluator_under_selective_deployment(tmp_path, bars_file, dataset, mode, hold_control):
    ds, path = dataset
    module = make_module(ds.n_features, carried=mode == "carried")
    config = TrialConfig(env=env(path, mode), eval=SELECTIVE.model_copy(update={"hold_control": hold_control}))
    export_module(module, ds, config, tmp_path / "bundle", NO_SEARCH, onnx=False)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.spec.selective["mode"] == mode and bundle.spec.selective.get("hold_control", 0.0) == hold_control
    ev = PolicyEvaluator(config.env, config.eval, dataset=ds)
    _, actions, rule = ev.policy(module)
    assert rule.to_dict() == bundle.spec.selective
    c = CONTEXT
    bars = ev.window_index + (c - 1)
    stamps = pd.to_datetime(ds.val.timestamps[bars], utc=True).strftime("%Y-%m-%dT%H:%M:%SZ")
    times = stamps[ev.scored]
    expected = np.asarray(ACTION_NAMES)[actions]
    # From the file's first decision bar, act's path (and controller) starts before the evaluator's ...
    frame, _ = act_on_bars(bundle, bars_file)
    got = frame.set_index("timestamp")["action"].loc[times].to_numpy()
    if mode == "carried" and hold_control == 0:  # ... and a static carried path meets the evaluator's later
        assert (got[200:] == expected[200:]).all()
    # ... from --start at validation's first decision bar, flat and at the fitted thresholds, it is the same
    started, skipped = act_on_bars(bundle, bars_file, start=stamps[0])
    assert started["timestamp"].iloc[skipped] == stamps[0] and (started["action"].iloc[:skipped] == "").all()
    got = started.set_index("timestamp")["action"].loc[times].to_numpy()
    assert len(expected) > 200 and (got == expected).all()
    assert 0 < (expected == "HOLD").mean() < 1
    # no draws: the same file always gives the same actions
    assert act_on_bars(bundle, bars_file, seed=9)[0]["action"].equals(frame["action"])


def test_selective_trades_less_than_the_sampler_it_replaces(dataset):
    ds, path = dataset
    module = make_module(ds.n_features)
    sampler = PolicyEvaluator(env(path), EvalConfig(deploy="sample"), dataset=ds)(module)
    selective = PolicyEvaluator(env(path), SELECTIVE, dataset=ds)(module)
    assert selective[VAL_TURNOVER] < sampler[VAL_TURNOVER]


def test_the_constrained_objective_ranks_every_violator_after_every_satisfying_report():
    cfg = ObjectiveConfig(mode="constrained", band_tolerance=5.0)
    reports = []
    rng = np.random.default_rng(0)
    for _ in range(200):
        r = {BAND_DISTANCE: float(rng.uniform(0, 20)), VAL_SHARPE: float(rng.normal(0, 4)), PROFIT_OK: True}
        r[VAL_EDGE] = float(rng.normal())
        score(r, cfg)
        reports.append(r)
    ok = [r[OBJECTIVE] for r in reports if r[FEASIBLE]]
    bad = [r[OBJECTIVE] for r in reports if not r[FEASIBLE]]
    assert ok and bad and max(ok) < min(bad)
    assert all(r[FEASIBLE] == (r[BAND_DISTANCE] <= 5.0) for r in reports)
    best = min((r for r in reports if r[FEASIBLE]), key=lambda r: r[OBJECTIVE])
    assert min(best[VAL_SHARPE], 5.0) == max(min(r[VAL_SHARPE], 5.0) for r in reports if r[FEASIBLE])
    # among violators, the nearer to its bands ranks first
    worst = sorted((r for r in reports if not r[FEASIBLE]), key=lambda r: r[OBJECTIVE])
    assert [r[BAND_DISTANCE] for r in worst] == sorted(r[BAND_DISTANCE] for r in worst)


def test_act_refuses_a_start_that_is_not_a_time_or_lies_after_the_bars(tmp_path, bars_file, dataset):
    from himari_ray.types import UserInputError

    ds, path = dataset
    config = TrialConfig(env=env(path), eval=SELECTIVE)
    export_module(make_module(ds.n_features), ds, config, tmp_path / "bundle", NO_SEARCH, onnx=False)
    bundle = load_bundle(tmp_path / "bundle")
    with pytest.raises(UserInputError, match="--start 'soon': not a timestamp"):
        act_on_bars(bundle, bars_file, start="soon")
    with pytest.raises(UserInputError, match="after the last bar"):
        act_on_bars(bundle, bars_file, start="2100-01-01")
