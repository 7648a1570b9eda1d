"""Pairing two nested values by key and position, and comparing every pair of leaves."""

from __future__ import annotations

import dataclasses
import json
from typing import List

from ..compare.metrics import TensorDiff, compare_arrays, tolerance_for
from ..compare.result import Finding
from ..errors import PadiffError
from ..options import Options
from .diagnose import diagnose
from .leaves import MAX_DEPTH, Leaf, as_leaf, node_kind, plain_equal, type_word

_KIND_WORDS = {"b": "bool", "i": "integer", "u": "integer", "f": "floating point", "c": "complex"}


class Pairer:
    """Pairs two nested values by key and position and compares every pair of leaves."""

    def __init__(self, opts: Options, root: str, stage: str, step: int = 0):
        self.opts = opts
        self.root = root
        self.stage = stage
        self.step = step
        self.findings: List[Finding] = []
        self.notes: List[str] = []

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.findings)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _add(self, what: str, diff: TensorDiff, type_a: str, type_b: str, cause: str = "") -> None:
        self.findings.append(Finding(self.stage, what, what, what, type_b, type_a, diff, self.step, cause=cause))

    def _structure(self, what: str, detail: str, type_a: str, type_b: str) -> None:
        d = TensorDiff(False, (), (), "", "", None, problem="structure", detail=detail)
        self._add(what, d, type_a, type_b)

    def pair(self, a, b, id_path: str = "", depth: int = 0) -> None:
        what = self.root + id_path
        if depth > MAX_DEPTH:
            raise PadiffError(f"{what} is nested more than {MAX_DEPTH} levels deep (a structure that contains "
                              "itself?): padiff cannot pair it.")
        ka, kb = node_kind(a), node_kind(b)
        if ka != kb:
            ta, tb = type_word(a), type_word(b)
            self._structure(what, f"Different structures: a {ta} (first) vs a {tb} (second).", ta, tb)
        elif ka == "map":
            keys_a, keys_b = list(a.keys()), list(b.keys())
            set_b, set_a = set(keys_b), set(keys_a)
            for key in keys_a + [k for k in keys_b if k not in set_a]:
                sub = id_path + key_text(key)
                if key not in set_b or key not in set_a:
                    which, other, keys = (("first", "second", keys_b) if key in set_a else ("second", "first", keys_a))
                    shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
                    self._structure(self.root + sub, f"Only the {which} value has the key {key!r}; the {other} "
                                    f"has {'the keys ' + shown if keys else 'no keys'}.",
                                    type_word(a[key]) if key in set_a else "(missing)",
                                    type_word(b[key]) if key in set_b else "(missing)")
                else:
                    self.pair(a[key], b[key], sub, depth + 1)
        elif ka == "seq":
            if len(a) != len(b):
                self._structure(what, f"Different lengths: {len(a)} items (first) vs {len(b)} (second); the first "
                                f"{min(len(a), len(b))} were compared.", type_word(a), type_word(b))
            for i, (xa, xb) in enumerate(zip(a, b)):
                self.pair(xa, xb, id_path + f"[{i}]", depth + 1)
        else:
            self.compare_leaves(what, as_leaf(a, what + " (first)"), as_leaf(b, what + " (second)"))

    def compare_leaves(self, what: str, la: Leaf, lb: Leaf) -> None:
        if la.array is None or lb.array is None:
            if la.array is None and lb.array is None:
                same = plain_equal(la.value, lb.value)
                d = TensorDiff(same, (), (), la.dtype, lb.dtype, None, problem=None if same else "value",
                               detail="" if same else f"Values differ: {la.value!r} (first) vs {lb.value!r} (second).",
                               value_a=la.value, value_b=lb.value)
            else:
                d = TensorDiff(False, la.shape, lb.shape, la.dtype, lb.dtype, None, problem="type",
                               detail=f"A {la.type_name} (first) vs a {lb.type_name} (second): one holds numbers, "
                                      "the other does not.")
            self._add(what, d, la.type_name, lb.type_name)
            return
        tol = tolerance_for(self.opts, la.dtype, lb.dtype, what)
        d = compare_arrays(la.array, lb.array, tol, self.opts.compare_mode, la.dtype, lb.dtype)
        if not la.python and not lb.python and la.dtype != lb.dtype:
            kind_a, kind_b = _KIND_WORDS[la.array.dtype.kind], _KIND_WORDS[lb.array.dtype.kind]
            if kind_a != kind_b and d.problem == "shape":
                self.note(f"{what}: dtypes differ too, {la.dtype} (first) vs {lb.dtype} (second).")
            elif kind_a != kind_b:
                values = ("The values are equal within tolerance." if d.passed else
                          "The values differ too:\n" + d.message())
                d = dataclasses.replace(d, passed=False, problem="type", detail=(
                    f"Dtypes differ in kind: {la.dtype} (first) vs {lb.dtype} (second), {kind_a} against {kind_b} "
                    f"(a missing cast?). {values}"))
            else:
                how = f" with the {d.tolerance.source} tolerance" if d.tolerance.auto else ""
                self.note(f"{what}: dtypes differ, {la.dtype} (first) vs {lb.dtype} (second); the values were "
                          f"compared{how}.")
        if d.problem is None and la.shape != lb.shape:
            self.note(f"{what}: shapes differ, {_shape_text(la.shape)} (first) vs {_shape_text(lb.shape)} "
                      "(second); one element each, compared as scalars.")
        cause = "" if d.passed else diagnose(la.array, lb.array, d, self.opts)
        self._add(what, d, la.type_name, lb.type_name, cause)


def key_text(key) -> str:
    """One step of an id path as a user indexes it: ``["logits"]`` for a str key, ``[0]``."""
    return f"[{json.dumps(key)}]" if isinstance(key, str) else f"[{key!r}]"


def _shape_text(shape) -> str:
    return str(list(shape))
