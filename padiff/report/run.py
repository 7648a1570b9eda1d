"""What a run prints as it goes and at its end: the lines of each step, the failure block and
its log files, the HTML report and tables when asked, the summary and the verdict line.
Shared by ``auto_diff`` and ``compare_dumps``; rendered from the result objects only."""

from __future__ import annotations

import sys
import time
from typing import List

from ..compare.result import STAGE_TITLES, AlignResult, Cause, StepResult
from . import console
from .html import write_reports
from .tables import run_tail

P = console.P


class Printer:
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


def eta(step: int, steps: int, started: float) -> str:
    """How far a run of several steps is, and about how long it has left."""
    if step == 0:
        return f" (0/{steps} done)"
    per = (time.monotonic() - started) / step
    return f" ({step}/{steps} done, about {per * (steps - step):.0f}s left)"


def step_lines(result: AlignResult, sr: StepResult, opts) -> List[str]:
    """The lines closing a compared step (the last of ``result.steps``): the output's
    difference, the notes not said at an earlier step, and what was compared when it agrees."""
    shown = {n for earlier in result.steps[:-1] for n in earlier.notes}  # a note repeated each step: once
    lines = [f"{P} Max elementwise output diff is {sr.max_output_diff} (the model's final output)"]
    lines += console.notes_block([n for n in sr.notes if n not in shown])
    if sr.first_failure is not None:
        return lines
    if opts.check_forward:
        lines.append(f"{P} forward stage compared.")
    if opts.check_backward:
        lines.append(f"{P} backward stage compared.")
    if sr.grads or sr.weights:
        lines.append(f"{P} weight and grad compared.")
    return lines


def end_of_run(result: AlignResult, out: Printer, ref, test, ref_i: int, opts) -> None:
    """The end of a report: the failure block and diff logs, the HTML report and tables when
    asked, a short summary (coloured on a terminal), and the seeds' verdict line last; the
    whole text kept as ``result.report``."""
    if not result.passed:
        failure(result, out, ref, test, ref_i, opts)
    if opts.report == "html":
        paths = write_reports(result, opts.log_dir)  # needs jinja2: said before any model ran
        result.log_files.extend(paths)
        out(f"{P} Reports: " + paths[0], *[f"{P}          {p}" for p in paths[1:]])
    # What the lines above did not say yet (how many comparisons, the error's growth), then the
    # seeds' verdict line: one verdict per run, last.
    out(*run_tail(result, stream=out.stream or sys.stdout))
    out(f"{P} SUCCESS !!!" if result.passed else f"{P} FAILED !!!")
    result.report = out.text()


_PARAM_LOGS = (  # (findings of a step, log file, its heading, what the console line calls them)
    ("weights", "weight_diff.log", "After the optimizer step, weight value is different.", "model weights"),
    ("grads", "grad_diff.log", "After backward, grad value is different.", "model grad"),
)


def failure(result: AlignResult, out: Printer, ref, test, ref_i: int, opts) -> None:
    """The first difference's block (and its log files), the single-step list, and a log of
    every differing weight and parameter gradient."""
    sr = result.steps[-1]
    lines, files = console.failure_block(result.first, sr, ref_side=ref, test_side=test, first_is_ref=(ref_i == 0),
                                         options=opts, log_dir=opts.log_dir, origin=result.likely_origin)
    out(*lines)
    result.log_files.extend(files)
    if opts.single_step:
        out(*console.single_step_list(sr, ref_side=ref, test_side=test))
    for attr, name, heading, what in _PARAM_LOGS:
        findings = getattr(sr, attr)
        bad = [f for f in findings if not f.passed]
        if not bad:
            continue
        path = console.write_log(opts.log_dir, name, console.param_blocks(bad, heading=heading, ref_side=ref,
                                                                          test_side=test))
        result.log_files.append(path)
        extra = " The gradients agreed: an optimizer difference." if bad[0].cause_kind is Cause.OPTIMIZER else ""
        out(f"{P} Diff found in {what} ({len(bad)} of {len(findings)} parameters), check report `{path}`.{extra}")


def distributed_tail(results, first, files: List[str]) -> List[str]:
    """The end of a distributed comparison's report: the report of the pair that diverged first,
    one line per pair (``dump.distributed.RankResult``), the verdict."""
    lines: List[str] = []
    if first is not None:
        lines += ["", f"{P} ===== {first.label}: the first to diverge; its report: =====", *first.report.splitlines(),
                  f"{P} ===== end of the report of {first.label} =====", ""]
    lines.append(f"{P} Per rank:" if all(r.by_rank for r in results) else f"{P} Per pair:")
    failed = [r for r in results if not r.passed]
    width = max(len(r.label) for r in results) if results else 0
    for r in results:
        text = "aligned" if r.passed else f"NOT ALIGNED  {r.where}"
        if r is first and len(failed) > 1:
            text += "  <-- diverged first"
        if r.cause:
            text += f" ({r.cause})"
        lines.append(f"{P}     {r.label:<{width}}  {text}")
    agree = [r.label for r in results if r.passed]
    if first is None:
        lines.append(f"{P} Every compared rank agrees ({len(results)} pair(s)).")
    else:
        lines.append(f"{P} Agree: {', '.join(agree) if agree else 'none'}. Diverged first: {first.label}, at "
                     f"`{first.test_path}` ({STAGE_TITLES.get(first.stage, first.stage)} of step {first.step}).")
    lines.append(f"{P} Each pair's report: " + ", ".join(files[:4])
                 + (f", ... ({len(files)} in all)" if len(files) > 4 else ""))
    lines.append(f"{P} SUCCESS !!!" if first is None else f"{P} FAILED !!!")
    return lines
