"""``auto_diff``: run two models side by side, compare every layer, report the first diff.

Flow: options -> sides (adapters) -> weight plan (copy when asked) -> per step: record both
models (forward, loss, backward) -> pair the traces -> compare -> optimizer step -> compare
weights -> render. Frameworks are reached only through adapters.
"""

from __future__ import annotations

import inspect
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

from .compare.engine import compare_backward, compare_forward, compare_links
from .compare.metrics import TensorDiff, compare_arrays, compare_records, tolerance_for
from .compare.pairing import pair_traces
from .compare.result import AlignResult, Finding, StepResult
from .errors import PadiffError
from .frameworks import adapter_for
from .options import Options, build_options
from .record.recorder import Recorder
from .record.trace import TensorRecord
from .report import console
from .report.weights import copy_failure_lines
from .side import Side, make_sides
from .structure import flatten, show_id
from .weights.assign import WeightPlan, apply_copy, plan_copy

P = console.P


class _Printer:
    """Prints report lines as they come and keeps them for ``AlignResult.report``."""

    def __init__(self, stream=None):
        self.stream = stream
        self.lines: List[str] = []

    def __call__(self, *lines: str) -> None:
        for line in lines:
            self.lines.append(line)
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


def make_call(side: Side, inp, notes: List[str]):
    """A no-argument callable running the model on one side's input: a dict is passed as
    keywords, a list/tuple as positional arguments, anything else as the single argument."""
    model = side.model
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
    ad = side.adapter
    if ad.is_tensor(leaf):
        return ad.to_numpy(leaf)
    if isinstance(leaf, (np.ndarray, int, float, bool, np.generic)):
        return np.asarray(leaf)
    return None


def check_inputs(sides, inputs, notes: List[str]) -> None:
    """Same structure and shapes on both sides; a value difference is noted, not refused."""
    flat = []
    for side, inp in zip(sides, inputs):
        is_t = side.adapter.is_tensor
        leaves = flatten(list(inp.values()) if isinstance(inp, dict) else inp, is_t)
        flat.append(leaves)
    a, b = flat
    if len(a) != len(b):
        raise PadiffError(
            f"The two inputs hold different numbers of values: {len(a)} for the {sides[0].label} model, "
            f"{len(b)} for the {sides[1].label} model. Give both models the same inputs, in the same order."
        )
    for (ia, la), (ib, lb) in zip(a, b):
        xa, xb = _leaf_array(sides[0], la), _leaf_array(sides[1], lb)
        if xa is None or xb is None:
            continue
        name = show_id(ia, "input")
        if xa.shape != xb.shape:
            raise PadiffError(
                f"The models' inputs differ in shape at {name}: {list(xa.shape)} ({sides[0].label}) vs "
                f"{list(xb.shape)} ({sides[1].label}). Give both models the same data."
            )
        if xa.size and xa.dtype.kind in "fc" and xb.dtype.kind in "fc":
            d = compare_arrays(xa, xb, tolerance_for(Options(), str(xa.dtype), str(xb.dtype)))
            if not d.passed:
                notes.append(f"The two models' inputs differ at {name} (greatest difference {d.max_abs:.3g}): "
                             "every layer will differ. Check that both sides get the same data.")


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


def run_side(side: Side, call, *, opts: Options, loss_fn, need_loss: bool, plan_links, is_ref: bool,
             layer_map=None):
    """Record one model's forward (and backward): returns the trace and parameter grads."""
    ad = side.adapter
    stop = layer_map.stops if layer_map is not None else None
    rec = Recorder(ad, side.model, side.name, grads=opts.check_backward, stop_at=stop)
    grads = {}
    with rec:
        out = rec.run(call, side.label)
        if need_loss:
            if loss_fn is not None:
                try:
                    loss = loss_fn(out)
                except Exception as exc:
                    raise PadiffError(
                        f"The {side.label} loss_fn raised {type(exc).__name__}: {exc}. A loss_fn takes the "
                        "model's output and returns a scalar tensor (bind labels with functools.partial)."
                    ) from exc
                if not ad.is_tensor(loss):
                    raise PadiffError(
                        f"The {side.label} loss_fn returned a {type(loss).__name__}, not a tensor: it must return "
                        "a scalar tensor of its framework."
                    )
            else:
                leaves = _float_leaves(side, out)
                if not leaves:
                    raise PadiffError(
                        f"The {side.label} model's output ({type(out).__name__}) holds no floating-point tensor, so "
                        "padiff cannot form its default loss (the mean of the output). Pass "
                        "loss_fn=[fn_for_first_model, fn_for_second_model], or use diff_phase='forward'."
                    )
                loss = ad.default_loss(leaves)
            rec.trace.loss = TensorRecord(ad.to_numpy(loss), ad.dtype_name(loss), ad.shape(loss))
            if opts.check_backward:
                if not ad.requires_grad(loss):
                    raise PadiffError(
                        f"The {side.label} model's loss does not require a gradient (all parameters frozen, "
                        "or the model ran under no_grad?): padiff cannot compare the backward. "
                        "Use diff_phase='forward'."
                    )
                try:
                    ad.backward(loss)
                except Exception as exc:
                    where = "" if rec.current_path() is None else f" in `{rec.current_path()}`"
                    raise PadiffError(f"The {side.label} model's backward raised {type(exc).__name__}{where}: "
                                      f"{exc}") from exc
    if opts.check_backward:
        for link in plan_links:
            t = link.src_tensor if is_ref else link.dst_tensor
            g = ad.param_grad(t)
            if g is not None:
                grads[id(link)] = TensorRecord(ad.to_numpy(g), ad.dtype_name(g), ad.shape(g))
    return rec.trace, grads


