"""The step loop every comparison shares, live or from dumps: each compared step added to the
result and printed, the run stopped at the first difference, and the end of the report."""

from __future__ import annotations

from typing import Callable, Optional

from ..compare import nonfinite
from ..compare.origin import step_origin
from ..compare.result import AlignResult, Finding, StepResult
from ..report import console
from ..report.run import Printer, end_of_run, step_lines
from .step import Comparison


def add_step(result: AlignResult, sr: StepResult, opts) -> Optional[Finding]:
    """Add a compared step to the result; returns its first difference (the run stops there)
    or None."""
    result.steps.append(sr)
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


def run_steps(result: AlignResult, opts, out: Printer, one_step: Callable[[int], StepResult],
              header: Callable[[int], str] = console.step_header,
              on_first: Callable[[Finding], None] = lambda first: None) -> None:
    """Run and compare ``opts.steps`` steps (``one_step(step)`` gives each compared step),
    printing each; stop at the first difference, which ``on_first`` may explain further."""
    for step in range(opts.steps):
        out(header(step))
        sr = one_step(step)
        first = add_step(result, sr, opts)
        out(*step_lines(result, sr, opts))
        if first is not None:
            on_first(first)
            break


def finish(result: AlignResult, out: Printer, cmp: Comparison, opts) -> AlignResult:
    """The verdict, and the end of the report (see ``report.run.end_of_run``)."""
    result.passed = result.first is None
    end_of_run(result, out, cmp.ref, cmp.test, cmp.ref_i, opts)
    return result
