"""Command line: `himari-ray search`, `preflight`, `analyze`, `data import|inspect|synth`.

Bad input ends in one line on stderr naming the file (or flag) and key, exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from himari_ray.types import UserInputError

DEFAULT_SPACE = "smoke"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print the usage too)
        raise UserInputError(f"{self.prog}: {message}")


def _int_at_least(flag: str, minimum: int):
    """An argparse type: an integer >= minimum, or a one-line error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UserInputError(f"{flag}: expected an integer, got {text!r}") from None
        if value < minimum:
            raise UserInputError(f"{flag}: must be >= {minimum}, got {value}")
        return value

    return parse


def _positive(flag: str):
    return _int_at_least(flag, 1)


def _non_negative(flag: str):
    return _int_at_least(flag, 0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="himari-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="Search reward parameters with Ray Tune + Optuna.")
    s.add_argument("space", nargs="?", default=DEFAULT_SPACE, help="Space file or bundled name (default: smoke).")
    s.add_argument("--trials", type=_positive("--trials"), help="Number of trials (default: the space's budget).")
    s.add_argument("--out", type=Path, help="Output directory (default: runs/<space>-<time>); must be new or empty.")
    s.add_argument("--seed", type=_non_negative("--seed"), help="Sampler seed (default: the space's budget.seed).")
    s.add_argument("--data", type=Path, help="Train on this dataset directory instead of the space's data.")
    s.add_argument("--storage", help="Optuna study storage, any SQLAlchemy URL (default: sqlite in --out).")
    s.add_argument("--address", help="Join this Ray cluster (token authentication) instead of starting one.")
    s.add_argument("--resume", type=Path, metavar="DIR", help="Continue the search in DIR after its driver died.")

    p = sub.add_parser("preflight", help="Which regimes a space's rewards make HOLD- or trade-dominant (no training).")
    p.add_argument("space", nargs="?", default=DEFAULT_SPACE, help="Space file or bundled name (default: smoke).")
    p.add_argument("--data", type=Path, help="Read this dataset directory instead of the space's data.")
    p.add_argument("--sample", type=_non_negative("--sample"), default=0, help="Also classify N sampled configs.")
    p.add_argument("--seed", type=_non_negative("--seed"), default=0, help="Seed of the sampled configurations.")
    p.add_argument("--strict", action="store_true", help="Skill band [0.5, 1.0]: coin flip and perfect oracle.")

    a = sub.add_parser("analyze", help="Print a search's trial table from disk (no Ray).")
    a.add_argument("dir", type=Path, help="A search output directory.")

    d = sub.add_parser("data", help="Build and inspect datasets.")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    imp = dsub.add_parser("import", help="OHLCV CSV/Parquet (freqtrade, Binance, CryptoDataDownload) or seed pickle.")
    imp.add_argument("file", type=Path)
    imp.add_argument("--out", type=Path, required=True, help="New dataset directory.")
    imp.add_argument("--train-frac", type=float, default=0.6)
    imp.add_argument("--val-frac", type=float, default=0.2)
    imp.add_argument("--denoise", action="store_true", help="Apply the causal Kalman denoiser to the features.")
    imp.add_argument("--min-dwell", type=_positive("--min-dwell"), default=1, help="Regime hysteresis in bars.")
    imp.add_argument(
        "--seed-features", choices=("raw", "denoised"), default="raw", help="Seed pickle: which feature array."
    )
    ins = dsub.add_parser("inspect", help="Shapes, date ranges, regime shares, gaps, feature summary.")
    ins.add_argument("dataset", type=Path)
    syn = dsub.add_parser("synth", help="Write the seeded synthetic market as a dataset.")
    syn.add_argument("--out", type=Path, required=True)
    syn.add_argument("--n-bars", type=_positive("--n-bars"), default=12_000)
    syn.add_argument("--seed", type=_non_negative("--seed"), default=0)
    return parser


def _cmd_search(args: argparse.Namespace) -> int:
    if args.address is not None:
        # Ray reads its authentication mode when it is imported: set it before anything imports Ray.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    from himari_ray.search.space import (
        check_out_dir,
        default_out_dir,
        load_space,
        resume_search,
        run_search,
        with_dataset,
    )

    if args.resume is not None:
        given = [f for f in ("trials", "out", "seed", "data", "storage") if getattr(args, f) is not None]
        if given:
            raise UserInputError(f"--resume: cannot be combined with --{given[0]} (the search keeps its settings)")
        print(f"himari-ray search: resuming {args.resume}", flush=True)
        return _print_table(resume_search(args.resume, address=args.address), write_pareto=True)
    space, path = load_space(args.space)
    if args.data is not None:
        space = with_dataset(space, args.data)
    out = args.out or default_out_dir(space)
    check_out_dir(out)
    trials = args.trials or space.budget.trials
    seed = space.budget.seed if args.seed is None else args.seed
    print(f"himari-ray search: space {space.name} ({path}), {trials} trials, seed {seed}, out {out}", flush=True)
    out = run_search(space, path, out, trials=trials, seed=seed, storage_url=args.storage, address=args.address)
    return _print_table(out, write_pareto=True)


