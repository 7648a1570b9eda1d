"""The "Assign weight Failed" report of seeds 001/002, rendered from a WeightPlan."""

from __future__ import annotations

from typing import List

from .tree import HERE, render_tree

HINT = """NOTICE: layer/module will be marked with `(skip)` for:
    1. This layer/module is ignored by the layer_map (the insides of a pair the layer_map
       copies as a whole are not drawn).
    2. This layer/module has no parameter, so padiff thinks it is a wrap layer.
Hint:
    1. Check the definition order of params in layer/module is the same.
    2. Check the corresponding layer/module have the same style:
       param <=> param, buffer <=> buffer, embedding <=> embedding ...
       cases like param <=> buffer, param <=> embedding are not allowed,
       because padiff can not know how to init the parameters.
    3. If you can not change model codes, try to use a `LayerMap`
       which can solve almost any problem: layer_map.auto(model_a, model_b) pairs
       layers by structure; layer_map.map = {layer_a: layer_b} pairs two by hand.
    4. A pair of layer classes whose weights need a conversion can get a rule:
       padiff.register_rule(src_class, dst_class, fn)."""


def registration_tree(title: str, rows, *, show_path=False) -> List[str]:
    """One model's tree from the plan's rows (``TreeRow``: path, class, skip, here), marked as the
    plan decided: ``(skip)`` and ``<---  *** HERE ***``."""
    nodes = {}
    roots = []
    marks = {}
    for row in rows:
        node = {"path": row.path, "name": row.cls, "kids": []}
        nodes[row.path] = node
        parent = row.path.rsplit(".", 1)[0] if "." in row.path else None
        if parent in nodes:
            nodes[parent]["kids"].append(node)
        else:
            roots.append(node)
        mark = " ".join(m for m, on in (("(skip)", row.skip), (HERE, row.here)) if on)
        if mark:
            marks[id(node)] = mark
    lines = [title, "=" * 25]
    for r in roots:
        lines += render_tree(r, lambda n: n["kids"], lambda n: n["name"], marks=marks,
                             path=(lambda n: n["path"]) if show_path else None)
    return lines


def _between(plan) -> List[str]:
    """Both layers (reprs) and both parameter paths of a failed copy, labelled by framework."""
    fail = plan.failure
    lines = []
    for side, unit, name in ((plan.dst, fail.dst_unit, fail.dst_name), (plan.src, fail.src_unit, fail.src_name)):
        if unit is None:
            lines.append(f"    {side.label}: (no layer left to pair)")
            continue
        rep = side.adapter.layer_repr(unit.layer)
        pad = " " * (len(side.label) + 2)
        lines.append(f"    {side.label}: `{rep}`")
        lines.append(f"    {pad}`{unit.path}{'.' + name if name else ''}`")
    return lines


def copy_failure_message(plan) -> List[str]:
    """The whole of a failed copy in a few lines, for the exception: which way the weights
    went, both layers, both parameter paths, and what did not fit."""
    return ([f"Weights could not be copied from the {plan.src.label} model into the {plan.dst.label} model. "
             "The error occurred between:"] + _between(plan) + [plan.failure.message])


def copy_failure_lines(plan, *, first_side, layer_map=None, show_path=False, header: str = "[AutoDiff]") -> List[str]:
    """The "Assign weight Failed" report: both layers, what did not fit, and both trees in the
    user's order (``first_side`` first). ``layer_map`` is not read: the plan's trees already
    show it (the keyword stays for callers that pass it)."""
    src, dst = plan.src, plan.dst
    # "occured": the seeds' report line, kept as they print it (the exception spells it right)
    lines = [f"{header} Assign weight Failed !!!", "Error occured between:"] + _between(plan)
    lines.append(plan.failure.message)
    lines.append("")
    trees = [(src, plan.src_tree), (dst, plan.dst_tree)]
    for side, rows in trees if first_side is src else trees[::-1]:
        lines += registration_tree(side.title, rows, show_path=show_path)
        lines.append("")
    lines += HINT.splitlines()
    return lines


# --- LayerMap.auto ------------------------------------------------------------------------------

HOW = {
    "map": "your LayerMap",
    "name": "name",
    "shape": "kind + shape",
    "structure": "structure",
    "neighbour": "neighbour",
    "order": "order",
    "rule": "conversion rule",
    "similar": "similar block",
    "whole": "as a whole (parts split)",
    "fused": "fused projection",
}


def _table(rows: List[tuple], indent: str = "    ") -> List[str]:
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [str(c).ljust(w) for c, w in zip(r, widths)]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def auto_table_lines(res) -> List[str]:
    """The pairs ``LayerMap.auto`` found and the layers it left alone, for a person to check."""
    lines = [f"[LayerMap.auto] {_n(len(res.pairs), 'pair')} of layers with weights "
             f"({res.first_title} <==> {res.second_title}):"]
    rows = [(f"{res.first_title} layer", "class", f"{res.second_title} layer", "class", "found by")]
    rows += [(p.first_path, p.first_class, p.second_path, p.second_class, HOW.get(p.how, p.how))
             for p in res.pairs]
    lines += _table(rows)
    if res:
        lines.append("[LayerMap.auto] Every layer with weights has a partner.")
    else:
        lines.append(f"[LayerMap.auto] Not paired ({len(res.unpaired_first) + len(res.unpaired_second)}), "
                     "their weights would have no source:")
        rows = [(res.first_title, path, cls, shapes) for path, cls, shapes in res.unpaired_first]
        rows += [(res.second_title, path, cls, shapes) for path, cls, shapes in res.unpaired_second]
        lines += _table(rows)
    lines.append("Check the pairs above. Correct one with layer_map.map = {layer_a: layer_b}; leave a layer out "
                 "with layer_map.ignore(layer) or layer_map.ignore_recursively(layer).")
    return lines


