"""The import structure: no circles between files, and function-level imports only where they pay.

Function-level (lazy) imports hide a module's dependencies and can hide import circles. They are allowed
only for

* optional extras (``OPTIONAL``, the extras of ``pyproject.toml``), and any import inside a
  ``with try_import(extra):`` block, where a missing extra becomes a one-line fix-it error;
* CLI commands (``nas/cli/``), so that ``nas --help`` stays fast and each command pays for what it uses;
* the public facade ``nas/__init__.py`` (``nas.search``, ``nas.pareto``, ``nas.load``), so that
  ``import nas`` stays light (``tests/test_layers.py``).

Everything else is imported at module level, where a circle would show. ``if TYPE_CHECKING:`` imports
are annotations only and take no part in the graph.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from nas._optional import EXTRA_MODULES

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "search_spaces", "evaluators", "storage", "dashboards")
#: The extras' modules (one list: ``nas._optional.EXTRA_MODULES``), and the frameworks under them.
OPTIONAL = frozenset({m for mods in EXTRA_MODULES.values() for m in mods} | {"starlette"})


def _files() -> Iterator[Path]:
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if "migrations" not in f.parts:
                yield f


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(f): f for f in _files()}


def _targets(mod: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The first-party modules an import statement executes (the named ones and their parent packages)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".")
            if MODULES[mod].name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - node.level + 1]
            pkg = ".".join([*base, *([node.module] if node.module else [])])
        else:
            pkg = node.module or ""
        names = [pkg, *(f"{pkg}.{a.name}" for a in node.names)]
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    ancestors = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}
    # A module's own parent packages are already being imported when it runs: not an edge.
    return sorted(t for t in out if t in MODULES and t != mod and t not in ancestors)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (not in functions, not under TYPE_CHECKING)."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or _is_type_checking(node):
            continue
        else:
            stack.extend(ast.iter_child_nodes(node))


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[mod] = {t for node in _module_level_imports(tree) for t in _targets(mod, node)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _gated(fn: ast.AST) -> set[int]:
    """Ids of the import nodes inside ``with try_import(...):`` blocks of ``fn``."""
    ids = set()
    for w in ast.walk(fn):
        if isinstance(w, ast.With) and any("try_import" in ast.unparse(i.context_expr) for i in w.items):
            ids |= {id(n) for n in ast.walk(w) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return ids


def _lazy_imports(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, enclosing function, imported top-level name) for every import inside a function.

    Imports inside ``with try_import(extra):`` are the optional-extra pattern and are not listed.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        gated = _gated(fn)
        for node in ast.walk(fn):
            if id(node) in gated:
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield node.lineno, fn.name, a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                yield node.lineno, fn.name, "." if node.level else (node.module or "").split(".")[0]


def test_no_import_circles_between_files() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import circles (module-level imports): " + "; ".join(" -> ".join(c) for c in cycles)


def test_function_level_imports_only_for_extras_and_cli_commands() -> None:
    bad = []
    for mod, path in MODULES.items():
        in_cli = mod == "nas.cli" or mod.startswith("nas.cli.")
        for line, fn, name in _lazy_imports(path):
            facade = mod == "nas"
            if name in OPTIONAL or in_cli or facade:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} in {fn}(): import {name}")
    assert not bad, ("move these imports to module level (a circle they hide must be fixed, not hidden):\n"
                     + "\n".join(bad))


def test_the_graph_sees_real_edges() -> None:
    """The checker itself: it finds the package edges that every module has (guards against a no-op)."""
    graph = _graph()
    assert "nas.records" in graph["storage.views"] or any(t.startswith("nas") for t in graph["storage.views"])
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_extra_is_known_to_try_import() -> None:
    """``nas._optional.EXTRA_MODULES`` names exactly the extras of ``pyproject.toml`` (bar all and dev)."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert set(EXTRA_MODULES) == set(extras) - {"all", "dev"}
