"""A batched RLlib env runner for `HimariTradingEnv`: N env copies step in lockstep over the shared arrays.

RLlib's `SingleAgentEnvRunner` runs, per env step, the env-to-module connectors, one small forward pass, the
module-to-env connectors and per-copy episode bookkeeping; for this env that costs far more than the env
(a step is a table lookup, see bench/README.md). Because the env's observations and rewards are fixed
arrays indexed by bar (and, in `carried` mode, by the previous action), the fragment is laid out first (which
bar each copy decides at, where its episodes end and restart: none of it depends on an action), then:
- `per_bar`: no observation depends on an action, so all the fragment's windows go through the module in a
  few large forwards (`FORWARD_WINDOWS` each), not one small forward per step;
- `carried`: the observation shows the position, so the N copies step in lockstep: per step one gather of
  the N windows and one batched forward on the runner's device.
Rewards are one vectorised table lookup; episodes are built in bulk. Learner, loss and GAE stay RLlib's.

The host stays out of sampling: the env's tables live on the module's device too (`EnvTables.to`), the
fragment's layout goes there once, and windows, actions, log-probs, previous actions and rewards are
gathered and kept there (no step waits for the device); the fragment comes back to the host once, without
windows, for RLlib's episodes and metrics. The local runner tags its episodes with their slice of the
fragment, so a learner pipeline set up by `rl/device_batch.py` gathers the train batch on the device too.

What is the same as the plain path (`tests/test_fast_runner.py` checks it against `SingleAgentEnvRunner`):
the env copies, their seeding and episode starts (each copy's own `reset()` draws them), observations,
rewards, truncation, action distribution inputs and log-probs. What differs: no per-step `info` dicts (the
episodes carry empty ones; the plain env's `info` is for audits), no per-episode RLlib callbacks, and an
ended episode's copy is reset in the same step instead of wasting the next one on the reset.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.env_runner import EnvRunner
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.annotations import override
from ray.rllib.utils.framework import get_device
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO
from ray.rllib.utils.typing import ResultDict

from himari_ray.env.trading import HimariTradingEnv
from himari_ray.rl.device_batch import DEVICE_SLICE, DeviceSlice, HostFragment, SampledFragment
from himari_ray.rl.model import VALUE_CHUNK
from himari_ray.rl.tables import EnvTables, gather_observations

#: Most windows per forward pass when no observation depends on an action (`per_bar`). The production module
#: grows ~0.9 GB per 1,024 windows in a no-grad forward (CPU, fp32; bench/README.md): chunks of the learner's
#: value-target size keep sampling under the learner's own peak, so a trial still fits a quarter of 24 GB.
FORWARD_WINDOWS = VALUE_CHUNK


@dataclass
class _Plan:
    """One fragment laid out before any action: per step (rows) and copy (columns)."""

    bars: np.ndarray  # decision bar
    starts: np.ndarray  # first decision bar of the episode the step belongs to
    done: np.ndarray  # the step is its episode's last (truncation)
    chunks: list[list[tuple[int, str, int, float]]]  # per copy: (first step, episode id, t_started, wall start)
    carried_return: np.ndarray  # per copy: return so far of the episode its first chunk continues


def previous_actions(actions: torch.Tensor, done: torch.Tensor, prev0: torch.Tensor) -> torch.Tensor:
    """The action before each step's decision: the copy's last action, 0 (HOLD) where an episode starts
    (the step after its previous episode's last)."""
    prevs = torch.empty_like(actions)
    prevs[0] = prev0
    prevs[1:] = torch.where(done[:-1], 0, actions[:-1])
    return prevs


@dataclass
class _Lanes:
    """Per-copy sampling state (numpy, length N)."""

    bar: np.ndarray  # the bar each copy decides at next
    end: np.ndarray  # the episode's last decision bar
    start: np.ndarray  # the episode's first decision bar
    prev: np.ndarray  # the previous action (0 at an episode's start)
    t_done: np.ndarray  # steps already returned in earlier chunks of the ongoing episode
    ret: np.ndarray  # return so far of the ongoing episode (for metrics)
    ids: list[str]
    started: list[float]


class FastEnvRunner(SingleAgentEnvRunner):
    """`SingleAgentEnvRunner` whose timestep sampling steps all env copies in lockstep (see module docstring).

    Episode sampling (`num_episodes`) and random actions fall back to the plain loop. The local runner
    (in the trial process) runs its forward pass on the GPU when the trial's learner has one; remote
    runners on their own `num_gpus_per_env_runner` share.
    """

    @override(SingleAgentEnvRunner)
    def __init__(self, *, config: Any, **kwargs):
        super().__init__(config=config, **kwargs)
        if not self.worker_index and config.num_gpus_per_learner > 0 and torch.cuda.is_available():
            self._device = get_device(config, config.num_gpus_per_learner)
            if self.module is not None:
                self.module.to(self._device)
            # The plain loop (episode sampling) must hand the module tensors on the same device.
            self._env_to_module = self.config.build_env_to_module_connector(
                env=self.env, spaces=self.spaces, device=self._device
            )
        self._lanes: _Lanes | None = None
        self._tables: EnvTables | None = None  # host copy: the episodes' observations
        self._device_tables: EnvTables | None = None  # on the module's device: sampling and the train batch
        # Only a learner in this process can read device tensors in the episodes (num_learners=0: the trial's).
        self._tag_episodes = not self.worker_index and not config.num_learners
        self._episode_stats: list[tuple[int, float, float]] = []

    # ----------------------------------------------------------------------------------------------------
    def _copies(self) -> list[HimariTradingEnv]:
        return [e.unwrapped for e in self.env.unwrapped.envs]

    def _reset_lanes(self) -> None:
        """Reset every copy through the vector env (seeded exactly as the plain runner seeds it)."""
        _, infos = self._try_env_reset(seed=self._seed if self._needs_initial_reset else None, options=None)
        self._needs_initial_reset = False
        copies = self._copies()
        self._tables = EnvTables.of(copies[0])
        self._device_tables = self._tables.to(self._device)
        start = np.array([int(info["bar"]) for info in infos], dtype=np.int64)
        n = len(copies)
        self._lanes = _Lanes(
            bar=start.copy(),
            end=start + np.array([c.episode_len for c in copies]) - 1,
            start=start.copy(),
            prev=np.zeros(n, dtype=np.int64),
            t_done=np.zeros(n, dtype=np.int64),
            ret=np.zeros(n),
            ids=[uuid.uuid4().hex for _ in range(n)],
            started=[time.perf_counter()] * n,
        )

    def _pick_actions(self, dist: Any, explore: bool, starts: np.ndarray, bars: np.ndarray) -> torch.Tensor:
        """Actions from the module's distribution (what RLlib's `GetActions` connector does), one per row of
        `dist`; `starts` and `bars` (host arrays) name each row's episode start and decision bar (for subclasses
        that replay given actions). The actions may come back on any device: they are moved to the module's."""
        return dist.sample() if explore else dist.to_deterministic().sample()

    @override(SingleAgentEnvRunner)
    def _sample(
        self,
        *,
        num_timesteps: int | None = None,
        num_episodes: int | None = None,
        explore: bool,
        random_actions: bool = False,
        force_reset: bool = False,
    ) -> list[SingleAgentEpisode]:
        if num_timesteps is None or random_actions or self.module is None:
            self._lanes = None  # the plain loop owns the copies now; start over next time
            return super()._sample(
                num_timesteps=num_timesteps,
                num_episodes=num_episodes,
                explore=explore,
                random_actions=random_actions,
                force_reset=force_reset,
            )
        if force_reset or self._needs_initial_reset or self._lanes is None:
            self._reset_lanes()
        n = len(self._lanes.bar)
        # A copy (torch.tensor, not as_tensor): restarts in `_schedule` zero lanes.prev in place.
        prev0 = torch.tensor(self._lanes.prev, device=self._device)
        plan = self._schedule(-(-num_timesteps // n))
        # The layout goes to the device once; from here on the fragment stays there until `to_host`.
        bars = torch.as_tensor(plan.bars, device=self._device)
        done = torch.as_tensor(plan.done, device=self._device)
        # What RLlib's forward_exploration/_inference do, minus switching every module to eval and back on
        # each call (28% of the tiny preset's sampling time): eval once, then the same no-grad forward.
        self.module.eval()
        if self._tables.obs.position == "carried":
            actions, logp, dist_inputs = self._act_in_lockstep(plan, bars, done, prev0, explore)
        else:
            actions, logp, dist_inputs = self._act_at_once(plan, bars, explore)
        prevs = previous_actions(actions, done, prev0)
        tables = self._device_tables
        rewards = tables.reward[bars, prevs, actions]
        fragment = SampledFragment(tables.obs, bars, prevs, actions, logp, dist_inputs, rewards, self._weights_seq_no)
        episodes = self._episodes(plan, fragment)
        ts = plan.bars.size
        self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=ts)
        self._increase_sampled_metrics(ts, sum(e.is_done for e in episodes))
        return episodes

    def _schedule(self, n_steps: int) -> _Plan:
        """Which bar every copy decides at in each of the next `n_steps` steps, and where its episodes end
        and restart. Bars never depend on actions (only `carried` observations do), so the whole fragment is
        laid out first; copies restart in the order the lockstep loop restarts them (same seeds, same starts)."""
        lanes = self._lanes
        n = len(lanes.bar)
        plan = _Plan(
            bars=np.empty((n_steps, n), dtype=np.int64),
            starts=np.empty((n_steps, n), dtype=np.int64),
            done=np.zeros((n_steps, n), dtype=bool),
            chunks=[[(0, lanes.ids[i], int(lanes.t_done[i]), lanes.started[i])] for i in range(n)],
            carried_return=lanes.ret.copy(),  # a restart below zeroes lanes.ret
        )
        for s in range(n_steps):
            plan.bars[s], plan.starts[s] = lanes.bar, lanes.start
            plan.done[s] = lanes.bar >= lanes.end
            lanes.bar = lanes.bar + 1
            for i in np.flatnonzero(plan.done[s]):
                self._restart_lane(i)
                if s + 1 < n_steps:
                    plan.chunks[i].append((s + 1, lanes.ids[i], 0, lanes.started[i]))
        return plan

    def _forward(self, bars: torch.Tensor, prevs: torch.Tensor, explore: bool) -> tuple[Any, torch.Tensor]:
        """The module's action distribution at these (bar, previous action) pairs (tensors on the module's
        device): one gather from the device tables, one no-grad forward."""
        obs = gather_observations(self._device_tables.obs, bars, prevs)
        forward = self.module._forward_exploration if explore else self.module._forward_inference
        with torch.no_grad():
            logits = forward({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        dist_cls = (
            self.module.get_exploration_action_dist_cls() if explore else self.module.get_inference_action_dist_cls()
        )
        return dist_cls.from_logits(logits), logits

    def _act_at_once(
        self, plan: _Plan, bars: torch.Tensor, explore: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`per_bar`: no observation depends on an action, so every step's windows go through the module
        together, in forwards of FORWARD_WINDOWS (4 for a production iteration of 4,096 steps, against 64).
        `bars` is `plan.bars` on the device; all results stay there."""
        flat, host_bars, starts = bars.reshape(-1), plan.bars.reshape(-1), plan.starts.reshape(-1)
        acts, logps, logits_parts = [], [], []
        for lo in range(0, len(flat), FORWARD_WINDOWS):
            sl = slice(lo, lo + FORWARD_WINDOWS)
            dist, logits = self._forward(flat[sl], torch.zeros_like(flat[sl]), explore)
            act = self._pick_actions(dist, explore, starts[sl], host_bars[sl]).to(self._device)
            acts.append(act.long())
            logps.append(dist.logp(act).float())
            logits_parts.append(logits.float())
        shape = plan.bars.shape
        return (
            torch.cat(acts).reshape(shape),
            torch.cat(logps).reshape(shape),
            torch.cat(logits_parts).reshape(*shape, -1),
        )

    def _act_in_lockstep(
        self, plan: _Plan, bars: torch.Tensor, done: torch.Tensor, prev0: torch.Tensor, explore: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`carried`: the observation shows the position, i.e. the previous action, so the copies step
        together one bar at a time: per step one gather of the N windows and one batched forward. The
        position stays on the device from step to step, so no step waits for the device to finish."""
        n_steps, n = plan.bars.shape
        actions = torch.empty((n_steps, n), dtype=torch.int64, device=self._device)
        logp = torch.empty((n_steps, n), dtype=torch.float32, device=self._device)
        dist_inputs = torch.empty(
            (n_steps, n, self.env.single_action_space.n), dtype=torch.float32, device=self._device
        )
        prev = prev0
        for s in range(n_steps):
            prev = torch.where(done[s - 1], 0, prev) if s else prev
            dist, logits = self._forward(bars[s], prev, explore)
            act = self._pick_actions(dist, explore, plan.starts[s], plan.bars[s]).to(self._device)
            actions[s] = prev = act.long()
            logp[s], dist_inputs[s] = dist.logp(act).float(), logits.float()
        return actions, logp, dist_inputs

    def _episodes(self, plan: _Plan, fragment: SampledFragment) -> list[SingleAgentEpisode]:
        """The fragment cut into episode chunks (finished ones first), built on the host from one copy of its
        per-step arrays; carries each ongoing episode's progress, return and previous action into the next
        call. The local runner tags each chunk with its slice of the (device) fragment."""
        lanes = self._lanes
        n_steps = plan.bars.shape[0]
        host: HostFragment = fragment.to_host()
        prevs, actions, logp, dist_inputs, rewards = host.prevs, host.actions, host.logp, host.dist_inputs, host.rewards
        finished, ongoing = [], []
        for i, chunks in enumerate(plan.chunks):
            bounds = [c[0] for c in chunks[1:]] + [n_steps]
            for (s0, eid, t0, started), s1 in zip(chunks, bounds, strict=True):
                if s1 == s0:
                    continue
                sl = slice(s0, s1)
                episode = self._episode(
                    eid, t0, plan.bars[sl, i], prevs[sl, i], actions[sl, i], logp[sl, i], dist_inputs[sl, i],
                    rewards[sl, i], bool(plan.done[s1 - 1, i]),
                )  # fmt: skip
                if self._tag_episodes:
                    episode.custom_data[DEVICE_SLICE] = DeviceSlice(fragment, i, s0, s1)
                ret = (plan.carried_return[i] if t0 else 0.0) + float(rewards[sl, i].sum())
                if episode.is_done:
                    self._episode_stats.append((t0 + s1 - s0, ret, time.perf_counter() - started))
                    finished.append(episode)
                else:  # the ongoing episode continues in the next call with the steps returned so far counted
                    lanes.t_done[i], lanes.ret[i], lanes.prev[i] = t0 + s1 - s0, ret, actions[s1 - 1, i]
                    ongoing.append(episode)
        return finished + ongoing

    def _restart_lane(self, i: int) -> None:
        """Reset copy i with its own `reset()`: the start bar comes from its own generator, as in the plain
        path's autoreset."""
        lanes = self._lanes
        copy = self._copies()[i]
        _, info = copy.reset()
        lanes.start[i] = lanes.bar[i] = int(info["bar"])
        lanes.end[i] = lanes.start[i] + copy.episode_len - 1
        lanes.prev[i] = 0
        lanes.t_done[i] = 0
        lanes.ret[i] = 0.0
        lanes.ids[i] = uuid.uuid4().hex
        lanes.started[i] = time.perf_counter()

    def _episode(
        self,
        eid: str,
        t_started: int,
        bars: np.ndarray,
        prevs: np.ndarray,
        actions: np.ndarray,
        logp: np.ndarray,
        dist_inputs: np.ndarray,
        rewards: np.ndarray,
        truncated: bool,
    ) -> SingleAgentEpisode:
        """One episode chunk built in bulk: observations at bars b_0..b_L (b_L = the one after the last
        decision, as the env returns it), with the previous action of each."""
        t = self._tables
        obs_bars = np.append(bars, bars[-1] + 1)
        obs_prev = np.append(prevs, actions[-1])
        obs = gather_observations(t.obs, obs_bars, obs_prev)
        length = len(actions)

        def buf(data: Any) -> InfiniteLookbackBuffer:
            return InfiniteLookbackBuffer(data=data, lookback=0)

        episode = SingleAgentEpisode(
            id_=eid,
            observations=buf(obs),
            infos=[{} for _ in range(length + 1)],
            actions=buf(actions),
            rewards=buf(rewards),
            extra_model_outputs={
                Columns.ACTION_LOGP: buf(logp),
                Columns.ACTION_DIST_INPUTS: buf(dist_inputs),
                WEIGHTS_SEQ_NO: buf(np.full(length, self._weights_seq_no)),
            },
            terminated=False,
            truncated=truncated,
            t_started=t_started,
            len_lookback_buffer=0,
        )
        episode.observation_space = self.env.single_observation_space
        episode.action_space = self.env.single_action_space
        return episode

    @override(EnvRunner)
    def get_metrics(self) -> ResultDict:
        if self._episode_stats:
            for length, ret, sec in self._episode_stats:
                self._log_episode_metrics(length, ret, sec)
            self._episode_stats.clear()
        return super().get_metrics()
