"""`himari-ray analyze`: the results of a search, read from its files alone (no Ray)."""

from __future__ import annotations

import argparse
from pathlib import Path

from himari_ray.cli.common import print_table


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("analyze", help="Print a search's trial table from disk (no Ray).")
    a.add_argument("dir", type=Path, help="A search output directory.")

    a.set_defaults(run=lambda args: print_table(args.dir))
