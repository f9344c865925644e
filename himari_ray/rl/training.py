"""PPO training of one configuration: typed configs -> `PPOConfig` (in one place), greedy validation
evaluation straight through the RLModule, and the Tune function trainable that reports and checkpoints.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule, RLModuleSpec
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

from himari_ray.data.dataset import load_dataset
from himari_ray.env.metrics import DEFAULT_HOLD_BANDS, action_shares, band_distance, trading_metrics
from himari_ray.env.preflight import (
    PreflightConfig,
    RegimePreflight,
    band_conflicts,
    describe_conflicts,
    preflight,
    skip_penalty,
)
from himari_ray.env.rewards import RewardConfig
from himari_ray.env.trading import EnvConfig, HimariTradingEnv, decision_windows
from himari_ray.rl.model import MODEL_PRESETS, ModelConfig, RegimeTransformerModule
from himari_ray.types import REGIME_NAMES, Dataset


class TrainConfig(BaseModel):
    """PPO settings of one trial."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    iterations: int = Field(10, ge=1, description="PPO training iterations (one Tune report each).")
    train_batch_size: int = Field(2048, ge=8, description="Env steps per iteration (per learner).")
    minibatch_size: int = Field(256, ge=4, description="SGD minibatch size.")
    num_epochs: int = Field(4, ge=1, description="SGD passes over each train batch.")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate.")
    gamma: float = Field(0.0, ge=0, le=1, description="Discount; per_bar actions do not move the state, so 0.")
    lambda_: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    entropy_coeff: float = Field(0.01, ge=0, description="Entropy bonus weight.")
    clip_param: float = Field(0.2, gt=0, description="PPO clip range.")
    num_env_runners: int = Field(0, ge=0, description="Remote env runners (0: sample in the trial process).")
    num_envs_per_env_runner: int = Field(
        4, ge=1, description="Env copies per runner; 4 cut RLlib's per-step overhead 2.6x (bench/README.md)."
    )
    num_gpus_per_learner: float = Field(0.0, ge=0, description="GPU share of the (local) learner.")
    seed: int = Field(0, ge=0, description="Seed of RLlib, torch and the env copies.")
    checkpoint_every: int = Field(1, ge=1, description="Checkpoint every N iterations (and at the last).")

    @field_validator("minibatch_size")
    @classmethod
    def _minibatch_fits(cls, v: int, info: Any) -> int:
        batch = info.data.get("train_batch_size")
        if batch is not None and v > batch:
            raise ValueError(f"minibatch_size {v} exceeds train_batch_size {batch}")
        return v


class EvalConfig(BaseModel):
    """How a trial's greedy policy is scored on the validation split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bands: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_HOLD_BANDS), description="Target HOLD% band per regime."
    )
    fee: float = Field(0.0004, ge=0, description="Fee per unit of position change in validation PnL (4 bps).")
    batch_size: int = Field(4096, ge=1, description="Windows per forward pass in the greedy evaluation.")
    leak_hit_rate: float = Field(
        0.60, gt=0.5, le=1.0, description="Flag a likely look-ahead leak above this hit rate on traded val bars."
    )
    leak_min_trades: int = Field(200, ge=1, description="Traded val bars needed before the leak alarm can sound.")
    min_net_return: float | None = Field(
        None, description="Profit constraint: val net return must exceed this (None: no constraint)."
    )

    @field_validator("bands")
    @classmethod
    def _bands_cover_regimes(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in v.items():
            if name not in REGIME_NAMES:
                raise ValueError(f"unknown regime {name!r}; expected one of {list(REGIME_NAMES)}")
            if not 0 <= lo <= hi <= 100:
                raise ValueError(f"band for {name} must satisfy 0 <= low <= high <= 100, got [{lo}, {hi}]")
        return v


#: Weight of validation Sharpe (clipped to +-5) in `objective`: a swing of at most 0.04 percentage points, below one bar's
#: share of any regime's HOLD% on a realistic validation split, so Sharpe only breaks band-distance ties.
SHARPE_TIE_BREAK = 0.004
#: Added to `objective` when the profit constraint fails: a violating trial ranks after every satisfying one.
CONSTRAINT_PENALTY = 1000.0


def objective(band: float, sharpe: float, profit_ok: bool) -> float:
    """What the single-objective search minimises: band distance, Sharpe as tie-break, profit constraint."""
    tie = SHARPE_TIE_BREAK * float(np.clip(np.nan_to_num(sharpe), -5.0, 5.0))
    return band - tie + (0.0 if profit_ok else CONSTRAINT_PENALTY)


#: Searchable names that are PPO settings rather than reward parameters.
TRAIN_PARAMS = ("entropy_coeff", "lr", "gamma", "lambda_", "clip_param")
#: Searchable names that are environment settings (the last two belong to the reward config).
ENV_PARAMS = ("position_mode", "norm_stats", "trailing_window")
REWARD_FIELDS = ("norm_stats", "trailing_window")


class RobustConfig(BaseModel):
    """Evaluate each configuration over several seeds and/or walk-forward folds inside train+val."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: int = Field(1, ge=1, description="Independent PPO runs (seeds seed, seed+1, ...) per configuration.")
    folds: int = Field(0, ge=0, description="Anchored walk-forward folds inside train+val (0: plain train/val).")
    aggregate: Literal["mean", "worst"] = Field("mean", description="Which aggregate the objective optimises.")


