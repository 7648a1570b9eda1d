"""Console text and log files of an auto_diff run, rendered from result objects.

A renderer never decides anything: every verdict comes from ``compare``.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

from ..compare.result import STAGE_TITLES, Finding, StepResult, register_view
from ..errors import PadiffError
from .tree import HERE, focus_nodes, trace_tree

P = "[AutoDiff]"


def options_block(shown: dict) -> List[str]:
    lines = [f"{P} Your options:", "{"]
    for k, v in shown.items():
        lines.append(f"  {k}: `{v}`")
    lines.append("}")
    return lines


def step_header(step: int) -> str:
    return f"{P} =================Train Step {step}================="


def ensure_log_dir(log_dir: str) -> str:
    try:
        os.makedirs(log_dir, exist_ok=True)
        probe = os.path.join(log_dir, ".padiff_write_test")
        with open(probe, "w") as fh:
            fh.write("")
        os.remove(probe)
    except OSError as e:
        raise PadiffError(
            f"Cannot write padiff's log folder `{log_dir}`: {e.strerror or e}. "
            "Choose a writable folder with options={'log_dir': ...} or the PADIFF_LOG_DIR environment variable."
        ) from None
    return log_dir


def write_log(log_dir: str, name: str, lines: Sequence[str]) -> str:
    ensure_log_dir(log_dir)
    path = os.path.join(log_dir, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-()" else "_" for c in name)


def stack_lines(node, title: str) -> List[str]:
    lines = [f"{title} Stacks:", "=" * 25]
    frames = getattr(node, "frames", ()) or ()
    if not frames:
        lines.append("    (no frames of your own code: the call came from inside the framework)")
    for fr in frames[-6:]:
        lines.append(f'  File "{fr.filename}", line {fr.lineno}, in {fr.function}')
        text = fr.line_text()
        if text:
            lines.append(f"    {text}")
    return lines


def _fig(x) -> str:
    return "inf" if x == float("inf") else f"{x:.3g}"


def origin_lines(origin, first: Finding) -> List[str]:
    """What the likely origin (``compare.origin.LikelyOrigin``) of a difference is, in words:
    where the error jumped, by how much, and that the chosen tolerance let it through."""
    o = origin
    f = o.finding
    where = f"`{f.ref_path}`" if f.ref_path == f.test_path else f"`{f.ref_path}` / `{f.test_path}`"
    types = f.ref_type if f.ref_type == f.test_type else f"{f.ref_type} vs {f.test_type}"
    stage = STAGE_TITLES.get(f.stage, f.stage)
    if o.by == "relative L2":
        now, before, limit = o.rel_l2, o.carried_rel_l2, o.rounding_l2
        measure = "relative L2 error"
    else:
        now, before, limit = o.max_scaled, o.carried_max_scaled, o.rounding_max_scaled
        measure = "greatest difference (share of the tensor's scale)"
    carried = (f"{_fig(o.growth)} times the {_fig(before)} the comparisons before it carry" if before > 0
               else "where every comparison before it agreed")
    d = f.diff
    tol = d.tolerance
    if tol is not None and not tol.auto:
        rule = f"Your tolerance (rtol={tol.rtol:g}, atol={tol.atol:g})"
    elif tol is not None and d.by_allowance:
        rule = f"Your tolerance (rtol={tol.allowance[1]:g}, atol={tol.allowance[0]:g}, accepted on top of the default rule)"
    else:
        rule = "The default tolerance"
    later = STAGE_TITLES.get(first.stage, first.stage)
    readers = ""
    if o.readers:
        readers = (" (computed by the backward of " + ", ".join(f"`{r}`" for r in o.readers[:3])
                   + (", ..." if len(o.readers) > 3 else "") + ", which read that output)")
    return [
        f"Likely origin: the error jumps at the {f.what} of {where} ({types}){readers}, {stage} of step {f.step}:",
        f"    {measure} {_fig(now)}, {carried}; rounding leaves up to {_fig(limit)}. "
        f"Greatest absolute difference {_fig(d.max_abs)} (scale {_fig(d.scale)})"
        + (f", relative L2 error {_fig(d.rel_l2)}" if o.by != "relative L2" else "")
        + f", cosine similarity {d.cosine:.6f}.",
        f"    {rule} let it through; the first check that fails comes later: {first.what} of "
        f"`{first.ref_path}` ({later}).",
    ]


def failure_block(finding: Finding, step: StepResult, *, ref_side, test_side, first_is_ref: bool,
                  options, log_dir: str, origin=None) -> (List[str], List[str]):
    """Lines printed for the first difference, and the log files written for it; ``origin``
    (``compare.origin.LikelyOrigin``), when the tolerance let the start of the divergence
    through, is named after the difference's own figures."""
    f = finding
    files: List[str] = []
    stage = STAGE_TITLES.get(f.stage, f.stage)
    # the verdict line ("FAILED !!!") is printed once, last, by the end of the report
    lines = [f"{P} Diff found in {stage} in step {f.step}"]
    if f.cause:
        lines.append(f"{P}     {f.cause}")
    order = [(ref_side, f.ref_path, f.ref_type), (test_side, f.test_path, f.test_type)]
    if not first_is_ref:
        order.reverse()
    lines.append(f"{P}     Type of layer is: {order[0][2]} vs {order[1][2]}")
    w = max(len(order[0][1]), len(order[1][1]))
    lines.append(f"{P}     Route: {order[0][1]:<{w}}  ({order[0][0].label})")
    lines.append(f"{P}            {order[1][1]:<{w}}  ({order[1][0].label})")
    lines.append(f"{P}     Compared: {f.what}")
    lines.append("")
    lines.extend(f.diff.message((test_side.label, ref_side.label)).splitlines())
    lines.append("")
    lines.extend(nonfinite_lines(step.nonfinite or [], f))
    if origin is not None:
        lines.extend(f"{P}     {line}" for line in origin_lines(origin, f))
        lines.append("")
    if f.ref_node is not None and step.ref_trace is not None:
        trees = []
        for side, trace, node in ((ref_side, step.ref_trace, f.ref_node), (test_side, step.test_trace, f.test_node)):
            trees.append((side, trace_tree(trace, here_node=node, title=side.title, show_path=options.path_log)))
        if not first_is_ref:
            trees.reverse()
        total = sum(len(t) for _, t in trees)
        lines.append(f"{P} Check model struct:")
        if total <= options.tree_inline_lines:
            for _, t in trees:
                lines.extend(t)
        else:
            for side, t in trees:
                files.append(write_log(log_dir, f"report_{_safe(side.label)}.log", t))
            for side, trace, node in ((ref_side, step.ref_trace, f.ref_node), (test_side, step.test_trace, f.test_node)):
                keep = focus_nodes(node)
                lines.extend(trace_tree(trace, here_node=node, title=side.title + " (around the diff)",
                                        show_path=options.path_log, include=lambda n: id(n) in keep))
            lines.append("Logs: " + files[0])
            lines.extend("      " + p for p in files[1:])
        lines.append("")
        stacks = [(ref_side, f.ref_node), (test_side, f.test_node)]
        if not first_is_ref:
            stacks.reverse()
        for side, node in stacks:
            lines.extend(stack_lines(node, side.title.replace(" Model", "")))
        lines.append("")
    elif f.ref_repr or f.test_repr:
        lines.append(f"{P}     Layers: {f.ref_repr}  ({ref_side.label})")
        lines.append(f"{P}             {f.test_repr}  ({test_side.label})")
    return lines, files


