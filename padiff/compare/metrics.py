"""Comparing two arrays: figures, tolerance and verdict, as data (no printing here).

The verdict rule (documented in the README, "How padiff decides"):

* ``compare_mode="strict"`` with ``atol``/``rtol`` set by the user (globally, per dtype or
  per layer path): exactly ``|a - b| <= atol + rtol * |b|`` for every element (``b`` is the
  reference model's value), as ``numpy.allclose``. Nothing else: a tolerance tighter than
  rounding fails on rounding.
* By default (``compare_mode="auto"``), a tolerance judges an error against the magnitudes
  involved, for the dtype of the lower-precision tensor; the user's ``atol``/``rtol``, when
  set, are an allowance on top of it (``allowance``): a tensor passes when it passes the rule
  below or when every element is within ``atol + rtol * |b|``:

  - every element: ``|a - b| <= rtol * |b| + max(atol * S, floor)`` where ``S`` is the
    tensor's scale (its largest magnitude in either model), so values near zero (after a
    ReLU or a BatchNorm, tiny gradients) are judged against the size of their tensor, never
    against themselves;
  - the whole tensor: ``||a - b|| <= l2 * ||b||`` (relative L2 error), so many small errors
    that together exceed what rounding makes fail even when each is small;
  - ``floor`` is the error that rounding alone leaves on values of the size of the
    computation the tensor came from: for gradients the caller passes that size as
    ``context`` (the largest gradient of the backward pass, ``C``) and the floor is
    ``CONTEXT_ULPS * u * C`` (``u`` the dtype's unit roundoff). A gradient that is zero in
    exact arithmetic (the input gradient of a final LayerNorm under a mean loss) is then
    rounding noise of size ``u * C`` and passes; without a context the dtype's absolute
    ``floor`` of the table applies;
  - near-tie flips (backward only): a ReLU, max-pool or clip whose input sits within
    rounding of its kink routes a gradient in one model and not in the other. When every
    element over tolerance is exactly zero in one model and not in the other, and they are
    at most ``FLIP_SHARE`` of the tensor, those elements are reported (``flips``) and left
    out of the verdict. The difference they cause is real, so the comparisons after them
    in the backward pass (and the parameter gradients) are given ``explained`` = the flip's
    scaled max and relative L2 error and allow ``EXPLAINED_FACTOR`` times them;
  - carried difference: rounding differences grow along a deep network (a ResNet-50's
    BatchNorms reach a relative L2 error of 1e-4 in float32 by its last stage; a ReLU that
    flips near its kink there gives gradients that differ by 1e-2 after the train-mode
    BatchNorms mix them), so a call's output may differ by ``CARRY_FACTOR`` times the largest
    difference (scaled max, relative L2) that the comparisons before it passed with, in the
    forward pass, and likewise in the backward pass and its parameter gradients
    (``carried``). A clean layer passes on what it inherited; a bug makes the error jump
    (``compare/origin.py``'s measure). A gradient of rounding noise carries nothing;
  - a calibration (``padiff.calibrate``) in the options raises a layer's ``atol`` and
    ``l2`` to ``k`` times the noise measured between the reference model and its float64
    copy, and the message says whether the difference lies within that noise.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..record.spill import loaded, read_blocks
from . import scratch

# Unit roundoff (half the machine epsilon) of each floating dtype.
UNIT_ROUNDOFF = {
    "float64": 2.0 ** -53,
    "float32": 2.0 ** -24,
    "float16": 2.0 ** -11,
    "bfloat16": 2.0 ** -8,
}

# dtype -> (rtol, atol relative to the tensor's scale, absolute floor without context, relative-L2 limit).
# float32: about 1700 u. Clean cross-framework ports measured in bench/bench_tolerance.py stay
# under 1.3e-5 (scaled max) and 7.3e-6 (rel-L2) in 100 seeds of every pair, and the smallest
# injected bug (tanh-GELU for exact GELU) sits at 1.2e-4 / 2e-4. float16/bfloat16: 20 and 13 u,
# since their kernels accumulate in float32 and the output rounding dominates. float64: 1e-7,
# because float64 arrays are often float32 results upcast (metrics, saved logs); a float64 port
# itself differs by ~1e-14, so every bug the float32 rule catches is caught with room to spare.
AUTO_TOLERANCES = {
    "float64": (1e-7, 1e-7, 1e-12, 1e-7),
    "float32": (1e-4, 1e-4, 1e-7, 1e-4),
    "float16": (1e-2, 1e-2, 1e-4, 5e-3),
    "bfloat16": (5e-2, 5e-2, 1e-3, 2e-2),
}
CONTEXT_ULPS = 256.0  # floor = CONTEXT_ULPS * u * context (measured noise: <= 21 u * context)
FLIP_SHARE = 1e-3  # at most this share of a gradient's elements may be near-tie flips (at least one)
EXPLAINED_FACTOR = 4.0  # later comparisons allow this many times the error a flip explained
CALIBRATION_K = 10.0  # a calibrated layer allows this many times its measured noise
CARRY_FACTOR = 2.0  # a comparison may carry this many times the largest difference passed before it
_SEED_DEFAULT_RTOL = 1e-7  # the rtol the seeds print when a user sets only atol


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    auto: bool  # True: scale-aware default rule; False: the user's exact atol/rtol
    l2: Optional[float] = None
    floor: float = 0.0
    source: str = "user"
    context: float = 0.0  # the magnitude the floor was (or, for the user's tolerance, would be) derived from
    flip_share: float = 0.0  # share of near-tie flips tolerated (backward gradients only)
    explained: Tuple[float, float] = (0.0, 0.0)  # (scaled max, rel-L2) explained upstream by a tolerated flip
    noise: Optional[object] = None  # the layer's calibrated noise (calibrate.LayerNoise)
    noise_k: float = 0.0
    carried: Tuple[float, float] = (0.0, 0.0)  # (scaled max, rel-L2) passed by the calls before (forward)
    # (atol, rtol) the user set, accepted on top of the auto rule (compare_mode "auto"): a tensor
    # whose every element is within atol + rtol * |b| passes whatever the rule says.
    allowance: Optional[Tuple[float, float]] = None

    def describe(self) -> str:
        if self.auto:
            return (f"auto {self.source}: rtol={self.rtol:g}, atol={self.atol:g} x scale, rel-L2 <= {self.l2:g}"
                    + self.allowance_text())
        return f"rtol={self.rtol:g}, atol={self.atol:g}"

    def allowance_text(self) -> str:
        if self.allowance is None:
            return ""
        return f"; or within your atol={self.allowance[0]:g}, rtol={self.allowance[1]:g}"


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


def tolerance_for(options, dtype_a: str, dtype_b: str, path: str = "", *, stage: Optional[str] = None,
                  context: Optional[float] = None, explained: Optional[Tuple[float, float]] = None,
                  near_ties: bool = True, carried: Optional[Tuple[float, float]] = None) -> Tolerance:
    """Tolerance for one compared tensor. The user's atol/rtol (per layer path, else per dtype,
    else global) are the whole rule under ``compare_mode="strict"`` (and the mean modes); by
    default (``"auto"``) they are an ``allowance`` on top of the auto rule of the
    lower-precision dtype, which applies alone when the user set none.

    Optional facts about the comparison, used only by the auto rule: ``stage`` ("forward",
    "backward", "grad", "weight"; picks the calibrated noise, and "backward" tolerates
    near-tie flips), ``context`` (the magnitude of the values the tensor was computed from,
    e.g. the largest gradient of the backward pass: sets the floor) and ``explained`` (the
    scaled max and relative L2 error that a tolerated flip upstream accounts for, from
    :func:`explained_error`); ``near_ties=False`` tolerates no near-tie flip (the call's
    forward output differs: a gradient there that is zero in one model only is the forward
    difference's doing); ``carried`` (the scaled max and relative L2 error the comparisons
    before this one, in the same pass, passed with: allowed ``CARRY_FACTOR`` times)."""
    known = float(context) if context is not None and math.isfinite(context) else 0.0
    keys = sorted({_dtype_key(dtype_a), _dtype_key(dtype_b)},
                  key=lambda k: list(AUTO_TOLERANCES).index(k))
    loosest = keys[-1]
    user = _user_tolerance(options, path, loosest)
    allowance = None
    if user is not None:
        atol, rtol, source = user
        if options.compare_mode != "auto":
            return Tolerance(atol, rtol, False, source=source, context=known)
        allowance = (atol, rtol)
    rtol, atol, floor, l2 = AUTO_TOLERANCES[loosest]
    source = loosest
    if context is not None and math.isfinite(context):
        floor = CONTEXT_ULPS * UNIT_ROUNDOFF[loosest] * float(context)
    explained = tuple(float(x) for x in explained) if explained else (0.0, 0.0)
    if max(explained) > 0 and all(math.isfinite(x) for x in explained):
        atol, l2 = max(atol, EXPLAINED_FACTOR * explained[0]), max(l2, EXPLAINED_FACTOR * explained[1])
    else:
        explained = (0.0, 0.0)
    carried = tuple(float(x) for x in carried) if carried else (0.0, 0.0)
    if all(math.isfinite(x) for x in carried) and (CARRY_FACTOR * carried[0] > atol or CARRY_FACTOR * carried[1] > l2):
        atol, l2 = max(atol, CARRY_FACTOR * carried[0]), max(l2, CARRY_FACTOR * carried[1])
    else:
        carried = (0.0, 0.0)
    noise, k = None, 0.0
    calibration = getattr(options, "calibration", None)
    if calibration is not None:
        noise = calibration.noise_for(path, stage)
        if noise is not None:
            k = calibration.k
            atol, l2 = max(atol, k * noise.max_scaled), max(l2, k * noise.rel_l2)
            source = f"{loosest}, calibrated"
    return Tolerance(atol, rtol, True, l2=l2, floor=floor, source=source, context=float(context or 0.0),
                     flip_share=FLIP_SHARE if stage == "backward" and near_ties else 0.0,
                     explained=explained, noise=noise, noise_k=k, allowance=allowance, carried=carried)


def _user_tolerance(options, path: str, loosest: str) -> Optional[Tuple[float, float, str]]:
    """The (atol, rtol, source) the user set for this tensor: per layer path, then per dtype,
    then globally (a missing one of the two is 0 / the seeds' 1e-7); None when none is set."""
    def pick(atol, rtol, source):
        return (atol if atol is not None else 0.0, rtol if rtol is not None else _SEED_DEFAULT_RTOL, source)

    for pattern, atol, rtol in options.layer_tolerances:
        if fnmatch.fnmatchcase(path, pattern) or path.endswith("." + pattern) or path == pattern:
            return pick(atol, rtol, f"layer {pattern}")
    for dtype, atol, rtol in options.dtype_tolerances:
        if _dtype_key(dtype) == loosest:
            return pick(atol, rtol, f"dtype {dtype}")
    if options.atol is not None or options.rtol is not None:
        return pick(options.atol, options.rtol, "user")
    return None


def rounding_tolerance(dtype_a: str, dtype_b: str, context: float = 0.0,
                       explained: Tuple[float, float] = (0.0, 0.0)) -> Tolerance:
    """The default rule for a tensor, whatever tolerance the user chose: what rounding alone
    may leave (used to find where a divergence starts, apart from the verdict)."""
    keys = sorted({_dtype_key(dtype_a), _dtype_key(dtype_b)}, key=lambda k: list(AUTO_TOLERANCES).index(k))
    rtol, atol, floor, l2 = AUTO_TOLERANCES[keys[-1]]
    if context and math.isfinite(context):
        floor = CONTEXT_ULPS * UNIT_ROUNDOFF[keys[-1]] * float(context)
    if max(explained) > 0:
        atol, l2 = max(atol, EXPLAINED_FACTOR * explained[0]), max(l2, EXPLAINED_FACTOR * explained[1])
    return Tolerance(atol, rtol, True, l2=l2, floor=floor, source=keys[-1], context=float(context or 0.0),
                     explained=tuple(explained))


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
    mismatched: int = 0  # elements over tolerance (near-tie flips included)
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
    scale: float = 0.0  # the magnitude the auto rule judged errors against (largest |value|)
    flips: int = 0  # elements left out of the verdict as near-tie flips (zero in one model only)
    by_allowance: bool = False  # failed the auto rule, passed within the user's own atol/rtol
    rel_l2_rest: float = 0.0  # relative L2 error without the flipped elements
    rms_error: float = 0.0  # root mean square of the error without the flipped elements
    broadcast: Tuple[int, ...] = ()  # the shape both were compared at, when only size-1 dimensions differ
    permuted: Tuple[int, ...] = ()  # the order the tested tensor's axes were compared in, when it differs
    # problem "nan": per model (tested, reference), (count, "NaN" or "Inf", index of the first) or None
    nonfinite: Tuple[Optional[Tuple[int, str, Tuple[int, ...]]], ...] = ()
    nonfinite_same: bool = False  # both models hold the same non-finite values at the same places

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        if self.problem is not None:
            head = self.message().splitlines()[0] if self.message() else self.problem
            return f"TensorDiff(passed={self.passed}, problem={self.problem!r}: {head})"
        return (f"TensorDiff(passed={self.passed}, shape={list(self.shape_b)}, max_abs={self.max_abs:.3g}, "
                f"max_rel={self.max_rel:.3g}, rel_l2={self.rel_l2:.3g}, mismatched={self.mismatched}/{self.numel})")

    @property
    def share_over(self) -> float:
        return self.mismatched / self.numel if self.numel else 0.0

    @property
    def max_scaled(self) -> float:
        """The greatest absolute difference relative to the tensor's scale."""
        return self.max_abs / self.scale if self.scale > 0 else (0.0 if self.max_abs == 0 else math.inf)

    def tolerance_use(self) -> Tuple[float, str]:
        """How much of the allowed error this comparison used (1.0 = at the limit) and the
        criterion that bound, computed by the rule that decided: "elementwise" (the greatest
        difference against what was allowed at its element), "relative L2" (the whole tensor),
        or "rounding floor" (the whole tensor, where the floor, not the relative L2 limit,
        allowed more: a gradient of rounding noise). Infinite when figures are missing."""
        if self.problem is not None:
            return math.inf, self.problem
        uses = []
        if not self.flips:  # flipped elements are outside the verdict; the rest is judged as a whole
            uses.append((self.max_abs / self.allowed_at_max if self.allowed_at_max > 0 else
                         (0.0 if self.max_abs == 0 else math.inf), "elementwise"))
        tol = self.tolerance
        if tol is not None and tol.auto and tol.l2:
            by_l2 = self.rel_l2_rest / tol.l2
            by_floor = self.rms_error / tol.floor if tol.floor > 0 else (0.0 if self.rms_error == 0 else math.inf)
            uses.append((by_l2, "relative L2") if by_l2 <= by_floor else (by_floor, "rounding floor"))
        return max(uses, key=lambda u: u[0], default=(0.0, "elementwise"))

    @property
    def within_noise(self) -> Optional[bool]:
        """With a calibration: whether the difference lies within ``k`` times the noise the
        calibration measured for this layer (None without one)."""
        tol = self.tolerance
        if tol is None or tol.noise is None or self.problem is not None:
            return None
        return (self.max_scaled <= tol.noise_k * tol.noise.max_scaled
                and self.rel_l2 <= tol.noise_k * tol.noise.rel_l2)

    def message(self, labels: Tuple[str, str] = ("tested", "reference")) -> str:
        """The torch-style mismatch message a user reads. ``labels`` name the two models (the
        tested one first, as compared): "Shapes differ: [4, 20] (paddle) vs [4, 30] (torch)."."""
        la, lb = labels
        if self.problem == "shape":
            return f"Shapes differ: {list(self.shape_a)} ({la}) vs {list(self.shape_b)} ({lb})."
        if self.problem == "nan" and self.nonfinite:
            where = [f"the {label} model's value holds {n} {kind} (first at index {first})"
                     for label, found in zip(labels, self.nonfinite) if found for n, kind, first in [found]]
            text = ("; ".join(where) + ". " + ("Both models agree on where they are, but a" if self.nonfinite_same
                                                else "A")
                    + " non-finite value makes every later comparison meaningless: look at this layer's inputs "
                      "and weights.")
            return text[0].upper() + text[1:]
        if self.problem == "value" and not self.detail:
            return f"Values differ: {self.value_a!r} ({la}) vs {self.value_b!r} ({lb})."
        if self.problem in ("nan", "type", "value", "structure"):
            return self.detail
        tol = self.tolerance
        lines = []
        if tol is not None:
            lines.append(f"Not equal to tolerance rtol={tol.rtol:g}, atol={tol.atol:g}"
                         + (" (x scale, auto)" if tol.auto else "") + tol.allowance_text())
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
        lines.extend(self.notes())
        return "\n".join(lines)

    def broadcast_note(self) -> str:
        """The line that says two shapes were compared by broadcasting ("" when they were not)."""
        if not self.broadcast:
            return ""
        return (f"Shapes {list(self.shape_a)} vs {list(self.shape_b)} differ only where one model has a "
                f"dimension of size 1: compared after broadcasting both to {list(self.broadcast)}.")

    def notes(self):
        """Lines that say what else the auto rule took into account: near-tie flips, an error
        explained upstream, a calibration (empty otherwise, and for exact tolerances)."""
        tol = self.tolerance
        out = [self.broadcast_note()] if self.broadcast and self.problem is None else []
        if self.permuted and self.problem is None:
            out.append(f"Shapes {list(self.shape_a)} vs {list(self.shape_b)} hold the same axes in another order: "
                       f"compared after moving the tested model's axes to the order {list(self.permuted)}.")
        if tol is None or not tol.auto or self.problem is not None or not self.numel:
            return out
        if self.flips:
            out.append(f"{self.flips} element(s) are exactly zero in one model and not in the other: a ReLU, "
                       "max-pool or clip whose input sits within rounding of its kink took the other branch. "
                       f"They are left out of the verdict (rest: relative L2 error {_fmt(self.rel_l2_rest)}); "
                       "the comparisons after this one allow the difference they cause.")
        if max(tol.explained) > 0:
            out.append(f"Tolerance widened to {EXPLAINED_FACTOR:g} x the difference that a near-tie flip tolerated "
                       f"earlier in the backward pass explains ({_fmt(tol.explained[0])} x scale, relative L2 "
                       f"{_fmt(tol.explained[1])}).")
        if max(tol.carried) > 0:
            out.append(f"Tolerance widened to {CARRY_FACTOR:g} x the difference the calls before this one carried "
                       f"({_fmt(tol.carried[0])} x scale, relative L2 {_fmt(tol.carried[1])}): rounding differences "
                       "grow along the network; a bug makes them jump.")
        if tol.noise is not None:
            n = tol.noise
            inside = self.within_noise
            out.append(f"Measured noise of this layer ({n.reference} calibration): {_fmt(n.max_scaled)} x scale, "
                       f"relative L2 {_fmt(n.rel_l2)}; this difference is "
                       + (f"within {tol.noise_k:g} x the measured noise." if inside else
                          f"above {tol.noise_k:g} x the measured noise."))
        return out


def _fmt(x) -> str:
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g}"
    return str(x)


