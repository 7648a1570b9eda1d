"""The rest of the reproduction checklist: compare anything, data loaders, learning rates.

    padiff.compare(paddle_out, torch_out, atol=1e-5, name="logits")     # nested tensors/arrays/scalars
    padiff.check_dataloader(paddle_loader, torch_loader, max_batches=5)  # batch by batch
    padiff.check_schedule(paddle_scheduler, torch_scheduler, steps=100)  # learning rate per step

All three use the comparison core of ``auto_diff`` (``compare.metrics``: the same figures,
the same dtype-aware default tolerances, the same ``atol``/``rtol``/``compare_mode`` options)
and return a :class:`CompareResult`, an :class:`~padiff.compare.result.AlignResult` that is
true when the two sides agree and ``== False`` when not.

Conventions (documented in the README):

* The first argument is the one under test, the second the reference (torch, in the
  guide's order ``(paddle, torch)``): relative errors are measured against the second.
* Values are paired recursively by dict key and list/tuple position; a missing key, a
  different length or a container against a tensor is a "structure" mismatch, never a crash.
* Dtypes: a different *kind* (bool / integer / floating point / complex) is a mismatch; a
  different precision of one kind (float32 vs float64, int32 vs int64) is a note, and the
  values are compared with the looser dtype's tolerance. Python numbers carry no dtype of
  their own: only their value counts. Two one-element values of different shapes ([1] vs [])
  are compared as scalars, with a note.
* Reports print with the prefix ``[padiff]``; a failure also writes the full report to the
  log folder (``compare.log``, ``dataloader_diff.log``, ``schedule_diff.log``).

The core imports no framework: tensors, schedulers and their learning rates are reached
through the adapters.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pickle
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .compare.metrics import TensorDiff, compare_arrays, tolerance_for
from .compare.result import AlignResult, Finding
from .errors import PadiffError
from .frameworks import adapter_for_value, framework_of, type_names
from .options import Options, build_options, preflight
from .report import checks as render
from .report.console import write_log

__all__ = ["compare", "check_dataloader", "check_schedule", "CompareResult", "main_compare", "load_saved"]

LOG_FILES = {"compare": "compare.log", "dataloader": "dataloader_diff.log", "schedule": "schedule_diff.log"}
_MAX_DEPTH = 64
_NUMBERS = (bool, int, float, complex)
_KIND_WORDS = {"b": "bool", "i": "integer", "u": "integer", "f": "floating point", "c": "complex"}


@dataclass(eq=False)
class CompareResult(AlignResult):
    """What ``compare``, ``check_dataloader`` and ``check_schedule`` return.

    An :class:`AlignResult` (true when the sides agree, ``== False`` when not, ``.first``,
    ``.report``, ``.notes``, ``.log_files``) with, in addition:

    * ``kind``: "compare", "dataloader" or "schedule"; ``name``: the root of the id paths.
    * ``findings``: every compared pair as a :class:`Finding` (``what`` is the id path such as
      ``logits["top1"][0]``, ``diff`` the :class:`TensorDiff` with shapes, dtypes and error
      figures). For a data loader: the length checks and the fields of the first differing
      batch (batches that agree are not kept); for a schedule: one per step.
    * ``mismatches``: the findings that failed.
    * ``index``: the first differing batch / step (None when none differs, and for compare).
    * ``count``: values / batches / steps compared.
    * ``lengths``: data loaders only, ``{"dataset": (first, second), "batches": (...)}`` from
      ``len(loader.dataset)`` and ``len(loader)`` (None where a loader has no length).
    * ``stop``: data loaders only: "end" (both ran out), "max_batches", "diff" or "length".
    * ``values``: schedules only, the learning rates of both sides, one per step.

    ``steps`` (auto_diff's per-step results) stays empty.
    """

    kind: str = "compare"
    name: str = "value"
    findings: List[Finding] = field(default_factory=list)
    index: Optional[int] = None
    count: int = 0
    lengths: Dict[str, Tuple[Optional[int], Optional[int]]] = field(default_factory=dict)
    stop: str = ""
    values: Tuple[List[float], List[float]] = field(default_factory=lambda: ([], []))

    @property
    def mismatches(self) -> List[Finding]:
        return [f for f in self.findings if not f.passed]

    def __repr__(self) -> str:
        if self.passed:
            return f"CompareResult(kind={self.kind!r}, passed=True, count={self.count})"
        where = "" if self.index is None else f", index={self.index}"
        return (f"CompareResult(kind={self.kind!r}, passed=False{where}, first={self.first.what!r}, "
                f"mismatches={len(self.mismatches)})")


# --- leaves ----------------------------------------------------------------------------------

@dataclass
class _Leaf:
    """One value as the comparison sees it: a numpy array (numbers) or a plain value."""

    array: Optional[np.ndarray]
    value: Any
    dtype: str  # the framework's dtype name, "python float", "str", ...
    type_name: str  # "paddle.Tensor", "numpy.ndarray", "float", ...
    python: bool = False  # a Python number: no dtype of its own

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.array.shape) if self.array is not None else ()


def _is_tensor(x) -> bool:
    ad = adapter_for_value(x)
    return ad is not None and ad.is_tensor(x)


def _node_kind(x) -> str:
    """"leaf", "map" or "seq"."""
    if x is None or isinstance(x, (np.ndarray, np.generic, str, bytes) + _NUMBERS) or _is_tensor(x):
        return "leaf"
    if isinstance(x, Mapping) or (hasattr(x, "keys") and hasattr(x, "__getitem__") and not isinstance(x, type)):
        return "map"
    if isinstance(x, (list, tuple)):
        return "seq"
    return "leaf"


def _as_leaf(x, where: str) -> _Leaf:
    ad = adapter_for_value(x)
    if ad is not None and ad.is_tensor(x):
        return _array_leaf(ad.to_numpy(x), ad.dtype_name(x), f"{ad.name}.Tensor")
    if isinstance(x, np.ndarray):
        return _array_leaf(x, str(x.dtype), "numpy.ndarray")
    if isinstance(x, np.generic):
        return _array_leaf(np.asarray(x), str(x.dtype), f"numpy.{type(x).__name__}")
    if isinstance(x, _NUMBERS):
        return _Leaf(np.asarray(x), x, f"python {type(x).__name__}", type(x).__name__, python=True)
    if x is None or isinstance(x, (str, bytes)):
        return _Leaf(None, x, type(x).__name__, type(x).__name__)
    raise PadiffError(
        f"{where} is a {type(x).__module__}.{type(x).__qualname__}, which padiff cannot compare: it compares "
        "tensors, numpy arrays, numbers and strings, nested in dicts, lists and tuples. Convert this value "
        "to one of those (or leave it out) on both sides."
    )


def _array_leaf(arr: np.ndarray, dtype: str, type_name: str) -> _Leaf:
    if arr.dtype.kind not in "biufc":  # strings, objects: compared for equality
        return _Leaf(None, arr, dtype, type_name)
    return _Leaf(arr, None, dtype, type_name)


def _plain_equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and bool(np.all(a == b))
    return type(a) is type(b) and a == b


def _shape_text(shape) -> str:
    return str(list(shape))


# --- pairing ---------------------------------------------------------------------------------

class _Pairer:
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
        if depth > _MAX_DEPTH:
            raise PadiffError(f"{what} is nested more than {_MAX_DEPTH} levels deep (a structure that contains "
                              "itself?): padiff cannot pair it.")
        ka, kb = _node_kind(a), _node_kind(b)
        if ka != kb:
            ta, tb = _type_word(a), _type_word(b)
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
                                    _type_word(a[key]) if key in set_a else "(missing)",
                                    _type_word(b[key]) if key in set_b else "(missing)")
                else:
                    self.pair(a[key], b[key], sub, depth + 1)
        elif ka == "seq":
            if len(a) != len(b):
                self._structure(what, f"Different lengths: {len(a)} items (first) vs {len(b)} (second); the first "
                                f"{min(len(a), len(b))} were compared.", _type_word(a), _type_word(b))
            for i, (xa, xb) in enumerate(zip(a, b)):
                self.pair(xa, xb, id_path + f"[{i}]", depth + 1)
        else:
            self.compare_leaves(what, _as_leaf(a, what + " (first)"), _as_leaf(b, what + " (second)"))

    def compare_leaves(self, what: str, la: _Leaf, lb: _Leaf) -> None:
        if la.array is None or lb.array is None:
            if la.array is None and lb.array is None:
                same = _plain_equal(la.value, lb.value)
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
        cause = "" if d.passed else _diagnose(la.array, lb.array, d, self.opts)
        self._add(what, d, la.type_name, lb.type_name, cause)


def key_text(key) -> str:
    """One step of an id path as a user indexes it: ``["logits"]`` for a str key, ``[0]``."""
    return f"[{json.dumps(key)}]" if isinstance(key, str) else f"[{key!r}]"


def _type_word(x) -> str:
    if x is None:
        return "None"
    if _is_tensor(x):
        return f"{framework_of(x)}.Tensor"
    if isinstance(x, np.ndarray):
        return "numpy.ndarray"
    return type(x).__name__


# --- what a difference looks like ------------------------------------------------------------

def _diagnose(a: np.ndarray, b: np.ndarray, d: TensorDiff, opts: Options) -> str:
    """A hint at what the difference means, from the values alone (empty when none fits)."""
    if d.problem == "shape":
        if sorted(a.shape) == sorted(b.shape):
            return ("The shapes hold the same sizes in another order: a layout difference (HWC vs CHW, "
                    "NHWC vs NCHW) or a missing transpose?")
        if a.ndim == b.ndim and a.ndim > 0 and a.shape[1:] == b.shape[1:]:
            return "The shapes differ only in the first axis: a different batch size, or drop_last?"
        return ""
    if d.problem is not None or a.dtype.kind not in "fc" or b.dtype.kind not in "fc" or a.size < 2:
        return ""
    sorted_d = compare_arrays(np.sort(a.reshape(-1)), np.sort(b.reshape(-1)), d.tolerance, "strict")
    if sorted_d.passed:
        return ("Both hold the same values in another order: shuffling, a different sampler or sample order, "
                "or a transposed layout?")
    return _channel_cause(a, b, d, opts)


def _channel_axis(shape) -> Optional[int]:
    candidates = {4: (1, 3), 3: (0, 2)}.get(len(shape), ())
    for axis in candidates:
        if 1 < shape[axis] <= 4:
            return axis
    return None


def _constant_change(a: np.ndarray, b: np.ndarray) -> str:
    """"off by a constant X" / "scaled by a constant X" when the change is one number."""
    a = a.astype(np.float64).reshape(-1)
    b = b.astype(np.float64).reshape(-1)
    delta = a - b
    big = float(np.max(np.abs(delta)))
    if big > 0 and float(np.max(delta) - np.min(delta)) <= 1e-3 * big:
        return f"off by a constant {float(np.mean(delta)):.6g} (first - second)"
    keep = np.abs(b) > 1e-6 * float(np.max(np.abs(b)))
    if keep.sum() >= 2:
        ratio = a[keep] / b[keep]
        mid = float(np.mean(ratio))
        if mid != 0 and float(np.max(ratio) - np.min(ratio)) <= 1e-3 * abs(mid):
            return f"scaled by a constant {mid:.6g} (first / second)"
    return ""


def _channel_cause(a: np.ndarray, b: np.ndarray, d: TensorDiff, opts: Options) -> str:
    axis = _channel_axis(a.shape)
    if axis is None:
        return ""
    n = a.shape[axis]
    bad = []
    for c in range(n):
        dc = compare_arrays(np.take(a, c, axis), np.take(b, c, axis), d.tolerance, opts.compare_mode)
        if not dc.passed:
            bad.append((c, _constant_change(np.take(a, c, axis), np.take(b, c, axis))))
    if not bad:
        return ""
    constant = [c for c, how in bad if how]
    if len(bad) == n and not constant:
        return ""
    if len(bad) == 1:
        c, how = bad[0]
        text = f"Only channel {c} (axis {axis}) of {n} differs" + (f", {how}" if how else "") + "."
    else:
        head = (f"All {n} channels (axis {axis}) differ" if len(bad) == n else
                "Only channels " + ", ".join(str(c) for c, _ in bad) + f" (axis {axis}) of {n} differ")
        parts = [f"channel {c} {how}" for c, how in bad if how]
        text = head + (": " + "; ".join(parts) if parts else "") + "."
    if constant:
        text += " A per-channel normalisation (mean: an offset; std: a scale) that differs?"
    return text


# --- reporting -------------------------------------------------------------------------------

def _finish(result: CompareResult, quiet: bool) -> CompareResult:
    if not result.passed:
        lines = render.log_lines(result)
        result.log_files.append(write_log(result.options.log_dir, LOG_FILES[result.kind], lines))
    result.report = "\n".join(render.console_lines(result))
    if not quiet:
        print(result.report)
    return result


def _origin(obj) -> str:
    """Where a value's leaves come from: "paddle", "torch", "numpy", "python", or a mix."""
    seen: List[str] = []

    def walk(x, depth):
        kind = _node_kind(x)
        if depth > _MAX_DEPTH:
            return
        if kind == "map":
            for k in list(x.keys()):
                walk(x[k], depth + 1)
        elif kind == "seq":
            for item in x:
                walk(item, depth + 1)
        else:
            word = (framework_of(x) if _is_tensor(x) else "numpy" if isinstance(x, (np.ndarray, np.generic))
                    else "python")
            if word not in seen:
                seen.append(word)

    walk(obj, 0)
    return "+".join(seen) or "empty"


def _object_word(obj) -> str:
    """ "paddle DataLoader", "torch LinearLR", "generator", "function lr_at"."""
    fw = framework_of(obj)
    if fw:
        return f"{fw} {type(obj).__name__}"
    if callable(obj) and hasattr(obj, "__name__"):
        return f"function {obj.__name__}"
    return type(obj).__name__


# --- compare ---------------------------------------------------------------------------------

def compare(a, b, *, name: str = "value", options: Optional[Mapping] = None, quiet: bool = False,
            **kwargs) -> CompareResult:
    """Compare two nested values: tensors of either framework (any device), numpy arrays,
    Python numbers and strings, nested in dicts, lists and tuples.

    ``b`` is the reference. Options (``atol``, ``rtol``, ``compare_mode``, ``log_dir``, ...) are
    those of ``auto_diff``, as keywords or in ``options``. ``name`` is the root of the id paths
    (``name="logits"`` gives ``logits[0]``). Prints a short report unless ``quiet``; on a
    difference also writes it to ``<log_dir>/compare.log``.
    """
    opts = build_options(options, **kwargs)
    preflight(opts)  # an unwritable log folder is named now, not after the comparison
    pairer = _Pairer(opts, str(name), "value")
    pairer.pair(a, b)
    result = CompareResult(pairer.passed, options=opts, test_label=_origin(a), ref_label=_origin(b),
                           notes=pairer.notes, kind="compare", name=str(name), findings=pairer.findings,
                           count=len(pairer.findings))
    result.first = next((f for f in pairer.findings if not f.passed), None)
    return _finish(result, quiet)


# --- data loaders ----------------------------------------------------------------------------

_END = object()


def _length(obj) -> Optional[int]:
    if obj is None or not hasattr(obj, "__len__"):
        return None
    try:
        return len(obj)
    except TypeError:  # e.g. a torch DataLoader over an IterableDataset: no length
        return None


def _next_batch(it, which: str, index: int):
    try:
        return next(it, _END)
    except Exception as exc:
        raise PadiffError(f"The {which} loader raised {type(exc).__name__} while producing batch {index}: {exc}") \
            from exc


def _length_finding(what: str, detail: str, a: int, b: int, step: int = 0) -> Finding:
    d = TensorDiff(False, (), (), "", "", None, problem="value", detail=detail, value_a=a, value_b=b)
    return Finding("length", what, what, what, "length", "length", d, step)


def check_dataloader(a, b, max_batches: Optional[int] = None, *, name: str = "batch",
                     options: Optional[Mapping] = None, quiet: bool = False, **kwargs) -> CompareResult:
    """Iterate two data loaders (paddle.io.DataLoader, torch.utils.data.DataLoader, or any
    iterables of batches) in lock-step and compare batch by batch, at most ``max_batches``.

    Stops at the first differing batch; reports which field of it differs (``batch["image"]``,
    ``batch[0]``), a loader that ends early, and different ``len(loader.dataset)`` /
    ``len(loader)``. Only the current pair of batches is held in memory. ``b`` is the reference.
    """
    opts = build_options(options, **kwargs)
    preflight(opts)  # an unwritable log folder is named now, not after the comparison
    if max_batches is not None and (not isinstance(max_batches, int) or isinstance(max_batches, bool)
                                    or max_batches < 1):
        raise PadiffError(f"max_batches must be a whole number >= 1 (or None for all batches), got {max_batches!r}.")
    for obj, which in ((a, "first"), (b, "second")):
        if not hasattr(obj, "__iter__"):
            loaders = "".join(f"a {n}, " for n in type_names("loader"))
            raise PadiffError(f"The {which} loader is a {type(obj).__name__}, not an iterable of batches: pass "
                              f"{loaders}or any iterable or generator of batches.")
    result = CompareResult(False, options=opts, test_label=_object_word(a), ref_label=_object_word(b),
                           kind="dataloader", name=str(name))
    length_findings = []
    ds = (_length(getattr(a, "dataset", None)), _length(getattr(b, "dataset", None)))
    nb = (_length(a), _length(b))
    if None not in ds:
        result.lengths["dataset"] = ds
    if None not in nb:
        result.lengths["batches"] = nb
    if None not in ds and ds[0] != ds[1]:
        length_findings.append(_length_finding(
            "len(dataset)", f"The datasets hold different numbers of samples: {ds[0]} (first) vs {ds[1]} (second), "
            "from len(loader.dataset).", *ds))
    elif None not in nb and nb[0] != nb[1]:
        length_findings.append(_length_finding(
            "len(loader)", f"The loaders yield different numbers of batches: {nb[0]} (first) vs {nb[1]} (second), "
            "from len(loader): a different batch_size or drop_last?", *nb))

    batch_findings: List[Finding] = []
    it_a, it_b = iter(a), iter(b)
    result.stop = "end"
    for i in itertools.count():
        if max_batches is not None and i >= max_batches:
            result.stop = "max_batches"
            break
        batch_a = _next_batch(it_a, "first", i)
        batch_b = _next_batch(it_b, "second", i)
        if batch_a is _END or batch_b is _END:
            if batch_a is not batch_b:
                which, other = ("first", "second") if batch_a is _END else ("second", "first")
                batch_findings.append(_length_finding(
                    "batch count", f"The {which} loader ended after {i} batches; the {other} loader still yielded "
                    f"batch {i}.", i if batch_a is _END else i + 1, i if batch_b is _END else i + 1, step=i))
                result.index = i
                result.stop = "length"
            break
        pairer = _Pairer(opts, str(name), "batch", step=i)
        pairer.pair(batch_a, batch_b)
        batch_a = batch_b = None  # hold no more than the current pair
        result.count = i + 1
        for n in pairer.notes:
            if n not in result.notes:
                result.notes.append(n)
        if not pairer.passed:
            batch_findings = pairer.findings
            result.index = i
            result.stop = "diff"
            break
    del it_a, it_b
    result.findings = length_findings + batch_findings
    result.first = next((f for f in result.findings if not f.passed), None)
    result.passed = result.first is None
    return _finish(result, quiet)


# --- learning-rate schedules -----------------------------------------------------------------

class _Schedule:
    """One side's learning rate per step: a framework scheduler (through its adapter), a
    callable step -> lr, or a sequence of learning rates."""

    def __init__(self, obj, which: str, steps: int, pairer_note):
        self.obj, self.which = obj, which
        self.adapter = adapter_for_value(obj)
        self.word = _object_word(obj)
        ad = self.adapter
        if ad is not None and ad.is_lr_scheduler(obj):
            if ad.scheduler_needs_metric(obj):
                raise PadiffError(
                    f"The {which} schedule is a {self.word}, which steps on a metric (scheduler.step(loss)), so "
                    "padiff cannot step it alone. Pass a function step -> lr that steps it with your metric and "
                    "returns its learning rate.")
            self.kind = "scheduler"
        elif isinstance(obj, (list, tuple, np.ndarray)):
            if len(obj) < steps:
                raise PadiffError(f"The {which} schedule is a sequence of {len(obj)} learning rates, fewer than "
                                  f"steps={steps}: pass at least {steps}, or lower steps.")
            self.kind = "values"
            self.word = f"{type(obj).__name__} of {len(obj)} values"
        elif callable(obj):
            self.kind = "callable"
        else:
            hint = " (an optimizer: pass its scheduler)" if ad is not None and ad.is_optimizer(obj) else ""
            schedulers = "".join(f"a {n}, " for n in type_names("scheduler"))
            raise PadiffError(
                f"The {which} schedule is a {type(obj).__name__}{hint}: pass {schedulers}a function step -> lr, "
                "or a list of learning rates.")
        self.note = pairer_note

    def lr(self, step: int) -> _Leaf:
        what = f"the {self.which} schedule's learning rate at step {step}"
        if self.kind == "scheduler":
            lrs = self.adapter.scheduler_lr(self.obj)
            if len(set(lrs)) > 1:
                self.note(f"The {self.which} schedule's optimizer has {len(lrs)} parameter groups with different "
                          "learning rates; padiff compared the first group's.")
            value = lrs[0]
        elif self.kind == "values":
            value = self.obj[step]
        else:
            try:
                value = self.obj(step)
            except Exception as exc:
                raise PadiffError(f"The {self.which} schedule ({self.word}) raised {type(exc).__name__} at step "
                                  f"{step}: {exc}") from exc
        if _node_kind(value) != "leaf":
            raise PadiffError(f"{what[0].upper() + what[1:]} is a {type(value).__name__}: a schedule gives one "
                              "number per step.")
        leaf = _as_leaf(value, what)
        if leaf.python:  # schedules compute in Python doubles on both sides: judge them as float64
            leaf = dataclasses.replace(leaf, dtype="float64")
        if leaf.array is None or leaf.array.size != 1:
            raise PadiffError(f"{what[0].upper() + what[1:]} is {value!r}: a schedule gives one number per step.")
        return leaf

    def step(self, step: int) -> None:
        if self.kind != "scheduler":
            return
        try:
            self.adapter.scheduler_step(self.obj)
        except Exception as exc:
            raise PadiffError(f"The {self.which} schedule ({self.word}) raised {type(exc).__name__} when stepped "
                              f"after step {step}: {exc}") from exc


def check_schedule(a, b, steps: int, *, name: str = "lr", options: Optional[Mapping] = None, quiet: bool = False,
                   **kwargs) -> CompareResult:
    """Step two learning-rate schedules and compare the learning rate at every step.

    Each side is a paddle ``LRScheduler``, a torch ``LRScheduler`` (its optimizer's learning
    rate is read, first parameter group), a function ``step -> lr``, or a sequence of learning
    rates. Step ``i`` is the learning rate after ``i`` calls of ``scheduler.step()`` (step 0:
    as built), so ``steps`` values need ``steps - 1`` calls; the schedulers are left stepped:
    build fresh ones for the check. ``b`` is the reference.
    """
    opts = build_options(options, **kwargs)
    preflight(opts)  # an unwritable log folder is named now, not after the comparison
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise PadiffError(f"steps must be a whole number >= 1, got {steps!r}.")
    notes: List[str] = []

    def note(text):
        if text not in notes:
            notes.append(text)

    sa, sb = _Schedule(a, "first", steps, note), _Schedule(b, "second", steps, note)
    result = CompareResult(False, options=opts, test_label=sa.word, ref_label=sb.word, kind="schedule",
                           name=str(name), notes=notes)
    for i in range(steps):
        la, lb = sa.lr(i), sb.lr(i)
        pairer = _Pairer(opts, str(name), "lr", step=i)
        pairer.compare_leaves(str(name), la, lb)
        for n in pairer.notes:
            note(n)
        result.findings.extend(pairer.findings)
        result.values[0].append(float(la.array.reshape(-1)[0].real))
        result.values[1].append(float(lb.array.reshape(-1)[0].real))
        if i < steps - 1:
            sa.step(i)
            sb.step(i)
    result.count = steps
    result.first = next((f for f in result.findings if not f.passed), None)
    result.index = result.first.step if result.first is not None else None
    result.passed = result.first is None
    return _finish(result, quiet)


# --- the command line ------------------------------------------------------------------------

def load_saved(path: str):
    """Arrays saved with numpy: a ``.npy`` array, a ``.npz`` archive (a dict of its arrays) or a
    reprod_log ``.npy`` file holding a pickled dict. Pickles run code when loaded: load only
    files you trust."""
    if not os.path.isfile(path):
        raise PadiffError(f"No such file: {path}. Pass two files saved with numpy (.npy, .npz, or reprod_log .npy).")
    try:
        data = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise PadiffError(f"Cannot read {path} as a numpy file (.npy or .npz): {exc}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {k: data[k] for k in data.files}
    if data.dtype == object and data.shape == ():
        return data.item()
    return data


def main_compare(argv: Optional[Sequence[str]] = None) -> int:
    """``padiff compare FIRST SECOND [--atol X] [--rtol X] [--compare-mode M] [--name N]
    [--log-dir DIR] [--quiet]``: 0 when the files agree, 1 when they differ, 2 when they cannot
    be read (or the options are wrong). SECOND is the reference."""
    parser = argparse.ArgumentParser(
        prog="padiff compare",
        description="Compare two files of saved arrays (.npy, .npz, reprod_log .npy dicts) with padiff's "
                    "tolerances. The second file is the reference.")
    parser.add_argument("first", help="file under test (e.g. forward_paddle.npy)")
    parser.add_argument("second", help="reference file (e.g. forward_torch.npy)")
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance (default: auto, per dtype)")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: auto, per dtype)")
    parser.add_argument("--compare-mode", default=None, help="auto (default), strict, mean or abs_mean")
    parser.add_argument("--name", default="value", help="root name of the id paths (default: value)")
    parser.add_argument("--log-dir", default=None, help="folder of the report file (default: padiff_log)")
    parser.add_argument("--quiet", action="store_true", help="print nothing; only the exit status tells")
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in (("atol", args.atol), ("rtol", args.rtol), ("compare_mode", args.compare_mode),
                                ("log_dir", args.log_dir)) if v is not None}
    try:
        first, second = load_saved(args.first), load_saved(args.second)
        result = compare(first, second, name=args.name, quiet=args.quiet, **kwargs)
    except PadiffError as exc:
        print(f"padiff compare: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result.passed else 1
