"""Two live models stepped together: each step records the reference, then the tested model
while a worker compares (when the framework leaves a core idle), then trains both."""

from __future__ import annotations

import time
from typing import List, Tuple

from .._memory import release_freed_memory
from ..compare import nonfinite
from ..compare.overlap import Arrivals, Background, wants_overlap
from ..compare.result import AlignResult, StepResult
from ..errors import PadiffError
from ..record.recorder import FAST
from ..record.spill import Spill
from ..report import console
from ..report.run import Printer, eta
from ..report.weights import copy_failure_lines, copy_failure_message, structure_lines
from ..weights.assign import apply_copy, plan_copy
from .prepare import check_inputs, input_pair, make_call, random_layer_note, training_options
from .record import run_side
from .step import Comparison, compare_step, loss_finding, reference_context
from .steps import finish, run_steps
from .train import (clear_grads, learning_rates, lr_findings, step_optimizer, step_scheduler,
                    weight_findings_of_sides)

P = console.P


def plan_weights(sides, ref_i: int, layer_map, calls, opts, out: Printer, notes: List[str]) -> Comparison:
    """Pair the models' parameters (the weight plan) and, with ``auto_weights``, copy the
    reference's weights into the tested model; a plan that fails refuses to copy (a
    PadiffError carrying the report so far) or, without copying, compares no parameters."""
    ref, test = sides[ref_i], sides[1 - ref_i]
    plan = plan_copy(ref, test, layer_map, probe=(calls[ref_i], calls[1 - ref_i]))  # probe: fused layouts
    notes.extend(plan.notes)
    if opts.auto_weights:
        if not plan.ok:
            out(*copy_failure_lines(plan, first_side=sides[0], layer_map=layer_map, show_path=opts.path_log))
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
    return Comparison.of_plan(plan, ref, test, ref_i, layer_map)


def prepare_live(sides, ref_i: int, inputs, loss_fns, optimizers, schedulers, opts, layer_map,
                 out: Printer) -> Tuple["LiveRun", List[str]]:
    """Everything before the first step of two live models, and the notes it found: the
    inputs checked and turned into calls, the run's options shown, the warnings noted, the
    weight plan made (and applied with ``auto_weights``)."""
    notes: List[str] = []
    inputs = input_pair(sides, inputs, notes)
    opts = training_options(opts, loss_fns is not None, optimizers is not None, notes)
    out(*console.options_block(opts.shown()))
    calls = [make_call(s, inp, notes, grad_inputs=opts.check_backward) for s, inp in zip(sides, inputs)]
    input_nonfinite = check_inputs(sides, inputs, notes)
    notes.extend(n for n in (random_layer_note(s) for s in sides) if n)
    if opts.single_step and opts.check_backward:
        notes.append("single_step with diff_phase including backward runs every layer once more, and the "
                     "reference's layers without sublayers too, to feed them the reference's output gradient.")
    cmp = plan_weights(sides, ref_i, layer_map, calls, opts, out, notes)
    out(*console.notes_block(notes))
    return LiveRun(cmp, calls, loss_fns, optimizers, schedulers, opts, input_nonfinite), notes


# Below this many bytes of the reference's records a step's comparison takes a few
# milliseconds of mostly Python work: a worker thread would only contend for the interpreter
# lock with the tested model's gradient hooks (a tiny HF Llama: 64 ms of padiff's time per call
# with the worker, 55 without).
OVERLAP_MIN_BYTES = 16 << 20


def _worth_a_thread(ref_spill) -> bool:
    """Whether the reference's records are large enough to compare in a worker."""
    return ref_spill.held + ref_spill.spilled >= OVERLAP_MIN_BYTES


