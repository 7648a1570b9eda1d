"""``auto_diff``: run two models side by side, compare every layer, report the first diff.

Flow: options -> sides (adapters) -> weight plan (copy when asked) -> per step: record both
models (forward, loss, backward) -> pair the traces -> compare -> optimizer step -> compare
weights -> render. Frameworks are reached only through adapters.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

from .compare import nonfinite
from .compare.context import GradientContext
from .compare.engine import (compare_backward, compare_forward, compare_outputs, compare_links, gap_notes,
                             largest_magnitude)
from .compare.metrics import (TensorDiff, carried_error, compare_arrays, compare_records, explained_error,
                              tolerance_for)
from .compare.origin import step_origin
from .compare.overlap import Arrivals, Background, wants_overlap
from .compare.edges import composite_boundaries, shift_fused_activations
from .compare.pairing import correspondence, layer_paths, pair_traces
from .compare.result import AlignResult, Finding, StepResult
from .errors import PadiffError
from .loss import default_loss_weights
from .frameworks import adapter_for
from .options import Options, build_options, preflight
from .record.recorder import Recorder
from .record.spill import Spill
from ._memory import release_freed_memory
from .record.trace import TensorRecord
from .report import console
from .report.weights import copy_failure_lines, copy_failure_message, structure_lines
from .side import Side, make_sides
from .structure import flatten, show_id
from .weights.assign import WeightPlan, apply_copy, plan_copy
from .weights.layer_map import LayerMap
from .weights.rules import family

P = console.P


class _Printer:
    """Prints report lines as they come (unless ``quiet``) and keeps them for
    ``AlignResult.report``."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream
        self.quiet = quiet
        self.lines: List[str] = []

    def __call__(self, *lines: str) -> None:
        for line in lines:
            self.lines.append(line)
            if not self.quiet:
                print(line, file=self.stream or sys.stdout)

    def text(self) -> str:
        return "\n".join(self.lines)


# --- sides and inputs --------------------------------------------------------------------------

def _accepts(fn, keys) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    params = sig.parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return set(keys) <= names


def _with_grad_leaves(side: Side, value):
    """The same nested input with every floating tensor replaced by a fresh copy that records
    its gradient: the backward then reaches the input (and runs for weightless models). The
    user's own tensors are not touched."""
    ad = side.adapter
    if ad.is_tensor(value):
        return ad.detach_requires_grad(value) if ad.is_floating(value) else value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_with_grad_leaves(side, v) for v in value)
    if isinstance(value, dict):
        return {k: _with_grad_leaves(side, v) for k, v in value.items()}
    return value


def make_call(side: Side, inp, notes: List[str], grad_inputs: bool = False):
    """A no-argument callable running the model on one side's input: a dict is passed as
    keywords, a list/tuple as positional arguments, anything else as the single argument."""
    model = side.model
    if grad_inputs:
        inp = _with_grad_leaves(side, inp)
    if isinstance(inp, dict):
        fwd = side.adapter.forward_callable(model)
        if _accepts(fwd, inp.keys()):
            return lambda: model(**inp)
        notes.append(
            f"The {side.label} model's forward does not take the keyword(s) {', '.join(map(repr, inp))}; "
            "padiff passed the dict's values by position instead."
        )
        values = list(inp.values())
        return lambda: model(*values)
    if isinstance(inp, (list, tuple)):
        return lambda: model(*inp)
    return lambda: model(inp)


def _leaf_array(side: Side, leaf):
    """(array, dtype name) of an input leaf; the framework's dtype name for tensors, since a
    bfloat16 tensor arrives as a float32 array."""
    ad = side.adapter
    if ad.is_tensor(leaf):
        return ad.to_numpy(leaf), ad.dtype_name(leaf)
    if isinstance(leaf, (np.ndarray, int, float, bool, np.generic)):
        arr = np.asarray(leaf)
        return arr, str(arr.dtype)
    return None, ""


_ORDINAL = ("first", "second")


