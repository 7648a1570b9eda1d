"""Machine-readable per-layer metrics (CSV and JSON) and the short console summary,
rendered from an :class:`~padiff.compare.result.AlignResult`.

One row per compared finding, in the order padiff compared them. The columns
(:data:`COLUMNS`, also written into the JSON file) are::

    step        int    training step (0-based)
    stage       str    forward | loss | backward | grad | weight | lr
    order       int    position within (step, stage): forward in execution order, backward in
                       the order backward reaches each layer, parameters in registration order
    ref_path    str    dotted path in the reference model (torch across frameworks)
    test_path   str    dotted path in the model under test
    ref_type    str    layer class (or API) name of the reference
    test_type   str    layer class (or API) name of the model under test
    what        str    what was compared: "output", "output[1]", "input gradient[0][0]", ...
    passed      bool   within tolerance
    max_abs     float  greatest absolute difference
    max_rel     float  greatest relative difference (|a - b| / |b|)
    rel_l2      float  ||a - b|| / ||b||
    cosine      float  cosine similarity of the flattened tensors
    mismatched  int    elements outside tolerance
    numel       int    elements compared
    atol        float  absolute tolerance (with auto tolerances: a factor of the tensor's scale)
    rtol        float  relative tolerance
    problem     str    why figures are missing: shape | nan | structure | value | type; empty
    first       bool   this row is the first difference padiff reports
    tolerance   str    the tolerance rule in words ("auto float32: rtol=0.0001, ...")

A figure that is not a finite number (an infinite relative error where the reference value
is 0), or that was not measured (rows with a ``problem``), is empty in the CSV and ``null``
in the JSON, so both files load into pandas as float columns holding NaN there::

    pandas.read_csv("padiff_log/padiff_metrics.csv")
    pandas.DataFrame(json.load(open("padiff_log/padiff_metrics.json"))["rows"])

A renderer only shows: every verdict here is ``TensorDiff.passed``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from ..compare.result import STAGE_TITLES, Finding
from .console import ensure_log_dir

CSV_NAME = "padiff_metrics.csv"
JSON_NAME = "padiff_metrics.json"
FORMAT = "padiff.metrics"
FORMAT_VERSION = 1

# (name, type, description): the documented schema, written into every JSON file.
COLUMNS: Tuple[Tuple[str, str, str], ...] = (
    ("step", "int", "training step (0-based)"),
    ("stage", "str", "forward | loss | backward | grad | weight | lr"),
    ("order", "int", "position within (step, stage), in the order padiff compared"),
    ("ref_path", "str", "dotted path in the reference model"),
    ("test_path", "str", "dotted path in the model under test"),
    ("ref_type", "str", "layer class or API name of the reference"),
    ("test_type", "str", "layer class or API name of the model under test"),
    ("what", "str", "what was compared: output, output[1], input gradient[0][0], grad of weight, ..."),
    ("passed", "bool", "within tolerance"),
    ("max_abs", "float", "greatest absolute difference"),
    ("max_rel", "float", "greatest relative difference |a-b|/|b|"),
    ("rel_l2", "float", "relative L2 error ||a-b||/||b||"),
    ("cosine", "float", "cosine similarity of the flattened tensors"),
    ("mismatched", "int", "elements outside tolerance"),
    ("numel", "int", "elements compared"),
    ("atol", "float", "absolute tolerance (auto tolerances: a factor of the tensor's largest magnitude)"),
    ("rtol", "float", "relative tolerance"),
    ("problem", "str", "why figures are missing: shape, nan, structure, value, type; empty when measured"),
    ("first", "bool", "the first difference padiff reports"),
    ("tolerance", "str", "the tolerance rule in words"),
)
COLUMN_NAMES = tuple(c[0] for c in COLUMNS)
_FIGURES = ("max_abs", "max_rel", "rel_l2", "cosine")

# The order padiff checks the stages in (StepResult.all_findings).
STAGE_ORDER = ("forward", "loss", "backward", "grad", "weight", "lr")


def _finite(x) -> Optional[float]:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def stage_findings(step) -> List[Tuple[str, List[Finding]]]:
    """(stage, findings) of one StepResult, in the order padiff checks them."""
    return [("forward", list(step.forward)), ("loss", [step.loss] if step.loss is not None else []),
            ("backward", list(step.backward)), ("grad", list(step.grads)), ("weight", list(step.weights)),
            ("lr", list(step.lr))]


def finding_row(f: Finding, step: int, order: int, first: bool = False) -> Dict[str, object]:
    """One row of the schema above."""
    d = f.diff
    tol = d.tolerance
    measured = d.problem is None
    row: Dict[str, object] = {
        "step": int(step), "stage": f.stage, "order": int(order),
        "ref_path": f.ref_path, "test_path": f.test_path, "ref_type": f.ref_type, "test_type": f.test_type,
        "what": f.what, "passed": bool(d.passed),
    }
    for name in _FIGURES:
        row[name] = _finite(getattr(d, name)) if measured else None
    row["mismatched"] = int(d.mismatched) if measured else None
    row["numel"] = int(d.numel)
    row["atol"] = _finite(tol.atol) if tol is not None else None
    row["rtol"] = _finite(tol.rtol) if tol is not None else None
    row["problem"] = d.problem
    row["first"] = bool(first)
    row["tolerance"] = tol.describe() if tol is not None else ""
    return row


def metric_rows(result) -> List[Dict[str, object]]:
    """Every compared finding of every step, as rows of the documented schema."""
    rows = []
    for sr in result.steps:
        for stage, findings in stage_findings(sr):
            for order, f in enumerate(findings):
                rows.append(finding_row(f, sr.step, order, first=f is result.first))
    return rows


def write_tables(result, log_dir: str) -> Tuple[str, str]:
    """Write ``padiff_metrics.csv`` and ``padiff_metrics.json`` into ``log_dir``; returns
    their paths. Raises PadiffError when the folder cannot be written."""
    ensure_log_dir(log_dir)
    rows = metric_rows(result)
    csv_path = os.path.join(log_dir, CSV_NAME)
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMN_NAMES, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    first = result.first
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "passed": bool(result.passed),
        "ref_label": result.ref_label,
        "test_label": result.test_label,
        "steps": len(result.steps),
        "first": None if first is None else {"step": first.step, "stage": first.stage,
                                              "ref_path": first.ref_path, "test_path": first.test_path,
                                              "what": first.what},
        "columns": [{"name": n, "type": t, "description": d} for n, t, d in COLUMNS],
    }
    json_path = os.path.join(log_dir, JSON_NAME)
    head = json.dumps(doc, indent=1, allow_nan=False)  # ends with "\n}"
    body = ",\n".join("  " + json.dumps(row, allow_nan=False) for row in rows)  # one row a line
    with open(json_path, "w", encoding="utf-8") as fh:
        fh.write(head[:-2] + ',\n "rows": [' + ("\n" + body + "\n ]" if rows else "]") + "\n}\n")
    return csv_path, json_path


# --- figures shared by the console summary and the HTML report ---------------------------------

def tolerance_use(diff) -> float:
    """How much of the allowed error a comparison used (1.0 = at the limit), by the criterion
    that bound (:meth:`TensorDiff.tolerance_use`); the verdict is always ``diff.passed``.
    Infinite when figures are missing."""
    return diff.tolerance_use()[0]


def fmt_num(x, digits: int = 2) -> str:
    """A figure in a few characters: 3.4e-08, 0.43, inf."""
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits + 1}g}"
    return f"{x:.{digits - 1}e}"


def short_figure(diff) -> str:
    """The figure a row shows: relative L2 error, or what went wrong instead."""
    if diff.problem == "nan":
        return "NaN/Inf"
    if diff.problem is not None:
        return diff.problem
    return fmt_num(diff.rel_l2)


def type_note(path: str, type_name: str) -> str:
    """" (ReLU)" after a layer's path; nothing where the path already ends with the name
    (a framework call: "Net.norm > torch.nn.functional.layer_norm")."""
    if not type_name or path.endswith(type_name) or path.split(" (call ")[0].endswith(type_name):
        return ""
    return f" ({type_name})"


def source_frame(node):
    """The user's source line that made this call (deepest user frame), or None."""
    frames = getattr(node, "frames", ()) or ()
    return frames[-1] if frames else None


