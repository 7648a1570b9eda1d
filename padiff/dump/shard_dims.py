"""Shard dims the layout rules do not declare, told by the counterpart's shape.

Values recorded between tensor-parallel layers (activations, attention scores, their framework
calls) follow no declared rule: each is whole on every rank or sharded along one dim, which the
shape of its counterpart in the other run tells (:func:`resolve_shards`).
"""

from __future__ import annotations

import difflib
from typing import List

from ..compare.api_names import canonical
from ..record.trace import Node, Trace
from .gathered_record import DROP, GatheredRecord, node_records


def _candidates(rec):
    """(mode, full shape) this record may stand for."""
    if isinstance(rec, GatheredRecord) and rec.mode is None:
        s, t = tuple(rec.parts[0].shape), len(rec.parts)
        return [("whole", s)] + [(("cat", d), s[:d] + (s[d] * t,) + s[d + 1:]) for d in range(len(s))]
    if not rec.is_tensor:
        return []
    return [(None, tuple(rec.shape))]


def resolve_pair(x, y) -> None:
    """Decide the modes of a value and its counterpart's where exactly one reading of their shapes
    fits (both whole preferred); leave them undecided otherwise."""
    cx, cy = _candidates(x), _candidates(y)
    if not cx or not cy or (cx[0][0] is None and cy[0][0] is None):
        return
    fits = [(mx, my) for mx, sx in cx for my, sy in cy if sx == sy]
    if not fits:  # the same axes in another order (a port that moves the head axis)
        fits = [(mx, my) for mx, sx in cx for my, sy in cy if sorted(sx) == sorted(sy)]
    if not fits:
        return
    both_whole = [f for f in fits if f[0] in (None, "whole") and f[1] in (None, "whole")]
    if both_whole:
        fits = both_whole[:1]
    if len(fits) != 1:
        return
    mx, my = fits[0]
    for rec, mode in ((x, mx), (y, my)):
        if mode is not None and isinstance(rec, GatheredRecord) and rec.mode is None:
            rec.mode = mode


def _resolve_nodes(a: Node, b: Node) -> None:
    for attr in ("outputs", "grad_out", "grad_in"):
        for x, y in zip(node_records(a, attr), node_records(b, attr)):
            resolve_pair(x, y)


def _undecided(trace: Trace) -> bool:
    return any(isinstance(r, GatheredRecord) and r.mode is None
               for n in trace.nodes for attr in ("outputs", "grad_out", "grad_in") for r in node_records(n, attr))


def resolve_shards(ref: Trace, test: Trace, pair) -> List[str]:
    """Decide how the values no layout rule covers are sharded, from their counterparts' shapes:
    a value of the shape its counterpart has is whole on every rank; one whose counterpart is
    ``tp`` times larger along one dim is sharded along it. ``pair(ref, test)`` pairs the calls
    as the comparison does (on the shard shapes: calls of sharded values do not pair yet); the
    framework calls left unpaired inside paired layers are matched by operation, in order. A
    value still undecided is not compared (a note says how many)."""
    if not (_undecided(ref) or _undecided(test)):
        return []
    pairing = pair(ref, test)
    spellings = {**ref.api_spellings, **test.api_spellings}
    paired = set()
    for a, b in pairing.pairs:
        _resolve_nodes(a, b)
        paired.update((id(a), id(b)))
    for a, b in pairing.pairs:
        if a.kind != "net":
            continue
        ca = [c for c in a.children if c.kind == "api" and id(c) not in paired]
        cb = [c for c in b.children if c.kind == "api" and id(c) not in paired]
        if not ca or not cb:
            continue
        sm = difflib.SequenceMatcher(a=[canonical(c.name, spellings) for c in ca],
                                     b=[canonical(c.name, spellings) for c in cb], autojunk=False)
        for blk in sm.get_matching_blocks():
            for k in range(blk.size):
                _resolve_nodes(ca[blk.a + k], cb[blk.b + k])
    dropped, where = set(), None
    for trace in (ref, test):
        for n in trace.nodes:
            for attr in ("outputs", "grad_out", "grad_in"):
                for r in node_records(n, attr):
                    if isinstance(r, GatheredRecord) and r.mode is None:
                        r.mode = DROP
                        dropped.add(id(r))
                        where = where or n
    if not dropped:
        return []
    return [f"{len(dropped)} value(s) recorded between the tensor-parallel layers (first in `{where.label()}`) "
            "have no counterpart of a shape that tells how they are sharded: they are not compared."]