def _index(flat_index: int, shape) -> Tuple[int, ...]:
    """``numpy.unravel_index`` in plain Python (a few times faster on one index)."""
    if not shape or 0 in shape:  # a scalar, or an empty tensor: no element to point at
        return ()
    flat, out = int(flat_index), []
    for size in reversed(shape):
        flat, i = divmod(flat, int(size))
        out.append(i)
    return tuple(reversed(out))


def broadcast_shape(shape_a, shape_b) -> Optional[Tuple[int, ...]]:
    """The larger of two shapes of the same rank that differ only where the other has a size-1
    dimension (``[2, 6, 8]`` and ``[1, 6, 8]``: a port that keeps a batch dimension of 1 where
    the reference expands it); None for any other pair of different shapes."""
    if len(shape_a) != len(shape_b) or tuple(shape_a) == tuple(shape_b):
        return None
    if all(x == y or y == 1 for x, y in zip(shape_a, shape_b)):
        return tuple(shape_a)
    if all(x == y or x == 1 for x, y in zip(shape_a, shape_b)):
        return tuple(shape_b)
    return None


def _permuted(a: np.ndarray, b: np.ndarray, tol, mode, dtype_a, dtype_b) -> Optional["TensorDiff"]:
    """``a`` and ``b`` hold the same axes in another order (a port that normalises q per head
    before moving the head axis, [B, S, H, D] against [B, H, S, D]): compared after moving
    ``a``'s axes to ``b``'s order; where several orders fit, the one that agrees best. None
    when no order of ``a``'s axes gives ``b``'s shape."""
    if a.ndim != b.ndim or a.ndim > 6 or sorted(a.shape) != sorted(b.shape):
        return None
    orders = [p for p in itertools.permutations(range(a.ndim)) if tuple(a.shape[i] for i in p) == tuple(b.shape)]
    best = None
    for p in orders[:24]:
        d = compare_arrays(np.transpose(a, p), b, tol, mode, dtype_a, dtype_b)
        if best is None or (d.passed, -(d.rel_l2 if d.rel_l2 == d.rel_l2 else np.inf)) > \
                (best.passed, -(best.rel_l2 if best.rel_l2 == best.rel_l2 else np.inf)):
            best, best.permuted = d, p
    return best


