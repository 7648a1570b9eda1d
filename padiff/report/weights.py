"""The "Assign weight Failed" report of seeds 001/002, rendered from a WeightPlan."""

from __future__ import annotations

from typing import List

from .tree import HERE, render_tree

HINT = """NOTICE: layer/module will be marked with `(skip)` for:
    1. This layer/module is contained by layer_map (ignored, or mapped and copied as a whole).
    2. This layer/module has no parameter, so padiff thinks it is a wrap layer.
Hint:
    1. Check the definition order of params in layer/module is the same.
    2. Check the corresponding layer/module have the same style:
       param <=> param, buffer <=> buffer, embedding <=> embedding ...
       cases like param <=> buffer, param <=> embedding are not allowed,
       because padiff can not know how to init the parameters.
    3. If you can not change model codes, try to use a `LayerMap`
       which can solve almost any problem (padiff.LayerMap; see the README).
    4. A pair of layer classes whose weights need a conversion can get a rule:
       padiff.register_rule(src_class, dst_class, fn)."""


def registration_tree(side, *, unit_keys, here_key, layer_map=None, show_path=False) -> List[str]:
    from ..weights.assign import layer_tree

    stop = layer_map.stops if layer_map is not None else None
    rows = layer_tree(side, stop)
    nodes = {}
    roots = []
    for depth, key, path, layer in rows:
        node = {"key": key, "path": path, "name": type(layer).__name__, "kids": []}
        nodes[path] = node
        parent = path.rsplit(".", 1)[0] if "." in path else None
        if parent in nodes:
            nodes[parent]["kids"].append(node)
        else:
            roots.append(node)
    marks = {}
    for node in nodes.values():
        mark = ""
        if node["key"] not in unit_keys:
            mark = "(skip)"
        if node["key"] == here_key:
            mark = (mark + " " + HERE).strip()
        if mark:
            marks[id(node)] = mark
    lines = [side.title, "=" * 25]
    for r in roots:
        lines += render_tree(r, lambda n: n["kids"], lambda n: n["name"], marks=marks,
                             path=(lambda n: n["path"]) if show_path else None)
    return lines


def copy_failure_lines(plan, *, first_side, layer_map=None, show_path=False, header: str = "[AutoDiff]") -> List[str]:
    from ..weights.assign import units_of

    fail = plan.failure
    src, dst = plan.src, plan.dst
    lines = [f"{header} Assign weight Failed !!!", "Error occured between:"]
    for side, unit, name in ((dst, fail.dst_unit, fail.dst_name), (src, fail.src_unit, fail.src_name)):
        if unit is None:
            lines.append(f"    {side.label}: (no layer left to pair)")
            continue
        rep = side.adapter.layer_repr(unit.layer)
        pad = " " * (len(side.label) + 2)
        lines.append(f"    {side.label}: `{rep}`")
        lines.append(f"    {pad}`{unit.path}{'.' + name if name else ''}`")
    lines.append(fail.message)
    lines.append("")
    sides = [src, dst] if first_side is src else [dst, src]
    for side in sides:
        unit_keys = {u.key for u in units_of(side, layer_map)}
        unit = fail.src_unit if side is src else fail.dst_unit
        lines += registration_tree(side, unit_keys=unit_keys, here_key=unit.key if unit else None,
                                   layer_map=layer_map, show_path=show_path)
        lines.append("")
    lines += HINT.splitlines()
    return lines