def _clear_grads(side: Side) -> None:
    ad = side.adapter
    for _, p in ad.all_params(side.model):
        if ad.param_grad(p) is not None:
            ad.set_grad(p, None)


def _pair_of(value, what: str, sides):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PadiffError(f"{what} must be a pair [for_first_model, for_second_model], got {type(value).__name__}.")
    return list(value)


def _step_optimizer(side: Side, opt) -> None:
    ad = side.adapter
    if ad.is_optimizer(opt):
        ad.optimizer_step(opt)
    elif callable(opt):
        opt()
    else:
        raise PadiffError(
            f"The {side.label} optimizer is a {type(opt).__name__}: pass an optimizer of its framework or a "
            "no-argument function that updates the weights."
        )


# --- the public function ------------------------------------------------------------------------

def auto_diff(base_model, raw_model, inputs, loss_fn=None, optimizer=None, layer_map=None,
              auto_weights=None, steps=None, options=None, **kwargs) -> AlignResult:
    """Compare two models layer by layer; returns an :class:`AlignResult` (true when aligned).

    ``inputs`` is a pair: the first model's input and the second's (each a dict of keyword
    arguments, a list/tuple of positional ones, or one tensor). ``loss_fn`` and ``optimizer``
    are pairs in the same order. Options may be given as keywords or in ``options``.
    """
    if "loss_fns" in kwargs:
        loss_fn = kwargs.pop("loss_fns") if loss_fn is None else loss_fn
    if "optimizers" in kwargs:
        optimizer = kwargs.pop("optimizers") if optimizer is None else optimizer
    if auto_weights is not None:
        kwargs["auto_weights"] = auto_weights
    if steps is not None:
        kwargs["steps"] = steps
    opts = build_options(options, **kwargs)
    sides, ref_i = make_sides(base_model, raw_model)
    ref, test = sides[ref_i], sides[1 - ref_i]
    loss_fns = _pair_of(loss_fn, "loss_fn", sides)
    optimizers = _pair_of(optimizer, "optimizer", sides)
    if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
        raise PadiffError(
            "inputs must be a pair (input of the first model, input of the second model), each a dict of "
            "keyword arguments, a list/tuple of positional arguments, or a single tensor."
        )
    notes: List[str] = []
    if opts.steps > 1 and optimizers is None:
        notes.append(f"steps={opts.steps} without an optimizer would repeat the same step: padiff ran 1 step. "
                     "Pass optimizer=[opt_for_first, opt_for_second] to train several steps.")
    from dataclasses import replace

    opts = replace(opts, use_loss=loss_fns is not None, use_opt=optimizers is not None,
                   steps=opts.steps if optimizers is not None else 1)
    out = _Printer()
    out(*console.options_block(opts.shown()))

    calls = [make_call(s, inp, notes) for s, inp in zip(sides, inputs)]
    check_inputs(sides, inputs, notes)
    for s in sides:
        rnd = _random_layers(s)
        if rnd:
            notes.append(f"The {s.label} model is in train mode with random layers ({', '.join(rnd[:3])}"
                         f"{', ...' if len(rnd) > 3 else ''}): their outputs cannot agree. Call .eval() on both "
                         "models, or set their drop probability to 0, before comparing.")

    plan = plan_copy(ref, test, layer_map)
    if opts.auto_weights:
        if not plan.ok:
            lines = copy_failure_lines(plan, first_side=sides[0], layer_map=layer_map, show_path=opts.path_log)
            out(*lines)
            raise PadiffError("\n".join(lines[1:3] + [plan.failure.message]) +
                              "\n(The full report with both model trees is printed above.)")
        apply_copy(plan)
        out(f"{P} Assign weight success !!!")
    elif not plan.ok:
        notes.append("Parameters could not be paired between the models, so parameter gradients and weights "
                      f"are not compared: {plan.failure.message}")
    links = [l for l in plan.links if l.is_param] if plan.ok else []
    out(*console.notes_block(notes))

    result = AlignResult(False, options=opts, ref_label=ref.label, test_label=test.label, notes=list(notes))
    reprs = lambda link: (ref.adapter.layer_repr(link.src_unit.layer), test.adapter.layer_repr(link.dst_unit.layer))
    need_loss = opts.check_backward or loss_fns is not None
    started = time.monotonic()
    try:
        for step in range(opts.steps):
            if opts.steps > 1:
                out(console.step_header(step) + _eta(step, opts.steps, started))
            else:
                out(console.step_header(step))
            for s in sides:
                _clear_grads(s)
            runs = {}
            for idx in (ref_i, 1 - ref_i):
                s = sides[idx]
                runs[idx] = run_side(s, calls[idx], opts=opts, loss_fn=loss_fns[idx] if loss_fns else None,
                                     need_loss=need_loss, plan_links=links, is_ref=(idx == ref_i), layer_map=layer_map)
            (ref_trace, ref_grads), (test_trace, test_grads) = runs[ref_i], runs[1 - ref_i]
            sr = StepResult(step, ref_trace=ref_trace, test_trace=test_trace)
            pairing = pair_traces(ref_trace, test_trace, ref_label=ref.label, test_label=test.label,
                                  skip=_skip_fn(opts))
            sr.pairing = pairing
            sr.notes.extend(pairing.notes)
            forward = compare_forward(pairing, ref_trace.exit_order(), opts, step)
            sr.max_output_diff = max((f.diff.max_abs for f in forward if f.ref_node is ref_trace.root), default=0.0)
            sr.forward = forward if opts.check_forward else []
            if ref_trace.loss is not None and test_trace.loss is not None:
                tol = tolerance_for(opts, test_trace.loss.dtype, ref_trace.loss.dtype, "loss")
                d = compare_records(test_trace.loss, ref_trace.loss, tol, "strict")
                sr.loss = Finding("loss", "loss", "loss", "loss", "loss_fn" if loss_fns else "mean(output)",
                                  "loss_fn" if loss_fns else "mean(output)", d, step)
            if opts.check_backward:
                sr.backward = compare_backward(pairing, ref_trace.backward_events(), opts, step)
                sr.grads = compare_links(links, lambda l: ref_grads.get(id(l)), lambda l: test_grads.get(id(l)),
                                         "grad", "grad", opts, step, reprs)
                for f in sr.grads:
                    if not f.passed:
                        f.cause = "Parameter gradient differs: a backward difference."
            if optimizers is not None:
                for idx in (ref_i, 1 - ref_i):
                    _step_optimizer(sides[idx], optimizers[idx])
                sr.weights = compare_links(
                    links,
                    lambda l: TensorRecord(ref.adapter.to_numpy(l.src_tensor), ref.adapter.dtype_name(l.src_tensor)),
                    lambda l: TensorRecord(test.adapter.to_numpy(l.dst_tensor), test.adapter.dtype_name(l.dst_tensor)),
                    "weight", "weight", opts, step, reprs)
                grads_ok = all(f.passed for f in sr.grads)
                for f in sr.weights:
                    if not f.passed:
                        f.cause = ("The gradients agreed before the optimizer step, so this is an optimizer "
                                   "difference (hyper-parameters, weight decay, epsilon?)." if grads_ok else
                                   "The gradients already differed, so this follows from the backward difference.")
            result.steps.append(sr)
            out(f"{P} Max elementwise output diff is {sr.max_output_diff}")
            first = sr.first_failure
            if first is not None:
                result.first = first
                break
            if opts.check_forward:
                out(f"{P} forward stage compared.")
            if opts.check_backward:
                out(f"{P} backward stage compared.")
            if sr.grads or sr.weights:
                out(f"{P} weight and grad compared.")
    finally:
        if optimizers is None:
            for s in sides:
                _clear_grads(s)

    result.passed = result.first is None
    if result.passed:
        out(f"{P} SUCCESS !!!")
    else:
        _render_failure(result, out, sides, ref, test, ref_i, opts)
    result.report = out.text()
    return result


