"""Layers whose edges the two ports draw differently, found once calls are paired.

A paired layer may end where the other model's next call ends (paddle's
``BatchNorm(act="relu")`` against torch's ``BatchNorm2d`` then ``ReLU``), or return outputs of
other shapes than its partner (paddle's ``DenseLayer`` returns its input concatenated to its
new features). These adjust a :class:`~padiff.compare.pairing.Pairing` in place: which pairs
are compared on one side of the layer only (``pairing.only``), with a note each.
"""

from __future__ import annotations

import bisect
from typing import Callable, Dict, List, Tuple

from ..record.trace import Node
from ..structure import pair_flat
from .pairing import Pairing


def composite_boundaries(pairing: Pairing) -> None:
    """Two paired layers that both have sublayers, whose outputs are of other shapes (paddle's
    ``DenseLayer`` returns its input concatenated to its new features, torch's
    ``_DenseLayer`` the new features alone): the ports draw the layer's edge differently.
    Their insides and input gradients are compared; their outputs are not (a real difference
    still shows in the layers that use them, up to the model's output)."""
    groups: Dict[tuple, List[Tuple[Node, Node]]] = {}
    for a, b in pairing.pairs:
        if a.kind != "net" or a.parent is None or id(a) in pairing.only:
            continue
        if not any(c.kind == "net" for c in a.children) or not any(c.kind == "net" for c in b.children):
            continue
        paired, _ = pair_flat(a.outputs, b.outputs, lambda r: r.kind == "none",
                              lambda x, y: x.kind == "tensor" and y.kind == "tensor")
        if any(tuple(x.shape) != tuple(y.shape) for (_, x), (_, y) in paired):
            pairing.only[id(a)] = "in"
            groups.setdefault((a.name, b.name), []).append((a, b))
    for (na, nb), found in groups.items():
        a, b = found[0]
        pairing.notes.append(
            f"{na} / {nb} return outputs of other shapes ({len(found)} call(s), first `{a.path}` "
            f"{[list(r.shape) for _, r in a.outputs if r.is_tensor]} / `{b.path}` "
            f"{[list(r.shape) for _, r in b.outputs if r.is_tensor]}): the two ports draw the layer's edge "
            "differently, so their insides were compared and their outputs were not.")


def shift_fused_activations(pairing: Pairing, ref_nodes: List[Node], agree: Callable[[Node, Node], bool]) -> None:
    """A tested layer that applies its activation itself (paddle's ``BatchNorm(act="relu")``)
    against a reference layer followed by the activation as a layer of its own (torch's
    ``BatchNorm2d`` then ``ReLU``): the tested layer's output is the activation's. Where the
    reference's next call after a paired layer call is weightless, has no partner, and agrees
    with that layer's partner (``agree``: outputs compared), it takes the partner's output and
    output gradient, and the first keeps its input gradient. The next call may be a
    framework call (``F.relu`` in the parent's forward)."""
    paired_ref = set(pairing.partner)
    starts = sorted((n.enter_seq, n) for n in ref_nodes if n.enter_seq >= 0)
    seqs = [e for e, _ in starts]
    for a, b in list(pairing.pairs):
        if a.kind != "net" or any(c.kind == "net" for c in a.children) or id(a) in pairing.only:
            continue
        at = bisect.bisect_right(seqs, a.exit_seq)  # the next call to start once `a` is done
        nxt = starts[at][1] if at < len(starts) else None
        if nxt is None or id(nxt) in paired_ref or nxt.has_params or any(c.kind == "net" for c in nxt.children):
            continue
        if [r.shape for _, r in nxt.outputs] != [r.shape for _, r in b.outputs] or not agree(nxt, b):
            continue
        # Where `a` agrees too (the activation did nothing to these values, or almost: a ReLU
        # over values that are already >= 0), the gradients still tell: the tested layer's
        # output gradient is the one after its activation, so it pairs with `nxt`'s.
        pairing.add(nxt, b)
        paired_ref.add(id(nxt))
        pairing.only[id(a)] = "in"
        pairing.only[id(nxt)] = "out"
        if nxt in pairing.unpaired:
            pairing.unpaired.remove(nxt)
        pairing.notes.append(
            f"`{b.path}` ({b.name}) applies its activation itself: its output was compared with that of "
            f"`{nxt.path}` ({nxt.name}), the call after `{a.path}` ({a.name}) in the other model.")
