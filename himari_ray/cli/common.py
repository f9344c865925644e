"""What every command shares: the one-line-error parser with defaults and an example in every `--help`
(`add_command`), integer flags, the results printer."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from himari_ray.types import MAX_COUNT, MAX_SEED, UserInputError, redact

#: The space `search` and `preflight` use when none is named.
DEFAULT_SPACE = "smoke"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default one way, `(default: X)` before the help's last period, and keeps the
    example epilog as written. An option whose default is decided later (argparse default None: the space's
    budget, standard output) writes its own `(default: what)` in the same form."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        # Descriptions wrap at the terminal's width; indented lines (the examples) stay as written.
        return "\n".join(
            line
            if line.startswith(" ") or len(indent + line) <= width
            else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            for line in text.splitlines()
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text is argparse.SUPPRESS or not shows_default(action):
            return text
        # argparse %-formats the help afterwards: a literal % in a default must survive that.
        shown = f"(default: {default_text(action.default)})".replace("%", "%%")
        return f"{text[:-1]} {shown}." if text.endswith(".") else f"{text} {shown}".strip()


def shows_default(action: argparse.Action) -> bool:
    """Whether `--help` states this argument's default: it takes a value (not a flag, --help or --version),
    is optional, and argparse holds a default (`is`, not `in`: a default of 0 is not False)."""
    if action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


def default_text(default: object) -> str:
    """A default as `--help` writes it: an empty string (no extra conditions) reads `none`."""
    return "none" if default == "" else str(default)


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


def new_path(flag: str, what: str = "a directory"):
    """An argparse type for an output path: refuses the empty string (it would mean the current directory)."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise UserInputError(f"{flag}: must name {what}, got an empty path")
        return Path(text)

    return parse


def quote(text: str, limit: int = 60) -> str:
    """A user's value quoted in an error message, cut so a whole file never lands in one line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


#: An error line longer than this is cut (as the CLI cuts its one line).
MAX_PROBLEM_CHARS = 400


def report_problems(problems: list[str]) -> int:
    """Name each unreadable file on stderr, one `error:` line each, and return exit code 2: what `analyze` and
    `report` do after printing what they could, so a script can tell a partial result from a whole one."""
    for problem in problems:
        line = " ".join(problem.split())
        if len(line) > MAX_PROBLEM_CHARS:
            line = line[: MAX_PROBLEM_CHARS - 3] + "..."
        print(f"error: {line}", file=sys.stderr)
    return 2 if problems else 0


def load_results(out: Path):
    """`load_search(out)`, or None after naming every unreadable file (one line each) where no trial is
    readable (`load_search` itself names the first alone)."""
    from himari_ray.report import load_search
    from himari_ray.searchdir import load_search_run

    try:
        return load_search(out)
    except UserInputError:
        try:
            problems = load_search_run(Path(out)).problems
        except UserInputError:
            problems = []
        if len(problems) < 2:
            raise
        report_problems(problems)
        return None


def print_results(out: Path, fmt: str = "table", write_pareto: bool = False) -> int:
    """Print a search's results (`analyze`): trials table, Pareto front, best trials, importance; then name
    each unreadable file on stderr and exit 2 where there was one."""
    from himari_ray.report.cost import cost_report
    from himari_ray.report.text import render

    results = load_results(out)
    if results is None:
        return 2
    print(render(results, fmt))
    if write_pareto and not results.pareto.empty:
        results.pareto.to_csv(Path(out) / "pareto.csv", index=False)
    if fmt == "table" and (cost := cost_report(out)):  # a search launched on rented instances: what it cost
        print(f"\n{cost}")
    sys.stdout.flush()  # the results first, then what could not be read
    return report_problems(results.problems)


def print_table(out: Path, write_pareto: bool = False) -> int:
    """What a finished search prints: the results as `analyze DIR` prints them, then where they are and
    the commands that read them."""
    from himari_ray.cli import build_parser
    from himari_ray.report import load_search
    from himari_ray.report.text import render

    results = load_search(out)
    print(render(results, "table"))
    if write_pareto and not results.pareto.empty:
        results.pareto.to_csv(Path(out) / "pareto.csv", index=False)
    best = int(results.best["trial"].iloc[0]) if not results.best.empty else None
    storage = results.manifest.storage_url(out)
    print("\n" + next_steps(out, command_names(build_parser()), best, storage))
    from himari_ray.report.cost import cost_report

    if cost := cost_report(out):  # a search launched on rented instances: what it cost
        print(f"\n{cost}")
    return 0


#: What to do after a search, in order: command, what it gives. Only commands this CLI has are printed.
NEXT_STEPS = (
    ("analyze", "{out}", "this table again; --format csv|json|markdown for programs and notes"),
    ("report", "{out}", "one HTML file with figures ({out}/report.html)"),
    ("confirm", "{out} --trial {best}", "score the best trial on the untouched test split (the default)"),
    ("export", "{out} --trial {best} --out bundle", "the trained policy as a bundle that `act` runs on new bars"),
)


def command_names(parser: argparse.ArgumentParser) -> set[str]:
    """The subcommands a parser knows."""
    return {
        name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices
    }


def next_steps(out: Path, available: set[str], best: int | None = None, storage: str | None = None) -> str:
    """Where a finished search's results are and the commands that read them."""
    commands = []
    for name, args, what in NEXT_STEPS:
        if name in available:
            arguments = args.format(out=out, best=best if best is not None else "N")
            commands.append((f"himari-ray {name} {arguments}", what.format(out=out)))
    if storage:  # never print a storage password
        url = redact(storage)
        commands.append((f"optuna-dashboard {url}", "the Optuna study in a browser (pip install optuna-dashboard)"))
    commands.append((f"tensorboard --logdir {out}/tune", "Tune's per-trial curves (pip install tensorboard)"))
    width = max(len(c) for c, _ in commands)
    lines = [f"results: {out} (space.yaml, search.json, study.db, tune/ with one directory per trial)", "next:"]
    lines += [f"  {c:<{width}}  # {w}" for c, w in commands]
    return "\n".join(lines)
