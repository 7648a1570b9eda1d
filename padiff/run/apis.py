"""The user's own functions traced as framework calls (custom ops), registered once for every
later run: the ``PADDLE_THIRDPARTY_API`` environment variable of seed 001, as a function."""

from __future__ import annotations

from typing import List

_REGISTERED_APIS: List[str] = []


def _name(fn) -> str:
    return fn if isinstance(fn, str) else f"{fn.__module__}.{fn.__qualname__}"


def register_api(*functions) -> None:
    """Trace these functions as framework calls too (custom ops): dotted names
    ('paddle3d.ops.iou3d_nms') or the function objects themselves. The same as the
    PADDLE_THIRDPARTY_API environment variable of seed 001."""
    for fn in functions:
        name = _name(fn)
        if name not in _REGISTERED_APIS:
            _REGISTERED_APIS.append(name)


def unregister_api(*functions) -> None:
    for fn in functions:
        name = _name(fn)
        if name in _REGISTERED_APIS:
            _REGISTERED_APIS.remove(name)


def registered_apis():
    return tuple(_REGISTERED_APIS)
