"""Pairing the weight-holding layers of two models and copying weights between them.

A *unit* is a layer that holds weights: a framework built-in layer with any parameters or
buffers (its whole state, sublayers included, since its insides differ across frameworks),
a layer the LayerMap pairs as a whole, or a user layer with parameters/buffers of its own.
Units are paired by the LayerMap first (pairs given by hand, then those ``LayerMap.auto``
found), the rest in registration order (the seeds' rule). Each pair is converted by the rule
registered for its two classes (``rules.py``); a pair copied as a whole with no rule is
opened and its insides are matched by structure (``auto.py``), so two differently built
blocks still get their Linears transposed.

A fused Linear against its parts on the other side (q/k/v against ``qkv_proj``) is found by
the structural matcher; its links name every part (a destination made from several sources,
or one source split into several destinations), and the layout of its rows is settled by
``fused.py`` once the plan is made (from the weights in place, or by running both models on
the user's inputs when ``plan_copy`` is given them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import PadiffError
from ..record.recorder import LayerWalk, is_atomic
from ..side import Side
from .auto import FusedMatch, Node, build_tree, match_trees, state_of
from .fused import FusedGroup, brace, candidates, conversions, settle
from .rules import Converted, RuleError, family, find_rule, in_order


@dataclass
class Unit:
    path: str
    layer: object
    key: int
    tensors: List[Tuple[str, object, bool]]  # (name, tensor, is_param)
    whole: bool = False  # the layer's whole state (built-in or mapped), not only its own


def layer_tree(side: Side, stop_at=None):
    """[(depth, key, path, layer)] in registration order, with atomic layers not entered."""

    walk = LayerWalk(side.adapter, side.model, side.name, stop_at)
    out = []
    for key in walk.order:
        path = walk.paths[key]
        out.append((path.count("."), key, path, walk.layers[key]))
    return out


def units_of(side: Side, layer_map=None, whole_if=None) -> List[Unit]:
    """The units of a model; ``whole_if(layer)`` makes more layers whole units, not entered."""
    ad = side.adapter
    units = []
    stop = layer_map.stops if layer_map is not None else None
    if whole_if is not None:
        stop = (lambda l, inner=stop: whole_if(l) or inner(l)) if stop is not None else whole_if
    for depth, key, path, layer in layer_tree(side, stop):
        if layer_map is not None and layer_map.is_ignored(layer):
            continue
        whole = is_atomic(ad, layer) or (whole_if is not None and whole_if(layer)) or (layer_map is not None and layer_map.is_mapped(layer))
        tensors = state_of(ad, layer, whole)
        if tensors:
            units.append(Unit(path, layer, key, tensors, whole))
    return units


@dataclass
class TensorLink:
    """One destination tensor and where its value comes from: ``src_unit``/``src_name``/
    ``src_tensor`` name its (first) source; ``more`` the further ones, in the order of
    ``converted.src_names``, for a destination made from several (a fused ``qkv_proj.weight``
    from ``q_proj``, ``k_proj``, ``v_proj``: each in its own unit)."""

    src_unit: Unit
    dst_unit: Unit
    src_name: str
    dst_name: str
    src_tensor: object
    dst_tensor: object
    is_param: bool
    converted: Converted
    more: Tuple[Tuple[Unit, str, object], ...] = ()  # (unit, name, tensor) of the further sources

    def sources(self) -> List["TensorLink"]:
        """One single-source view of this link per source tensor, in ``converted.src_names``
        order: whatever reads a source by ``src_path``/``src_tensor`` reads each of them."""
        if not self.more:
            return [self]
        return [replace(self, more=())] + [replace(self, src_unit=u, src_name=n, src_tensor=t, more=())
                                           for u, n, t in self.more]

    @property
    def src_label(self) -> str:
        """The source path(s) as a person reads them: ``m.attn.{q_proj, k_proj, v_proj}.weight``."""
        return brace([s.src_path for s in self.sources()]) if self.more else self.src_path

    @property
    def src_is_param(self) -> bool:
        """False for a buffer of the source (torch's BatchNorm running statistics)."""
        return next((p for n, _, p in self.src_unit.tensors if n == self.src_name), True)

    @property
    def src_path(self) -> str:
        return f"{self.src_unit.path}.{self.src_name}"

    @property
    def dst_path(self) -> str:
        return f"{self.dst_unit.path}.{self.dst_name}"


@dataclass
class CopyFailure:
    """Why weights could not be copied: data for the report (report/weights.py renders it)."""

    message: str
    src_unit: Optional[Unit]
    dst_unit: Optional[Unit]
    src_name: str = ""
    dst_name: str = ""


@dataclass
class TreeRow:
    """One layer of a model's tree, as the report of a failed copy draws it (in registration
    order; layers inside a pair copied as a whole, or ignored recursively, are not drawn)."""

    path: str
    cls: str
    skip: bool  # holds no weights that are paired (a wrapper, an ignored layer): marked ``(skip)``
    here: bool  # the layer the copy failed at: marked ``<---  *** HERE ***``


def failure_tree(side: Side, layer_map, here: Optional[Unit]) -> List[TreeRow]:
    """The rows of one model's tree for the report of a failed copy at unit ``here``."""
    unit_keys = {u.key for u in units_of(side, layer_map)}
    stop = layer_map.stops if layer_map is not None else None
    return [TreeRow(path, type(layer).__name__, key not in unit_keys, here is not None and key == here.key)
            for _, key, path, layer in layer_tree(side, stop)]


@dataclass
class WeightPlan:
    src: Side
    dst: Side
    links: List[TensorLink] = field(default_factory=list)
    unit_pairs: List[Tuple[Unit, Unit]] = field(default_factory=list)
    failure: Optional[CopyFailure] = None
    how: str = "order"  # "order" (LayerMap, then registration order) or "structure"
    matches: List[Tuple[str, str, str, str, str]] = field(default_factory=list)  # by structure: paths, classes, how
    order_failure: Optional[CopyFailure] = None  # why registration order did not pair them
    notes: List[str] = field(default_factory=list)
    inner_pairs: List[Tuple[str, str]] = field(default_factory=list)  # (src path, dst path) inside whole pairs
    fused: List[FusedGroup] = field(default_factory=list)  # fused projections, one per kind (fused.py)
    src_tree: List[TreeRow] = field(default_factory=list)  # both models' trees, when the copy failed
    dst_tree: List[TreeRow] = field(default_factory=list)

    def layer_pairs(self) -> List[Tuple[str, str]]:
        """(source path, destination path) of every pair of layers the plan pairs: units and
        the layers paired inside units copied as a whole. The layers of a fused group are not
        among them: a fused Linear's call has no single counterpart (see ``fused_layers``)."""
        return [(su.path, du.path) for su, du in self.unit_pairs] + list(self.inner_pairs)

    def fused_layers(self) -> List[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
        """(source layer paths, destination layer paths) of every fused group: one fused Linear
        on one side, its parts on the other. Their calls stand for each other only together."""
        seen, out = set(), []
        for link in self.links:
            g = link.converted.fused
            if g is None or id(g) in seen:
                continue
            seen.add(id(g))
            fused, parts = (g.fused_path,), tuple(g.part_paths)
            out.append((fused, parts) if g.fused_is_src else (parts, fused))
        return out

    @property
    def ok(self) -> bool:
        return self.failure is None


# --- converting one pair ----------------------------------------------------------------------

@dataclass
class Ctx:
    """What converting a pair needs: both adapters, the map, and where source values come from
    (``values``: id(source tensor) -> array, for the checkpoint converter)."""

    src_ad: object
    dst_ad: object
    cross: bool
    layer_map: object = None
    values: Optional[Dict[int, np.ndarray]] = None
    keep_values: bool = True  # False: links keep how to convert, not the converted values (the converter)
    _compat: Dict[tuple, bool] = field(default_factory=dict)
    inner_pairs: List[Tuple[str, str]] = field(default_factory=list)  # paths of layers paired inside whole pairs

    def value(self, tensor) -> np.ndarray:
        arr = self.values.get(id(tensor)) if self.values is not None else None
        if arr is None:
            arr = self.src_ad.to_numpy(tensor)
        view = arr.view()
        view.flags.writeable = False  # a rule must not write into the source model's memory
        return view


def rule_lookup(ctx: Ctx):
    """``rule_for(src_class, dst_class)`` for the matcher: the rule between the two frameworks."""
    return lambda s_cls, d_cls: find_rule(s_cls, d_cls, ctx.src_ad, ctx.dst_ad)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has_inner(ad, layer) -> bool:
    return len(state_of(ad, layer, True)) > len(state_of(ad, layer, False))


def _run_rule(rule, src_state, dst_spec, s_kind, d_kind) -> List[Converted]:
    if rule.shipped:
        out = rule.convert(src_state, dst_spec, src_kind=s_kind, dst_kind=d_kind)
    else:
        try:
            out = rule.convert(src_state, dst_spec, src_kind=s_kind, dst_kind=d_kind)
        except RuleError:
            raise
        except Exception as exc:
            raise PadiffError(
                f"The rule registered for {s_kind} -> {d_kind} "
                f"({getattr(rule.convert, '__qualname__', rule.convert)}) raised {type(exc).__name__}: {exc}"
            ) from exc
    who = "padiff's shipped rule" if rule.shipped else "The rule registered"
    shapes = dict(dst_spec)
    src_names = {n for n, _ in src_state}
    seen = set()
    for c in out if isinstance(out, (list, tuple)) else [None]:
        if not isinstance(c, Converted):
            raise PadiffError(f"{who} for {s_kind} -> {d_kind} must return a list of padiff.weights.rules.Converted, "
                              f"one per destination tensor; it returned {type(out).__name__}.")
        if c.dst_name not in shapes or c.dst_name in seen:
            raise PadiffError(f"{who} for {s_kind} -> {d_kind} returned `{c.dst_name}`, which is "
                              f"{'given twice' if c.dst_name in seen else 'not a tensor of ' + d_kind}.")
        for name in c.src_names:
            if name not in src_names:
                raise PadiffError(f"{who} for {s_kind} -> {d_kind} names source `{name}`, which {s_kind} "
                                  f"does not have ({', '.join(sorted(src_names))}).")
        if tuple(np.shape(c.array)) != tuple(shapes[c.dst_name]):
            made = ", ".join(f"`{n}`" for n in c.src_names)
            raise RuleError(f"Shape of `{c.dst_name}` made from {made} of {s_kind} does not fit {d_kind}: "
                            f"{list(np.shape(c.array))} vs {list(shapes[c.dst_name])}", c.src_name, c.dst_name)
        seen.add(c.dst_name)
    missing = [n for n, _ in dst_spec if n not in seen]
    if missing:
        raise RuleError(f"{who} for {s_kind} -> {d_kind} gave no value for `{missing[0]}` of {d_kind}.",
                        "", missing[0])
    return list(out)


def convert_pair(ctx: Ctx, s_layer, d_layer, s_tensors, d_tensors, *, whole: bool, s_path: str,
                 d_path: str) -> List[Converted]:
    """The destination state of one pair of layers, names relative to each layer.
    Raises RuleError (a mapping failure) naming the tensors."""
    s_cls, d_cls = type(s_layer).__name__, type(d_layer).__name__
    s_kind, d_kind = f"{ctx.src_ad.name}::{s_cls}", f"{ctx.dst_ad.name}::{d_cls}"
    src_state = [(n, ctx.value(t)) for n, t, _ in s_tensors]
    dst_spec = [(n, tuple(ctx.dst_ad.shape(t))) for n, t, _ in d_tensors]
    rule = find_rule(s_cls, d_cls, ctx.src_ad, ctx.dst_ad)
    if rule is not None:
        return _run_rule(rule, src_state, dst_spec, s_kind, d_kind)
    if whole and (_has_inner(ctx.src_ad, s_layer) or _has_inner(ctx.dst_ad, d_layer)):
        # Not a flat copy in order: that would leave a square Linear untransposed unnoticed.
        return _decompose(ctx, s_layer, d_layer, s_path, d_path)
    return in_order(src_state, dst_spec, src_kind=s_kind, dst_kind=d_kind)


def _node_tensors(ad, n: Node):
    return n.tensors if n.is_leaf else state_of(ad, n.layer, True)


def _decompose(ctx: Ctx, s_layer, d_layer, s_path: str, d_path: str) -> List[Converted]:
    """Open a pair copied as a whole and pair its insides by structure."""
    ts = build_tree(ctx.src_ad, s_layer, s_path, ctx.layer_map, enter_root=True)
    td = build_tree(ctx.dst_ad, d_layer, d_path, ctx.layer_map, enter_root=True)
    found = match_trees(ts, td, lambda a, b, whole: node_compat(ctx, a, b, whole), rule_lookup(ctx), linear_dims(ctx))
    for nodes, label, other in ((found.unpaired_dst, ctx.dst_ad.name, ctx.src_ad.name),
                                (found.unpaired_src, ctx.src_ad.name, ctx.dst_ad.name)):
        if nodes:
            n = nodes[0]
            raise RuleError(
                f"`{s_path}` ({type(s_layer).__name__}) and `{d_path}` ({type(d_layer).__name__}) are built "
                f"differently: inside them, `{n.label()}` ({n.cls}) of the {label} model has no partner in the "
                f"{other} model. Pair the parts with a LayerMap, or register a rule for the two classes: "
                f"padiff.register_rule({type(s_layer).__name__!r}, {type(d_layer).__name__!r}, fn).",
                _join(n.rel, n.tensors[0][0]) if n.tensors and label == ctx.src_ad.name else "",
                _join(n.rel, n.tensors[0][0]) if n.tensors and label == ctx.dst_ad.name else "",
            )
    out = []
    for fm in found.fused:
        out += _fused_conversions(ctx, fm, lambda n, t: _join(n.rel, t))
    for m in found.pairs:
        a, b = m.src, m.dst
        ctx.inner_pairs.append((a.path, b.path))
        conv = convert_pair(ctx, a.layer, b.layer, _node_tensors(ctx.src_ad, a), _node_tensors(ctx.dst_ad, b),
                            whole=not (a.own or b.own), s_path=a.path, d_path=b.path)
        out += [c.renamed(a.rel, b.rel) for c in conv]
    return out


def _out_in(ad, shape) -> Tuple[int, int]:
    """(out_features, in_features) of a Linear weight in this framework's layout."""
    return (shape[0], shape[1]) if ad.linear_weight_layout == "out_in" else (shape[1], shape[0])


def linear_dims(ctx: Ctx):
    """For the matcher: ``dims(node, is_src)`` = (out_features, in_features, has_bias) of a
    Linear leaf (a weight and maybe a bias, nothing else), None for anything else; None
    altogether when an adapter does not say how it stores Linear weights."""
    if ctx.src_ad.linear_weight_layout is None or ctx.dst_ad.linear_weight_layout is None:
        return None

    def dims(node: Node, is_src: bool):
        ad = ctx.src_ad if is_src else ctx.dst_ad
        if not node.is_leaf or node.own or family(node.cls) != "linear":
            return None
        named = {n: t for n, t, _ in node.tensors}
        if "weight" not in named or set(named) - {"weight", "bias"}:
            return None
        shape = tuple(ad.shape(named["weight"]))
        if len(shape) != 2:
            return None
        out, inn = _out_in(ad, shape)
        if "bias" in named and tuple(ad.shape(named["bias"])) != (out,):
            return None
        return int(out), int(inn), "bias" in named
    return dims


def _fused_group(ctx: Ctx, fm: FusedMatch) -> FusedGroup:
    ad = ctx.dst_ad if fm.fused_is_src else ctx.src_ad
    sizes = []
    for p in fm.parts:
        w = next(t for n, t, _ in p.tensors if n == "weight")
        sizes.append(int(_out_in(ad, tuple(ad.shape(w)))[0]))
    return FusedGroup(fm.fused_is_src, fm.fused.path, [p.path for p in fm.parts], sizes,
                      ctx.src_ad.linear_weight_layout == "out_in", ctx.dst_ad.linear_weight_layout == "out_in",
                      (fm.parent_src.layer, fm.parent_dst.layer), (fm.parent_src.path, fm.parent_dst.path),
                      candidates(sizes))


def _fused_conversions(ctx: Ctx, fm: FusedMatch, name) -> List[Converted]:
    """The conversions of a fused group; ``name(node, tensor name)`` names a tensor as the
    caller's pair does (relative to a pair converted as a whole, or to the node's own unit)."""
    group = _fused_group(ctx, fm)
    tensors = {n: t for n, t, _ in fm.fused.tensors}
    parts = [{n: t for n, t, _ in p.tensors} for p in fm.parts]

    def src_value(t, i):
        return ctx.value(tensors[t] if i < 0 else parts[i][t])

    return conversions(group, [n for n in ("weight", "bias") if n in tensors],
                       lambda i, t: name(fm.parts[i], t), lambda t: name(fm.fused, t), src_value)


def _fused_links(ctx: Ctx, fm: FusedMatch) -> List[TensorLink]:
    """Links of a fused group found among the units: the fused Linear and each part are units
    of their own, so every tensor name is qualified by its layer (0: the fused one, i: part i)."""
    f_ad, p_ad = (ctx.src_ad, ctx.dst_ad) if fm.fused_is_src else (ctx.dst_ad, ctx.src_ad)
    nodes = [fm.fused] + list(fm.parts)
    units = [_unit_of(f_ad, fm.fused)] + [_unit_of(p_ad, p) for p in fm.parts]
    index = {id(n): k for k, n in enumerate(nodes)}

    def locate(qualified):
        k, name = qualified.split("|", 1)
        unit = units[int(k)]
        t, is_param = next((t, p) for n, t, p in unit.tensors if n == name)
        return unit, name, t, is_param

    links = []
    for c in _fused_conversions(ctx, fm, lambda n, t: f"{index[id(n)]}|{t}"):
        srcs = [locate(q)[:3] for q in c.src_names]
        d_unit, d_name, d_tensor, is_param = locate(c.dst_name)
        conv = replace(c, src_name=tuple(n for _, n, _ in srcs), src_names=(), dst_name=d_name)
        (su, sn, st), more = srcs[0], tuple(srcs[1:])
        links.append(TensorLink(su, d_unit, sn, d_name, st, d_tensor, is_param, conv, more))
        if not ctx.keep_values:
            conv.array = None
    return links


def node_compat(ctx: Ctx, s: Node, d: Node, whole: bool) -> bool:
    """Whether the state of ``s`` converts into ``d`` (the rule is run; results are cached
    by classes and shapes, so a model of many equal blocks converts each kind once)."""
    st, dt = _node_tensors(ctx.src_ad, s), _node_tensors(ctx.dst_ad, d)
    key = (s.cls, s.own, tuple((n, tuple(ctx.src_ad.shape(t))) for n, t, _ in st),
           d.cls, d.own, tuple((n, tuple(ctx.dst_ad.shape(t))) for n, t, _ in dt))
    if key not in ctx._compat:
        mark = len(ctx.inner_pairs)  # a trial: the pairs found inside are not kept
        try:
            convert_pair(ctx, s.layer, d.layer, st, dt, whole=not (s.own or d.own), s_path=s.path, d_path=d.path)
            ctx._compat[key] = True
        except RuleError:
            ctx._compat[key] = False
        finally:
            del ctx.inner_pairs[mark:]
    return ctx._compat[key]


# --- the plan ---------------------------------------------------------------------------------

def _pair_units(src_units, dst_units, layer_map):
    """LayerMap pairs first (by hand, then found by ``auto``), the rest in registration order."""
    given = layer_map.unit_pairs() if layer_map is not None else []
    if not given:
        return list(zip(src_units, dst_units)), src_units[len(dst_units):], dst_units[len(src_units):]
    by_key_src = {u.key: u for u in src_units}
    by_key_dst = {u.key: u for u in dst_units}
    pairs, used_s, used_d = [], set(), set()
    for a, b in given:
        if id(a) not in by_key_src:
            a, b = b, a  # the user may write either model's layer first
        ua, ub = by_key_src.get(id(a)), by_key_dst.get(id(b))
        if ua is not None and ub is not None and ua.key not in used_s and ub.key not in used_d:
            pairs.append((ua, ub))
            used_s.add(ua.key)
            used_d.add(ub.key)
    rest_s = [u for u in src_units if u.key not in used_s]
    rest_d = [u for u in dst_units if u.key not in used_d]
    pairs += list(zip(rest_s, rest_d))
    order = {u.key: i for i, u in enumerate(src_units)}
    pairs.sort(key=lambda p: order[p[0].key])
    return pairs, rest_s[len(rest_d):], rest_d[len(rest_s):]


def _links_for(ctx: Ctx, plan: WeightPlan, pairs) -> Optional[CopyFailure]:
    """Convert each pair of units into links on ``plan``; the first pair that does not convert
    is returned as the failure (nothing is added for it)."""
    for su, du in pairs:
        try:
            converted = convert_pair(ctx, su.layer, du.layer, su.tensors, du.tensors, whole=su.whole and du.whole,
                                     s_path=su.path, d_path=du.path)
        except RuleError as e:
            return CopyFailure(str(e), su, du, e.src_name, e.dst_name)
        s_by_name = {n: t for n, t, _ in su.tensors}
        d_by_name = {n: (t, p) for n, t, p in du.tensors}
        for c in converted:
            dt, is_param = d_by_name[c.dst_name]
            more = tuple((su, n, s_by_name[n]) for n in c.src_names[1:])
            plan.links.append(TensorLink(su, du, c.src_name, c.dst_name, s_by_name[c.src_name], dt, is_param, c,
                                         more))
            if not ctx.keep_values:
                c.array = None
    return None


def _by_order(ctx: Ctx, src: Side, dst: Side, layer_map) -> WeightPlan:
    """The seeds' pairing: LayerMap pairs, then the rest in registration order."""
    plan = WeightPlan(src, dst)
    pairs, extra_s, extra_d = _pair_units(units_of(src, layer_map), units_of(dst, layer_map), layer_map)
    plan.unit_pairs = pairs
    plan.failure = _links_for(ctx, plan, pairs)
    if plan.failure is None and (extra_s or extra_d):
        su = extra_s[0] if extra_s else None
        du = extra_d[0] if extra_d else None
        lone = su or du
        side = src if su else dst
        other = dst if su else src
        plan.failure = CopyFailure(
            f"The {side.label} model has more layers with weights than the {other.label} model: "
            f"`{lone.path}` ({type(lone.layer).__name__}) has no partner. "
            "Check that both models define the same sublayers, or pair them with a LayerMap "
            "(layer_map.auto(...), layer_map.map = {...}, layer_map.ignore(...)).",
            su, du,
        )
    return plan


def _unit_of(ad, n: Node) -> Unit:
    return Unit(n.path, n.layer, id(n.layer), _node_tensors(ad, n), whole=not n.own)


def _by_structure(ctx: Ctx, src: Side, dst: Side, layer_map) -> Optional[WeightPlan]:
    """Pairing by structure (``LayerMap.auto``'s matcher) where registration order fails: the
    LayerMap's own pairs first, the rest matched by kind, size, name and neighbours. None when
    structure leaves a layer with weights unpaired too."""
    given = [(u, v) for u, v in _pair_units(units_of(src, layer_map), units_of(dst, layer_map), layer_map)[0]
             if layer_map is not None and any(u.layer is a or u.layer is b for a, b in layer_map.unit_pairs())]
    exclude = frozenset(id(x) for u, v in given for x in (u.layer, v.layer))
    ts = build_tree(ctx.src_ad, src.model, src.name, layer_map, exclude=exclude)
    td = build_tree(ctx.dst_ad, dst.model, dst.name, layer_map, exclude=exclude)
    found = match_trees(ts, td, lambda a, b, whole: node_compat(ctx, a, b, whole), rule_lookup(ctx), linear_dims(ctx))
    if not found.complete:
        return None
    plan = WeightPlan(src, dst, how="structure")
    plan.unit_pairs = given + [(_unit_of(ctx.src_ad, m.src), _unit_of(ctx.dst_ad, m.dst)) for m in found.pairs]
    plan.matches = [(m.src.label(), m.src.cls, m.dst.label(), m.dst.cls, m.how) for m in found.pairs]
    for fm in found.fused:
        parts = (brace([p.path for p in fm.parts]), f"{fm.parts[0].cls} x{len(fm.parts)}")
        ends = ((fm.fused.path, fm.fused.cls), parts) if fm.fused_is_src else (parts, (fm.fused.path, fm.fused.cls))
        plan.matches.append((ends[0][0], ends[0][1], ends[1][0], ends[1][1], fm.how))
    plan.failure = _links_for(ctx, plan, plan.unit_pairs)
    if plan.failure is None:
        for fm in found.fused:
            plan.links += _fused_links(ctx, fm)
    return plan if plan.failure is None else None


def _transient_links(ctx: Ctx, plan: WeightPlan) -> None:
    """Buffers a checkpoint leaves out (a rotary embedding's ``inv_freq``) need no partner:
    one at the same place (path below the model) with the same shape on both sides is copied
    and compared like any buffer; the others are noted."""
    def collect(side):
        ad, found = side.adapter, {}
        for _, _, path, layer in layer_tree(side):
            names = ad.transient_buffers(layer)
            for name, t in ad.own_buffers(layer):
                if name in names:
                    rel = path.split(".", 1)[1] + "." + name if "." in path else name
                    found.setdefault(rel, (path, layer, name, t))
        return found

    s_found, d_found = collect(plan.src), collect(plan.dst)
    alone = []
    for rel, (s_path, s_layer, s_name, st) in s_found.items():
        hit = d_found.pop(rel, None)
        if hit is None or tuple(ctx.src_ad.shape(st)) != tuple(ctx.dst_ad.shape(hit[3])):
            alone.append(f"{plan.src.label} `{s_path}.{s_name}`")
            if hit is not None:
                alone.append(f"{plan.dst.label} `{hit[0]}.{hit[2]}`")
            continue
        d_path, d_layer, d_name, dt = hit
        su = Unit(s_path, s_layer, id(s_layer), [(s_name, st, False)])
        du = Unit(d_path, d_layer, id(d_layer), [(d_name, dt, False)])
        conv = Converted(d_name, s_name, ctx.value(st), "not in a checkpoint")
        plan.links.append(TensorLink(su, du, s_name, d_name, st, dt, False, conv))
    alone += [f"{plan.dst.label} `{p}.{n}`" for p, _, n, _ in d_found.values()]
    if alone:
        plan.notes.append(
            f"{len(alone)} buffer(s) that a checkpoint does not hold have no counterpart at the same place in the "
            f"other model and were left as each model computes them: {', '.join(alone[:4])}"
            f"{', ...' if len(alone) > 4 else ''}.")


def _misnamed(plan: WeightPlan) -> List[Tuple[str, str]]:
    """Unit pairs whose paths below the two models differ (``mlp.gate_proj`` with ``mlp.up_proj``):
    registration order may pair look-alikes that a port defines in another order."""
    rel = lambda path: path.split(".", 1)[1] if "." in path else ""
    return [(su.path, du.path) for su, du in plan.unit_pairs if rel(su.path) != rel(du.path)]


def plan_copy(src: Side, dst: Side, layer_map=None, *, values: Optional[Dict[int, np.ndarray]] = None,
              probe=None, keep_values: bool = True) -> WeightPlan:
    """Work out every tensor copy from ``src`` into ``dst``; the destination is left as it was.
    ``values`` (id(source tensor) -> array) replaces source values (the checkpoint converter).
    ``probe``: two no-argument callables running ``src`` and ``dst`` on the user's inputs, to
    find the row layout of fused projections (``fused.py``); the models are restored after.
    ``keep_values=False``: each link's ``converted.array`` is dropped once its pair converted
    (the transform stays), so planning holds one pair's values at a time (the checkpoint
    converter, which applies the transforms to a checkpoint's tensors one by one).

    Layers are paired in registration order (the seeds' rule) after the LayerMap's pairs;
    where that does not pair the two models, or pairs layers of other names where structure
    pairs more of them by name, by structure (``plan.how == "structure"``, the pairs in
    ``plan.matches``). The failure of registration order is reported when structure does not
    pair them either."""
    ctx = Ctx(src.adapter, dst.adapter, src.adapter.name != dst.adapter.name, layer_map, values,
              keep_values)
    plan = _by_order(ctx, src, dst, layer_map)
    misnamed = _misnamed(plan) if plan.ok else []
    if not plan.ok or misnamed:
        kept = list(ctx.inner_pairs)
        ctx.inner_pairs.clear()
        other = _by_structure(ctx, src, dst, layer_map)
        if other is not None and (not plan.ok or len(_misnamed(other)) < len(misnamed)):
            other.order_failure = plan.failure or CopyFailure(
                f"it pairs `{misnamed[0][0]}` with `{misnamed[0][1]}`, whose names differ", None, None)
            plan = other
        else:
            ctx.inner_pairs[:] = kept
    if plan.ok:
        _transient_links(ctx, plan)
        plan.fused = settle(plan.links, src, dst, ctx.value, probe)
        plan.notes += [g.describe(src.label, dst.label) for g in plan.fused]
    else:
        plan.src_tree = failure_tree(src, layer_map, plan.failure.src_unit)
        plan.dst_tree = failure_tree(dst, layer_map, plan.failure.dst_unit)
    plan.inner_pairs = list(ctx.inner_pairs)
    return plan


_UNDO_BYTES = 256 << 20  # old values kept to undo a failed copy; beyond this, none are kept


def apply_copy(plan: WeightPlan) -> None:
    """Write every link's value into the destination model. Every shape is checked before
    anything is written; if a write still fails, the destination tensors already written get
    their old values back (kept up to 256 MB; a larger model is said to be partly written)."""
    if not plan.ok:
        raise PadiffError(plan.failure.message)
    da = plan.dst.adapter
    for link in plan.links:
        got, want = tuple(np.shape(link.converted.array)), tuple(da.shape(link.dst_tensor))
        if got != want:
            raise PadiffError(f"Copying `{link.src_path}` into `{link.dst_path}`: the converted value has shape "
                              f"{list(got)} but the {plan.dst.label} tensor has {list(want)}; nothing was written.")
    written, kept = [], 0
    try:
        for link in plan.links:
            arr = np.asarray(link.converted.array)
            old = da.to_numpy(link.dst_tensor) if kept < _UNDO_BYTES else None
            da.set_value(link.dst_tensor, arr if arr.flags.writeable else np.array(arr))
            written.append((link.dst_tensor, old))
            kept += old.nbytes if old is not None else 0
    except Exception as exc:
        undone = all(old is not None for _, old in written)
        for tensor, old in reversed(written):
            if old is not None:
                da.set_value(tensor, old)
        state = "was left as it was" if undone else f"has {len(written)} of its tensors overwritten (too large to keep " \
                                                      "their old values): rebuild it before comparing"
        raise PadiffError(
            f"Copying `{link.src_path}` into `{link.dst_path}` failed ({type(exc).__name__}: {exc}); the "
            f"{plan.dst.label} model {state}.") from exc
