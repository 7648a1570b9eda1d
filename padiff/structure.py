"""Nested-structure helpers shared by recording and comparing (framework-free).

A nested value (tuples, lists, dicts, namedtuples, dataclasses, dict-like model outputs) is
flattened into ``(id_path, leaf)`` pairs, the id path written the way a user reaches the
value: ``[0]["logits"]`` for items and keys, ``.logits`` for the fields of a namedtuple or
a dataclass. Leaves are whatever ``is_leaf`` accepts (tensors) or anything else that is not
a container: plain values (numbers, strings, None) and objects (a cache, a config).

:func:`split_id` reads an id path back into its steps, so two flattened values can be
paired by field name or by position (:func:`pair_flat`) without keeping the values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np


def key_text(key) -> str:
    """One step of an id path for a dict key: ``[0]``, ``["logits"]`` (quotes and backslashes
    escaped so the path reads back with :func:`split_id`)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"[{key}]"
    if isinstance(key, str):
        return '["' + key.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return f"[{key!r}]"


def _fields(obj) -> Optional[List[str]]:
    """The field names of a namedtuple or a dataclass instance (None for anything else)."""
    if isinstance(obj, tuple):
        names = getattr(type(obj), "_fields", None)
        return list(names) if isinstance(names, tuple) and len(names) == len(obj) else None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [f.name for f in dataclasses.fields(obj)]
    return None


def flatten(obj: Any, is_leaf: Callable[[Any], bool], prefix: str = "") -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = []
    _flatten(obj, is_leaf, prefix, out, depth=0, inside=set())
    return out


def _flatten(obj, is_leaf, prefix, out, depth, inside):
    if depth > 64 or id(obj) in inside:  # too deep, or a container that holds itself: a leaf
        out.append((prefix, obj))
        return
    if is_leaf(obj):
        out.append((prefix, obj))
        return
    if isinstance(obj, dict) or (hasattr(obj, "keys") and hasattr(obj, "__getitem__") and not isinstance(obj, type)):
        try:
            keys = list(obj.keys())
        except TypeError:
            out.append((prefix, obj))
            return
        items = [(key_text(key), obj[key]) for key in keys]
    elif _fields(obj) is not None:
        items = [(f".{name}", getattr(obj, name)) for name in _fields(obj)]
    elif isinstance(obj, (list, tuple)):
        items = [(f"[{i}]", item) for i, item in enumerate(obj)]
    else:
        out.append((prefix, obj))
        return
    inside.add(id(obj))
    for text, item in items:
        _flatten(item, is_leaf, prefix + text, out, depth + 1, inside)
    inside.discard(id(obj))


def show_id(id_path: str, root: str = "output") -> str:
    return root + id_path if id_path else root


# --- plain values and objects ---------------------------------------------------------------------

PLAIN_TYPES = (bool, int, float, complex, str, bytes, np.generic)


def is_plain(value) -> bool:
    """A value padiff may compare with ``==`` (or as a number): None, a Python or numpy
    scalar, a string, or a numpy array of numbers. Anything else is an *object* (a cache, a
    config, a framework dtype): never compared with ``==``, whose meaning it defines itself."""
    if value is None or isinstance(value, PLAIN_TYPES):
        return True
    return isinstance(value, np.ndarray) and value.dtype != object


# --- reading id paths back --------------------------------------------------------------------------

POS, NAME = "pos", "name"


def split_id(id_path: str) -> List[Tuple[str, Any]]:
    """The steps of an id path written by :func:`flatten`: ``(POS, 0)`` for ``[0]``,
    ``(NAME, "logits")`` for ``["logits"]`` and ``.logits``, ``(NAME, "(1, 2)")`` for any
    other key. Text it cannot read is one ``NAME`` step (paired by name only)."""
    return [step for step, _ in _steps(id_path)]


