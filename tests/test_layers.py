"""The package's layers: a module never imports one from a higher layer (AST, every import).

Bottom to top, as docs/architecture.md draws them. Imports inside functions
and under ``TYPE_CHECKING`` count too: a type-only import upwards is still a
dependency a maintainer has to know about.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wellwon_db"

#: Layer of each top-level part of the package; equal layers may import each other.
LAYERS = {
    "errors": 0,
    "_version": 0,
    "config": 1,
    "sql": 1,
    "telemetry": 2,
    "pool": 3,
    "resilience": 4,
    "client": 5,
    "shards": 6,
    "health": 7,
    "di": 8,
    "testing": 9,
    "cli": 10,
    "__init__": 11,
    "__main__": 11,
}


def _part(module: str) -> str:
    """``wellwon_db.pool._pool`` -> ``pool``; ``wellwon_db`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts)
        if name.endswith(".__init__") and name != "wellwon_db.__init__":
            name = name.removesuffix(".__init__")
        found.append((name.removesuffix(".__init__"), path))
    return found


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "wellwon_db"]


def test_every_part_has_a_layer() -> None:
    parts = {_part(name) for name, _ in _modules()}
    assert parts <= set(LAYERS), parts - set(LAYERS)


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_no_module_imports_a_higher_layer(module: str, path: Path) -> None:
    own = LAYERS[_part(module)]
    upward = [
        f"line {line}: {name} ({_part(name)}, layer {LAYERS.get(_part(name))})"
        for line, name in _imports(module, path)
        if _part(name) in LAYERS and LAYERS[_part(name)] > own
    ]
    assert not upward, f"{module} (layer {own}) imports upwards:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a pool module importing the client layer is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from wellwon_db.client._client import MainDB\n")
    names = [name for _, name in _imports("wellwon_db.pool.bad", bad)]
    assert "wellwon_db.client._client" in names
    assert LAYERS[_part("wellwon_db.client._client")] > LAYERS[_part("wellwon_db.pool.bad")]
