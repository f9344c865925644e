"""Command line: `himari-ray search`, `preflight`, `analyze`, `confirm`, `data import|inspect|synth`.

Each command group is a module with `register(subparsers)`; its parser sets `run`, the function that
carries the command out. Bad input ends in one line on stderr naming the file (or flag) and key, exit code
2, nothing written.
"""

from __future__ import annotations

import argparse
import sys

from himari_ray.cli import confirm, data, results, search
from himari_ray.cli.common import Parser
from himari_ray.types import UserInputError

#: Command groups in the order `--help` lists them.
COMMAND_MODULES = (search, results, confirm, data)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="himari-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