def check_input_frameworks(sides, inputs) -> None:
    """Each input holds tensors of its own model's framework: a torch tensor given to the paddle
    model (inputs in the wrong order) is named before anything runs."""
    from .frameworks import framework_of

    foreign = []
    for i, (side, inp) in enumerate(zip(sides, inputs)):
        leaves = flatten(inp, lambda x: framework_of(x) is not None)
        kinds = {}
        for id_path, leaf in leaves:
            fw = framework_of(leaf)
            if fw is not None and fw != side.adapter.name:
                kinds.setdefault(fw, show_id(id_path, "input"))
        for fw, where in kinds.items():
            foreign.append((i, fw, where))
    if not foreign:
        return
    said = []
    for i, fw, where in foreign:
        said.append(f"the {_ORDINAL[i]} input holds {fw} tensors ({where}) but the {_ORDINAL[i]} model is "
                    f"{sides[i].adapter.name}")
    swapped = (len(foreign) == 2 and foreign[0][0] == 0 and foreign[1][0] == 1
               and foreign[0][1] == sides[1].adapter.name and foreign[1][1] == sides[0].adapter.name)
    text = ", and ".join(said)
    raise PadiffError(
        text[0].upper() + text[1:] + ": inputs are in model order (the first model's input first), each made of "
        "its own model's tensors." + (" Swap the two inputs." if swapped else "")
    )


def check_inputs(sides, inputs, notes: List[str]) -> list:
    """Same structure and shapes on both sides; a value difference is noted, not refused.
    Returns where each model's input holds NaN/Inf (``compare.nonfinite.NonFinite``), noted too."""
    flat = []
    for side, inp in zip(sides, inputs):
        is_t = side.adapter.is_tensor
        leaves = flatten(inp, is_t)  # a dict's values in order, named by key: input["x"]
        flat.append(leaves)
    a, b = flat
    if len(a) != len(b):
        raise PadiffError(
            f"The two inputs hold different numbers of values: {len(a)} for the {sides[0].label} model, "
            f"{len(b)} for the {sides[1].label} model. Give both models the same inputs, in the same order."
        )
    arrays = [[], []]
    for (ia, la), (ib, lb) in zip(a, b):
        (xa, da), (xb, db) = _leaf_array(sides[0], la), _leaf_array(sides[1], lb)
        for i, (idp, x) in enumerate(((ia, xa), (ib, xb))):
            if x is not None:
                arrays[i].append((idp, x))
        if xa is None or xb is None:
            continue
        name = show_id(ia, "input")
        if xa.shape != xb.shape:
            raise PadiffError(
                f"The models' inputs differ in shape at {name}: {list(xa.shape)} ({sides[0].label}) vs "
                f"{list(xb.shape)} ({sides[1].label}). Give both models the same data."
            )
        if xa.size and xa.dtype.kind in "fc" and xb.dtype.kind in "fc":
            d = compare_arrays(xa, xb, tolerance_for(Options(), da, db))
            if not d.passed and d.problem != "nan":  # NaN/Inf in an input: noted below
                notes.append(f"The two models' inputs differ at {name} (greatest difference {d.max_abs:.3g}): "
                             "every layer will differ. Check that both sides get the same data.")
    found = []
    for side, arrs in zip(sides, arrays):
        x = nonfinite.first_in_inputs(side.label, arrs)
        if x is not None:
            found.append(x)
            notes.append(f"The {side.label} model's {x.what} holds {x.nan} NaN and {x.inf} Inf of {x.numel} values: "
                         "every value computed from it will be non-finite.")
    return found


def _random_layers(side: Side) -> List[str]:
    from .weights.assign import layer_tree

    found = []
    for _, _, path, layer in layer_tree(side):
        p = side.adapter.random_layer_p(layer)
        if p and p > 0 and side.adapter.is_training(layer):
            found.append(f"{path} (p={p:g})")
    return found


# --- one side's run -----------------------------------------------------------------------------

def _float_leaves(side: Side, out):
    ad = side.adapter
    return [t for _, t in flatten(out, ad.is_tensor) if ad.is_tensor(t) and ad.is_floating(t)]


class SideRun:
    """One model's run of one step: its trace, its parameter gradients by dotted path, and the
    recorder's walk (layer objects by key, for single-step replay)."""

    def __init__(self, trace, grads, walk):
        self.trace = trace
        self.grads = grads
        self.walk = walk


def _loss_of(side: Side, out, loss_fn):
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
                loss = _loss_of(side, out, loss_fn)
                rec.trace.loss = TensorRecord(ad.to_numpy(loss), ad.dtype_name(loss), ad.shape(loss))
                if opts.check_backward:
                    if not ad.requires_grad(loss):
                        raise PadiffError(
                            f"The {side.label} model's loss does not require a gradient (all parameters frozen, or "
                            "the model ran under no_grad?): padiff cannot compare the backward. Use "
                            "diff_phase='forward'.")
                    try:
                        ad.backward(loss)
                    except Exception as exc:
                        raise PadiffError(
                            f"The {side.label} model's backward raised {type(exc).__name__}: {exc}") from exc
        if opts.check_backward:
            for path, tensor in param_paths:
                g = ad.param_grad(tensor)
                if g is not None:
                    run.grads[path] = TensorRecord(ad.to_numpy(g), ad.dtype_name(g), ad.shape(g))
    finally:
        if arrivals is not None:
            arrivals.finish()
    return run


