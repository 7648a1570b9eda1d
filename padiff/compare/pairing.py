"""Pairing the calls of two traces.

The two call trees are walked together from their roots. The children of paired calls pair
through layer correspondence (layers whose weights pair, and their parents) whatever order
they run in; the rest pair by call order. Where the counts differ, padiff retries with only the calls that
hold weights (a ReLU module on one side and ``F.relu`` on the other is common) and notes
which calls it left out; otherwise it stops with an error naming both layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

import difflib

from ..errors import PadiffError
from ..record.trace import Node, Trace
from .api_names import canonical


@dataclass
class Pairing:
    pairs: List[Tuple[Node, Node]] = field(default_factory=list)  # (ref node, test node)
    partner: Dict[int, Node] = field(default_factory=dict)  # id(ref node) -> test node
    unpaired: List[Node] = field(default_factory=list)  # calls left out, either side
    notes: List[str] = field(default_factory=list)
    # Pairs compared on one side of the layer only (see shift_fused_activations): id(ref node)
    # -> "in" (input gradient only) or "out" (output and output gradient only).
    only: Dict[int, str] = field(default_factory=dict)

    def add(self, a: Node, b: Node) -> None:
        self.pairs.append((a, b))
        self.partner[id(a)] = b


def _visible_children(node: Node, skip: Callable[[Node], bool]) -> List[Node]:
    """Children, with skipped calls (wrappers under PADIFF_SKIP_WRAP_LAYER, ignored layers)
    replaced by their own visible children."""
    out = []
    for c in node.children:
        if skip(c):
            out.extend(_visible_children(c, skip))
        else:
            out.append(c)
    return out


def _describe(nodes: List[Node]) -> str:
    names = [n.name for n in nodes[:8]]
    more = f", ... ({len(nodes)} in all)" if len(nodes) > 8 else ""
    return ", ".join(names) + more if names else "none"


def layer_paths(trace: Trace) -> Dict[int, str]:
    """Layer key -> dotted path, for every layer the trace saw called."""
    return {n.layer_key: n.path for n in trace.nodes if n.kind == "net"}


def correspondence(ref_paths: Dict[int, str], test_paths: Dict[int, str],
                   unit_pairs: List[Tuple[str, str]]) -> Dict[int, Set[int]]:
    """Which layers of the two models stand for each other: ``unit_pairs`` (ref layer path,
    test layer path), from the weight plan, structure or a LayerMap, and every pair of
    layers holding the same paired units below them (two ``LlamaMLP``s whose three Linears
    pair). Keys of both models map to their partners' keys (a wrapper and its only child
    both stand for the other model's)."""
    ref_by_path = {p: k for k, p in ref_paths.items()}
    test_by_path = {p: k for k, p in test_paths.items()}
    partner = {}
    for rp, tp in unit_pairs:
        if rp in ref_by_path and tp in test_by_path:
            partner[rp] = tp
    ref_under: Dict[int, Set[str]] = {}
    test_under: Dict[int, Set[str]] = {}
    for units, by_path, under in ((partner.keys(), ref_by_path, ref_under),
                                  (partner.values(), test_by_path, test_under)):
        for u in units:
            parts = u.split(".")
            for i in range(1, len(parts) + 1):
                k = by_path.get(".".join(parts[:i]))
                if k is not None:
                    under.setdefault(k, set()).add(u)
    corr: Dict[int, Set[int]] = {}
    for rp, tp in partner.items():  # a paired unit stands for its partner only
        rk, tk = ref_by_path[rp], test_by_path[tp]
        corr.setdefault(rk, set()).add(tk)
        corr.setdefault(tk, set()).add(rk)
    # Layers that are no unit stand for the other model's layers that are no unit and hold the
    # same units. (A paddle ConvPoolLayer holding one conv does not stand for torch's Conv2d.)
    ref_units = {ref_by_path[p] for p in partner}
    test_units = {test_by_path[p] for p in partner.values()}
    by_units: Dict[frozenset, List[int]] = {}
    for tk, units in test_under.items():
        if tk not in test_units:
            by_units.setdefault(frozenset(units), []).append(tk)
    for rk, units in ref_under.items():
        if rk in ref_units:
            continue
        for tk in by_units.get(frozenset(partner[u] for u in units), ()):
            corr.setdefault(rk, set()).add(tk)
            corr.setdefault(tk, set()).add(rk)
    return corr


