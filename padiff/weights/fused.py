"""Fused projections: one Linear that stands for several (q/k/v, gate/up).

A Linear on one side and two or more Linears on the other with the same input size and bias,
whose output sizes add up to the fused one's, form a *fused group* (the structural matcher in
``auto.py`` finds them, among the layers of one block). How the parts' rows are laid out in the
fused weight is not in the shapes. The layouts that fit them are enumerated
(:func:`candidates`), in this order:

* concatenation, the parts in definition order (``[q | k | v]``, ``[gate | up]``), and for two
  parts the other order (``[up | gate]``);
* interleaved in ``g`` groups, for every ``g > 1`` dividing all part sizes: group ``j`` holds
  rows ``j*n_i/g ... (j+1)*n_i/g`` of each part ``i`` in turn. For q, k, v of sizes ``H*d``,
  ``K*d``, ``K*d`` and ``g = K`` this is the per-kv-head layout of GQA ports,
  ``[G*d rows of q | d of k | d of v]`` repeated for each of the ``K`` kv heads (paddleformers'
  Gemma3, Qwen2, Qwen3, Ernie 4.5); with two parts and ``g`` = their size, rows alternate;
* for three parts, concatenation in every other order.

The layout is then settled (:func:`settle`), by the first of these that decides:

1. only one candidate fits the shapes;
2. *in place*: the destination already holds the source's values under exactly one candidate
   (weights the user copied, ``auto_weights=False``);
3. *probe*: both models run on the user's inputs (no gradients), and the candidate under which
   the block around the fused layer (the nearest pair of layers the matcher paired around the
   group: an attention, an MLP) gives the reference block's output is taken. The fused layer's
   own output cannot tell: it is the candidate's permutation of the parts' outputs by
   construction; the block's code that splits it is what fixes the layout. Groups of one kind
   (same block classes, names and shapes) share a layout, and the first one called is probed.
   Each candidate tried is written into the destination, which is restored afterwards; the
   first candidate whose block output agrees to a relative L2 error of 1e-4 is taken, otherwise
   the one with the smallest error, if it is clearly the smallest;
4. otherwise the first candidate (concatenation in definition order) is assumed, and the note
   says so.

A layout is a permutation of rows. The ``Converted`` transforms of a group read the group's
chosen layout when called, so values, gradients and updated weights are converted alike. This
module imports no framework: models are run, hooked and written through their adapters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..structure import flatten
from .rules import Converted

EXACT = 1e-4  # a probed block output this close (relative L2) to the reference's settles the layout
MARGIN = 0.5  # otherwise the best candidate must have at most this fraction of the next one's error


@dataclass(frozen=True)
class Layout:
    """Where each part's rows sit in the fused weight: ``groups`` blocks, each holding an equal
    share of every part's rows, parts in ``order`` (indices into the group's parts)."""

    order: Tuple[int, ...]
    groups: int = 1

    def segments(self, sizes: Sequence[int]) -> List[Tuple[int, int, int]]:
        """(part, first row, end row) in fused order."""
        out = []
        for j in range(self.groups):
            for i in self.order:
                step = sizes[i] // self.groups
                out.append((i, j * step, (j + 1) * step))
        return out

    def row_map(self, sizes: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        """For each fused row: (the part it belongs to, its row in that part)."""
        segs = self.segments(sizes)
        part = np.concatenate([np.full(hi - lo, i) for i, lo, hi in segs])
        row = np.concatenate([np.arange(lo, hi) for _, lo, hi in segs])
        return part, row

    def key(self, sizes: Sequence[int]) -> tuple:
        """Equal keys: the same permutation (two spellings of one layout)."""
        merged: List[List[int]] = []
        for i, lo, hi in self.segments(sizes):
            if merged and merged[-1][0] == i and merged[-1][2] == lo:
                merged[-1][2] = hi
            else:
                merged.append([i, lo, hi])
        return tuple(tuple(m) for m in merged)

    def describe(self, names: Sequence[str], sizes: Sequence[int]) -> str:
        if self.groups == 1:
            return "concatenated [" + " | ".join(names[i] for i in self.order) + "]"
        parts = [f"{sizes[i] // self.groups} {'rows of ' if k == 0 else 'of '}{names[i]}"
                 for k, i in enumerate(self.order)]
        return f"interleaved in {self.groups} groups, each [" + " | ".join(parts) + "]"


def candidates(sizes: Sequence[int]) -> List[Layout]:
    """Every layout tried for parts of these output sizes, most common first, no two alike."""
    n = len(sizes)
    base = tuple(range(n))
    common = math.gcd(*sizes)
    others = [Layout(p) for p in itertools.permutations(base) if p != base] if n <= 3 else []
    found = [Layout(base)]
    if n == 2:  # [up | gate] is the usual alternative of two parts, per-head interleaving of three
        found += others
    found += [Layout(base, g) for g in range(2, common + 1) if common % g == 0]
    if n == 3:
        found += others
    out, seen = [], set()
    for lay in found:
        k = lay.key(sizes)
        if k not in seen:
            seen.add(k)
            out.append(lay)
    return out


@dataclass(eq=False)
class FusedGroup:
    """One fused Linear and its parts on the other side, and the layout chosen for them."""

    fused_is_src: bool  # the fused Linear is in the source (reference) model
    fused_path: str
    part_paths: List[str]  # in definition order
    sizes: List[int]  # the parts' output sizes
    src_out_in: bool  # the source framework stores Linear weights [out, in]
    dst_out_in: bool
    parents: Tuple[object, object]  # (source layer, destination layer) of the block around the group
    parent_paths: Tuple[str, str]
    candidates: List[Layout]
    chosen: int = 0
    how: str = "assumed"  # "only", "in place", "probe", "assumed"
    errors: Dict[int, float] = field(default_factory=dict)  # candidate -> probed block error
    why: str = ""  # why the layout is assumed
    like: int = 0  # further groups of the same kind that took this group's layout
    probed: Optional["FusedGroup"] = None  # the group of this kind whose block was run

    @property
    def layout(self) -> Layout:
        return self.candidates[self.chosen]

    @property
    def part_names(self) -> List[str]:
        return [p.rsplit(".", 1)[-1] for p in self.part_paths]

    def kind(self) -> tuple:
        """Groups of one kind share a layout: same block classes, names and sizes."""
        def rel(path, base):
            return path[len(base) + 1:] if path.startswith(base + ".") else path.rsplit(".", 1)[-1]

        fused_base, part_base = (self.parent_paths if self.fused_is_src else self.parent_paths[::-1])
        return (self.fused_is_src, type(self.parents[0]).__name__, type(self.parents[1]).__name__,
                rel(self.fused_path, fused_base), tuple(rel(p, part_base) for p in self.part_paths),
                tuple(self.sizes))

    # --- the transforms: source layout -> destination layout ------------------------------
    def _rows(self, a: np.ndarray, is_weight: bool, out_in: bool) -> np.ndarray:
        return a if not is_weight or out_in else a.T

    def _back(self, a: np.ndarray, is_weight: bool) -> np.ndarray:
        return np.ascontiguousarray(a if not is_weight or self.dst_out_in else a.T)

    def fuse(self, arrays: Sequence[np.ndarray], is_weight: bool) -> np.ndarray:
        """The parts' values (source layout, definition order) as the fused tensor."""
        rows = [self._rows(np.asarray(a), is_weight, self.src_out_in) for a in arrays]
        return self._back(np.concatenate([rows[i][lo:hi] for i, lo, hi in self.layout.segments(self.sizes)]),
                          is_weight)

    def part(self, index: int, array: np.ndarray, is_weight: bool) -> np.ndarray:
        """Part ``index``'s rows of the fused tensor (source layout)."""
        rows = self._rows(np.asarray(array), is_weight, self.src_out_in)
        pieces, at = [], 0
        for i, lo, hi in self.layout.segments(self.sizes):
            if i == index:
                pieces.append((lo, rows[at:at + hi - lo]))
            at += hi - lo
        return self._back(np.concatenate([p for _, p in sorted(pieces, key=lambda t: t[0])]), is_weight)

    # --- text -----------------------------------------------------------------------------
    def summary(self) -> str:
        return self.layout.describe(self.part_names, self.sizes)

    def describe(self, src_label: str, dst_label: str) -> str:
        fused, parts = f"`{self.fused_path}`", f"`{brace(self.part_paths)}`"
        if self.fused_is_src:
            head = f"{src_label} {fused} is split into {dst_label} {parts}"
        else:
            head = f"{src_label} {parts} are fused into {dst_label} {fused}"
        if self.like:
            head += f" (and {self.like} more of this kind)"
        n = len(self.candidates)
        if self.how == "only":
            how = "the only layout the shapes allow"
        elif self.how == "in place":
            how = f"found in the weights already in place (the only one of {n} candidate layouts they match)"
        elif self.how == "probe":
            err = self.errors[self.chosen]
            others = sorted((e, c) for c, e in self.errors.items() if c != self.chosen)
            at = (self.probed or self).parent_paths[1]
            how = (f"found by running `{at}` under {len(self.errors)} of {n} candidate layouts: "
                   f"relative error {err:.2g}")
            if others:
                e, c = others[0]
                how += f"; next best {self.candidates[c].describe(self.part_names, self.sizes)}: {e:.2g}"
        else:
            how = f"assumed, {self.why}" if self.why else "assumed"
        return f"Fused projections: {head}: {self.summary()}, {how}."