def structure_lines(plan, header: str = "[AutoDiff]", limit: int = 12) -> List[str]:
    """How a plan paired weights by structure, once registration order had not: why order
    failed, how many pairs, and the pairs that are not at the same place in both models."""
    if plan.how != "structure":
        return []
    why = plan.order_failure.message.split(". ")[0].rstrip(".") if plan.order_failure is not None else ""
    rows = [(sp, sc, dp, dc, HOW.get(how, how)) for sp, sc, dp, dc, how in plan.matches
            if sp.split(".", 1)[-1] != dp.split(".", 1)[-1]]
    lines = [f"{header} Registration order does not pair the weights ({why}); paired "
             f"{_n(len(plan.matches), 'layer')} by structure instead (kinds, shapes, names, neighbours)."]
    if rows:
        lines.append(f"{header} {_n(len(rows), 'pair')} at different places in the two models:")
        head = [(f"{plan.src.label} layer", "class", f"{plan.dst.label} layer", "class", "found by")]
        lines += _table(head + rows[:limit])
        if len(rows) > limit:
            lines.append(f"    ... and {len(rows) - limit} more.")
    lines.append(f"{header} Correct a pair with layer_map.map = {{layer_a: layer_b}} if one is wrong.")
    return lines


# --- padiff convert -----------------------------------------------------------------------------

def convert_table_lines(table) -> List[str]:
    """The converter's table: every key, what was done to it, and a summary."""
    src, dst = table.src_framework, table.dst_framework
    lines = [f"[padiff convert] {table.src_path} -> {table.dst_path or '(not written)'} ({table.mode_text})"]
    rows = [(f"{src} key", "shape", "action", f"{dst} key", "shape", "note")]
    for r in table.rows:
        rows.append((r.src_key or "-", _shape(r.src_shape), r.action, r.dst_key or "-", _shape(r.dst_shape),
                     ("guessed: " if r.guessed else "") + r.note))
    lines += _table(rows, indent="  ")
    counts = table.counts()
    lines.append("[padiff convert] " + ", ".join(f"{n} {what}" for what, n in counts.items() if n))
    guessed = [r for r in table.rows if r.guessed]
    if guessed:
        lines.append(f"[padiff convert] {_n(len(guessed), 'key')} converted by a guess from the names "
                     f"({', '.join(r.src_key for r in guessed[:5])}{', ...' if len(guessed) > 5 else ''}); "
                     f"pass the {dst} model (--{dst}-model module:factory) to convert by its layers.")
    missing = [r for r in table.rows if r.action == "unmatched" and r.dst_key]
    if missing:
        lines.append(f"[padiff convert] {_n(len(missing), dst + ' key')} without a source in the checkpoint "
                     f"(they would keep the model's random initial values): "
                     f"{', '.join(r.dst_key for r in missing[:5])}{', ...' if len(missing) > 5 else ''}.")
        if table.mode == f"{dst} model":
            lines.append(f"[padiff convert] The {dst} model's layer names differ from the checkpoint's: give the {src} "
                         f"model too (--{src}-model module:factory) to pair the layers by structure.")
    if table.written:
        files = table.files
        where = files[0] if len(files) == 1 else f"{len(files) - 1} shards and {files[-1]}"
        lines.append(f"[padiff convert] Wrote {where} ({len(table.keys)} keys).")
    elif table.dst_path and not table.keys:
        lines.append(f"[padiff convert] Nothing written to {table.dst_path}: no checkpoint key found a {dst} tensor.")
    return lines


def convert_verify_line(table) -> str:
    """The check after converting: ALIGNED, or where the two models first differ."""
    result = table.verified
    line = (f"[padiff convert] Verify: the {table.src_framework} model loaded from {table.src_path} against the "
            f"{table.dst_framework} model loaded from {table.verified_from}, forward on the inputs: ")
    if result:
        line += "ALIGNED."
    else:
        f = result.first
        line += "NOT ALIGNED: " + (f"the first difference is in {result.ref_label} `{f.ref_path}` / "
                                   f"{result.test_label} `{f.test_path}` ({f.what})." if f is not None else
                                   "see the report above.")
    kept = table.kept_own
    if kept:
        line += (f" ({_n(len(kept), 'key')} of the models in neither checkpoint kept the model's own value: "
                 f"{', '.join(kept[:3])}{', ...' if len(kept) > 3 else ''}.)")
    return line


CSV_COLUMNS = ("source_key", "source_shape", "action", "destination_key", "destination_shape", "note", "guessed")


def write_convert_csv(table, path: str) -> None:
    """The converter's table as CSV, one row per key (shapes as ``32x64``, a 0-d tensor ``()``)."""
    import csv
    import os

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    cell = lambda shape: "" if shape is None else ("x".join(str(d) for d in shape) or "()")
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(CSV_COLUMNS)
        for r in table.rows:
            out.writerow((r.src_key, cell(r.src_shape), r.action, r.dst_key, cell(r.dst_shape), r.note,
                          "yes" if r.guessed else ""))


def _n(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _shape(shape) -> str:
    return "" if shape is None else str(list(shape))
