"""The layers, read from the source with ast: no import cycle anywhere, and every import points down.

Every ``import`` and ``from ... import`` counts, those inside functions too: an import deferred
into a function still runs, and a cycle it closes is still a cycle. Floors, top to bottom:

    tune.cli, tune.demo, tune.workflow
    tune.launch | tune.results | tune.ship      (the wings: never one another)
    tune.run                                    (the owner of run folders)
    tune.config, tune.trial_config
    search_spaces
    trainables
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("tune", "trainables", "search_spaces")
WINGS = ("tune.launch", "tune.results", "tune.ship")


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``packages`` under ``root``."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (function bodies included)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, the module mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` runs a/__init__, a/b/__init__ and a/b/c: the deepest project module counts
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    files = module_files(root, packages)
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _floor(module: str) -> str:
    for prefix in (*WINGS, "tune.run"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    if module in ("tune.config", "tune.trial_config"):
        return "tune.config"
    if module.startswith("tune"):
        return "tune.top"
    return module.split(".")[0]


# what each floor may import (besides itself); anything else points up or sideways
ALLOWED = {
    "trainables": set(),
    "search_spaces": {"trainables"},
    "tune.config": {"trainables", "search_spaces"},
    "tune.run": {"trainables", "search_spaces", "tune.config"},
    **{wing: {"trainables", "search_spaces", "tune.config", "tune.run"} for wing in WINGS},
    "tune.top": {"trainables", "search_spaces", "tune.config", "tune.run", *WINGS},
}
# old import paths kept for pickled run folders (tune/__init__.py says why): each re-exports one wing's class
SHIMS = {"tune.progress": "tune.launch", "tune.retention": "tune.launch", "tune.storage": "tune.run"}


def test_the_project_has_no_import_cycle():
    assert cycles(import_graph(REPO)) == []


def test_every_import_points_down_and_no_wing_imports_another():
    wrong = []
    for module, targets in import_graph(REPO).items():
        floor = _floor(module)
        allowed = ALLOWED[floor] | {floor} | ({SHIMS[module]} if module in SHIMS else set())
        wrong += [f"{module} -> {t}" for t in sorted(targets) if _floor(t) not in allowed]
    assert wrong == []


def test_the_shims_only_re_export():
    graph = import_graph(REPO)
    assert {m: graph[m] for m in SHIMS} == {"tune.progress": {"tune.launch.progress"},
                                           "tune.retention": {"tune.launch.retention"},
                                           "tune.storage": {"tune.run.storage"}}


@pytest.mark.parametrize(("files", "expected"), [
    # a cycle closed by an import inside a function
    ({"a/__init__.py": "", "a/x.py": "from a.y import f\n",
      "a/y.py": "def f():\n    from a import x\n    return x\n"}, [["a.x", "a.y"]]),
    # through three modules, one a relative import
    ({"a/__init__.py": "", "a/x.py": "import a.y\n", "a/y.py": "from .z import g\n",
      "a/z.py": "def g():\n    import a.x\n"}, [["a.x", "a.y", "a.z"]]),
    # a chain is no cycle
    ({"a/__init__.py": "", "a/x.py": "import a.y\n", "a/y.py": "import a.z\n", "a/z.py": "import json\n"}, []),
])
def test_the_cycle_finder_sees_imports_inside_functions(tmp_path, files, expected):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert cycles(import_graph(tmp_path, ("a",))) == expected
