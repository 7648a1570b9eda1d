"""Pairing the weight-holding layers of two models by structure (``LayerMap.auto``).

Each model becomes a tree: framework built-in layers with state are leaves holding their
whole state (their insides differ across frameworks), a user layer's own parameters are a
leaf of their own, and layers without state (ReLU, Dropout, empty wrappers) are left out.
The two trees are matched level by level, from the root down:

1. identical things first: a subtree whose leaves have the same kinds and sizes as exactly
   one subtree on the other side, a leaf (kind + size) that occurs once on each side;
2. among look-alikes (three BatchNorm[64]): the same attribute name, then the same
   neighbour (the BatchNorm that follows the paired conv), then definition order when the
   counts agree;
3. a leaf against a whole subtree when a conversion rule exists for the two classes (torch
   ``MultiheadAttention`` against a paddle block of q/k/v Linears);
4. subtrees holding as many values as each other (blocks whose insides differ by such a
   rule), look-alikes again resolved by name, neighbour and order; then subtrees that are
   mostly alike; the insides of paired subtrees are matched in turn;
5. otherwise wrappers are opened (their children move up a level) and matching goes on,
   so a ``Sequential(conv, bn)`` on one side meets a flat ``conv, bn`` on the other;
6. a fused Linear against two or more Linears of the same block on the other side (q/k/v
   against ``qkv_proj``, gate/up against ``gate_up_proj``): same input size and bias, output
   sizes adding up; among several such sets the one whose names the fused name holds
   (``q``, ``k``, ``v`` in ``qkv``), then the one defined in a row. The pair of blocks it was
   found in is kept: ``fused.py`` runs them to find the layout of the rows.

Leaves left over anywhere are matched once more model-wide. Every candidate pair is checked
by actually running its conversion rule on the shapes (a transposed Linear fits, a Linear of
other sizes does not). The result is data: ``auto_map.py`` makes ``LayerMap.auto``'s findings of
it, and ``report/weights.py`` prints them.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ..record.recorder import is_atomic
from .rules import family

def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def transient_names(ad, layer, whole: bool) -> set:
    """Dotted names (relative to ``layer``) of the buffers a checkpoint leaves out: torch's
    ``persistent=False``, paddle's ``persistable=False`` (a rotary embedding's ``inv_freq``).
    Only the layer's own with ``whole=False``, its sublayers' too with ``whole=True``."""
    out = set(ad.transient_buffers(layer))
    if whole:
        seen = {id(layer)}
        stack = [(layer, "")]
        while stack:
            parent, prefix = stack.pop()
            for name, child in ad.named_children(parent):
                if id(child) in seen:
                    continue
                seen.add(id(child))
                out.update(f"{prefix}{name}.{b}" for b in ad.transient_buffers(child))
                stack.append((child, f"{prefix}{name}."))
    return out


def state_of(ad, layer, whole: bool):
    """[(name, tensor, is_param)]: what a checkpoint holds of the layer, whole or only its own.
    Buffers a checkpoint leaves out (:func:`transient_names`) need no partner and are not
    listed: ``plan_copy`` handles them apart; nor are those no other framework has a place for
    (the adapter's ``skipped_buffers``)."""
    params = ad.all_params(layer) if whole else ad.own_params(layer)
    buffers = ad.all_buffers(layer) if whole else ad.own_buffers(layer)
    transient = transient_names(ad, layer, whole) if buffers else ()
    out = [(n, t, True) for n, t in params]
    out += [(n, t, False) for n, t in buffers if _last(n) not in ad.weight_tables.skipped_buffers and n not in transient]
    return out


@dataclass(eq=False)
class Node:
    """A layer of one model as the matcher sees it."""

    layer: object
    path: str  # dotted path from the model's root name
    rel: str  # path relative to the tree's root ("" for the root)
    cls: str
    kids: List["Node"] = field(default_factory=list)
    tensors: list = field(default_factory=list)  # leaves: [(name, tensor, is_param)]
    own: bool = False  # the own parameters of a user layer (a leaf)
    index: int = 0  # definition order, model-wide
    counter: Counter = field(default_factory=Counter)  # leaf signatures below (or of) this node
    numel: int = 0

    @property
    def is_leaf(self) -> bool:
        return not self.kids

    @property
    def sig(self):
        return ("(own)" if self.own else family(self.cls), self.numel)

    def leaves(self) -> List["Node"]:
        if self.is_leaf:
            return [self]
        out = []
        for k in self.kids:
            out += k.leaves()
        return out

    def label(self) -> str:
        return f"{self.path} (own parameters)" if self.own else self.path


def _numel(ad, tensors) -> int:
    n = 0
    for _, t, _ in tensors:
        size = 1
        for d in ad.shape(t):
            size *= int(d)
        n += size
    return n


def build_tree(ad, layer, path: str, layer_map=None, *, enter_root: bool = False,
               exclude: frozenset = frozenset()) -> Optional[Node]:
    """The weight-holding tree of ``layer``, or None when it holds no state.
    ``enter_root`` opens the root even when it is a built-in layer (to look inside a pair);
    layers whose id is in ``exclude`` are left out (already paired by the user)."""
    seen = set()
    counter = [0]

    def visit(layer, path, rel, is_root):
        if id(layer) in seen or id(layer) in exclude:
            return None
        seen.add(id(layer))
        if layer_map is not None and layer_map.is_ignored_recursively(layer):
            return None
        ignored = layer_map is not None and layer_map.is_ignored(layer)
        cls = type(layer).__name__
        opened = is_root and enter_root
        whole_leaf = is_atomic(ad, layer)
        mapped = layer_map is not None and layer_map.is_mapped(layer)
        if (whole_leaf or mapped) and not opened:
            if ignored:
                return None
            tensors = state_of(ad, layer, True)
            if not tensors:
                return None
            counter[0] += 1
            node = Node(layer, path, rel, cls, tensors=tensors, index=counter[0], numel=_numel(ad, tensors))
            node.counter = Counter([node.sig])
            return node
        node = Node(layer, path, rel, cls, index=counter[0])
        if not ignored:
            own = state_of(ad, layer, False)
            if own:
                counter[0] += 1
                leaf = Node(layer, path, rel, cls, tensors=own, own=True, index=counter[0],
                            numel=_numel(ad, own))
                leaf.counter = Counter([leaf.sig])
                node.kids.append(leaf)
        for name, child in ad.named_children(layer):
            kid = visit(child, f"{path}.{name}", f"{rel}.{name}" if rel else name, False)
            if kid is not None:
                node.kids.append(kid)
        if not node.kids:
            return None
        for k in node.kids:
            node.counter.update(k.counter)
            node.numel += k.numel
        return node

    return visit(layer, path, "", True)


@dataclass
class Match:
    src: Node
    dst: Node
    how: str  # "map", "name", "shape", "neighbour", "order", "rule", "similar"

    @property
    def whole(self) -> bool:
        """True where the pair is copied as a whole (a leaf against a subtree, by a rule)."""
        return not self.src.is_leaf or not self.dst.is_leaf


@dataclass
class FusedMatch:
    """A fused Linear on one side and its parts (in definition order) on the other, found among
    the layers of the pair of blocks ``parent_src``/``parent_dst``."""

    fused: Node
    parts: List[Node]
    fused_is_src: bool
    parent_src: Node
    parent_dst: Node

    @property
    def how(self) -> str:
        return "fused"


@dataclass
class MatchResult:
    pairs: List[Match] = field(default_factory=list)
    fused: List[FusedMatch] = field(default_factory=list)
    unpaired_src: List[Node] = field(default_factory=list)
    unpaired_dst: List[Node] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unpaired_src and not self.unpaired_dst


def _key(n: Node):
    if n.is_leaf:
        return ("L", n.sig)
    return ("T", frozenset(n.counter.items()))


def _size_key(n: Node):
    """Blocks built differently inside (a fused attention against four Linears) still hold
    the same number of values: the key of subtrees that may be counterparts."""
    return None if n.is_leaf else ("N", n.numel)


def _rel_to(n: Node, base: str) -> str:
    if base and n.rel.startswith(base + "."):
        return n.rel[len(base) + 1:]
    return "" if n.rel == base else n.rel


class Matcher:
    """Matches two trees. ``compat(src_node, dst_node, whole)`` says whether the pair's state
    converts (it runs the rule); it is called only for candidates of one kind and size.
    ``rule_for(src_class, dst_class)`` is the conversion rule for two classes, or None.
    ``dims(node, is_src)``, when given, is ``(out_features, in_features, has_bias)`` for a
    Linear leaf and None otherwise: with it, fused Linears are matched with their parts."""

    def __init__(self, compat: Callable[[Node, Node, bool], bool], rule_for: Callable[[str, str], object],
                 dims: Optional[Callable[[Node, bool], Optional[Tuple[int, int, bool]]]] = None):
        self.compat = compat
        self.rule_for = rule_for
        self.dims = dims
        self.result = MatchResult()
        self._pool_s: List[Node] = []
        self._pool_d: List[Node] = []

    # --- entry -----------------------------------------------------------------------------
    def run(self, ts: Optional[Node], td: Optional[Node]) -> MatchResult:
        if ts is None or td is None:
            self.result.unpaired_src += ts.leaves() if ts else []
            self.result.unpaired_dst += td.leaves() if td else []
            return self.result
        if ts.is_leaf or td.is_leaf:
            self._level([ts], [td], "", "", parents=(ts, td))
        else:
            self._level(ts.kids, td.kids, ts.rel, td.rel, parents=(ts, td))
        # Leaves left anywhere get one more, model-wide chance.
        if self._pool_s and self._pool_d:
            self._level(sorted(self._pool_s, key=lambda n: n.index), sorted(self._pool_d, key=lambda n: n.index),
                        None, None, final_pool=True, parents=(ts, td))
        else:
            self.result.unpaired_src += self._pool_s
            self.result.unpaired_dst += self._pool_d
        self.result.unpaired_src.sort(key=lambda n: n.index)
        self.result.unpaired_dst.sort(key=lambda n: n.index)
        self.result.pairs.sort(key=lambda m: m.src.index)
        return self.result

    # --- one level -------------------------------------------------------------------------
    def _level(self, seq_s, seq_d, base_s, base_d, final_pool: bool = False, parents=None):
        seq_s, seq_d = list(seq_s), list(seq_d)
        done: Dict[int, Tuple[Node, str]] = {}  # id(node) -> (partner, how)
        names = {}

        def name(n, base):
            key = id(n)
            if key not in names:
                names[key] = n.rel if base is None else _rel_to(n, base)
            return names[key]

        self._names = (lambda n: name(n, base_s), lambda n: name(n, base_d))
        while True:
            un_s = [n for n in seq_s if id(n) not in done]
            un_d = [n for n in seq_d if id(n) not in done]
            if not un_s or not un_d:
                break
            if self._by_key(un_s, un_d, seq_s, seq_d, done, final=False):
                continue
            if self._by_rule(un_s, un_d, done):
                continue
            if self._by_key(un_s, un_d, seq_s, seq_d, done, final=False, keyfn=_size_key):
                continue
            if self._similar(un_s, un_d, done):
                continue
            if any(not n.is_leaf for n in un_s + un_d):
                seq_s = self._open(seq_s, done)
                seq_d = self._open(seq_d, done)
                continue
            if self._by_fusion(un_s, un_d, done, parents, same_parent=final_pool):
                continue
            if self._by_key(un_s, un_d, seq_s, seq_d, done, final=True):
                continue
            break
        pairs = [(n, done[id(n)]) for n in seq_s if id(n) in done and done[id(n)][0] is not None]
        for s, (d, how) in pairs:
            if s.is_leaf or d.is_leaf:
                self.result.pairs.append(Match(s, d, how))
                continue
            mark = (len(self.result.pairs), len(self._pool_s), len(self._pool_d), len(self.result.fused))
            self._level(s.kids, d.kids, s.rel, d.rel, parents=(s, d))
            if len(self._pool_s) > mark[1] and len(self._pool_d) > mark[2] and self.compat(s, d, True):
                # Their insides do not pair one to one, yet the two convert as a whole (by a
                # rule registered for the two classes): the pair is copied as a whole.
                del self.result.pairs[mark[0]:]
                del self._pool_s[mark[1]:]
                del self._pool_d[mark[2]:]
                del self.result.fused[mark[3]:]
                self.result.pairs.append(Match(s, d, "whole"))
        left_s = [l for n in seq_s if id(n) not in done for l in n.leaves()]
        left_d = [l for n in seq_d if id(n) not in done for l in n.leaves()]
        if final_pool:
            self.result.unpaired_src += left_s
            self.result.unpaired_dst += left_d
        else:
            self._pool_s += left_s
            self._pool_d += left_d

    @staticmethod
    def _open(seq, done):
        out = []
        for n in seq:
            if id(n) in done or n.is_leaf:
                out.append(n)
            else:
                out.extend(n.kids)
        return out

    def _pair(self, s, d, how, done):
        done[id(s)] = (d, how)
        done[id(d)] = (s, how)

    def _ok(self, s, d) -> bool:
        if not s.is_leaf and not d.is_leaf:
            return True  # identical subtrees: their insides are matched next
        return self.compat(s, d, False)

    # --- 1 and 2: same kind and size ---------------------------------------------------------
    def _by_key(self, un_s, un_d, seq_s, seq_d, done, final: bool, keyfn=None) -> bool:
        keyfn = keyfn or _key
        gs: Dict[object, List[Node]] = {}
        gd: Dict[object, List[Node]] = {}
        for n in un_s:
            k = keyfn(n)
            if k is not None:
                gs.setdefault(k, []).append(n)
        for n in un_d:
            k = keyfn(n)
            if k is not None:
                gd.setdefault(k, []).append(n)
        groups = [(gs[k], gd[k]) for k in gs if k in gd]
        # a) one on each side
        progress = False
        for a, b in groups:
            if len(a) == 1 and len(b) == 1 and self._ok(a[0], b[0]):
                self._pair(a[0], b[0], "shape" if a[0].is_leaf else "structure", done)
                progress = True
        if progress:
            return True
        # b) names and neighbours
        pos_s = {id(n): i for i, n in enumerate(seq_s)}
        pos_d = {id(n): i for i, n in enumerate(seq_d)}
        name_s, name_d = self._names
        for a, b in groups:
            scores = {}
            for x in a:
                for y in b:
                    sc, how = self._score(x, y, seq_s, seq_d, pos_s, pos_d, done, name_s, name_d)
                    if sc > 0 and self._ok(x, y):
                        scores[(id(x), id(y))] = (sc, how)
            for x in a:
                best = self._best(x, b, scores, lambda x, y: (id(x), id(y)))
                if best is None:
                    continue
                y, how = best
                back = self._best(y, a, scores, lambda y, x: (id(x), id(y)))
                if back is not None and back[0] is x and id(x) not in done and id(y) not in done:
                    self._pair(x, y, how, done)
                    progress = True
        if progress:
            return True
        # c) definition order, when the counts agree (or as a last resort)
        for a, b in groups:
            if len(a) == len(b) or final:
                used = set()
                for x in a:
                    for y in b:
                        if id(y) not in used and self._ok(x, y):
                            used.add(id(y))
                            self._pair(x, y, "order", done)
                            progress = True
                            break
                if progress:
                    return True
        return progress

    def _score(self, x, y, seq_s, seq_d, pos_s, pos_d, done, name_s, name_d):
        sc, how = 0, ""
        nx, ny = name_s(x), name_d(y)
        if nx == ny:
            sc, how = 4, "name"
        elif _last(nx) == _last(ny) and nx and ny:
            sc, how = 2, "name"
        for step, weight in ((-1, 2), (1, 1)):
            i, j = pos_s[id(x)] + step, pos_d[id(y)] + step
            if 0 <= i < len(seq_s) and 0 <= j < len(seq_d):
                p = done.get(id(seq_s[i]))
                if p is not None and p[0] is seq_d[j]:
                    sc += weight
                    how = how or "neighbour"
        return sc, how

    @staticmethod
    def _best(x, cands, scores, key):
        best, best_sc, tie = None, 0, False
        for y in cands:
            got = scores.get(key(x, y))
            if got is None:
                continue
            if got[0] > best_sc:
                best, best_sc, tie = (y, got[1]), got[0], False
            elif got[0] == best_sc:
                tie = True
        return None if tie else best

    # --- 3: a layer against a differently built one, through a rule -------------------------
    def _by_rule(self, un_s, un_d, done) -> bool:
        cands: Dict[int, List[Node]] = {}
        back: Dict[int, List[Node]] = {}
        for s in un_s:
            for d in un_d:
                if s.is_leaf and d.is_leaf and _key(s) == _key(d):
                    continue  # handled by kind and size
                if s.own or d.own:
                    continue
                rule = self.rule_for(s.cls, d.cls)
                if rule is None:
                    continue
                exact = rule.src_class == s.cls and rule.dst_class == d.cls
                if not exact and s.numel != d.numel:
                    continue
                if self.compat(s, d, True):
                    cands.setdefault(id(s), []).append(d)
                    back.setdefault(id(d), []).append(s)
        progress = False
        for s in un_s:
            ds = cands.get(id(s), [])
            if len(ds) == 1 and len(back[id(ds[0])]) == 1:
                self._pair(s, ds[0], "rule", done)
                progress = True
        return progress

    # --- 6: a fused Linear against its parts ------------------------------------------------
    def _by_fusion(self, un_s, un_d, done, parents, same_parent: bool = False) -> bool:
        """One Linear leaf against two or more Linear leaves of the other side with the same
        input size and bias whose output sizes add up to its own. ``same_parent``: the parts
        must be siblings (the model-wide pool mixes blocks)."""
        if self.dims is None or parents is None:
            return False
        progress = False
        for fused_is_src, singles, others in ((False, un_d, un_s), (True, un_s, un_d)):
            for x in singles:
                if id(x) in done or not x.is_leaf or x.own:
                    continue
                dx = self.dims(x, fused_is_src)
                if dx is None:
                    continue
                cands = []
                for y in others:
                    if id(y) in done or not y.is_leaf or y.own:
                        continue
                    dy = self.dims(y, not fused_is_src)
                    if dy is not None and dy[1] == dx[1] and dy[2] == dx[2] and dy[0] < dx[0]:
                        cands.append((y, dy[0]))
                parts = self._fusion_parts(x, cands, dx[0], same_parent)
                if parts is None:
                    continue
                for n in [x] + parts:
                    done[id(n)] = (None, "fused")
                ps, pd = parents
                self.result.fused.append(FusedMatch(x, parts, fused_is_src, ps, pd))
                progress = True
        return progress

    @staticmethod
    def _fusion_parts(x: Node, cands, total: int, same_parent: bool) -> Optional[List[Node]]:
        """The set of candidate parts whose sizes add up to ``total``: the one whose names the
        fused layer's name holds best, then one defined in a row, then the first defined."""
        cands = sorted(cands, key=lambda c: c[0].index)[:12]
        tokens = [t for t in re.split(r"[^a-z]+", _last(x.rel or x.path).lower()) if t]
        best, best_key = None, None
        for k in range(2, min(4, len(cands)) + 1):
            for combo in itertools.combinations(cands, k):
                if sum(size for _, size in combo) != total:
                    continue
                nodes = [n for n, _ in combo]
                if same_parent and len({n.path.rsplit(".", 1)[0] for n in nodes}) != 1:
                    continue
                names = [[t for t in re.split(r"[^a-z]+", _last(n.rel or n.path).lower()) if t] for n in nodes]
                shared = set.intersection(*(set(t) for t in names)) if names else set()
                own = [u for u in tokens if u not in shared]  # "qkv" of "qkv_proj"
                held = sum(1 for ts in names if any(t not in shared and any(t in u for u in own) for t in ts))
                in_row = all(b.index == a.index + 1 for a, b in zip(nodes, nodes[1:]))
                key = (held, in_row, -nodes[0].index)
                if best_key is None or key > best_key:
                    best, best_key = nodes, key
        return best

    # --- 4: subtrees that are mostly alike -------------------------------------------------------
    def _similar(self, un_s, un_d, done) -> bool:
        trees_s = [n for n in un_s if not n.is_leaf]
        trees_d = [n for n in un_d if not n.is_leaf]
        if not trees_s or not trees_d:
            return False

        def jac(a, b):
            inter = sum((a.counter & b.counter).values())
            union = sum((a.counter | b.counter).values())
            return inter / union if union else 0.0

        sims = {(id(a), id(b)): jac(a, b) for a in trees_s for b in trees_d}
        progress = False
        for a in trees_s:
            row = sorted(((sims[(id(a), id(b))], b) for b in trees_d), key=lambda t: -t[0])
            if not row or row[0][0] < 0.6 or (len(row) > 1 and row[1][0] == row[0][0]):
                continue
            b = row[0][1]
            col = sorted((sims[(id(x), id(b))] for x in trees_s), reverse=True)
            if len(col) > 1 and col[1] == col[0]:
                continue
            if id(a) not in done and id(b) not in done:
                self._pair(a, b, "similar", done)
                progress = True
        return progress


def match_trees(ts, td, compat, rule_for, dims=None) -> MatchResult:
    return Matcher(compat, rule_for, dims).run(ts, td)