def nonfinite_lines(found, finding) -> List[str]:
    """NaN that appeared in the run (``compare.nonfinite.NonFinite``) while the difference's own
    values are finite (a NaN masked later, ``where(x > 0, log(x), 0)``), with the source line.
    Where the difference holds NaN/Inf, its ``cause`` names the origin instead; an Inf alone
    (an attention mask made with -inf) is no news."""
    shown = [x for x in found if x.nan] if not finding.nonfinite else []
    if not shown:
        return []
    lines = [f"{P}     NaN appeared before this difference, though its values are finite:"]
    for x in shown:
        lines.append(f"{P}         {x.label}: {x.describe()}")
        src = x.source
        text = src.line_text() if src is not None else ""
        if text:
            lines.append(f"{P}             {text}")
    lines.append("")
    return lines


def param_blocks(findings: List[Finding], *, heading: str, ref_side, test_side) -> List[str]:
    """Seed-style blocks of weight_diff.log / grad_diff.log, one per differing parameter."""
    lines = []
    for f in findings:
        if f.passed:
            continue
        lines += [
            "=========================",
            heading,
            f"between {test_side.label}: `{f.test_repr}`, {ref_side.label}: `{f.ref_repr}`",
            f"{test_side.label} path:",
            f"    {f.test_path}",
            f"{ref_side.label} path:",
            f"    {f.ref_path}",
        ]
        if f.cause:
            lines.append(f.cause)
        lines += f.diff.message((test_side.label, ref_side.label)).splitlines()
        lines.append("")
    return lines


