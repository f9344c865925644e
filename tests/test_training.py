"""Training: configs -> RLlib in one place, the greedy validation evaluator, and (slow) real Tune runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from himari_ray.env.metrics import trading_metrics
from himari_ray.env.preflight import PreflightConfig
from himari_ray.env.rewards import RewardConfig
from himari_ray.env.trading import EnvConfig
from himari_ray.rl.config import TrainConfig, TrialConfig, build_ppo_config
from himari_ray.rl.evaluate import PolicyEvaluator
from tests.conftest import SMALL_SPEC

REPO = Path(__file__).resolve().parents[1]


def small_trial(**train) -> TrialConfig:
    env = EnvConfig(data=SMALL_SPEC, context_len=16, episode_len=128, reward=RewardConfig(family="pnl_cost"))
    t = {"iterations": 2, "train_batch_size": 256, "minibatch_size": 128, "num_epochs": 1, **train}
    # The preflight is tested on its own (test_preflight.py); here every configuration must train.
    return TrialConfig(env=env, train=TrainConfig(**t), preflight=PreflightConfig(enabled=False))


def test_with_params_routes_ppo_settings_and_reward_parameters():
    trial = small_trial().with_params({"entropy_coeff": 0.03, "lr": 1e-3, "trade_cost": 0.2})
    assert trial.train.entropy_coeff == 0.03 and trial.train.lr == 1e-3
    assert trial.env.reward.params == {"trade_cost": 0.2}
    with pytest.raises(ValueError, match="trade_cst"):
        small_trial().with_params({"trade_cst": 0.2})


def test_build_ppo_config_carries_every_setting():
    trial = small_trial(entropy_coeff=0.02, gamma=0.5, num_envs_per_env_runner=3, seed=9)
    cfg = build_ppo_config(trial)
    assert cfg.entropy_coeff == 0.02 and cfg.gamma == 0.5 and cfg.lr == trial.train.lr
    assert cfg.minibatch_size == 128 and cfg.num_epochs == 1 and cfg.train_batch_size_per_learner == 256
    assert cfg.num_envs_per_env_runner == 3 and cfg.seed == 9
    assert EnvConfig.model_validate(cfg.env_config) == trial.env
    assert cfg.rl_module_spec.model_config["d_model"] == trial.model.d_model


class ConstantModule(torch.nn.Module):
    """A stand-in policy that always prefers one action: the evaluator, not the model, is under test."""

    def __init__(self, action: int):
        super().__init__()
        self.action = action

    def forward_inference(self, batch):
        obs = batch["obs"]
        assert obs["window"].shape[1:] == (16, 12) and obs["window"].dtype == torch.float32
        logits = torch.zeros(obs["regime"].shape[0], 3)
        logits[:, self.action] = 1.0
        return {"action_dist_inputs": logits}


def test_greedy_evaluator_oracles(small_dataset):
    trial = small_trial()
    ev = PolicyEvaluator(trial.env, trial.eval.model_copy(update={"batch_size": 100}))
    n = len(small_dataset.val)
    assert len(ev.regimes) == n - 16  # decision bars 15 .. n-2
    np.testing.assert_array_equal(ev.next_returns, small_dataset.val.returns[16:])
    hold = ev(ConstantModule(0))
    present = {r for r in ("LOW_VOL", "TRENDING", "HIGH_VOL", "CRISIS") if not np.isnan(hold[f"hold_pct_{r}"])}
    assert all(hold[f"hold_pct_{r}"] == 100.0 for r in present)
    uppers = {"LOW_VOL": 60, "TRENDING": 40, "HIGH_VOL": 70, "CRISIS": 80}
    assert hold["band_distance"] == pytest.approx(sum(100 - uppers[r] for r in present))
    assert hold["val_net_return"] == 0.0
    long = ev(ConstantModule(1))
    expected = trading_metrics(np.ones(len(ev.regimes), dtype=int), ev.next_returns, trial.eval.fee)
    assert long["val_net_return"] == pytest.approx(expected["net_return"])
    assert long["long_pct_ALL"] == 100.0


@pytest.mark.slow
def test_trial_resumes_from_its_checkpoint_after_a_crash(local_ray, tmp_path):
    """A real Tune run in which the trial process dies after its first checkpointed report; Tune restarts
    it and it continues at iteration 2 from the checkpoint instead of starting over."""
    from ray import tune

    from himari_ray.rl.trainable import train_trial

    marker = tmp_path / "crashed"

    def crash_once(config):
        import ray.tune

        if tune.get_checkpoint() is None and not marker.exists():
            original = ray.tune.report

            def report_then_die(metrics, checkpoint=None):
                original(metrics, checkpoint=checkpoint)
                marker.write_text("1")
                os._exit(1)  # the trial's worker process dies: a real crash, not an exception

            ray.tune.report = report_then_die
        train_trial(config)

    tuner = tune.Tuner(
        crash_once,
        param_space={"trial": small_trial().model_dump(mode="json"), "trade_cost": 0.1},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), name="resume", failure_config=tune.FailureConfig(max_failures=1), verbose=0
        ),
    )
    grid = tuner.fit()
    assert marker.exists()
    result = grid[0]
    assert result.error is None
    reports = [json.loads(line) for line in (Path(result.path) / "result.json").read_text().splitlines()]
    assert [r["iteration"] for r in reports] == [1, 2]
    assert reports[1]["iterations_since_restore"] == 1  # restored, not retrained from scratch
    assert reports[1]["env_steps_sampled"] > reports[0]["env_steps_sampled"]  # RLlib state came back too


@pytest.mark.slow
def test_end_to_end_search_and_analyze(tmp_path):
    """A dataset written by `data synth`, then 2 trials x 2 iterations on it through the real CLI; analyze then
    prints the same table without Ray."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
    out, data = tmp_path / "out", tmp_path / "data"
    cli = [sys.executable, "-m", "himari_ray"]
    synth = subprocess.run(
        [*cli, "data", "synth", "--out", str(data), "--n-bars", "3000", "--seed", "3"], capture_output=True, env=env
    )
    assert synth.returncode == 0, synth.stderr
    space = REPO / "tests" / "spaces" / "e2e.yaml"
    proc = subprocess.run(
        [*cli, "search", str(space), "--trials", "2", "--out", str(out), "--seed", "1", "--data", str(data)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    reports = [line for line in lines if line.startswith("trial ")]
    assert len(reports) == 4, proc.stdout  # 2 trials x 2 iterations, one line per report
    assert all("HOLD% LOW_VOL=" in line and "band" in line for line in reports)
    end = next(i for i, line in enumerate(lines) if line.startswith("results: "))  # then the next commands
    assert lines[end - 1] == "" and any(line.strip().startswith("himari-ray analyze") for line in lines[end:])
    table = lines[
        lines.index(next(line for line in lines if line.lstrip().startswith("trial ") and "status" in line)) : end - 1
    ]
    assert all(line.split()[0] in ("1", "2") for line in table[1:3])  # one row per trial
    assert table[3] == "" and table[4].startswith("Pareto front (band distance down, validation Sharpe up): trials")
    assert (out / "pareto.csv").is_file()

    ana = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from himari_ray.cli import main; code = main(['analyze', sys.argv[1]]);"
            "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'analyze imported Ray';"
            "sys.exit(code)",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ana.returncode == 0, ana.stderr
    assert ana.stdout.splitlines() == table

    import optuna

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 2
    assert {"trade_cost", "entropy_coeff"} == set(study.trials[0].params)


class SignOfFeatureModule(torch.nn.Module):
    """Trades the sign of feature 0 of the last bar in the window: a policy that reads whatever that column is."""

    def forward_inference(self, batch):
        x = batch["obs"]["window"][:, -1, 0]
        logits = torch.zeros(x.shape[0], 3)
        logits[:, 1] = (x > 0).float()
        logits[:, 2] = (x <= 0).float()
        return {"action_dist_inputs": logits}


def test_leak_alarm_sounds_for_a_policy_fed_the_future_and_not_for_an_honest_one(small_dataset):
    import dataclasses

    from himari_ray.rl.config import EvalConfig

    val = small_dataset.val
    leaked = val.features.copy()
    leaked[:-1, 0] = val.returns[1:] * 100  # feature 0 at bar t = the return of bar t+1: a look-ahead leak
    leaky = dataclasses.replace(small_dataset, val=dataclasses.replace(val, features=leaked))
    trial = small_trial()
    cfg = EvalConfig()
    ev = PolicyEvaluator(trial.env, cfg)
    honest = ev(SignOfFeatureModule())  # feature 0 is the *past* return on honest data
    assert not honest["leak_alarm"] and 0.4 < honest["val_win_rate"] < 0.6

    ev_leaky = PolicyEvaluator(trial.env, cfg, dataset=leaky)
    flagged = ev_leaky(SignOfFeatureModule())
    assert flagged["leak_alarm"] and flagged["val_win_rate"] > 0.95


def test_objective_is_band_distance_with_a_sharpe_tie_break_and_a_profit_constraint():
    from himari_ray.rl.scoring import objective

    assert objective(10.0, 2.0, True) == pytest.approx(9.992)
    assert objective(10.0, 50.0, True) == pytest.approx(9.98)  # Sharpe clipped: never worth 0.05 pp of band
    assert objective(10.0, 5.0, True) > objective(9.9, -5.0, True)  # band distance decides first
    assert objective(0.0, 3.0, False) > objective(230.0, -5.0, True)  # a violator ranks after everyone
    assert objective(10.0, float("nan"), True) == 10.0


def test_a_searched_gamma_of_zero_trains_at_zero_even_carried_and_is_reported(local_ray):
    """`gamma: None` is the mode's default; a value given (0 included) is the one that trains and is reported."""
    from himari_ray.env.trading import CARRIED_GAMMA
    from himari_ray.rl.trainable import applied_values
    from himari_ray.schema import APPLIED_GAMMA

    assert small_trial().with_params({"position_mode": "carried"}).gamma == CARRIED_GAMMA
    assert small_trial().with_params({}).gamma == 0.0
    trial = small_trial(num_envs_per_env_runner=1).with_params({"position_mode": "carried", "gamma": 0.0})
    assert trial.train.gamma == 0.0 and build_ppo_config(trial).gamma == 0.0
    algo = build_ppo_config(trial).build_algo()
    try:
        assert applied_values(algo)[APPLIED_GAMMA] == 0.0
    finally:
        algo.stop()
