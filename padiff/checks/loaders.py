"""``padiff.check_dataloader``: two data loaders, batch by batch."""

from __future__ import annotations

import itertools
from typing import List, Mapping, Optional

from ..compare.metrics import TensorDiff
from ..compare.result import Finding
from ..errors import PadiffError
from ..frameworks import type_names
from ..options import build_options, preflight
from .leaves import object_word
from .pairer import Pairer
from .result import CompareResult, finish


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
    result = CompareResult(False, options=opts, test_label=object_word(a), ref_label=object_word(b),
                           kind="dataloader", name=str(name))
    length_findings = _length_findings(a, b, result)
    batch_findings = _compare_batches(a, b, max_batches, opts, str(name), result)
    result.findings = length_findings + batch_findings
    result.first = next((f for f in result.findings if not f.passed), None)
    result.passed = result.first is None
    return finish(result, quiet)


def _length_findings(a, b, result: CompareResult) -> List[Finding]:
    """Different ``len(loader.dataset)``, else different ``len(loader)``, as a finding; the
    lengths known on both sides go to ``result.lengths``."""
    ds = (_length(getattr(a, "dataset", None)), _length(getattr(b, "dataset", None)))
    nb = (_length(a), _length(b))
    if None not in ds:
        result.lengths["dataset"] = ds
    if None not in nb:
        result.lengths["batches"] = nb
    if None not in ds and ds[0] != ds[1]:
        return [_length_finding(
            "len(dataset)", f"The datasets hold different numbers of samples: {ds[0]} (first) vs {ds[1]} (second), "
            "from len(loader.dataset).", *ds)]
    if None not in nb and nb[0] != nb[1]:
        return [_length_finding(
            "len(loader)", f"The loaders yield different numbers of batches: {nb[0]} (first) vs {nb[1]} (second), "
            "from len(loader): a different batch_size or drop_last?", *nb)]
    return []


def _compare_batches(a, b, max_batches: Optional[int], opts, name: str, result: CompareResult) -> List[Finding]:
    """Compare the loaders' batches in lock-step until one differs, one loader ends, or
    ``max_batches``; sets ``result``'s ``stop``, ``index``, ``count`` and notes and returns the
    findings of the differing batch (or of a loader that ended early)."""
    it_a, it_b = iter(a), iter(b)
    result.stop = "end"
    for i in itertools.count():
        if max_batches is not None and i >= max_batches:
            result.stop = "max_batches"
            return []
        batch_a = _next_batch(it_a, "first", i)
        batch_b = _next_batch(it_b, "second", i)
        if batch_a is _END or batch_b is _END:
            if batch_a is batch_b:
                return []
            which, other = ("first", "second") if batch_a is _END else ("second", "first")
            result.index, result.stop = i, "length"
            return [_length_finding(
                "batch count", f"The {which} loader ended after {i} batches; the {other} loader still yielded "
                f"batch {i}.", i if batch_a is _END else i + 1, i if batch_b is _END else i + 1, step=i)]
        pairer = Pairer(opts, name, "batch", step=i)
        pairer.pair(batch_a, batch_b)
        batch_a = batch_b = None  # hold no more than the current pair
        result.count = i + 1
        for n in pairer.notes:
            if n not in result.notes:
                result.notes.append(n)
        if not pairer.passed:
            result.index, result.stop = i, "diff"
            return pairer.findings
