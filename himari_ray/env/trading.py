"""The trading environment (ARCHITECTURE §3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from pydantic import Field

from himari_ray.data.dataset import DataSpec, load_dataset
from himari_ray.env.normalization import decision_sigma, expected_abs_z
from himari_ray.env.rewards import RewardConfig, RewardInputs, compute_terms
from himari_ray.types import (
    ENV_SECTION,
    N_ACTIONS,
    N_REGIMES,
    POSITION_OF_ACTION,
    SEARCHABLE,
    Dataset,
    SplitArrays,
    StrictModel,
)


class EnvConfig(StrictModel):
    """Everything an env (or an RLlib env runner building one) needs; a plain dict round-trips it."""

    data: DataSpec = Field(default_factory=DataSpec, description="The dataset to trade.")
    split: Literal["train", "val", "test"] = Field("train", description="Which chronological split.")
    context_len: int = Field(
        100, ge=1, description="C: bars of features in each observation window.", json_schema_extra={ENV_SECTION: True}
    )
    episode_len: int | None = Field(
        512,
        ge=1,
        description="Decisions per episode (random start); None runs the whole split once.",
        json_schema_extra={ENV_SECTION: True},
    )
    position_mode: Literal["per_bar", "carried"] = Field(
        "per_bar",
        description="per_bar: every LONG/SHORT bar pays the cost; carried: only changes pay, the policy sees its position.",
        json_schema_extra={ENV_SECTION: True, SEARCHABLE: True},
    )
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward family and parameters.")


#: Discount of a `carried` trial whose space leaves gamma at per_bar's 0: an entry's cost is repaid over the bars
#: the position is held, so a myopic (gamma 0) policy under-values every trade. 0.95 credits about 20 hours
#: ahead (1 / (1 - gamma)), a day of hourly bars; the preflight prices carried trades over the same horizon.
CARRIED_GAMMA = 0.95


def carried_horizon(gamma: float) -> float:
    """Bars a carried position is credited over: 1 / (1 - gamma), at least 1."""
    return round(1.0 / max(1.0 - gamma, 1e-6), 6) if gamma < 1.0 else float("inf")


def sample_actions(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Actions drawn from `probs` (n, 3) by inverse CDF with the given uniforms in [0, 1): how a policy deployed
    as a sampler acts (`eval.deploy: sample`). The same uniforms give the same draws, so evaluations of
    different policies share their randomness (common random numbers)."""
    cdf = np.cumsum(probs, axis=-1)
    return np.minimum((np.asarray(uniforms)[..., None] >= cdf).sum(axis=-1), probs.shape[-1] - 1).astype(np.int64)


