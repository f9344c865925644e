"""The Tune function trainable: one configuration trained with PPO, scored after every iteration,
reported and checkpointed; what each hyperparameter is where it acts.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    TIMERS,
)
from ray.rllib.utils.metrics import EPISODE_RETURN_MEAN as RLLIB_EPISODE_RETURN_MEAN

from himari_ray.data.dataset import load_dataset
from himari_ray.env.preflight import (
    band_conflicts,
    describe_conflicts,
    preflight,
    skip_penalty,
)
from himari_ray.rl.config import TrialConfig, build_ppo_config
from himari_ray.rl.evaluate import PolicyEvaluator
from himari_ray.rl.scoring import aggregate, skipped_report, track_best
from himari_ray.schema import (
    APPLIED_ENTROPY_COEFF,
    APPLIED_GAMMA,
    APPLIED_LR,
    BAND_DISTANCE,
    ENTROPY,
    ENV_STEPS_PER_S,
    ENV_STEPS_SAMPLED,
    EPISODE_RETURN_MEAN,
    GPU_PEAK_MEM_GB,
    GPU_RESERVED_GB,
    HOST_PEAK_RSS_GB,
    ITERATION,
    KL,
    LEARN_S,
    LEARNER_SAMPLES_PER_S,
    POLICY_LOSS,
    PREFLIGHT,
    PREFLIGHT_SKIPPED,
    SAMPLE_S,
    VF_EXPLAINED_VAR,
    applied,
)
from himari_ray.types import TRIAL_STATE_FILE


def _learner_values(learner: Any) -> dict[str, float]:
    lrs = {float(g["lr"]) for _, opt in learner.get_optimizers_for_module(DEFAULT_MODULE_ID) for g in opt.param_groups}
    entropy = learner.entropy_coeff_schedulers_per_module[DEFAULT_MODULE_ID].get_current_value()
    return {
        "lr": lrs.pop() if len(lrs) == 1 else float("nan"),
        "entropy_coeff": float(entropy),
        # The discount RLlib's GAE connector reads: what a searched or defaulted gamma became.
        "gamma": float(learner.config.gamma),
    }


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
    for key, name in (("lr", APPLIED_LR), ("entropy_coeff", APPLIED_ENTROPY_COEFF), ("gamma", APPLIED_GAMMA)):
        values = {v[key] for v in learners}
        out[name] = values.pop() if len(values) == 1 else float("nan")
    for key in envs[0]:
        values = {e[key] for e in envs}
        out[applied(key)] = values.pop() if len(values) == 1 else float("nan")
    return out


def timed_train(algo: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """One `algo.train()` and its per-report throughput, memory and PPO statistics (issue 11). Env steps/s
    counts sampling and learning together; the sampling and learning seconds are this iteration's own."""
    steps0 = algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
    for timer in (ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER):
        # RLlib smooths these timers (EMA, coefficient 0.01): one slow first iteration (torch.compile, CUDA
        # warm-up) would stay in every later report for hundreds of iterations. Recreated empty with a
        # window of one, the report holds what this iteration measured.
        algo.metrics.delete(TIMERS, timer, key_error=False)
        algo.metrics.log_time((TIMERS, timer), reduce="mean", window=1)
    t0 = time.perf_counter()
    result = algo.train()
    wall_s = time.perf_counter() - t0
    steps = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME] - steps0
    timers = result.get("timers", {})
    learner = result.get("learners", {}).get(DEFAULT_MODULE_ID, {})
    learn_s = float(timers.get("learner_update_timer", float("nan")))
    trained = float(learner.get("num_module_steps_trained", float("nan")))
    cuda = torch.cuda.is_initialized()  # the learner trains in this process: its CUDA peaks are this process's
    return result, {
        ENV_STEPS_PER_S: steps / wall_s,
        LEARNER_SAMPLES_PER_S: trained / learn_s if learn_s > 0 else float("nan"),
        SAMPLE_S: float(timers.get("env_runner_sampling_timer", float("nan"))),
        LEARN_S: learn_s,
        GPU_PEAK_MEM_GB: torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan"),
        GPU_RESERVED_GB: torch.cuda.max_memory_reserved() / 1e9 if cuda else float("nan"),
        HOST_PEAK_RSS_GB: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # Linux reports KiB
        POLICY_LOSS: float(learner.get("policy_loss", float("nan"))),
        ENTROPY: float(learner.get("entropy", float("nan"))),
        KL: float(learner.get("mean_kl_loss", float("nan"))),
        VF_EXPLAINED_VAR: float(learner.get("vf_explained_var", float("nan"))),
    }


