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


def int_at_least(flag: str, minimum: int):
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


def positive(flag: str):
    return int_at_least(flag, 1)


def non_negative(flag: str):
    return int_at_least(flag, 0)


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
    from himari_ray.report.cost import cost_report

    if cost := cost_report(out):  # a search launched on rented instances: what it cost
        print(f"\n{cost}")
    return 0
