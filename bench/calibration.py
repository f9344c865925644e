"""Calibration benchmark (issue 8): does the search land the HOLD bands, and does TPE get there in fewer
trials than random search? Then `confirm` on the best configuration found (validation and test).

On a local Ray of `--cpus` CPUs (default 2) it runs, for each sampler (TPE, random) and each of `--seeds`
sampler seeds, one search of `--trials` trials of the space (default: the bundled `smoke` space, tiny
preset), then `confirm --seeds --confirm-seeds` on the search whose best trial has
the lowest validation band distance. Figures go to stdout (markdown) and to OUT/calibration.json.

    .venv/bin/python bench/calibration.py --out runs/calibration           # the full benchmark (<= 45 min)
    .venv/bin/python bench/calibration.py --out runs/cal-small --trials 6 --seeds 1 --confirm-seeds 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "token")  # every Ray the tool starts uses token auth

from himari_ray.schema import BAND_DISTANCE
from himari_ray.search.confirm import run_confirm
from himari_ray.search.space import load_space
from himari_ray.searchdir import load_search_run, trained


def trial_bests(out: Path) -> list[float]:
    """Per trial in Tune's order (the order the sampler proposed them): the validation band distance of its
    best report; inf for a trial that never trained (skipped by the preflight, crashed)."""
    return [float(run.best[BAND_DISTANCE]) if trained(run) else float("inf") for run in load_search_run(out).trials]


def best_so_far(values: list[float]) -> list[float]:
    return [float(v) for v in np.minimum.accumulate(values)] if values else []


def trials_to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v <= target), None)


def fmt(v: float | None) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.1f}"


def main() -> None:
    default_space = "smoke"  # the tiny preset the benchmark is specified for (calibrate is production-size)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="New directory for the searches and the figures.")
    p.add_argument("--space", default=default_space, help=f"Space file or bundled name (default: {default_space}).")
    p.add_argument("--trials", type=int, default=24, help="Trials per search (default 24).")
    p.add_argument("--seeds", type=int, default=3, help="Sampler seeds per sampler (default 3).")
    p.add_argument("--samplers", default="tpe,random", help="Comma-separated samplers (default tpe,random).")
    p.add_argument("--confirm-seeds", type=int, default=3, help="Seeds of the final confirm (0: skip it).")
    p.add_argument("--target", type=float, default=5.0, help="Band distance counted as landed (default 5).")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2).")
    args = p.parse_args()

    import ray

    from himari_ray.search.driver import check_out_dir, run_search

    check_out_dir(args.out)
    space, path = load_space(args.space)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    started = time.time()
    runs: dict[str, dict[int, dict]] = {}
    for sampler in args.samplers.split(","):
        for seed in range(args.seeds):
            t0 = time.time()
            s = space.model_copy(update={"budget": space.budget.model_copy(update={"sampler": sampler})})
            out = run_search(s, path, args.out / f"{sampler}-seed{seed}", trials=args.trials, seed=seed)
            curve = best_so_far(trial_bests(out))
            runs.setdefault(sampler, {})[seed] = {"dir": str(out), "curve": curve, "seconds": time.time() - t0}
    best_sampler, best_seed = min(
        ((k, s) for k, seeds in runs.items() for s in seeds), key=lambda ks: runs[ks[0]][ks[1]]["curve"][-1]
    )
    confirm = None
    if args.confirm_seeds:
        t0 = time.time()
        record = run_confirm(Path(runs[best_sampler][best_seed]["dir"]), seeds=args.confirm_seeds)
        confirm = {"search": f"{best_sampler}-seed{best_seed}", "seconds": time.time() - t0, **record}
    figures = {
        "space": space.name,
        "trials": args.trials,
        "iterations": space.train.iterations,
        "cpus": args.cpus,
        "target": args.target,
        "runs": runs,
        "confirm": confirm,
        "wall_seconds": time.time() - started,
    }
    (args.out / "calibration.json").write_text(json.dumps(figures, indent=2, default=str))
    ray.shutdown()

    print(
        f"\nspace {space.name}, {args.trials} trials x {space.train.iterations} iterations per search, {args.cpus} CPUs"
    )
    marks = sorted({1, *range(2, args.trials + 1, max(1, args.trials // 6)), args.trials})
    print(
        "| sampler | seed | " + " | ".join(f"best after {k}" for k in marks) + f" | trials to <= {args.target:g} | s |"
    )
    print("|---" * (len(marks) + 4) + "|")
    for sampler, seeds in runs.items():
        for seed, run in seeds.items():
            c = run["curve"]
            cells = " | ".join(fmt(c[k - 1]) if k <= len(c) else "-" for k in marks)
            print(f"| {sampler} | {seed} | {cells} | {trials_to_reach(c, args.target) or '-'} | {run['seconds']:.0f} |")
        mean = np.mean([r["curve"] for r in seeds.values()], axis=0)
        print(f"| {sampler} | mean | " + " | ".join(fmt(mean[k - 1]) for k in marks) + " | | |")
    if confirm:
        v, t = confirm["summary"]["val"], confirm["summary"]["test"]
        print(
            f"\nconfirm ({confirm['search']}, trial {confirm['trial']}, {args.confirm_seeds} seeds, "
            f"{confirm['seconds']:.0f} s): band distance val {fmt(v['band_distance']['mean'])} ± "
            f"{fmt(v['band_distance']['std'])}, test {fmt(t['band_distance']['mean'])} ± {fmt(t['band_distance']['std'])}"
            f" (as deployed: eval.deploy {space.eval.deploy}); probabilistic: val {fmt(v['band_distance_prob']['mean'])}, test "
            f"{fmt(t['band_distance_prob']['mean'])}; test net return {t['test_net_return']['mean']:+.2%} vs buy-and-hold "
            f"{t['test_buy_and_hold']['mean']:+.2%}"
        )
    print(f"wall time {figures['wall_seconds']:.0f} s; figures in {args.out / 'calibration.json'}")


if __name__ == "__main__":
    main()
