"""The package's structure: no import cycle between its parts, no private name imported from
another part, and the layers point one way (store <- format <- plan <- io <- front ends)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bigstore"
# each part, with the parts below it that it may import (lazily too)
LAYERS = {
    "errors": set(), "config": {"errors"}, "forksafe": set(), "posix": set(),
    "progress": set(), "version": set(),
    "store": {"errors", "config", "forksafe", "posix"},
    "format": {"errors", "config", "store", "version"},
    "plan": {"errors", "config", "store", "format"},
    "io": {"errors", "config", "forksafe", "posix", "store", "format", "plan"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0] if rel.parts[0] != "__init__" else "__init__"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported part, imported names) of every intra-package import of a module."""
    mod = path.relative_to(ROOT).with_suffix("").parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(mod[: len(mod) - node.level]) if path.name != "__init__.py" else list(
                mod[: len(mod) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            names = [a.name for a in node.names]
            if target:
                out.append((target[0], names))
            else:  # "from .. import x": x is a part
                out.extend((n, []) for n in names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "bigstore."):
            out.append((node.module.split(".")[1], [a.name for a in node.names]))
    return out


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        part = _part(path)
        for target, _ in _imports(path):
            if target != part:
                g.setdefault(part, set()).add(target)
    return g


def test_no_import_cycle_between_parts() -> None:
    g = _graph()
    seen: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        if seen.get(n) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*stack, n])}")
        if seen.get(n) == 2:
            return
        seen[n] = 1
        for m in sorted(g.get(n, ())):
            visit(m, [*stack, n])
        seen[n] = 2

    for n in sorted(g):
        visit(n, [])


def test_lower_layers_import_only_what_lies_below() -> None:
    g = _graph()
    for part, allowed in LAYERS.items():
        assert g.get(part, set()) <= allowed, (part, g.get(part, set()) - allowed)


def test_no_private_name_from_another_part() -> None:
    for path in ROOT.rglob("*.py"):
        part = _part(path)
        for target, names in _imports(path):
            if target == part:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{path.relative_to(ROOT)} imports {private} from {target}"
