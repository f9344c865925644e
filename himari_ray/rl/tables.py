"""The env's fixed arrays as batched readers see them: observations gathered for many (bar, previous action)
pairs at once, on numpy arrays or torch tensors alike, and the reward table. The fast runner keeps one copy
on the host (its RLlib episodes are numpy) and one on its module's device, where it samples and where the
train batch is gathered (rl/fast_runner.py, rl/device_batch.py); the benchmarks' pure-torch reference reads
them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from himari_ray.env.trading import HimariTradingEnv


@dataclass(frozen=True)
class ObsArrays:
    """What observations are gathered from: numpy arrays (episodes) or torch tensors on the runner's device."""

    features: Any  # (n_bars - first_bar + C - 1, F) float32: row i is bar first_bar - C + 1 + i, train-scaled
    regimes: Any  # (n_bars,) int64, indexed by bar
    first_bar: int
    context_len: int
    position: Literal["per_bar", "carried"] = "per_bar"  # the env's position mode: how obs fill "position"

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
    at once, on numpy arrays or torch tensors alike. The observation's `position` (the previous action id in
    `carried` mode, always 0 in `per_bar`) comes from `prev_actions`."""
    torch_in = isinstance(bars, torch.Tensor)
    steps = torch.arange(arrays.context_len, device=bars.device) if torch_in else np.arange(arrays.context_len)
    out = {}
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
    reward: Any  # (n_bars - 1, 3, 3): reward[t, prev_action, action]; numpy, or a tensor of the same dtype

    def to(self, device: torch.device) -> EnvTables:
        """The same tables as torch tensors on `device` (values and dtypes unchanged: float64 rewards stay
        float64, so a reward looked up there is the one the host table holds)."""
        return EnvTables(obs=self.obs.to(device), reward=torch.as_tensor(self.reward, device=device))

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
            env.config.position_mode,
        )
        return cls(obs=obs, reward=np.ascontiguousarray(env._reward))
