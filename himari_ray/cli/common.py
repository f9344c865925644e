"""What every command shares: the one-line-error parser, integer flags, the results table printer."""

from __future__ import annotations

import argparse
from pathlib import Path

from himari_ray.types import UserInputError

#: The space `search` and `preflight` use when none is named.
DEFAULT_SPACE = "smoke"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `UserInputError` line (argparse would print the usage too)."""

    def error(self, message: str) -> None:
        raise UserInputError(f"{self.prog}: {message}")


#: Hard upper bounds: a count or seed beyond these is a typo, not a plan (and a seed must fit numpy's 32 bits).
MAX_COUNT = 100_000
MAX_SEED = 2**32 - 1


def int_at_least(flag: str, minimum: int, maximum: int = MAX_COUNT):
    """An argparse type: an integer in [minimum, maximum], or a one-line error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UserInputError(f"{flag}: expected an integer, got {quote(text)}") from None
        if not minimum <= value <= maximum:
            raise UserInputError(f"{flag}: must be in [{minimum}, {maximum}], got {value}")
        return value

    return parse


def positive(flag: str, maximum: int = MAX_COUNT):
    return int_at_least(flag, 1, maximum)


def non_negative(flag: str, maximum: int = MAX_COUNT):
    return int_at_least(flag, 0, maximum)


def seed(flag: str = "--seed"):
    return int_at_least(flag, 0, MAX_SEED)


def new_path(flag: str):
    """An argparse type for an output path: refuses the empty string (it would mean the current directory)."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise UserInputError(f"{flag}: must name a directory, got an empty path")
        return Path(text)

    return parse


def quote(text: str, limit: int = 60) -> str:
    """A user's value quoted in an error message, cut so a whole file never lands in one line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def print_table(out: Path, write_pareto: bool = False) -> int:
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
