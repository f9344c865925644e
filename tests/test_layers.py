"""Layers flow one way (DEVELOPERS.md): a module imports only from lower layers, and analysis needs no Ray."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "himari_ray"

LAYER = {
    "types": 0,
    **dict.fromkeys(
        ("synthetic", "ohlcv", "features", "regime", "denoise", "seedpickle", "store", "rewards", "metrics"), 1
    ),
    "data": 2,
    "describe": 2,
    "env": 3,
    "model": 4,
    "preflight": 4,
    "training": 5,
    "study": 6,
    "search": 7,
    "analysis": 8,
    "cli": 9,
    "__main__": 10,
    "__init__": 0,
}


def himari_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("himari_ray"):
            parts = node.module.split(".")
            if len(parts) > 1:
                out.add(parts[1])
            else:
                out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("himari_ray."))
    return out


def test_every_module_has_a_layer():
    assert {p.stem for p in PKG.glob("*.py")} == set(LAYER)


def test_no_module_imports_upward_or_sideways_into_a_higher_layer():
    bad = []
    for path in PKG.glob("*.py"):
        for target in himari_imports(path):
            if (
                target in LAYER
                and target != "__init__"
                and LAYER[target] >= LAYER[path.stem]
                and path.stem != "__main__"
            ):
                bad.append(f"{path.stem} (layer {LAYER[path.stem]}) imports {target} (layer {LAYER[target]})")
    assert not bad, bad


def test_analysis_and_its_dependencies_never_import_ray():
    for name in ("analysis", "types"):
        tree = ast.parse((PKG / f"{name}.py").read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        assert not any(m and (m == "ray" or m.startswith("ray.")) for m in mods), name