def compare_arrays(a: np.ndarray, b: np.ndarray, tol: Tolerance, mode: str = "strict",
                   dtype_a: str = "", dtype_b: str = "", broadcast: bool = False,
                   layout: bool = False) -> TensorDiff:
    """Compare ``a`` (the model under test) against ``b`` (the reference). With ``broadcast``,
    shapes that differ only in size-1 dimensions (:func:`broadcast_shape`) are compared at the
    larger shape; with ``layout``, shapes that hold the same axes in another order are
    compared after moving ``a``'s axes (:func:`_permuted`); any other shape difference is a
    ``shape`` problem."""
    a = np.asarray(a)
    b = np.asarray(b)
    if mode == "auto":  # elementwise; the tolerance says what the user's atol/rtol add
        mode = "strict"
    dtype_a = dtype_a or str(a.dtype)
    dtype_b = dtype_b or str(b.dtype)
    base = dict(shape_a=tuple(a.shape), shape_b=tuple(b.shape), dtype_a=dtype_a, dtype_b=dtype_b,
                tolerance=tol, mode=mode)
    if a.shape != b.shape:
        if not (a.size == b.size and a.size == 1):
            return _compare_shapes(a, b, tol, mode, base, broadcast, layout)
        a, b = a.reshape(()), b.reshape(())
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        return _compare_integers(a, b, base)
    # Work in float32 unless a side is float64: the figures need no more, and every pass over
    # a large tensor costs memory bandwidth (this function is most of padiff's time).
    work = np.float64 if np.float64 in (a.dtype, b.dtype) or a.dtype.kind == "c" or b.dtype.kind == "c" \
        else np.float32
    if a.size > BLOCK and mode == "strict" and a.dtype.kind == "f" and b.dtype.kind == "f":
        found = _compare_blocks(a.reshape(-1), b.reshape(-1), tol, work, a.shape, base)
        if found is not None:
            return found
    a, b = loaded(a, 0, BLOCK), loaded(b, 1, BLOCK)  # a small spilled record: read from its file
    af = a.astype(work, copy=False).reshape(-1)
    bf = b.astype(work, copy=False).reshape(-1)
    n = int(af.size)
    if mode not in ("mean", "abs_mean") and n == 0:
        return TensorDiff(True, numel=0, **base)
    bufs = scratch.take(n, work)  # reused working memory for a large comparison
    try:
        err = np.subtract(af, bf, out=bufs[0] if bufs else None)
        np.abs(err, out=err)
        i_abs = int(err.argmax()) if n else 0
        if n and not np.isfinite(err[i_abs]):
            return _nonfinite_diff(af, bf, a.shape, base)
        if mode in ("mean", "abs_mean"):
            return _compare_means(af, bf, tol, mode, a.shape, b.shape, dtype_a, dtype_b)
        return _compare_floats(af, bf, err, i_abs, tol, work, a.shape, base, bufs)
    finally:
        scratch.give(bufs)


