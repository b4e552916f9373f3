"""Import layering, read from every file's ``ast`` (nothing is imported): what the tracking layer may import.

* no import cycle among the ``sptrack.track`` modules (every import counts: module level, inside
  functions, under ``TYPE_CHECKING``, and the lazy ``_LAZY`` / ``importlib.import_module("...")`` ones);
* inside ``sptrack/track`` no file imports another's private (``_name``) names, or reads them off an
  imported module;
* the files that use MLflow read no private attribute of MLflow's objects (``run.data._metric_objs``):
  a ``._name`` read is only allowed on ``self``/``cls`` or for a name the same file defines;
* ``sptrack.tune`` never imports ``sptrack.run``, which reaches ``tune`` only from its CLI module; the core
  (``module``, ``optim``, ``parallel``) imports no layer above it; folded to layers, the graph has no cycle.

``python tests/test_track_layering.py`` prints the ``sptrack.track`` import graph and every finding.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sptrack"
TRACK = "sptrack.track"


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (the deepest existing module the statement names)
    names: tuple[str, ...]  # names taken from it (``from target import a, b``)
    line: int
    path: Path


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _absolute(module: Optional[str], level: int, source: str, is_package: bool) -> str:
    if not level:
        return module or ""
    base = source.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _resolve(name: str, modules: dict[str, Path]) -> Optional[str]:
    """The deepest module of ``modules`` that ``name`` (a dotted module or module.attribute) names."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def edges_of(path: Path, modules: dict[str, Path], source: Optional[str] = None) -> Iterator[Edge]:
    """The imports of the file ``path`` (module ``source``, by default its name in the repository)."""
    source = source or module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target:
                    yield Edge(source, target, (), node.lineno, path)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, source, path.name == "__init__.py")
            for alias in node.names:
                # `from pkg import submodule` imports the submodule; `from mod import name` the module.
                target = _resolve(f"{base}.{alias.name}", modules)
                if target == f"{base}.{alias.name}":
                    yield Edge(source, target, (), node.lineno, path)
                elif target:
                    yield Edge(source, target, (alias.name,), node.lineno, path)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if called in ("import_module", "__import__"):
                target = _resolve(node.args[0].value, modules)
                if target:
                    yield Edge(source, target, (), node.lineno, path)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            if isinstance(node.value, ast.Dict):  # name -> module imported on first attribute access
                for value in node.value.values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        target = _resolve(value.value, modules)
                        if target:
                            yield Edge(source, target, (), node.lineno, path)


