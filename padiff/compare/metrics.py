"""Comparing two arrays: figures, tolerance and verdict, as data (no printing here).

The verdict rule (documented in the README, "How padiff decides"):

* With ``atol``/``rtol`` set by the user: exactly ``|a - b| <= atol + rtol * |b|`` for
  every element (``b`` is the reference model's value), as ``numpy.allclose``.
* By default ("auto"): tolerances depend on the dtype and on the tensor's scale. Every
  element must satisfy ``|a - b| <= rtol * |b| + max(atol * scale, floor)`` where ``scale``
  is the largest magnitude in either tensor, so values near zero (after ReLU, BatchNorm,
  tiny gradients) are judged against the size of the tensor rather than against
  themselves; and the relative L2 error ``||a - b|| / ||b||`` must stay under ``l2``.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

# dtype -> (rtol, atol relative to the tensor's scale, absolute floor, relative-L2 limit)
AUTO_TOLERANCES = {
    "float64": (1e-7, 1e-7, 1e-12, 1e-7),
    "float32": (1e-4, 1e-4, 1e-7, 1e-4),
    "float16": (1e-2, 1e-2, 1e-4, 5e-3),
    "bfloat16": (5e-2, 5e-2, 1e-3, 2e-2),
}
_SEED_DEFAULT_RTOL = 1e-7  # the rtol the seeds print when a user sets only atol


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    auto: bool  # True: scale-aware default rule; False: the user's exact atol/rtol
    l2: Optional[float] = None
    floor: float = 0.0
    source: str = "user"

    def describe(self) -> str:
        if self.auto:
            return f"auto {self.source}: rtol={self.rtol:g}, atol={self.atol:g} x scale, rel-L2 <= {self.l2:g}"
        return f"rtol={self.rtol:g}, atol={self.atol:g}"


def _dtype_key(dtype: str) -> str:
    d = (dtype or "").lower()
    for key in ("bfloat16", "float16", "float64", "float32"):
        if key in d:
            return key
    if d in ("half",):
        return "float16"
    if d in ("double",):
        return "float64"
    return "float32"


def tolerance_for(options, dtype_a: str, dtype_b: str, path: str = "") -> Tolerance:
    """Tolerance for one compared tensor: per-layer override, then per-dtype override, then
    the user's atol/rtol, then the auto default of the lower-precision dtype."""
    for pattern, atol, rtol in options.layer_tolerances:
        if fnmatch.fnmatchcase(path, pattern) or path.endswith("." + pattern) or path == pattern:
            return Tolerance(atol if atol is not None else 0.0,
                             rtol if rtol is not None else _SEED_DEFAULT_RTOL, False, source=f"layer {pattern}")
    keys = sorted({_dtype_key(dtype_a), _dtype_key(dtype_b)},
                  key=lambda k: list(AUTO_TOLERANCES).index(k))
    loosest = keys[-1]
    for dtype, atol, rtol in options.dtype_tolerances:
        if _dtype_key(dtype) == loosest:
            return Tolerance(atol if atol is not None else 0.0,
                             rtol if rtol is not None else _SEED_DEFAULT_RTOL, False, source=f"dtype {dtype}")
    if options.atol is not None or options.rtol is not None:
        return Tolerance(options.atol if options.atol is not None else 0.0,
                         options.rtol if options.rtol is not None else _SEED_DEFAULT_RTOL, False)
    rtol, atol, floor, l2 = AUTO_TOLERANCES[loosest]
    return Tolerance(atol, rtol, True, l2=l2, floor=floor, source=loosest)