_REGISTERED_APIS: List[str] = []


def register_api(*functions) -> None:
    """Trace these functions as framework calls too (custom ops): dotted names
    ('paddle3d.ops.iou3d_nms') or the function objects themselves. The same as the
    PADDLE_THIRDPARTY_API environment variable of seed 001."""
    for fn in functions:
        name = fn if isinstance(fn, str) else f"{fn.__module__}.{fn.__qualname__}"
        if name not in _REGISTERED_APIS:
            _REGISTERED_APIS.append(name)


def unregister_api(*functions) -> None:
    for fn in functions:
        name = fn if isinstance(fn, str) else f"{fn.__module__}.{fn.__qualname__}"
        if name in _REGISTERED_APIS:
            _REGISTERED_APIS.remove(name)


def registered_apis():
    return tuple(_REGISTERED_APIS)


def _clear_grads(side: Side) -> None:
    ad = side.adapter
    for _, p in ad.all_params(side.model):
        if ad.param_grad(p) is not None:
            ad.set_grad(p, None)


def _pair_of(value, what: str):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PadiffError(f"{what} must be a pair [for_first_model, for_second_model], got {type(value).__name__}.")
    return list(value)


def _check_callables(sides, loss_fns, optimizers, schedulers) -> None:
    """Each loss function is callable, each optimizer is one of its model's framework (or a
    no-argument function), each scheduler has ``step`` (or is a function): said before any
    model runs, not after the first backward."""
    for i, side in enumerate(sides):
        which = ("first", "second")[i]
        if loss_fns is not None and not callable(loss_fns[i]):
            raise PadiffError(f"loss_fn[{i}] (for the {which} model, {side.label}) is a {type(loss_fns[i]).__name__}, "
                              "not a function: a loss_fn takes the model's output and returns a scalar tensor.")
        if optimizers is not None:
            opt = optimizers[i]
            if not side.adapter.is_optimizer(opt) and not callable(opt):
                raise PadiffError(f"optimizer[{i}] (for the {which} model, {side.label}) is a {type(opt).__name__}: "
                                  "pass an optimizer of its framework or a no-argument function that updates the "
                                  "weights.")
        if schedulers is not None:
            sched = schedulers[i]
            if not hasattr(sched, "step") and not callable(sched):
                raise PadiffError(f"scheduler[{i}] (for the {which} model, {side.label}) is a {type(sched).__name__}: "
                                  "pass a learning-rate scheduler with .step(), or a no-argument function.")


def _step_optimizer(side: Side, opt) -> None:
    ad = side.adapter
    if ad.is_optimizer(opt):
        ad.optimizer_step(opt)
    elif callable(opt):
        opt()
    else:
        raise PadiffError(f"The {side.label} optimizer is a {type(opt).__name__}: pass an optimizer of its framework "
                          "or a no-argument function that updates the weights.")


def _learning_rates(side: Side, opt):
    return side.adapter.optimizer_lr(opt) if opt is not None and side.adapter.is_optimizer(opt) else None


def _step_scheduler(side: Side, sched) -> None:
    if hasattr(sched, "step"):
        sched.step()
    elif callable(sched):
        sched()
    else:
        raise PadiffError(f"The {side.label} scheduler is a {type(sched).__name__}: pass a learning-rate scheduler "
                          "with .step(), or a no-argument function.")


# --- single-step mode -----------------------------------------------------------------------------

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
    _clear_grads(side)
    for p, rec in kept:
        ad.set_grad(p, ad.from_array(rec.array, rec.dtype, p))


