"""One value as the comparison sees it: a numpy array of numbers, or a plain value; and the words
that name where values come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import PadiffError
from ..frameworks import adapter_for_value, framework_of

MAX_DEPTH = 64  # nesting deeper than this is a structure that contains itself
_NUMBERS = (bool, int, float, complex)


@dataclass
class Leaf:
    """One value as the comparison sees it: a numpy array (numbers) or a plain value."""

    array: Optional[np.ndarray]
    value: Any
    dtype: str  # the framework's dtype name, "python float", "str", ...
    type_name: str  # "paddle.Tensor", "numpy.ndarray", "float", ...
    python: bool = False  # a Python number: no dtype of its own

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.array.shape) if self.array is not None else ()


def is_tensor(x) -> bool:
    ad = adapter_for_value(x)
    return ad is not None and ad.is_tensor(x)


def node_kind(x) -> str:
    """"leaf", "map" or "seq"."""
    if x is None or isinstance(x, (np.ndarray, np.generic, str, bytes) + _NUMBERS) or is_tensor(x):
        return "leaf"
    if isinstance(x, Mapping) or (hasattr(x, "keys") and hasattr(x, "__getitem__") and not isinstance(x, type)):
        return "map"
    if isinstance(x, (list, tuple)):
        return "seq"
    return "leaf"


def as_leaf(x, where: str) -> Leaf:
    ad = adapter_for_value(x)
    if ad is not None and ad.is_tensor(x):
        return _array_leaf(ad.to_numpy(x), ad.dtype_name(x), f"{ad.name}.Tensor")
    if isinstance(x, np.ndarray):
        return _array_leaf(x, str(x.dtype), "numpy.ndarray")
    if isinstance(x, np.generic):
        return _array_leaf(np.asarray(x), str(x.dtype), f"numpy.{type(x).__name__}")
    if isinstance(x, _NUMBERS):
        return Leaf(np.asarray(x), x, f"python {type(x).__name__}", type(x).__name__, python=True)
    if x is None or isinstance(x, (str, bytes)):
        return Leaf(None, x, type(x).__name__, type(x).__name__)
    raise PadiffError(
        f"{where} is a {type(x).__module__}.{type(x).__qualname__}, which padiff cannot compare: it compares "
        "tensors, numpy arrays, numbers and strings, nested in dicts, lists and tuples. Convert this value "
        "to one of those (or leave it out) on both sides."
    )


def _array_leaf(arr: np.ndarray, dtype: str, type_name: str) -> Leaf:
    if arr.dtype.kind not in "biufc":  # strings, objects: compared for equality
        return Leaf(None, arr, dtype, type_name)
    return Leaf(arr, None, dtype, type_name)


def plain_equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and bool(np.all(a == b))
    return type(a) is type(b) and a == b


def _shape_text(shape) -> str:
    return str(list(shape))


def type_word(x) -> str:
    if x is None:
        return "None"
    if is_tensor(x):
        return f"{framework_of(x)}.Tensor"
    if isinstance(x, np.ndarray):
        return "numpy.ndarray"
    return type(x).__name__


def origin(obj) -> str:
    """Where a value's leaves come from: "paddle", "torch", "numpy", "python", or a mix."""
    seen: List[str] = []

    def walk(x, depth):
        kind = node_kind(x)
        if depth > MAX_DEPTH:
            return
        if kind == "map":
            for k in list(x.keys()):
                walk(x[k], depth + 1)
        elif kind == "seq":
            for item in x:
                walk(item, depth + 1)
        else:
            word = (framework_of(x) if is_tensor(x) else "numpy" if isinstance(x, (np.ndarray, np.generic))
                    else "python")
            if word not in seen:
                seen.append(word)

    walk(obj, 0)
    return "+".join(seen) or "empty"


def object_word(obj) -> str:
    """ "paddle DataLoader", "torch LinearLR", "generator", "function lr_at"."""
    fw = framework_of(obj)
    if fw:
        return f"{fw} {type(obj).__name__}"
    if callable(obj) and hasattr(obj, "__name__"):
        return f"function {obj.__name__}"
    return type(obj).__name__
