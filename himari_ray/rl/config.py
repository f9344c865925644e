"""Typed trial configs (env, model, PPO, evaluation, robustness) and their one translation into RLlib's PPOConfig."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from himari_ray.data.dataset import load_dataset
from himari_ray.env.coordinates import invert_breakeven, split_coordinates
from himari_ray.env.leak import LeakAlarmConfig
from himari_ray.env.metrics import DEFAULT_HOLD_BANDS
from himari_ray.env.preflight import (
    PreflightConfig,
)
from himari_ray.env.rewards import RewardConfig
from himari_ray.env.trading import CARRIED_GAMMA, EnvConfig, HimariTradingEnv, carried_horizon
from himari_ray.rl.fast_runner import FastEnvRunner
from himari_ray.rl.learner import HimariPPOLearner
from himari_ray.rl.model import MODEL_PRESETS, PRECISION_KEY, ModelConfig, RegimeTransformerModule
from himari_ray.types import MAX_COUNT, MAX_SEED, REGIME_NAMES, SEARCHABLE, StrictModel, flagged


class TrainConfig(StrictModel):
    """PPO settings of one trial."""

    # <= MAX_COUNT (100,000): a trial of more reports than any search budget runs; a typo, not a plan.
    iterations: int = Field(10, ge=1, le=MAX_COUNT, description="PPO training iterations (one Tune report each).")
    # <= 2**20 env steps: a batch held in one learner's memory (the bundled spaces use 256 to 2048).
    train_batch_size: int = Field(2048, ge=8, le=2**20, description="Env steps per iteration (per learner).")
    minibatch_size: int = Field(256, ge=4, le=2**20, description="SGD minibatch size.")  # and <= the batch
    # <= 1,000: past a few dozen passes PPO only overfits the batch it has; 1,000 is a typo, not a plan.
    num_epochs: int = Field(4, ge=1, le=1_000, description="SGD passes over each train batch.")
    # <= 1: Adam steps of a whole unit per parameter diverge on any network (the bundled spaces use <= 3e-3).
    lr: float = Field(3e-4, gt=0, le=1.0, description="Adam learning rate.", json_schema_extra={SEARCHABLE: True})
    gamma: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Discount; None: the position mode's (per_bar actions do not move the state: 0; carried: "
        "CARRIED_GAMMA). A value given, searched or fixed, is the one that trains.",
        json_schema_extra={SEARCHABLE: True},
    )
    lambda_: float = Field(0.95, ge=0, le=1, description="GAE lambda.", json_schema_extra={SEARCHABLE: True})
    # <= 100: the entropy of 3 actions is at most ln 3, rewards are O(1) a bar; a weight of 100 already drowns them.
    entropy_coeff: float = Field(
        0.01, ge=0, le=100, description="Entropy bonus weight.", json_schema_extra={SEARCHABLE: True}
    )
    # <= 10: a probability ratio clipped at 1 +- 10 is no clipping at all (PPO uses 0.1 to 0.3).
    clip_param: float = Field(0.2, gt=0, le=10, description="PPO clip range.", json_schema_extra={SEARCHABLE: True})
    # <= 1,024 runners and env copies each: more than a cluster's CPUs (Ray would wait forever to place them).
    num_env_runners: int = Field(0, ge=0, le=1_024, description="Remote env runners (0: sample in the trial process).")
    num_envs_per_env_runner: int = Field(
        4, ge=1, le=1_024, description="Env copies per runner; 4 cut RLlib's per-step overhead 2.6x (bench/README.md)."
    )
    # <= 8 GPUs: the one local learner trains on one node, and no node has more.
    num_gpus_per_learner: float = Field(
        0.0, ge=0, le=8, description="GPU share of the (local) learner; a search sets it to resources.gpus_per_trial."
    )
    num_gpus_per_env_runner: float = Field(
        0.0, ge=0, le=8, description="GPU share of each remote env runner (the local runner uses the learner's GPU)."
    )
    env_runner: Literal["fast", "plain"] = Field(
        "fast",
        description="fast: all env copies step in lockstep, one batched forward per step (rl/fast_runner.py); "
        "plain: RLlib's SingleAgentEnvRunner.",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast the module's forward passes to bfloat16 on CUDA (no effect on CPU)."
    )
    compile: bool = Field(
        False, description="torch.compile the learner's forward_train (inductor): faster updates after a warm-up."
    )
    # <= 2**31 - 1: RLlib adds each runner's index (and 1e6 for evaluation), robust seeds and confirm add up
    # to 99 each, and numpy's global seed must stay below 2**32.
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of RLlib, torch and the env copies.")
    # <= 100,000: the most iterations a trial has.
    checkpoint_every: int = Field(1, ge=1, le=100_000, description="Checkpoint every N iterations (and at the last).")

    @field_validator("minibatch_size")
    @classmethod
    def _minibatch_fits(cls, v: int, info: Any) -> int:
        batch = info.data.get("train_batch_size")
        if batch is not None and v > batch:
            raise ValueError(f"minibatch_size {v} exceeds train_batch_size {batch}")
        return v


class EvalConfig(StrictModel):
    """How a trial's policy is scored on the validation split: a space file's `eval:` section, as is."""

    bands: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_HOLD_BANDS), description="Target HOLD% band per regime."
    )
    deploy: Literal["greedy", "sample", "selective"] = Field(
        "greedy",
        description="How the policy acts once deployed, hence how it is scored: greedy (argmax; band distance of "
        "its HOLD shares), sample (draws from its probabilities; band distance of its mean P(HOLD)) or selective "
        "(trades where its directional margin P(LONG) - P(SHORT) clears a per-regime threshold fitted on the end "
        "of train; band distance of its HOLD shares, docs/DEPLOYMENT.md).",
    )
    # Seeds <= 2**32 - 1: numpy takes 32-bit seeds (the CLI's --seed has the same bound).
    sample_seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the draws of a sampling policy (eval.deploy: sample)."
    )
    calibration_frac: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="selective: the last fraction of the train split's decision bars its thresholds are fitted "
        "on (it ends before validation begins; validation and test never reach the fit).",
    )
    exit_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="selective, carried: a position is kept while its margin stays above this fraction of the "
        "entry threshold (hysteresis: not flipped bar by bar); 1: no hysteresis.",
    )
    hold_control: float = Field(
        0.0,
        ge=0,
        le=1,
        description="selective: step of the causal HOLD-share controller that moves each regime's threshold "
        "after every decision towards its band's centre (env/control.py; reads only past actions, never "
        "returns); 0: the thresholds stay as fitted.",
    )
    null_draws: int = Field(
        200, ge=19, le=10_000, description="Direction-randomised nulls scored beside every evaluation (edge, p)."
    )
    null_seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the nulls' sign flips.")
    # <= 0.1 (10% a trade): no venue charges more; 4 (percent for a fraction) is the typo this catches.
    fee: float = Field(0.0004, ge=0, le=0.1, description="Fee per unit of position change in validation PnL (4 bps).")
    # <= 2**20 windows: one forward pass of that many windows already fills a large GPU.
    batch_size: int = Field(4096, ge=1, le=2**20, description="Windows per forward pass in the greedy evaluation.")
    leak_alarm: LeakAlarmConfig = Field(
        default_factory=LeakAlarmConfig, description="When a hit rate on traded val bars is too good to be honest."
    )
    # In [-1, 100]: a compounded return is a fraction (0.05 is 5%) that cannot fall below -100%; past 10,000% it
    # is a percentage written for a fraction.
    min_net_return: float | None = Field(
        None, ge=-1, le=100, description="Profit constraint: val net return must exceed this (None: no constraint)."
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


#: The one name router: each searchable name and the config that defines it (every other searched name is a
#: reward parameter of the family). Derived from the configs' `SEARCHABLE` fields.
ROUTES: dict[str, type[BaseModel]] = {
    name: cls for cls in (TrainConfig, EnvConfig, RewardConfig) for name in flagged(cls, SEARCHABLE)
}
#: Searchable names that are PPO settings rather than reward or environment ones.
TRAIN_PARAMS = flagged(TrainConfig, SEARCHABLE)


def default_gamma(position_mode: str) -> float:
    """The discount of a trial that leaves `train.gamma` unset: 0 per_bar (a contextual bandit: actions do
    not move the state), `CARRIED_GAMMA` carried (an entry's cost is repaid over the bars a position is held)."""
    return CARRIED_GAMMA if position_mode == "carried" else 0.0


class ObjectiveConfig(StrictModel):
    """What the search optimises, a space file's `objective:` section (how the policy is scored is `eval:`)."""

    mode: Literal["single", "multi", "constrained"] = Field(
        "single",
        description="single: band distance, Sharpe as tie-break (a frequency target: a skill-free sampler can meet "
        "it); multi: band distance down, `metric` up; constrained: `metric` up subject to band distance <= "
        "band_tolerance (Optuna's constraints, docs/DEPLOYMENT.md).",
    )
    metric: Literal["sharpe", "edge"] = Field(
        "sharpe",
        description="What constrained maximises and multi sets against band distance: validation net Sharpe, or "
        "edge (net return minus the median of direction-randomised nulls).",
    )
    band_tolerance: float = Field(
        5.0, ge=0, le=400, description="constrained: the band distance (pp) a trial may miss its bands by."
    )


class RobustConfig(StrictModel):
    """Evaluate each configuration over several seeds and/or walk-forward folds inside train+val."""

    # <= 100 seeds and 20 folds: every trial trains seeds x folds runs; past that one trial is a search of its own
    # (and a fold's validation window shrinks to a few hundred bars).
    seeds: int = Field(1, ge=1, le=100, description="Independent PPO runs (seeds seed, seed+1, ...) per configuration.")
    folds: int = Field(0, ge=0, le=20, description="Anchored walk-forward folds inside train+val (0: plain train/val).")
    aggregate: Literal["mean", "worst"] = Field("mean", description="Which aggregate the objective optimises.")


class TrialConfig(StrictModel):
    """Everything one trial needs. Tune hands it around as a plain dict (`model_dump`)."""

    env: EnvConfig = Field(default_factory=EnvConfig, description="Environment and reward.")
    model: ModelConfig = Field(default_factory=lambda: MODEL_PRESETS["tiny"], description="Transformer sizes.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="PPO settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Validation scoring.")
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description="What the search optimises.")
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

    @property
    def gamma(self) -> float:
        """The discount that trains: `train.gamma`, or the position mode's default where it is unset."""
        return default_gamma(self.env.position_mode) if self.train.gamma is None else self.train.gamma

    def with_params(self, params: Mapping[str, Any]) -> TrialConfig:
        """Overlay searched values: PPO settings go to `train`, environment settings to `env` (and its reward
        config), everything else to the reward's params. Every value is validated where it lands.

        Break-even coordinates (`breakeven_<REGIME>`, env/coordinates.py) are inverted last, on the split the
        preflight reads and with every other value already in place, into the family's per-regime costs."""
        targets, params = split_coordinates(params)
        train = {k: v for k, v in params.items() if ROUTES.get(k) is TrainConfig}
        env_fields = {k: v for k, v in params.items() if ROUTES.get(k) is EnvConfig}
        reward_fields = {k: v for k, v in params.items() if ROUTES.get(k) is RewardConfig}
        reward_params = {k: v for k, v in params.items() if k not in ROUTES}
        reward = RewardConfig.model_validate(
            {**self.env.reward.model_dump(), **reward_fields, "params": {**self.env.reward.params, **reward_params}}
        )
        env = EnvConfig.model_validate({**self.env.model_dump(), **env_fields, "reward": reward.model_dump()})
        train_cfg = TrainConfig.model_validate({**self.train.model_dump(), **train})
        preflight_cfg = self.preflight
        if train_cfg.gamma is None:  # the mode's own: what trains is what the config (and Optuna) says
            train_cfg = train_cfg.model_copy(update={"gamma": default_gamma(env.position_mode)})
        if env.position_mode == "carried" and preflight_cfg.holding_bars is None:
            preflight_cfg = preflight_cfg.model_copy(update={"holding_bars": carried_horizon(train_cfg.gamma)})
        if targets:
            costs = invert_breakeven(load_dataset(env.data), env, targets, preflight_cfg)
            reward = RewardConfig.model_validate({**reward.model_dump(), "params": {**reward.params, **costs}})
            env = env.model_copy(update={"reward": reward})
        return self.model_copy(update={"env": env, "train": train_cfg, "preflight": preflight_cfg})


def module_spec(trial: TrialConfig, env: HimariTradingEnv | None = None) -> RLModuleSpec:
    """The trial's RLModule spec, the one builder of it: the module class and its model config, and, given an
    env, the spaces (without one RLlib fills them in from its env runners)."""
    spaces = {} if env is None else {"observation_space": env.observation_space, "action_space": env.action_space}
    return RLModuleSpec(
        module_class=RegimeTransformerModule,
        model_config={**trial.model.to_model_config(), PRECISION_KEY: trial.train.precision},
        **spaces,
    )


def build_ppo_config(trial: TrialConfig) -> PPOConfig:
    """The single place where himari-ray's typed configs become RLlib settings. The trial's GPU share
    (`num_gpus_per_learner`) is where its learner trains; remote env runners get their own share."""
    t = trial.train
    runner_cls = FastEnvRunner if t.env_runner == "fast" else SingleAgentEnvRunner
    return (
        PPOConfig()
        .environment(HimariTradingEnv, env_config=trial.env.model_dump(mode="json"))
        .framework("torch", torch_compile_learner=t.compile)
        .env_runners(
            num_env_runners=t.num_env_runners,
            num_envs_per_env_runner=t.num_envs_per_env_runner,
            rollout_fragment_length="auto",
            env_runner_cls=runner_cls,
            num_gpus_per_env_runner=t.num_gpus_per_env_runner,
        )
        .learners(
            num_learners=0,
            num_gpus_per_learner=t.num_gpus_per_learner,
            learner_class=HimariPPOLearner,  # RLlib's PPO learner, sync-free and with fused Adam (rl/learner.py)
        )
        .rl_module(rl_module_spec=module_spec(trial))
        .training(
            lr=t.lr,
            gamma=trial.gamma,
            lambda_=t.lambda_,
            entropy_coeff=t.entropy_coeff,
            clip_param=t.clip_param,
            num_epochs=t.num_epochs,
            minibatch_size=t.minibatch_size,
            train_batch_size_per_learner=t.train_batch_size,
        )
        .debugging(seed=t.seed, log_level="ERROR")
    )
