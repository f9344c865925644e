"""The environment: gymnasium's checker, the no-look-ahead proof, reward audit, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from himari_ray.data.dataset import DataSpec
from himari_ray.env.rewards import RewardConfig
from himari_ray.env.trading import EnvConfig, HimariTradingEnv
from himari_ray.types import SplitArrays
from tests.conftest import SMALL_SPEC

C = 16


def cfg(**kw) -> EnvConfig:
    base = {"data": SMALL_SPEC, "split": "val", "context_len": C, "episode_len": 64}
    return EnvConfig(**{**base, **kw})


def test_check_env_clean(small_dataset):
    for mode in ("per_bar", "carried"):
        for family in ("pnl_cost", "adaptive"):
            env = HimariTradingEnv(cfg(position_mode=mode, reward=RewardConfig(family=family)), small_dataset)
            check_env(env, skip_render_check=True)


def test_dict_config_round_trip_like_rllib(small_dataset):
    c = cfg(reward=RewardConfig(family="adaptive", params={"wrong_penalty": 0.7}))
    env = HimariTradingEnv(c.model_dump(mode="json"))
    assert env.config == c


def _perturb_after(split: SplitArrays, t: int, rng: np.random.Generator) -> SplitArrays:
    """A copy of `split` in which every value after bar t is replaced."""
    n = len(split)
    f = split.features.copy()
    f[t + 1 :] = rng.standard_normal(f[t + 1 :].shape).astype(np.float32) * 5
    r = split.returns.copy()
    r[t + 1 :] = rng.standard_normal(n - t - 1) * 0.05
    reg = split.regime_ids.copy()
    reg[t + 1 :] = (reg[t + 1 :] + 1) % 4
    p = split.prices.copy()
    p[t + 1 :] *= 2
    conf = split.regime_confidences.copy()
    conf[t + 1 :] = 0.5
    return SplitArrays(f, reg, conf, p, r, split.timestamps)


@pytest.mark.parametrize("mode", ["per_bar", "carried"])
def test_no_look_ahead(small_dataset, mode):
    """Change every value after bar t: the observation at t is bit-identical, and the reward at t
    changes exactly when returns[t+1] changes."""
    rng = np.random.default_rng(0)
    t = 200
    c = cfg(position_mode=mode, episode_len=8)
    env = HimariTradingEnv(c, small_dataset)
    future = dataclasses.replace(small_dataset, val=_perturb_after(small_dataset.val, t, rng))
    env_f = HimariTradingEnv(c, future)
    # A copy where only returns[t+1] differs (and everything else after t is as in the original).
    r_only = small_dataset.val.returns.copy()
    r_only[t + 1] += 0.01
    env_r = HimariTradingEnv(
        c, dataclasses.replace(small_dataset, val=dataclasses.replace(small_dataset.val, returns=r_only))
    )

    obs, _ = env.reset(options={"start_bar": t})
    obs_f, _ = env_f.reset(options={"start_bar": t})
    env_r.reset(options={"start_bar": t})
    assert obs["regime"] == obs_f["regime"]
    np.testing.assert_array_equal(obs["window"], obs_f["window"])

    for action in (1, 2):
        env.reset(options={"start_bar": t})
        env_r.reset(options={"start_bar": t})
        _, rew, *_, info = env.step(action)
        _, rew_r, *_ = env_r.step(action)
        assert info["bar"] == t
        assert info["next_return"] == small_dataset.val.returns[t + 1]
        assert rew != rew_r, "the reward at t must depend on returns[t+1]"
    # ... and on nothing after t+1: only returns[t+1] feeds the reward at t.
    r_later = small_dataset.val.returns.copy()
    r_later[t + 2 :] *= -3
    env_l = HimariTradingEnv(
        c, dataclasses.replace(small_dataset, val=dataclasses.replace(small_dataset.val, returns=r_later))
    )
    env.reset(options={"start_bar": t})
    env_l.reset(options={"start_bar": t})
    assert env.step(1)[1] == env_l.step(1)[1]


def test_pnl_cost_reward_equals_formula_and_info_audits_it(small_dataset):
    c = cfg(reward=RewardConfig(family="pnl_cost", params={"trade_cost": 0.05, "reward_scale": 100.0}))
    env = HimariTradingEnv(c, small_dataset)
    r = small_dataset.val.returns
    env.reset(options={"start_bar": 40})
    for t, action, pos in [(40, 1, 1), (41, 2, -1), (42, 0, 0)]:
        _, reward, terminated, truncated, info = env.step(action)
        assert info["bar"] == t and info["position"] == pos
        expected = r[t + 1] * pos * 100.0 - 0.05 * (pos != 0)
        assert reward == pytest.approx(expected)
        assert reward == pytest.approx(sum(v for k, v in info.items() if k.startswith("r_")))
        assert not terminated and not truncated


def test_carried_mode_pays_only_on_changes(small_dataset):
    c = cfg(position_mode="carried", reward=RewardConfig(family="pnl_cost", params={"trade_cost": 0.05}))
    env = HimariTradingEnv(c, small_dataset)
    env.reset(options={"start_bar": 40})
    costs = [env.step(a)[4]["r_trade_cost"] for a in (1, 1, 1, 2, 0, 0)]
    assert costs == pytest.approx([-0.05, 0, 0, -0.05, -0.05, 0])


def test_adaptive_every_term_in_info(small_dataset):
    env = HimariTradingEnv(cfg(reward=RewardConfig(family="adaptive")), small_dataset)
    env.reset(seed=0)
    _, reward, *_, info = env.step(1)
    terms = {k for k in info if k.startswith("r_")}
    assert terms == {
        "r_pnl",
        "r_base_trade_cost",
        "r_highvol_trade_cost",
        "r_crisis_trade_cost",
        "r_trending_trade_bonus",
        "r_trending_hold_cost",
        "r_wrong_penalty",
    }
    assert reward == pytest.approx(sum(info[k] for k in terms))


def rollout(env: HimariTradingEnv, seed: int, steps: int = 100):
    obs, info = env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, 3, size=steps)
    out = [info["bar"]]
    for a in actions:
        obs, rew, _, trunc, info = env.step(a)
        out.append((info["bar"], rew, obs["window"].sum()))
        if trunc:
            obs, info = env.reset()
            out.append(info["bar"])
    return out


def test_same_seed_same_rollout_other_seed_differs(small_dataset):
    a = rollout(HimariTradingEnv(cfg(), small_dataset), seed=7)
    b = rollout(HimariTradingEnv(cfg(), small_dataset), seed=7)
    c = rollout(HimariTradingEnv(cfg(), small_dataset), seed=8)
    assert a == b
    assert a != c


def test_episode_truncates_after_episode_len_and_never_runs_past_the_last_return(small_dataset):
    env = HimariTradingEnv(cfg(episode_len=5), small_dataset)
    env.reset(options={"start_bar": 20})
    flags = [env.step(0)[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]
    full = HimariTradingEnv(cfg(episode_len=None), small_dataset)
    _, info = full.reset(seed=1)
    assert info["bar"] == C - 1
    n = len(small_dataset.val)
    steps, trunc = 0, False
    while not trunc:
        *_, trunc, info = full.step(0)
        steps += 1
    assert info["bar"] == n - 2 and steps == n - C


def test_observation_window_is_the_train_scaled_past(small_dataset):
    env = HimariTradingEnv(cfg(), small_dataset)
    obs, _ = env.reset(options={"start_bar": 100})
    expected = small_dataset.scaler.transform(small_dataset.val.features[100 - C + 1 : 101])
    np.testing.assert_array_equal(obs["window"], expected)
    assert obs["regime"] == small_dataset.val.regime_ids[100]


def test_split_too_short_is_an_error():
    tiny = DataSpec(source="synthetic", n_bars=1000, seed=0)
    with pytest.raises(ValueError, match="context_len"):
        HimariTradingEnv(EnvConfig(data=tiny, split="val", context_len=500))