def _compare_shapes(a, b, tol, mode, base, broadcast, layout) -> TensorDiff:
    """Arrays of different shapes: compared at the broadcast shape (``broadcast``), or with
    ``a``'s axes reordered (``layout``), else a ``shape`` problem."""
    wide = broadcast_shape(a.shape, b.shape) if broadcast and mode == "strict" else None
    if wide is not None:
        d = compare_arrays(np.broadcast_to(a, wide), np.broadcast_to(b, wide), tol, mode,
                           base["dtype_a"], base["dtype_b"])
        d.shape_a, d.shape_b, d.broadcast = base["shape_a"], base["shape_b"], wide
        return d
    found = _permuted(a, b, tol, mode, base["dtype_a"], base["dtype_b"]) if layout else None
    if found is not None:
        found.shape_a, found.shape_b = base["shape_a"], base["shape_b"]
        return found
    return TensorDiff(False, problem="shape", numel=int(b.size), **base)


def _compare_integers(a, b, base) -> TensorDiff:
    """Integer and boolean arrays are equal or not: no tolerance applies."""
    diff = a.astype(np.int64) != b.astype(np.int64)
    n = int(diff.sum())
    idx = _index(int(np.argmax(diff)) if n else 0, a.shape)
    return TensorDiff(n == 0, numel=int(a.size), mismatched=n,
                      max_abs=float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0,
                      max_abs_index=idx, max_rel_index=idx, **base)