def _first_partner(x: Node, candidates: List[Node], used: Set[int], corr) -> Optional[Node]:
    keys = corr.get(x.layer_key, ())
    for y in candidates:
        if id(y) not in used and y.layer_key in keys:
            return y
    return None


def _by_correspondence(ca: List[Node], cb: List[Node], corr):
    """Calls of corresponding layers pair with each other, the k-th call of one with the k-th
    of the other, whatever order their parent calls them in. Returns the pairs and the calls
    left on each side, in call order."""
    pairs, used = [], set()
    for x in ca:
        if x.layer_key in corr:
            y = _first_partner(x, cb, used, corr)
            if y is not None:
                used.add(id(y))
                used.add(id(x))
                pairs.append((x, y))
    return pairs, [x for x in ca if id(x) not in used], [y for y in cb if id(y) not in used]


def _transparent(calls: List[Node], other: Node, corr, skip) -> List[Node]:
    """Calls of wrappers that stand for the same layer as ``other`` (the parent being paired
    on the other side: torch's ``InvertedResidual.block`` Sequential inside an
    ``InvertedResidual`` whose paddle twin calls its parts directly) are replaced by their own
    sublayer calls."""
    out = []
    for c in calls:
        if other.layer_key in corr.get(c.layer_key, ()):
            out.extend(_transparent([x for x in _visible_children(c, skip) if x.kind == "net"], other, corr, skip))
        else:
            out.append(c)
    return out


def _anchored(a: Node, b: Node, corr, skip) -> Optional[List[Tuple[Node, Node]]]:
    """Pair the calls of corresponding layers whatever wrappers stand between them and
    ``a``/``b`` (a torch ``Sequential`` against flat paddle layers): the k-th call of a layer
    pairs with the k-th call of its partner. None unless every such call finds one."""
    def collect(node, out):
        for c in _visible_children(node, skip):
            if c.kind != "net":
                continue
            if c.layer_key in corr:
                out.append(c)
            else:
                collect(c, out)
        return out

    da, db = collect(a, []), collect(b, [])
    if not da or len(da) != len(db):
        return None
    pairs, left_a, left_b = _by_correspondence(da, db, corr)
    return pairs if not left_a and not left_b else None


def _weightless_between(a: Node, b: Node, anchored: List[Tuple[Node, Node]], corr, skip,
                        kind: Callable[[str], str]) -> List[Tuple[Node, Node]]:
    """Where two layers are nested differently, their weightless calls (activations, pools,
    dropouts) outside the corresponding layers pair as the longest common sequence of their
    kinds (``MaxPool2d``/``MaxPool2D``), in call order, with the corresponding calls as fixed
    points between them (not output shapes: a pool of another shape is what a port gets wrong)."""
    anchor_id = {}
    for i, (x, y) in enumerate(anchored):
        anchor_id[id(x)] = anchor_id[id(y)] = ("anchor", i)

    def collect(node, out):
        for c in _visible_children(node, skip):
            if c.kind != "net":
                continue
            if id(c) in anchor_id:
                out.append(c)
                continue
            if c.layer_key in corr:
                continue
            kids = [x for x in c.children if x.kind == "net"]
            if not c.has_params and not kids:
                out.append(c)
            else:
                collect(c, out)
        return out

    def key(n):
        return anchor_id.get(id(n)) or kind(n.name)

    la, lb = collect(a, []), collect(b, [])
    matcher = difflib.SequenceMatcher(a=[key(n) for n in la], b=[key(n) for n in lb], autojunk=False)
    return [(la[m.a + k], lb[m.b + k]) for m in matcher.get_matching_blocks() for k in range(m.size)
            if id(la[m.a + k]) not in anchor_id]


class _Rollback:
    """Undo what a tried pairing added, when it turns out not to fit."""

    def __init__(self, result: "Pairing"):
        self.result = result
        self.marks = (len(result.pairs), len(result.unpaired), len(result.notes))

    def undo(self) -> None:
        r = self.result
        for x, _ in r.pairs[self.marks[0]:]:
            r.partner.pop(id(x), None)
        del r.pairs[self.marks[0]:]
        del r.unpaired[self.marks[1]:]
        del r.notes[self.marks[2]:]


