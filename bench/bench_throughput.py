#!/usr/bin/env python
"""Throughput of the tiny preset: env alone, PPO (sampling + learning) and the greedy validation pass.

    python bench/bench_throughput.py [--context-len 16] [--iterations 4] [--batch 1024] [--envs 1 4]

Prints the settings and the figures; nothing here is asserted (see bench/README.md for recorded runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from bench_ppo import env_rate as bench_env  # run as a script: bench/ is on sys.path


def bench_ppo(trial, iterations: int) -> dict[str, float]:
    from himari_ray.rl.config import build_ppo_config
    from himari_ray.rl.evaluate import PolicyEvaluator

    algo = build_ppo_config(trial).build_algo()
    try:
        algo.train()  # warm-up: first iteration pays for lazy initialisation
        t0 = time.perf_counter()
        steps0 = algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"), default=0)
        for _ in range(iterations):
            result = algo.train()
        wall = time.perf_counter() - t0
        steps = result["env_runners"]["num_env_steps_sampled_lifetime"] - steps0
        evaluator = PolicyEvaluator(trial.env, trial.eval)
        module = algo.get_module()
        evaluator(module)
        t1 = time.perf_counter()
        evaluator(module)
        eval_s = time.perf_counter() - t1
        return {
            "env_steps_per_s": steps / wall,
            "s_per_iter": wall / iterations,
            "eval_s": eval_s,
            "eval_bars": len(evaluator.regimes),
        }
    finally:
        algo.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context-len", type=int, default=16)
    p.add_argument("--n-bars", type=int, default=6000)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--minibatch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--envs", type=int, nargs="+", default=[1, 4], help="num_envs_per_env_runner values")
    p.add_argument("--env-steps", type=int, default=50_000)
    args = p.parse_args()

    import ray
    import torch

    from himari_ray.data.dataset import DataSpec
    from himari_ray.env.trading import EnvConfig
    from himari_ray.rl.config import TrainConfig, TrialConfig
    from himari_ray.rl.model import MODEL_PRESETS

    torch.set_num_threads(1)
    env_cfg = EnvConfig(
        data=DataSpec(source="synthetic", n_bars=args.n_bars), context_len=args.context_len, episode_len=256
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"torch {torch.__version__}, ray {ray.__version__}"
    )
    print(
        f"settings: tiny preset {MODEL_PRESETS['tiny'].model_dump()}, context_len {args.context_len}, "
        f"n_bars {args.n_bars}, batch {args.batch}, minibatch {args.minibatch}, epochs {args.epochs}, "
        f"iterations {args.iterations} (+1 warm-up), torch threads 1"
    )
    print(f"env alone (pnl_cost, per_bar): {bench_env(env_cfg, args.env_steps):,.0f} steps/s")

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        for n_envs in args.envs:
            trial = TrialConfig(
                env=env_cfg,
                train=TrainConfig(
                    train_batch_size=args.batch,
                    minibatch_size=args.minibatch,
                    num_epochs=args.epochs,
                    num_envs_per_env_runner=n_envs,
                    env_runner="plain",  # the figures recorded under issue 2 are RLlib's own runner's
                ),
            )
            r = bench_ppo(trial, args.iterations)
            print(
                f"PPO, {n_envs} env(s) on the local runner: {r['env_steps_per_s']:,.0f} env steps/s "
                f"({r['s_per_iter']:.2f} s/iteration incl. learning); greedy validation pass over "
                f"{r['eval_bars']} bars: {r['eval_s'] * 1000:.0f} ms"
            )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
