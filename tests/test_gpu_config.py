"""A trial's GPU share reaches its RLlib learner (and remote env runners); a trial that can never fit the
Ray cluster is refused at once in one line. No GPU needed: these check the configuration and placement."""

from __future__ import annotations

import pytest

from himari_ray.cli import main
from himari_ray.rl.config import build_ppo_config
from himari_ray.rl.fast_runner import FastEnvRunner
from himari_ray.rl.model import PRECISION_KEY
from himari_ray.search.resources import check_fits_cluster, fit_problem, trial_bundles, trial_config
from himari_ray.search.space import load_space
from himari_ray.types import UserInputError


def production(**train):
    space, _ = load_space("pnl_cost")
    return space.model_copy(update={"train": space.train.model_copy(update=train)})


def test_trial_gpu_share_is_what_rllib_gives_its_learner_and_runners():
    space = production(num_env_runners=2, num_gpus_per_env_runner=0.05, precision="bf16")
    bundles = trial_bundles(space)
    assert bundles == [{"CPU": 2.0, "GPU": 0.25}, {"CPU": 1.0, "GPU": 0.05}, {"CPU": 1.0, "GPU": 0.05}]
    cfg = build_ppo_config(trial_config(space))
    assert cfg.num_gpus_per_learner == bundles[0]["GPU"] == space.resources.gpus_per_trial
    assert cfg.num_learners == 0  # the learner lives in the trial process, i.e. in bundle 0
    assert cfg.num_env_runners == 2 and all(b["GPU"] == cfg.num_gpus_per_env_runner for b in bundles[1:])
    assert cfg.env_runner_cls is FastEnvRunner
    assert cfg.rl_module_spec.model_config[PRECISION_KEY] == "bf16"


def test_bundled_production_spaces_put_their_trial_on_a_gpu_share():
    for name in ("adaptive", "bonus_penalty", "opportunity_cost", "pnl_cost", "variance_normalized"):
        space, _ = load_space(name)
        cfg = build_ppo_config(trial_config(space))
        assert cfg.num_gpus_per_learner == space.resources.gpus_per_trial > 0, name


def test_a_second_name_for_the_learner_gpu_share_must_agree():
    with pytest.raises(UserInputError, match=r"train.num_gpus_per_learner 0.5 differs.*gpus_per_trial 0.25"):
        trial_config(production(num_gpus_per_learner=0.5))
    assert trial_config(production(num_gpus_per_learner=0.25)).train.num_gpus_per_learner == 0.25


def test_fit_problem_counts_totals_and_single_nodes():
    bundles = [{"CPU": 2.0, "GPU": 0.25}, {"CPU": 1.0, "GPU": 0.0}]
    assert fit_problem(bundles, [{"CPU": 16.0, "GPU": 1.0}]) is None
    assert "needs 3 CPU, 0.25 GPU in all; the Ray cluster has 2 CPU, 0 GPU" in fit_problem(bundles, [{"CPU": 2.0}])
    # Enough in total, but the GPU and the CPUs of bundle 0 sit on different nodes.
    split = [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 4.0}]
    assert "needs 2 CPU, 0.25 GPU on one node" in fit_problem(bundles, split)
    assert fit_problem(bundles, [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 4.0}]) is None


@pytest.fixture(scope="module")
def two_cpu_ray():
    """A 2-CPU Ray without GPUs, whatever the machine has (shut down by its own handle)."""
    import ray

    ray.init(
        address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    yield ray
    ray.shutdown()


def test_production_search_on_two_cpus_refuses_in_one_line(two_cpu_ray, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "pnl_cost", "--trials", "4", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "a trial needs 2 CPU, 0.25 GPU in all; the Ray cluster has 2 CPU, 0 GPU" in err
    assert not out.exists()  # refused before anything was written
    # The smoke space (1 CPU, no GPU) fits the same cluster.
    smoke, _ = load_space("smoke")
    check_fits_cluster(smoke)


def _module(**overrides):
    import gymnasium as gym
    import numpy as np
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from himari_ray.rl.model import MODEL_PRESETS, RegimeTransformerModule

    obs = gym.spaces.Dict({"window": gym.spaces.Box(-10, 10, (12, 5), np.float32), "regime": gym.spaces.Discrete(4)})
    cfg = {**MODEL_PRESETS["tiny"].to_model_config(), **overrides}
    spec = RLModuleSpec(
        module_class=RegimeTransformerModule,
        observation_space=obs,
        action_space=gym.spaces.Discrete(3),
        model_config=cfg,
    )
    return spec.build()


def _batch(n: int):
    import torch
    from ray.rllib.core.columns import Columns

    g = torch.Generator().manual_seed(0)
    return {
        Columns.OBS: {"window": torch.randn(n, 12, 5, generator=g), "regime": torch.randint(0, 4, (n,), generator=g)}
    }


def test_sampling_and_loss_see_the_same_function_even_with_dropout():
    """PPO's ratio is exactly 1 before any update: the loss (train mode) and sampling (eval mode) agree."""
    import torch
    from ray.rllib.core.columns import Columns

    module = _module(dropout=0.5)
    x = _batch(64)
    sampled = module.forward_exploration(x)[Columns.ACTION_DIST_INPUTS]
    out = module.forward_train(x)
    assert module.training
    torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS], sampled, rtol=0, atol=1e-6)
    assert out[Columns.ACTION_DIST_INPUTS].requires_grad  # still trainable


def test_value_targets_run_without_a_graph_in_chunks():
    import torch
    from ray.rllib.core.columns import Columns

    from himari_ray.rl.model import VALUE_CHUNK

    module = _module()
    x = _batch(2 * VALUE_CHUNK + 37)
    targets = module.compute_values(x)  # what RLlib's GAE connector calls, with autograd on
    assert not targets.requires_grad and targets.shape == (2 * VALUE_CHUNK + 37,)
    emb = module.forward_train(x)[Columns.EMBEDDINGS]
    in_loss = module.compute_values(x, embeddings=emb)
    assert in_loss.requires_grad
    torch.testing.assert_close(targets, in_loss.detach(), rtol=0, atol=1e-5)


def test_bf16_setting_changes_nothing_on_cpu():
    import torch
    from ray.rllib.core.columns import Columns

    from himari_ray.rl.model import PRECISION_KEY

    fp32, bf16 = _module(), _module(**{PRECISION_KEY: "bf16"})
    bf16.load_state_dict(fp32.state_dict())
    x = _batch(8)
    a, b = fp32.forward_inference(x), bf16.forward_inference(x)
    torch.testing.assert_close(a[Columns.ACTION_DIST_INPUTS], b[Columns.ACTION_DIST_INPUTS], rtol=0, atol=0)
