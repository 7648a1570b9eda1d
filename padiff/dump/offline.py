"""Two single dumps compared as ``auto_diff`` compares two live models, with no framework.

The pairing, comparison, weight pairing, step loop and report are the run pipeline's own
(``padiff.run``): only where each step's records come from differs (the dumps' files instead
of live models). Distributed dumps are compared pair by pair through this (``ranked.py``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Tuple

import numpy as np

from .._memory import spare_existing_objects
from ..compare.engine import compare_links
from ..compare.pairing import correspondence, layer_paths, pair_traces
from ..compare.result import AlignResult, Cause, StepResult
from ..errors import PadiffError
from ..options import Options, build_options
from ..report import console
from ..report.run import Printer
from ..run.prepare import DUMP_WORDS, compare_input_arrays, refuse_single_step
from ..run.record import SideRun
from ..run.step import Comparison, compare_step, loss_finding, skip_fn
from ..run.steps import finish, run_steps
from ..run.train import lr_findings, weight_findings
from ..side import pair_sides
from ..weights.assign import plan_copy
from ..weights.rules import family
from .reader import Dump
from .shard_dims import resolve_shards

P = console.P

_ALIASES = {"auto_init": "auto_weights", "auto_weight": "auto_weights"}


def compare_two(dumps: List[Dump], options=None, **kwargs) -> AlignResult:
    """Compare two opened single dumps (see ``compare_dumps``); print the report."""
    explicit = {_ALIASES.get(k, k) for k in list(options or {}) + list(kwargs)}
    opts, notes = merge_options(dumps, build_options(options, **kwargs), explicit)
    sides, ref_i = dump_sides(dumps)
    ref, test = sides[ref_i], sides[1 - ref_i]
    ref_d, test_d = dumps[ref_i], dumps[1 - ref_i]

    out = Printer()
    out(*console.options_block(opts.shown()))
    out(f"{P} Comparing dumps `{dumps[0].path}` ({dumps[0].framework} {dumps[0].model_class}) and "
        f"`{dumps[1].path}` ({dumps[1].framework} {dumps[1].model_class}); the reference is "
        f"`{ref_d.path}` ({ref.label}).")
    for d in dumps:
        notes.extend(f"(`{d.path}`) {n}" for n in d.notes)
    check_inputs(dumps, sides, notes)

    plan = plan_copy(ref, test, values=shape_values(ref_d))
    if not plan.ok:
        notes.append("Parameters could not be paired between the dumps, so parameter gradients and weights are "
                     f"not compared: {plan.failure.message}")
    cmp = Comparison.of_plan(plan, ref, test, ref_i)
    differing_units = initial_weights(plan, ref_d, test_d, opts, cmp.reprs, notes) if plan.ok else []
    out(*console.notes_block(notes))

    result = AlignResult(False, options=opts, ref_label=ref.label, test_label=test.label, notes=list(notes))
    api = opts.api_check and ref_d.has_api_calls() and test_d.has_api_calls()
    with spare_existing_objects():
        run_steps(result, opts, out, lambda step: _step(ref_d, test_d, cmp, opts, step, api),
                  on_first=lambda first: explain_by_weights(first, differing_units))
    return finish(result, out, cmp, opts)


def _step(ref_d: Dump, test_d: Dump, cmp: Comparison, opts: Options, step: int, api: bool) -> StepResult:
    """One recorded step of both dumps, compared as a live step is."""
    ref_run = SideRun(ref_d.trace(step, api=api),
                      {s.src_path: ref_d.grad(s.src_tensor, step) for l in cmp.links for s in l.sources()}, None)
    test_run = SideRun(test_d.trace(step, api=api), {l.dst_path: test_d.grad(l.dst_tensor, step) for l in cmp.links},
                       None)
    shard_notes = _resolve_shards(ref_run.trace, test_run.trace, cmp, opts)
    sr = compare_step(ref_run, test_run, cmp, opts, step)
    if ref_d.use_loss == test_d.use_loss and (opts.check_backward or opts.use_loss):
        sr.loss = loss_finding(ref_run, test_run, opts.use_loss, opts, step)
    if opts.use_opt:
        sr.lr = lr_findings([ref_d.lr(step), test_d.lr(step)], opts, step)
        sr.weights = weight_findings(cmp.links, sr.grads, lambda l: ref_d.weight_after(l.src_tensor, step),
                                     lambda l: test_d.weight_after(l.dst_tensor, step), opts, step, cmp.reprs)
    sr.notes.extend(shard_notes)
    return sr


def _resolve_shards(ref_trace, test_trace, cmp: Comparison, opts: Options) -> List[str]:
    """Tensor-parallel values no layout rule covers (a gathered run's activations between its
    sharded layers): how they are sharded, from their counterparts' shapes."""
    def pair(a, b):
        corr = correspondence(layer_paths(a), layer_paths(b), cmp.layer_pairs)
        return pair_traces(a, b, ref_label=cmp.ref.label, test_label=cmp.test.label, skip=skip_fn(opts), corr=corr,
                           kind=family)

    return resolve_shards(ref_trace, test_trace, pair)


