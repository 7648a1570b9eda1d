"""What a difference looks like, from the values alone: another order, a layout, one channel."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..compare.metrics import TensorDiff, compare_arrays
from ..options import Options


def diagnose(a: np.ndarray, b: np.ndarray, d: TensorDiff, opts: Options) -> str:
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