def _nonfinite_diff(af, bf, shape, base) -> TensorDiff:
    """A ``nan`` problem: where each model holds NaN or Inf, and whether they hold the same."""
    bad_a, bad_b = ~np.isfinite(af), ~np.isfinite(bf)
    same = np.array_equal(bad_a, bad_b) and np.array_equal(af[bad_a], bf[bad_b], equal_nan=True)
    found = []
    for bad, arr in ((bad_a, af), (bad_b, bf)):
        found.append((int(bad.sum()), "NaN" if np.isnan(arr[bad]).any() else "Inf",
                      _index(int(np.argmax(bad)), shape)) if bad.any() else None)
    d = TensorDiff(False, problem="nan", numel=int(af.size), nonfinite=tuple(found), nonfinite_same=bool(same),
                   **base)
    d.detail = d.message()
    return d


def _compare_means(af, bf, tol, mode, shape_a, shape_b, dtype_a, dtype_b) -> TensorDiff:
    """The ``mean`` and ``abs_mean`` modes: the two means compared as scalars."""
    n = int(af.size)
    va = float(np.mean(np.abs(af), dtype=np.float64)) if mode == "abs_mean" else \
        float(np.mean(af, dtype=np.float64)) if n else 0.0
    vb = float(np.mean(np.abs(bf), dtype=np.float64)) if mode == "abs_mean" else \
        float(np.mean(bf, dtype=np.float64)) if n else 0.0
    d = compare_arrays(np.asarray(va), np.asarray(vb), tol, "strict", dtype_a, dtype_b)
    d.mode, d.value_a, d.value_b = mode, va, vb
    d.shape_a, d.shape_b = tuple(shape_a), tuple(shape_b)
    return d