class TrialConfig(BaseModel):
    """Everything one trial needs. Tune hands it around as a plain dict (`model_dump`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: EnvConfig = Field(default_factory=EnvConfig, description="Environment and reward.")
    model: ModelConfig = Field(default_factory=lambda: MODEL_PRESETS["tiny"], description="Transformer sizes.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="PPO settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Validation scoring.")
    preflight: PreflightConfig = Field(default_factory=PreflightConfig, description="Reward-landscape check.")
    robust: RobustConfig = Field(default_factory=RobustConfig, description="Seeds and walk-forward folds.")

    def members(self) -> list[TrialConfig]:
        """One configuration per (fold, seed): what a robust trial trains, each scored on its own val."""
        folds = range(self.robust.folds) if self.robust.folds else [None]
        out = []
        for fold in folds:
            data = self.env.data if fold is None else self.env.data.with_fold(self.robust.folds, fold)
            for s in range(self.robust.seeds):
                out.append(
                    self.model_copy(
                        update={
                            "env": self.env.model_copy(update={"data": data}),
                            "train": self.train.model_copy(update={"seed": self.train.seed + s}),
                        }
                    )
                )
        return out

    def with_params(self, params: Mapping[str, Any]) -> TrialConfig:
        """Overlay searched values: PPO settings go to `train`, environment settings to `env` (and its reward
        config), everything else to the reward's params. Every value is validated where it lands."""
        train = {k: v for k, v in params.items() if k in TRAIN_PARAMS}
        env_fields = {k: v for k, v in params.items() if k in ENV_PARAMS and k not in REWARD_FIELDS}
        reward_fields = {k: v for k, v in params.items() if k in REWARD_FIELDS}
        reward_params = {k: v for k, v in params.items() if k not in TRAIN_PARAMS + ENV_PARAMS}
        reward = RewardConfig.model_validate(
            {**self.env.reward.model_dump(), **reward_fields, "params": {**self.env.reward.params, **reward_params}}
        )
        env = EnvConfig.model_validate({**self.env.model_dump(), **env_fields, "reward": reward.model_dump()})
        return self.model_copy(
            update={"env": env, "train": TrainConfig.model_validate({**self.train.model_dump(), **train})}
        )


def build_ppo_config(trial: TrialConfig) -> PPOConfig:
    """The single place where himari-ray's typed configs become RLlib settings."""
    t = trial.train
    return (
        PPOConfig()
        .environment(HimariTradingEnv, env_config=trial.env.model_dump(mode="json"))
        .framework("torch")
        .env_runners(
            num_env_runners=t.num_env_runners,
            num_envs_per_env_runner=t.num_envs_per_env_runner,
            rollout_fragment_length="auto",
        )
        .learners(num_learners=0, num_gpus_per_learner=t.num_gpus_per_learner)
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=RegimeTransformerModule, model_config=trial.model.to_model_config()
            )
        )
        .training(
            lr=t.lr,
            gamma=t.gamma,
            lambda_=t.lambda_,
            entropy_coeff=t.entropy_coeff,
            clip_param=t.clip_param,
            num_epochs=t.num_epochs,
            minibatch_size=t.minibatch_size,
            train_batch_size_per_learner=t.train_batch_size,
        )
        .debugging(seed=t.seed, log_level="ERROR")
    )