def brace(paths: Sequence[str]) -> str:
    """``a.b.{q, k, v}.weight`` for paths that differ in one part."""
    split = [p.split(".") for p in paths]
    if len(paths) < 2 or len({len(s) for s in split}) != 1:
        return ", ".join(paths)
    diff = [i for i in range(len(split[0])) if len({s[i] for s in split}) > 1]
    if len(diff) != 1:
        return ", ".join(paths)
    i = diff[0]
    head, tail = ".".join(split[0][:i]), ".".join(split[0][i + 1:])
    mid = "{" + ", ".join(s[i] for s in split) + "}"
    return ".".join(x for x in (head, mid, tail) if x)


def conversions(group: FusedGroup, fused_names: Sequence[str], part_names: Callable[[int, str], str],
                fused_name: Callable[[str], str], src_value: Callable[[str, int], np.ndarray]) -> List[Converted]:
    """The group's conversions, one per destination tensor. ``fused_names``: the tensors of the
    fused Linear (``weight``, ``bias``); ``fused_name(t)`` / ``part_names(i, t)``: their names as
    the caller's links name them; ``src_value(t, i)``: the source value of tensor ``t`` of the
    fused Linear (``i`` = -1) or of part ``i``."""
    out = []
    for t in fused_names:
        w = t == "weight"
        flip = " + transposed" if w and group.src_out_in != group.dst_out_in else ""
        if group.fused_is_src:
            for i in range(len(group.part_paths)):
                fn = (lambda a, i=i, w=w: group.part(i, a, w))
                out.append(Converted(part_names(i, t), fused_name(t), fn(src_value(t, -1)), "split" + flip, fn,
                                     fused=group, fused_part=i))
        else:
            fn = (lambda arrays, w=w: group.fuse(arrays, w))
            values = [src_value(t, i) for i in range(len(group.part_paths))]
            out.append(Converted(fused_name(t), tuple(part_names(i, t) for i in range(len(group.part_paths))),
                                 fn(values), "fused" + flip, fn, fused=group))
    return out


