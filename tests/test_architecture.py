"""The seams STYLE.md asks for: explicit sorted `__all__`, and the import direction
(dialects and providers never import policy or web; nothing imports web)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import ai_gateway

SRC = Path(ai_gateway.__file__).parent


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages([str(SRC)], "ai_gateway.")]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_public_modules_have_sorted_all() -> None:
    for name in _modules():
        if name.rsplit(".", 1)[-1].startswith("_") or name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            continue
        assert list(exported) == sorted(exported, key=_isort_key), f"{name}.__all__ unsorted"
        for symbol in exported:
            assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol}"


def test_import_direction() -> None:
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        imports = _imports(path)
        if rel[0] in ("dialects", "providers"):
            bad = {i for i in imports if i.startswith(("ai_gateway.policy", "ai_gateway.web"))}
            assert not bad, f"{path} imports {bad}"
        if rel[0] != "web" and path.name != "cli.py":
            bad = {i for i in imports if i.startswith("ai_gateway.web")}
            assert not bad, f"{path} imports {bad}"


def test_no_eval_or_unsafe_loading() -> None:
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile"), f"{path}: {node.func.id}"
            if isinstance(node, ast.Attribute):
                assert not (node.attr == "load" and getattr(node.value, "id", "") == "yaml"), (
                    f"{path}: yaml.load"
                )
                assert not (node.attr == "loads" and getattr(node.value, "id", "") == "pickle"), (
                    f"{path}: pickle"
                )
