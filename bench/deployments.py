"""Deployments side by side (issue 16): the same reward search, seeds and budget, deployed three ways, each
confirmed on the untouched test split.

- `sampler`: the bundled `smoke` space (per_bar, eval.deploy: sample, objective single: the HOLD bands).
- `selective per_bar`: the bundled `deploy` space with per_bar positions (eval.deploy: selective, objective
  constrained: validation Sharpe within 5 pp of the bands).
- `selective carried, static`: the bundled `deploy` space with its HOLD-share controller off
  (eval.hold_control: 0): carried positions with hysteresis at the thresholds fitted on the end of train.
- `selective carried`: the bundled `deploy` space as shipped (hysteresis, thresholds steered by the causal
  HOLD-share controller, env/control.py).

Each search uses the same trials, iterations and seed; its best trial (the one ranking) is confirmed with
`--confirm-seeds` seeds. Nothing is tuned on test: the test split is read once per search, by confirm, after
the search has chosen. Figures go to stdout (markdown) and OUT/deployments.json.

    .venv/bin/python bench/deployments.py --out runs/deployments            # ~15 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")  # every Ray the tool starts uses token auth

from himari_ray.schema import (
    BAND_DISTANCE,
    VAL_BUY_AND_HOLD,
    VAL_EDGE,
    VAL_EDGE_P,
    VAL_NET_RETURN,
    VAL_TURNOVER,
    for_split,
)
from himari_ray.search.confirm import run_confirm
from himari_ray.search.space import load_space

DEPLOYMENTS = {
    "sampler": ("smoke", None, {}),
    "selective per_bar": ("deploy", "per_bar", {}),
    "selective carried, static": ("deploy", "carried", {"hold_control": 0.0}),
    "selective carried": ("deploy", "carried", {}),
}


def space_for(name: str, mode: str | None, eval_update: dict):
    space, path = load_space(name)
    if mode is not None:
        space = space.model_copy(update={"env": space.env.model_copy(update={"position_mode": mode})})
    if eval_update:
        space = space.model_copy(update={"eval": space.eval.model_copy(update=eval_update)})
    return space, path


def mean_sd(summary: dict, key: str, scale: float = 1.0) -> str:
    m = summary[key]
    return f"{scale * m['mean']:.1f} ± {scale * m['std']:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="New directory for the searches and the figures.")
    p.add_argument("--trials", type=int, default=12, help="Trials per search (default: 12, the spaces' own).")
    p.add_argument("--seed", type=int, default=0, help="Searcher seed of every search (default: 0).")
    p.add_argument("--confirm-seeds", type=int, default=3, help="Seeds of each confirm (default: 3).")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default: 2).")
    args = p.parse_args()

    import ray

    from himari_ray.search.driver import check_out_dir, run_search

    check_out_dir(args.out)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    started, rows = time.time(), {}
    for label, (name, mode, eval_update) in DEPLOYMENTS.items():
        space, path = space_for(name, mode, eval_update)
        t0 = time.time()
        folder = label.replace(",", "").replace(" ", "-")
        out = run_search(space, path, args.out / folder, trials=args.trials, seed=args.seed)
        searched = time.time() - t0
        record = run_confirm(out, seeds=args.confirm_seeds)
        rows[label] = {"dir": str(out), "search_s": searched, "confirm_s": time.time() - t0 - searched, **record}
    figures = {"trials": args.trials, "seed": args.seed, "cpus": args.cpus, "rows": rows}
    figures["wall_seconds"] = time.time() - started
    (args.out / "deployments.json").write_text(json.dumps(figures, indent=2, default=str))
    ray.shutdown()

    print(f"\n{args.trials} trials per search, seed {args.seed}, confirm {args.confirm_seeds} seeds, {args.cpus} CPUs")
    print(
        "| deployment | trial | val band pp | test band pp | test net % | flat % | buy-and-hold % | test turnover"
        " | test edge % | test p(edge) | search s |"
    )
    print("|---" * 11 + "|")
    for label, r in rows.items():
        v, t = r["summary"]["val"], r["summary"]["test"]
        ps = [s["test"][for_split(VAL_EDGE_P, "test")] for s in r["per_seed"]]
        print(
            f"| {label} | {r['trial']} | {mean_sd(v, BAND_DISTANCE)} | {mean_sd(t, BAND_DISTANCE)} | "
            f"{mean_sd(t, for_split(VAL_NET_RETURN, 'test'), 100)} | 0.0 | "
            f"{100 * t[for_split(VAL_BUY_AND_HOLD, 'test')]['mean']:.1f} | "
            f"{t[for_split(VAL_TURNOVER, 'test')]['mean']:.3f} | {mean_sd(t, for_split(VAL_EDGE, 'test'), 100)} | "
            f"{', '.join(f'{x:.3f}' for x in ps)} | {r['search_s']:.0f} |"
        )
    significant = [label for label, r in rows.items() if any(
        s["test"][for_split(VAL_EDGE_P, "test")] < 0.05 for s in r["per_seed"])]  # fmt: skip
    print(
        "\nedge with p < 0.05 on test: "
        + (", ".join(significant) if significant else "none (no deployment shows skill)")
    )
    print(f"wall time {figures['wall_seconds']:.0f} s; figures in {args.out / 'deployments.json'}")


if __name__ == "__main__":
    main()
