"""Console text and log files of ``compare``, ``check_dataloader`` and ``check_schedule``,
rendered from a ``CompareResult``. Renderers only show: every verdict, hint and figure
comes from the result.
"""

from __future__ import annotations

from typing import List

from ..compare.result import Finding

P = "[padiff]"
SHOWN = 3  # mismatches printed in full on the console; the log has all
_WINDOW = (2, 5)  # schedule table rows shown before / after the first differing step


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("ch") else "s")


def _shape(shape) -> str:
    return str(list(shape))


def finding_lines(f: Finding) -> List[str]:
    """One difference: where, the two sides, the torch-style message, padiff's hint."""
    d = f.diff
    if d.problem in ("structure", "value") or f.stage == "length":
        head = f"{P}     Diff at {f.what}:"
    else:
        head = (f"{P}     Diff at {f.what}: {f.test_type} {d.dtype_a} {_shape(d.shape_a)} (first) vs "
                f"{f.ref_type} {d.dtype_b} {_shape(d.shape_b)} (second)")
    lines = [head]
    lines.extend(d.message(("first", "second")).splitlines())
    if f.cause:
        lines.append(f"{P}     Hint: {f.cause}")
    return lines


def _sides(result) -> str:
    return f"first {result.test_label}, second {result.ref_label} (the reference)"


def _tail(result) -> List[str]:
    lines = [f"{P} NOTE: {n}" for n in result.notes]
    for path in result.log_files:
        lines.append(f"{P} The full report is in {path}")
    lines.append(f"{P} SUCCESS !!!" if result.passed else f"{P} FAILED !!!")
    return lines


def _value_table(findings: List[Finding]) -> List[str]:
    lines = ["All compared values:"]
    for f in findings:
        d = f.diff
        state = "ok  " if f.passed else "DIFF"
        if d.problem is None and d.numel:
            figures = (f"{d.dtype_a} vs {d.dtype_b}, shape {_shape(d.shape_a)}, greatest absolute difference "
                       f"{d.max_abs:.6g}")
        else:
            figures = d.message(("first", "second")).splitlines()[0] if d.message() else ""
        lines.append(f"  {state} {f.what}: {figures}")
    return lines


# --- compare ---------------------------------------------------------------------------------

def _compare_lines(result, full: bool) -> List[str]:
    lines = [f"{P} compare `{result.name}`: {_sides(result)}; {_plural(result.count, 'value')} compared."]
    bad = result.mismatches
    if bad:
        verb = "differs" if len(bad) == 1 else "differ"
        lines.append(f"{P} {len(bad)} of {_plural(result.count, 'value')} {verb}.")
        shown = bad if full else bad[:SHOWN]
        for f in shown:
            lines.extend(finding_lines(f))
        rest = bad[len(shown):]
        if rest:
            names = ", ".join(f.what for f in rest[:10]) + (", ..." if len(rest) > 10 else "")
            lines.append(f"{P}     And {len(rest)} more: {names}")
    return lines


# --- data loaders ----------------------------------------------------------------------------

def _dataloader_lines(result, full: bool) -> List[str]:
    lines = [f"{P} Data loaders: {_sides(result)}."]
    sizes = []
    if "dataset" in result.lengths:
        sizes.append("len(dataset) {} vs {}".format(*result.lengths["dataset"]))
    if "batches" in result.lengths:
        sizes.append("len(loader) {} vs {}".format(*result.lengths["batches"]))
    if sizes:
        lines.append(f"{P}     {'; '.join(sizes)}")
    if result.passed:
        if result.stop == "max_batches":
            lines.append(f"{P} The first {_plural(result.count, 'batch')} agree (max_batches={result.count}).")
        else:
            lines.append(f"{P} All {_plural(result.count, 'batch')} agree.")
        return lines
    if result.stop == "diff":
        lines.append(f"{P} Diff found in batch {result.index}.")
    elif result.stop == "length":
        lines.append(f"{P} The loaders differ in length: one ended at batch {result.index}.")
    else:
        lines.append(f"{P} The loaders differ in length.")
    bad = result.mismatches
    shown = bad if full else bad[:SHOWN + 2]
    for f in shown:
        lines.extend(finding_lines(f))
    if len(bad) > len(shown):
        lines.append(f"{P}     And {len(bad) - len(shown)} more: " + ", ".join(f.what for f in bad[len(shown):]))
    same = [f.what for f in result.findings if f.passed]
    if same and result.stop == "diff":
        lines.append(f"{P}     Agree in batch {result.index}: " + ", ".join(same[:10])
                     + (", ..." if len(same) > 10 else ""))
    if result.stop == "diff" and result.index:
        lines.append(f"{P} {_plural(result.index, 'batch')} agreed before batch {result.index}; padiff stopped "
                     "at the first difference.")
    return lines


# --- schedules -------------------------------------------------------------------------------

def _digits(a: float, b: float) -> int:
    """Significant digits that show two different numbers as different (at least 6)."""
    for d in range(6, 18):
        if f"{a:.{d}g}" != f"{b:.{d}g}":
            return d
    return 17


def _schedule_rows(result, lo: int, hi: int, digits: int) -> List[str]:
    first, second = result.values
    w = digits + 8
    rows = [f"{P}     {'step':>6}  {'first':<{w}}{'second'}"]
    for i in range(lo, hi):
        mark = "<--- differs" if not result.findings[i].passed else ""
        rows.append(f"{P}     {i:>6}  {first[i]:<{w}.{digits}g}{second[i]:<{w}.{digits}g}{mark}".rstrip())
    return rows


def _schedule_lines(result, full: bool) -> List[str]:
    lines = [f"{P} Learning rates over {_plural(result.count, 'step')}: {_sides(result)}."]
    if result.passed:
        lines.append(f"{P} The learning rates agree at all {_plural(result.count, 'step')}.")
        return lines
    i = result.index
    first, second = result.values
    n_bad = len(result.mismatches)
    d = _digits(first[i], second[i])
    lines.append(f"{P} {n_bad} of {_plural(result.count, 'step')} differ; the first differing step is "
                 f"{i}: {first[i]:.{d}g} (first) vs {second[i]:.{d}g} (second).")
    lo, hi = (0, result.count) if full else (max(0, i - _WINDOW[0]), min(result.count, i + _WINDOW[1] + 1))
    lines.extend(_schedule_rows(result, lo, hi, d))
    f = result.first
    lines.extend(f.diff.message(("first", "second")).splitlines())
    if f.cause:
        lines.append(f"{P}     Hint: {f.cause}")
    return lines


_RENDERERS = {"compare": _compare_lines, "dataloader": _dataloader_lines, "schedule": _schedule_lines}


def console_lines(result) -> List[str]:
    """The short report printed to the console."""
    return _RENDERERS[result.kind](result, False) + _tail(result)


def log_lines(result) -> List[str]:
    """The full report written to the log folder: every mismatch (every step of a schedule)."""
    lines = _RENDERERS[result.kind](result, True)
    if result.kind in ("compare", "dataloader") and result.findings:
        lines += [""] + _value_table(result.findings)
    lines += [""] + [f"{P} NOTE: {n}" for n in result.notes]
    lines.append(f"{P} SUCCESS !!!" if result.passed else f"{P} FAILED !!!")
    return lines
