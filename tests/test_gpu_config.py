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

    from himari_ray.search.ray_session import init_local_ray

    init_local_ray(num_cpus=2, num_gpus=0)
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
    from tests.test_model import build

    return build("tiny", 12, 5, **overrides)


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


def _tiny_learner(stock: bool = False):
    from himari_ray.data.dataset import DataSpec
    from himari_ray.env.trading import EnvConfig, HimariTradingEnv
    from himari_ray.rl.config import TrainConfig, TrialConfig
    from himari_ray.rl.model import MODEL_PRESETS

    env = EnvConfig(data=DataSpec(source="synthetic", n_bars=1000), context_len=8, episode_len=64)
    trial = TrialConfig(env=env, model=MODEL_PRESETS["tiny"], train=TrainConfig(train_batch_size=64, minibatch_size=32))
    config = build_ppo_config(trial)
    if stock:
        from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

        config = config.learners(learner_class=PPOTorchLearner)
    return config.build_learner(env=HimariTradingEnv(env))


def test_sync_free_learner_applies_gradients_as_rllibs_default_does():
    """rl/learner.py drops RLlib's per-tensor finiteness checks (GPU syncs) but must keep their outcome:
    the same step on finite gradients, and non-finite entries made finite (RLlib's nan_to_num) with a step."""
    import torch

    from himari_ray.rl.learner import HimariPPOLearner

    ours, stock = _tiny_learner(), _tiny_learner(stock=True)
    assert isinstance(ours, HimariPPOLearner) and not isinstance(stock, HimariPPOLearner)
    stock.module.set_state(ours.module.get_state())
    before = [p.detach().clone() for p in ours._params.values()]
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) for p in ours._params.values()]
    grads[0].view(-1)[0] = float("nan")
    grads[1].view(-1)[0] = float("inf")
    for learner in (ours, stock):
        learner.apply_gradients({pid: g.clone() for pid, g in zip(learner._params, grads, strict=True)})
    for a, b in zip(ours._params.values(), stock._params.values(), strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
    assert all(not torch.equal(a, b) for a, b in zip(before, ours._params.values(), strict=True))  # it stepped


def test_learner_optimizer_is_fused_adam_at_the_configured_learning_rate():
    """RLlib's default Adam loops over parameter tensors on CPU; rl/learner.py builds torch's fused Adam (the
    same update: the test above compares a step with RLlib's) and RLlib's scheduler still sets its lr."""
    import torch
    from ray.rllib.core import DEFAULT_MODULE_ID

    ours, stock = _tiny_learner(), _tiny_learner(stock=True)
    (_, opt), *rest = ours.get_optimizers_for_module(DEFAULT_MODULE_ID)
    (_, stock_opt), *_ = stock.get_optimizers_for_module(DEFAULT_MODULE_ID)
    assert not rest and isinstance(opt, torch.optim.Adam) and opt.defaults["fused"]
    assert not stock_opt.defaults["fused"]
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in stock_opt.param_groups] == [ours.config.lr]
