"""``compare_dumps``: auto_diff's comparison and report, on two dumps, with no framework.

The traces, pairing, comparison, weight pairing and report are auto_diff's own functions:
only where the data comes from differs (dumps instead of live models).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List

import numpy as np

from ..auto_diff import (SideRun, _compare_step, _loss_finding, _lr_findings, _skip_fn, end_step, weight_findings,
                         _Printer, finish)
from ..compare.engine import compare_links
from ..compare.metrics import compare_arrays, tolerance_for
from ..compare.pairing import correspondence, layer_paths, pair_traces
from ..compare.result import AlignResult
from ..errors import PadiffError
from ..options import Options, build_options
from ..report import console
from ..side import Side, reference_index
from ..structure import show_id
from ..weights.assign import plan_copy
from ..weights.rules import family
from . import distributed
from .reader import Dump, load_dump

P = console.P

_ALIASES = {"auto_init": "auto_weights", "auto_weight": "auto_weights"}


def compare_dumps(path_a, path_b, options=None, *, rank=None, jobs: int = 1, tp_layout=None, **kwargs):
    """Compare two dumps made by ``padiff.dump`` exactly as ``auto_diff`` compares two live
    models, and print the same report; returns an :class:`AlignResult` (true when aligned).
    ``path_a``/``path_b`` are dump folders, or dumps already opened with ``load_dump``.

    The torch dump is the reference when the frameworks differ, else the first. Options are
    the comparison's (``atol``, ``rtol``, ``compare_mode``, ``diff_phase``, ``log_dir``,
    ``layer_tolerances``, ...); what was recorded (steps, gradients, framework calls) comes from
    the dumps. Imports neither torch nor paddle.

    When either dump is distributed (a folder of ``rank<k>`` dumps made by ``padiff.dump`` under
    torch.distributed or paddle.distributed), ranks are paired and compared one pair at a time
    (``jobs`` worker processes compare pairs in parallel), tensor-parallel shards gathered where
    the layouts differ, and a :class:`~padiff.dump.distributed.DistributedResult` is returned
    (true when every rank agrees; which ranks agree, which diverged first and where). ``rank``
    chooses the rank a single-process dump is compared with (default 0; ``"all"``: every rank);
    ``tp_layout`` (``{"mlp.up": "column", "mlp.down": "row"}``) declares or corrects layouts.
    """
    if distributed.is_distributed(path_a) or distributed.is_distributed(path_b):
        return distributed.compare_distributed(path_a, path_b, options, rank=rank, jobs=jobs, tp_layout=tp_layout,
                                               **kwargs)
    dumps = [p if isinstance(p, Dump) else load_dump(p) for p in (path_a, path_b)]
    explicit = {_ALIASES.get(k, k) for k in list(options or {}) + list(kwargs)}
    opts, notes = _merge_options(dumps, build_options(options, **kwargs), explicit)
    sides, ref_i = _sides(dumps)
    ref, test = sides[ref_i], sides[1 - ref_i]
    ref_d, test_d = dumps[ref_i], dumps[1 - ref_i]

    out = _Printer()
    out(*console.options_block(opts.shown()))
    out(f"{P} Comparing dumps `{dumps[0].path}` ({dumps[0].framework} {dumps[0].model_class}) and "
        f"`{dumps[1].path}` ({dumps[1].framework} {dumps[1].model_class}); the reference is "
        f"`{ref_d.path}` ({ref.label}).")
    for d, s in zip(dumps, sides):
        notes.extend(f"(`{d.path}`) {n}" for n in d.notes)
    _check_inputs(dumps, sides, notes)

    plan = plan_copy(ref, test, values=_shape_values(ref_d))
    if not plan.ok:
        notes.append("Parameters could not be paired between the dumps, so parameter gradients and weights are "
                     f"not compared: {plan.failure.message}")
    links = [l for l in plan.links if l.is_param] if plan.ok else []
    reprs = lambda link: (ref.adapter.layer_repr(link.src_unit.layer), test.adapter.layer_repr(link.dst_unit.layer))
    differing_units = _initial_weights(plan, ref_d, test_d, opts, reprs, notes) if plan.ok else []
    out(*console.notes_block(notes))

    result = AlignResult(False, options=opts, ref_label=ref.label, test_label=test.label, notes=list(notes))
    api = opts.api_check and ref_d.has_api_calls() and test_d.has_api_calls()
    for step in range(opts.steps):
        out(console.step_header(step))
        ref_run = SideRun(ref_d.trace(step, api=api), {s.src_path: ref_d.grad(s.src_tensor, step) for l in links for s in l.sources()}, None)
        test_run = SideRun(test_d.trace(step, api=api), {l.dst_path: test_d.grad(l.dst_tensor, step) for l in links},
                           None)
        shard_notes = _resolve_shards(ref_run.trace, test_run.trace, ref, test, plan, opts)
        sr = _compare_step(ref_run, test_run, ref, test, links, opts, step, reprs, None,
                           layer_pairs=plan.layer_pairs() if plan.ok else (),
                           fused=[p for g in plan.fused_layers() for ps in g for p in ps] if plan.ok else ())
        if ref_d.use_loss == test_d.use_loss and (opts.check_backward or opts.use_loss):
            sr.loss = _loss_finding(ref_run, test_run, opts.use_loss, opts, step)
        if opts.use_opt:
            sr.lr = _lr_findings([ref_d.lr(step), test_d.lr(step)], opts, step)
            sr.weights = weight_findings(links, sr.grads, lambda l: ref_d.weight_after(l.src_tensor, step),
                                         lambda l: test_d.weight_after(l.dst_tensor, step), opts, step, reprs)
        sr.notes.extend(shard_notes)
        first = end_step(result, sr, out, opts)
        if first is not None:
            _explain_by_weights(first, differing_units)
            break

    return finish(result, out, ref, test, ref_i, opts)


def _resolve_shards(ref_trace, test_trace, ref: Side, test: Side, plan, opts) -> List[str]:
    """Tensor-parallel values no layout rule covers (a gathered run's activations between its
    sharded layers): how they are sharded, from their counterparts' shapes."""
    def pair(a, b):
        corr = correspondence(layer_paths(a), layer_paths(b), plan.layer_pairs() if plan.ok else [])
        return pair_traces(a, b, ref_label=ref.label, test_label=test.label, skip=_skip_fn(opts), corr=corr,
                           kind=family)

    return distributed.resolve_shards(ref_trace, test_trace, pair)