def _compare_floats(af, bf, err, i_abs, tol, work, shape, base, bufs=None) -> TensorDiff:
    """The elementwise rule on finite flat arrays (``err`` = ``|af - bf|``, largest at ``i_abs``),
    then the relative-L2 rule, near-tie flips and the user's allowance (module docstring).
    ``bufs``: working buffers of ``err``'s size from :mod:`scratch` (``err`` is the first)."""
    n = int(af.size)
    mag_b = np.abs(bf, out=bufs[1] if bufs else None)
    scale = float(max(af.max(), -af.min(), mag_b.max()))
    over, mismatched, rel, allowed_at_max = _over_tolerance(err, mag_b, i_abs, tol, scale, work,
                                                            bufs[2] if bufs else None)
    max_rel, i_rel = _max_relative(err, mag_b, rel)
    if work is np.float32 and scale < 1e-15:  # squares of values this small underflow in float32
        af, bf, err = af.astype(np.float64), bf.astype(np.float64), err.astype(np.float64)
    norm_b = math.sqrt(float(np.dot(bf, bf)))
    norm_a = math.sqrt(float(np.dot(af, af)))
    err_norm = math.sqrt(float(np.dot(err, err)))
    rel_l2, cosine = _relative(err_norm, norm_b), _cosine(float(np.dot(af, bf)), norm_a, norm_b)
    flips, (rest_err, rest_b, rest_n) = 0, (err_norm, norm_b, n)
    if mismatched and tol.auto and tol.flip_share > 0:
        flips, rest = _near_tie_flips(af, bf, err, over, mismatched, tol)
        rest_err, rest_b, rest_n = rest or (rest_err, rest_b, rest_n)
    passed = mismatched == flips and _l2_holds(tol, rest_err, rest_b, rest_n)
    by_allowance = False
    if not passed and tol.auto and tol.allowance is not None:
        by_allowance, mismatched = _within_allowance(err, mag_b, over, mismatched, tol.allowance, work)
        passed = by_allowance
    return TensorDiff(
        passed, numel=n, mismatched=mismatched, max_abs=float(err[i_abs]), max_abs_index=_index(i_abs, shape),
        max_rel=max_rel, max_rel_index=_index(i_rel, shape), cosine=cosine, rel_l2=rel_l2,
        allowed_at_max=allowed_at_max, value_a=float(af[i_abs]), value_b=float(bf[i_abs]), scale=scale,
        flips=flips, by_allowance=by_allowance,
        rel_l2_rest=_relative(rest_err, rest_b), rms_error=rest_err / math.sqrt(rest_n) if rest_n else 0.0,
        **base)


def _relative(err_norm: float, norm_b: float) -> float:
    """The relative L2 error of an error norm against the reference's norm."""
    return err_norm / norm_b if norm_b > 0 else (0.0 if err_norm == 0 else math.inf)


def _cosine(dot_ab: float, norm_a: float, norm_b: float) -> float:
    if norm_a > 0 and norm_b > 0:
        return min(1.0, dot_ab / (norm_a * norm_b))
    return 1.0 if norm_a == norm_b else 0.0


def _l2_holds(tol: Tolerance, err_norm: float, norm_b: float, n: int) -> bool:
    """The auto rule's whole-tensor part: many small errors that together are too large for
    rounding alone fail (true for an exact tolerance)."""
    if tol.auto and tol.l2 is not None and err_norm > tol.l2 * norm_b:
        return err_norm <= tol.floor * math.sqrt(n)
    return True


def _absolute(tol: Tolerance, scale: float) -> float:
    """The absolute part of the elementwise allowance: an element within it passes whatever
    its rtol share."""
    return max(tol.atol * scale, tol.floor) if tol.auto else tol.atol


def _allowed_at(tol: Tolerance, mag, absolute: float) -> float:
    """What the elementwise rule allows at an element whose reference magnitude is ``mag`` (a
    scalar of the working dtype), the user's allowance included."""
    allowed = float(tol.rtol * mag + absolute)
    user = tol.allowance if tol.auto else None
    if user is not None:
        allowed = max(allowed, float(user[1] * mag + user[0]))
    return allowed


