"""Conversion rules: how the state of one layer class becomes the state of another.

A rule is data plus one small function. ``convert(src, dst)`` receives the source layer's
tensors and the destination's expected names and shapes, both as ordered lists, and
returns, for every destination tensor, the array to write (or raises ``RuleError``
naming the tensor). Users register their own with :func:`register_rule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# (name, array) for the source; (name, shape) for the destination.
SrcState = Sequence[Tuple[str, np.ndarray]]
DstSpec = Sequence[Tuple[str, Tuple[int, ...]]]


class RuleError(Exception):
    """A rule cannot convert this pair; the message names the tensors and shapes."""

    def __init__(self, message: str, src_name: str = "", dst_name: str = ""):
        super().__init__(message)
        self.src_name = src_name
        self.dst_name = dst_name


@dataclass
class Converted:
    dst_name: str
    src_name: str
    array: np.ndarray
    note: str = ""  # "transposed", "renamed", ...
    # Maps a source-layout array to the destination layout (for comparing grads/weights).
    transform: Callable[[np.ndarray], np.ndarray] = staticmethod(lambda a: a)


def _transpose(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T)


def in_order(src: SrcState, dst: DstSpec, *, src_kind: str, dst_kind: str,
             transpose: Sequence[str] = ()) -> List[Converted]:
    """The default rule: the i-th source tensor goes to the i-th destination tensor.
    Source tensors named in ``transpose`` are 2-D and transposed (Linear weights: torch
    stores [out, in], paddle [in, out]), whatever their shape, square ones included."""
    if len(src) != len(dst):
        raise RuleError(
            f"{src_kind} has {len(src)} parameters/buffers ({', '.join(n for n, _ in src) or 'none'}) but "
            f"{dst_kind} has {len(dst)} ({', '.join(n for n, _ in dst) or 'none'})."
        )
    out = []
    for (sname, arr), (dname, dshape) in zip(src, dst):
        flip = sname.rsplit(".", 1)[-1] in transpose and arr.ndim == 2
        expected = tuple(arr.shape[::-1]) if flip else tuple(arr.shape)
        if expected != tuple(dshape):
            raise RuleError(
                f"Shape of param `{sname}` in {src_kind} and param `{dname}` in {dst_kind} is not the same. "
                f"{list(expected)} vs {list(dshape)}" + (" (after transposing the Linear weight)" if flip else ""),
                sname, dname,
            )
        if flip:
            out.append(Converted(dname, sname, _transpose(arr), "transposed", _transpose))
        else:
            out.append(Converted(dname, sname, arr))
    return out


@dataclass(frozen=True)
class Rule:
    src_class: str  # class name, or "*"
    dst_class: str
    convert: Callable[..., List[Converted]]
    cross_framework_only: bool = True
    description: str = ""


_RULES: List[Rule] = []


def register_rule(src_class: str, dst_class: str, convert: Callable[..., List[Converted]],
                  *, cross_framework_only: bool = False, description: str = "") -> None:
    """Register how to copy a ``src_class`` layer (the weight source: the torch model, or
    the first model of one framework) into a ``dst_class`` layer.

    ``convert(src, dst, src_kind=..., dst_kind=...)`` gets ``src`` as ``[(name, ndarray)]``
    and ``dst`` as ``[(name, shape)]`` and returns a list of :class:`Converted`, one per
    destination tensor. Later registrations win over earlier ones.
    """
    _RULES.insert(0, Rule(src_class, dst_class, convert, cross_framework_only, description))


def find_rule(src_class: str, dst_class: str, cross: bool) -> Optional[Rule]:
    for rule in _RULES:
        if rule.cross_framework_only and not cross:
            continue
        if rule.src_class in (src_class, "*") and rule.dst_class in (dst_class, "*"):
            return rule
    return None


def _linear(src, dst, *, src_kind, dst_kind):
    return in_order(src, dst, src_kind=src_kind, dst_kind=dst_kind, transpose=("weight",))


# Shipped rules (torch class -> paddle class). Conv, BatchNorm, LayerNorm, GroupNorm and
# Embedding keep their layouts, so the in-order default serves them.
register_rule("Linear", "Linear", _linear, cross_framework_only=True,
              description="Linear: weight transposed ([out, in] -> [in, out])")
register_rule("NonDynamicallyQuantizableLinear", "Linear", _linear, cross_framework_only=True,
              description="Linear: weight transposed")


def convert_state(src_class: str, dst_class: str, src: SrcState, dst: DstSpec, *, cross: bool,
                  src_kind: str, dst_kind: str) -> List[Converted]:
    rule = find_rule(src_class, dst_class, cross)
    if rule is None:
        return in_order(src, dst, src_kind=src_kind, dst_kind=dst_kind)
    return rule.convert(src, dst, src_kind=src_kind, dst_kind=dst_kind)
