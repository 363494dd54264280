"""The layout a maintainer reads top-down: every import of ``src/bapose`` (inside functions too) points down a layer,
no module or package imports itself back, the CLIs are thin and nothing below them imports them; no source file over
500 lines and no function over 80 lines outside the tests.

The import graph is drawn from the code with ``ast`` (no import is executed), so a lazy import inside a function
counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# Layers, lowest first: a module may import its own layer and those below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("bapose._version", "bapose.errors", "bapose.paths", "bapose.io"),  # foundations
    ("bapose.utils",),                                                   # logging, W&B, FLOPs, entry points
    ("bapose.models", "bapose.codecs"),                                  # the net; targets and decode geometry
    ("bapose.data",),                                                    # COCO files, joint sets, datasets
    ("bapose.predictor",),                                               # net -> people
    ("bapose.evaluation", "bapose.vis", "bapose.export"),                # AP, drawings, ONNX
    ("bapose.checkpoints",),                                             # checkpoint files and their schema
    ("bapose.build", "bapose.loading"),                                  # experiment assembly
    ("bapose.training",),                                                # fit, evaluate, runs
    ("bapose.report",),                                                  # sweep reports
    ("bapose.cli",),                                                     # thin console scripts
    ("bapose",),                                                         # the package root: bapose.load_model
)
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "bapose").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The bapose modules ``name`` imports (``from pkg import sub`` counts ``pkg.sub`` when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name` imports pkg
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package(module: str) -> str:
    """``bapose.codecs.oks`` -> ``bapose.codecs``; top-level modules are their own package."""
    return ".".join(module.split(".")[:2])


def _layer(module: str) -> int:
    best = (-1, -1)
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), rank))
    assert best[1] >= 0, f"module {module} is in no layer of LAYERS: add it where it belongs"
    return best[1]


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(_graph()) == []


def test_no_import_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in _graph().items():
        if module == "bapose":
            continue  # the root re-exports load_model lazily: it sits above everything
        for target in targets:
            if _package(target) != _package(module):
                packages[_package(module)].add(_package(target))
    assert _cycles(packages) == []


def test_every_import_points_down_a_layer() -> None:
    upward = [f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
              for module, targets in sorted(_graph().items()) for target in sorted(targets)
              if _layer(target) > _layer(module)]
    assert upward == []


def test_clis_are_thin_and_nothing_below_imports_them() -> None:
    graph = _graph()
    cli_to_cli = [f"{m} -> {t}" for m, ts in graph.items() if m.startswith("bapose.cli.")
                  for t in ts if t.startswith("bapose.cli.")]
    library_to_cli = [f"{m} -> {t}" for m, ts in graph.items() if not m.startswith("bapose.cli")
                      for t in ts if t.startswith("bapose.cli")]
    assert cli_to_cli == [] and library_to_cli == []
    modules = _modules()
    scripts = [f"scripts/{p.name} -> {t}" for p in sorted((REPO / "scripts").glob("*.py"))
               for t in _imports(f"scripts.{p.stem}", p, modules) if t.startswith("bapose.cli")]
    assert scripts == []


def _long_functions(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    return out


@pytest.mark.parametrize("folder", ["src", "scripts"])
def test_no_source_file_over_500_lines_and_no_function_over_80(folder: str) -> None:
    paths = sorted((REPO / folder).rglob("*.py"))
    assert paths
    long_files = [f"{p.relative_to(REPO)} ({len(p.read_text().splitlines())} lines)" for p in paths
                  if len(p.read_text().splitlines()) > MAX_FILE_LINES]
    assert long_files == [] and _long_functions(paths) == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The walk itself: a lazy import inside a function closes a cycle, and it is found."""
    pkg = tmp_path / "bapose"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("from bapose.models.net import Net\n")
    (pkg / "models" / "net.py").write_text("def load():\n    from bapose.training import fit\n")
    (pkg / "training").mkdir()
    (pkg / "training" / "__init__.py").write_text("from . import fit\n")
    (pkg / "training" / "fit.py").write_text("from ..models import net\n")
    modules = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {n: _imports(n, p, modules) for n, p in modules.items()}
    assert graph["bapose.models.net"] == {"bapose.training.fit"}
    assert graph["bapose.training.fit"] == {"bapose.models.net"}
    assert ["bapose.models.net", "bapose.training", "bapose.training.fit"] in _cycles(graph) or any(
        {"bapose.models.net", "bapose.training.fit"} <= set(c) for c in _cycles(graph))
    assert _layer("bapose.models.net") < _layer("bapose.training.fit")
