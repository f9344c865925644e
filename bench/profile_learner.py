#!/usr/bin/env python
"""Where one RLlib PPO iteration (fast runner, himari learner) spends its time, phase by phase.

    python bench/profile_learner.py --preset tiny                                  # CPU
    python bench/profile_learner.py --preset production --device cuda --precision bf16

Each phase is timed with a device synchronisation on both sides (so queued GPU work is charged to the phase
that queued it): sampling, building the train batch (learner connectors: episodes to batch, GAE with its
value pass, conversion to the device), every minibatch update, and the rest of the iteration. Then one
iteration under torch.profiler: the top kernels by device time and the device's busy share of the wall.
Figures only: nothing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

PHASES: dict[str, list[float]] = defaultdict(list)


def timed(cls: type, name: str, label: str, sync: Callable[[], None]) -> None:
    """Wrap `cls.name` so each call's wall time, synchronised on both sides, lands in PHASES[label]."""
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        sync()
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            sync()
            PHASES[label].append(time.perf_counter() - t0)

    setattr(cls, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["tiny", "production"], default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--iterations", type=int, default=3)
    args = p.parse_args()
    prod = args.preset == "production"

    import ray
    import torch
    from ray.rllib.core.learner.learner import Learner
    from ray.rllib.core.learner.torch.torch_learner import TorchLearner

    from himari_ray.data.dataset import DataSpec
    from himari_ray.env.trading import EnvConfig
    from himari_ray.rl.config import TrainConfig, TrialConfig, build_ppo_config
    from himari_ray.rl.fast_runner import FastEnvRunner
    from himari_ray.rl.model import MODEL_PRESETS

    cuda = args.device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    data = DataSpec(source="sample") if prod else DataSpec(source="synthetic", n_bars=6000)
    env = EnvConfig(data=data, context_len=100 if prod else 16, episode_len=512)
    train = TrainConfig(
        train_batch_size=4096 if prod else 1024,
        minibatch_size=512 if prod else 256,
        num_epochs=4 if prod else 3,
        num_envs_per_env_runner=64 if prod else 16,
        num_gpus_per_learner=1.0 if cuda else 0.0,
        precision=args.precision,
    )
    trial = TrialConfig(env=env, model=MODEL_PRESETS[args.preset], train=train)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        algo = build_ppo_config(trial).build_algo()
        algo.train()  # warm-up
        timed(FastEnvRunner, "sample", "sample (fast runner)", sync)
        timed(Learner, "_make_batch_if_necessary", "train batch (connectors, GAE, to device)", sync)
        timed(TorchLearner, "_update", "minibatch updates", sync)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.iterations):
            algo.train()
        sync()
        wall = (time.perf_counter() - t0) / args.iterations
        print(
            f"{args.preset} preset, {args.device}, {args.precision}, batch {train.train_batch_size}, minibatch "
            f"{train.minibatch_size}, {train.num_epochs} epochs, {train.num_envs_per_env_runner} envs; "
            f"per iteration (mean of {args.iterations}): {wall:.3f} s"
        )
        accounted = 0.0
        for label, times in PHASES.items():
            per_it = sum(times) / args.iterations
            accounted += per_it
            print(f"  {label:44s} {per_it:7.3f} s  ({len(times) / args.iterations:.0f} calls, {per_it / wall:5.1%})")
        print(
            f"  {'rest (metrics, weight sync, KL, bookkeeping)':44s} {wall - accounted:7.3f} s  ({1 - accounted / wall:5.1%})"
        )
        if cuda:
            from torch.autograd import DeviceType
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                algo.train()
                sync()
                wall = time.perf_counter() - t0
            events = prof.key_averages()
            # Kernels only: an aten op's device time is its kernels' again.
            busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6
            print(f"profiled iteration: wall {wall:.3f} s, device busy {busy:.3f} s ({busy / wall:.0%})")
            print(events.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))
        algo.stop()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
