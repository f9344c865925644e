#!/usr/bin/env python
"""PPO throughput: env alone, the module alone, RLlib PPO (plain vs fast env runner) and a minimal pure-torch
PPO reference on the same module, data, batch, epochs, clipped objective and GAE, all in one run.

    python bench/bench_ppo.py --preset tiny                      # CPU figures (bench/README.md)
    python bench/bench_ppo.py --preset production --device cuda  # one GPU (bench/gpu_check.sh)

Prints one line per figure and, with --json FILE, writes them. Nothing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import time
from typing import Any

import numpy as np
from reference_ppo import build_module, reference_ppo, sync  # run as a script: bench/ is on sys.path

RESULTS: dict[str, Any] = {}


def emit(key: str, value: Any, text: str) -> None:
    RESULTS[key] = value
    print(text, flush=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def gpu_peak_gb(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")


def reset_gpu_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def env_rate(env_cfg, steps: int) -> float:
    """Steps per second of the plain gymnasium env under random actions (also used by bench_throughput.py)."""
    from himari_ray.env.trading import HimariTradingEnv

    env = HimariTradingEnv(env_cfg)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 3, size=steps)
    t0 = time.perf_counter()
    for a in actions:
        *_, truncated, _ = env.step(a)
        if truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def bench_env(env_cfg, steps: int) -> None:
    rate = env_rate(env_cfg, steps)
    emit("env_steps_per_s", rate, f"env alone ({env_cfg.reward.family}, {env_cfg.position_mode}): {rate:,.0f} steps/s")


def bench_module(trial, device, reps: int) -> None:
    """Forward+backward of one minibatch and inference over one train batch: the learner's own bound."""
    import torch
    from ray.rllib.core.columns import Columns

    from himari_ray.rl.tables import EnvTables, gather_observations

    module, env = build_module(trial, device)
    obs_arrays = EnvTables.of(env).obs.to(device)
    rng = np.random.default_rng(0)
    t = trial.train

    def obs(n: int) -> dict:
        bars = torch.as_tensor(rng.integers(env.first_bar, env.last_bar, n), device=device)
        return {Columns.OBS: gather_observations(obs_arrays, bars, torch.zeros_like(bars))}

    opt = torch.optim.Adam(module.parameters(), lr=t.lr, fused=True)  # as rl/learner.py
    x = obs(t.minibatch_size)
    reset_gpu_peak(device)
    for i in range(reps + 2):
        if i == 2:  # two warm-up steps
            sync(device)
            t0 = time.perf_counter()
        out = module.forward_train(x)
        loss = (
            out[Columns.ACTION_DIST_INPUTS].logsumexp(-1).mean()
            + module.compute_values(x, embeddings=out[Columns.EMBEDDINGS]).square().mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    rate = reps * t.minibatch_size / (time.perf_counter() - t0)
    emit(
        "module_train_samples_per_s",
        rate,
        f"module alone, forward+backward, minibatch {t.minibatch_size} ({t.precision}): {rate:,.0f} samples/s "
        f"(peak GPU {gpu_peak_gb(device):.2f} GB)",
    )
    emit(
        "learner_bound_env_steps_per_s",
        rate / t.num_epochs,
        f"  -> learner bound at {t.num_epochs} epochs: {rate / t.num_epochs:,.0f} env steps/s",
    )
    x = obs(t.train_batch_size)
    with torch.no_grad():
        for i in range(reps // 4 + 2):
            if i == 2:
                sync(device)
                t0 = time.perf_counter()
            module.forward_inference(x)
    sync(device)
    rate = (reps // 4) * t.train_batch_size / (time.perf_counter() - t0)
    emit("module_infer_samples_per_s", rate, f"module alone, inference, batch {t.train_batch_size}: {rate:,.0f}/s")
    if t.precision == "bf16":  # (on CPU autocast is off: the figures are then 0)
        # What bf16 changes: the same weights and windows through the fp32 and the bf16 forward.
        with torch.no_grad():
            low = torch.log_softmax(module.forward_inference(x)[Columns.ACTION_DIST_INPUTS], -1)
            module._bf16 = False
            high = torch.log_softmax(module.forward_inference(x)[Columns.ACTION_DIST_INPUTS], -1)
            module._bf16 = True
        kl = float((high.exp() * (high - low)).sum(-1).mean())
        ratio_out = float(((low - high).exp() - 1).abs().gt(0.2).float().mean())  # pi_bf16/pi_fp32, every action
        emit(
            "bf16_vs_fp32",
            {"kl": kl, "max_abs_logp_diff": float((low - high).abs().max()), "share_ratio_outside_clip": ratio_out},
            f"bf16 vs fp32 forward, same weights: KL {kl:.2e}, max |d logp| {float((low - high).abs().max()):.2e}, "
            f"share of ratios outside [0.8, 1.2] {ratio_out:.4f}",
        )


class RllibRun:
    """RLlib PPO built from the trial; `step()` is one timed `algo.train()` (sampling and learning)."""

    def __init__(self, trial, label: str, stock_learner: bool = False):
        from himari_ray.rl.config import build_ppo_config

        self.label, self.trial = label, trial
        config = build_ppo_config(trial)
        if stock_learner:  # RLlib's own PPOTorchLearner, to measure what rl/learner.py changes
            from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

            config = config.learners(learner_class=PPOTorchLearner)
        self.algo = config.build_algo()
        self.step()  # warm-up: the first iteration pays for lazy initialisation (and compilation)

    def step(self) -> tuple[int, float]:
        from himari_ray.rl.trainable import timed_train

        t0 = time.perf_counter()
        result, self.perf = timed_train(self.algo)
        wall = time.perf_counter() - t0
        total = int(result["env_runners"]["num_env_steps_sampled_lifetime"])
        steps, self._total = total - getattr(self, "_total", 0), total
        return steps, wall

    def describe(self, rate: float, wall: float, iterations: int, gpu_gb: float) -> str:
        perf = self.perf
        return (
            f"RLlib PPO, {self.label} runner, {self.trial.train.num_envs_per_env_runner} envs: {rate:,.0f} env steps/s "
            f"({wall / iterations:.2f} s/iteration; sampling {perf['sample_s']:.2f} s, learning {perf['learn_s']:.2f} s; "
            f"learner {perf['learner_samples_per_s']:,.0f} samples/s; peak GPU {gpu_gb:.2f} GB; KL {perf['kl']:.4f})"
        )

    def close(self) -> None:
        self.algo.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["tiny", "production"], default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--data", choices=["synthetic", "sample"], default="synthetic")
    p.add_argument("--n-bars", type=int, default=6000, help="Bars of the synthetic market.")
    p.add_argument("--context-len", type=int, default=None, help="Default: 16 (tiny), 100 (production).")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="Default: 1024 (tiny), 4096 (production).")
    p.add_argument("--minibatch", type=int, default=None, help="Default: 256 (tiny), 512 (production).")
    p.add_argument("--epochs", type=int, default=None, help="Default: 3 (tiny), 4 (production).")
    p.add_argument("--envs", type=int, default=None, help="Env copies per runner. Default: 16 (tiny), 64 (production).")
    p.add_argument("--plain-envs", type=int, default=4, help="Env copies for the plain runner (its default).")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument(
        "--position-mode",
        choices=["per_bar", "carried"],
        default="per_bar",
        help="per_bar: one forward samples a whole batch; carried: one forward per lockstep step.",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the learner's forward (RLlib and reference).")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU).")
    p.add_argument("--skip", nargs="*", default=[], choices=["env", "module", "plain", "fast", "stock", "reference"])
    p.add_argument("--profile", action="store_true", help="cProfile the fast run; print the top functions by own time.")
    p.add_argument("--json", help="Also write the figures to this JSON file.")
    args = p.parse_args()
    prod = args.preset == "production"

    import ray
    import torch

    from himari_ray.data.dataset import DataSpec
    from himari_ray.env.trading import EnvConfig
    from himari_ray.rl.config import TrainConfig, TrialConfig
    from himari_ray.rl.model import MODEL_PRESETS

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = DataSpec(source="sample") if args.data == "sample" else DataSpec(source="synthetic", n_bars=args.n_bars)
    env_cfg = EnvConfig(
        data=data,
        context_len=args.context_len or (100 if prod else 16),
        episode_len=512,
        position_mode=args.position_mode,
    )
    train = TrainConfig(
        train_batch_size=args.batch or (4096 if prod else 1024),
        minibatch_size=args.minibatch or (512 if prod else 256),
        num_epochs=args.epochs or (4 if prod else 3),
        num_envs_per_env_runner=args.envs or (64 if prod else 16),
        num_gpus_per_learner=1.0 if device.type == "cuda" else 0.0,
        precision=args.precision,
        compile=args.compile,
    )
    trial = TrialConfig(env=env_cfg, model=MODEL_PRESETS[args.preset], train=train)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    emit(
        "machine",
        {"cpus": os.cpu_count(), "gpu": gpu, "torch": torch.__version__, "ray": ray.__version__},
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, GPU {gpu}, python {platform.python_version()}, "
        f"torch {torch.__version__}, ray {ray.__version__}",
    )
    emit(
        "settings",
        {
            "preset": args.preset,
            **train.model_dump(exclude={"iterations", "checkpoint_every"}),
            "bench_iterations": args.iterations,
            "context_len": env_cfg.context_len,
            "position_mode": args.position_mode,
            "data": args.data,
        },
        f"settings: {args.preset} preset, {args.position_mode}, data {args.data}, context_len {env_cfg.context_len}, batch "
        f"{train.train_batch_size}, minibatch {train.minibatch_size}, epochs {train.num_epochs}, envs "
        f"{train.num_envs_per_env_runner} (plain: {args.plain_envs}), {args.precision}"
        f"{' + torch.compile' if args.compile else ''}, device {device}, "
        f"iterations {args.iterations} (+1 warm-up), torch threads {args.threads}",
    )
    if "env" not in args.skip:
        bench_env(env_cfg, 50_000)
    if "module" not in args.skip:
        bench_module(trial, device, reps=20 if prod else 100)
    ray.init(
        address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    try:
        runs = {}
        if "plain" not in args.skip:
            plain = train.model_copy(update={"env_runner": "plain", "num_envs_per_env_runner": args.plain_envs})
            runs["plain"] = RllibRun(trial.model_copy(update={"train": plain}), "plain")
        if "fast" not in args.skip:
            runs["fast"] = RllibRun(trial, "fast")
        if "stock" not in args.skip:
            runs["stock"] = RllibRun(trial, "fast (RLlib's stock PPO learner)", stock_learner=True)
        if "reference" not in args.skip:
            runs["reference"] = reference_ppo(trial, device)
        # Interleaved iteration by iteration: on a shared machine every run sees the same contention.
        totals = {k: [0, 0.0, 0.0] for k in runs}  # steps, seconds, peak GPU GB
        profile = cProfile.Profile() if args.profile else None
        for _ in range(args.iterations):
            for name, run in runs.items():
                reset_gpu_peak(device)
                if profile is not None and name == "fast":
                    profile.enable()
                steps, seconds = run.step()
                if profile is not None and name == "fast":
                    profile.disable()
                totals[name][0] += steps
                totals[name][1] += seconds
                totals[name][2] = max(totals[name][2], gpu_peak_gb(device)) if device.type == "cuda" else float("nan")
        rates = {}
        for name, run in runs.items():
            steps, seconds, gpu_gb = totals[name]
            rates[name] = steps / seconds
            emit(f"{name}_env_steps_per_s", rates[name], run.describe(rates[name], seconds, args.iterations, gpu_gb))
            RESULTS[f"{name}_peak_gpu_gb"] = gpu_gb
            run.close()
        if "fast" in rates and "reference" in rates:
            ratio = rates["fast"] / rates["reference"]
            emit("ratio_fast_to_reference", ratio, f"RLlib fast path / pure-torch reference: {ratio:.2f}x")
        if "fast" in rates and "stock" in rates:
            ratio = rates["fast"] / rates["stock"]
            emit("ratio_fast_to_stock_learner", ratio, f"himari learner / RLlib's stock PPO learner: {ratio:.2f}x")
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(18)
        if "fast" in rates and "plain" in rates:
            ratio = rates["fast"] / rates["plain"]
            emit("ratio_fast_to_plain", ratio, f"RLlib fast path / plain runner: {ratio:.2f}x")
        emit("host_peak_rss_gb", peak_rss_gb(), f"peak host RSS of this process: {peak_rss_gb():.2f} GB")
    finally:
        ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=2, default=str)


if __name__ == "__main__":
    main()
