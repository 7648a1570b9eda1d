"""The ranks of one tensor-parallel group, gathered into one unsharded run (:class:`GatheredDump`),
so that a tensor-parallel run is compared with a single-process one, or with a run at another
tensor-parallel degree."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import PadiffError
from ..record.trace import Node, TensorRecord, Trace
from .gathered_record import GatheredRecord, node_records, same_on_ranks
from .parallel_groups import ranks_text
from .reader import Dump, DumpAdapter, LazyRecord
from .tp_layout import TITLES, UNSHARDED_CLASS, layout_map, match_layout, shard_dim


class GatheredAdapter(DumpAdapter):
    """A gathered dump's adapter: a weight's value is its gathered record's (the shards joined)."""

    def to_numpy(self, tensor) -> np.ndarray:
        return self.dump.initial(tensor).array


def _layer_layouts(base: dict, mapping) -> Tuple[Dict[int, Tuple[str, str]], List[str]]:
    """layer index -> (layout, where it was found) for a dump's tensor-parallel layers, the
    user's ``tp_layout`` over what the dump recorded; and the layouts it overrode, in words."""
    root = base["model"]["name"]
    layouts: Dict[int, Tuple[str, str]] = {}
    overridden = []
    for e in base["layers"]:
        found = (e["tp"]["layout"], e["tp"]["from"]) if e.get("tp") else None
        hit = match_layout(mapping, e["path"], root) if mapping else None
        if hit is not None:
            if found and found[0] != hit[1]:
                overridden.append(f"`{e['path']}` ({TITLES.get(found[0])} by its {found[1]}) as "
                                  f"{TITLES.get(hit[1], 'not sharded')}")
            found = (hit[1], f"tp_layout[{hit[0]!r}]") if hit[1] else None
        if found:
            layouts[int(e["index"])] = found
    return layouts, overridden


def _tensor_modes(base: dict, layouts, weight_layout) -> Dict[int, object]:
    """Every parameter's gather mode (``("cat", dim)`` or "whole"), from the layout of the
    layer that owns it."""
    modes: Dict[int, object] = {}
    for e in base["layers"]:
        layout = layouts.get(int(e["index"]), (None,))[0]
        for _, ti in e["params"]:
            if ti in modes:
                continue
            d = shard_dim(layout, len(base["tensors"][ti]["shape"]), weight_layout)
            modes[ti] = ("cat", d) if d is not None else "whole"
    return modes


