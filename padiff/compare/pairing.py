"""Pairing the calls of two traces.

The two call trees are walked together from their roots; the children of paired calls are
paired by call order. Where the counts differ, padiff retries with only the calls that
hold weights (a ReLU module on one side and ``F.relu`` on the other is common) and notes
which calls it left out; otherwise it stops with an error naming both layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

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


def _anchored(a: Node, b: Node, anchors: Dict[int, int], skip) -> Optional[List[Tuple[Node, Node]]]:
    """Pair the calls of layers a LayerMap pairs, whatever wrappers stand between them and
    ``a``/``b`` (a torch ``Sequential`` against flat paddle layers): the k-th call of a mapped
    layer pairs with the k-th call of its partner. None unless every such call finds one."""
    def collect(node, out):
        for c in _visible_children(node, skip):
            if c.kind != "net":
                continue
            if c.layer_key in anchors:
                out.append(c)
            else:
                collect(c, out)
        return out

    da, db = collect(a, []), collect(b, [])
    if not da or len(da) != len(db):
        return None
    calls: Dict[int, List[Node]] = {}
    for y in db:
        calls.setdefault(y.layer_key, []).append(y)
    pairs = []
    for x in da:
        queue = calls.get(anchors[x.layer_key])
        if not queue:
            return None
        pairs.append((x, queue.pop(0)))
    return pairs


def pair_traces(ref: Trace, test: Trace, *, ref_label: str, test_label: str,
                skip: Callable[[Node], bool] = lambda n: False,
                leaf: Callable[[Node, Node], bool] = lambda a, b: False,
                mapped: Optional[Dict[int, int]] = None,
                anchors: Optional[Dict[int, int]] = None) -> Pairing:
    """Pair every call of ``ref`` with its counterpart in ``test``.

    ``mapped`` holds explicit layer pairs (ref layer key -> test layer key) from a LayerMap:
    the k-th call of a mapped ref layer pairs with the k-th call of its test partner, and
    neither side's insides are compared.
    """
    if ref.root is None or test.root is None:
        raise PadiffError("A model was not called: padiff saw no forward call of the root layer.")
    result = Pairing()
    mapped = mapped or {}
    anchors = anchors or {}

    def visit(a: Node, b: Node):
        result.add(a, b)
        if leaf(a, b) or a.layer_key in mapped:
            return
        va, vb = _visible_children(a, skip), _visible_children(b, skip)
        _pair_api_calls([c for c in va if c.kind == "api"], [c for c in vb if c.kind == "api"], result)
        ca = [c for c in va if c.kind == "net"]
        cb = [c for c in vb if c.kind == "net"]
        if len(ca) != len(cb):
            wa = [c for c in ca if c.has_params]
            wb = [c for c in cb if c.has_params]
            anchored = _anchored(a, b, anchors, skip) if anchors else None
            if anchored is not None:
                result.notes.append(
                    f"Inside `{a.path}` the models are nested differently; the {len(anchored)} layer calls your "
                    "LayerMap pairs were compared, the wrappers around them were not.")
                for x, y in anchored:
                    visit(x, y)
                return
            if len(wa) == len(wb) and wa:
                left = [c for c in ca if not c.has_params] + [c for c in cb if not c.has_params]
                result.unpaired.extend(left)
                result.notes.append(
                    f"Inside `{a.path}` the models call a different number of sublayers "
                    f"({ref_label}: {len(ca)}, {test_label}: {len(cb)}); the calls without weights "
                    f"({_describe(left)}) were left out of the comparison and the rest paired in order."
                )
                ca, cb = wa, wb
            else:
                raise PadiffError(
                    "The two models are built differently: padiff pairs sublayer calls in the order "
                    "they run, and their counts differ.\n"
                    f"    {ref_label}: `{a.path}` calls {len(ca)}: {_describe(ca)}\n"
                    f"    {test_label}: `{b.path}` calls {len(cb)}: {_describe(cb)}\n"
                    "Make both forward passes call the same sublayers in the same order, or pair the "
                    "differing parts with a LayerMap (layer_map.map = {a: b}) so they are compared as "
                    "a whole."
                )
        for x, y in zip(ca, cb):
            visit(x, y)

    visit(ref.root, test.root)
    return result


def _api_key(node: Node):
    prints = node.in_prints
    return (canonical(node.name), tuple(tuple(r.shape) for _, r in node.outputs),
            None if prints is None else len(prints))


def _same_inputs(x: Node, y: Node, rel: float = 1e-2) -> bool:
    """Two calls of one operation are the same computation only if they got the same inputs:
    ``3.9 * x`` and ``x * x`` are both a multiplication of an input of this shape. Inputs are
    compared by their norms, loosely (differences inherited from earlier layers are far
    smaller); a call recorded without them (an older dump) is not checked."""
    if x.in_prints is None or y.in_prints is None:
        return True
    return all(abs(p - q) <= rel * max(abs(p), abs(q)) + 1e-30 for p, q in zip(x.in_prints, y.in_prints))


def _pair_api_calls(ca: List[Node], cb: List[Node], result: Pairing) -> None:
    """Framework calls inside one layer pair by order, as the longest common sequence of
    (operation, output shapes, number of floating inputs): an extra reshape on one side, or a
    call whose layout differs between frameworks, is left unpaired instead of shifting every
    later pair; and a pair whose inputs differ is not the same computation and stays unpaired."""
    if not ca or not cb:
        result.unpaired.extend(ca or cb)
        return
    matcher = difflib.SequenceMatcher(a=[_api_key(n) for n in ca], b=[_api_key(n) for n in cb], autojunk=False)
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