# A large comparison that passes (every element within the absolute allowance: the common
# case) is worked out BLOCK elements at a time, each block's dozen passes in the CPU's cache
# rather than over the whole arrays in memory, and in three buffers of BLOCK elements rather
# than of the arrays' size (1 Mi elements of float32: 4.3 ms -> 2.8 ms). Anything else (an
# element over it, NaN/Inf, values too small to square in float32, the user's allowance) is
# compared whole, as below.
BLOCK = 1 << 16


def _block_figures(a, b, work):
    """``(max_abs, i_abs, max_rel, i_rel, scale, sums, values)`` of two flat float arrays, worked
    out block by block (``sums``: the dot products err.err, b.b, a.a, a.b; ``values``: both
    arrays' values at ``i_abs``, in the working dtype); None at NaN/Inf."""
    bufs = scratch.take(BLOCK, work)
    err_b, mag_b, rel_b = bufs[:3] if bufs else [np.empty(BLOCK, work) for _ in range(3)]
    max_abs, i_abs, max_rel, i_rel, scale, at_max = -1.0, 0, -1.0, 0, 0.0, (0.0, 0.0)
    ee = bb = aa = ab = 0.0
    blocks = zip(range(0, int(a.size), BLOCK), read_blocks(a, BLOCK, 0), read_blocks(b, BLOCK, 1))
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            for start, xa, yb in blocks:
                x = xa.astype(work, copy=False)
                y = yb.astype(work, copy=False)
                k = int(x.size)
                e, m, r = err_b[:k], mag_b[:k], rel_b[:k]
                np.subtract(x, y, out=e)
                np.abs(e, out=e)
                i = int(e.argmax())
                v = float(e[i])
                if not math.isfinite(v):
                    return None  # NaN/Inf: the whole arrays say where
                if v > max_abs:  # the two values too: a spilled record's block is gone after this one
                    max_abs, i_abs, at_max = v, start + i, (x[i], y[i])
                np.abs(y, out=m)
                scale = max(scale, float(x.max()), -float(x.min()), float(m.max()))
                np.divide(e, m, out=r)
                j = int(r.argmax())
                w = float(r[j])
                if math.isnan(w):  # 0/0 is no error: the NaN-skipping maximum
                    w = float(np.fmax.reduce(r))
                    j = int((r == w).argmax()) if not math.isnan(w) else 0
                if w > max_rel:
                    max_rel, i_rel = w, start + j
                ee += float(np.dot(e, e))
                bb += float(np.dot(y, y))
                aa += float(np.dot(x, x))
                ab += float(np.dot(x, y))
    finally:
        scratch.give(bufs)
    return max_abs, i_abs, max(max_rel, 0.0), i_rel, scale, (ee, bb, aa, ab), at_max


def _compare_blocks(a, b, tol, work, shape, base) -> Optional[TensorDiff]:
    """The figures of two flat float arrays compared block by block, or None when the
    comparison needs the whole arrays (see ``BLOCK``)."""
    found = _block_figures(a, b, work)
    if found is None:
        return None
    n = int(a.size)
    max_abs, i_abs, max_rel, i_rel, scale, (ee, bb, aa, ab), (va, vb) = found
    if work is np.float32 and scale < 1e-15:
        return None  # squares of values this small underflow in float32
    absolute = _absolute(tol, scale)
    if max_abs > absolute:
        return None  # elements over the elementwise tolerance: counted, flips and all, on the whole arrays
    norm_a, norm_b, err_norm = math.sqrt(aa), math.sqrt(bb), math.sqrt(ee)
    passed = _l2_holds(tol, err_norm, norm_b, n)
    if not passed and tol.auto and tol.allowance is not None:
        return None  # the user's allowance is read element by element
    rel_l2 = _relative(err_norm, norm_b)
    return TensorDiff(
        passed, numel=n, mismatched=0, max_abs=max_abs, max_abs_index=_index(i_abs, shape),
        max_rel=max_rel, max_rel_index=_index(i_rel, shape), cosine=_cosine(ab, norm_a, norm_b), rel_l2=rel_l2,
        allowed_at_max=_allowed_at(tol, abs(vb), absolute), value_a=float(va), value_b=float(vb), scale=scale,
        rel_l2_rest=rel_l2, rms_error=err_norm / math.sqrt(n), **base)


def _over_tolerance(err, mag_b, i_abs, tol, scale, work, free=None):
    """``(over, mismatched, rel, allowed_at_max)``: the mask of elements over the elementwise
    tolerance (None when none is), their count, a free buffer of ``err``'s size (``free``
    when given), and what was allowed at the greatest difference."""
    # Every element within the absolute allowance passes whatever its rtol share: then the
    # elementwise allowance need not be built (the common case, and three passes fewer).
    absolute = _absolute(tol, scale)
    allowed_at_max = _allowed_at(tol, mag_b[i_abs], absolute)
    if float(err[i_abs]) <= absolute:
        return None, 0, free if free is not None else np.empty_like(err), allowed_at_max
    allowed = np.multiply(mag_b, tol.rtol, dtype=work, out=free)
    allowed += absolute
    over = err > allowed
    return over, int(np.count_nonzero(over)), allowed, allowed_at_max  # allowed's buffer is free again


# Up to this many elements, looking for a zero divisor costs less than numpy's errstate
# (about 10 us a comparison, most of a small one's cost).
_QUIET_DIVIDE = 1 << 14


