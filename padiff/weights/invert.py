"""Running a weight-copy plan backwards: a checkpoint of the plan's destination framework
(paddle) converted into its source's layout (torch).

The transforms of the plan's links only move elements about (transposes, slices,
concatenations, interleavings), so pushing an index array ``arange(n).reshape(shape)`` of each
source tensor through a link's transform tells where each source element lands in the
destination tensor, and gathering by it inverts the link (the tensors a fused group links are
inverted together). A transform that does more than move elements cannot be inverted and is
named.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import PadiffError
from .checkpoint import storage_dtype
from .convert_table import ConvertRow, Job, action_of, finish, keys_by_id, last_name, shape_in, with_note
from .fused import brace


def in_ckpt(ckpt, keys: List[str]) -> Optional[str]:
    """The first of ``keys`` the checkpoint holds (aliases of one tensor), else None."""
    return next((k for k in keys if k in ckpt), None)


def components(links) -> List[list]:
    """Links joined by the torch tensors they share (a fused group, a split MultiheadAttention),
    in the order of their first link."""
    parent: Dict[tuple, tuple] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for link in links:
        for s in link.sources():
            parent[find(("t", id(s.src_tensor)))] = find(("p", id(link.dst_tensor)))
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    for link in links:
        groups.setdefault(find(("p", id(link.dst_tensor))), []).append(link)
    return list(groups.values())


class Inverse:
    """The source (torch) tensors of one component, made from its destination (paddle) tensors by
    running each link's transform on index arrays (see the module docstring). Computed when the
    first of them is asked for, handed out one by one, then forgotten."""

    def __init__(self, links, tensors, read, shapes, names):
        self.names = names  # (source framework, destination framework) of the plan, for messages
        self.links = links  # TensorLinks: torch sources -> one paddle tensor each
        self.tensors = tensors  # [(id, shape)] of the torch tensors, in order
        self.read = read  # link -> the paddle tensor's values from the checkpoint
        self.shapes = shapes  # id(paddle tensor) -> shape
        self._out: Optional[Dict[int, np.ndarray]] = None

    def take(self, tid: int) -> np.ndarray:
        if self._out is None:
            self._out = self._compute()
        return self._out.pop(tid)

    def _compute(self) -> Dict[int, np.ndarray]:
        offsets, sizes, total = {}, {}, 0
        for tid, shape in self.tensors:
            offsets[tid], sizes[tid] = total, int(np.prod(shape, dtype=np.int64))
            total += sizes[tid]
        itype = np.int32 if total < 2 ** 31 else np.int64
        shape_of = dict(self.tensors)
        readers = {}
        for link in self.links:
            for s in link.sources():
                readers[id(s.src_tensor)] = readers.get(id(s.src_tensor), 0) + 1
        # First where each element goes (index arrays pushed through the transforms), then the
        # values: the index arrays are gone before the paddle tensors are read.
        recipes = []
        for link in self.links:
            srcs = link.sources()
            idx = [np.arange(offsets[id(s.src_tensor)], offsets[id(s.src_tensor)] + sizes[id(s.src_tensor)],
                             dtype=itype).reshape(shape_of[id(s.src_tensor)]) for s in srcs]
            pushed = np.asarray(link.converted.apply(idx))
            check_pushed(link, pushed, self.shapes[id(link.dst_tensor)], total, self.names)
            tid, kind = id(srcs[0].src_tensor), None
            if len(srcs) == 1 and readers[tid] == 1 and pushed.size == sizes[tid]:
                if np.array_equal(pushed.reshape(-1), idx[0].reshape(-1)):
                    kind = "same"  # the same elements in the same order
                elif idx[0].ndim == 2 and pushed.shape == idx[0].T.shape and np.array_equal(pushed, idx[0].T):
                    kind = "transposed"  # a Linear weight
            del idx
            recipes.append((link, srcs, kind, None if kind else pushed))
            del pushed
        out: Dict[int, np.ndarray] = {}
        flat: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}  # tid -> (values, filled), gathered piecewise
        for link, srcs, kind, pushed in recipes:
            values = self.read(link)
            tid = id(srcs[0].src_tensor)
            if kind == "same":
                out[tid] = values.reshape(shape_of[tid])
                continue
            if kind == "transposed":
                out[tid] = np.ascontiguousarray(values.T)
                continue
            fp, fv = pushed.reshape(-1), values.reshape(-1)
            for s in {id(s.src_tensor): s for s in srcs}.values():
                sid = id(s.src_tensor)
                lo, n = offsets[sid], sizes[sid]
                hit = (fp >= lo) & (fp < lo + n)
                if sid not in flat:
                    flat[sid] = (np.empty(n, values.dtype), np.zeros(n, bool))
                pos = fp[hit] - lo
                flat[sid][0][pos] = fv[hit]
                flat[sid][1][pos] = True
        for sid, (vals, filled) in flat.items():
            if not filled.all():
                raise PadiffError(
                    f"The {self.names[1]} tensors linked to a {self.names[0]} tensor of shape {list(shape_of[sid])} give values for "
                    f"{int(filled.sum())} of its {filled.size} elements: the rules "
                    f"({', '.join(sorted({l.converted.note or 'copied' for l in self.links}))}) do not cover it, "
                    f"so it cannot be made from the {self.names[1]} checkpoint.")
            out[sid] = vals.reshape(shape_of[sid])
        return out


def check_pushed(link, pushed, shape, total, names) -> None:
    """The transform only moved elements: integers in, integers out, each a torch element."""
    where = f"`{link.src_label}` -> `{link.dst_path}`"
    if pushed.dtype.kind not in "iu" or tuple(pushed.shape) != tuple(shape) or \
            (pushed.size and (int(pushed.min()) < 0 or int(pushed.max()) >= total)):
        raise PadiffError(
            f"The conversion of {where} ({link.converted.note or 'copied'}) does more than move elements about "
            f"(run on index arrays it gave {pushed.dtype} {list(pushed.shape)}"
            + (f" holding {int(pushed.min())}..{int(pushed.max())} for {total} elements" if pushed.size and
               pushed.dtype.kind in "iuf" else "")
            + f"), so it cannot be run backwards to convert a {names[1]} checkpoint into {names[0]}. Register a rule whose "
              "transform rearranges elements (transpose, slice, concatenate).")


def backward(table, ckpt, plan):
    """A checkpoint of the plan's destination (paddle) into its source's layout (torch): the
    plan's links run backwards (see the module docstring)."""
    src, dst = plan.src, plan.dst  # src: torch (written), dst: paddle (the checkpoint)
    names = (src.adapter.name, dst.adapter.name)
    src_keys, dst_keys = keys_by_id(src.adapter, src.model), keys_by_id(dst.adapter, dst.model)
    links = [l for l in plan.links if dst_keys.get(id(l.dst_tensor)) and
             all(src_keys.get(id(s.src_tensor)) for s in l.sources())]
    used = set()
    for comp in components(links):
        keys = {id(l.dst_tensor): in_ckpt(ckpt, dst_keys[id(l.dst_tensor)]) for l in comp}
        tensors: "OrderedDict[int, object]" = OrderedDict()
        feeds: Dict[int, list] = {}
        for l in comp:
            for s in l.sources():
                tensors.setdefault(id(s.src_tensor), s.src_tensor)
                feeds.setdefault(id(s.src_tensor), []).append(l)
        absent = [dst_keys[id(l.dst_tensor)][0] for l in comp if keys[id(l.dst_tensor)] is None]
        used.update(k for l in comp for k in dst_keys[id(l.dst_tensor)] if k in ckpt)  # aliases too
        shapes = {id(l.dst_tensor): tuple(dst.adapter.shape(l.dst_tensor)) for l in comp}
        inverse = Inverse(comp, [(tid, tuple(src.adapter.shape(t))) for tid, t in tensors.items()],
                          lambda l, k=keys: ckpt.array(k[id(l.dst_tensor)]), shapes, names)
        dtype = next((ckpt.info(k).dtype for k in keys.values() if k is not None), None)
        for tid, t in tensors.items():
            tks = src_keys[tid]
            ls = feeds[tid]
            pkeys = [keys[id(l.dst_tensor)] or dst_keys[id(l.dst_tensor)][0] for l in ls]
            src_key = pkeys[0] if len(pkeys) == 1 else brace(pkeys)
            shape = tuple(src.adapter.shape(t))
            if absent:
                for tk in tks:
                    table.rows.append(ConvertRow(src_key, None, "unmatched", tk, shape,
                                                 f"not in the checkpoint: {', '.join(absent)}"))
                continue
            if len(ls) > 1:
                action = "fused"
            elif ls[0].converted.several:
                action = "split"
            else:
                action = action_of(ls[0].converted)
            note = ls[0].converted.fused.summary() if ls[0].converted.fused is not None else ""
            if len(tks) > 1:
                note = with_note(note, "also saved as " + ", ".join(tks[1:]))
            table.rows.append(ConvertRow(src_key, shape_in(ckpt, src_key), action, tks[0], shape, note))
            table.add(Job(tks, shape, dtype, lambda i=inverse, tid=tid: i.take(tid)))
    _added(table, src, names)
    dropped = src.adapter.weight_tables.skipped_buffers
    finish(table, ckpt, used, src.adapter.state_items(src.model), src.adapter, names[0], dropped,
           dropped + dst.adapter.weight_tables.skipped_buffers)


def _added(table, src, names) -> None:
    """Source (torch) tensors the destination framework has no counterpart for (BatchNorm's
    num_batches_tracked): the source model's own value, or 0 for a model built without values."""
    filled = set(table.keys)
    for key, t in src.adapter.state_items(src.model):
        if key in filled or last_name(key) not in src.adapter.weight_tables.skipped_buffers:
            continue
        has = src.adapter.has_data(t)
        table.rows.append(ConvertRow("", None, "added", key, tuple(src.adapter.shape(t)),
                                     f"{names[1]} has no such tensor: the {names[0]} model's own value" if has else
                                     f"{names[1]} has no such tensor: written as 0"))
        dtype = src.adapter.dtype_name(t)
        make = (lambda t=t: src.adapter.raw_array(t)[0]) if has else \
            (lambda s=tuple(src.adapter.shape(t)), d=dtype: np.zeros(s, storage_dtype(d)))
        table.add(Job([key], tuple(src.adapter.shape(t)), dtype, make))
