"""Robust objective: seeds x anchored walk-forward folds inside train+val; the test split is never read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from himari_ray.data.dataset import DataSpec, walk_forward_fold
from himari_ray.env.trading import EnvConfig
from himari_ray.rl.config import RobustConfig, TrialConfig
from himari_ray.rl.scoring import aggregate
from tests.conftest import SMALL_SPEC

REPO = Path(__file__).resolve().parents[1]


def test_walk_forward_folds_are_anchored_chronological_and_fit_their_own_scaler(small_dataset):
    n = len(small_dataset.train) + len(small_dataset.val)
    folds = [walk_forward_fold(small_dataset, 3, k) for k in range(3)]
    chunk = n // 4
    for k, f in enumerate(folds):
        assert len(f.train) == (k + 1) * chunk
        assert f.train.timestamps[-1] < f.val.timestamps[0]
        assert len(f.test) == 0  # nothing of the real test split travels with a fold
        np.testing.assert_allclose(f.scaler.mean, f.train.features.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert folds[-1].val.timestamps[-1] == small_dataset.val.timestamps[-1]
    np.testing.assert_array_equal(folds[0].train.returns, small_dataset.train.returns[:chunk])


def test_a_fold_never_sees_bars_after_its_validation_window(small_dataset):
    import dataclasses

    val = small_dataset.val
    poisoned_val = dataclasses.replace(
        val, features=np.full_like(val.features, 1e6), returns=np.full_like(val.returns, 9.0)
    )
    poisoned = dataclasses.replace(small_dataset, val=poisoned_val)
    a, b = walk_forward_fold(small_dataset, 3, 0), walk_forward_fold(poisoned, 3, 0)
    # fold 0 ends before val begins (chunk 1 of 4 < 60% train): identical, scaler included
    np.testing.assert_array_equal(a.val.features, b.val.features)
    np.testing.assert_array_equal(a.scaler.std, b.scaler.std)


def test_members_cover_every_seed_and_fold():
    trial = TrialConfig(env=EnvConfig(data=SMALL_SPEC), robust=RobustConfig(seeds=2, folds=3))
    members = trial.members()
    assert len(members) == 6
    assert {(m.env.data.fold, m.train.seed) for m in members} == {(f, s) for f in range(3) for s in (0, 1)}
    assert all(m.env.data.folds == 3 for m in members)
    plain = TrialConfig(env=EnvConfig(data=SMALL_SPEC)).members()
    assert len(plain) == 1 and plain[0].env.data == SMALL_SPEC
    assert DataSpec.model_validate(members[0].env.data.model_dump()) == members[0].env.data


def test_aggregate_oracle():
    a = {"band_distance": 10.0, "val_sharpe": 1.0, "hold_pct_ALL": 50.0, "leak_alarm": False, "profit_ok": True}
    b = {"band_distance": 30.0, "val_sharpe": -1.0, "hold_pct_ALL": float("nan"), "leak_alarm": True, "profit_ok": True}
    mean = aggregate([a, b], "mean")
    assert mean["band_distance"] == 20.0 and mean["band_distance_worst"] == 30.0
    assert mean["val_sharpe"] == 0.0 and mean["val_sharpe_worst"] == -1.0
    assert mean["hold_pct_ALL"] == 50.0  # NaN (a regime absent from one fold) does not erase the other
    assert mean["leak_alarm"] and mean["profit_ok"] and mean["members"] == 2
    worst = aggregate([a, b], "worst")
    assert worst["band_distance"] == 30.0 and worst["val_sharpe"] == -1.0
    assert worst["objective"] > mean["objective"]
    assert aggregate([a], "worst") is a


def _poison_test_split(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)
    with np.load(dst / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key in ("test.features", "test.returns", "test.prices", "test.regime_confidences"):
        arrays[key] = np.full_like(arrays[key], np.nan)
    np.savez_compressed(dst / "arrays.npz", **arrays)


@pytest.mark.slow
def test_robust_search_reports_mean_and_worst_and_never_reads_the_test_split(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
    cli = [sys.executable, "-m", "himari_ray"]
    clean, poisoned = tmp_path / "clean", tmp_path / "poisoned"
    subprocess.run([*cli, "data", "synth", "--out", str(clean), "--n-bars", "3000", "--seed", "3"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    _poison_test_split(clean, poisoned)
    space = tmp_path / "robust.yaml"
    text = (REPO / "tests" / "spaces" / "e2e.yaml").read_text().replace("name: e2e", "name: robust")
    space.write_text(text + "robust: {seeds: 2, folds: 2}\n")
    runs = []
    for data in (clean, poisoned):
        out = tmp_path / f"out_{data.name}"
        proc = subprocess.run(
            [*cli, "search", str(space), "--out", str(out), "--data", str(data), "--trials", "1", "--seed", "2"],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        trial = next((out / "tune").glob("trial_*"))
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        runs.append(
            [{k: r[k] for k in ("band_distance", "band_distance_worst", "val_sharpe", "members")} for r in reports]
        )
    assert runs[0] == runs[1]  # NaN everywhere in the test split changed nothing
    last = runs[0][-1]
    assert last["members"] == 4 and last["band_distance_worst"] >= last["band_distance"]


def test_robust_preflight_reads_only_the_folds_training_bars():
    """The base train split holds the folds' validation bars; the preflight must not read them. Where the
    trade cost at which CRISIS turns HOLD-dominant differs between the base train split and the folds'
    training bars, the skip decision follows the folds."""
    from himari_ray.data.dataset import load_dataset
    from himari_ray.env.preflight import PreflightConfig, band_conflicts, preflight
    from himari_ray.env.rewards import RewardConfig
    from himari_ray.rl.trainable import preflight_skip

    env = EnvConfig(data=SMALL_SPEC, context_len=16, episode_len=128, reward=RewardConfig(family="pnl_cost"))
    base = TrialConfig(env=env, preflight=PreflightConfig(), robust=RobustConfig(folds=2))

    def base_train_conflicts(cost: float) -> bool:
        t = base.with_params({"trade_cost": cost})
        return bool(band_conflicts(preflight(load_dataset(t.env.data), t.env, t.preflight), t.eval.bands))

    def threshold(conflicts) -> float:  # the lowest trade cost that is skipped (conflicts grow with cost)
        lo, hi = 1e-4, 1.0
        for _ in range(30):
            mid = (lo * hi) ** 0.5
            lo, hi = (lo, mid) if conflicts(mid) else (mid, hi)
        return hi

    at_base = threshold(base_train_conflicts)
    at_folds = threshold(lambda c: preflight_skip(base.with_params({"trade_cost": c})) is not None)
    assert abs(at_base - at_folds) > 1e-4 * at_base  # the two bar sets price trading differently
    between = (at_base * at_folds) ** 0.5
    follows_folds = preflight_skip(base.with_params({"trade_cost": between})) is not None
    assert follows_folds == (at_folds < at_base) and base_train_conflicts(between) == (at_base < at_folds)