def _max_relative(err, mag_b, rel) -> Tuple[float, int]:
    """The greatest relative difference and its flat index, computed into the buffer ``rel``."""
    if err.size <= _QUIET_DIVIDE and float(mag_b.min()) > 0:
        np.divide(err, mag_b, out=rel)  # nothing to divide by zero: no warning to silence
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(err, mag_b, out=rel)  # 0/0 (NaN) is no error; x/0 is infinitely relative
    i = int(rel.argmax())  # the first greatest, or the first NaN when there is one
    if not math.isnan(rel[i]):
        return float(rel[i]), i
    max_rel = float(np.fmax.reduce(rel))  # NaN-skipping maximum
    if math.isnan(max_rel):
        return 0.0, 0
    return max_rel, int((rel == max_rel).argmax())


def _near_tie_flips(af, bf, err, over, mismatched, tol):
    """``(flips, (rest_err, rest_b, rest_n))`` when every element over tolerance is zero in exactly
    one model and they are few enough to be near-tie flips; ``(0, None)`` otherwise."""
    gated = over & ((af == 0) != (bf == 0))
    if int(np.count_nonzero(gated)) != mismatched or mismatched > max(1, int(tol.flip_share * af.size)):
        return 0, None
    keep = ~gated
    return mismatched, (float(np.linalg.norm(err[keep])), float(np.linalg.norm(bf[keep])), int(af.size) - mismatched)


def _within_allowance(err, mag_b, over, mismatched, user, work) -> Tuple[bool, int]:
    """The rule says no; the user's own ``(atol, rtol)`` may still accept every element:
    ``(accepted, elements over both)``."""
    yours = np.multiply(mag_b, user[1], dtype=work)
    yours += user[0]
    if bool(np.all(err <= yours)):
        return True, mismatched
    if over is not None:
        mismatched = int(np.count_nonzero(over & (err > yours)))
    return False, mismatched


def carried_error(diffs, already: Optional[Tuple[float, float]] = None) -> Tuple[float, float]:
    """The (scaled max, relative L2) difference that these passed comparisons carry, merged
    with ``already``: what the comparisons after them in the same pass (forward, or backward
    and parameter gradients) may inherit (``tolerance_for(..., carried=...)``). Failed
    comparisons, problems, mean modes, what only the user's allowance passed, and gradients of
    rounding noise carry nothing."""
    m, l2 = already or (0.0, 0.0)
    for d in diffs:
        if d is None or not d.passed or d.by_allowance or d.problem is not None or not d.numel \
                or d.mode != "strict":
            continue  # what the user's own tolerance let through is not rounding: it carries nothing
        if d.tolerance is not None and d.tolerance.floor > 0 and d.rms_error <= d.tolerance.floor:
            continue  # a gradient of rounding noise (zero in exact arithmetic) carries no difference
        if math.isfinite(d.rel_l2_rest):
            l2 = max(l2, d.rel_l2_rest)
        if not d.flips and math.isfinite(d.max_scaled):
            m = max(m, d.max_scaled)
    return m, l2


def explained_error(diffs, already: Optional[Tuple[float, float]] = None) -> Tuple[float, float]:
    """The (scaled max, relative L2) difference that near-tie flips account for among these
    comparisons, merged with ``already``: what the comparisons after them may carry
    (``tolerance_for(..., explained=...)``)."""
    m, l2 = already or (0.0, 0.0)
    for d in diffs:
        if d is not None and d.passed and d.flips:
            m, l2 = max(m, d.max_scaled), max(l2, d.rel_l2)
    return m, l2


def compare_records(rec_a, rec_b, tol: Tolerance, mode: str, broadcast: bool = False,
                    layout: bool = False) -> TensorDiff:
    """Compare two recorded values (tensors or plain values); ``broadcast``: see
    :func:`compare_arrays`."""
    from ..record.trace import TensorRecord  # local: keeps this module numpy-only at import

    assert isinstance(rec_a, TensorRecord) and isinstance(rec_b, TensorRecord)
    if rec_a.array is None or rec_b.array is None:
        kinds = (rec_a.kind, rec_b.kind)
        if "object" in kinds or "tensor" in kinds or "number" in kinds:
            # Never ``==`` on objects (a cache defines its own ``==``), nor a value against a
            # tensor: callers pair only comparable records (structure.pair_flat); this is the
            # answer for one that does not.
            shown = [f"a {r.dtype} object" if r.kind == "object" else f"a {r.dtype}" if r.kind == "tensor"
                     else repr(r.value) for r in (rec_a, rec_b)]
            return TensorDiff(False, tuple(rec_a.shape), tuple(rec_b.shape), rec_a.dtype, rec_b.dtype, tol, mode,
                              problem="type", detail=f"Not comparable: {shown[0]} vs {shown[1]}.")
        same = type(rec_a.value) is type(rec_b.value) and rec_a.value == rec_b.value
        return TensorDiff(bool(same), (), (), rec_a.dtype, rec_b.dtype, tol, mode, problem=None if same else "value",
                          detail="",
                          value_a=rec_a.value, value_b=rec_b.value)
    d = compare_arrays(rec_a.array, rec_b.array, tol, mode, rec_a.dtype, rec_b.dtype, broadcast, layout)
    d.shape_a, d.shape_b = tuple(rec_a.shape) or d.shape_a, tuple(rec_b.shape) or d.shape_b
    return d
