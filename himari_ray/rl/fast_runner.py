"""A batched RLlib env runner for `HimariTradingEnv`: N env copies step in lockstep over the shared arrays.

RLlib's `SingleAgentEnvRunner` runs, per env step, the env-to-module connectors, one small forward pass, the
module-to-env connectors and per-copy episode bookkeeping; for this env that costs far more than the env
(a step is a table lookup, see bench/README.md). Because the env's observations and rewards are fixed
arrays indexed by bar (and, in `carried` mode, by the previous action), all N copies can be stepped at
once: per step one gather of the N windows, one batched forward on the runner's device, one vectorised
reward lookup; episodes are built in bulk when `sample()` returns. Learner, loss and GAE stay RLlib's.

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
from typing import Any, Literal

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


@dataclass(frozen=True)
class ObsArrays:
    """What observations are gathered from: numpy arrays (episodes) or torch tensors on the runner's device."""

    features: Any  # (n_bars - first_bar + C - 1, F) float32: row i is bar first_bar - C + 1 + i, train-scaled
    regimes: Any  # (n_bars,) int64, indexed by bar
    first_bar: int
    context_len: int
    position: Literal["none", "per_bar", "carried"] = "none"  # whether (and how) obs carry a "position" key

    def to(self, device: torch.device) -> ObsArrays:
        return ObsArrays(
            torch.as_tensor(self.features, device=device),
            torch.as_tensor(self.regimes, device=device),
            self.first_bar,
            self.context_len,
            self.position,
        )


def gather_observations(arrays: ObsArrays, bars: Any, prev_actions: Any) -> dict[str, Any]:
    """THE observation function of the fast path: the env's `_obs()` for many (bar, previous action) pairs
    at once, on numpy arrays or torch tensors alike. Where the env's observation has a `position` key (the
    previous action id in `carried` mode, always 0 in `per_bar`), it comes from `prev_actions`."""
    torch_in = isinstance(bars, torch.Tensor)
    steps = torch.arange(arrays.context_len, device=bars.device) if torch_in else np.arange(arrays.context_len)
    out = {}
    if arrays.position != "none":
        prev = prev_actions if arrays.position == "carried" else prev_actions * 0
        out["position"] = prev.long() if torch_in else prev.astype(np.int64)
    # Keys in the order of the env's Dict space (sorted), as RLlib's own runner batches them.
    out["regime"] = arrays.regimes[bars]
    out["window"] = arrays.features[(bars - arrays.first_bar)[:, None] + steps]
    return out


