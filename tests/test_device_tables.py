"""The fast runner's tables on its module's device, and the train batch gathered there (rl/device_batch.py),
against RLlib's own learner pipeline on the same episodes: the batch must not depend on where the tables
live. CUDA cases skip without a CUDA device."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from himari_ray.rl.config import build_ppo_config
from himari_ray.rl.device_batch import DEVICE_BATCH, DEVICE_SLICE, SampledFragment, use_device_batch
from himari_ray.rl.fast_runner import FastEnvRunner
from himari_ray.rl.learner import HimariPPOLearner
from himari_ray.rl.trainable import timed_train
from tests.test_fast_runner import trial

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
]


class DeviceBatchLearner(HimariPPOLearner):
    """The trial's learner with its pipeline set to gather the fast runner's episodes on the device."""

    def build(self) -> None:
        super().build()
        use_device_batch(self._learner_connector)


def config(position_mode: str, device: str) -> Any:
    gpus = 1.0 if device == "cuda" else 0.0  # the fast runner follows the learner onto the GPU
    return build_ppo_config(trial(position_mode, num_gpus_per_learner=gpus)).learners(learner_class=DeviceBatchLearner)


def untagged_copy(episode: SingleAgentEpisode) -> SingleAgentEpisode:
    """The episode as RLlib's pipeline sees it from any runner: numpy buffers, no device slice."""
    tag = episode.custom_data.pop(DEVICE_SLICE)
    try:
        return copy.deepcopy(episode)
    finally:
        episode.custom_data[DEVICE_SLICE] = tag


def leaves(batch: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in batch.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}/")
        else:
            yield prefix + key, value


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("position_mode", ["per_bar", "carried"])
def test_device_batch_is_rllibs_batch(position_mode, device):
    """Episodes of two sample() calls (chunks that continue an episode, two fragments in one batch): the
    batch gathered from the device tables equals, column by column, dtype and device, the one RLlib's pieces
    build from the numpy episodes, and so do the advantages and value targets GAE computes from each."""
    cfg = config(position_mode, device)
    runner = FastEnvRunner(config=cfg)
    learner = cfg.build_learner(
        spaces={DEFAULT_MODULE_ID: (runner.env.single_observation_space, runner.env.single_action_space)}
    )
    try:
        episodes = [e for _ in range(2) for e in runner.sample(num_timesteps=100, explore=True)]
        host = [untagged_copy(e) for e in episodes]
        shared_device, shared_host = {}, {}
        pipeline = learner._learner_connector
        got = pipeline(rl_module=learner.module, episodes=episodes, shared_data=shared_device)[DEFAULT_MODULE_ID]
        want = pipeline(rl_module=learner.module, episodes=host, shared_data=shared_host)[DEFAULT_MODULE_ID]
    finally:
        runner.stop()
    # Where sampling ran: the tables and the fragment on the module's device; the episodes numpy.
    module_device = next(runner.module.parameters()).device
    assert module_device.type == device
    tables = runner._device_tables
    assert tables.obs.features.device == tables.reward.device == module_device
    assert tables.reward.dtype == torch.float64 and np.array_equal(tables.reward.cpu().numpy(), runner._tables.reward)
    fragments = {id(e.custom_data[DEVICE_SLICE].fragment): e.custom_data[DEVICE_SLICE].fragment for e in episodes}
    assert len(fragments) == 2
    for fragment in fragments.values():
        assert {t.device for t in (fragment.bars, fragment.actions, fragment.logp, fragment.rewards)} == {module_device}
    assert isinstance(host[0].get_observations(0)["window"], np.ndarray)
    # The device path built the first batch, RLlib's pieces the second.
    assert shared_device[DEVICE_BATCH] is not None and shared_host[DEVICE_BATCH] is None
    got, want = dict(leaves(got)), dict(leaves(want))
    assert sorted(got) == sorted(want)
    for column in ("obs/window", "obs/regime", "obs/position", Columns.LOSS_MASK, "advantages", "value_targets"):
        assert column in want, column
    assert len(want[Columns.LOSS_MASK]) == 200 + len(episodes)  # every chunk plus its bootstrap step
    for key, value in want.items():
        assert torch.is_tensor(got[key]) and got[key].dtype == value.dtype and got[key].device == value.device, key
        assert torch.equal(got[key], value), key


def test_only_a_runner_beside_its_learner_tags_episodes():
    """Device tensors in an episode are only of use to a learner in the same process: the local runner's
    (num_learners=0, the trial's setting) tags its chunks; a remote runner's or a remote learner's do not."""
    cfg = config("per_bar", "cpu")
    for kwargs, remote_learners, tagged in (({}, 0, True), ({"worker_index": 1}, 0, False), ({}, 1, False)):
        c = copy.deepcopy(cfg).learners(num_learners=remote_learners)
        runner = FastEnvRunner(config=c, **kwargs)
        try:
            episodes = runner.sample(num_timesteps=20, explore=True)
        finally:
            runner.stop()
        assert {DEVICE_SLICE in e.custom_data for e in episodes} == {tagged}, (kwargs, remote_learners)


def test_a_ppo_iteration_on_the_device_batch_is_the_host_ones(local_ray, monkeypatch):
    """Same seed, one real PPO iteration through RLlib's pipeline and one through the device gather: the
    device path ran, and the learner ends with the same weights, bit for bit."""
    gathered = []
    rows = SampledFragment.rows
    monkeypatch.setattr(SampledFragment, "rows", lambda self, *a: gathered.append(len(a[0])) or rows(self, *a))

    def first_iteration(learner_class: type) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        algo = build_ppo_config(trial("carried")).learners(learner_class=learner_class).build_algo()
        try:
            before = {k: v.clone() for k, v in algo.get_module().state_dict().items()}
            _, perf = timed_train(algo)
            after = algo.get_module().state_dict()
            assert any(not torch.equal(v, after[k]) for k, v in before.items())  # the iteration trained
            return perf, {k: v.clone() for k, v in after.items()}
        finally:
            algo.stop()

    host_perf, host_weights = first_iteration(HimariPPOLearner)
    assert not gathered
    device_perf, device_weights = first_iteration(DeviceBatchLearner)
    assert gathered
    for key, value in host_weights.items():
        assert torch.equal(device_weights[key], value), key
    for key in ("policy_loss", "entropy", "kl", "vf_explained_var"):
        assert device_perf[key] == host_perf[key], key
