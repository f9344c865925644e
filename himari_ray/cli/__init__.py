"""Command line: `himari-ray search`, `preflight`, `spaces`, `analyze`, `report`, `confirm`, `export`, `act`,
`data import|inspect|synth`, `vast`.

Each command group is a module with `register(subparsers)`; it adds its commands with
`common.add_command` (help that shows defaults and an example) and sets `run`, the function that carries
the command out. Bad input ends in one line on stderr naming the file (or flag) and key, exit code
2, nothing written.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from himari_ray import __version__
from himari_ray.cli import confirm, data, launch, policy, results, search, spaces
from himari_ray.cli.common import Parser
from himari_ray.types import SearchFailed, SearchInterrupted, UserInputError

#: What `himari-ray --help` says first: one whole sentence (the module docstring's first line was cut).
DESCRIPTION = (
    "Search the reward shaping of a regime-conditioned PPO trading policy with RLlib, Ray Tune and Optuna, "
    "then analyze, report, confirm, export and run what the search found."
)

#: Command groups in the order `--help` lists them.
COMMAND_MODULES = (search, spaces, results, confirm, data, policy, launch)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="himari-ray",
        description=DESCRIPTION,
        epilog="example:\n  himari-ray search            # the default (smoke) search, then: himari-ray analyze DIR",
    )
    parser.add_argument("--version", action="version", version=f"himari-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UserInputError as exc:
        return _fail(str(exc))
    except SearchInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    except SearchFailed as exc:
        _fail(str(exc))
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do, with stdout sent nowhere so the
        # interpreter's final flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE
    except OSError as exc:  # unwritable, read-only or full disks, paths under a file: the user's to fix
        where = f"{exc.filename}: " if exc.filename else ""
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        return _fail(f"{where}{reason}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


#: An error line longer than this is cut: it must stay readable on one terminal line or two.
MAX_ERROR_CHARS = 400


def _fail(message: str) -> int:
    """Print one line on stderr and return exit code 2."""
    line = " ".join(message.split())
    if len(line) > MAX_ERROR_CHARS:
        line = line[: MAX_ERROR_CHARS - 3] + "..."
    print(f"error: {line}", file=sys.stderr)
    return 2
