"""``auto_diff``: run two models side by side, compare every layer, report the first diff.

A front door: it checks the arguments, builds the options and hands over to the run pipeline
(``padiff.run``): options -> sides (adapters) -> weight plan (copy when asked) -> per step:
record both models (forward, loss, backward) -> pair the traces -> compare -> optimizer step
-> compare weights -> report. Frameworks are reached only through adapters.
"""

from __future__ import annotations

from ._memory import spare_existing_objects
from .compare.result import AlignResult
from .options import build_options, preflight
from .report.run import Printer
from .run.apis import register_api, registered_apis, unregister_api  # noqa: F401  (padiff.register_api)
from .run.live import prepare_live, run_live
from .run.prepare import check_callables, pair_of
from .side import make_sides
from .weights.layer_map import LayerMap


def _by_old_names(kwargs, loss_fn, optimizer, scheduler):
    """``loss_fns``/``optimizers``/``schedulers``: the plural names of PaDiff before 0.2."""
    if "loss_fns" in kwargs:
        loss_fn = kwargs.pop("loss_fns") if loss_fn is None else loss_fn
    if "optimizers" in kwargs:
        optimizer = kwargs.pop("optimizers") if optimizer is None else optimizer
    if "schedulers" in kwargs:
        scheduler = kwargs.pop("schedulers") if scheduler is None else scheduler
    return loss_fn, optimizer, scheduler


def auto_diff(base_model, raw_model, inputs, loss_fn=None, optimizer=None, layer_map=None,
              auto_weights=None, steps=None, options=None, scheduler=None, **kwargs) -> AlignResult:
    """Compare two models layer by layer; returns an :class:`AlignResult` (true when aligned).

    ``inputs`` is a pair: the first model's input and the second's (each a dict of keyword
    arguments, a list/tuple of positional ones, or one tensor). ``loss_fn``, ``optimizer``
    and ``scheduler`` are pairs in the same order. Options may be keywords or in ``options``.
    """
    loss_fn, optimizer, scheduler = _by_old_names(kwargs, loss_fn, optimizer, scheduler)
    if auto_weights is not None:
        kwargs["auto_weights"] = auto_weights
    if steps is not None:
        kwargs["steps"] = steps
    opts = build_options(options, **kwargs)
    preflight(opts)  # the log folder and the HTML report's needs, before any model runs
    layer_map = LayerMap.create_from(layer_map)
    sides, ref_i = make_sides(base_model, raw_model)
    loss_fns, optimizers = pair_of(loss_fn, "loss_fn"), pair_of(optimizer, "optimizer")
    schedulers = pair_of(scheduler, "scheduler")
    check_callables(sides, loss_fns, optimizers, schedulers)  # before any model runs
    out = Printer(quiet=not opts.verbose)
    with spare_existing_objects():
        live, notes = prepare_live(sides, ref_i, inputs, loss_fns, optimizers, schedulers, opts, layer_map, out)
        result = AlignResult(False, options=live.opts, ref_label=live.cmp.ref.label,
                             test_label=live.cmp.test.label, notes=list(notes))
        return run_live(result, live, out)