def pair_traces(ref: Trace, test: Trace, *, ref_label: str, test_label: str,
                skip: Callable[[Node], bool] = lambda n: False,
                leaf: Callable[[Node, Node], bool] = lambda a, b: False,
                mapped: Optional[Dict[int, int]] = None,
                corr: Optional[Dict[int, Set[int]]] = None,
                kind: Callable[[str], str] = str.lower,
                alone: Set[int] = frozenset()) -> Pairing:
    """Pair every call of ``ref`` with its counterpart in ``test``.

    ``corr`` (:func:`correspondence`) says which layers stand for each other: their calls
    pair whatever order their parents call them in; calls without a correspondence (layers
    without weights) pair in call order within their parent. ``mapped`` holds the pairs a
    LayerMap copies as a whole: their insides are compared where they pair, and otherwise
    the pair is compared as a whole. ``kind(class name)`` tells which layers of the two
    frameworks are of one kind (``MaxPool2d``/``MaxPool2D``). Calls of the layers in ``alone``
    (a fused ``qkv_proj`` and the ``q/k/v_proj`` it stands for) have no partner. Framework
    calls pair by the names of both traces' ``api_spellings``.
    """
    if ref.root is None or test.root is None:
        raise PadiffError("A model was not called: padiff saw no forward call of the root layer.")
    pairer = _Pairer(labels=(ref_label, test_label), skip=skip, leaf=leaf, mapped=mapped or {}, corr=corr or {},
                     kind=kind, alone=alone, spellings={**ref.api_spellings, **test.api_spellings})
    pairer.visit(ref.root, test.root)
    return pairer.result


@dataclass
class _Pairer:
    """One walk of :func:`pair_traces` over the two call trees: its settings and the pairing so far."""

    labels: Tuple[str, str]
    skip: Callable[[Node], bool]
    leaf: Callable[[Node, Node], bool]
    mapped: Dict[int, int]
    corr: Dict[int, Set[int]]
    kind: Callable[[str], str]
    alone: Set[int]
    spellings: Dict[str, str]
    result: Pairing = field(default_factory=Pairing)

    def visit(self, a: Node, b: Node) -> None:
        self.result.add(a, b)
        if self.leaf(a, b):
            return
        if a.layer_key in self.mapped:
            undo = _Rollback(self.result)
            try:
                self.inside(a, b)
            except PadiffError:
                undo.undo()
                self.result.notes.append(f"The insides of `{a.path}` and `{b.path}` (paired by your LayerMap) do "
                                         "not pair call for call; the two are compared as a whole.")
            return
        self.inside(a, b)

    def inside(self, a: Node, b: Node) -> None:
        """Pair the calls ``a`` and ``b`` make: framework calls, then sublayer calls."""
        corr, skip = self.corr, self.skip
        va, vb = _visible_children(a, skip), _visible_children(b, skip)
        _pair_api_calls([c for c in va if c.kind == "api"], [c for c in vb if c.kind == "api"], self.result,
                        self.spellings)
        ca = [c for c in va if c.kind == "net"]
        cb = [c for c in vb if c.kind == "net"]
        if not ca or not cb:
            return  # one side has no sublayer calls (torch's MultiheadAttention): compared as a whole
        lone = [c for c in ca + cb if c.layer_key in self.alone]
        if lone:
            self.result.unpaired.extend(lone)
            ca = [c for c in ca if c.layer_key not in self.alone]
            cb = [c for c in cb if c.layer_key not in self.alone]
            if not ca or not cb:
                return
        pairs, rest_a, rest_b = _by_correspondence(ca, cb, corr)
        more_a, more_b = _transparent(rest_a, b, corr, skip), _transparent(rest_b, a, corr, skip)
        if (more_a, more_b) != (rest_a, rest_b):
            ca = [c for c in ca if c not in rest_a] + more_a
            cb = [c for c in cb if c not in rest_b] + more_b
            more, rest_a, rest_b = _by_correspondence(more_a, more_b, corr)
            pairs += more
        if len(rest_a) != len(rest_b) or any(c.layer_key in corr for c in rest_a + rest_b):
            if self.nested_differently(a, b):
                return
            pairs, rest_a, rest_b = [], ca, cb  # nested differently and not resolved: by order, as the seeds do
        if len(rest_a) != len(rest_b):
            rest_a, rest_b = self.weighted_only(a, b, ca, cb, rest_a, rest_b, bool(pairs))
        for x, y in pairs + list(zip(rest_a, rest_b)):
            self.visit(x, y)

    def nested_differently(self, a: Node, b: Node) -> bool:
        """Pair the calls of corresponding layers below ``a`` and ``b`` whatever wrappers stand
        between, and the calls without weights around them; False where they do not pair."""
        anchored = _anchored(a, b, self.corr, self.skip)
        if anchored is None:
            return False
        loose = _weightless_between(a, b, anchored, self.corr, self.skip, self.kind)
        self.result.notes.append(
            f"Inside `{a.path}` the models are nested differently; the {len(anchored)} layer calls that "
            f"correspond and {len(loose)} calls without weights of the same kinds were compared, the "
            "wrappers around them were not.")
        for x, y in anchored + loose:
            self.visit(x, y)
        return True

    def weighted_only(self, a: Node, b: Node, ca: List[Node], cb: List[Node], rest_a: List[Node],
                      rest_b: List[Node], paired: bool) -> Tuple[List[Node], List[Node]]:
        """Where the counts of calls left differ, the calls that hold weights, if their counts
        agree (the rest are left out, with a note); else the error naming both layers."""
        ref_label, test_label = self.labels
        wa = [c for c in rest_a if c.has_params]
        wb = [c for c in rest_b if c.has_params]
        if not (len(wa) == len(wb) and (wa or paired)):
            raise PadiffError(
                "The two models are built differently: padiff pairs sublayer calls in the order "
                "they run, and their counts differ.\n"
                f"    {ref_label}: `{a.path}` calls {len(ca)}: {_describe(ca)}\n"
                f"    {test_label}: `{b.path}` calls {len(cb)}: {_describe(cb)}\n"
                "Make both forward passes call the same sublayers in the same order, or pair the "
                "differing parts with a LayerMap (layer_map.map = {a: b}) so they are compared as "
                "a whole."
            )
        left = [c for c in rest_a if not c.has_params] + [c for c in rest_b if not c.has_params]
        self.result.unpaired.extend(left)
        self.result.notes.append(
            f"Inside `{a.path}` the models call a different number of sublayers "
            f"({ref_label}: {len(ca)}, {test_label}: {len(cb)}); the calls without weights "
            f"({_describe(left)}) were left out of the comparison and the rest paired in order."
        )
        return wa, wb


