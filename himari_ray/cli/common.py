"""What every command shares: the one-line-error parser with defaults and an example in every `--help`
(`add_command`), integer flags, the results printer."""

from __future__ import annotations

import argparse
from pathlib import Path

from himari_ray.types import UserInputError

#: The space `search` and `preflight` use when none is named.
DEFAULT_SPACE = "smoke"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has one worth showing) and keeps the example epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)".strip()
        return text


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `UserInputError` line (argparse would print the usage too), and whose
    help shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        raise UserInputError(f"{self.prog}: {message}")


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, example: str | list[str], **kwargs
) -> argparse.ArgumentParser:
    """A subcommand whose `--help` says what it does, each option's default, and one example (or several)
    — every command module registers its commands through this."""
    examples = [example] if isinstance(example, str) else example
    epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(name, help=help, description=help, epilog=epilog, **kwargs)


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


def print_results(out: Path, fmt: str = "table", write_pareto: bool = False) -> int:
    """Print a search's results (`analyze`): trials table, Pareto front, best trials, importance."""
    from himari_ray.report import load_search
    from himari_ray.report.text import render

    results = load_search(out)
    print(render(results, fmt))
    if write_pareto and not results.pareto.empty:
        results.pareto.to_csv(Path(out) / "pareto.csv", index=False)
    return 0


def print_table(out: Path, write_pareto: bool = False) -> int:
    """The table a finished search prints; `analyze DIR` prints the same."""
    return print_results(out, "table", write_pareto)