def single_step_findings(pairing, ref_run: SideRun, test_run: SideRun, ref: Side, test: Side, opts: Options,
                         step: int):
    """Replay every paired layer of the tested model on the reference's inputs; returns
    (forward findings, backward findings), each layer's own difference.

    Backward: each layer without sublayers is fed the reference's output gradient on both
    sides, the reference's layer replayed as well as the tested one. The input gradient the
    reference recorded cannot stand for its own: it is the whole gradient of that tensor, over
    every layer that read it (a residual's skip path adds to a pre-norm's input gradient).
    The parameters' gradients and state (BatchNorm statistics) are as the run left them
    afterwards: the optimizer step comes next."""
    from .compare.engine import compare_outputs, compare_grads
    from .record.replay import Replayer, recorded_inputs

    replayer = Replayer(test.adapter, test_run.walk.layers, test.model)
    own = Replayer(ref.adapter, ref_run.walk.layers, ref.model) if opts.check_backward else None
    fwd, bwd = [], []
    rounding = GradientContext(ref_run.trace.backward_events())
    sides = [test, ref] if opts.check_backward else [test]
    kept = []
    try:
        for s in sides:
            kept.append((s, _snapshot(s), _take_grads(s)))
        for a in ref_run.trace.exit_order():
            b = pairing.partner.get(id(a))
            if b is None or a.kind != "net" or a.parent is None or a.call_args is None:
                continue
            net_pairs = [(x, pairing.partner.get(id(x))) for x in a.children if x.kind == "net"]
            substitute = {}
            for x, y in net_pairs:
                if y is not None:
                    substitute.setdefault(y.layer_key, []).append((x, y))
            leaf = not net_pairs
            backward = opts.check_backward and leaf and bool(a.grad_in)
            got = replayer.replay(a, b, substitute=substitute, backward=backward)
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
    finally:
        for s, snapshot, grads in kept:
            _restore(s, snapshot)
            _give_grads(s, grads)
    return fwd, bwd


# --- the public function ------------------------------------------------------------------------

