"""`himari-ray spaces`: the bundled search spaces and what each is for."""

from __future__ import annotations

import argparse

from himari_ray.cli.common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    s = add_command(sub, "spaces", "List the bundled search spaces with their descriptions.", "himari-ray spaces")
    s.set_defaults(run=run_spaces)


def run_spaces(args: argparse.Namespace) -> int:
    import yaml

    from himari_ray.search.space import bundled_spaces

    spaces = bundled_spaces()
    width = max(map(len, spaces))
    for name, path in sorted(spaces.items(), key=lambda kv: (kv[0] != "smoke", kv[0])):
        try:  # the description only: a full validation would build the dataset of each space
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            raw = {}
        text = raw.get("description", "") if isinstance(raw, dict) else ""
        default = " (default)" if name == "smoke" else ""
        print(f"{name:<{width}}  {text}{default}")
    print(f"\nfiles: {next(iter(spaces.values())).parent}; copy one to start your own, then himari-ray search FILE")
    return 0
