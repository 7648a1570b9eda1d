"""``LayerMap.auto``'s matching: the layers of two models paired by structure, as data.

The matcher of ``auto.py`` pairs the two trees; this module records the pairs in the LayerMap
and states them in the user's argument order (:class:`AutoResult`), with the layers it left
alone. Printing them is ``report/weights.py``'s (``auto_table_lines``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..side import make_sides
from .assign import Ctx, layer_tree, linear_dims, node_compat, rule_lookup
from .auto import Node, build_tree, match_trees
from .fused import brace


@dataclass
class AutoPair:
    """One pair found by ``LayerMap.auto``, in the user's argument order."""

    first_path: str
    first_class: str
    second_path: str
    second_class: str
    how: str


@dataclass
class AutoResult:
    """What ``LayerMap.auto`` found: true when every layer with weights found a partner."""

    first_title: str
    second_title: str
    pairs: List[AutoPair] = field(default_factory=list)
    unpaired_first: List[Tuple[str, str, str]] = field(default_factory=list)  # (path, class, shapes)
    unpaired_second: List[Tuple[str, str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.unpaired_first and not self.unpaired_second


def _shapes(ad, node: Node) -> str:
    parts = [f"{n} {list(ad.shape(t))}" for n, t, _ in node.tensors[:4]]
    if len(node.tensors) > 4:
        parts.append(f"... ({len(node.tensors)} tensors)")
    if not node.tensors:
        parts.append(f"{node.numel} values")
    return ", ".join(parts)


def auto_pairs(layer_map, a, b) -> AutoResult:
    """Pair the layers of models ``a`` and ``b`` by structure and record the pairs in
    ``layer_map`` (replacing those of an earlier ``auto``); what was found, to be printed."""
    sides, ref_i = make_sides(a, b)
    src, dst = sides[ref_i], sides[1 - ref_i]
    layer_map.clear_auto()
    explicit = layer_map.pairs()
    exclude = frozenset(id(x) for pair in explicit for x in pair)
    ctx = Ctx(src.adapter, dst.adapter, src.adapter.name != dst.adapter.name, layer_map)
    ts = build_tree(src.adapter, src.model, src.name, layer_map, exclude=exclude)
    td = build_tree(dst.adapter, dst.model, dst.name, layer_map, exclude=exclude)
    found = match_trees(ts, td, lambda s, d, whole: node_compat(ctx, s, d, whole), rule_lookup(ctx),
                        linear_dims(ctx))
    layer_map.set_auto([(m.src.layer, m.dst.layer, m.whole or not (m.src.own or m.dst.own)) for m in found.pairs])
    res = AutoResult(sides[0].label, sides[1].label)
    res.pairs += _given_pairs(explicit, sides, src, dst)
    first_is_src = ref_i == 0
    for m in found.pairs:
        f, s = (m.src, m.dst) if first_is_src else (m.dst, m.src)
        res.pairs.append(AutoPair(f.label(), f.cls, s.label(), s.cls, m.how))
    for fm in found.fused:  # not kept in the map: a fused Linear pairs with no single layer
        one = (fm.fused.path, fm.fused.cls)
        many = (brace([p.path for p in fm.parts]), f"{fm.parts[0].cls} x{len(fm.parts)}")
        f, s = (one, many) if fm.fused_is_src == first_is_src else (many, one)
        res.pairs.append(AutoPair(f[0], f[1], s[0], s[1], fm.how))
    for nodes, side in ((found.unpaired_src, src), (found.unpaired_dst, dst)):
        rows = [(n.label(), n.cls, _shapes(side.adapter, n)) for n in nodes]
        if side is sides[0]:
            res.unpaired_first += rows
        else:
            res.unpaired_second += rows
    return res


def _given_pairs(explicit, sides, src, dst) -> List[AutoPair]:
    """The pairs given by hand, in the user's argument order."""
    out = []
    for x, y in explicit:
        xs = _find_path(src, x) or _find_path(dst, x)
        ys = _find_path(src, y) or _find_path(dst, y)
        if _find_path(sides[0], x) is None:
            x, y, xs, ys = y, x, ys, xs
        out.append(AutoPair(xs or "?", type(x).__name__, ys or "?", type(y).__name__, "map"))
    return out


def _find_path(side, layer) -> Optional[str]:
    for _, key, path, l in layer_tree(side):
        if l is layer:
            return path
    return None
