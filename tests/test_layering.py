"""The package's layering rules (issue 17), read from the source with ``ast``: no framework is imported.

(a) the padiff modules import each other without a circle, counting imports inside functions;
(b) no module imports another module's private (``_name``) names;
(c) no function is longer than 60 lines;
(d) outside ``padiff/frameworks/`` (and ``padiff/reprod.py``, the paper-reproduction guide's tool, whose
    file names and logs name the frameworks as the guide does) no code names torch or paddle:
    identifiers, attribute names, imports, and string constants with f-string text included, since a
    message takes a framework's name from its adapter. Documentation is not code: docstrings, other
    bare string statements and command-line help (``help=``, ``description=``, ``epilog=``) may name
    them, and so may the names the seed documents fix (``PADDLE_THIRDPARTY_API``, ``forward_paddle.npy``).

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
# reprod.py is numpy-only (the reproduction guide's file names); porting.py and convert_cli.py are the
# checkpoint helpers' public face (``convert_checkpoint(torch_model=, paddle_model=)``, ``--torch-model``),
# which reach the frameworks only through adapters: the exceptions.
FRAMEWORK_FREE_EXEMPT = ("frameworks/", "reprod.py", "porting.py", "convert_cli.py")
# Names the seed documents fix, which a user types: the environment switch of the original tool and
# the reproduction guide's file names (forward_paddle.npy against forward_torch.npy).
SEED_NAMES = re.compile(r"PADDLE_THIRDPARTY_API|\b\w*_(?:paddle|torch|pytorch)\.npy\b")
HELP_KEYWORDS = ("help", "description", "epilog")

# (a) (importer file, imported module) of the imports that lie on a circle today. MAY ONLY SHRINK.
# compare/result.py renders itself through report/*, and report/* reads compare/result.py; dump/*
# and weights/* import each other both ways.
CYCLE_ALLOWLIST: set = set()

# (b) (importer file, module.name) of another module's private names imported today. MAY ONLY SHRINK.
# The dump modules reuse auto_diff's step functions (the run pipeline's part of issue 17).
PRIVATE_IMPORT_ALLOWLIST: set = set()

# (c) (file, function) longer than MAX_LINES today. MAY ONLY SHRINK.
LONG_FUNCTION_ALLOWLIST: set = set()

# (d) (file, identifier or string's first 60 characters) naming a framework outside frameworks/
# today. MAY ONLY SHRINK: such text should come from the adapters (a layer class's name, a file
# extension, a CLI flag), such a name from the side it stands for.
FRAMEWORK_NAME_ALLOWLIST: set = set()


def parse_package(sources: dict) -> dict:
    """Dotted module name -> (path relative to padiff/, parsed tree), from ``{relative path: source}``."""
    out = {}
    for rel, source in sources.items():
        parts = ["padiff"] + rel[:-3].split("/")
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = (rel, ast.parse(source, filename=rel))
    return out


def _package_sources() -> dict:
    sources = {}
    for folder, dirs, files in os.walk(PADIFF):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                with open(path, encoding="utf-8") as fh:
                    sources[os.path.relpath(path, PADIFF).replace(os.sep, "/")] = fh.read()
    return sources


MODULES = parse_package(_package_sources())


def _package_of(module: str, rel: str) -> str:
    return module if rel.endswith("__init__.py") else module.rpartition(".")[0]


def _imports(module: str, rel: str, tree, modules: dict) -> list:
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
                found.append((sub, None) if sub in modules else (base, alias.name))
    return found


def _import_graph(modules: dict) -> dict:
    """padiff module -> {imported padiff module: the importer's file}."""
    graph = {}
    for module, (rel, tree) in modules.items():
        graph[module] = {target: rel for target, _ in _imports(module, rel, tree, modules)
                         if target in modules and target != module}
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


def cycle_edges(modules: dict = MODULES) -> set:
    """(importer file, imported module) for every import that lies on a circle of imports."""
    graph = _import_graph(modules)
    edges = set()
    for comp in _strongly_connected(graph):
        for v in comp:
            edges |= {(graph[v][w], w) for w in graph[v] if w in comp}
    return edges


def private_imports(modules: dict = MODULES) -> set:
    """(importer file, module.name) for every ``from x import _name`` of a padiff module's private
    name (a private submodule, such as ``_memory``, is the package's own and may be imported)."""
    found = set()
    for module, (rel, tree) in modules.items():
        for target, name in _imports(module, rel, tree, modules):
            if target.startswith("padiff") and name and name.startswith("_") and not name.startswith("__"):
                found.add((rel, f"{target}.{name}"))
    return found


def long_functions(modules: dict = MODULES) -> set:
    """(file, qualified name) of every function longer than MAX_LINES, from ``def`` to its last line."""
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

    for rel, tree in modules.values():
        walk(tree, rel, "")
    return found


def _documentation(tree) -> set:
    """ids of the string constants that document rather than compute: docstrings and other bare
    string statements (attribute docstrings), and command-line help (``help=``, ``description=``,
    ``epilog=``), written once for the two frameworks the tool is about, like the README."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            ids.add(id(node.value))
        elif isinstance(node, ast.keyword) and node.arg in HELP_KEYWORDS:
            ids |= {id(c) for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    return ids


def _names_in(node) -> list:
    """The identifiers a node writes: names, attributes, definitions, arguments, imports."""
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


def _shown(text: str) -> str:
    """A string as the allowlist writes it: whitespace collapsed, at most 60 characters."""
    return " ".join(text.split())[:60].rstrip()


def framework_names(modules: dict = MODULES) -> set:
    """(file, identifier or string) naming torch or paddle in code outside the adapters; string
    constants count with f-string text, apart from documentation and the seeds' fixed names."""
    found = set()
    for rel, tree in modules.values():
        if rel.startswith(FRAMEWORK_FREE_EXEMPT):
            continue
        docs = _documentation(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docs and FRAMEWORK_WORD.search(SEED_NAMES.sub("", node.value)):
                    found.add((rel, _shown(node.value)))  # searched whole, shown cut short
                continue
            found |= {(rel, w) for w in _names_in(node) if w and FRAMEWORK_WORD.search(w)}
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
    if lines:
        raise AssertionError("\n".join(lines))


def test_no_import_cycles():
    _check(cycle_edges(), CYCLE_ALLOWLIST, "imports on a circle")


def test_no_private_imports_across_modules():
    _check(private_imports(), PRIVATE_IMPORT_ALLOWLIST, "imports of another module's private name")


def test_no_long_functions():
    _check(long_functions(), LONG_FUNCTION_ALLOWLIST, f"functions over {MAX_LINES} lines")


def test_no_framework_names_outside_adapters():
    _check(framework_names(), FRAMEWORK_NAME_ALLOWLIST, "framework names outside padiff/frameworks/")


# --- the checks themselves, on tiny packages: each one finds what it is for -------------------------

def test_a_circle_through_a_function_local_import_is_found():
    modules = parse_package({
        "__init__.py": "",
        "a.py": "from .b import g\n",
        "b.py": "def g():\n    from .c import h\n    return h\n",
        "c.py": "def h():\n    from . import a\n",
        "d.py": "from .a import g\n",  # imports into the circle, is not on it
    })
    assert cycle_edges(modules) == {("a.py", "padiff.b"), ("b.py", "padiff.c"), ("c.py", "padiff.a")}


def test_a_private_name_imported_from_another_module_is_found():
    modules = parse_package({
        "__init__.py": "",
        "_memory.py": "x = 1\n",
        "sub/__init__.py": "",
        "sub/a.py": "from ..b import _hidden, shown, __version__\nfrom .. import _memory\n",
        "b.py": "_hidden = shown = __version__ = 1\n",
    })
    assert private_imports(modules) == {("sub/a.py", "padiff.b._hidden")}


def test_a_function_over_the_limit_is_found_by_its_qualified_name():
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_LINES - 1))  # with its def: MAX_LINES lines
    modules = parse_package({
        "a.py": f"class K:\n    def fits(self):\n{body}\n    def long(self):\n{body}        y = 0\n",
    })
    assert long_functions(modules) == {("a.py", "K.long")}