# --- settling the layouts ---------------------------------------------------------------------

class _ProbeFailed(Exception):
    pass


def settle(links, src, dst, value: Callable, probe: Optional[Tuple[Callable, Callable]] = None) -> List[FusedGroup]:
    """Choose the layout of every fused group among ``links`` (see the module docstring) and
    convert their values again under it. ``probe``: two no-argument callables running the
    source and the destination model on the user's inputs. Returns one group per kind (its
    ``like`` counts the others). Nothing of either model is changed when this returns."""
    by_group: Dict[int, Tuple[FusedGroup, list]] = {}
    for link in links:
        g = link.converted.fused
        if g is not None:
            by_group.setdefault(id(g), (g, []))[1].append(link)
    if not by_group:
        return []
    groups = [g for g, _ in by_group.values()]
    links_of = {id(g): ls for g, ls in by_group.values()}

    def arrays(link):
        return [value(s.src_tensor) for s in link.sources()]

    open_ = []
    for g in groups:
        if len(g.candidates) == 1:
            g.how = "only"
        elif not _in_place(g, links_of[id(g)], dst.adapter, arrays):
            open_.append(g)
    if open_ and probe is None:
        for g in open_:
            g.why = "without inputs to run the models on (auto_diff runs them to find it)"
    elif open_:
        try:
            _probe(open_, links, links_of, src, dst, probe, arrays)
        except _ProbeFailed as exc:
            for g in open_:
                if g.how == "assumed":
                    g.chosen, g.why = 0, g.why or str(exc)
    for g in groups:
        if g.chosen != 0:  # the conversions were made under the first candidate
            for link in links_of[id(g)]:
                if link.converted.array is not None:  # None: a plan that keeps no values
                    link.converted.array = link.converted.apply(arrays(link))
    return _by_kind(groups)


