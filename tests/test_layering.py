"""The package's layering rules (issue 17), read from the source with ``ast``: no framework is imported.

(a) the padiff modules import each other without a circle, counting imports inside functions;
(b) no module imports another module's private (``_name``) names;
(c) no function is longer than 60 lines;
(d) outside ``padiff/frameworks/`` (and ``padiff/reprod.py``, whose log format and weight-conversion
    helpers are the paper-reproduction guide's and name the frameworks on purpose) no code names torch
    or paddle: identifiers, attribute names, imports and string constants other than docstrings,
    f-string text included, since the text a user reads takes a framework's name from its adapter.

Each check has an ALLOWLIST of violations that exist now, in files other work is still changing. An
ALLOWLIST MAY ONLY SHRINK: a violation not in it fails, and so does an entry that no longer occurs,
so fixing a violation means deleting its entry here.
"""

from __future__ import annotations

import ast
import os
import re

PADIFF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "padiff")
MAX_LINES = 60
FRAMEWORK_WORD = re.compile(r"torch|paddle", re.IGNORECASE)
FRAMEWORK_FREE_EXEMPT = ("frameworks/", "reprod.py")

# (a) Import edges (importer file, imported module) that lie on a circle. May only shrink.
CYCLE_ALLOWLIST: set = set()

# (b) (importer file, imported private name). May only shrink.
PRIVATE_IMPORT_ALLOWLIST: set = set()

# (c) (file, function qualname) longer than MAX_LINES. May only shrink.
LONG_FUNCTION_ALLOWLIST: set = set()

# (d) (file, name or text) naming a framework outside frameworks/. May only shrink.
FRAMEWORK_NAME_ALLOWLIST: set = set()


def _module_files() -> dict:
    """Dotted module name -> (path relative to padiff/, parsed tree), for every module of the package."""
    out = {}
    for folder, dirs, files in os.walk(PADIFF):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            rel = os.path.relpath(path, PADIFF).replace(os.sep, "/")
            parts = ["padiff"] + rel[:-3].split("/")
            if parts[-1] == "__init__":
                parts.pop()
            with open(path, encoding="utf-8") as fh:
                out[".".join(parts)] = (rel, ast.parse(fh.read(), filename=path))
    return out


MODULES = _module_files()


def _package_of(module: str, rel: str) -> str:
    return module if rel.endswith("__init__.py") else module.rpartition(".")[0]


def _imports(module: str, rel: str, tree) -> list:
    """(imported module, imported name or None) for every import statement anywhere in the module,
    relative ones resolved; ``from pkg import sub`` counts as importing the submodule ``pkg.sub``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(module, rel).split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None) if sub in MODULES else (base, alias.name))
    return found


def _import_graph() -> dict:
    """padiff module -> {imported padiff module: the importer's file}."""
    graph = {}
    for module, (rel, tree) in MODULES.items():
        graph[module] = {target: rel for target, _ in _imports(module, rel, tree) if target in MODULES and target != module}
    return graph


def _strongly_connected(graph: dict) -> list:
    """Tarjan's components of the import graph; those with more than one module are circles."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def cycle_edges() -> set:
    graph = _import_graph()
    edges = set()
    for comp in _strongly_connected(graph):
        for v in comp:
            edges |= {(graph[v][w], w) for w in graph[v] if w in comp}
    return edges


def private_imports() -> set:
    found = set()
    for module, (rel, tree) in MODULES.items():
        for target, name in _imports(module, rel, tree):
            if target.startswith("padiff") and name and name.startswith("_") and not name.startswith("__"):
                found.add((rel, f"{target}.{name}"))
    return found


def long_functions() -> set:
    found = set()

    def walk(node, rel, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and child.end_lineno - child.lineno + 1 > MAX_LINES:
                    found.add((rel, name))
                walk(child, rel, name + ".")
            else:
                walk(child, rel, prefix)

    for rel, tree in MODULES.values():
        walk(tree, rel, "")
    return found


def _docstrings(tree) -> set:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _names_in(node) -> list:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.keyword):
        return [node.arg] if node.arg else []
    if isinstance(node, ast.alias):
        return [node.name, node.asname] if node.asname else [node.name]
    if isinstance(node, ast.ImportFrom):
        return [node.module] if node.module else []
    return []


def framework_names() -> set:
    found = set()
    for module, (rel, tree) in MODULES.items():
        if rel.startswith(FRAMEWORK_FREE_EXEMPT):
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            words = _names_in(node)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                words = [node.value]
            found |= {(rel, w) for w in words if w and FRAMEWORK_WORD.search(w)}
    return found


def _check(found: set, allowed: set, what: str):
    new = sorted(found - allowed)
    gone = sorted(allowed - found)
    lines = []
    if new:
        lines.append(f"{len(new)} {what} not in the allowlist (fix them):")
        lines += [f"    {f}: {n}" for f, n in new]
    if gone:
        lines.append(f"{len(gone)} allowlist entries no longer occur (delete them from the allowlist):")
        lines += [f"    {f}: {n}" for f, n in gone]
    assert not lines, "\n".join(lines)


def test_no_import_cycles():
    _check(cycle_edges(), CYCLE_ALLOWLIST, "imports on a circle")


def test_no_private_imports_across_modules():
    _check(private_imports(), PRIVATE_IMPORT_ALLOWLIST, "imports of another module's private name")


def test_no_long_functions():
    _check(long_functions(), LONG_FUNCTION_ALLOWLIST, f"functions over {MAX_LINES} lines")


def test_no_framework_names_outside_adapters():
    _check(framework_names(), FRAMEWORK_NAME_ALLOWLIST, "framework names outside padiff/frameworks/")