class LiveRun:
    """What each step of two live models needs: the comparison, the calls (in the user's
    order), the pairs of loss functions, optimizers and schedulers (or None), and where the
    inputs hold NaN/Inf."""

    def __init__(self, cmp: Comparison, calls, loss_fns, optimizers, schedulers, opts, input_nonfinite=()):
        self.cmp, self.calls, self.opts = cmp, calls, opts
        self.loss_fns, self.optimizers, self.schedulers = loss_fns, optimizers, schedulers
        self.input_nonfinite = list(input_nonfinite)
        self.param_paths = cmp.param_paths()
        # Compare while the tested model runs its backward when its framework leaves a core idle
        # (single-step mode replays the tested model after its run, so it compares afterwards),
        # and, unless the user asked for it, when there is enough to compare (see _worth_a_thread).
        self.threaded = wants_overlap(opts.overlap, cmp.test.adapter, cmp.test.model) and not opts.single_step
        self.overlapped = False  # whether any step compared in a worker

    def _record(self, i: int, spill, **more):
        opts = self.opts
        return run_side(self.cmp.ref if i == self.cmp.ref_i else self.cmp.test, self.calls[i], opts=opts,
                        loss_fn=self.loss_fns[i] if self.loss_fns else None,
                        need_loss=opts.check_backward or self.loss_fns is not None, param_paths=self.param_paths[i],
                        keep_inputs=opts.single_step, spill=spill, layer_map=self.cmp.layer_map, **more)

    def _recorded_and_compared(self, step: int, ref_spill, test_spill) -> StepResult:
        """Both models recorded and the step compared; the comparison starts once the tested
        model's forward is recorded (in a worker when threaded)."""
        ref_i = self.cmp.ref_i
        ref_run = self._record(ref_i, ref_spill)
        release_freed_memory()  # the reference's activations, before the tested model's run
        threaded = self.threaded and (self.opts.overlap is True or _worth_a_thread(ref_spill))
        self.overlapped = self.overlapped or threaded
        arrivals = Arrivals()

        def compare():  # in a worker: the reference's part during the tested forward, the rest after it
            rounding = reference_context(ref_run, self.opts)
            test_run = arrivals.wait_forward()
            if test_run is None:
                return None  # the tested run failed: its error is raised in the caller's thread
            return compare_step(ref_run, test_run, self.cmp, self.opts, step,
                                ready=arrivals.ready if threaded else None, rounding=rounding)

        job = Background(compare, threaded)
        try:
            test_run = self._record(1 - ref_i, test_spill, after_forward=arrivals.forward_recorded,
                                    arrivals=arrivals if threaded else None)
            sr = job.result()
        finally:
            arrivals.finish()  # also for a run that failed before recording anything: no worker waits on
            job.abandon()  # a failed run: wait for the worker before leaving
        sr.loss = loss_finding(ref_run, test_run, self.loss_fns is not None, self.opts, step)
        if not sr.passed:  # where NaN/Inf first appeared, read before the arrays go
            nonfinite.track(sr, self.cmp.ref.label, self.cmp.test.label, inputs=self.input_nonfinite)
        ref_run.trace.drop_arrays()  # every figure is in the findings now
        test_run.trace.drop_arrays()
        return sr

    def step(self, step: int) -> StepResult:
        """Record, compare and (with optimizers) train one step."""
        for s in (self.cmp.ref, self.cmp.test):
            clear_grads(s)
        opts = self.opts
        budget = None if opts.memory_budget_mb is None else int(opts.memory_budget_mb * 2 ** 20)
        reuse = FAST["reuse"]
        with Spill(budget, reuse=reuse) as ref_spill, Spill(budget, reuse=reuse) as test_spill:
            sr = self._recorded_and_compared(step, ref_spill, test_spill)
        release_freed_memory()
        if self.optimizers is not None:
            self._train(sr, step)
        return sr

    def _train(self, sr: StepResult, step: int) -> None:
        cmp = self.cmp
        order = (cmp.ref_i, 1 - cmp.ref_i)
        sides = {cmp.ref_i: cmp.ref, 1 - cmp.ref_i: cmp.test}
        lrs = [learning_rates(sides[i], self.optimizers[i]) for i in order]  # in force during this step
        for i in order:
            step_optimizer(sides[i], self.optimizers[i])
            if self.schedulers is not None:
                step_scheduler(sides[i], self.schedulers[i])
        sr.lr = lr_findings(lrs, self.opts, step)
        sr.weights = weight_findings_of_sides(cmp.links, sr.grads, cmp.ref, cmp.test, self.opts, step, cmp.reprs)


def run_live(result: AlignResult, live: LiveRun, out: Printer) -> AlignResult:
    """Every step of two live models, then the end of the report. Without optimizers the
    models are left without gradients, as they came."""
    opts = live.opts
    started = time.monotonic()
    header = lambda step: console.step_header(step) + (eta(step, opts.steps, started) if opts.steps > 1 else "")
    try:
        run_steps(result, opts, out, live.step, header=header)
    finally:
        result.overlapped = live.overlapped
        if live.optimizers is None:
            for s in (live.cmp.ref, live.cmp.test):
                clear_grads(s)
    return finish(result, out, live.cmp, opts)
