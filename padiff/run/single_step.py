"""Single-step mode: every paired layer of the tested model replayed on the reference's inputs,
so that each layer's own difference is measured apart from what reached it. The models are
left as the run left them: parameters, buffers and gradients are put back after the replay."""

from __future__ import annotations

from ..compare.context import GradientContext
from ..compare.engine import compare_grads, compare_outputs
from ..options import Options
from ..record.replay import Replayer, recorded_inputs
from ..record.trace import TensorRecord
from ..side import Side
from .train import clear_grads


def _snapshot(side: Side):
    ad = side.adapter
    return [(t, ad.to_numpy(t)) for _, t in ad.all_params(side.model) + ad.all_buffers(side.model)]


def _restore(side: Side, snapshot) -> None:
    ad = side.adapter
    for t, value in snapshot:
        ad.set_value(t, value)


def _take_grads(side: Side):
    """The parameters' gradients, copied, and cleared: a replay's backward adds to them, and the
    run's own are still wanted by the optimizer step that follows the comparison."""
    ad = side.adapter
    kept = []
    for _, p in ad.all_params(side.model):
        g = ad.param_grad(p)
        if g is not None:
            kept.append((p, TensorRecord(ad.to_numpy(g), ad.dtype_name(g), ad.shape(g))))
            ad.set_grad(p, None)
    return kept


def _give_grads(side: Side, kept) -> None:
    ad = side.adapter
    clear_grads(side)
    for p, rec in kept:
        ad.set_grad(p, ad.from_array(rec.array, rec.dtype, p))


def _replayable(a, pairing) -> bool:
    b = pairing.partner.get(id(a))
    return b is not None and a.kind == "net" and a.parent is not None and a.call_args is not None


def _replay_layer(a, pairing, replayer, own, rounding, opts: Options, step: int):
    """(forward findings, backward findings) of one reference layer ``a`` and its partner."""
    b = pairing.partner.get(id(a))
    net_pairs = [(x, pairing.partner.get(id(x))) for x in a.children if x.kind == "net"]
    substitute = {}
    for x, y in net_pairs:
        if y is not None:
            substitute.setdefault(y.layer_key, []).append((x, y))
    backward = opts.check_backward and not net_pairs and bool(a.grad_in)
    got = replayer.replay(a, b, substitute=substitute, backward=backward)
    fwd, bwd = [], []
    if opts.check_forward:
        for child, received in got.child_inputs:
            fwd += compare_outputs(a, b, recorded_inputs(child), received, opts, step, "input",
                                   f" of {child.label()} (own, single step)")
        fwd += compare_outputs(a, b, a.outputs, got.outputs, opts, step, "output", " (own, single step)")
    if backward:
        mine = own.replay(a, a, substitute={}, backward=True).distinct_grads()
        # paired by position, each tensor once: torch's MultiheadAttention takes (x, x, x)
        # where a port may take x
        theirs = {k: g for (k, _), (_, g) in zip(mine, got.distinct_grads())}
        bwd += compare_grads(a, b, dict(mine), theirs, opts, step, "input gradient (own, single step)",
                             context=lambda rec, node=a: rounding.for_own(node, rec))
    return fwd, bwd


def single_step_findings(pairing, ref_run, test_run, ref: Side, test: Side, opts: Options, step: int):
    """Replay every paired layer of the tested model on the reference's inputs; returns
    (forward findings, backward findings), each layer's own difference.

    Backward: each layer without sublayers is fed the reference's output gradient on both
    sides, the reference's layer replayed as well as the tested one. The input gradient the
    reference recorded cannot stand for its own: it is the whole gradient of that tensor, over
    every layer that read it (a residual's skip path adds to a pre-norm's input gradient).
    The parameters' gradients and state (BatchNorm statistics) are as the run left them
    afterwards: the optimizer step comes next."""
    replayer = Replayer(test.adapter, test_run.walk.layers, test.model)
    own = Replayer(ref.adapter, ref_run.walk.layers, ref.model) if opts.check_backward else None
    fwd, bwd = [], []
    rounding = GradientContext(ref_run.trace.backward_events())
    kept = []
    try:
        for s in ([test, ref] if opts.check_backward else [test]):
            kept.append((s, _snapshot(s), _take_grads(s)))
        for a in ref_run.trace.exit_order():
            if _replayable(a, pairing):
                f, b = _replay_layer(a, pairing, replayer, own, rounding, opts, step)
                fwd += f
                bwd += b
    finally:
        for s, snapshot, grads in kept:
            _restore(s, snapshot)
            _give_grads(s, grads)
    return fwd, bwd