# --- console summary ---------------------------------------------------------------------------

_CODES = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}


def color_enabled(stream=None, env=None) -> bool:
    """Colour for a terminal; plain text for pipes, files and CI logs. ``NO_COLOR`` (any value)
    turns it off, ``FORCE_COLOR`` on, ``TERM=dumb`` off (https://no-color.org)."""
    env = os.environ if env is None else env
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    if env.get("TERM") == "dumb":
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _painter(color: bool):
    if not color:
        return lambda text, *styles: text
    return lambda text, *styles: "\033[" + ";".join(_CODES[s] for s in styles) + "m" + text + "\033[0m"


def _counts(steps) -> List[Tuple[str, int, int]]:
    """(stage, passed, total) over all steps, stages in check order, empty stages left out."""
    out = []
    for stage in STAGE_ORDER:
        total = ok = 0
        for sr in steps:
            for st, findings in stage_findings(sr):
                if st == stage:
                    total += len(findings)
                    ok += sum(1 for f in findings if f.passed)
        if total:
            out.append((stage, ok, total))
    return out


_STAGE_WORD = {"forward": "forward", "loss": "loss", "backward": "backward", "grad": "parameter grads",
               "weight": "weights after step", "lr": "learning rate"}


def console_summary(result, color: Optional[bool] = None, *, stream=None, files: Sequence[str] = ()) -> str:
    """A short report of an AlignResult for a terminal or a CI log.

    ``color=None`` colours only when ``stream`` (default stdout) is a terminal and
    ``NO_COLOR`` is unset. ``files`` are report paths to list (``result.log_files`` too)."""
    if color is None:
        color = color_enabled(stream)
    c = _painter(bool(color))
    ref, test = result.ref_label or "reference", result.test_label or "test"
    n_steps = len(result.steps)
    lines = []
    steps_text = f", {n_steps} step{'s' if n_steps != 1 else ''}" if n_steps else ""
    if result.passed:
        lines.append(f"padiff: {c('ALIGNED', 'green', 'bold')}  {ref} (reference) vs {test}{steps_text}")
    else:
        lines.append(f"padiff: {c('NOT ALIGNED', 'red', 'bold')}  {ref} (reference) vs {test}{steps_text}")
    f = result.first
    if f is not None:
        stage = STAGE_TITLES.get(f.stage, f.stage)
        lines.append(f"First diff: {c(stage, 'bold')} in step {f.step}, compared {f.what}")
        w = max(len(ref), len(test)) + 1
        lines.append(f"  {ref + ':':<{w}} {c(f.ref_path, 'cyan')}{type_note(f.ref_path, f.ref_type)}")
        lines.append(f"  {test + ':':<{w}} {c(f.test_path, 'cyan')}{type_note(f.test_path, f.test_type)}")
        for label, node in ((ref, f.ref_node), (test, f.test_node)):
            fr = source_frame(node)
            if fr is not None:
                text = fr.line_text()
                lines.append(f"  {label + ' source:':<{w + 7}} {fr.filename}:{fr.lineno} in {fr.function}"
                             + (f": {c(text, 'dim')}" if text else ""))
        if f.cause:
            lines.append(f"  {f.cause}")
        for line in f.diff.message((test, ref)).splitlines():
            lines.append("  " + line)
        growth = _growth_line(result, c)
        if growth:
            lines.append(growth)
        if getattr(result, "likely_origin", None) is not None:
            lines.append(_origin_line(result.likely_origin, c))
    checked = _checked(result, c)
    if checked:
        lines.append(checked)
    if result.passed:
        closest = _closest_line(result, c)
        if closest:
            lines.append(closest)
    for note in result.notes:
        lines.append(c("Note: ", "yellow") + note)
    shown = list(dict.fromkeys(list(files) + list(result.log_files)))
    if shown:
        lines.append("Reports: " + shown[0])
        lines.extend("         " + p for p in shown[1:])
    return "\n".join(lines)


