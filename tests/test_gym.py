"""The trading env as gymnasium users reach it: `gym.make` by id after `import himari_ray`, and gymnasium's
own env checker on what it returns."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import himari_ray
from himari_ray.env.trading import EnvConfig, HimariTradingEnv

CONFIG = {"data": {"source": "synthetic", "n_bars": 3000, "seed": 3}, "context_len": 16, "episode_len": 64}


def test_make_by_id_after_importing_the_package_passes_gymnasiums_checker():
    env = gym.make(himari_ray.ENV_ID, config=CONFIG)
    assert isinstance(env.unwrapped, HimariTradingEnv)
    assert env.unwrapped.config == EnvConfig.model_validate(CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker reports most findings as warnings: each one fails here
        check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert obs["window"].shape == (16, env.unwrapped.observation_space["window"].shape[1])
    steps = 0
    truncated = False
    while not truncated:
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated and np.isfinite(reward) and env.observation_space.contains(obs)
        steps += 1
    assert steps == 64


def test_make_accepts_a_typed_config_and_module_colon_id():
    env = gym.make(f"himari_ray:{himari_ray.ENV_ID}", config=EnvConfig.model_validate(CONFIG))
    assert env.unwrapped.episode_len == 64


def test_a_bad_config_is_refused_by_the_env_with_the_key_named():
    with pytest.raises(ValueError, match="context_len"):
        gym.make(himari_ray.ENV_ID, config={**CONFIG, "context_len": 0})
