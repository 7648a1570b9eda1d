"""Pairing the weight-holding layers of two models and copying weights between them.

A *unit* is a layer that holds weights: a framework built-in layer with any parameters or
buffers (its whole state, sublayers included, since its insides differ across frameworks)
or a user layer with parameters/buffers of its own. Units are paired in registration order
(the seeds' rule) unless a :class:`LayerMap` says otherwise; each pair is converted by the
rule registered for its two classes (``rules.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import PadiffError
from ..side import Side
from .rules import Converted, RuleError, convert_state

SKIP_BUFFERS = ("num_batches_tracked",)


@dataclass
class Unit:
    path: str
    layer: object
    key: int
    tensors: List[Tuple[str, object, bool]]  # (name, tensor, is_param)


def layer_tree(side: Side, stop_at=None):
    """[(depth, key, path, layer)] in registration order, with built-in leaves not entered."""
    from ..record.recorder import LayerWalk

    walk = LayerWalk(side.adapter, side.model, side.name, stop_at)
    out = []
    for key in walk.order:
        path = walk.paths[key]
        out.append((path.count("."), key, path, walk.layers[key]))
    return out


def units_of(side: Side, layer_map=None) -> List[Unit]:
    ad = side.adapter
    units = []
    stop = layer_map.stops if layer_map is not None else None
    for depth, key, path, layer in layer_tree(side, stop):
        if layer_map is not None and layer_map.is_ignored(layer):
            continue
        whole = ad.is_builtin(layer) and not ad.is_container(layer)
        whole = whole or (layer_map is not None and layer_map.is_mapped(layer))
        if whole:
            params, buffers = ad.all_params(layer), ad.all_buffers(layer)
        else:
            params, buffers = ad.own_params(layer), ad.own_buffers(layer)
        tensors = [(n, t, True) for n, t in params]
        tensors += [(n, t, False) for n, t in buffers if n.rsplit(".", 1)[-1] not in SKIP_BUFFERS]
        if tensors:
            units.append(Unit(path, layer, key, tensors))
    return units


@dataclass
class TensorLink:
    """One destination tensor and where its value comes from."""

    src_unit: Unit
    dst_unit: Unit
    src_name: str
    dst_name: str
    src_tensor: object
    dst_tensor: object
    is_param: bool
    converted: Converted

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
class WeightPlan:
    src: Side
    dst: Side
    links: List[TensorLink] = field(default_factory=list)
    unit_pairs: List[Tuple[Unit, Unit]] = field(default_factory=list)
    failure: Optional[CopyFailure] = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def _pair_units(src_units, dst_units, layer_map):
    """Registration order, with explicit LayerMap pairs taken out first."""
    if layer_map is None or not layer_map.has_pairs():
        return list(zip(src_units, dst_units)), src_units[len(dst_units):], dst_units[len(src_units):]
    by_key_src = {u.key: u for u in src_units}
    by_key_dst = {u.key: u for u in dst_units}
    pairs, used_s, used_d = [], set(), set()
    for a, b in layer_map.pairs():
        if id(a) not in by_key_src:
            a, b = b, a  # the user may write either model's layer first
        ua, ub = by_key_src.get(id(a)), by_key_dst.get(id(b))
        if ua is not None and ub is not None:
            pairs.append((ua, ub))
            used_s.add(ua.key)
            used_d.add(ub.key)
    rest_s = [u for u in src_units if u.key not in used_s]
    rest_d = [u for u in dst_units if u.key not in used_d]
    pairs += list(zip(rest_s, rest_d))
    order = {u.key: i for i, u in enumerate(src_units)}
    pairs.sort(key=lambda p: order[p[0].key])
    return pairs, rest_s[len(rest_d):], rest_d[len(rest_s):]


def plan_copy(src: Side, dst: Side, layer_map=None) -> WeightPlan:
    """Work out every tensor copy from ``src`` into ``dst`` without writing anything."""
    plan = WeightPlan(src, dst)
    cross = src.adapter.name != dst.adapter.name
    s_units = units_of(src, layer_map)
    d_units = units_of(dst, layer_map)
    pairs, extra_s, extra_d = _pair_units(s_units, d_units, layer_map)
    plan.unit_pairs = pairs
    for su, du in pairs:
        sa, da = src.adapter, dst.adapter
        s_kind = f"{sa.name}::{type(su.layer).__name__}"
        d_kind = f"{da.name}::{type(du.layer).__name__}"
        src_state = [(n, sa.to_numpy(t)) for n, t, _ in su.tensors]
        dst_spec = [(n, tuple(da.shape(t))) for n, t, _ in du.tensors]
        try:
            converted = convert_state(type(su.layer).__name__, type(du.layer).__name__, src_state, dst_spec,
                                      cross=cross, src_kind=s_kind, dst_kind=d_kind)
        except RuleError as e:
            plan.failure = CopyFailure(str(e), su, du, e.src_name, e.dst_name)
            return plan
        s_by_name = {n: (t, p) for n, t, p in su.tensors}
        d_by_name = {n: (t, p) for n, t, p in du.tensors}
        for c in converted:
            st, _ = s_by_name[c.src_name]
            dt, is_param = d_by_name[c.dst_name]
            plan.links.append(TensorLink(su, du, c.src_name, c.dst_name, st, dt, is_param, c))
    if extra_s or extra_d:
        su = extra_s[0] if extra_s else None
        du = extra_d[0] if extra_d else None
        lone = su or du
        side = src if su else dst
        other = dst if su else src
        plan.failure = CopyFailure(
            f"The {side.label} model has more layers with weights than the {other.label} model: "
            f"`{lone.path}` ({type(lone.layer).__name__}) has no partner. "
            "Check that both models define the same sublayers, or pair them with a LayerMap.",
            su, du,
        )
    return plan


def apply_copy(plan: WeightPlan) -> None:
    if not plan.ok:
        raise PadiffError(plan.failure.message)
    da = plan.dst.adapter
    for link in plan.links:
        da.set_value(link.dst_tensor, link.converted.array)