# --- options ------------------------------------------------------------------------------------

def _merge_options(dumps: List[Dump], given: Options, explicit) -> (Options, List[str]):
    """The comparison's options, with what the dumps recorded: phases, steps, loss, optimizer."""
    a, b = dumps
    notes: List[str] = []
    if given.single_step:
        raise PadiffError("single_step runs the tested model's layers on the reference's inputs, which needs both "
                          "live models: use padiff.auto_diff for it. Dumps compare every layer as recorded.")
    no_grads = [d for d in dumps if not d.check_backward]
    if "diff_phase" in explicit:
        phase = given.diff_phase
        if phase != "forward" and no_grads:
            raise PadiffError(
                f"diff_phase={phase!r} compares gradients, but `{no_grads[0].path}` holds none (it was dumped with "
                f"diff_phase={no_grads[0].options.get('diff_phase')!r}). Dump it again with diff_phase='both', or "
                "compare with diff_phase='forward'.")
    elif no_grads:
        phase = "forward"
        if len(no_grads) == 1:
            notes.append(f"`{no_grads[0].path}` holds no gradients (dumped with diff_phase='forward'): only the "
                         "forward is compared.")
    else:
        pa, pb = a.options.get("diff_phase", "both"), b.options.get("diff_phase", "both")
        phase = pa if pa == pb else "both"
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


def _sides(dumps: List[Dump]):
    """Sides as ``make_sides`` makes them: across frameworks the reference is ``reference_index``'s;
    with one framework twice the first is ("base"), the second is "raw"."""
    a, b = dumps
    if a.framework != b.framework:
        sides = [Side(a.adapter, a.model, a.model_name, a.framework), Side(b.adapter, b.model, b.model_name, b.framework)]
        ref_i = reference_index(a.adapter, b.adapter)
    else:
        sides = [Side(a.adapter, a.model, a.model_name, f"{a.framework} (base)"),
                 Side(b.adapter, b.model, b.model_name, f"{b.framework} (raw)")]
        ref_i = 0
    return sides, ref_i


def _shape_values(dump: Dump) -> Dict[int, np.ndarray]:
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

def _check_inputs(dumps: List[Dump], sides, notes: List[str]) -> None:
    """auto_diff's input check: same count and shapes (else an error), a value difference noted."""
    a, b = (d.inputs() for d in dumps)
    if not a or not b:
        return
    if len(a) != len(b):
        raise PadiffError(
            f"The dumps' inputs hold different numbers of values: {len(a)} in `{dumps[0].path}`, {len(b)} in "
            f"`{dumps[1].path}`. Dump both models with the same inputs, in the same order.")
    for (ia, ra), (ib, rb) in zip(a, b):
        if ra.array is None or rb.array is None:
            continue
        name = show_id(ia, "input")
        xa, xb = ra.array, rb.array
        if tuple(xa.shape) != tuple(xb.shape):
            raise PadiffError(
                f"The dumps' inputs differ in shape at {name}: {list(xa.shape)} ({sides[0].label}) vs "
                f"{list(xb.shape)} ({sides[1].label}). Dump both models with the same data.")
        if xa.size and xa.dtype.kind in "fc" and xb.dtype.kind in "fc":
            d = compare_arrays(xa, xb, tolerance_for(Options(), str(xa.dtype), str(xb.dtype)))
            if not d.passed:
                notes.append(f"The two dumps' inputs differ at {name} (greatest difference {d.max_abs:.3g}): every "
                             "layer will differ. Check that both sides got the same data.")


def _initial_weights(plan, ref_d: Dump, test_d: Dump, opts, reprs, notes: List[str]):
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


def _explain_by_weights(first, differing_units: List[str]) -> None:
    node = first.ref_node
    if node is None or first.cause or not differing_units:
        return
    inside = [p for p in differing_units if p == node.path or p.startswith(node.path + ".")]
    if inside:
        first.cause = (f"The dumps' weights of `{inside[0]}` already differed before the first step: the models "
                       "were not given the same weights.")
