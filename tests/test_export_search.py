"""`himari-ray export` of a search: a real one-trial search (2 PPO iterations on the imported real bars,
through the CLI) exported and replayed through `act` to the evaluator's actions (slow); the checkpoint of the
best report, not the latest; a relative search directory; and what export refuses in one line (a directory
that is not a search, a policy on synthetic features, a trial that does not exist, an existing --out).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ray.rllib.core.columns import Columns

from himari_ray.data.store import load_dataset_dir
from himari_ray.env.trading import decision_windows
from himari_ray.policy.bundle import load_bundle
from himari_ray.policy.export import export_module
from himari_ray.report import load_search
from tests.cli_kit import assert_one_line_error, run_cli
from tests.export_kit import CONTEXT, NO_SEARCH, evaluator_actions, make_module, trial_config

REPO = Path(__file__).resolve().parents[1]


def test_export_refuses_a_directory_that_is_not_a_search_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "notasearch").mkdir()
    code, _, err = run_cli(capsys, "export", tmp_path / "notasearch", "--out", tmp_path / "b")
    assert_one_line_error(code, err, "not a himari-ray search directory")
    assert not (tmp_path / "b").exists()


def test_export_refuses_a_policy_trained_on_features_act_cannot_compute(tmp_path, small_dataset):
    from himari_ray.types import UserInputError

    module = make_module(small_dataset.n_features)
    with pytest.raises(UserInputError, match="trained on synthetic features"):
        export_module(module, small_dataset, trial_config(tmp_path), tmp_path / "b", NO_SEARCH)
    assert not (tmp_path / "b").exists()


# --- a real search, exported and replayed through the CLI -------------------------------------------------


@pytest.fixture(scope="module")
def real_search(tmp_path_factory, bars_file) -> tuple[Path, Path]:
    """`data import` of the real bars, then a real one-trial search (2 PPO iterations) on that dataset."""
    root = tmp_path_factory.mktemp("search")
    # A private Ray temp dir: a bare ray.init() joins the cluster a `ray start` on this machine last recorded
    # there (another test's, or a user's); short, because Ray's socket paths must stay under 108 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="hr-", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_tmp}
    cli = [sys.executable, "-m", "himari_ray"]
    data, out = root / "data", root / "out"
    space = REPO / "tests" / "spaces" / "e2e.yaml"
    try:
        proc = subprocess.run(
            [*cli, "data", "import", str(bars_file), "--out", str(data)], capture_output=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
        proc = subprocess.run(
            [*cli, "search", str(space), "--trials", "1", "--out", str(out), "--data", str(data)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return out, data


@pytest.mark.slow
def test_export_of_a_real_search_round_trips_through_act(real_search, bars_file, tmp_path, capsys):
    from ray.rllib.core.rl_module.rl_module import RLModule

    from himari_ray.policy.export import find_trial
    from himari_ray.searchdir import MODULE_IN_CHECKPOINT

    out, data = real_search
    bundle_dir = tmp_path / "bundle"
    code, stdout, err = run_cli(capsys, "export", out, "--out", bundle_dir)
    assert code == 0, err
    found = find_trial(out, None)
    best = int(load_search(out).trials.set_index("trial").loc[1, "iteration"])  # the report the table shows
    assert found.iteration == best and f"exported trial 1 (iteration {best}," in stdout
    module = RLModule.from_checkpoint(str(found.checkpoint / "member_0" / MODULE_IN_CHECKPOINT)).eval()
    bundle = load_bundle(bundle_dir)
    assert bundle.spec.trial == 1 and bundle.spec.iteration == best
    assert bundle.spec.trial_config == found.config.model_dump(mode="json")
    assert bundle.spec.search["space"] == "e2e" and (bundle_dir / "space.yaml").read_text()

    ds = load_dataset_dir(data)
    windows = np.ascontiguousarray(decision_windows(ds.scaler.transform(ds.val.features), CONTEXT))
    regimes = ds.val.regime_ids[CONTEXT - 1 :]
    with torch.no_grad():
        position = torch.zeros(len(regimes), dtype=torch.int64)  # per_bar: the policy is always flat before it acts
        obs = {"window": torch.from_numpy(windows), "regime": torch.from_numpy(regimes), "position": position}
        ref = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS].numpy()
    np.testing.assert_array_equal(bundle.logits(windows, regimes).argmax(-1), ref.argmax(-1))

    actions = tmp_path / "actions.csv"
    code, _, err = run_cli(capsys, "act", bundle_dir, bars_file, "--out", actions)
    assert code == 0, err
    expected = evaluator_actions(ds, module, found.config.members()[0])
    got = pd.read_csv(actions).set_index("timestamp")["action"].loc[expected.index]
    assert (got.to_numpy() == expected.to_numpy()).all()


@pytest.mark.slow
def test_export_refuses_a_trial_that_does_not_exist_and_an_existing_out(real_search, tmp_path, capsys):
    out, _ = real_search
    code, _, err = run_cli(capsys, "export", out, "--trial", "7", "--out", tmp_path / "b")
    assert_one_line_error(code, err, "--trial 7: no such trial", "trials: '1'")
    assert not (tmp_path / "b").exists()
    (tmp_path / "b").mkdir()
    code, _, err = run_cli(capsys, "export", out, "--out", tmp_path / "b")
    assert_one_line_error(code, err, "already exists")
    assert not any((tmp_path / "b").iterdir())


def test_export_takes_the_checkpoint_of_the_best_report_not_the_latest(tmp_path):
    """The table ranks a trial by its best report; export must ship that policy (the search keeps its
    checkpoint beside the latest), and falls back to the latest only where the best is not on disk."""
    from himari_ray.searchdir import MODULE_IN_CHECKPOINT, best_checkpoint

    def checkpoint(n: int, iteration: int, best: int) -> None:
        d = tmp_path / f"checkpoint_{n:06d}"
        (d / "member_0" / MODULE_IN_CHECKPOINT).mkdir(parents=True)
        (d / "himari_trial_state.json").write_text(
            json.dumps({"iteration": iteration, "best": {"best_iteration": best}})
        )

    checkpoint(6, 7, 7)
    checkpoint(11, 12, 7)
    assert best_checkpoint(tmp_path).name == "checkpoint_000006"
    shutil.rmtree(tmp_path / "checkpoint_000006")
    assert best_checkpoint(tmp_path).name == "checkpoint_000011"


def test_export_takes_a_relative_search_directory(real_search, tmp_path, capsys, monkeypatch):
    """`himari-ray export run --out bundle` from the directory holding `run`: RLlib reads checkpoint paths as
    URIs, and a relative one used to end in pyarrow's traceback ("URI has empty scheme")."""
    out, _ = real_search
    monkeypatch.chdir(out.parent)
    code, stdout, err = run_cli(capsys, "export", out.name, "--out", tmp_path / "bundle")
    assert code == 0 and "exported trial 1" in stdout, err
    assert load_bundle(tmp_path / "bundle").spec.trial == 1
