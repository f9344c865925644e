"""Command line: `himari-ray search`, `himari-ray analyze`.

Bad input ends in one line on stderr naming the file (or flag) and key, exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from himari_ray.types import UserInputError

DEFAULT_SPACE = "smoke"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print the usage too)
        raise UserInputError(f"{self.prog}: {message}")


def _positive(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UserInputError(f"{flag}: expected an integer, got {text!r}") from None
        if value < 1:
            raise UserInputError(f"{flag}: must be >= 1, got {value}")
        return value

    return parse


def _non_negative(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UserInputError(f"{flag}: expected an integer, got {text!r}") from None
        if value < 0:
            raise UserInputError(f"{flag}: must be >= 0, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="himari-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="Search reward parameters with Ray Tune + Optuna.")
    s.add_argument("space", nargs="?", default=DEFAULT_SPACE, help="Space file or bundled name (default: smoke).")
    s.add_argument("--trials", type=_positive("--trials"), help="Number of trials (default: the space's budget).")
    s.add_argument("--out", type=Path, help="Output directory (default: runs/<space>-<time>); must be new or empty.")
    s.add_argument("--seed", type=_non_negative("--seed"), help="Sampler seed (default: the space's budget.seed).")

    a = sub.add_parser("analyze", help="Print a search's trial table from disk (no Ray).")
    a.add_argument("dir", type=Path, help="A search output directory.")
    return parser


def _cmd_search(args: argparse.Namespace) -> int:
    from himari_ray.search import check_out_dir, default_out_dir, load_space, run_search

    space, path = load_space(args.space)
    out = args.out or default_out_dir(space)
    check_out_dir(out)
    trials = args.trials or space.budget.trials
    seed = space.budget.seed if args.seed is None else args.seed
    print(f"himari-ray search: space {space.name} ({path}), {trials} trials, seed {seed}, out {out}", flush=True)
    out = run_search(space, path, out, trials=trials, seed=seed)
    return _print_table(out)


def _print_table(out: Path) -> int:
    from himari_ray.analysis import format_table, trials_table

    print(format_table(trials_table(out)))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "search":
            return _cmd_search(args)
        return _print_table(args.dir)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