def notes_block(notes: Sequence[str]) -> List[str]:
    return [f"{P} NOTE: {n}" for n in notes]


def single_step_list(step: StepResult, *, ref_side, test_side) -> List[str]:
    """Every layer whose own difference exceeds tolerance, in execution order (single-step)."""
    bad = [f for f in step.forward + step.backward if not f.passed]
    lines = [f"{P} Single-step: {len(bad)} layer(s) differ on their own (each run on the reference's inputs):"]
    for f in bad:
        d = f.diff
        figures = d.detail if d.problem else (f"max abs {d.max_abs:.3g}, max rel {d.max_rel:.3g}, "
                                              f"rel-L2 {d.rel_l2:.3g}, {d.mismatched}/{d.numel} over tolerance")
        lines.append(f"{P}     {f.stage:<8} {f.test_path}  ({f.test_type} vs {f.ref_type}): {f.what}: {figures}")
    return lines


def short_figures(d) -> str:
    """The key figures of a comparison in one line (or what went wrong instead)."""
    if d.problem is not None:
        return d.message().splitlines()[0] if d.message() else d.problem
    return (f"max abs {d.max_abs:.3g}, max rel {d.max_rel:.3g}, rel L2 {d.rel_l2:.3g}, "
            f"{d.mismatched}/{d.numel} over tolerance")


def finding_lines(f: Finding, ref: str = "reference", test: str = "tested", origin=None) -> List[str]:
    """A finding in a few lines: what ``str(finding)`` and ``str(result)`` show (the whole
    report is :func:`failure_block`'s)."""
    stage = STAGE_TITLES.get(f.stage, f.stage)
    w = max(len(ref), len(test)) + 1
    lines = [f"{stage}, step {f.step}, compared {f.what}:",
             f"  {ref + ':':<{w}} {f.ref_path} ({f.ref_type})",
             f"  {test + ':':<{w}} {f.test_path} ({f.test_type})"]
    for label, node in ((ref, f.ref_node), (test, f.test_node)):
        frames = getattr(node, "frames", ()) or ()
        if frames:
            fr = frames[-1]
            lines.append(f"  {label} source: {fr.filename}:{fr.lineno} in {fr.function}")
    if f.diff.problem is None:
        lines.append("  " + short_figures(f.diff))
    else:
        lines.extend("  " + line for line in f.diff.message((test, ref)).splitlines())
    if f.cause:
        lines.append("  " + f.cause)
    if origin is not None:
        o = origin.finding
        lines.append(f"  Likely origin: {o.what} of {o.ref_path} ({STAGE_TITLES.get(o.stage, o.stage)}, step {o.step})")
    return lines


register_view("short_figures", short_figures)  # repr(finding)
register_view("finding_lines", finding_lines)  # str(finding), str(result)