def _cmd_preflight(args: argparse.Namespace) -> int:
    from himari_ray.env.preflight import STRICT, band_conflicts, describe_conflicts, format_preflight
    from himari_ray.search.space import load_space, preflight_space, with_dataset

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
    conflicts = band_conflicts(seed_table, space.targets)
    print("band conflicts: " + (describe_conflicts(conflicts) if conflicts else "none: this configuration is trained"))
    if args.sample:
        print(f"\n{args.sample} sampled configurations (seed {args.seed}), verdict shares per regime:")
        verdicts = ("HOLD-dominant", "contested", "trade-dominant")
        print(f"{'regime':9} " + " ".join(f"{v:>15}" for v in verdicts))
        for regime, row in shares.items():
            print(f"{regime:9} " + " ".join(f"{row.get(v, 0.0):14.1f}%" for v in verdicts))
        print(f"contested in all four regimes: {all_contested:.1f}%")
    return 0


def _print_table(out: Path, write_pareto: bool = False) -> int:
    from himari_ray.report.analysis import format_table, pareto_front, trials_table

    table = trials_table(out)
    print(format_table(table))
    front = pareto_front(table)
    if not front.empty:
        print(
            f"\nPareto front (band distance down, validation Sharpe up): trials {', '.join(map(str, front['trial']))}"
        )
        if write_pareto:
            front.to_csv(Path(out) / "pareto.csv", index=False)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from himari_ray.data import dataset, store
    from himari_ray.data.describe import describe_dataset

    if args.data_command == "inspect":
        print(describe_dataset(store.load_dataset_dir(args.dataset), args.dataset))
        return 0
    store.check_new_path(args.out)
    if args.data_command == "synth":
        ds = dataset.synthetic_dataset(args.n_bars, args.seed)
    elif args.file.suffix.lower() in (".pkl", ".pickle"):
        ds = dataset.import_seed_pickle(args.file, features=args.seed_features)
    else:
        ds = dataset.import_ohlcv(args.file, _build_settings(args))
    store.save_dataset(ds, args.out)
    print(describe_dataset(ds, args.out))
    return 0


def _build_settings(args: argparse.Namespace):
    from pydantic import ValidationError

    from himari_ray.data.dataset import BuildSettings

    try:
        return BuildSettings(
            train_frac=args.train_frac,
            val_frac=args.val_frac,
            denoise={"enabled": args.denoise},
            detector={"min_dwell": args.min_dwell},
        )
    except ValidationError as err:
        first = err.errors()[0]
        raise UserInputError(f"--{'-'.join(map(str, first['loc']))}: {first['msg']}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "search":
            return _cmd_search(args)
        if args.command == "data":
            return _cmd_data(args)
        if args.command == "preflight":
            return _cmd_preflight(args)
        return _print_table(args.dir)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
