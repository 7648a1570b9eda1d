"""One step compared: the two recorded runs paired layer by layer, their outputs, gradients,
parameter gradients and losses compared. The same for live models and for dumps; which layers
and parameters correspond comes from the weight plan (:class:`Comparison`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..compare.context import GradientContext
from ..compare.edges import composite_boundaries, shift_fused_activations
from ..compare.engine import (compare_backward, compare_forward, compare_links, compare_outputs, gap_notes,
                              largest_magnitude)
from ..compare.metrics import carried_error, compare_records, explained_error, tolerance_for
from ..compare.pairing import correspondence, layer_paths, pair_traces
from ..compare.result import Cause, Finding, StepResult
from ..options import Options
from ..side import Side
from ..weights.rules import family
from .single_step import single_step_findings


@dataclass
class Comparison:
    """What every step of one run compares: the two sides (``ref`` is the reference, at
    ``ref_i`` in the user's order) and what the weight plan paired: parameter ``links``, the
    ``layer_pairs`` (reference path, tested path) whose calls pair with each other, the
    ``fused`` projections and their parts, whose calls have no partner."""

    ref: Side
    test: Side
    ref_i: int
    links: list = field(default_factory=list)
    layer_pairs: list = field(default_factory=list)
    fused: list = field(default_factory=list)
    layer_map: object = None

    @classmethod
    def of_plan(cls, plan, ref: Side, test: Side, ref_i: int, layer_map=None) -> "Comparison":
        """From a weight plan (``weights.assign.plan_copy``); a failed plan pairs nothing."""
        if not plan.ok:
            return cls(ref, test, ref_i, layer_map=layer_map)
        return cls(ref, test, ref_i, [l for l in plan.links if l.is_param], plan.layer_pairs(),
                   [p for group in plan.fused_layers() for paths in group for p in paths], layer_map)

    def reprs(self, link) -> Tuple[str, str]:
        """The layers holding a link's parameter, as each framework shows them."""
        return (self.ref.adapter.layer_repr(link.src_unit.layer), self.test.adapter.layer_repr(link.dst_unit.layer))

    def param_paths(self):
        """(dotted path, tensor) of the linked parameters, per side in the user's order."""
        ref = [(s.src_path, s.src_tensor) for l in self.links for s in l.sources()]
        test = [(l.dst_path, l.dst_tensor) for l in self.links]
        return {self.ref_i: ref, 1 - self.ref_i: test}


def skip_fn(opts: Options):
    """The layers ``skip_wrap_layer`` leaves out of the comparison: those without parameters."""
    if not opts.skip_wrap_layer:
        return lambda n: False
    return lambda n: n.kind == "net" and not n.has_params


def pair_runs(ref_run, test_run, cmp: Comparison, opts: Options, step: int):
    """The two traces paired call by call (``compare.pairing``), with the user's LayerMap, the
    weight plan's layer pairs, and fused activations moved to where each side computes them."""
    mapped, ignored = {}, set()
    layer_map = cmp.layer_map
    if layer_map is not None:
        for a, b in layer_map.pairs():
            mapped[id(a)] = id(b)
            mapped[id(b)] = id(a)
        ignored = {key for run in (ref_run, test_run) for key, layer in run.walk.layers.items()
                   if layer_map.is_ignored(layer)}
    ref_paths, test_paths = layer_paths(ref_run.trace), layer_paths(test_run.trace)
    corr = correspondence(ref_paths, test_paths, list(cmp.layer_pairs))
    fused = set(cmp.fused)
    fused_keys = {k for paths in (ref_paths, test_paths) for k, path in paths.items() if path in fused}
    wrap = skip_fn(opts)
    pairing = pair_traces(ref_run.trace, test_run.trace, ref_label=cmp.ref.label, test_label=cmp.test.label,
                          skip=lambda n: n.layer_key in ignored or wrap(n), mapped=mapped, corr=corr, kind=family,
                          alone=fused_keys)
    composite_boundaries(pairing)
    shift_fused_activations(pairing, ref_run.trace.nodes, lambda a, b: all(
        f.passed for f in compare_outputs(a, b, a.outputs, b.outputs, opts, step)))
    return pairing


def reference_context(ref_run, opts: Options) -> Optional[GradientContext]:
    """What the comparison reads of the reference's run alone (the rounding context of its
    gradients), so that it can be worked out while the tested model still runs."""
    if opts.single_step or not opts.check_backward:
        return None
    return GradientContext(ref_run.trace.backward_events())


def compare_step(ref_run, test_run, cmp: Comparison, opts: Options, step: int, ready=None,
                 rounding: Optional[GradientContext] = None) -> StepResult:
    """Pair and compare one step. ``ready(node, kind)`` (see :class:`~padiff.compare.overlap.Arrivals`)
    waits for gradients of the tested run that may still be coming: the comparison can then
    start as soon as the tested model's forward is recorded. ``rounding``: the reference's
    :func:`reference_context`, when already worked out."""
    sr = StepResult(step, ref_trace=ref_run.trace, test_trace=test_run.trace)
    sr.pairing = pairing = pair_runs(ref_run, test_run, cmp, opts, step)
    sr.notes.extend(pairing.notes)
    memo: dict = {}  # one step's comparisons of identical record pairs
    gaps: list = []  # outputs compared on neither side (one side only, None, objects): notes
    forward = compare_forward(pairing, ref_run.trace.exit_order(), opts, step, memo, gaps=gaps)
    sr.notes.extend(gap_notes(gaps, cmp.ref.label, cmp.test.label))
    root = [f for f in forward if f.ref_node is ref_run.trace.root]
    sr.max_output_diff = max((f.diff.max_abs for f in root), default=0.0)
    if any(f.diff.problem == "nan" for f in root):
        sr.max_output_diff = float("nan")  # a NaN/Inf output: no difference to state
    if opts.single_step:
        _single_step(sr, forward, ref_run, test_run, cmp, opts, step)
        return sr
    sr.forward = forward if opts.check_forward else []
    if not opts.check_backward:
        _move_api_findings(sr)
        return sr
    if rounding is None:
        rounding = reference_context(ref_run, opts)
    sr.backward = compare_backward(pairing, rounding.events, opts, step, memo,
                                   context=rounding, ready=ready, notes=sr.notes,
                                   near_ties=all(f.passed for f in forward))
    _move_api_findings(sr)
    if ready is not None:
        ready()  # the tested run's parameter gradients are read after its backward
    sr.grads = parameter_grad_findings(ref_run, test_run, cmp, opts, step, rounding, sr.backward)
    return sr


def _single_step(sr: StepResult, forward, ref_run, test_run, cmp: Comparison, opts: Options, step: int) -> None:
    """Each layer's own difference (single-step replay) in place of the run's findings."""
    normal_first = next((f for f in forward if not f.passed), None)
    sr.forward, sr.backward = single_step_findings(sr.pairing, ref_run, test_run, cmp.ref, cmp.test, opts, step)
    bad = [f for f in sr.forward + sr.backward if not f.passed]
    if normal_first is not None:
        sr.notes.append(f"Without single-step the first difference is at `{normal_first.ref_path}`; single-step "
                        f"finds {len(bad)} layer(s) whose own difference exceeds tolerance. (The loss and "
                        "parameter gradients carry accumulated differences and are not judged in this mode.)")


def _move_api_findings(sr: StepResult) -> None:
    sr.forward, sr.backward, moved = api_within_failing_layers(sr.forward, sr.backward)
    if moved:
        sr.notes.append(
            f"{len(moved)} framework call(s) differ inside layers whose results agree (first: "
            f"`{moved[0].test_path}`): the two implementations order those calls differently, so they are "
            "not counted.")


def parameter_grad_findings(ref_run, test_run, cmp: Comparison, opts: Options, step: int,
                            rounding: GradientContext, backward: List[Finding]) -> List[Finding]:
    """The linked parameters' gradients compared; the error the backward carried into them is
    allowed as it is for layer gradients."""
    found = compare_links(cmp.links, lambda l: ref_run.grads.get(l.src_path), lambda l: test_run.grads.get(l.dst_path),
                          "grad", "grad", opts, step, cmp.reprs, context=_parameter_context(rounding),
                          explained=explained_error(f.diff for f in backward),
                          carried=carried_error(f.diff for f in backward))
    for f in found:
        if not f.passed:
            f.explain(Cause.PARAMETER_GRADIENT, "Parameter gradient differs: a backward difference.")
    return found


def _parameter_context(rounding: GradientContext):
    """``context(link, reference record)`` for parameter gradients: from the calls of the
    layer (or layers, for a fused parameter) that holds the reference's parameter."""
    def context(link, rec):
        return max(rounding.for_parameter(s.src_unit.key, s.src_unit.path, rec) for s in link.sources())
    return context


def api_within_failing_layers(forward, backward):
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


def loss_finding(ref_run, test_run, use_loss_fn: bool, opts: Options, step: int) -> Optional[Finding]:
    """The two losses compared (None without both, and in single-step mode: the loss carries the
    accumulated difference there)."""
    a, b = ref_run.trace.loss, test_run.trace.loss
    if a is None or b is None or opts.single_step:
        return None
    # The loss is computed from the model's outputs: rounding alone leaves u times their size.
    tol = tolerance_for(opts, b.dtype, a.dtype, "loss", stage="loss",
                        context=largest_magnitude(r for _, r in ref_run.trace.root.outputs))
    name = "loss_fn" if use_loss_fn else "weighted mean(output)"
    f = Finding("loss", "loss", "loss", "loss", name, name, compare_records(b, a, tol, "strict"), step)
    if not f.passed:
        f.explain(Cause.LOSS_FUNCTION, "The losses differ while every layer output agreed: look at the loss "
                                       "functions.")
    return f