@dataclass
class TensorDiff:
    """Every figure of one comparison; true when it passes."""

    passed: bool
    shape_a: Tuple[int, ...]
    shape_b: Tuple[int, ...]
    dtype_a: str
    dtype_b: str
    tolerance: Optional[Tolerance]
    mode: str = "strict"
    numel: int = 0
    mismatched: int = 0
    max_abs: float = 0.0
    max_abs_index: Tuple[int, ...] = ()
    max_rel: float = 0.0
    max_rel_index: Tuple[int, ...] = ()
    cosine: float = 1.0
    rel_l2: float = 0.0
    allowed_at_max: float = 0.0
    problem: Optional[str] = None  # "shape", "nan", "type", "value" (non-tensor), None
    detail: str = ""
    value_a: object = None  # the compared values for mean modes and scalars
    value_b: object = None

    def __bool__(self) -> bool:
        return self.passed

    @property
    def share_over(self) -> float:
        return self.mismatched / self.numel if self.numel else 0.0

    def message(self) -> str:
        """The torch-style mismatch message a user reads."""
        if self.problem == "shape":
            return f"Shapes differ: {list(self.shape_a)} vs {list(self.shape_b)}."
        if self.problem in ("nan", "type", "value", "structure"):
            return self.detail
        tol = self.tolerance
        lines = []
        if tol is not None:
            lines.append(f"Not equal to tolerance rtol={tol.rtol:g}, atol={tol.atol:g}"
                         + (" (x scale, auto)" if tol.auto else ""))
        if self.mode != "strict":
            lines.append(f"Compared the {self.mode.replace('_', ' ')} of each tensor: "
                         f"{_fmt(self.value_a)} vs {_fmt(self.value_b)}")
        pct = 100.0 * self.share_over
        lines.append(f"Mismatched elements: {self.mismatched} / {self.numel} ({pct:.1f}%)")
        lines.append(f"Greatest absolute difference: {_fmt(self.max_abs)} at index {self.max_abs_index} "
                     f"(up to {_fmt(self.allowed_at_max)} allowed)")
        lines.append(f"Greatest relative difference: {_fmt(self.max_rel)} at index {self.max_rel_index}")
        lines.append(f"Relative L2 error: {_fmt(self.rel_l2)}"
                     + (f" (up to {_fmt(tol.l2)} allowed)" if tol is not None and tol.auto else "")
                     + f", cosine similarity: {self.cosine:.8f}")
        return "\n".join(lines)


def _fmt(x) -> str:
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g}"
    return str(x)


def _index(flat_index: int, shape) -> Tuple[int, ...]:
    if not shape:
        return ()
    return tuple(int(i) for i in np.unravel_index(int(flat_index), shape))