def _api_key(node: Node, spellings: Dict[str, str]):
    prints = node.in_prints
    # output shapes up to the order of their axes: a port may move the head axis elsewhere
    return (canonical(node.name, spellings), tuple(tuple(sorted(r.shape)) for _, r in node.outputs),
            None if prints is None else len(prints))


def _same_inputs(x: Node, y: Node, rel: float = 1e-2) -> bool:
    """Two calls of one operation are the same computation only if they got the same inputs:
    ``3.9 * x`` and ``x * x`` are both a multiplication of an input of this shape. Inputs are
    compared by their norms, loosely (differences inherited from earlier layers are far
    smaller); a call recorded without them (an older dump) is not checked."""
    if x.in_prints is None or y.in_prints is None:
        return True
    return all(abs(p - q) <= rel * max(abs(p), abs(q)) + 1e-30 for p, q in zip(x.in_prints, y.in_prints))


def _pair_api_calls(ca: List[Node], cb: List[Node], result: Pairing, spellings: Dict[str, str]) -> None:
    """Framework calls inside one layer pair by order, as the longest common sequence of
    (operation, output shapes, number of floating inputs): an extra reshape on one side, or a
    call whose layout differs between frameworks, is left unpaired instead of shifting every
    later pair; and a pair whose inputs differ is not the same computation and stays unpaired.
    ``spellings``: both frameworks' names of operations (:func:`canonical`)."""
    if not ca or not cb:
        result.unpaired.extend(ca or cb)
        return
    matcher = difflib.SequenceMatcher(a=[_api_key(n, spellings) for n in ca], b=[_api_key(n, spellings) for n in cb],
                                      autojunk=False)
    paired_a, paired_b = set(), set()
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            x, y = ca[block.a + k], cb[block.b + k]
            if not _same_inputs(x, y):
                continue
            result.add(x, y)
            paired_a.add(id(x))
            paired_b.add(id(y))
    result.unpaired.extend(n for n in ca if id(n) not in paired_a)
    result.unpaired.extend(n for n in cb if id(n) not in paired_b)
