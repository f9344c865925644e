"""The train batch built on the device where the fast runner sampled, from what it sampled there.

RLlib's learner pipeline builds a PPO train batch from the episodes: it copies each episode's observations
and columns out of its numpy buffers, concatenates them on the host and uploads the result
(`AddObservationsFromEpisodesToBatch`, `AddColumnsFromEpisodesToTrainBatch`, `BatchIndividualItems`,
`NumpyToTensor`). The local fast runner (rl/fast_runner.py) already holds everything those columns are made
of on its module's device: the env's tables, and per step the decision bar, the previous and chosen actions,
log-probs, distribution inputs and rewards (a `SampledFragment`). It tags each episode chunk with the slice
of the fragment it was cut from (`DeviceSlice`), and `use_device_batch` makes a learner's pipeline gather
the observation and column rows there instead: one upload of a row index per iteration, no windows through
the host.

Everything else is RLlib's and runs unchanged: `AddOneTsToEpisodesAndTruncate` (the bootstrap step, loss
mask, terminateds and truncateds, small host columns), batching and upload of those, and GAE. The rows are
RLlib's, in RLlib's order and dtypes (`tests/test_device_tables.py` checks the whole batch, advantages and
value targets included, against RLlib's own pipeline on the same episodes). Episodes without a tag (the
plain runner, remote runners, a stateful module) go through RLlib's pieces as before.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.rllib.connectors.common.add_observations_from_episodes_to_batch import AddObservationsFromEpisodesToBatch
from ray.rllib.connectors.common.numpy_to_tensor import NumpyToTensor
from ray.rllib.connectors.connector_pipeline_v2 import ConnectorPipelineV2
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner.add_columns_from_episodes_to_train_batch import AddColumnsFromEpisodesToTrainBatch
from ray.rllib.connectors.learner.add_one_ts_to_episodes_and_truncate import AddOneTsToEpisodesAndTruncate
from ray.rllib.connectors.learner.general_advantage_estimation import GeneralAdvantageEstimation
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from himari_ray.rl.tables import ObsArrays, gather_observations

#: `SingleAgentEpisode.custom_data` key of an episode chunk's `DeviceSlice`.
DEVICE_SLICE = "himari_device_slice"
#: `shared_data` key of one pipeline call's decision: the episodes' slices, or None (RLlib's host pieces).
DEVICE_BATCH = "himari_device_batch"


@dataclass(frozen=True)
class HostFragment:
    """A `SampledFragment`'s per-step arrays copied to the host, for RLlib's (numpy) episodes and metrics."""

    prevs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    dist_inputs: np.ndarray
    rewards: np.ndarray


@dataclass(frozen=True, eq=False)
class SampledFragment:
    """What the fast runner sampled in one call, on its module's device: per step (rows) and copy (columns)."""

    obs: ObsArrays  # the env's observation tables, torch tensors on the same device
    bars: torch.Tensor  # (T, N) int64: decision bar
    prevs: torch.Tensor  # (T, N) int64: action before the decision (0 where an episode starts)
    actions: torch.Tensor  # (T, N) int64
    logp: torch.Tensor  # (T, N) float32
    dist_inputs: torch.Tensor  # (T, N, A) float32
    rewards: torch.Tensor  # (T, N): the reward table's dtype (float64)
    weights_seq_no: int

    def to_host(self) -> HostFragment:
        """The fragment's one trip to the host (small: no windows), for RLlib's episodes and their metrics."""
        per_step = (self.prevs, self.actions, self.logp, self.dist_inputs, self.rewards)
        return HostFragment(*(t.cpu().numpy() for t in per_step))

    def rows(self, slices: list[DeviceSlice], device: torch.device) -> dict[str, Any]:
        """The train batch rows of these episode chunks (each already extended by RLlib's bootstrap step),
        as RLlib's pipeline lays them out: per chunk its L decision steps, then the bootstrap step, whose
        observation is the one after the last decision and whose action, log-prob and distribution inputs
        repeat the last ones (`add_one_ts_to_episodes_and_truncate`), with reward 0."""
        n = self.bars.shape[1]
        index = np.concatenate([np.append(np.arange(s.first, s.stop), s.stop - 1) * n + s.copy for s in slices])
        boot = np.concatenate([np.arange(s.stop - s.first + 1) == s.stop - s.first for s in slices])
        index_t = torch.as_tensor(index, device=self.bars.device)  # the iteration's one upload
        boot_t = torch.as_tensor(boot, device=self.bars.device)
        bars = self.bars.reshape(-1)[index_t]
        actions = self.actions.reshape(-1)[index_t]
        prevs = self.prevs.reshape(-1)[index_t]
        # The observation after a chunk's last decision: the next bar, with that decision as the position.
        obs = gather_observations(self.obs, torch.where(boot_t, bars + 1, bars), torch.where(boot_t, actions, prevs))
        rewards = torch.where(boot_t, 0.0, self.rewards.reshape(-1)[index_t])
        columns = {
            Columns.OBS: obs,
            Columns.ACTIONS: actions,
            # NumpyToTensor makes RLlib's float64 rewards float32; the same here.
            Columns.REWARDS: rewards.float(),
            Columns.ACTION_LOGP: self.logp.reshape(-1)[index_t],
            Columns.ACTION_DIST_INPUTS: self.dist_inputs.reshape(-1, self.dist_inputs.shape[-1])[index_t],
            WEIGHTS_SEQ_NO: torch.full((len(index),), self.weights_seq_no, dtype=torch.int64, device=bars.device),
        }
        return {k: _to(v, device) for k, v in columns.items()}


