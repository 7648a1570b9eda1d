"""Tensor-parallel layouts, as rules: which layers are sharded, and along which dim each of
their parameters is.

Megatron-LM's rules, which paddle's fleet classes follow:

* ``column`` (ColumnParallelLinear): the weight and bias are sharded on the output features; the
  output on its last dim (unless the layer gathers it); the input is whole on every rank.
* ``row`` (RowParallelLinear): the weight is sharded on the input features, the bias is whole;
  the input is sharded on its last dim; the output is all-reduced (whole on every rank; when the
  all-reduce comes after the layer, its partial outputs are summed).
* ``vocab`` (VocabParallelEmbedding): the weight is sharded on its rows (the vocabulary); the
  output is all-reduced (or summed, as for ``row``).

A layer's layout comes from the user's ``tp_layout`` (:func:`layout_map`) or from the
framework's tensor-parallel classes (:func:`layer_layout`).
"""

from __future__ import annotations

import fnmatch
from typing import Dict, Optional

from ..errors import PadiffError

LAYOUTS = ("column", "row", "vocab")
_LAYOUT_WORDS = {"column": "column", "col": "column", "colwise": "column", "column_parallel": "column",
                 "row": "row", "rowwise": "row", "row_parallel": "row",
                 "vocab": "vocab", "vocab_parallel": "vocab", "embedding": "vocab",
                 "none": None, "replicated": None}
TITLES = {"column": "column-parallel", "row": "row-parallel", "vocab": "vocab-parallel"}
# The unsharded class a tensor-parallel layer stands for: the weight rules apply to it.
UNSHARDED_CLASS = {"column": "Linear", "row": "Linear", "vocab": "Embedding"}


def layout_map(mapping, what: str = "tp_layout") -> Dict[str, Optional[str]]:
    """A user's ``{layer path pattern: layout}``, checked: layouts are ``column``, ``row``,
    ``vocab`` (or ``none``: not sharded, whatever its class)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise PadiffError(f"{what} must be a dict {{layer path: layout}}, such as {{'mlp.up': 'column', "
                          f"'mlp.down': 'row'}}; got a {type(mapping).__name__}.")
    out = {}
    for key, value in mapping.items():
        word = value.lower().replace("-", "_") if isinstance(value, str) else value
        if not isinstance(key, str) or not key or word not in _LAYOUT_WORDS:
            raise PadiffError(f"{what}[{key!r}] = {value!r}: a layer path (dotted, fnmatch patterns allowed) maps "
                              "to 'column', 'row', 'vocab' or 'none'.")
        out[key] = _LAYOUT_WORDS[word]
    return out


def match_layout(mapping: Dict[str, Optional[str]], path: str, root: str):
    """(key, layout) of the first pattern of ``mapping`` matching the dotted ``path`` (with or
    without the model's root name), or None."""
    rel = path[len(root) + 1:] if path.startswith(root + ".") else path
    for key, layout in mapping.items():
        if fnmatch.fnmatchcase(rel, key) or fnmatch.fnmatchcase(path, key):
            return key, layout
    return None


def layer_layout(ad, layer, path: str, root: str, mapping: Dict[str, Optional[str]]) -> Optional[dict]:
    """The layer table's ``tp`` entry of one layer while dumping: from the user's mapping,
    else from the framework's tensor-parallel classes (by class name); None for others."""
    hit = match_layout(mapping, path, root) if mapping else None
    if hit is not None:
        return {"layout": hit[1], "from": f"tp_layout[{hit[0]!r}]"} if hit[1] else None
    for cls in type(layer).__mro__:  # the class's own name, or a base class's
        layout = ad.parallel_layer_classes.get(cls.__name__)
        if layout is not None:
            return {"layout": layout, "from": f"class {cls.__name__}"}
    return None


def shard_dim(layout: Optional[str], ndim: int, weight_layout: Optional[str]) -> Optional[int]:
    """The dim along which a parameter of a ``layout`` layer is sharded; None when it is whole
    on every rank. ``weight_layout`` is how the framework stores a Linear weight (``out_in``:
    torch, ``in_out``: paddle)."""
    if layout == "column":
        if ndim == 2:
            return 0 if weight_layout == "out_in" else 1
        return 0 if ndim == 1 else None
    if layout == "row":
        return (1 if weight_layout == "out_in" else 0) if ndim == 2 else None
    if layout == "vocab":
        return 0 if ndim == 2 else None
    return None


def unsharded_classes(manifest: dict) -> dict:
    """The manifest with each tensor-parallel layer's class given as the class it stands for
    (``Linear``, ``Embedding``), so the weight rules apply; its own class stays in its repr."""
    if not any(e.get("tp") for e in manifest["layers"]):
        return manifest
    out = dict(manifest)
    out["layers"] = [dict(e, **{"class": UNSHARDED_CLASS[e["tp"]["layout"]], "builtin": True,
                                "repr": f"{e.get('repr', e['class'])} [{TITLES[e['tp']['layout']]}]"})
                     if e.get("tp") else e for e in manifest["layers"]]
    return out