def auto_diff(base_model, raw_model, inputs, loss_fn=None, optimizer=None, layer_map=None,
              auto_weights=None, steps=None, options=None, scheduler=None, **kwargs) -> AlignResult:
    """Compare two models layer by layer; returns an :class:`AlignResult` (true when aligned).

    ``inputs`` is a pair: the first model's input and the second's (each a dict of keyword
    arguments, a list/tuple of positional ones, or one tensor). ``loss_fn``, ``optimizer``
    and ``scheduler`` are pairs in the same order. Options may be keywords or in ``options``.
    """
    if "loss_fns" in kwargs:
        loss_fn = kwargs.pop("loss_fns") if loss_fn is None else loss_fn
    if "optimizers" in kwargs:
        optimizer = kwargs.pop("optimizers") if optimizer is None else optimizer
    if "schedulers" in kwargs:
        scheduler = kwargs.pop("schedulers") if scheduler is None else scheduler
    if auto_weights is not None:
        kwargs["auto_weights"] = auto_weights
    if steps is not None:
        kwargs["steps"] = steps
    opts = build_options(options, **kwargs)
    preflight(opts)  # the log folder and the HTML report's needs, before any model runs
    layer_map = LayerMap.create_from(layer_map)
    sides, ref_i = make_sides(base_model, raw_model)
    ref, test = sides[ref_i], sides[1 - ref_i]
    loss_fns = _pair_of(loss_fn, "loss_fn")
    optimizers = _pair_of(optimizer, "optimizer")
    schedulers = _pair_of(scheduler, "scheduler")
    _check_callables(sides, loss_fns, optimizers, schedulers)  # before any model runs
    notes: List[str] = []
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "biuf":
        # One array for both models (PaDiff before 0.2): each gets it as a tensor of its own.
        notes.append(f"One numpy array {list(inputs.shape)} ({inputs.dtype}) was given as the input: each model "
                     "received it as one positional tensor of its framework.")
        inputs = tuple(side.adapter.from_array(inputs, inputs.dtype.name) for side in sides)
    if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
        raise PadiffError(
            "inputs must be a pair (input of the first model, input of the second model), each a dict of "
            "keyword arguments, a list/tuple of positional arguments, or a single tensor; or one numpy "
            "array that both models take as their only input."
        )
    check_input_frameworks(sides, inputs)
    if opts.steps > 1 and optimizers is None:
        notes.append(f"steps={opts.steps} without an optimizer would repeat the same step: padiff ran 1 step. "
                     "Pass optimizer=[opt_for_first, opt_for_second] to train several steps.")
    opts = replace(opts, use_loss=loss_fns is not None, use_opt=optimizers is not None,
                   steps=opts.steps if optimizers is not None else 1)
    out = _Printer(quiet=not opts.verbose)
    out(*console.options_block(opts.shown()))

    calls = [make_call(s, inp, notes, grad_inputs=opts.check_backward) for s, inp in zip(sides, inputs)]
    input_nonfinite = check_inputs(sides, inputs, notes)
    for s in sides:
        rnd = _random_layers(s)
        if rnd:
            notes.append(f"The {s.label} model is in train mode with random layers ({', '.join(rnd[:3])}"
                         f"{', ...' if len(rnd) > 3 else ''}): their outputs cannot agree. Call .eval() on both "
                         "models, or set their drop probability to 0, before comparing.")
    if opts.single_step and opts.check_backward:
        notes.append("single_step with diff_phase including backward runs every layer once more, and the "
                     "reference's layers without sublayers too, to feed them the reference's output gradient.")

    plan = plan_copy(ref, test, layer_map, probe=(calls[ref_i], calls[1 - ref_i]))  # probe: fused layouts
    notes.extend(plan.notes)
    if opts.auto_weights:
        if not plan.ok:
            lines = copy_failure_lines(plan, first_side=sides[0], layer_map=layer_map, show_path=opts.path_log)
            out(*lines)
            error = PadiffError("\n".join(copy_failure_message(plan)) + (
                "\n(The full report with both model trees is printed above.)" if opts.verbose else
                "\n(The full report with both model trees is this error's `report`.)"))
            error.report = out.text()
            raise error
        out(*structure_lines(plan))
        apply_copy(plan)
        out(f"{P} Assign weight success !!!")
    elif not plan.ok:
        notes.append("Parameters could not be paired between the models, so parameter gradients and weights are not "
                     f"compared: {plan.failure.message}")
    links = [l for l in plan.links if l.is_param] if plan.ok else []
    layer_pairs = plan.layer_pairs() if plan.ok else []
    fused = [p for group in plan.fused_layers() for paths in group for p in paths] if plan.ok else []
    out(*console.notes_block(notes))

    result = AlignResult(False, options=opts, ref_label=ref.label, test_label=test.label, notes=list(notes))
    reprs = lambda link: (ref.adapter.layer_repr(link.src_unit.layer), test.adapter.layer_repr(link.dst_unit.layer))
    need_loss = opts.check_backward or loss_fns is not None
    started = time.monotonic()
    param_paths = {ref_i: [(s.src_path, s.src_tensor) for l in links for s in l.sources()],
                   1 - ref_i: [(l.dst_path, l.dst_tensor) for l in links]}
    # Compare while the tested model runs its backward when its framework leaves a core idle
    # (single-step mode replays the tested model after its run, so it compares afterwards).
    threaded = wants_overlap(opts.overlap, test.adapter, test.model) and not opts.single_step
    result.overlapped = threaded
    try:
        for step in range(opts.steps):
            out(console.step_header(step) + (_eta(step, opts.steps, started) if opts.steps > 1 else ""))
            for s in sides:
                _clear_grads(s)
            budget = None if opts.memory_budget_mb is None else int(opts.memory_budget_mb * 2 ** 20)
            with Spill(budget) as ref_spill, Spill(budget) as test_spill:
                run_args = dict(opts=opts, need_loss=need_loss, layer_map=layer_map)
                ref_run = run_side(ref, calls[ref_i], loss_fn=loss_fns[ref_i] if loss_fns else None,
                                   param_paths=param_paths[ref_i], keep_inputs=opts.single_step, spill=ref_spill,
                                   **run_args)
                release_freed_memory()  # the reference's activations, before the tested model's run
                compared = []  # the comparison, started once the tested model's forward is recorded
                arrivals = Arrivals() if threaded else None

                def start(test_run):
                    compared.append(Background(
                        lambda: _compare_step(ref_run, test_run, ref, test, links, opts, step, reprs, layer_map,
                                              layer_pairs=layer_pairs, fused=fused,
                                              ready=arrivals.ready if arrivals else None), threaded))

                try:
                    test_run = run_side(test, calls[1 - ref_i], loss_fn=loss_fns[1 - ref_i] if loss_fns else None,
                                        param_paths=param_paths[1 - ref_i], keep_inputs=opts.single_step,
                                        spill=test_spill, after_forward=start, arrivals=arrivals, **run_args)
                    sr = compared[0].result()
                finally:
                    for job in compared:
                        job.abandon()  # a failed run: wait for the worker before leaving
                sr.loss = _loss_finding(ref_run, test_run, loss_fns, opts, step)
                if not sr.passed:  # where NaN/Inf first appeared, read before the arrays go
                    nonfinite.track(sr, ref.label, test.label, inputs=input_nonfinite)
                ref_run.trace.drop_arrays()  # every figure is in the findings now
                test_run.trace.drop_arrays()
                del ref_run, test_run, compared
            release_freed_memory()
            if optimizers is not None:
                lrs = [_learning_rates(sides[i], optimizers[i]) for i in (ref_i, 1 - ref_i)]
                for idx in (ref_i, 1 - ref_i):
                    _step_optimizer(sides[idx], optimizers[idx])
                    if schedulers is not None:
                        _step_scheduler(sides[idx], schedulers[idx])
                sr.lr = _lr_findings(lrs, opts, step)
                sr.weights = weight_findings(
                    links, sr.grads,
                    lambda l: TensorRecord(ref.adapter.to_numpy(l.src_tensor), ref.adapter.dtype_name(l.src_tensor)),
                    lambda l: TensorRecord(test.adapter.to_numpy(l.dst_tensor), test.adapter.dtype_name(l.dst_tensor)),
                    opts, step, reprs)
            if end_step(result, sr, out, opts) is not None:
                break
    finally:
        if optimizers is None:
            for s in sides:
                _clear_grads(s)

    return finish(result, out, ref, test, ref_i, opts)