# --- options and sides ----------------------------------------------------------------------------

def _phase(dumps: List[Dump], given: Options, explicit, notes: List[str]) -> str:
    """The phases to compare: the user's, else what both dumps recorded."""
    a, b = dumps
    no_grads = [d for d in dumps if not d.check_backward]
    if "diff_phase" in explicit:
        phase = given.diff_phase
        if phase != "forward" and no_grads:
            raise PadiffError(
                f"diff_phase={phase!r} compares gradients, but `{no_grads[0].path}` holds none (it was dumped with "
                f"diff_phase={no_grads[0].options.get('diff_phase')!r}). Dump it again with diff_phase='both', or "
                "compare with diff_phase='forward'.")
        return phase
    if no_grads:
        if len(no_grads) == 1:
            notes.append(f"`{no_grads[0].path}` holds no gradients (dumped with diff_phase='forward'): only the "
                         "forward is compared.")
        return "forward"
    pa, pb = a.options.get("diff_phase", "both"), b.options.get("diff_phase", "both")
    return pa if pa == pb else "both"


def merge_options(dumps: List[Dump], given: Options, explicit) -> Tuple[Options, List[str]]:
    """The comparison's options, with what the dumps recorded: phases, steps, loss, optimizer."""
    a, b = dumps
    notes: List[str] = []
    refuse_single_step(given, recorded=True)
    phase = _phase(dumps, given, explicit, notes)
    if phase != "forward" and a.use_loss != b.use_loss:
        with_fn = a if a.use_loss else b
        raise PadiffError(
            f"`{with_fn.path}` was dumped with a loss_fn and `{(b if with_fn is a else a).path}` without one (its "
            "loss is the mean of its output): their backward passes start from different losses. Dump both with "
            "a loss_fn, or compare with diff_phase='forward'.")
    steps = min(a.steps, b.steps)
    if a.steps != b.steps:
        notes.append(f"`{a.path}` holds {a.steps} step(s) and `{b.path}` {b.steps}: the first {steps} are compared.")
    if "steps" in explicit:
        steps = min(steps, given.steps)
    use_opt = a.use_opt and b.use_opt
    if a.use_opt != b.use_opt:
        notes.append(f"Only `{(a if a.use_opt else b).path}` was dumped with an optimizer: learning rates and "
                     "weights after the optimizer step are not compared.")
    if given.api_check and a.has_api_calls() != b.has_api_calls():
        notes.append(f"Only `{(a if a.has_api_calls() else b).path}` recorded framework calls (api_check): the "
                     "dumps are compared layer by layer.")
    opts = replace(given, diff_phase=phase, steps=steps, single_step=False, auto_weights=False,
                   use_loss=a.use_loss and b.use_loss, use_opt=use_opt)
    return opts, notes