class GreedyEvaluator:
    """Argmax policy over every decision bar of the validation split, straight through the module.

    Decision bars are the tradable t in C-1 .. n-2 of the split; the action at t earns `returns[t+1]`.
    Windows are views; each batch is gathered once into a tensor.
    """

    def __init__(self, env: EnvConfig, cfg: EvalConfig, split: str = "val", dataset: Dataset | None = None):
        ds = dataset if dataset is not None else load_dataset(env.data)
        arrays = ds.split(split)
        c, n = env.context_len, len(arrays)
        self.cfg = cfg
        # Bars around exchange outages are skipped: no position is held across a gap.
        bars = np.flatnonzero(arrays.tradable[c - 1 : n - 1]) + (c - 1)
        self.windows = decision_windows(ds.scaler.transform(arrays.features), c)
        self.window_index = bars - (c - 1)
        # Copies: small, and torch wants writable arrays.
        self.regimes = arrays.regime_ids[bars].copy()
        self.next_returns = arrays.returns[bars + 1].copy()

    def actions(self, module: RLModule) -> np.ndarray:
        was_training = module.training
        module.eval()
        out = []
        try:
            with torch.no_grad():
                for lo in range(0, len(self.regimes), self.cfg.batch_size):
                    hi = lo + self.cfg.batch_size
                    obs = {
                        "window": torch.from_numpy(self.windows[self.window_index[lo:hi]]),
                        "regime": torch.from_numpy(self.regimes[lo:hi]),
                    }
                    logits = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
                    out.append(logits.argmax(dim=-1).cpu().numpy())
        finally:
            module.train(was_training)
        return np.concatenate(out)

    def __call__(self, module: RLModule) -> dict[str, float]:
        """Flat metrics: `<action>_pct_<regime>`, `band_distance`, `val_<trading metric>`, `leak_alarm`,
        `profit_ok` and the scalar `objective`."""
        actions = self.actions(module)
        shares = action_shares(actions, self.regimes)
        metrics: dict[str, float] = {}
        for regime, row in shares.items():
            for action in ("HOLD", "LONG", "SHORT"):
                metrics[f"{action.lower()}_pct_{regime}"] = row[action]
        metrics["band_distance"] = band_distance({r: shares[r]["HOLD"] for r in REGIME_NAMES}, self.cfg.bands)
        trading = trading_metrics(actions, self.next_returns, self.cfg.fee)
        for key, value in trading.items():
            metrics[f"val_{key}"] = value
        n_traded = trading["traded_share"] * len(actions)
        # Honest features call the next hourly bar ~54% of the time; far more on traded bars means the
        # policy is reading the future somewhere upstream (DESIGN 2.2).
        metrics["leak_alarm"] = bool(
            n_traded >= self.cfg.leak_min_trades and trading["win_rate"] > self.cfg.leak_hit_rate
        )
        profit_ok = self.cfg.min_net_return is None or trading["net_return"] > self.cfg.min_net_return
        metrics["profit_ok"] = bool(profit_ok)
        metrics["objective"] = objective(metrics["band_distance"], trading["sharpe"], profit_ok)
        return metrics


_STATE_FILE = "himari_trial_state.json"


def _learner_values(learner: Any) -> dict[str, float]:
    lrs = {float(g["lr"]) for _, opt in learner.get_optimizers_for_module(DEFAULT_MODULE_ID) for g in opt.param_groups}
    entropy = learner.entropy_coeff_schedulers_per_module[DEFAULT_MODULE_ID].get_current_value()
    return {"lr": lrs.pop() if len(lrs) == 1 else float("nan"), "entropy_coeff": float(entropy)}


def _env_reward_params(runner: Any) -> list[dict[str, float]]:
    if runner.env is None:  # the local runner holds no env when remote runners sample
        return []
    return [env.unwrapped.config.reward.resolved_params for env in runner.env.unwrapped.envs]


def applied_values(algo: Any) -> dict[str, float]:
    """The hyperparameters in effect where they act: lr and entropy coefficient inside the learner(s), reward
    parameters inside every env copy of every env runner. A mutation (PBT) or a restore that silently failed
    to reach them shows up here as a mismatch with the trial's config. NaN where copies disagree."""
    learners = [r.get() for r in algo.learner_group.foreach_learner(_learner_values)]
    runners = algo.env_runner_group.foreach_env_runner(_env_reward_params, local_env_runner=True)
    envs = [params for runner in runners for params in runner]
    out = {}
    for key in ("lr", "entropy_coeff"):
        values = {v[key] for v in learners}
        out[f"applied_{key}"] = values.pop() if len(values) == 1 else float("nan")
    for key in envs[0]:
        values = {e[key] for e in envs}
        out[f"applied_{key}"] = values.pop() if len(values) == 1 else float("nan")
    return out


def skipped_report(results: list[RegimePreflight], verdicts: str, penalty: float) -> dict[str, float | str | bool]:
    """The one report of a configuration the preflight rules out: the HOLD% its verdicts force (NaN where
    contested), the penalty as its band distance, and the verdicts."""
    report: dict[str, float | str | bool] = {"preflight": verdicts, "preflight_skipped": True}
    for r in results:
        forced = r.forced_hold_pct
        report[f"hold_pct_{r.regime}"] = float("nan") if forced is None else forced
    report["hold_pct_ALL"] = float("nan")
    report["band_distance"] = penalty
    report["objective"] = penalty + CONSTRAINT_PENALTY  # below every trained trial, constraint or not
    report["leak_alarm"] = False
    report["profit_ok"] = False
    report["val_sharpe"] = float("nan")
    report["val_net_return"] = float("nan")
    report["val_max_drawdown"] = float("nan")
    report["val_turnover"] = float("nan")
    report["iteration"] = 0
    return report


