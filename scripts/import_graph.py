"""rspo's import graph, built with ``ast``, and its cycles (strongly connected components).

Every import statement counts, at module level and inside functions (a local import that
closes a loop is still a loop a reader has to untangle). Rules:

* ``import a.b.c`` imports ``a.b.c``; ``from a.b import c`` imports the submodule ``a.b.c``
  when there is one, else ``a.b`` (whose ``__init__.py`` defines ``c``: a package's node is
  its ``__init__.py``); relative imports are resolved against the importing module.
* ``importlib.import_module(NAME)`` counts as ``import NAME`` when NAME is a literal, or a
  loop variable over literals (also inside an f-string: ``f"pkg.{mod}"``).
* Imports under ``if TYPE_CHECKING:`` count too: a type-only import is still a dependency
  a reader follows, and a loop through it is a loop in the design.
* Parents are not edges: ``a.b.c`` runs ``a/__init__`` first in any case (every module
  depends on its parents), which is not a loop unless ``a/__init__`` imports something
  that imports it back — and then it shows as an edge to ``a`` anyway.

    python scripts/import_graph.py              # rspo/: print the cycles, exit 1 if any
    python scripts/import_graph.py PATH/TO/PKG  # another package directory

tests/test_import_cycles.py runs it on rspo/.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``package_dir`` (a package)."""
    package_dir = Path(package_dir)
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (package_dir.name, *path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _strings(node: ast.expr) -> list[str] | None:
    """The strings a tuple/list/set of string literals holds, else None."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return [e.value for e in node.elts]
    return None


def _literal_names(arg: ast.expr, loops: dict[str, list[str]]) -> list[str]:
    """The module names an ``import_module`` argument can take: a literal, a loop variable
    over literals, or an f-string whose only field is such a variable."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.Name):
        return loops.get(arg.id, [])
    if isinstance(arg, ast.JoinedStr):
        fields = [v for v in arg.values if isinstance(v, ast.FormattedValue)]
        if len(fields) == 1 and isinstance(fields[0].value, ast.Name):
            values = loops.get(fields[0].value.id, [])
            parts = [
                [v.value] * len(values) if isinstance(v, ast.Constant) else values
                for v in arg.values
            ]
            return ["".join(p) for p in zip(*parts)] if values else []
    return []


def _nodes(tree: ast.AST):
    """Every node under ``tree``, each with the loop variables that range over string
    literals where it sits (``for mod in ("a", "b"): import_module(mod)``)."""
    stack: list[tuple[ast.AST, dict[str, list[str]]]] = [(tree, {})]
    while stack:
        node, loops = stack.pop()
        yield node, loops
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            values = _strings(node.iter)
            if values is not None:
                loops = {**loops, node.target.id: values}
        stack.extend((child, loops) for child in ast.iter_child_nodes(node))


def _imported(
    node: ast.AST, loops: dict[str, list[str]], module: str, is_package: bool, known: set[str]
) -> list[str]:
    """The dotted names one node imports (internal or not); ``known``: the package's modules."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            frm = ".".join(base + ([node.module] if node.module else []))
        else:
            frm = node.module or ""
        subs = [f"{frm}.{a.name}" for a in node.names if f"{frm}.{a.name}" in known]
        # the package's own __init__ only when a name is not a submodule (defined there)
        return subs if len(subs) == len(node.names) else [frm, *subs]
    if (
        isinstance(node, ast.Call)
        and node.args
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
        )
    ):
        return _literal_names(node.args[0], loops)
    return []


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (by any import statement in its file)."""
    mods = modules(package_dir)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, loops in _nodes(tree):
            for name in _imported(node, loops, mod, is_package, set(mods)):
                if name in mods and name != mod:
                    graph[mod].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative),
    each sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                scc = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    scc.append(m)
                    if m == node:
                        break
                if len(scc) > 1:
                    out.append(sorted(scc))
    return sorted(out)


def describe(graph: dict[str, set[str]], scc: list[str]) -> str:
    """One cycle: its modules and the edges between them."""
    members = set(scc)
    edges = [f"    {a} -> {b}" for a in scc for b in sorted(graph[a]) if b in members]
    return f"cycle of {len(scc)} modules: {', '.join(scc)}\n" + "\n".join(edges)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    package_dir = Path(args[0]) if args else ROOT / "rspo"
    graph = import_graph(package_dir)
    found = cycles(graph)
    for scc in found:
        print(describe(graph, scc))
    n_edges = sum(len(v) for v in graph.values())
    print(f"{len(graph)} modules, {n_edges} imports, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