def cap_gpu_memory(share: float) -> None:
    """Hold this process's CUDA caching allocator to its GPU share. A share is a promise to the trials beside
    this one, but the allocator keeps every block it ever freed: four production trials at 0.25 each held
    ~8 GB apiece on an H100 while allocating 3.3 GB at peak (bench/README.md). Capped, the allocator frees
    its cache and retries before it would pass the share."""
    if 0 < share < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(share)


def preflight_skip(trial: TrialConfig) -> dict[str, Any] | None:
    """The skipped report when the preflight rules the configuration out, else None. It reads only bars the
    trial may train on: with walk-forward folds each fold's own training bars (the base train split holds
    the folds' validation bars), and a conflict in any fold skips the trial (the worst fold's report).

    Only a greedy policy is ruled out this way: the preflight's verdicts force its HOLD share to 0% or 100%,
    while a sampler's HOLD share is set by the cost against the entropy bonus whatever the verdict, and a
    selective deployment's by its thresholds (fitted to the bands' centres on the end of train)."""
    if not trial.preflight.enabled or trial.eval.deploy in ("sample", "selective"):
        return None
    worst = None
    for env in {m.env.data: m.env for m in trial.members()}.values():  # one per fold; seeds share the bars
        results = preflight(load_dataset(env.data), env, trial.preflight)
        conflicts = band_conflicts(results, trial.eval.bands)
        if conflicts:
            penalty = skip_penalty(conflicts, trial.eval.bands, trial.preflight)
            if worst is None or penalty > worst[BAND_DISTANCE]:
                worst = skipped_report(results, describe_conflicts(conflicts), penalty)
    return worst


def train_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: `config` is {"trial": TrialConfig dict, <searched name>: value, ...}.

    Trains one PPO run per member (seeds x walk-forward folds, see `RobustConfig`), reports the aggregate
    after every iteration, and checkpoints every member (RLlib state + iteration) every `checkpoint_every`
    iterations so a restored trial resumes where it stopped.
    """
    from ray import tune  # imported here: building configs (and analysis) must not need Tune

    params = {k: v for k, v in config.items() if k != "trial"}
    trial = TrialConfig.model_validate(config["trial"]).with_params(params)
    skipped = preflight_skip(trial)
    if skipped is not None:  # this configuration cannot reach its bands: record why, spend nothing on training
        tune.report(skipped)
        return
    torch.manual_seed(trial.train.seed)
    cap_gpu_memory(trial.train.num_gpus_per_learner)
    members = trial.members()
    algos = [build_ppo_config(m).build_algo() for m in members]
    evaluators = [PolicyEvaluator(m.env, m.eval, objective=m.objective, preflight_cfg=m.preflight) for m in members]
    start, best = 0, None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            # PBT restarts a trial from another trial's checkpoint with mutated values: the algos above were
            # built from the mutated config and restoring keeps them (Ray 2.60 leaves the optimizers' lr as
            # configured); `applied_values` records what acts, so a regression would show in every report.
            for i, algo in enumerate(algos):
                algo.restore_from_path(Path(d) / f"member_{i}")
            state = json.loads((Path(d) / TRIAL_STATE_FILE).read_text())
            start, best = state["iteration"], state.get("best")
    try:
        for it in range(start + 1, trial.train.iterations + 1):
            reports = []
            for algo, evaluator in zip(algos, evaluators, strict=True):
                result, perf = timed_train(algo)
                metrics = evaluator(algo.get_module())
                metrics.update(perf)
                runner = result[ENV_RUNNER_RESULTS]
                # Absent until the first episode ends (long episodes, small batches).
                metrics[EPISODE_RETURN_MEAN] = float(runner.get(RLLIB_EPISODE_RETURN_MEAN, float("nan")))
                metrics[ENV_STEPS_SAMPLED] = int(runner[NUM_ENV_STEPS_SAMPLED_LIFETIME])
                metrics.update(applied_values(algo))
                reports.append(metrics)
            metrics = aggregate(reports, trial.robust.aggregate, trial.objective)
            metrics.update({PREFLIGHT: "", PREFLIGHT_SKIPPED: False, ITERATION: it})
            best, improved = track_best(metrics, best)
            # A new best is always checkpointed: Tune keeps the best checkpoint by objective beside the latest.
            if improved or it % trial.train.checkpoint_every == 0 or it == trial.train.iterations:
                with tempfile.TemporaryDirectory() as d:
                    for i, algo in enumerate(algos):
                        algo.save_to_path(Path(d) / f"member_{i}")
                    (Path(d) / TRIAL_STATE_FILE).write_text(json.dumps({"iteration": it, "best": best}))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            else:
                tune.report(metrics)
    finally:
        for algo in algos:
            algo.stop()