def aggregate(members: list[dict[str, Any]], how: str) -> dict[str, Any]:
    """One report from several members' (seeds x folds) metrics: means, `<metric>_worst` for band distance
    and Sharpe, and the objective over the chosen aggregate. A single member passes through unchanged."""
    if len(members) == 1:
        return members[0]
    out: dict[str, Any] = {}
    for key, value in members[0].items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            column = np.array([m[key] for m in members], dtype=np.float64)
            out[key] = float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
    bands = np.array([m["band_distance"] for m in members])
    sharpes = np.nan_to_num(np.array([m["val_sharpe"] for m in members]), nan=-np.inf)
    out["band_distance_mean"], out["band_distance_worst"] = float(bands.mean()), float(bands.max())
    out["val_sharpe_mean"], out["val_sharpe_worst"] = out["val_sharpe"], float(sharpes.min())
    if how == "worst":
        out["band_distance"], out["val_sharpe"] = out["band_distance_worst"], out["val_sharpe_worst"]
    out["leak_alarm"] = any(m["leak_alarm"] for m in members)  # one leaking member is enough to distrust all
    out["profit_ok"] = all(m["profit_ok"] for m in members)
    out["objective"] = objective(out["band_distance"], out["val_sharpe"], out["profit_ok"])
    out["members"] = len(members)
    return out


def train_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: `config` is {"trial": TrialConfig dict, <searched name>: value, ...}.

    Trains one PPO run per member (seeds x walk-forward folds, see `RobustConfig`), reports the aggregate
    after every iteration, and checkpoints every member (RLlib state + iteration) every `checkpoint_every`
    iterations so a restored trial resumes where it stopped.
    """
    from ray import tune  # imported here: building configs (and analysis) must not need Tune

    params = {k: v for k, v in config.items() if k != "trial"}
    trial = TrialConfig.model_validate(config["trial"]).with_params(params)
    if trial.preflight.enabled:
        results = preflight(load_dataset(trial.env.data), trial.env, trial.preflight)
        conflicts = band_conflicts(results, trial.eval.bands)
        if conflicts:  # this configuration cannot reach its bands: record why, spend nothing on training
            tune.report(
                skipped_report(
                    results, describe_conflicts(conflicts), skip_penalty(conflicts, trial.eval.bands, trial.preflight)
                )
            )
            return
    torch.manual_seed(trial.train.seed)
    members = trial.members()
    algos = [build_ppo_config(m).build_algo() for m in members]
    evaluators = [GreedyEvaluator(m.env, m.eval) for m in members]
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            # PBT restarts a trial from another trial's checkpoint with mutated values: the algos above were
            # built from the mutated config and restoring keeps them (Ray 2.60 leaves the optimizers' lr as
            # configured); `applied_values` records what acts, so a regression would show in every report.
            for i, algo in enumerate(algos):
                algo.restore_from_path(Path(d) / f"member_{i}")
            start = json.loads((Path(d) / _STATE_FILE).read_text())["iteration"]
    try:
        for it in range(start + 1, trial.train.iterations + 1):
            reports = []
            for algo, evaluator in zip(algos, evaluators, strict=True):
                result = algo.train()
                metrics = evaluator(algo.get_module())
                runner = result[ENV_RUNNER_RESULTS]
                # Absent until the first episode ends (long episodes, small batches).
                metrics["episode_return_mean"] = float(runner.get(EPISODE_RETURN_MEAN, float("nan")))
                metrics["env_steps_sampled"] = int(runner[NUM_ENV_STEPS_SAMPLED_LIFETIME])
                metrics.update(applied_values(algo))
                reports.append(metrics)
            metrics = aggregate(reports, trial.robust.aggregate)
            metrics.update(preflight="", preflight_skipped=False, iteration=it)
            if it % trial.train.checkpoint_every == 0 or it == trial.train.iterations:
                with tempfile.TemporaryDirectory() as d:
                    for i, algo in enumerate(algos):
                        algo.save_to_path(Path(d) / f"member_{i}")
                    (Path(d) / _STATE_FILE).write_text(json.dumps({"iteration": it}))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            else:
                tune.report(metrics)
    finally:
        for algo in algos:
            algo.stop()
