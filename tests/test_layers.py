"""The package layout is the architecture (docs/ARCHITECTURE.md): layers flow one way, and what reads
results from disk never imports Ray.

Each subpackage is one layer; a module may import from its own layer or lower ones, never higher.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "himari_ray"

#: Layer of every top-level module and subpackage of himari_ray, lowest first.
LAYER = {
    "__init__": 0,
    "types": 0,
    "schema": 0,
    "searchdir": 1,
    "data": 1,
    "env": 2,
    "rl": 3,
    "search": 4,
    "report": 5,
    "policy": 5,
    "launch": 6,
    "cli": 7,
    "__main__": 8,
}

#: Layers whose modules must be importable without Ray (analysis never starts Ray).
RAY_FREE = ("types", "schema", "searchdir", "data", "env", "report")


def unit_of(path: Path) -> str:
    """The layer unit of a source file: its subpackage, or its own name at the top level."""
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Dotted modules imported by a file (only those at module level with `top_level_only`)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            if node.module == "himari_ray":
                out.update(f"himari_ray.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    units = {unit_of(p) for p in sources()}
    assert units <= set(LAYER), sorted(units - set(LAYER))


def upward_imports(root: Path = PKG) -> list[str]:
    """Every import of a higher layer by a module of the package at `root`."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        mine = rel.parts[0] if len(rel.parts) > 1 else path.stem
        for target in imports(path):
            if not target.startswith("himari_ray."):
                continue
            theirs = target.split(".")[1]
            if theirs in LAYER and mine in LAYER and LAYER[theirs] > LAYER[mine] and mine != "__main__":
                bad.append(f"{rel} (layer {LAYER[mine]}) imports {target} (layer {LAYER[theirs]})")
    return bad


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_result_readers_never_import_ray():
    """Follow module-level imports from every module of the Ray-free layers: none reaches `ray`."""
    by_name = {module_name(p): p for p in sources()}
    for path in sources():
        if unit_of(path) not in RAY_FREE:
            continue
        seen: set[str] = set()
        todo = [module_name(path)]
        while todo:
            name = todo.pop()
            if name in seen or name not in by_name:
                continue
            seen.add(name)
            for target in imports(by_name[name], top_level_only=True):
                assert target != "ray" and not target.startswith("ray."), f"{module_name(path)} reaches {target}"
                todo.append(target)


def test_layer_test_sees_an_upward_import(tmp_path):
    """The checker itself, run on a copy of the package with one planted upward import."""
    import shutil

    root = tmp_path / "himari_ray"
    shutil.copytree(PKG, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert upward_imports(root) == []
    (root / "data" / "planted.py").write_text("from himari_ray.search.driver import run_search\n")
    assert upward_imports(root) == ["data/planted.py (layer 1) imports himari_ray.search.driver (layer 4)"]


def test_every_subpackage_ships_in_the_wheel():
    """pyproject lists packages by name: a subpackage missing there imports from a checkout but not from a
    plain install (the device machine installs with `pip install --target`)."""
    import tomllib

    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {module_name(init) for init in PKG.rglob("__init__.py")}
    assert on_disk <= listed, sorted(on_disk - listed)