def carried_actions(logits: np.ndarray, uniforms: np.ndarray | None = None) -> np.ndarray:
    """Actions of a carried-mode policy along its own path: greedy, or sampled with `uniforms`.

    `logits[t, p]` are the policy's action logits at decision t when its position (previous action id) is p, for
    every p; the path starts flat (p = 0, as an episode does) and each action becomes the next position. One
    cheap sequential pass after the batched forward passes, so evaluation stays batched.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[1:] != (N_ACTIONS, N_ACTIONS):
        raise ValueError(f"logits must have shape (n, {N_ACTIONS}, {N_ACTIONS}), got {logits.shape}")
    if uniforms is None:
        choice = logits.argmax(axis=2)  # (n, position): the greedy action from each position
    else:
        z = np.exp(logits - logits.max(axis=2, keepdims=True))
        choice = sample_actions(z / z.sum(axis=2, keepdims=True), np.asarray(uniforms)[:, None])
    out = np.empty(len(choice), dtype=np.int64)
    pos = 0
    for t in range(len(choice)):
        pos = int(choice[t, pos])
        out[t] = pos
    return out


def decision_windows(features: np.ndarray, context_len: int) -> np.ndarray:
    """Read-only views: `out[i]` is features[i : i + C], the window seen when deciding at bar t = i + C - 1."""
    return np.lib.stride_tricks.sliding_window_view(features, context_len, axis=0).transpose(0, 2, 1)


def trade_matrix(position_mode: str) -> np.ndarray:
    """`m[prev_action, action]`: whether the decision pays a trade cost under `position_mode`."""
    prev_pos = POSITION_OF_ACTION[:, None]
    pos = POSITION_OF_ACTION[None, :]
    if position_mode == "per_bar":
        return np.broadcast_to(pos != 0, (N_ACTIONS, N_ACTIONS))
    return pos != prev_pos


def reward_table(arrays: SplitArrays, train_returns: np.ndarray, cfg: EnvConfig) -> dict[str, np.ndarray]:
    """Every reward term for every decision bar t, previous action and action: arrays of shape (n-1, 3, 3).

    Row t scores a decision made after bar t on `returns[t+1]`; the last bar has no next return and no row.
    Rows where the split is not `tradable` (bar t or t+1 missing from the exchange's record) are all zero.
    """
    n = len(arrays) - 1
    pos = POSITION_OF_ACTION[None, None, :]
    is_trade = trade_matrix(cfg.position_mode)[None]
    sigma = decision_sigma(arrays.returns, train_returns, cfg.reward)[:n]
    inp = RewardInputs(
        position=np.broadcast_to(pos, (n, N_ACTIONS, N_ACTIONS)),
        is_trade=np.broadcast_to(is_trade, (n, N_ACTIONS, N_ACTIONS)),
        next_return=arrays.returns[1:, None, None],
        regime=arrays.regime_ids[:n, None, None],
        sigma=sigma[:, None, None],
        expected_abs_z=expected_abs_z(train_returns, cfg.reward),
    )
    terms = compute_terms(cfg.reward.family, inp, cfg.reward.resolved_params)
    # Across an exchange outage no position can be held or changed: every term is 0 there.
    tradable = arrays.tradable[:n, None, None]
    return {name: np.where(tradable, values, 0.0) for name, values in terms.items()}


class HimariTradingEnv(gym.Env):
    """Trade one split of a dataset bar by bar: HOLD (flat), LONG or SHORT.

    ## Spaces
    - observation: `Dict(window=Box(-clip, clip, (C, F), float32), regime=Discrete(4), position=Discrete(3))` where
      `window` holds the train-scaled features of bars t-C+1 .. t, `regime` the regime id at bar t and `position`
      the previous action id (0 at an episode's start) in `carried` mode, where the reward depends on it, and
      always 0 in `per_bar` mode, where it does not (each decision stays a contextual bandit). Nothing after t.
    - action: `Discrete(3)`: 0 HOLD (position 0), 1 LONG (+1), 2 SHORT (-1).

    ## Reward
    The action chosen after bar t sets position p[t] and earns the return of bar t+1:
    reward[t] = sum of the family's terms evaluated on (p[t], returns[t+1], regime[t], sigma[t]), e.g.
    `pnl_cost`: `returns[t+1] * p[t] * reward_scale - trade_cost * is_trade`. Trades are:
    | position_mode | is_trade |
    |---|---|
    | per_bar | p[t] != 0 (every LONG/SHORT bar is a trade, as in the seed) |
    | carried | p[t] != p[t-1] (only position changes pay; the episode starts flat) |
    In `carried` mode the state includes the position, so trials discount (`CARRIED_GAMMA` when the space
    leaves gamma at 0) and the preflight spreads entry and exit costs over the discount horizon.
    All terms are precomputed for the split on construction; `step` only looks them up. Where bar t or t+1
    lies in an exchange outage (`tradable[t]` False) every term is 0: the move across a gap is never earned
    as if it were one hour.

    ## Episode end
    Truncated (never terminated) after `episode_len` decisions, or at the split's second-to-last bar (the
    last bar has no next return). Reset draws the start bar uniformly from `self.np_random`, unless
    `options={"start_bar": t}` names it.

    ## Info
    `bar`, `regime`, `position`, `is_trade`, `tradable`, `next_return` (for audit only; the policy never
    sees it) and every reward term as `r_<term>`.

    ## Arguments
    - config: `EnvConfig` or its dict form (RLlib passes an `EnvContext`).
    - dataset: optional in-memory `Dataset` to use instead of loading `config.data` (tests).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's convention)

    def __init__(self, config: EnvConfig | Mapping[str, Any] | None = None, dataset: Dataset | None = None):
        super().__init__()
        cfg = config if isinstance(config, EnvConfig) else EnvConfig.model_validate(dict(config or {}))
        ds = dataset if dataset is not None else load_dataset(cfg.data)
        arrays = ds.split(cfg.split)
        c = cfg.context_len
        if len(arrays) < c + 1:
            raise ValueError(f"split {cfg.split!r} has {len(arrays)} bars; needs at least context_len + 1 = {c + 1}")
        self.config = cfg
        self.arrays = arrays
        self._windows = decision_windows(ds.scaler.transform(arrays.features), c)
        self._regimes = arrays.regime_ids
        self._terms = reward_table(arrays, ds.train.returns, cfg)
        self._reward = sum(self._terms.values())
        self._is_trade = trade_matrix(cfg.position_mode)
        self.first_bar = c - 1
        self.last_bar = len(arrays) - 2  # last bar with a next return
        n_decisions = self.last_bar - self.first_bar + 1
        self.episode_len = n_decisions if cfg.episode_len is None else min(cfg.episode_len, n_decisions)

        clip = np.float32(ds.scaler.clip)
        self.observation_space = gym.spaces.Dict(
            {
                "window": gym.spaces.Box(-clip, clip, shape=(c, ds.n_features), dtype=np.float32),
                "regime": gym.spaces.Discrete(N_REGIMES),
                "position": gym.spaces.Discrete(N_ACTIONS),
            }
        )
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._t = self.first_bar
        self._end = self.first_bar
        self._prev_action = 0

    def _obs(self) -> dict[str, Any]:
        t = self._t
        position = self._prev_action if self.config.position_mode == "carried" else 0
        return {"window": self._windows[t - self.first_bar], "regime": int(self._regimes[t]), "position": position}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        latest_start = self.last_bar - self.episode_len + 1
        if options is not None and "start_bar" in options:  # audits and tests replay a chosen bar
            start = int(options["start_bar"])
            if not self.first_bar <= start <= latest_start:
                raise ValueError(f"start_bar must lie in [{self.first_bar}, {latest_start}], got {start}")
            self._t = start
        else:
            self._t = int(self.np_random.integers(self.first_bar, latest_start + 1))
        self._end = self._t + self.episode_len - 1
        self._prev_action = 0
        return self._obs(), {"bar": self._t}

    def step(self, action: int):
        a = int(action)
        t, prev = self._t, self._prev_action
        info: dict[str, Any] = {
            "bar": t,
            "regime": int(self._regimes[t]),
            "position": int(POSITION_OF_ACTION[a]),
            "is_trade": bool(self._is_trade[prev, a]),
            "tradable": bool(self.arrays.tradable[t]),
            "next_return": float(self.arrays.returns[t + 1]),
        }
        for name, table in self._terms.items():
            info[f"r_{name}"] = float(table[t, prev, a])
        reward = float(self._reward[t, prev, a])
        self._prev_action = a
        # The next observation is bar t+1 even at truncation (it exists: t+1 <= last bar), so a critic can
        # bootstrap from the true next state.
        self._t = t + 1
        return self._obs(), reward, False, t >= self._end, info