def dump_sides(dumps: List[Dump]):
    """Sides of two dumps, as ``side.make_sides`` makes them for live models."""
    a, b = dumps
    return pair_sides((a.adapter, a.model, a.model_name), (b.adapter, b.model, b.model_name))


def shape_values(dump: Dump) -> Dict[int, np.ndarray]:
    """Stand-ins for the weights of ``dump`` to plan the weight pairing on. The pairing needs
    only shapes, but ``plan_copy`` also converts every value (it keeps a transposed copy of
    each Linear weight): on the dumped weights that would hold the whole model's weights at
    once. The comparison converts the dumped values itself, link by link, through each
    link's ``transform``, so the plan is made on arrays of the right shapes over one shared
    buffer of zeros the size of the largest tensor (untouched pages: no memory), laid out in
    Fortran order so that transposing one gives a view rather than a copy."""
    def np_dtype(name: str) -> np.dtype:
        try:
            return np.dtype(name)
        except TypeError:
            return np.dtype(np.float32)  # bfloat16, float8, ...: dumped as float32

    dtypes = [np_dtype(t.dtype) for t in dump.tensors]
    largest = max((d.itemsize * int(np.prod(t.shape, dtype=np.int64)) for d, t in zip(dtypes, dump.tensors)),
                  default=0)
    zeros = np.zeros(max(largest, 1), np.uint8)
    values = {}
    for d, t in zip(dtypes, dump.tensors):
        arr = np.ndarray(t.shape, d, buffer=zeros, order="F")
        arr.flags.writeable = False
        values[id(t)] = arr
    return values


# --- checks before the steps ----------------------------------------------------------------------

def check_inputs(dumps: List[Dump], sides, notes: List[str]) -> None:
    """auto_diff's input check: same count and shapes (else an error), a value difference noted."""
    a, b = (d.inputs() for d in dumps)
    if not a or not b:
        return
    leaves = [[_leaf(i, r.array) for i, r in x] for x in (a, b)]
    compare_input_arrays(leaves[0], leaves[1], (sides[0].label, sides[1].label), (dumps[0].path, dumps[1].path),
                         notes, DUMP_WORDS)


def _leaf(id_path, array):
    return id_path, array, str(array.dtype) if array is not None else ""


def initial_weights(plan, ref_d: Dump, test_d: Dump, opts, reprs, notes: List[str]) -> List[str]:
    """The dumps' weights before the first step, through the weight rules: auto_diff copies them,
    dumps must have been given the same ones. Returns the reference paths of differing layers."""
    found = compare_links(plan.links, lambda l: ref_d.initial(l.src_tensor), lambda l: test_d.initial(l.dst_tensor),
                          "weights", "weight", opts, 0, reprs)
    bad = [(l, f) for l, f in zip(plan.links, found) if not f.passed]
    if bad:
        link, f = bad[0]
        notes.append(
            f"The dumps start from different weights: {len(bad)} of {len(found)} tensors differ, first "
            f"`{link.src_path}` vs `{link.dst_path}` (greatest difference {f.diff.max_abs:.3g}). Layers using "
            "them will differ: give both models the same weights before dumping (padiff.assign_weight, or "
            "`padiff convert` for a checkpoint).")
    return [l.src_unit.path for l, _ in bad]


def explain_by_weights(first, differing_units: List[str]) -> None:
    """A first difference inside a layer whose starting weights already differed: said so."""
    node = first.ref_node
    if node is None or first.cause or not differing_units:
        return
    inside = [p for p in differing_units if p == node.path or p.startswith(node.path + ".")]
    if inside:
        first.explain(Cause.INITIAL_WEIGHTS, f"The dumps' weights of `{inside[0]}` already differed before the "
                                             "first step: the models were not given the same weights.")