def end_step(result: AlignResult, sr: StepResult, out, opts):
    """Add a compared step to the result and print its lines; returns its first difference
    (the run stops there) or None. Shared with the offline compare."""
    shown = {n for earlier in result.steps for n in earlier.notes}  # a note repeated each step: once
    result.steps.append(sr)
    out(f"{P} Max elementwise output diff is {sr.max_output_diff} (the model's final output)")
    out(*console.notes_block([n for n in sr.notes if n not in shown]))
    result.first = sr.first_failure
    if result.first is not None and sr.nonfinite is None:  # an offline compare: its arrays are still readable
        nonfinite.track(sr, result.ref_label, result.test_label)
    result.nonfinite = list(sr.nonfinite or [])
    # Where the error jumped, apart from the verdict (single-step comparisons are each a
    # layer's own: nothing to trace back there).
    sr.likely_origin = None if opts.single_step else step_origin(sr)
    if result.first is not None:
        result.likely_origin = next((s.likely_origin for s in result.steps
                                     if s.likely_origin is not None and s.likely_origin.let_through), None)
        return result.first
    if opts.check_forward:
        out(f"{P} forward stage compared.")
    if opts.check_backward:
        out(f"{P} backward stage compared.")
    if sr.grads or sr.weights:
        out(f"{P} weight and grad compared.")
    return None


def finish(result: AlignResult, out, ref, test, ref_i, opts) -> AlignResult:
    """The end of a report, shared with the offline compare: the failure block and diff logs,
    the HTML report and tables when asked, a short summary (coloured on a terminal), and the
    seeds' verdict line last."""
    result.passed = result.first is None
    if not result.passed:
        _render_failure(result, out, ref, test, ref_i, opts)
    if opts.report == "html":
        from .report.html import write_reports  # needs jinja2: imported only when asked for

        paths = write_reports(result, opts.log_dir)
        result.log_files.extend(paths)
        out(f"{P} Reports: " + paths[0], *[f"{P}          {p}" for p in paths[1:]])
    from .report.tables import run_tail

    # What the lines above did not say yet (how many comparisons, the error's growth), then the
    # seeds' verdict line: one verdict per run, last.
    out(*run_tail(result, stream=out.stream or sys.stdout))
    out(f"{P} SUCCESS !!!" if result.passed else f"{P} FAILED !!!")
    result.report = out.text()
    return result


def weight_findings(links, grad_findings, read_ref, read_test, opts, step, reprs):
    """The weights after the optimizer step, compared; a difference where the gradients agreed
    is named an optimizer difference."""
    findings = compare_links(links, read_ref, read_test, "weight", "weight", opts, step, reprs)
    grads_ok = all(f.passed for f in grad_findings)
    buffers = {l.dst_path for l in links if not l.src_is_param}
    for f in findings:
        if f.passed:
            continue
        if f.test_path in buffers:
            f.cause = ("This is a buffer the forward pass updates, not a weight the optimizer changes: in train mode "
                       "paddle's BatchNorm updates its running variance with the biased batch variance, torch's "
                       "with the unbiased one, which differ for small batches. Compare in eval mode, or ignore "
                       "the running statistics.")
        elif grads_ok:
            f.cause = ("The gradients agreed before the optimizer step, so this is an optimizer difference "
                       "(learning rate, momentum, weight decay, epsilon?).")
        else:
            f.cause = "The gradients already differed, so this follows from the backward difference."
    return findings