@dataclass(frozen=True)
class EnvTables:
    """The arrays every copy of one env config shares: observation arrays and the reward table."""

    obs: ObsArrays
    reward: np.ndarray  # (n_bars - 1, 3, 3): reward[t, prev_action, action]

    @classmethod
    def of(cls, env: HimariTradingEnv) -> EnvTables:
        # The env keeps its windows as a sliding view over the scaled features; undo the view once.
        windows = env._windows
        features = np.concatenate([windows[0], windows[1:, -1]], axis=0).astype(np.float32)
        obs = ObsArrays(
            np.ascontiguousarray(features),
            np.array(env._regimes, dtype=np.int64),  # a writable copy: torch refuses read-only arrays
            env.first_bar,
            env.config.context_len,
            env.config.position_mode if "position" in env.observation_space.spaces else "none",
        )
        return cls(obs=obs, reward=np.asarray(env._reward))


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
        self._tables: EnvTables | None = None
        self._device_obs: ObsArrays | None = None
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
        self._device_obs = self._tables.obs.to(self._device)
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

    def _pick_actions(self, dist: Any, explore: bool) -> torch.Tensor:
        """Actions from the module's distribution (what RLlib's `GetActions` connector does)."""
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
        lanes, tables = self._lanes, self._tables
        n = len(lanes.bar)
        n_steps = -(-num_timesteps // n)
        bars = np.empty((n_steps, n), dtype=np.int64)
        actions = np.empty((n_steps, n), dtype=np.int64)
        prevs = np.empty((n_steps, n), dtype=np.int64)
        logp = np.empty((n_steps, n), dtype=np.float32)
        dist_inputs = np.empty((n_steps, n, self.env.single_action_space.n), dtype=np.float32)
        done = np.zeros((n_steps, n), dtype=bool)
        chunk_start = [[] for _ in range(n)]  # (step index, start bar, t_done, id) per episode chunk
        for i in range(n):
            chunk_start[i].append((0, lanes.ids[i], int(lanes.t_done[i])))
        dist_cls = (
            self.module.get_exploration_action_dist_cls() if explore else self.module.get_inference_action_dist_cls()
        )
        # What RLlib's forward_exploration/_inference do, minus switching every module to eval and back on
        # each call (28% of the tiny preset's sampling time): eval once, then the same no-grad forward.
        self.module.eval()
        forward = self.module._forward_exploration if explore else self.module._forward_inference
        for s in range(n_steps):
            bars[s], prevs[s] = lanes.bar, lanes.prev
            obs = gather_observations(
                self._device_obs,
                torch.as_tensor(lanes.bar, device=self._device),
                torch.as_tensor(lanes.prev, device=self._device),
            )
            with torch.no_grad():
                out = forward({Columns.OBS: obs})
            logits = out[Columns.ACTION_DIST_INPUTS]
            dist = dist_cls.from_logits(logits)
            act = self._pick_actions(dist, explore)
            lp = dist.logp(act)
            a = act.cpu().numpy().astype(np.int64)
            actions[s], logp[s], dist_inputs[s] = a, lp.float().cpu().numpy(), logits.float().cpu().numpy()
            reward = tables.reward[lanes.bar, lanes.prev, a]
            lanes.ret += reward
            done[s] = lanes.bar >= lanes.end
            lanes.prev = a
            lanes.bar = lanes.bar + 1
            for i in np.flatnonzero(done[s]):
                self._episode_stats.append(
                    (
                        int(lanes.bar[i] - lanes.start[i]),
                        float(lanes.ret[i]),
                        time.perf_counter() - lanes.started[i],
                    )
                )
                self._restart_lane(i)
                if s + 1 < n_steps:
                    chunk_start[i].append((s + 1, lanes.ids[i], 0))
        episodes = []
        for i in range(n):
            bounds = [c[0] for c in chunk_start[i]] + [n_steps]
            for (s0, eid, t0), s1 in zip(chunk_start[i], bounds[1:], strict=True):
                if s1 == s0:
                    continue
                episodes.append(
                    self._episode(
                        eid,
                        t0,
                        bars[s0:s1, i],
                        prevs[s0:s1, i],
                        actions[s0:s1, i],
                        logp[s0:s1, i],
                        dist_inputs[s0:s1, i],
                        bool(done[s1 - 1, i]),
                    )
                )
            # The ongoing episode continues in the next call with the steps returned so far counted.
            s_last = chunk_start[i][-1][0]
            if not done[n_steps - 1, i]:
                lanes.t_done[i] += n_steps - s_last
        finished = [e for e in episodes if e.is_done]
        ongoing = [e for e in episodes if not e.is_done]
        ts = n_steps * n
        self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=ts)
        self._increase_sampled_metrics(ts, len(finished))
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
        truncated: bool,
    ) -> SingleAgentEpisode:
        """One episode chunk built in bulk: observations at bars b_0..b_L (b_L = the one after the last
        decision, as the env returns it), with the previous action of each."""
        t = self._tables
        obs_bars = np.append(bars, bars[-1] + 1)
        obs_prev = np.append(prevs, actions[-1])
        obs = gather_observations(t.obs, obs_bars, obs_prev)
        length = len(actions)
        rewards = t.reward[bars, prevs, actions]

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
