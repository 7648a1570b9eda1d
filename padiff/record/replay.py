"""Single-step replay: run one layer of the tested model on the inputs its reference
counterpart received, with its sublayers' outputs replaced by the reference's, so the
difference measured is the layer's own and nothing it inherited.

Forward replays every paired layer. Backward replays layers without sublayers: it feeds the
reference's output gradient and compares the input gradients (a parent's own backward cannot
be separated from its sublayers' once their outputs are replaced).

The reference's side of a backward comparison is a replay too, of the reference's own layer
(``replay(ref, ref, ...)`` on the reference model's Replayer): the input gradient the recorder
kept is that tensor's whole gradient, summed over every layer that read it (the skip path of
a residual block), while a replayed layer gives only its own part.

The tested layer is called the way the tested model called it (its own arguments, keywords
and output structure) with the reference's tensor values in place of its own: torch's
``MultiheadAttention`` takes ``(x, x, x, need_weights=False)`` and returns ``(out, None)``
where paddle's takes ``(x, x, x)`` and returns ``out``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import PadiffError
from ..structure import flatten
from .trace import Node, TensorRecord


@dataclass
class Replayed:
    outputs: List[Tuple[str, TensorRecord]] = field(default_factory=list)
    # The gradient of each input that had one, by id path; one record per tensor, however many
    # arguments held it.
    grad_in: Dict[str, TensorRecord] = field(default_factory=dict)
    # What each sublayer received, computed by this layer's own code from substituted outputs:
    # (the reference's call of that sublayer, the distinct tensors it got here).
    child_inputs: List[Tuple[Node, List[Tuple[str, TensorRecord]]]] = field(default_factory=list)

    def distinct_grads(self) -> List[Tuple[str, TensorRecord]]:
        """(id path, gradient) of the inputs in call order, each tensor once."""
        return _distinct(self.grad_in.items())


def _is_record(v) -> bool:
    return isinstance(v, TensorRecord)


def _distinct(items) -> List[Tuple[str, TensorRecord]]:
    seen, out = set(), []
    for k, r in items:
        if isinstance(r, TensorRecord) and r.is_tensor and id(r) not in seen:
            seen.add(id(r))
            out.append((k, r))
    return out


def recorded_inputs(node: Node) -> List[Tuple[str, TensorRecord]]:
    """The reference call's tensor inputs, flattened as the recorder flattens live ones, each
    tensor once (a tensor passed as query, key and value shares one record)."""
    return _distinct(flatten(node.call_args, _is_record))


def _floating(rec: TensorRecord) -> bool:
    return rec.array is not None and rec.array.dtype.kind in "fc"


def _rebuild(skeleton, swap: Dict[int, TensorRecord]):
    if isinstance(skeleton, TensorRecord):
        return swap.get(id(skeleton), skeleton)
    if isinstance(skeleton, (list, tuple)):
        items = [_rebuild(v, swap) for v in skeleton]
        return type(skeleton)(*items) if hasattr(skeleton, "_fields") else type(skeleton)(items)
    if isinstance(skeleton, dict):
        return {k: _rebuild(v, swap) for k, v in skeleton.items()}
    return skeleton


def transplant(own, ref):
    """``own`` (a call's arguments or outputs as the tested model recorded them) with the
    reference's values in place of its floating tensors, paired by position among the distinct
    tensors of each; integer and boolean tensors (ids, masks) keep their own values. None when
    the two do not pair: another number of tensors, or a floating tensor of another shape."""
    if own is None or ref is None:
        return None
    mine, theirs = _distinct(flatten(own, _is_record)), _distinct(flatten(ref, _is_record))
    if len(mine) != len(theirs):
        return None
    swap = {}
    for (_, m), (_, r) in zip(mine, theirs):
        if _floating(m) and _floating(r):
            if tuple(m.shape) != tuple(r.shape):
                return None
            swap[id(m)] = TensorRecord(r.array, m.dtype, tuple(m.shape))
    return _rebuild(own, swap)


class Replayer:
    """Replays layers of one model through its adapter."""

    def __init__(self, adapter, layers: Dict[int, object], model):
        self.adapter = adapter
        self.layers = layers  # layer key -> layer object, from the model's walk
        params = adapter.all_params(model)
        self.like = params[0][1] if params else None

    # --- building tensors from records ----------------------------------------------------
    def tensor(self, rec: TensorRecord):
        """A tensor holding a copy of the record: one built on the record's own memory would let
        an in-place op of the layer (ReLU(inplace=True)) change the record."""
        return self.adapter.from_array(np.array(rec.array), rec.dtype, self.like)

    def build(self, skeleton, made: Dict[int, object], leaves: Optional[Dict[int, object]] = None):
        """The value ``skeleton`` records, with a new tensor for each tensor record. A record
        held in several places (one tensor passed as query, key and value) becomes one tensor
        (``made``: id of the record -> its tensor), so the layer sees what the reference saw
        and its gradients add up over those places, as they did in the reference's run.
        ``leaves`` (id of a record -> None) names the records whose gradient is wanted: each is
        filled with a leaf that records its gradient, and the layer gets a non-leaf alias of it,
        which an in-place op (ReLU(inplace=True)) may change."""
        if isinstance(skeleton, TensorRecord):
            if not skeleton.is_tensor:
                return skeleton.value if skeleton.array is None or skeleton.value is not None else skeleton.array
            hit = made.get(id(skeleton))
            if hit is None:
                hit = self.tensor(skeleton)
                if leaves is not None and id(skeleton) in leaves:
                    leaves[id(skeleton)] = self.adapter.mark_requires_grad(hit)
                    hit = self.adapter.alias(hit)
                made[id(skeleton)] = hit
            return hit
        if isinstance(skeleton, (list, tuple)):
            items = [self.build(v, made, leaves) for v in skeleton]
            return type(skeleton)(*items) if hasattr(skeleton, "_fields") else type(skeleton)(items)
        if isinstance(skeleton, dict):
            return {k: self.build(v, made, leaves) for k, v in skeleton.items()}
        return skeleton

    def _record(self, t) -> TensorRecord:
        ad = self.adapter
        return TensorRecord(ad.to_numpy(t), ad.dtype_name(t), ad.shape(t))

    # --- replay -----------------------------------------------------------------------------
    def replay(self, ref: Node, test: Node, *, substitute: Dict[int, List[Tuple[Node, Node]]],
               backward: bool) -> Replayed:
        """Run ``test``'s layer on ``ref``'s recorded inputs. ``substitute`` maps a sublayer key
        of the tested model to the (reference call, tested call) pairs whose reference outputs
        replace its own, in call order. With ``backward``, ``ref``'s output gradients are fed
        back and the gradients of the inputs that had one in the run are read. ``test`` may be
        ``ref`` itself, replayed by the reference model's own Replayer."""
        ad = self.adapter
        layer = self.layers[test.layer_key]
        call = None if test is ref else transplant(test.call_args, ref.call_args)
        grad_ids = test.input_ids
        if call is None:  # the reference's own layer, or a tested call that was not recorded or does not pair
            call, grad_ids = ref.call_args, ref.input_ids
        wanted = set(grad_ids) if backward else set()
        inputs = [(k, r) for k, r in flatten(call, _is_record) if isinstance(r, TensorRecord) and r.is_tensor]
        grad_leaves: Dict[int, object] = {id(r): None for k, r in inputs if k in wanted and _floating(r)}
        made: Dict[int, object] = {}
        args = self.build(call[0], made, grad_leaves)
        kwargs = self.build(call[1], made, grad_leaves)
        handles = []
        result = Replayed()
        try:
            pre, post = self._substitute_hooks(substitute, result)
            for key in substitute:
                handles.extend(ad.add_forward_hooks(self.layers[key], pre(key), post(key)))
            try:
                out = layer(*args, **kwargs)
            except Exception as exc:  # the user's layer, not padiff, raised
                raise PadiffError(f"Replaying `{test.label()}` on the reference model's inputs (single-step mode) "
                                  f"raised {type(exc).__name__}: {exc}") from exc
            leaves = flatten(out, ad.is_tensor)
            for id_path, leaf in leaves:
                if ad.is_tensor(leaf):
                    result.outputs.append((id_path, self._record(leaf)))
                else:
                    result.outputs.append((id_path, TensorRecord.plain(leaf)))
            if backward and ref.grad_out:
                self._backward(ref, test, leaves, inputs, grad_leaves, result)
            return result
        finally:
            for h in handles:
                ad.remove_hook(h)

    def _substitute_hooks(self, substitute: Dict[int, List[Tuple[Node, Node]]], result: Replayed):
        """``(pre(key), post(key))``: makers of the hooks of a substituted sublayer. ``pre`` records
        the inputs the sublayer gets (``result.child_inputs``); ``post`` replaces its output with the
        reference call's, in call order."""
        ad = self.adapter
        calls: Dict[int, int] = {}

        def make_pre(key):
            def pre(_layer, c_args, c_kwargs):
                k = calls.get(key, 0)
                pairs = substitute[key]
                if k < len(pairs):
                    seen, got = set(), []
                    for i, t in flatten((tuple(c_args), dict(c_kwargs or {})), ad.is_tensor):
                        if ad.is_tensor(t) and id(t) not in seen:
                            seen.add(id(t))
                            got.append((i, self._record(t)))
                    result.child_inputs.append((pairs[k][0], got))
                return None
            return pre

        def make_post(key):
            def post(_layer, _args, _kwargs, _output):
                k = calls.get(key, 0)
                calls[key] = k + 1
                pairs = substitute[key]
                if k < len(pairs) and pairs[k][0].out_skeleton is not None:
                    x, y = pairs[k]
                    out_s = transplant(y.out_skeleton, x.out_skeleton)
                    return self.build(out_s if out_s is not None else x.out_skeleton, {})
                return None
            return post

        return make_pre, make_post

    def _backward(self, ref: Node, test: Node, leaves, inputs, grad_leaves: Dict[int, object],
                  result: Replayed) -> None:
        """Feed ``ref``'s output gradients back through the replayed outputs (``leaves``), paired
        by position among the distinct tensors of each, as the forward comparison pairs them, and
        read the gradients of the inputs in ``grad_leaves`` into ``result.grad_in``."""
        ad = self.adapter
        ref_grads = [ref.grad_out.get(k) for k, _ in _distinct(ref.outputs)]
        seen, mine = set(), []
        for _, leaf in leaves:
            if ad.is_tensor(leaf) and id(leaf) not in seen:
                seen.add(id(leaf))
                mine.append(leaf)
        outs, grads = [], []
        for leaf, g in zip(mine, ref_grads):
            # an output of another shape cannot take the reference's gradient: its forward
            # comparison already reports the shapes
            if g is not None and ad.requires_grad(leaf) and tuple(ad.shape(leaf)) == tuple(g.shape):
                outs.append(leaf)
                grads.append(self.tensor(g))
        if not outs:
            return
        try:
            ad.backward(outs, grads)
        except Exception as exc:  # the user's layer's backward raised
            raise PadiffError(f"Replaying the backward of `{test.label()}` with the reference model's "
                              f"output gradient (single-step mode) raised {type(exc).__name__}: "
                              f"{exc}") from exc
        records: Dict[int, TensorRecord] = {}
        for id_path, r in inputs:
            if id(r) in grad_leaves:
                if id(r) not in records:
                    g = ad.tensor_grad(grad_leaves[id(r)])
                    records[id(r)] = self._record(g) if g is not None else None
                if records[id(r)] is not None:
                    result.grad_in[id_path] = records[id(r)]
