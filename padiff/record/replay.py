"""Single-step replay: run one layer of the tested model on the inputs its reference
counterpart received, with its sublayers' outputs replaced by the reference's, so the
difference measured is the layer's own and nothing it inherited.

Forward replays every paired layer. Backward replays layers without sublayers: it feeds the
reference's output gradient and compares the input gradients (a parent's own backward cannot
be separated from its sublayers' once their outputs are replaced).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import PadiffError
from ..structure import flatten
from .trace import Node, TensorRecord


@dataclass
class Replayed:
    outputs: List[Tuple[str, TensorRecord]] = field(default_factory=list)
    grad_in: Dict[str, TensorRecord] = field(default_factory=dict)
    # What each sublayer received, computed by this layer's own code from substituted outputs:
    # (the reference's call of that sublayer, the inputs it got here).
    child_inputs: List[Tuple[Node, List[Tuple[str, TensorRecord]]]] = field(default_factory=list)


def recorded_inputs(node: Node) -> List[Tuple[str, TensorRecord]]:
    """The reference call's inputs, flattened as the recorder flattens live ones."""
    return [(i, r) for i, r in flatten(node.call_args, lambda v: isinstance(v, TensorRecord))
            if isinstance(r, TensorRecord) and r.is_tensor]


class Replayer:
    """Replays layers of one model (the tested one) through its adapter."""

    def __init__(self, adapter, layers: Dict[int, object], model):
        self.adapter = adapter
        self.layers = layers  # layer key -> layer object, from the tested model's walk
        params = adapter.all_params(model)
        self.like = params[0][1] if params else None

    # --- building tensors from records ----------------------------------------------------
    def tensor(self, rec: TensorRecord, *, grad: bool = False):
        ad = self.adapter
        t = ad.from_array(rec.array, rec.dtype, self.like)
        if grad and ad.is_floating(t):
            t = ad.mark_requires_grad(t)
        return t

    def build(self, skeleton, grad: bool, made: list):
        if isinstance(skeleton, TensorRecord):
            if not skeleton.is_tensor:
                return skeleton.value if skeleton.array is None or skeleton.value is not None else skeleton.array
            t = self.tensor(skeleton, grad=grad)
            made.append(t)
            return t
        if isinstance(skeleton, (list, tuple)):
            items = [self.build(v, grad, made) for v in skeleton]
            return type(skeleton)(*items) if hasattr(skeleton, "_fields") else type(skeleton)(items)
        if isinstance(skeleton, dict):
            return {k: self.build(v, grad, made) for k, v in skeleton.items()}
        return skeleton

    # --- replay -----------------------------------------------------------------------------
    def replay(self, ref: Node, test: Node, *, substitute: Dict[int, List[Node]], backward: bool) -> Replayed:
        """Run ``test``'s layer on ``ref``'s recorded inputs. ``substitute`` maps a sublayer key
        of the tested model to the reference calls whose outputs replace its own, in call order."""
        ad = self.adapter
        layer = self.layers[test.layer_key]
        args_s, kwargs_s = ref.call_args
        made: list = []
        args = self.build(args_s, backward, made)
        kwargs = self.build(kwargs_s, backward, made)
        handles = []
        calls: Dict[int, int] = {}
        result = Replayed()

        def make_pre(key):
            def pre(_layer, c_args, c_kwargs):
                k = calls.get(key, 0)
                refs = substitute[key]
                if k < len(refs):
                    got = [(i, TensorRecord(ad.to_numpy(t), ad.dtype_name(t), ad.shape(t)))
                           for i, t in flatten((tuple(c_args), dict(c_kwargs or {})), ad.is_tensor) if ad.is_tensor(t)]
                    result.child_inputs.append((refs[k], got))
                return None
            return pre

        def make_post(key):
            def post(_layer, _args, _kwargs, _output):
                k = calls.get(key, 0)
                calls[key] = k + 1
                refs = substitute[key]
                if k < len(refs) and refs[k].out_skeleton is not None:
                    return self.build(refs[k].out_skeleton, False, [])
                return None
            return post

        out = None
        try:
            for key in substitute:
                handles.extend(ad.add_forward_hooks(self.layers[key], make_pre(key), make_post(key)))
            try:
                out = layer(*args, **kwargs)
            except Exception as exc:  # the user's layer, not padiff, raised
                raise PadiffError(f"Replaying `{test.label()}` on the reference model's inputs (single-step mode) "
                                  f"raised {type(exc).__name__}: {exc}") from exc
            leaves = flatten(out, ad.is_tensor)
            for id_path, leaf in leaves:
                if ad.is_tensor(leaf):
                    result.outputs.append((id_path, TensorRecord(ad.to_numpy(leaf), ad.dtype_name(leaf),
                                                                 ad.shape(leaf))))
                else:
                    result.outputs.append((id_path, TensorRecord.plain(leaf)))
            if backward and ref.grad_out:
                outs, grads = [], []
                for id_path, leaf in leaves:
                    g = ref.grad_out.get(id_path)
                    if g is not None and ad.is_tensor(leaf) and ad.requires_grad(leaf):
                        outs.append(leaf)
                        grads.append(self.tensor(g))
                if outs:
                    ad.backward(outs, grads)
                    for id_path, leaf in flatten((args, kwargs), ad.is_tensor):
                        if ad.is_tensor(leaf):
                            g = ad.tensor_grad(leaf)
                            if g is not None:
                                result.grad_in[id_path] = TensorRecord(ad.to_numpy(g), ad.dtype_name(g), ad.shape(g))
            return result
        finally:
            for h in handles:
                ad.remove_hook(h)
