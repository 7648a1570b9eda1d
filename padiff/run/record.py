"""One side's run of one step: the model's forward recorded, its loss formed, its backward run,
its parameter gradients read. Live models and ``padiff.dump`` record the same way."""

from __future__ import annotations

from ..errors import PadiffError
from ..loss import default_loss_weights
from ..options import Options
from ..record.recorder import Recorder
from ..record.trace import TensorRecord
from ..side import Side
from ..structure import flatten
from .apis import registered_apis


class SideRun:
    """One model's run of one step: its trace, its parameter gradients by dotted path, and the
    recorder's walk (layer objects by key, for single-step replay; None for a dump)."""

    def __init__(self, trace, grads, walk):
        self.trace = trace
        self.grads = grads
        self.walk = walk


def _float_leaves(side: Side, out):
    ad = side.adapter
    return [t for _, t in flatten(out, ad.is_tensor) if ad.is_tensor(t) and ad.is_floating(t)]


def loss_of(side: Side, out, loss_fn):
    """The scalar the backward starts from: the user's ``loss_fn(out)``, else a fixed weighted
    mean of the output's floating tensors (a plain mean has zero gradient through a final
    normalisation)."""
    ad = side.adapter
    if loss_fn is not None:
        try:
            loss = loss_fn(out)
        except Exception as exc:
            raise PadiffError(
                f"The {side.label} loss_fn raised {type(exc).__name__}: {exc}. A loss_fn takes the model's "
                "output and returns a scalar tensor (bind labels with functools.partial)."
            ) from exc
        if not ad.is_tensor(loss):
            raise PadiffError(f"The {side.label} loss_fn returned a {type(loss).__name__}, not a tensor: it must "
                              "return a scalar tensor of its framework.")
        return loss
    leaves = _float_leaves(side, out)
    if not leaves:
        raise PadiffError(
            f"The {side.label} model's output ({type(out).__name__}) holds no floating-point tensor, so padiff "
            "cannot form its default loss (a weighted mean of the output). Pass loss_fn=[fn_for_first_model, "
            "fn_for_second_model], or use diff_phase='forward'."
        )
    return ad.default_loss(leaves, [default_loss_weights(tuple(ad.shape(t))) for t in leaves])


def _backward(side: Side, loss, rec: Recorder) -> None:
    ad = side.adapter
    if not ad.requires_grad(loss):
        raise PadiffError(
            f"The {side.label} model's loss does not require a gradient (all parameters frozen, or "
            "the model ran under no_grad?): padiff cannot compare the backward. Use "
            "diff_phase='forward'.")
    try:
        ad.backward(loss)
    except Exception as exc:
        if rec.failure is not None:  # padiff's own error in a gradient hook, which paddle wraps in another
            raise rec.failure
        if isinstance(exc, PadiffError):
            raise
        raise PadiffError(f"The {side.label} model's backward raised {type(exc).__name__}: {exc}") from exc


def run_side(side: Side, call, *, opts: Options, loss_fn, need_loss: bool, param_paths, keep_inputs: bool,
             layer_map=None, spill=None, after_forward=None, arrivals=None) -> SideRun:
    """Record one model's forward (and backward); read its parameter gradients.

    ``after_forward(run)`` is called once the forward is recorded, before the loss and the
    backward; ``arrivals`` (:class:`~padiff.compare.overlap.Arrivals`) is told of every
    gradient as it is recorded and, at the end, that the run is finished (or failed)."""
    ad = side.adapter
    stop = layer_map.is_ignored_recursively if layer_map is not None else None  # mapped pairs are traced inside
    rec = Recorder(ad, side.model, side.name, grads=opts.check_backward, keep_inputs=keep_inputs, stop_at=stop,
                   api=opts.api_check, extra_api=opts.thirdparty_api + registered_apis(), spill=spill,
                   arrivals=arrivals)
    run = SideRun(rec.trace, {}, rec.walk)
    try:
        with rec:
            out = rec.run(call, side.label)
            if after_forward is not None:
                after_forward(run)
            if need_loss:
                loss = loss_of(side, out, loss_fn)
                rec.trace.loss = TensorRecord(ad.to_numpy(loss), ad.dtype_name(loss), ad.shape(loss))
                if opts.check_backward:
                    _backward(side, loss, rec)
        if opts.check_backward:
            for path, tensor in param_paths:
                g = ad.param_grad(tensor)
                if g is not None:
                    run.grads[path] = TensorRecord(ad.to_numpy(g), ad.dtype_name(g), ad.shape(g))
    finally:
        if arrivals is not None:
            arrivals.finish()
    return run
