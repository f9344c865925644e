"""The batched env runner (rl/fast_runner.py) against RLlib's own `SingleAgentEnvRunner` on the plain env."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from himari_ray.data.dataset import DataSpec
from himari_ray.env.preflight import PreflightConfig
from himari_ray.env.rewards import RewardConfig
from himari_ray.env.trading import EnvConfig, HimariTradingEnv
from himari_ray.rl import fast_runner
from himari_ray.rl.config import TrainConfig, TrialConfig, build_ppo_config
from himari_ray.rl.fast_runner import FastEnvRunner
from himari_ray.rl.tables import EnvTables, gather_observations
from himari_ray.rl.trainable import timed_train

SPEC = DataSpec(source="synthetic", n_bars=3000, seed=3)


def trial(position_mode: str = "per_bar", **train) -> TrialConfig:
    env = EnvConfig(
        data=SPEC,
        context_len=16,
        episode_len=24,
        position_mode=position_mode,
        # A cost that depends on the previous action in carried mode: rewards then test the carried state.
        reward=RewardConfig(family="pnl_cost", params={"trade_cost": 0.05}),
    )
    t = {"train_batch_size": 256, "minibatch_size": 128, "num_epochs": 1, "num_envs_per_env_runner": 4, **train}
    return TrialConfig(env=env, train=TrainConfig(**t), preflight=PreflightConfig(enabled=False))


class ReplayRunner(FastEnvRunner):
    """The fast runner fed the plain runner's actions: keyed by (episode start bar, decision bar)."""

    replay: dict[tuple[int, int], int]

    def _pick_actions(self, dist, explore, starts, bars):
        picked = [self.replay.get((int(s), int(b)), 0) for s, b in zip(starts, bars, strict=True)]
        return torch.tensor(picked, dtype=torch.long)


def by_episode(chunks: list, start_bar_of) -> dict[int, dict[str, np.ndarray]]:
    """Chunks of one runner's samples joined per episode, keyed by the episode's first decision bar."""
    grouped = defaultdict(list)
    for c in chunks:
        grouped[c.id_].append(c)
    out = {}
    for parts in grouped.values():
        parts.sort(key=lambda c: c.t_started)
        # Chunks continue each other: each starts where the previous one ended.
        assert [p.t_started for p in parts] == list(np.cumsum([0] + [len(p) for p in parts[:-1]]))
        obs = [p.get_observations() for p in parts]
        start = start_bar_of(parts[0])
        assert start not in out, "two episodes start at the same bar: pick another seed"
        out[start] = {
            # Every observation key (a chunk's last observation is the next chunk's first).
            **{f"obs_{k}": np.concatenate([o[k][:-1] for o in obs] + [obs[-1][k][-1:]]) for k in obs[0]},
            "actions": np.concatenate([p.get_actions() for p in parts]),
            "rewards": np.concatenate([p.get_rewards() for p in parts]),
            "logp": np.concatenate([p.get_extra_model_outputs(Columns.ACTION_LOGP) for p in parts]),
            "dist_inputs": np.concatenate([p.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS) for p in parts]),
            "done": np.array([p.is_done for p in parts]),
            "truncated": parts[-1].is_truncated,
            "terminated": parts[-1].is_terminated,
        }
    return out


@pytest.mark.parametrize(("position_mode", "forward_windows"), [("per_bar", None), ("per_bar", 7), ("carried", None)])
def test_fast_runner_matches_plain_runner(position_mode, forward_windows, monkeypatch):
    """Same seed and actions: same observations, rewards, episode boundaries, log-probs and episode metrics as
    RLlib's own runner. per_bar samples a whole fragment in one forward (also cut into forwards of 7 windows,
    which split steps and episodes); carried steps in lockstep."""
    if forward_windows is not None:
        monkeypatch.setattr(fast_runner, "FORWARD_WINDOWS", forward_windows)
    cfg = build_ppo_config(trial(position_mode))
    plain = SingleAgentEnvRunner(config=cfg)
    fast = ReplayRunner(config=cfg)
    fast.module.set_state(plain.module.get_state())
    try:
        plain_chunks = [e for _ in range(2) for e in plain.sample(num_timesteps=100, explore=True)]
        # Every action the plain runner took, keyed by (episode start, decision bar): infos carry the bars.
        replay, starts = {}, {}
        for c in sorted(plain_chunks, key=lambda c: c.t_started):
            infos = c.get_infos()
            if c.t_started == 0:
                starts[c.id_] = int(infos[0]["bar"])
            for info, a in zip(infos[1:], c.get_actions(), strict=True):
                replay[(starts[c.id_], int(info["bar"]))] = int(a)
        fast.replay = replay
        fast_chunks = [e for _ in range(2) for e in fast.sample(num_timesteps=100, explore=True)]
        fast_metrics = fast.get_metrics()
    finally:
        plain.stop()
        fast.stop()
    ref = by_episode(plain_chunks, lambda c: starts[c.id_])
    env = HimariTradingEnv(cfg.env_config)
    got = by_episode(fast_chunks, lambda c: int(np.flatnonzero(windows_equal(env, c))[0]) + env.first_bar)
    complete = [s for s in ref if ref[s]["done"][-1] and s in got and got[s]["done"][-1]]
    assert len(complete) >= 8, (sorted(ref), sorted(got))  # 4 copies x 200 steps / 24 per episode, minus resets
    for s in complete:
        r, g = ref[s], got[s]
        assert len(r["actions"]) == len(g["actions"]) == 24, s  # boundaries: same length, truncated, not terminated
        assert g["truncated"] and r["truncated"] and not g["terminated"] and not r["terminated"]
        np.testing.assert_array_equal(g["actions"], r["actions"])
        obs_keys = sorted(k for k in r if k.startswith("obs_"))
        assert obs_keys == sorted(k for k in g if k.startswith("obs_")) and "obs_window" in obs_keys
        assert "obs_position" in obs_keys  # the env shows the policy its position (always 0 in per_bar)
        for k in obs_keys:
            np.testing.assert_array_equal(g[k], r[k], err_msg=k)
        np.testing.assert_array_equal(g["rewards"], r["rewards"])
        np.testing.assert_allclose(g["dist_inputs"], r["dist_inputs"], atol=1e-6)
        np.testing.assert_allclose(g["logp"], r["logp"], atol=1e-6)
    # Episode metrics: every episode the fast runner finished started in these samples (the copies started
    # fresh), so its logged returns are those episodes' reward sums, carried across the two calls.
    finished = [g for g in got.values() if g["done"][-1]]
    assert fast_metrics["episode_return_mean"].peek() == pytest.approx(np.mean([g["rewards"].sum() for g in finished]))
    assert fast_metrics["episode_len_mean"].peek() == 24
    # The replayed actions were not all HOLD: the comparison covered trades (and, carried, position changes).
    assert len({a for s in complete for a in ref[s]["actions"]}) == 3


