"""The import graph of the `hfprune` package has no cycle, counting the imports inside functions.

Every module is parsed with `ast` (nothing is imported). An edge A -> B means that A imports B, at module scope or
inside a function or method (an import inside a function runs later, on use, but it still ties A to B: a loop of
such imports is a loop in the design, merely hidden until the call): `import hfprune.x.y`, `from .x import y` (B =
`hfprune.x.y` when y is a submodule, else `hfprune.x`), `from . import y` (B = the submodule y, else the package's
`__init__`). Imports under `if TYPE_CHECKING:` never run and are left out. Importing a submodule does not count as
importing its parent package: Python runs the parent's `__init__` first, but the submodule does not use its names
(counting it would turn every `from ..structure import x` into a cycle through `hfprune/__init__.py`); a real use
of the parent (`from .. import __version__`) is an edge to it. The package root's `_LAZY` table (names looked up
with `importlib` on first use) is the one sanctioned lazy loading and is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hfprune

PACKAGE = Path(hfprune.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, lazy: bool):
    """The Import / ImportFrom nodes that run with the module body (`lazy=True`: also those inside functions)."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not lazy:
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _known(name: str) -> str | None:
    """`name` if it is a module of the package, else its closest enclosing module of the package (or None)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {t for t in (_known(alias.name) for alias in node.names) if t}
    if node.level:
        is_package = MODULES[module].name == "__init__.py"
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if not (source == "hfprune" or source.startswith("hfprune.")):
        return set()
    out = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        target = sub if sub in MODULES else _known(source)
        if target:
            out.add(target)
    return out


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules its body imports (`lazy=True`: counting imports inside functions too)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set().union(*(_targets(module, n) for n in _import_nodes(tree, lazy))) - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while path:
            child = next(iters[-1], None)
            if child is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                iters.append(iter(sorted(graph.get(child, ()))))
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each group of modules that import each other (strongly connected component), or []."""
    reach = {m: _reachable(graph, m) for m in graph}
    groups, seen = [], set()
    for module in sorted(graph):
        if module in seen or module not in reach[module]:
            continue
        group = {m for m in reach[module] if module in reach.get(m, ())}
        seen |= group
        groups.append(find_cycle({m: graph[m] & group for m in group}))
    return groups


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules reached from `start` by one or more edges."""
    found, stack = set(), list(graph.get(start, ()))
    while stack:
        node = stack.pop()
        if node not in found:
            found.add(node)
            stack.extend(graph.get(node, ()))
    return found


def test_the_graph_sees_the_imports_it_must():
    """The parser finds known edges (relative, `from . import submodule`, absolute), so an empty graph cannot pass."""
    graph = import_graph()
    assert "hfprune.io" in graph["hfprune"]  # from .io import load_pruned, save_pruned
    assert {"hfprune.arch.bert", "hfprune.arch.base"} <= graph["hfprune.arch"]  # from . import bert, ...; from .base
    assert "hfprune.io.atomic" in graph["hfprune.sparsity.compressed"]  # from ..io.atomic import atomic_dir
    assert "hfprune.sparsity.compressed" not in graph["hfprune.io.formats"]  # imported inside a function only
    assert "hfprune.sparsity.compressed" in import_graph(lazy=True)["hfprune.io.formats"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_inside_functions_and_methods_are_read_but_not_type_checking_ones():
    source = """
import hfprune.plan
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from hfprune import masking
def f():
    from hfprune import surgery
    if TYPE_CHECKING:
        from hfprune import selection
class C:
    def m(self):
        lambda: None
        def inner():
            import hfprune.io
"""
    def names(lazy):
        nodes = _import_nodes(ast.parse(source), lazy)
        return {".".join(filter(None, [getattr(n, "module", None), a.name])) for n in nodes for a in n.names}

    assert names(lazy=False) == {"hfprune.plan", "typing.TYPE_CHECKING"}
    assert names(lazy=True) == {"hfprune.plan", "typing.TYPE_CHECKING", "hfprune.surgery", "hfprune.io"}
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "e"}, "e": set()}) == [
        ["a", "b", "a"], ["c", "d", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle at module scope: " + " -> ".join(cycle)


def test_no_import_cycle_counting_imports_inside_functions():
    cycles = find_cycles(import_graph(lazy=True))
    assert not cycles, "import cycles, counting imports inside functions: " + "; ".join(
        " -> ".join(c) for c in cycles)


def test_io_and_sparsity_need_no_lazy_import_to_break_a_cycle():
    """The loader dispatch imports a format's decoder on use; that must not be what keeps a cycle out of sight:
    counting imports inside functions too, the I/O, sparsity and remote-code modules form no cycle."""
    area = ("hfprune.io", "hfprune.dequantized", "hfprune.sparsity", "hfprune.remote", "hfprune.serving")
    graph = import_graph(lazy=True)
    inside = {m: {t for t in ts if t.startswith(area)} for m, ts in graph.items() if m.startswith(area)}
    cycle = find_cycle(inside)
    assert cycle is None, "import cycle, counting imports inside functions: " + " -> ".join(cycle)
