"""`himari-ray search` and `himari-ray preflight`."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from himari_ray.cli.common import DEFAULT_SPACE, add_command, new_path, non_negative, positive, print_table, seed
from himari_ray.types import UserInputError


def register(sub: argparse._SubParsersAction) -> None:
    s = add_command(
        sub,
        "search",
        "Search reward parameters with Ray Tune + Optuna.",
        [
            "himari-ray search",
            "himari-ray search pnl_cost --trials 32 --out runs/pnl",
            "himari-ray search --resume runs/pnl",
        ],
    )
    s.add_argument("space", nargs="?", default=DEFAULT_SPACE, help="Space file or bundled name.")
    s.add_argument("--trials", type=positive("--trials"), help="Number of trials (default: the space's budget).")
    s.add_argument(
        "--out", type=new_path("--out"), help="Output directory (default: runs/<space>-<time>); must be new or empty."
    )
    s.add_argument("--seed", type=seed(), help="Sampler seed (default: the space's budget.seed).")
    s.add_argument("--data", type=Path, help="Train on this dataset directory (default: the space's data).")
    s.add_argument("--storage", help="Optuna study storage, any SQLAlchemy URL (default: sqlite in --out).")
    s.add_argument(
        "--address", help="Join this Ray cluster with token authentication (default: start a Ray of its own)."
    )
    s.add_argument(
        "--tune-storage",
        metavar="URI",
        help="Keep trials and checkpoints where every node of a multi-node cluster reaches them while the search "
        "runs (s3://bucket/prefix, gs://..., or an absolute shared directory); --out gets a copy at the end.",
    )
    s.add_argument("--resume", type=Path, metavar="DIR", help="Continue the search in DIR after its driver died.")

    p = add_command(
        sub,
        "preflight",
        "Which regimes a space's rewards make HOLD- or trade-dominant (no training).",
        "himari-ray preflight adaptive --sample 200",
    )
    p.add_argument("space", nargs="?", default=DEFAULT_SPACE, help="Space file or bundled name.")
    p.add_argument("--data", type=Path, help="Read this dataset directory (default: the space's data).")
    p.add_argument(
        "--sample",
        type=non_negative("--sample"),
        default=0,
        help="Also classify N configurations sampled from the space.",
    )
    p.add_argument("--seed", type=seed(), default=0, help="Seed of the sampled configurations.")
    p.add_argument("--strict", action="store_true", help="Skill band [0.5, 1.0]: coin flip and perfect oracle.")

    s.set_defaults(run=run_search_cmd)
    p.set_defaults(run=run_preflight)


def run_search_cmd(args: argparse.Namespace) -> int:
    if args.address is not None:
        # Ray reads its authentication mode when it is imported: set it before anything imports Ray.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    from himari_ray.search.driver import check_out_dir, default_out_dir, resume_search, run_search
    from himari_ray.search.space import load_space, with_dataset

    if args.resume is not None:
        # --storage may come again: search.json keeps an external study's URL without its password.
        given = [f for f in ("trials", "out", "seed", "data", "tune_storage") if getattr(args, f) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserInputError(f"--resume: cannot be combined with {flag} (the search keeps its settings)")
        print(f"himari-ray search: resuming {args.resume}", flush=True)
        return print_table(
            resume_search(args.resume, address=args.address, storage_url=args.storage), write_pareto=True
        )
    space, path = load_space(args.space)
    if args.data is not None:
        space = with_dataset(space, args.data)
    out = args.out or default_out_dir(space)
    check_out_dir(out)
    trials = args.trials or space.budget.trials
    if args.seed is not None:
        seed = args.seed
    elif args.storage is not None:
        # Drivers sharing a study with one seed would propose the same configurations: half the compute
        # duplicated. Each driver draws its own unless --seed says otherwise.
        seed = secrets.randbelow(2**31)
    else:
        seed = space.budget.seed
    print(f"himari-ray search: space {space.name} ({path}), {trials} trials, seed {seed}, out {out}", flush=True)
    out = run_search(
        space,
        path,
        out,
        trials=trials,
        seed=seed,
        storage_url=args.storage,
        address=args.address,
        tune_storage=args.tune_storage,
    )
    return print_table(out, write_pareto=True)


def run_preflight(args: argparse.Namespace) -> int:
    from himari_ray.env.preflight import STRICT, band_conflicts, describe_conflicts, format_preflight
    from himari_ray.search.landscape import preflight_space
    from himari_ray.search.space import load_space, with_dataset

    space, path = load_space(args.space)
    if args.data is not None:
        space = with_dataset(space, args.data)
    if args.strict:
        space = space.model_copy(update={"preflight": STRICT})
    cfg = space.preflight
    params = space.trial_config().env.reward.resolved_params
    seed_table, shares, all_contested = preflight_space(space, args.sample, args.seed)
    print(
        f"preflight: space {space.name} ({path}), family {space.family}, {cfg.split} split, skill band "
        f"[{cfg.skill_low}, {cfg.skill_high}]"
    )
    print("seed values: " + ", ".join(f"{k}={v:g}" for k, v in params.items()))
    print(format_preflight(seed_table))
    conflicts = band_conflicts(seed_table, space.eval.bands)
    print("band conflicts: " + (describe_conflicts(conflicts) if conflicts else "none: this configuration is trained"))
    if args.sample:
        print(f"\n{args.sample} sampled configurations (seed {args.seed}), verdict shares per regime:")
        verdicts = ("HOLD-dominant", "contested", "trade-dominant")
        print(f"{'regime':9} " + " ".join(f"{v:>15}" for v in verdicts))
        for regime, row in shares.items():
            print(f"{regime:9} " + " ".join(f"{row.get(v, 0.0):14.1f}%" for v in verdicts))
        print(f"contested in all four regimes: {all_contested:.1f}%")
    return 0