def windows_equal(env: HimariTradingEnv, chunk) -> np.ndarray:
    """Which decision window equals the chunk's first observation (fast episodes carry no bar in infos)."""
    first = chunk.get_observations(0)["window"]
    return np.all(env._windows == first, axis=(1, 2))


def test_gather_matches_the_env_observation(small_dataset):
    env = HimariTradingEnv(trial().env, dataset=small_dataset)
    tables = EnvTables.of(env)
    bars = np.array([env.first_bar, env.first_bar + 7, env.last_bar + 1])
    obs = gather_observations(tables.obs, bars, np.zeros(3, dtype=np.int64))
    tobs = gather_observations(tables.obs.to(torch.device("cpu")), torch.as_tensor(bars), torch.zeros(3))
    for i, bar in enumerate(bars):
        env.reset(options={"start_bar": int(min(bar, env.last_bar - env.episode_len + 1))})
        env._t = int(bar)
        want = env._obs()
        np.testing.assert_array_equal(obs["window"][i], want["window"])
        np.testing.assert_array_equal(tobs["window"][i].numpy(), want["window"])
        assert obs["regime"][i] == tobs["regime"][i] == want["regime"]


@pytest.fixture(scope="module")
def own_ray():
    """A new local Ray (address="local": never join a cluster another process left on this machine)."""
    import ray

    from himari_ray.search.ray_session import init_local_ray

    init_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def test_fast_path_trains_a_ppo_iteration(own_ray):
    """On CPU, a real PPO iteration with the fast runner: samples counted, episodes end, weights move, and
    the per-report statistics the trainable adds are there."""
    algo = build_ppo_config(trial("carried", env_runner="fast")).build_algo()
    try:
        before = {k: v.clone() for k, v in algo.get_module().state_dict().items()}
        result, perf = timed_train(algo)
        runners = result["env_runners"]
        assert runners["num_env_steps_sampled_lifetime"] >= 256
        assert np.isfinite(runners["episode_return_mean"])
        assert perf["env_steps_per_s"] > 0 and perf["learner_samples_per_s"] > 0 and perf["host_peak_rss_gb"] > 0
        assert np.isfinite(perf["policy_loss"]) and perf["entropy"] > 0 and perf["kl"] >= 0
        assert np.isfinite(perf["vf_explained_var"])
        after = algo.get_module().state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
    finally:
        algo.stop()


def test_reported_seconds_are_each_iterations_own(own_ray):
    """RLlib smooths its sampling and learning timers (EMA 0.01), so one slow first iteration (a compile, a
    CUDA warm-up) would stay in every later report. Made slow on purpose here (the learner update sleeps
    first), the next report must hold only what that next iteration took."""
    import time

    algo = build_ppo_config(trial("per_bar", env_runner="fast")).build_algo()
    update, calls = algo.learner_group.update, []

    def slow_first_update(*args, **kwargs):
        if not calls:
            time.sleep(3.0)
        calls.append(1)
        return update(*args, **kwargs)

    algo.learner_group.update = slow_first_update
    try:
        _, first = timed_train(algo)
        t0 = time.perf_counter()
        _, second = timed_train(algo)
        wall = time.perf_counter() - t0
        assert first["learn_s"] >= 3.0 and len(calls) == 2
        assert 0 < second["learn_s"] < wall and 0 < second["sample_s"] < wall
    finally:
        algo.stop()


def test_compile_setting_compiles_the_learners_module_and_changes_no_result(own_ray):
    """`train.compile` reaches the learner's module (RLlib 2.60 alone compiles nothing on the new API stack:
    rl/learner.py), and a compiled first iteration computes what the eager one does. Dynamo's aot_eager
    backend keeps this test short and free of a C compiler; the setting itself uses inductor."""
    from himari_ray.rl.learner import is_compiled

    def first_iteration(compile_: bool) -> tuple[list[bool], dict]:
        config = build_ppo_config(trial("per_bar", env_runner="fast", compile=compile_))
        algo = config.framework(torch_compile_learner_dynamo_backend="aot_eager").build_algo()
        try:
            compiled = [r.get() for r in algo.learner_group.foreach_learner(
                lambda learner: is_compiled(learner.module["default_policy"]._forward_train))]  # fmt: skip
            return compiled, timed_train(algo)[1]
        finally:
            algo.stop()

    eager_flags, eager = first_iteration(False)
    compiled_flags, compiled = first_iteration(True)
    assert eager_flags == [False] and compiled_flags == [True]
    for key in ("policy_loss", "entropy", "kl", "vf_explained_var"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-5), key
