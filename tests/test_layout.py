"""The package layout (README, "Layout"): no folder holds more than 12 modules besides its
__init__, the import graph has no circle (type-only imports included), and the moved
entry points still run under their old names."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "service")
MAX_MODULES = 12


def _folders() -> list[Path]:
    return sorted(p.parent for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports, anywhere in it (functions, TYPE_CHECKING)."""
    package = _module(path).split(".") if path.stem == "__init__" else _module(path).split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            names = [f"{target}.{a.name}" for a in node.names]
            out.update(n for n in names if n in known)
            out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != _module(path)}


@pytest.mark.parametrize("folder", _folders(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_folder_holds_at_most_a_dozen_modules(folder):
    modules = [p.name for p in folder.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= MAX_MODULES, sorted(modules)


def test_the_import_graph_has_no_circle():
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "_pb2" not in p.name]
    graph = {_module(p): p for p in paths}
    edges = {m: _imports(p, set(graph)) for m, p in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            assert state.get(n) != 1, " -> ".join([*path[path.index(n) :], n])
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


ALIASES = {
    "service.replay": "service.tools.replay",
    "service.client": "service.tools.client",
    "service.loadgen": "service.tools.loadgen",
    "service.healthcheck": "service.tools.healthcheck",
    "training.users": "training.data.users",
    "training.features": "training.models.features",
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_a_moved_entry_point_still_runs_under_its_old_name(alias):
    done = subprocess.run(
        [sys.executable, "-m", alias, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    text = (ROOT / f"{alias.replace('.', '/')}.py").read_text()
    assert f"from {ALIASES[alias]} import main" in text