def _by_kind(groups: List[FusedGroup]) -> List[FusedGroup]:
    """One group per kind (the one probed, else the first), in the order the kinds first
    appear; its ``like`` counts the others."""
    kinds: Dict[tuple, List[FusedGroup]] = {}
    for g in groups:
        kinds.setdefault(g.kind(), []).append(g)
    out = []
    for same in kinds.values():
        shown = next((g for g in same if g.probed is g), same[0])
        shown.like = len(same) - 1
        out.append(shown)
    return out


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    scale = float(np.abs(b).max()) if b.size else 0.0
    return bool(np.all(np.abs(a - b) <= 1e-5 * np.abs(b) + 1e-7 * scale))


def _in_place(g: FusedGroup, links, dst_ad, arrays) -> bool:
    """The destination already holds the source's values under exactly one candidate. Rows
    are compared: a sample first for every candidate, then every row for those that fit."""
    weights = [l for l in links if l.dst_name.rsplit(".", 1)[-1] == "weight"]
    if not weights or not all(dst_ad.has_data(l.dst_tensor) for l in weights):
        return False  # nothing in place (a model built without values: meta device, LazyGuard)

    def rows(a, out_in):
        a = np.asarray(a)
        return a if out_in else a.T

    if g.fused_is_src:
        fused = rows(arrays(weights[0])[0], g.src_out_in)
        parts = {l.converted.fused_part: rows(dst_ad.to_numpy(l.dst_tensor), g.dst_out_in) for l in weights}
    else:
        fused = rows(dst_ad.to_numpy(weights[0].dst_tensor), g.dst_out_in)
        parts = dict(enumerate(rows(a, g.src_out_in) for a in arrays(weights[0])))
    if sorted(parts) != list(range(len(g.sizes))) or fused.shape[0] != sum(g.sizes):
        return False
    rng = np.random.RandomState(0)
    sample = np.unique(rng.randint(0, fused.shape[0], size=min(64, fused.shape[0])))
    hits = []
    for c, lay in enumerate(g.candidates):
        part, row = lay.row_map(g.sizes)
        if _close(fused[sample], np.stack([parts[part[r]][row[r]] for r in sample])):
            want = np.concatenate([parts[i][lo:hi] for i, lo, hi in lay.segments(g.sizes)])
            if _close(fused, want):
                hits.append(c)
    if len(hits) == 1:
        g.chosen, g.how = hits[0], "in place"
        return True
    return False


def _float_leaves(ad, output) -> List[np.ndarray]:
    return [ad.to_numpy(t) for _, t in flatten(output, ad.is_tensor)
            if ad.is_tensor(t) and ad.is_floating(t)]