def _steps(id_path: str) -> List[Tuple[Tuple[str, Any], int]]:
    """:func:`split_id`'s steps, each with the offset in ``id_path`` where it ends."""
    steps: List[Tuple[Tuple[str, Any], int]] = []
    i, n = 0, len(id_path)
    while i < n:
        c = id_path[i]
        if c == ".":
            j = i + 1
            while j < n and id_path[j] not in ".[":
                j += 1
            steps.append(((NAME, id_path[i + 1:j]), j))
            i = j
        elif c == "[" and id_path.startswith('["', i):
            j, chars = i + 2, []
            while j < n and id_path[j] != '"':
                if id_path[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(id_path[j])
                j += 1
            if not id_path.startswith('"]', j):
                return steps + [((NAME, id_path[i:]), n)]
            steps.append(((NAME, "".join(chars)), j + 2))
            i = j + 2
        elif c == "[":
            depth, j = 0, i
            while j < n:
                if id_path[j] == "[":
                    depth += 1
                elif id_path[j] == "]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            text = id_path[i + 1:j]
            try:
                steps.append(((POS, int(text)), min(j + 1, n)))
            except ValueError:
                steps.append(((NAME, text), min(j + 1, n)))
            i = j + 1
        else:
            return steps + [((NAME, id_path[i:]), n)]
    return steps


# --- pairing two flattened values ---------------------------------------------------------------------

class _Branch:
    """The children of one container of a flattened value, in order, keyed by step; ``id``
    is the container's own id path."""

    __slots__ = ("children", "id")

    def __init__(self, id_path: str):
        self.children: Dict[Tuple[str, Any], Any] = {}
        self.id = id_path


def _tree(flat: List[Tuple[str, Any]]):
    """The flattened pairs as a tree: a ``_Branch`` per container, ``(id_path, leaf)`` tuples
    at the leaves; None for nothing at all."""
    root = None
    for id_path, leaf in flat:
        steps = _steps(id_path)
        if not steps:
            root = (id_path, leaf)
            continue
        if not isinstance(root, _Branch):
            root = _Branch("")
        node = root
        for step, end in steps[:-1]:
            child = node.children.get(step)
            if not isinstance(child, _Branch):
                child = node.children[step] = _Branch(id_path[:end])
            node = child
        node.children[steps[-1][0]] = (id_path, leaf)
    return root


def _id(node) -> Optional[str]:
    if node is None:
        return None
    return node.id if isinstance(node, _Branch) else node[0]


def _leaves(node) -> List[Tuple[str, Any]]:
    if node is None:
        return []
    if isinstance(node, _Branch):
        return [x for child in node.children.values() for x in _leaves(child)]
    return [node]


def _named(branch: _Branch) -> bool:
    return all(kind == NAME for kind, _ in branch.children)


def pair_flat(ref: List[Tuple[str, Any]], test: List[Tuple[str, Any]], is_none: Callable[[Any], bool],
              pairable: Callable[[Any, Any], bool]):
    """Pair the leaves of two flattened values (lists of ``(id_path, leaf)``) by field name
    where both sides name their fields (dict keys, ModelOutput, dataclass and namedtuple
    fields) and by position otherwise. Against a sequence, a named container gives its fields
    in order, without its None fields when that makes the counts agree (as a ModelOutput's
    ``to_tuple()`` drops them). Two named containers that share no name pair by position. A
    single leaf against a container stands for a 1-tuple (``out`` against ``(out, None)``).

    ``is_none(leaf)`` says a leaf is None; ``pairable(a, b)`` that two leaves are to be
    compared. Returns ``(pairs, gaps)``: ``pairs`` a list of ``((id, leaf), (id, leaf))`` to
    compare; ``gaps`` a list of :class:`Gap` for what is returned on one side only, or is
    not pairable. Parts that are None (or nothing) on both sides are neither."""
    pairs: list = []
    gaps: list = []
    _pair(_tree(ref), _tree(test), is_none, pairable, pairs, gaps)
    return pairs, gaps


class Gap(NamedTuple):
    """A part of two paired values that is not compared: where it is on each side (None for
    nothing there) and the leaves each side holds there (``[(id_path, leaf)]``)."""

    ref_id: Optional[str]
    ref: List[Tuple[str, Any]]
    test_id: Optional[str]
    test: List[Tuple[str, Any]]


def _gap(r, t) -> Gap:
    return Gap(_id(r), _leaves(r), _id(t), _leaves(t))


def _only_none(node, is_none) -> bool:
    return all(is_none(leaf) for _, leaf in _leaves(node))


def _pair(r, t, is_none, pairable, pairs, gaps):
    if r is None or t is None or (not isinstance(r, _Branch) and not isinstance(t, _Branch)):
        if r is not None and t is not None and pairable(r[1], t[1]):
            pairs.append((r, t))
        elif not (_only_none(r, is_none) and _only_none(t, is_none)):
            gaps.append(_gap(r, t))
        return
    if not isinstance(r, _Branch) or not isinstance(t, _Branch):
        leaf = r if not isinstance(r, _Branch) else t
        if is_none(leaf[1]) or not pairable(leaf[1], leaf[1]):  # None or an object against many values
            if not (_only_none(r, is_none) and _only_none(t, is_none)):
                gaps.append(_gap(r, t))
            return
        wrapped = _Branch(leaf[0])
        wrapped.children[(POS, 0)] = leaf
        r, t = (wrapped, t) if leaf is r else (r, wrapped)
    rn, tn = _named(r), _named(t)
    if rn and tn and set(r.children) & set(t.children):
        for step in list(r.children) + [s for s in t.children if s not in r.children]:
            _pair(r.children.get(step), t.children.get(step), is_none, pairable, pairs, gaps)
        return
    if not rn and not tn:  # two sequences: by index
        for step in list(r.children) + [s for s in t.children if s not in r.children]:
            _pair(r.children.get(step), t.children.get(step), is_none, pairable, pairs, gaps)
        return
    rl, tl = list(r.children.values()), list(t.children.values())
    if len(rl) != len(tl):  # a named container against a sequence: its fields in order, None dropped
        if rn:
            rl = [c for c in rl if not _only_none(c, is_none)]
        if tn:
            tl = [c for c in tl if not _only_none(c, is_none)]
    for k in range(max(len(rl), len(tl))):
        _pair(rl[k] if k < len(rl) else None, tl[k] if k < len(tl) else None, is_none, pairable, pairs, gaps)