def compare_arrays(a: np.ndarray, b: np.ndarray, tol: Tolerance, mode: str = "strict",
                   dtype_a: str = "", dtype_b: str = "") -> TensorDiff:
    """Compare ``a`` (the model under test) against ``b`` (the reference)."""
    a = np.asarray(a)
    b = np.asarray(b)
    dtype_a = dtype_a or str(a.dtype)
    dtype_b = dtype_b or str(b.dtype)
    base = dict(shape_a=tuple(a.shape), shape_b=tuple(b.shape), dtype_a=dtype_a, dtype_b=dtype_b,
                tolerance=tol, mode=mode)
    if a.shape != b.shape:
        if a.size == b.size and a.size == 1:
            a, b = a.reshape(()), b.reshape(())
        else:
            return TensorDiff(False, problem="shape", numel=int(b.size), **base)
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        diff = a.astype(np.int64) != b.astype(np.int64)
        n = int(diff.sum())
        idx = _index(int(np.argmax(diff)) if n else 0, a.shape)
        return TensorDiff(n == 0, numel=int(a.size), mismatched=n,
                          max_abs=float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0,
                          max_abs_index=idx, max_rel_index=idx, **base)
    af = a.astype(np.float64, copy=False)
    bf = b.astype(np.float64, copy=False)
    bad_a, bad_b = ~np.isfinite(af), ~np.isfinite(bf)
    if bad_a.any() or bad_b.any():
        same = np.array_equal(bad_a, bad_b) and np.array_equal(af[bad_a], bf[bad_b], equal_nan=True)
        where = []
        for label, bad, arr in (("tested", bad_a, af), ("reference", bad_b, bf)):
            if bad.any():
                first = _index(int(np.argmax(bad.reshape(-1))), arr.shape)
                kind = "NaN" if np.isnan(arr[bad]).any() else "Inf"
                where.append(f"the {label} model's value holds {int(bad.sum())} {kind} (first at index {first})")
        detail = ("; ".join(where) + ". "
                  + ("Both models agree on where they are, but " if same else "")
                  + "a non-finite value makes every later comparison meaningless: look at this layer's inputs "
                    "and weights.")
        return TensorDiff(False, problem="nan", detail=detail[0].upper() + detail[1:], numel=int(a.size), **base)
    if mode in ("mean", "abs_mean"):
        va = float(np.mean(np.abs(af))) if mode == "abs_mean" else float(np.mean(af)) if af.size else 0.0
        vb = float(np.mean(np.abs(bf))) if mode == "abs_mean" else float(np.mean(bf)) if bf.size else 0.0
        d = compare_arrays(np.asarray(va), np.asarray(vb), tol, "strict", dtype_a, dtype_b)
        d.mode, d.value_a, d.value_b = mode, va, vb
        d.shape_a, d.shape_b = tuple(a.shape), tuple(b.shape)
        return d
    n = int(af.size)
    if n == 0:
        return TensorDiff(True, numel=0, **base)
    err = np.abs(af - bf)
    mag_b = np.abs(bf)
    if tol.auto:
        scale = float(max(np.max(np.abs(af)), np.max(mag_b)))
        allowed = tol.rtol * mag_b + max(tol.atol * scale, tol.floor)
    else:
        allowed = tol.atol + tol.rtol * mag_b
    over = err > allowed
    mismatched = int(np.count_nonzero(over))
    i_abs = int(np.argmax(err))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(mag_b > 0, err / mag_b, np.where(err > 0, np.inf, 0.0))
    i_rel = int(np.argmax(rel))
    norm_b = float(np.linalg.norm(bf))
    norm_a = float(np.linalg.norm(af))
    err_norm = float(np.linalg.norm(af - bf))
    rel_l2 = err_norm / norm_b if norm_b > 0 else (0.0 if err_norm == 0 else math.inf)
    cosine = float(np.dot(af.reshape(-1), bf.reshape(-1)) / (norm_a * norm_b)) if norm_a > 0 and norm_b > 0 else (
        1.0 if norm_a == norm_b else 0.0)
    passed = mismatched == 0
    if tol.auto and tol.l2 is not None and rel_l2 > tol.l2 and norm_b > 0:
        # Many small errors that together are too large for rounding alone.
        passed = passed and err_norm <= max(tol.l2 * norm_b, tol.floor * math.sqrt(n))
    allowed_flat = np.broadcast_to(allowed, err.shape).reshape(-1)
    return TensorDiff(
        passed,
        numel=n,
        mismatched=mismatched,
        max_abs=float(err.reshape(-1)[i_abs]),
        max_abs_index=_index(i_abs, err.shape),
        max_rel=float(rel.reshape(-1)[i_rel]),
        max_rel_index=_index(i_rel, err.shape),
        cosine=cosine,
        rel_l2=rel_l2,
        allowed_at_max=float(allowed_flat[i_abs]),
        value_a=float(af.reshape(-1)[i_abs]),
        value_b=float(bf.reshape(-1)[i_abs]),
        **base,
    )


def compare_records(rec_a, rec_b, tol: Tolerance, mode: str) -> TensorDiff:
    """Compare two recorded values (tensors or plain values)."""
    from ..record.trace import TensorRecord  # local: keeps this module numpy-only at import

    assert isinstance(rec_a, TensorRecord) and isinstance(rec_b, TensorRecord)
    if rec_a.array is None or rec_b.array is None:
        same = rec_a.value == rec_b.value
        return TensorDiff(bool(same), (), (), rec_a.dtype, rec_b.dtype, tol, mode, problem=None if same else "value",
                          detail="" if same else f"Values differ: {rec_a.value!r} vs {rec_b.value!r}.",
                          value_a=rec_a.value, value_b=rec_b.value)
    d = compare_arrays(rec_a.array, rec_b.array, tol, mode, rec_a.dtype, rec_b.dtype)
    d.shape_a, d.shape_b = tuple(rec_a.shape) or d.shape_a, tuple(rec_b.shape) or d.shape_b
    return d