def _capture(side, call, layers) -> Tuple[Dict[int, List[np.ndarray]], List[int]]:
    """Run one model without gradients: the float outputs of the first call of each layer (by
    id), and the ids in the order of those first calls."""
    ad = side.adapter
    got: Dict[int, List[np.ndarray]] = {}
    wanted = {id(l) for l in layers}
    order: List[int] = []

    def pre(layer, args, kwargs):
        return None

    def post(layer, args, kwargs, output):
        if id(layer) in wanted and id(layer) not in got:
            got[id(layer)] = _float_leaves(ad, output)
            order.append(id(layer))
        return None

    handles = []
    try:
        for layer in {id(l): l for l in layers}.values():
            handles += ad.add_forward_hooks(layer, pre, post)
        with ad.no_grad():
            try:
                call()
            except Exception as exc:  # the user's model: the real run reports it properly
                raise _ProbeFailed(f"the probe run of the {side.label} model raised {type(exc).__name__}: {exc}") \
                    from exc
    finally:
        for h in handles:
            ad.remove_hook(h)
    return got, order


def _error(ref: Optional[List[np.ndarray]], test: Optional[List[np.ndarray]]) -> Optional[float]:
    """Relative L2 error of the block's main output: the first reference output that has a
    tested output of the same size (a port may return [B*S, D] for [B, S, D])."""
    if not ref or not test:
        return None
    for a in ref:
        for b in test:
            if a.size == b.size and a.size:
                a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
                norm = float(np.linalg.norm(a64))
                diff = float(np.linalg.norm(a64 - b64))
                if not math.isfinite(diff):
                    return math.inf
                return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
    return None


def _snapshot(side, params: bool):
    ad = side.adapter
    items = (list(ad.all_params(side.model)) if params else []) + list(ad.all_buffers(side.model))
    return [(t, ad.to_numpy(t)) for _, t in items]


def _restore(side, saved) -> None:
    for t, arr in saved:
        side.adapter.set_value(t, arr)


def _probe(open_groups, links, links_of, src, dst, probe, arrays) -> None:
    run_src, run_dst = probe
    da = dst.adapter
    saved_dst, saved_src = _snapshot(dst, True), _snapshot(src, False)

    def write(ls):
        for link in ls:
            arr = np.asarray(link.converted.apply(arrays(link)))
            da.set_value(link.dst_tensor, arr if arr.flags.writeable else np.array(arr))

    try:
        write(links)
        ref, _ = _capture(src, run_src, [g.parents[0] for g in open_groups])
        _, first = _capture(dst, run_dst, [g.parents[1] for g in open_groups])
        called = {k: i for i, k in enumerate(first)}
        kinds: Dict[tuple, List[FusedGroup]] = {}
        for g in sorted(open_groups, key=lambda g: called.get(id(g.parents[1]), len(called))):
            kinds.setdefault(g.kind(), []).append(g)
        for same in kinds.values():
            rep = same[0]
            if id(rep.parents[0]) not in ref or id(rep.parents[1]) not in called:
                for g in same:
                    g.why = f"`{rep.parent_paths[1]}` was not called on these inputs"
                continue
            tried: Dict[int, float] = {}
            for c in range(len(rep.candidates)):
                for g in same:
                    g.chosen = c
                    write(links_of[id(g)])
                out, _ = _capture(dst, run_dst, [rep.parents[1]])
                err = _error(ref[id(rep.parents[0])], out.get(id(rep.parents[1])))
                if err is None:
                    break
                tried[c] = err
                if err <= EXACT:
                    break
            best = min(tried, key=tried.get) if tried else None
            ranked = sorted(tried.values())
            clear = best is not None and (tried[best] <= EXACT or len(ranked) == 1 or
                                          tried[best] <= MARGIN * ranked[1])
            for g in same:
                g.errors, g.probed = dict(tried), rep
                if clear:
                    g.chosen, g.how = best, "probe"
                else:
                    g.chosen = 0
                    g.why = (f"the outputs of `{rep.parent_paths[0]}` and `{rep.parent_paths[1]}` could not be "
                             "compared" if not tried else
                             f"no candidate layout made `{rep.parent_paths[1]}` agree clearly better than the others "
                             f"(relative errors {', '.join(f'{e:.2g}' for e in ranked[:4])})")
                write(links_of[id(g)])
    finally:
        _restore(dst, saved_dst)
        _restore(src, saved_src)