def _compare_step(ref_run, test_run, ref, test, links, opts, step, reprs, layer_map, ready=None,
                  layer_pairs=(), fused=()) -> StepResult:
    """Pair and compare one step. ``ready(node, kind)`` (see :class:`~padiff.compare.overlap.Arrivals`)
    waits for gradients of the tested run that may still be coming: the comparison can then
    start as soon as the tested model's forward is recorded. ``layer_pairs`` (reference path,
    tested path) are the layers the weight plan paired: their calls pair with each other;
    ``fused``, the paths of fused projections and their parts, whose calls have no partner."""
    sr = StepResult(step, ref_trace=ref_run.trace, test_trace=test_run.trace)
    mapped, ignored = {}, set()
    if layer_map is not None:
        for a, b in layer_map.pairs():
            mapped[id(a)] = id(b)
            mapped[id(b)] = id(a)
        ignored = {key for run in (ref_run, test_run) for key, layer in run.walk.layers.items()
                   if layer_map.is_ignored(layer)}
    ref_paths, test_paths = layer_paths(ref_run.trace), layer_paths(test_run.trace)
    corr = correspondence(ref_paths, test_paths, list(layer_pairs))
    fused_keys = {k for paths in (ref_paths, test_paths) for k, path in paths.items() if path in set(fused)}
    wrap = _skip_fn(opts)
    pairing = pair_traces(ref_run.trace, test_run.trace, ref_label=ref.label, test_label=test.label,
                          skip=lambda n: n.layer_key in ignored or wrap(n), mapped=mapped, corr=corr, kind=family,
                          alone=fused_keys)
    composite_boundaries(pairing)
    shift_fused_activations(pairing, ref_run.trace.nodes, lambda a, b: all(
        f.passed for f in compare_outputs(a, b, a.outputs, b.outputs, opts, step)))
    sr.pairing = pairing
    sr.notes.extend(pairing.notes)
    memo: dict = {}  # one step's comparisons of identical record pairs
    gaps: list = []  # outputs compared on neither side (one side only, None, objects): notes
    forward = compare_forward(pairing, ref_run.trace.exit_order(), opts, step, memo, gaps=gaps)
    sr.notes.extend(gap_notes(gaps, ref.label, test.label))
    sr.max_output_diff = max((f.diff.max_abs for f in forward if f.ref_node is ref_run.trace.root), default=0.0)
    if any(f.diff.problem == "nan" for f in forward if f.ref_node is ref_run.trace.root):
        sr.max_output_diff = float("nan")  # a NaN/Inf output: no difference to state
    if opts.single_step:
        normal_first = next((f for f in forward if not f.passed), None)
        fwd, bwd = single_step_findings(pairing, ref_run, test_run, ref, test, opts, step)
        sr.forward, sr.backward = fwd, bwd
        bad = [f for f in fwd + bwd if not f.passed]
        if normal_first is not None:
            sr.notes.append(f"Without single-step the first difference is at `{normal_first.ref_path}`; single-step "
                            f"finds {len(bad)} layer(s) whose own difference exceeds tolerance. (The loss and "
                            "parameter gradients carry accumulated differences and are not judged in this mode.)")
    else:
        sr.forward = forward if opts.check_forward else []
        if opts.check_backward:
            rounding = GradientContext(ref_run.trace.backward_events())
            sr.backward = compare_backward(pairing, ref_run.trace.backward_events(), opts, step, memo,
                                           context=rounding, ready=ready, notes=sr.notes,
                                           near_ties=all(f.passed for f in forward))
        sr.forward, sr.backward, moved = _api_within_failing_layers(sr.forward, sr.backward)
        if moved:
            sr.notes.append(
                f"{len(moved)} framework call(s) differ inside layers whose results agree (first: "
                f"`{moved[0].test_path}`): the two implementations order those calls differently, so they are "
                "not counted.")
    if opts.check_backward and not opts.single_step:
        if ready is not None:
            ready()  # the tested run's parameter gradients are read after its backward
        sr.grads = compare_links(links, lambda l: ref_run.grads.get(l.src_path), lambda l: test_run.grads.get(l.dst_path),
                                 "grad", "grad", opts, step, reprs, context=_parameter_context(rounding),
                                 explained=explained_error(f.diff for f in sr.backward),
                                 carried=carried_error(f.diff for f in sr.backward))
        for f in sr.grads:
            if not f.passed:
                f.cause = "Parameter gradient differs: a backward difference."
    return sr