def run_tail(result, color: Optional[bool] = None, *, stream=None) -> List[str]:
    """The lines that close an auto_diff report before its verdict, saying only what the report
    did not say already: how the forward error grew up to the first difference, what was
    checked, and (when aligned) which comparison came closest to its tolerance. Notes, paths
    and figures were printed as they came."""
    if color is None:
        color = color_enabled(stream)
    c = _painter(bool(color))
    lines = []
    growth = _growth_line(result, c)
    if growth:
        lines.append(f"[AutoDiff] {growth}")
    checked = _checked(result, c)
    if checked:
        lines.append(f"[AutoDiff] {checked}")
    if result.passed:
        closest = _closest_line(result, c)
        if closest:
            lines.append(f"[AutoDiff] {closest}")
    return lines


def _checked(result, c) -> str:
    checked = []
    for stage, ok, total in _counts(result.steps):
        word = _STAGE_WORD.get(stage, stage)
        if ok == total:
            checked.append(f"{word} {total}")
        else:
            checked.append(f"{word} {c(f'{total - ok} of {total} differ', 'red')}")
    if not checked:
        return ""
    return "Checked: " + ", ".join(checked) + (" (all within tolerance)" if result.passed else "")


def _closest_line(result, c) -> str:
    closest = _closest(result)
    if closest is None:
        return ""
    cf, use = closest
    criterion = cf.diff.tolerance_use()[1]
    if cf.stage == "loss":
        where = "the loss"
    elif cf.stage in ("forward", "backward"):
        where = f"{cf.stage} {cf.what} of {c(cf.ref_path, 'cyan')}"
    else:
        where = f"{cf.what} at {c(cf.ref_path, 'cyan')}"
    return (f"Closest to its tolerance: {where}, rel L2 {fmt_num(cf.diff.rel_l2)}, "
            f"max abs {fmt_num(cf.diff.max_abs)} ({use:.0%} of the allowed error, {criterion})")