def test_framework_names_in_code_and_messages_are_found_but_not_in_documentation():
    modules = parse_package({
        "a.py": '"""A docstring may say torch."""\n'
                "import paddle.nn as nn\n"
                "def f(torch_model, side):\n"
                '    """So may this one: paddle."""\n'
                "    if side == 'paddle':\n"
                "        raise ValueError(f'{side}: pass a torch.nn.Module')\n"
                "    parser.add_argument('x', help='as torch does')\n"
                "    return side.adapter.is_torch\n"
                "LIMIT = 1\n"
                '"""An attribute docstring about paddle."""\n'
                "ENV = 'PADDLE_THIRDPARTY_API'; FILE = 'forward_paddle.npy'\n",
        "frameworks/torch.py": "import torch\n",
        "reprod.py": "NAME = 'torch'\n",
    })
    assert framework_names(modules) == {
        ("a.py", "paddle.nn"), ("a.py", "torch_model"), ("a.py", "paddle"),
        ("a.py", ": pass a torch.nn.Module"), ("a.py", "is_torch"),
    }


def test_an_allowlist_entry_that_no_longer_occurs_fails_the_check():
    try:
        _check({("a.py", "new")}, {("a.py", "fixed")}, "things")
    except AssertionError as exc:
        assert str(exc) == ("1 things not in the allowlist (fix them):\n    a.py: new\n"
                            "1 allowlist entries no longer occur (delete them from the allowlist):\n    a.py: fixed")
    else:
        raise AssertionError("_check passed a new violation and a stale entry")