def all_edges() -> list[Edge]:
    modules = all_modules()
    return [e for path in modules.values() for e in edges_of(path, modules) if e.target != e.source]


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def track_graph(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        if _in(e.source, TRACK) and _in(e.target, TRACK):
            graph.setdefault(e.source, set()).add(e.target)
    return graph


def private_imports(edges: list[Edge]) -> list[str]:
    """Inside sptrack/track: ``from other_module import _name``, and ``x._name`` reads of names the file does not define."""
    found = [
        f"{_where(e.path)}:{e.line}: from {e.target} import {name}"
        for e in edges if _in(e.source, TRACK) for name in e.names if _private(name)
    ]
    for module, path in all_modules().items():
        if _in(module, TRACK):
            found += foreign_private_reads(path)
    return found


def foreign_private_reads(path: Path) -> list[str]:
    """``x._name`` reads in ``path`` where ``x`` is not ``self``/``cls`` and the file defines no ``_name``:
    another module's (or library's) private names, e.g. ``params._plain`` or ``run.data._metric_objs``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = set()  # names this file defines: its functions, classes, attributes it assigns and its variables
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            found.append(f"{_where(path)}:{node.lineno}: {ast.unparse(node)}")
    return found


def _dotted(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _uses_mlflow(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mlflow" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "mlflow":
            return True
    return False


def private_mlflow_use() -> list[str]:
    """In the files that import MLflow: private MLflow modules or names imported, and foreign private reads."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not _uses_mlflow(tree):
            continue
        where = _where(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "mlflow":
                if any(_private(part) for part in node.module.split(".")) or any(_private(a.name) for a in node.names):
                    found.append(f"{where}:{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "mlflow" and any(_private(p) for p in alias.name.split(".")):
                        found.append(f"{where}:{node.lineno}: import {alias.name}")
        found += foreign_private_reads(path)
    return found


# ---------------------------------------------------------------------------------------- tests
def test_the_graph_sees_the_tracking_modules():
    graph = track_graph(all_edges())
    assert "sptrack.track.mlflow.tracker" in graph and "sptrack.track.mlflow.sender" in graph
    assert "sptrack.track.mlflow" in graph["sptrack.track"]  # the lazy MLflowTracker / replay
    assert graph["sptrack.track.mlflow.tracker"] >= {"sptrack.track.mlflow.sender", "sptrack.track.mlflow.runs"}


def test_no_import_cycle_in_the_tracking_layer():
    graph = track_graph(all_edges())
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_mlflow_adapter_is_layered():
    """Inside sptrack/track/mlflow nothing imports the tracker back (the sender knows no tracker)."""
    graph = track_graph(all_edges())
    users = sorted(m for m, targets in graph.items() if "sptrack.track.mlflow.tracker" in targets)
    assert users == ["sptrack.track.mlflow"], users
    flat = sorted(m for m in all_modules() if m.startswith("sptrack.track.mlflow_"))
    assert not flat, f"the flat adapter files are back: {flat}"


def test_no_cross_file_private_imports_in_the_tracking_layer():
    found = private_imports(all_edges())
    assert not found, "\n".join(found)


def test_no_private_mlflow_api():
    found = private_mlflow_use()
    assert not found, "private MLflow names or attributes:\n" + "\n".join(found)


def test_tune_never_imports_run_and_run_reaches_tune_only_from_the_cli():
    """``tune`` stands on the recipe layer, never on ``run``; ``run`` is the CLI, whose ``--sweep`` branch (run/cli.py)
    is the one place it calls down into ``tune``."""
    found = sorted({
        f"{_where(e.path)}:{e.line}: {e.source} imports {e.target}"
        for e in all_edges()
        if (_in(e.source, "sptrack.tune") and _in(e.target, "sptrack.run"))
        or (_in(e.source, "sptrack.run") and _in(e.target, "sptrack.tune") and e.source != "sptrack.run.cli")
    })
    assert not found, "\n".join(found)


#: The core: never imports the layers above it.
CORE = ("sptrack.module", "sptrack.optim", "sptrack.parallel")
ABOVE_CORE = ("sptrack.recipe", "sptrack.recipes", "sptrack.run", "sptrack.tune", "sptrack.track", "sptrack.dashboard")


def test_the_core_imports_no_layer_above_it():
    found = sorted({
        f"{_where(e.path)}:{e.line}: {e.source} imports {e.target}"
        for e in all_edges()
        if any(_in(e.source, c) for c in CORE) and any(_in(e.target, a) for a in ABOVE_CORE)
    })
    assert not found, "\n".join(found)


def test_no_cycle_between_the_layers():
    """Folded to layers (sptrack.<folder>), the import graph has no cycle."""
    graph: dict[str, set[str]] = {}
    for e in all_edges():
        source, target = (".".join(m.split(".")[:2]) for m in (e.source, e.target))
        if source != target and source != "sptrack" and target != "sptrack":
            graph.setdefault(source, set()).add(target)
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The detectors on small examples: a cycle, a private import, a private MLflow attribute."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    modules = {"sptrack.track.x": tmp_path / "x.py", "sptrack.track.y": tmp_path / "y.py"}
    (tmp_path / "x.py").write_text("from sptrack.track.y import _hidden, shown\n")
    (tmp_path / "y.py").write_text("def f():\n    from sptrack.track import x\n")
    edges = [e for name, path in modules.items() for e in edges_of(path, modules, name)]
    assert [(e.source, e.target, e.names) for e in edges] == [
        ("sptrack.track.x", "sptrack.track.y", ("_hidden",)),
        ("sptrack.track.x", "sptrack.track.y", ("shown",)),
        ("sptrack.track.y", "sptrack.track.x", ()),
    ]
    assert find_cycle(track_graph(edges)) == ["sptrack.track.x", "sptrack.track.y", "sptrack.track.x"]
    assert _private("_hidden") and not _private("__version__") and not _private("shown")
    reader = tmp_path / "reader.py"
    reader.write_text("class A:\n    def f(self, run, other):\n        self._mine = other._mine\n        return run.data._metric_objs\n")
    assert foreign_private_reads(reader) == [f"{reader}:4: run.data._metric_objs"]


if __name__ == "__main__":
    edges = all_edges()
    for source, targets in sorted(track_graph(edges).items()):
        print(f"{source} -> {', '.join(sorted(targets))}")
    print("cycle:", find_cycle(track_graph(edges)))
    for title, items in (("private imports", private_imports(edges)), ("private MLflow", private_mlflow_use())):
        print(f"{title}: {len(items)}")
        for item in items:
            print("  " + item)
