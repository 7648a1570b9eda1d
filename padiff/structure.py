"""Nested-structure helpers shared by recording and comparing (framework-free).

A nested value (tuples, lists, dicts, namedtuples, dict-like model outputs) is flattened
into ``(id_path, leaf)`` pairs, the id path written the way a user indexes it:
``[0]["logits"]``. Leaves are whatever ``is_leaf`` accepts (tensors) or plain values.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple


def _key_text(key) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    if isinstance(key, str):
        return '["' + key.replace('"', '\\"') + '"]'
    return f"[{key!r}]"


def flatten(obj: Any, is_leaf: Callable[[Any], bool], prefix: str = "") -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = []
    _flatten(obj, is_leaf, prefix, out, depth=0)
    return out


def _flatten(obj, is_leaf, prefix, out, depth):
    if depth > 64:
        out.append((prefix, obj))
        return
    if is_leaf(obj):
        out.append((prefix, obj))
    elif isinstance(obj, dict) or (hasattr(obj, "keys") and hasattr(obj, "__getitem__") and not isinstance(obj, type)):
        try:
            keys = list(obj.keys())
        except TypeError:
            out.append((prefix, obj))
            return
        for key in keys:
            _flatten(obj[key], is_leaf, prefix + _key_text(key), out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _flatten(item, is_leaf, prefix + f"[{i}]", out, depth + 1)
    else:
        out.append((prefix, obj))


def show_id(id_path: str, root: str = "output") -> str:
    return root + id_path if id_path else root