@dataclass(frozen=True)
class DeviceSlice:
    """Where an episode chunk's steps lie in a `SampledFragment`: copy `copy`, steps first..stop-1."""

    fragment: SampledFragment
    copy: int
    first: int
    stop: int


def _to(x: Any, device: torch.device) -> Any:
    return {k: _to(v, device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def _decision(episodes: list[Any], rl_module: Any, shared_data: dict) -> list[DeviceSlice] | None:
    """The episodes' slices if every episode carries one (and no module needs RLlib's state columns), else
    None; decided once per pipeline call, so all pieces agree."""
    if DEVICE_BATCH not in shared_data:
        slices = [e.custom_data.get(DEVICE_SLICE) for e in episodes]
        stateful = any(m.is_stateful() for m in rl_module.values())
        ok = bool(slices) and all(s is not None for s in slices) and not stateful
        shared_data[DEVICE_BATCH] = slices if ok else None
    return shared_data[DEVICE_BATCH]


class HostEpisodesOnly(ConnectorV2):
    """One of RLlib's episode-to-batch pieces, skipped when the batch is gathered on the device."""

    def __init__(self, piece: ConnectorV2):
        super().__init__(piece.input_observation_space, piece.input_action_space)
        self.piece = piece

    def __call__(self, *, rl_module: Any, batch: dict, episodes: list, shared_data: dict, **kwargs: Any) -> Any:
        if _decision(episodes, rl_module, shared_data) is not None:
            return batch
        return self.piece(rl_module=rl_module, batch=batch, episodes=episodes, shared_data=shared_data, **kwargs)


class DeviceColumns(ConnectorV2):
    """After RLlib's upload of the small host columns (loss mask, terminateds, truncateds): the observation
    and per-step columns, gathered on the device from the fragments the episodes were cut from."""

    def __call__(self, *, rl_module: Any, batch: dict, episodes: list, shared_data: dict, **kwargs: Any) -> Any:
        slices = _decision(episodes, rl_module, shared_data)
        if slices is None:
            return batch
        for episode, s in zip(episodes, slices, strict=True):
            # RLlib's bootstrap step is the only one added since sampling: anything else would misalign rows.
            if len(episode) != s.stop - s.first + 1:
                raise ValueError(
                    f"episode {episode.id_}: {len(episode)} steps, its device slice {s.stop - s.first} + 1"
                )
        module_batch = batch[DEFAULT_MODULE_ID]
        device = module_batch[Columns.LOSS_MASK].device  # where NumpyToTensor put the learner's batch
        parts = [
            fragment.rows(list(run), device)
            for fragment, run in itertools.groupby(slices, key=lambda s: s.fragment)  # one per sample() call
        ]
        module_batch.update(parts[0] if len(parts) == 1 else _cat(parts))
        return batch


def _cat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    first = parts[0]
    return {
        k: _cat([p[k] for p in parts]) if isinstance(first[k], dict) else torch.cat([p[k] for p in parts])
        for k in first
    }


def use_device_batch(pipeline: ConnectorPipelineV2) -> None:
    """Make a PPO learner's pipeline (RLlib's default pieces, as `PPOLearner.build` leaves them) gather the
    fast runner's episodes on the device; other episodes still take RLlib's pieces. Call after the
    learner's `build()`."""
    kinds = [type(c) for c in pipeline.connectors]
    need = (AddOneTsToEpisodesAndTruncate, AddObservationsFromEpisodesToBatch, AddColumnsFromEpisodesToTrainBatch)
    need += (NumpyToTensor, GeneralAdvantageEstimation)
    positions = [kinds.index(k) if k in kinds else -1 for k in need]
    if min(positions) < 0 or positions != sorted(positions):
        raise ValueError(f"not RLlib's PPO learner pipeline: {[k.__name__ for k in kinds]}")
    for i, c in enumerate(pipeline.connectors):
        if isinstance(c, (AddObservationsFromEpisodesToBatch, AddColumnsFromEpisodesToTrainBatch)):
            pipeline.connectors[i] = HostEpisodesOnly(c)
    pipeline.insert_after(NumpyToTensor, DeviceColumns())