def _growth_line(result, c) -> str:
    """How the forward error moves: before the first diff, at it, at the model's output."""
    f = result.first
    if f is None or f.stage != "forward" or not result.steps:
        return ""
    fwd = result.steps[-1].forward
    idx = next((i for i, x in enumerate(fwd) if x is f), None)
    if idx is None:
        return ""
    before = [x.diff.rel_l2 for x in fwd[:idx] if x.diff.problem is None]
    parts = []
    if before:
        parts.append(f"at most {fmt_num(max(before))} before it")
    parts.append(c(f"{short_figure(f.diff)} at it", "red"))
    if idx < len(fwd) - 1:
        last = fwd[-1]
        parts.append(f"{short_figure(last.diff)} at the model output")
    return "Forward rel L2 error: " + ", ".join(parts)


def _origin_line(origin, c) -> str:
    """The likely origin of a difference that the chosen tolerance let through, in one line."""
    f = origin.finding
    stage = STAGE_TITLES.get(f.stage, f.stage)
    now = origin.rel_l2 if origin.by == "relative L2" else origin.max_scaled
    measure = "rel L2" if origin.by == "relative L2" else "max diff / scale"
    growth = "" if math.isinf(origin.growth) else f", {fmt_num(origin.growth)}x what came before"
    via = f", computed by the backward of {', '.join(origin.readers[:2])}," if origin.readers else ""
    return (f"Likely origin: {f.what} of {c(f.ref_path, 'cyan')}{via} ({stage}, step {f.step}): {measure} "
            f"{fmt_num(now)}{growth}; within the tolerance used, so the run failed only later")


def _closest(result):
    best = None
    for sr in result.steps:
        for f in sr.all_findings():
            use = tolerance_use(f.diff)
            if math.isfinite(use) and (best is None or use > best[1]):
                best = (f, use)
    return best