def _eta(step: int, steps: int, started: float) -> str:
    if step == 0:
        return f" ({step}/{steps} done)"
    per = (time.monotonic() - started) / step
    return f" ({step}/{steps} done, about {per * (steps - step):.0f}s left)"


def _skip_fn(opts: Options):
    if not opts.skip_wrap_layer:
        return lambda n: False
    return lambda n: not n.has_params


def _render_failure(result: AlignResult, out, sides, ref, test, ref_i, opts):
    sr = result.steps[-1]
    first = result.first
    lines, files = console.failure_block(first, sr, ref_side=ref, test_side=test, first_is_ref=(ref_i == 0),
                                         options=opts, log_dir=opts.log_dir)
    out(*lines)
    result.log_files.extend(files)
    for findings, name, heading in ((sr.weights, "weight_diff.log", "After the optimizer step, weight value is different."),
                                    (sr.grads, "grad_diff.log", "After backward, grad value is different.")):
        bad = [f for f in findings if not f.passed]
        if bad:
            path = console.write_log(opts.log_dir, name,
                                     console.param_blocks(bad, heading=heading, ref_side=ref, test_side=test))
            result.log_files.append(path)
            what = "model weights" if name.startswith("weight") else "model grad"
            out(f"{P} Diff found in {what} ({len(bad)} of {len(findings)} parameters), check report `{path}`.")
    out(f"{P} FAILED !!!")