class GatheredDump(Dump):
    """The ranks of one tensor-parallel group, seen as one unsharded run: parameters gathered by
    their layer's layout, every recorded value made from the ranks' values (:class:`GatheredRecord`).
    Framework calls inside tensor-parallel layers (partial sums, collectives) are left out; the
    layers' own results are compared."""

    def __init__(self, parts: List[Dump], label: str, ranks: Sequence[int], tp_layout=None):
        self.parts = parts
        self.group = list(ranks)
        base = parts[0].manifest
        weight_layout = base.get("linear_weight_layout")
        self.layouts, overridden = _layer_layouts(base, layout_map(tp_layout))
        if self.layouts and weight_layout is None:
            raise PadiffError(f"`{parts[0].path}` was made by an older padiff that did not record how its framework "
                              "stores Linear weights: dump it again to gather its tensor-parallel shards.")
        self.tensor_modes = _tensor_modes(base, self.layouts, weight_layout)
        manifest = dict(base, tensors=self._gathered_tensors(base), layers=self._gathered_layers(base),
                        notes=self._notes(base, label, overridden))
        super().__init__(f"{label} [{ranks_text(self.group)}]", manifest)
        self.adapter = GatheredAdapter(self)
        self._weight_shapes = {}  # layer index -> the local shape of its 2-d weight
        for e in base["layers"]:
            for name, ti in e["params"]:
                if len(base["tensors"][ti]["shape"]) == 2:
                    self._weight_shapes.setdefault(int(e["index"]), tuple(base["tensors"][ti]["shape"]))
        self._weight_layout = weight_layout

    def _gathered_tensors(self, base: dict) -> List[dict]:
        """The manifest's tensor table with each sharded parameter at its gathered shape."""
        tensors = []
        for e in base["tensors"]:
            mode = self.tensor_modes.get(int(e["index"]), "whole")
            shape = list(e["shape"])
            if isinstance(mode, tuple):
                shape[mode[1]] *= len(self.parts)
            tensors.append(dict(e, shape=shape))
        return tensors

    def _gathered_layers(self, base: dict) -> List[dict]:
        """The manifest's layer table with each tensor-parallel layer standing for its unsharded class."""
        layers = []
        for e in base["layers"]:
            lay = self.layouts.get(int(e["index"]))
            if lay:
                e = dict(e, **{"class": UNSHARDED_CLASS[lay[0]], "builtin": True,
                               "repr": f"{e.get('repr', e['class'])} [{TITLES[lay[0]]}, {len(self.parts)} shards "
                                       "gathered]"})
            layers.append(e)
        return layers

    def _notes(self, base: dict, label: str, overridden: List[str]) -> List[str]:
        counts = {}
        for layout, _ in self.layouts.values():
            counts[layout] = counts.get(layout, 0) + 1
        notes = list(base.get("notes", []))
        notes.append(f"{ranks_text(self.group)} of `{label}` ran tensor-parallel; their shards were gathered: "
                     + (", ".join(f"{n} {TITLES[k]}" for k, n in counts.items()) + " layer(s)"
                        if counts else "no tensor-parallel layers were found (tp_layout declares them)") + ".")
        if overridden:
            notes.append("tp_layout gathered " + "; ".join(overridden) + ".")
        return notes

    # --- parameters ----------------------------------------------------------------------------
    def _param(self, tensor, get) -> Optional[TensorRecord]:
        recs = [get(p, p.tensors[tensor.index]) for p in self.parts]
        if any(r is None for r in recs):
            return None
        if not isinstance(recs[0], LazyRecord):
            return recs[0]
        return GatheredRecord(recs, self.tensor_modes.get(tensor.index, "whole"))

    def initial(self, tensor) -> TensorRecord:
        return self._param(tensor, lambda p, t: p.initial(t))

    def grad(self, tensor, step: int):
        return self._param(tensor, lambda p, t: p.grad(t, step))

    def weight_after(self, tensor, step: int):
        return self._param(tensor, lambda p, t: p.weight_after(t, step))

    # --- whole on every rank -----------------------------------------------------------------------
    def inputs(self):
        return self.parts[0].inputs()

    def loss(self, step: int):
        return self.parts[0].loss(step)

    def lr(self, step: int):
        return self.parts[0].lr(step)

    # --- the call tree ---------------------------------------------------------------------------
    def trace(self, step: int = 0, api: bool = True) -> Trace:
        traces = [p.trace(step, api=api) for p in self.parts]
        base = traces[0]
        for k, tr in enumerate(traces[1:], 1):
            bad = len(tr.nodes) != len(base.nodes) or next(
                (i for i, (x, y) in enumerate(zip(base.nodes, tr.nodes))
                 if (x.kind, x.name, x.path) != (y.kind, y.name, y.path)), None) is not None
            if bad:
                raise PadiffError(
                    f"Ranks {self.group[0]} and {self.group[k]} of `{self.path}` recorded different calls in step "
                    f"{step} ({len(base.nodes)} and {len(tr.nodes)}): the ranks of a tensor-parallel group run the "
                    "same code on the same data. Check the dumps.")
        shared: Dict[tuple, GatheredRecord] = {}

        def wrap(recs):
            if not isinstance(recs[0], LazyRecord):
                return recs[0]
            key = tuple(id(r) for r in recs)
            got = shared.get(key)
            if got is None:
                got = shared[key] = GatheredRecord(list(recs))
            return got

        for i, n in enumerate(base.nodes):
            others = [tr.nodes[i] for tr in traces]
            n.outputs = [(idp, wrap([o.outputs[j][1] for o in others])) for j, (idp, _) in enumerate(n.outputs)]
            for attr in ("grad_out", "grad_in"):
                mine = getattr(n, attr)
                setattr(n, attr, {k: wrap([getattr(o, attr).get(k, r) for o in others]) for k, r in mine.items()})
            if n.in_prints is not None and all(o.in_prints is not None for o in others):
                n.in_prints = _gathered_norms([o.in_prints for o in others])
        if base.loss is not None and isinstance(base.loss, LazyRecord):
            base.loss = GatheredRecord([tr.loss for tr in traces], "whole")
        inside = []
        for n in base.nodes:
            lay = self.layouts.get(n.layer_key) if n.kind == "net" else None
            if lay is not None:
                self._apply_rules(n, lay[0])
                inside.extend(c for c in n.walk() if c is not n and c.kind == "api")
        if inside:
            gone = {id(c) for c in inside}
            for n in base.nodes:
                n.children = [c for c in n.children if id(c) not in gone]
            base.nodes = [n for n in base.nodes if id(n) not in gone]
        return base

    def _apply_rules(self, node: Node, layout: str) -> None:
        """The modes the layout rules give a tensor-parallel layer's own values."""
        shape = self._weight_shapes.get(node.layer_key)
        out_dim = shard_dim("column", 2, self._weight_layout)
        in_dim = shard_dim("row", 2, self._weight_layout)

        def last_dim_is(size):
            return lambda r: ("cat", len(r.shape) - 1) if size is not None and r.shape and r.shape[-1] == size \
                else "whole"

        if layout == "column":
            rules = {"outputs": last_dim_is(shape[out_dim] if shape else None),
                     "grad_out": last_dim_is(shape[out_dim] if shape else None),
                     "grad_in": lambda r: "whole_or_sum"}  # partial where the copy-to-ranks op is outside
        elif layout == "row":
            rules = {"outputs": lambda r: "whole_or_sum", "grad_out": lambda r: "whole",
                     "grad_in": last_dim_is(shape[in_dim] if shape else None)}
        else:
            rules = {"outputs": lambda r: "whole_or_sum", "grad_out": lambda r: "whole",
                     "grad_in": lambda r: "whole"}
        for attr, rule in rules.items():
            for r in node_records(node, attr):
                if isinstance(r, GatheredRecord) and r.mode is None:
                    r.mode = rule(r)

    def check_layouts(self) -> None:
        """Refuse a layout that does not fit the shards, from the data alone: a column-parallel
        layer's output is sharded, so it differs between ranks (a row-parallel layer's is
        all-reduced: the same on every rank); a row-parallel layer's input is sharded, so its
        input gradient differs between ranks (a column-parallel layer's is whole, or partial where
        the all-reduce of its input gradient comes after the layer). Read at each layer's first
        call of step 0."""
        if not self.layouts or not self.steps:
            return
        trace = self.trace(0, api=False)
        seen = set()
        wrong = []
        for n in trace.nodes:
            lay = self.layouts.get(n.layer_key) if n.kind == "net" else None
            if lay is None or n.layer_key in seen:
                continue
            seen.add(n.layer_key)
            layout = lay[0]
            outs = [r for r in node_records(n, "outputs") if isinstance(r, GatheredRecord) and r.is_tensor]
            gins = [r for r in node_records(n, "grad_in") if isinstance(r, GatheredRecord) and r.is_tensor]
            why = []
            if layout == "column":  # (its input gradients may be partial sums: they tell nothing)
                sharded_out = [r for r in outs if isinstance(r.mode, tuple)]
                if sharded_out and all(same_on_ranks(r) for r in sharded_out):
                    why.append("its outputs are the same on every rank (all-reduced)")
                like = "row"
            elif layout == "row":
                sharded_in = [r for r in gins if isinstance(r.mode, tuple)]
                if sharded_in and all(same_on_ranks(r) for r in sharded_in):
                    why.append("its input gradients are the same on every rank (its input is whole)")
                like = "column"
            else:
                continue
            if why:
                wrong.append((n.path, layout, lay[1], like, why))
        if wrong:
            root = self.model_name
            lines = []
            for path, layout, source, like, why in wrong:
                rel = path[len(root) + 1:] if path.startswith(root + ".") else path
                lines.append(f"`{path}` is gathered as {TITLES[layout]} (from its {source}), but "
                             f"{' and '.join(why)}, as a {TITLES[like]} layer's are: its layout is {like!r} "
                             f"(tp_layout={{{rel!r}: {like!r}}})")
            raise PadiffError(
                f"The tensor-parallel layout of {len(wrong)} layer(s) of `{self.path}` does not fit the shards, so "
                "they cannot be gathered: " + "; ".join(lines) + ". Declare the right layout with tp_layout (on "
                "padiff.dump or padiff.compare_dumps, `--tp-layout PATH=LAYOUT` on the command line), or fix the "
                "layer if its class is wrong.")


def _gathered_norms(prints: List[Tuple[float, ...]]) -> Tuple[float, ...]:
    """A framework call's input norms over the group: one rank's where every rank saw the same
    input, else the norm of the shards together."""
    out = []
    for values in zip(*prints):
        first = values[0]
        if all(abs(v - first) <= 1e-6 * max(abs(first), 1e-30) for v in values):
            out.append(first)
        else:
            out.append(float(np.sqrt(sum(v * v for v in values))))
    return tuple(out)
