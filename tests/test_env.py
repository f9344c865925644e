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


# --------------------------------------------------------------------------------------------------------
# Carried mode (issue 8): the policy sees its position; evaluation follows the policy's own path
# --------------------------------------------------------------------------------------------------------


def test_observation_holds_the_position_in_carried_mode_only(small_dataset):
    """Carried rewards depend on the previous action, so the observation carries it; per_bar rewards do not,
    and there it is always 0 (each decision stays a contextual bandit)."""
    for mode in ("per_bar", "carried"):
        env = HimariTradingEnv(cfg(position_mode=mode), small_dataset)
        assert env.observation_space["position"].n == 3
        obs, _ = env.reset(options={"start_bar": 40})
        assert obs["position"] == 0
        seen = []
        for a in (1, 1, 2, 0, 2):
            obs, *_ = env.step(a)
            seen.append(obs["position"])
            assert env.observation_space.contains(obs)
        assert seen == ([1, 1, 2, 0, 2] if mode == "carried" else [0] * 5)
        obs, _ = env.reset(options={"start_bar": 40})
        assert obs["position"] == 0  # every episode starts flat


def test_carried_reward_is_a_function_of_the_observation(small_dataset):
    """Markov: two visits to bar t with the same observed position earn the same reward for the same action,
    whatever path led there; with different positions they differ by the trade cost."""
    c = cfg(position_mode="carried", reward=RewardConfig(family="pnl_cost", params={"trade_cost": 0.05}))
    env = HimariTradingEnv(c, small_dataset)
    rewards = {}
    for path in ([1, 1], [2, 1], [0, 0], [2, 2]):
        obs, _ = env.reset(options={"start_bar": 40})
        for a in path:
            obs, *_ = env.step(a)
        rewards.setdefault(obs["position"], set()).add(round(env.step(1)[1], 12))
    assert all(len(v) == 1 for v in rewards.values())
    assert rewards[1].pop() - rewards[0].pop() == pytest.approx(0.05)


def test_carried_actions_follow_the_policys_path():
    # Position p prefers action (p + 1) % 3 at even bars and stays put at odd bars.
    n = 6
    logits = np.zeros((n, 3, 3))
    for t in range(n):
        for p in range(3):
            logits[t, p, (p + 1) % 3 if t % 2 == 0 else p] = 1.0
    from himari_ray.env.trading import carried_actions

    np.testing.assert_array_equal(carried_actions(logits), [1, 1, 2, 2, 0, 0])
    with pytest.raises(ValueError, match="shape"):
        carried_actions(np.zeros((n, 3)))


def test_a_sampled_carried_path_draws_each_action_from_the_position_it_is_in():
    """carried_actions with uniforms: at each bar the draw (inverse CDF) is from the row of the position the
    previous draw left, starting flat; the same uniforms give the same path."""
    from himari_ray.env.trading import carried_actions, sample_actions

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3, 3)) * 2
    u = rng.random(200)
    path = carried_actions(logits, u)
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    pos = 0
    for t in range(200):
        pos = int(sample_actions(probs[t, pos][None], u[t : t + 1])[0])
        assert path[t] == pos
    np.testing.assert_array_equal(path, carried_actions(logits, u))
    assert len(set(path.tolist())) == 3 and not np.array_equal(path, carried_actions(logits))


def test_module_sees_the_position_and_carried_evaluation_matches_the_env(small_dataset):
    """The RLModule built from the env's observation space embeds the position (its output depends on it), and
    the batched greedy evaluator's carried actions are exactly those of stepping the env with the argmax."""
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from himari_ray.rl.config import EvalConfig
    from himari_ray.rl.evaluate import PolicyEvaluator
    from himari_ray.rl.model import MODEL_PRESETS, RegimeTransformerModule

    c = cfg(position_mode="carried", episode_len=None)
    env = HimariTradingEnv(c, small_dataset)
    torch.manual_seed(0)
    module = RLModuleSpec(
        module_class=RegimeTransformerModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config=MODEL_PRESETS["tiny"].to_model_config(),
    ).build()
    assert module.position_embedding is not None
    with torch.no_grad():  # make the position matter a lot, so a wrong path shows
        module.position_embedding.weight.mul_(20.0)
    module.eval()

    def act(obs) -> int:
        batch = {k: torch.as_tensor(np.array(v))[None] for k, v in obs.items()}
        with torch.no_grad():
            return int(module.forward_inference({Columns.OBS: batch})[Columns.ACTION_DIST_INPUTS].argmax())

    obs, _ = env.reset(options={"start_bar": env.first_bar})
    stepped, positions = [], []
    for _ in range(env.episode_len):
        a = act(obs)
        positions.append(obs["position"])
        stepped.append(a)
        obs, *_ = env.step(a)
    assert len(set(positions)) > 1
    flat = {**obs, "position": 0}
    moved = {**obs, "position": 1 if obs["position"] != 1 else 2}
    batch = {k: torch.as_tensor(np.asarray([flat[k], moved[k]])) for k in obs}
    out = module.forward_inference({Columns.OBS: batch})[Columns.ACTION_DIST_INPUTS]
    assert not torch.allclose(out[0], out[1])

    evaluator = PolicyEvaluator(c, EvalConfig(), split="val", dataset=small_dataset)
    tradable = env.arrays.tradable[env.first_bar : env.last_bar + 1]
    np.testing.assert_array_equal(evaluator.actions(module), np.asarray(stepped)[tradable])