def _parameter_context(rounding: GradientContext):
    """``context(link, reference record)`` for parameter gradients: from the calls of the
    layer (or layers, for a fused parameter) that holds the reference's parameter."""
    def context(link, rec):
        return max(rounding.for_parameter(s.src_unit.key, s.src_unit.path, rec) for s in link.sources())
    return context


def _api_within_failing_layers(forward, backward):
    """A framework-call (API) finding counts only where its layer's own result differs too: a
    call that differs inside an agreeing layer means the implementations order their calls
    differently (``3.9 * x * (1 - x)`` against ``3.9 * (x - x * x)``), not that they disagree."""
    moved = []

    def keep(findings):
        failing_layers = {id(f.ref_node) for f in findings if f.ref_node is not None and f.ref_node.kind == "net"
                          and not f.passed}
        kept = []
        for f in findings:
            if f.ref_node is not None and f.ref_node.kind == "api" and not f.passed \
                    and id(f.ref_node.parent) not in failing_layers:
                moved.append(f)
            else:
                kept.append(f)
        return kept

    return keep(forward), keep(backward), moved


def _loss_finding(ref_run, test_run, loss_fns, opts, step):
    a, b = ref_run.trace.loss, test_run.trace.loss
    if a is None or b is None or opts.single_step:
        return None
    # The loss is computed from the model's outputs: rounding alone leaves u times their size.
    tol = tolerance_for(opts, b.dtype, a.dtype, "loss", stage="loss",
                        context=largest_magnitude(r for _, r in ref_run.trace.root.outputs))
    name = "loss_fn" if loss_fns else "weighted mean(output)"
    f = Finding("loss", "loss", "loss", "loss", name, name, compare_records(b, a, tol, "strict"), step)
    if not f.passed:
        f.cause = "The losses differ while every layer output agreed: look at the loss functions." 
    return f


def _lr_findings(lrs, opts, step):
    a, b = lrs
    if a is None or b is None:
        return []
    from .compare.metrics import Tolerance

    tol = Tolerance(0.0, 1e-6, False) if opts.atol is None and opts.rtol is None else tolerance_for(opts, "float64", "float64")
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape:  # torch keeps one lr per parameter group, paddle one per optimizer
        va, vb = va[:1], vb[:1]
    d = compare_arrays(vb, va, tol)
    f = Finding("lr", "learning rate", "optimizer", "optimizer", "lr", "lr", d, step)
    if not d.passed:
        f.cause = f"The learning rates in force differ at step {step}: {va.tolist()} vs {vb.tolist()} (check the schedulers)."
    return [f]


def _eta(step: int, steps: int, started: float) -> str:
    if step == 0:
        return f" (0/{steps} done)"
    per = (time.monotonic() - started) / step
    return f" ({step}/{steps} done, about {per * (steps - step):.0f}s left)"


def _skip_fn(opts: Options):
    if not opts.skip_wrap_layer:
        return lambda n: False
    return lambda n: n.kind == "net" and not n.has_params


def _render_failure(result: AlignResult, out, ref, test, ref_i, opts):
    sr = result.steps[-1]
    first = result.first
    lines, files = console.failure_block(first, sr, ref_side=ref, test_side=test, first_is_ref=(ref_i == 0),
                                         options=opts, log_dir=opts.log_dir, origin=result.likely_origin)
    out(*lines)
    result.log_files.extend(files)
    if opts.single_step:
        out(*console.single_step_list(sr, ref_side=ref, test_side=test))
    for findings, name, heading in ((sr.weights, "weight_diff.log", "After the optimizer step, weight value is different."),
                                    (sr.grads, "grad_diff.log", "After backward, grad value is different.")):
        bad = [f for f in findings if not f.passed]
        if bad:
            path = console.write_log(opts.log_dir, name,
                                     console.param_blocks(bad, heading=heading, ref_side=ref, test_side=test))
            result.log_files.append(path)
            what = "model weights" if name.startswith("weight") else "model grad"
            extra = ""
            if name.startswith("weight") and bad[0].cause.startswith("The gradients agreed"):
                extra = " The gradients agreed: an optimizer difference."
            out(f"{P} Diff found in {what} ({len(bad)} of {len(findings)} parameters), check report `{path}`.{extra}")
