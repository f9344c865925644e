"""What the export tests share: a real RegimeTransformerModule built the way RLlib builds it (its actor sharpened
so greedy actions vary), the trial config it is exported with, and the evaluator's actions to compare `act`
with (the bars are conftest.py's `bars_file`; the CLI run in process is tests/cli_kit.py's)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import torch

from himari_ray.data.dataset import DataSpec
from himari_ray.env.trading import EnvConfig
from himari_ray.rl.config import EvalConfig, TrialConfig
from himari_ray.rl.evaluate import PolicyEvaluator
from himari_ray.rl.model import MODEL_PRESETS, RegimeTransformerModule
from himari_ray.types import ACTION_NAMES, N_ACTIONS, N_REGIMES

CONTEXT = 16


def make_module(n_features: int, seed: int = 4, carried: bool = False) -> RegimeTransformerModule:
    """A real RegimeTransformerModule with its actor's last layer widened so greedy actions vary by input
    (seed 4: each action on about a fifth or more of the validation windows); `carried`: it sees a position."""
    torch.manual_seed(seed)
    spaces = {
        "window": gym.spaces.Box(-10.0, 10.0, (CONTEXT, n_features), np.float32),
        "regime": gym.spaces.Discrete(N_REGIMES),
    }
    if carried:
        spaces["position"] = gym.spaces.Discrete(N_ACTIONS)
    obs = gym.spaces.Dict(spaces)
    module = RegimeTransformerModule(
        observation_space=obs,
        action_space=gym.spaces.Discrete(N_ACTIONS),
        model_config=MODEL_PRESETS["tiny"].to_model_config(),
    )
    torch.nn.init.normal_(module.actor[-1].weight, std=1.0)
    return module.eval()


def trial_config(data: Path) -> TrialConfig:
    spec = DataSpec(source="dataset", path=str(data))
    return TrialConfig(env=EnvConfig(data=spec, context_len=CONTEXT), eval=EvalConfig())


NO_SEARCH = {"trial": None, "iteration": None, "search_dir": None}


def evaluator_actions(ds, module, config) -> pd.Series:
    """PolicyEvaluator's actions on the validation split, by bar time (ISO, as `act` writes them)."""
    ev = PolicyEvaluator(config.env, config.eval, dataset=ds)
    c = config.env.context_len
    bars = np.flatnonzero(ds.val.tradable[c - 1 : len(ds.val) - 1]) + (c - 1)
    times = pd.to_datetime(ds.val.timestamps[bars], utc=True).strftime("%Y-%m-%dT%H:%M:%SZ")
    return pd.Series(np.asarray(ACTION_NAMES)[ev.actions(module)], index=times)
