"""`--help` of every command: a whole description, an example, and every default shown, written one way:
`(default: X)` just before the help's last period (issue 18: three spellings, and 0 defaults not shown)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from himari_ray.cli import build_parser


def parsers(parser: argparse.ArgumentParser, name: str = "himari-ray") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the CLI, the top level and each (nested) subcommand, with its command line."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


ALL = dict(parsers(build_parser()))


def expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An argument's help as `--help` prints it (defaults filled in), on one line."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def has_default(action: argparse.Action) -> bool:
    """Written here, not imported, so the test does not share the formatter's mistakes: an optional argument
    that takes a value and whose argparse default is not None (0 included: `0 in (None, False)` is True)."""
    takes_value = action.nargs != 0  # not --help, --version or a store_true flag
    optional = bool(action.option_strings) or action.nargs in ("?", "*")
    return takes_value and optional and action.default is not None and action.default is not argparse.SUPPRESS


def test_the_walk_reaches_every_command():
    assert {"himari-ray search", "himari-ray preflight", "himari-ray data synth", "himari-ray vast logs"} <= set(ALL)
    assert len(ALL) == 20  # the top level, 10 commands, 3 under data, 6 under vast


def test_the_top_level_description_is_whole():
    parser = build_parser()
    description = parser.description
    assert description.endswith(".") and description.count("`") % 2 == 0, description
    assert " ".join(description.split()) in " ".join(parser.format_help().split())


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_command_shows_an_example(name):
    text = ALL[name].format_help()
    assert "\nexample" in text and f"  {' '.join(name.split()[:2])}" in text, name


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_default_is_shown_in_one_style(name):
    parser = ALL[name]
    shown = " ".join(parser.format_help().split())
    for action in parser._actions:
        help_text = expanded_help(parser, action)
        # One spelling everywhere, also where the help writes its own (a default decided later): `(default: `.
        assert len(re.findall(r"\bdefault", help_text)) == help_text.count("(default: "), (name, help_text)
        assert not re.search(r"\(\d[\d.]*\)", help_text), (name, help_text)  # a bare "(0.95)" is a default too
        if has_default(action):
            value = "none" if action.default == "" else str(action.default)
            assert help_text.endswith(f"(default: {value}).") and help_text.count("(default: ") == 1, (name, help_text)
            assert help_text in shown, (name, action.dest)


def test_the_defaults_issue_18_found_missing_are_shown():
    def help_of(command: str, dest: str) -> str:
        return next(expanded_help(ALL[command], a) for a in ALL[command]._actions if a.dest == dest)

    assert help_of("himari-ray preflight", "sample").endswith("(default: 0).")
    assert help_of("himari-ray preflight", "seed").endswith("(default: 0).")
    assert help_of("himari-ray data synth", "seed").endswith("(default: 0).")
    assert help_of("himari-ray vast offers", "min_reliability").endswith("(default: 0.95).")
