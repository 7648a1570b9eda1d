"""The HTML report of an auto_diff run: one self-contained file a person opens in a browser.

Both models' call trees side by side, paired calls on one row, each row coloured by its
error against its tolerance, collapsible, the first difference opened, highlighted and
linked to the user's source line; the relative error along execution order for forward and
backward as inline SVG; one tab per training step; the options and versions used.

Templating is Jinja2 (the optional extra ``padiff[html]``), imported only when a report is
written. The plot is inline SVG drawn from the figures here, not a JavaScript charting
library: a polyline of 500 points is about 6 KB, renders with scripts off, prints, and
needs no network; a vendored chart library would weigh 50-200 KB before any data.

A renderer never decides: every colour follows ``TensorDiff.passed``; the share of the
tolerance used only shades passing rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import sys
from types import SimpleNamespace as NS
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote

from ..compare.result import STAGE_TITLES, register_view
from ..errors import PadiffError
from ..frameworks import known_frameworks
from . import tables
from .console import ensure_log_dir
from .tables import fmt_num, short_figure, source_frame, tolerance_use, type_note

HTML_NAME = "padiff_report.html"

_ENV = None


def _environment():
    """The Jinja2 environment (built once per process; templates compile once)."""
    global _ENV
    if _ENV is None:
        try:
            import jinja2
        except ImportError:
            raise PadiffError(
                "The HTML report needs Jinja2, which is not installed: pip install 'padiff[html]' "
                "(or pip install jinja2), or use the text report (options={'report': 'text'})."
            ) from None
        _ENV = jinja2.Environment(
            loader=jinja2.PackageLoader("padiff.report", "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
    return _ENV


# --- rows of the side-by-side tree ------------------------------------------------------------

def _preorder(root) -> List[object]:
    out, stack = [], [root] if root is not None else []
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(n.children))
    return out


def _depths(nodes) -> Dict[int, int]:
    depth: Dict[int, int] = {}
    for n in nodes:  # preorder: a parent comes before its children
        depth[id(n)] = depth.get(id(n.parent), -1) + 1 if n.parent is not None else 0
    return depth


@dataclasses.dataclass
class _Row:
    ref: object
    test: object
    kids: list = dataclasses.field(default_factory=list)


def aligned_rows(ref_trace, test_trace, pairing) -> List[_Row]:
    """Top-level rows of the two call trees merged: a paired call shares a row with its
    partner, a call without a partner gets a row with an empty other side, placed where it
    ran. Rows nest under the row of their reference parent (test parent for test-only
    rows)."""
    ref_nodes = _preorder(ref_trace.root if ref_trace is not None else None)
    test_nodes = _preorder(test_trace.root if test_trace is not None else None)
    pairs = pairing.pairs if pairing is not None else []
    partner = {id(a): b for a, b in pairs}
    paired_test = {id(b) for _, b in pairs}
    test_pos = {id(n): i for i, n in enumerate(test_nodes)}
    flat: List[_Row] = []
    j = 0
    for a in ref_nodes:
        b = partner.get(id(a))
        if b is not None:
            pos = test_pos.get(id(b), -1)
            while j < pos:
                t = test_nodes[j]
                if id(t) not in paired_test:
                    flat.append(_Row(None, t))
                j += 1
            j = max(j, pos + 1)
        flat.append(_Row(a, b))
    for t in test_nodes[j:]:
        if id(t) not in paired_test:
            flat.append(_Row(None, t))
    row_of: Dict[int, _Row] = {}
    for r in flat:
        for n in (r.ref, r.test):
            if n is not None:
                row_of[id(n)] = r
    top: List[_Row] = []
    for r in flat:
        owner = r.ref if r.ref is not None else r.test
        parent = row_of.get(id(owner.parent)) if owner.parent is not None else None
        (parent.kids if parent is not None else top).append(r)
    return top


# --- view model ---------------------------------------------------------------------------------

def _status(findings) -> Tuple[str, Optional[object]]:
    """The CSS class of a figure cell and the finding it shows: the worst of ``findings``."""
    if not findings:
        return "none", None
    failing = [f for f in findings if not f.passed]
    pool = failing or findings
    worst = max(pool, key=lambda f: tolerance_use(f.diff))
    if failing:
        return "bad", worst
    use = tolerance_use(worst.diff)
    return ("near" if use >= 0.5 else "ok"), worst


def _figures_title(f) -> str:
    d = f.diff
    if d.problem is not None:
        return f"{f.what}: {d.message()}"
    text = f"{f.what}: max abs {fmt_num(d.max_abs)}, max rel {fmt_num(d.max_rel)}, cos {d.cosine:.6f}"
    return text + (f", {d.mismatched}/{d.numel} over tolerance" if d.mismatched else "")


def _cell(findings) -> NS:
    cls, f = _status(findings)
    if f is None:
        return _NO_CELL
    # comfortable passes carry no tooltip: a 500-layer report stays small (the CSV has them)
    return NS(cls=cls, text=short_figure(f.diff), title="" if cls == "ok" else _figures_title(f))


_NO_CELL = NS(cls="none", text="", title="")


def _side(node, depth) -> Optional[NS]:
    if node is None:
        return None
    # a framework call sits under its layer's row: its name says enough
    path = node.label() if node.kind == "net" else (f"call {node.call_count + 1}" if node.call_count else "")
    return NS(d=depth, kind=node.kind, name=node.name, path=path)


def _frame(node) -> Optional[Dict[str, str]]:
    fr = source_frame(node)
    if fr is None:
        return None
    path = os.path.abspath(fr.filename)
    return {"href": "file://" + quote(path), "where": f"{fr.filename}:{fr.lineno}", "function": fr.function,
            "text": fr.line_text(), "stack": [f"{x.filename}:{x.lineno} in {x.function}"
                                              for x in getattr(node, "frames", ())[-6:]]}


def _panel(f, ref_label: str, test_label: str) -> Dict[str, object]:
    """What the report says about one failing finding: route, message, source lines."""
    return {
        "stage": STAGE_TITLES.get(f.stage, f.stage), "step": f.step, "what": f.what,
        "ref_label": ref_label, "test_label": test_label,
        "ref_path": f.ref_path, "test_path": f.test_path,
        "ref_type": type_note(f.ref_path, f.ref_type), "test_type": type_note(f.test_path, f.test_type),
        "message": f.diff.message(), "cause": f.cause,
        "ref_src": _frame(f.ref_node), "test_src": _frame(f.test_node),
    }


def _tree_rows(sr, first, panel) -> List[NS]:
    """The rows of one step's tree, flat in display order, each saying how many nested
    blocks close after it (so the template needs no recursion)."""
    if sr.ref_trace is None or getattr(sr.ref_trace, "root", None) is None:
        return []
    top = aligned_rows(sr.ref_trace, sr.test_trace, sr.pairing)
    fwd: Dict[int, list] = {}
    bwd: Dict[int, list] = {}
    for f in sr.forward:
        if f.ref_node is not None:
            fwd.setdefault(id(f.ref_node), []).append(f)
    for f in sr.backward:
        if f.ref_node is not None:
            bwd.setdefault(id(f.ref_node), []).append(f)
    first_ref = first.ref_node if first is not None and first.step == sr.step else None
    first_test = first.test_node if first is not None and first.step == sr.step else None
    ref_depth = _depths(_preorder(sr.ref_trace.root))
    test_depth = _depths(_preorder(sr.test_trace.root)) if sr.test_trace is not None else {}
    # rows on the way to the first difference are opened
    on_path = set()
    if first_ref is not None or first_test is not None:
        n = first_ref if first_ref is not None else first_test
        while n is not None:
            on_path.add(id(n))
            n = n.parent

    out: List[NS] = []

    def emit(r: _Row, level: int, lone: bool = False):
        key = r.ref if r.ref is not None else r.test
        is_first = (first_ref is not None and r.ref is first_ref) or (
            first_ref is None and first_test is not None and r.test is first_test)
        fcell = _cell(fwd.get(id(r.ref), []) if r.ref is not None else [])
        bcell = _cell(bwd.get(id(r.ref), []) if r.ref is not None else [])
        worst = "bad" if "bad" in (fcell.cls, bcell.cls) else ("near" if "near" in (fcell.cls, bcell.cls) else "ok")
        if r.ref is None or r.test is None:
            worst = "solo"
        row = NS(
            ref=_side(r.ref, ref_depth.get(id(r.ref), 0)),
            test=_side(r.test, test_depth.get(id(r.test), 0)),
            fwd=fcell, bwd=bcell, cls=worst, first=is_first, kind=key.kind,
            ref_path=r.ref.label() if r.ref is not None else "",
            test_path=r.test.label() if r.test is not None else "",
            branch=bool(r.kids) or is_first,
            open=is_first or id(key) in on_path or (r.test is not None and id(r.test) in on_path)
                 or (not on_path and (level == 0 or lone)),
            panel=panel if is_first else None,
            closes=0,
        )
        out.append(row)
        for k in r.kids:  # without a difference, open the root and chains of single children
            emit(k, level + 1, lone=row.open and len(r.kids) == 1)
        if row.branch:
            out[-1].closes += 1

    # emit() is recursive on depth only (a model nests tens of levels, not thousands)
    for r in top:
        emit(r, 0)
    return out


# --- the plot -----------------------------------------------------------------------------------

_W, _H, _L, _R, _T, _B = 640, 200, 50, 10, 14, 30


def _log_range(values: List[float], extra: List[float]) -> Tuple[int, int]:
    pos = [v for v in values + extra if v > 0 and math.isfinite(v)]
    if not pos:
        return -9, 0
    lo = math.floor(math.log10(min(pos)))
    hi = math.ceil(math.log10(max(pos)))
    if hi <= lo:
        hi = lo + 1
    lo = max(lo, hi - 16)
    return lo, hi


def error_plot(findings, first, title: str, legend: str) -> Optional[Dict[str, object]]:
    """An SVG line chart (log scale) of relative L2 and max relative error along ``findings``'
    order; failing points marked, the first difference drawn as a vertical line."""
    if not findings:
        return None
    n = len(findings)
    rel_l2 = [f.diff.rel_l2 if f.diff.problem is None else math.inf for f in findings]
    max_rel = [f.diff.max_rel if f.diff.problem is None else math.inf for f in findings]
    limits = {f.diff.tolerance.l2 for f in findings
              if f.diff.tolerance is not None and f.diff.tolerance.auto and f.diff.tolerance.l2}
    limit = limits.pop() if len(limits) == 1 else None
    lo, hi = _log_range(rel_l2 + max_rel, [limit] if limit else [])
    if limit:
        lo = min(lo, math.floor(math.log10(limit)) - 1)
    clamped = any(not v > 10.0 ** lo for v in rel_l2 + max_rel)
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(i):
        return _L + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v):
        if not v > 0:
            return _T + ph
        if math.isinf(v):
            return _T
        t = (hi - math.log10(v)) / (hi - lo)
        return _T + ph * min(max(t, 0.0), 1.0)

    def line(vals):
        return " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vals))

    step = max(1, math.ceil((hi - lo) / 6))
    yticks = [{"y": round(y(10.0 ** e), 1), "label": f"1e{e}" if e else "1"} for e in range(lo, hi + 1, step)]
    if clamped:  # zeros and anything smaller sit on the bottom line
        yticks[0]["label"] = "\u2264" + yticks[0]["label"]
    xstep = max(1, int(10 ** math.floor(math.log10(max(n / 8, 1)))))
    while n / xstep > 10:
        xstep *= 2
    xticks = [{"x": round(x(i), 1), "label": str(i)} for i in range(0, n, xstep)]
    bad = []
    for i, f in enumerate(findings):
        if not f.passed:
            bad.append({"x": round(x(i), 1), "y": round(y(rel_l2[i]), 1),
                        "title": f"#{i} {f.ref_path} / {f.test_path} ({f.what}): rel L2 {short_figure(f.diff)}, "
                                 f"max rel {fmt_num(f.diff.max_rel) if f.diff.problem is None else '-'}"})
    mark = None
    for i, f in enumerate(findings):
        if f is first:
            mark = {"x": round(x(i), 1), "label": f"first diff: {f.ref_path}", "anchor": "end" if i > n / 2 else "start"}
    return {
        "title": title, "legend": legend, "w": _W, "h": _H, "left": _L, "right": _W - _R, "top": _T,
        "bottom": _T + ph, "n": n,
        "rel_l2": line(rel_l2), "max_rel": line(max_rel),
        "limit": None if limit is None else {"y": round(y(limit), 1), "label": f"rel-L2 limit {limit:g}"},
        "yticks": yticks, "xticks": xticks, "bad": bad, "mark": mark,
    }


# --- parameters, options, versions ------------------------------------------------------------

def _param_rows(findings, first) -> List[Dict[str, object]]:
    rows = []
    for f in findings:
        d = f.diff
        rows.append({
            "ref_path": f.ref_path, "test_path": f.test_path, "what": f.what, "cls": "ok" if d.passed else "bad",
            "first": f is first, "figure": short_figure(d),
            "max_abs": fmt_num(d.max_abs) if d.problem is None else "-",
            "cosine": f"{d.cosine:.6f}" if d.problem is None else "-",
            "title": _figures_title(f) if d.passed else d.message(),
        })
    return rows


def _options_rows(options) -> List[Tuple[str, str]]:
    if options is None:
        return []
    if dataclasses.is_dataclass(options):
        return [(fl.name, repr(getattr(options, fl.name))) for fl in dataclasses.fields(options)]
    return [(k, repr(v)) for k, v in sorted(vars(options).items())]


def versions() -> List[Tuple[str, str]]:
    """Versions of what produced the report. Frameworks are read from ``sys.modules`` when
    the run loaded them; the report never imports one."""
    out = []
    pkg = sys.modules.get("padiff")
    out.append(("padiff", getattr(pkg, "__version__", "?")))
    out.append(("python", platform.python_version()))
    modules = [("numpy", "numpy")] + [(fw.distribution, fw.name) for fw in known_frameworks()] + [("jinja2", "jinja2")]
    for label, mod in modules:
        m = sys.modules.get(mod)
        if m is not None:
            out.append((label, str(getattr(m, "__version__", "?"))))
    out.append(("platform", platform.platform(terse=True)))
    return out


def build_context(result) -> Dict[str, object]:
    """Everything the template shows, as plain data."""
    first = result.first
    ref_label, test_label = result.ref_label or "reference", result.test_label or "test"
    panel = _panel(first, ref_label, test_label) if first is not None else None
    steps = []
    for sr in result.steps:
        plots = [p for p in (
            error_plot(sr.forward, first, "Forward", "outputs in execution order"),
            error_plot(sr.backward, first, "Backward", "gradients in the order backward reaches them"),
        ) if p is not None]
        loss = None
        if sr.loss is not None:
            loss = _param_rows([sr.loss], first)[0]
        grads, weights = _param_rows(sr.grads, first), _param_rows(sr.weights, first)
        lr = _param_rows(sr.lr, first)
        rows = _tree_rows(sr, first, panel)
        steps.append({
            "step": sr.step, "passed": sr.passed, "plots": plots,
            "rows": rows,
            # the row the "first difference" links point at (id="first-divergence"), in this step
            "tree_first": any(r.first for r in rows),
            "has_tree": sr.ref_trace is not None and getattr(sr.ref_trace, "root", None) is not None,
            "ref_title": getattr(sr.ref_trace, "model_name", "") or ref_label,
            "test_title": getattr(sr.test_trace, "model_name", "") or test_label,
            "loss": loss, "params": [("Parameter gradients", grads), ("Weights after the optimizer step", weights),
                                     ("Learning rate", lr)],
            "params_open": any(r["cls"] == "bad" for r in grads + weights + lr),
            "notes": list(sr.notes),
            "counts": [(tables._STAGE_WORD.get(s, s), ok, total) for s, ok, total in tables._counts([sr])],
        })
    default = len(steps) - 1 if first is not None and steps else 0
    return {
        "passed": bool(result.passed), "ref_label": ref_label, "test_label": test_label,
        "first": panel, "steps": steps, "default_tab": default,
        "first_in_tree": any(st["tree_first"] for st in steps),
        "options": _options_rows(result.options), "versions": versions(),
        "notes": list(result.notes), "files": list(result.log_files),
        "generated": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def render_html(result) -> str:
    """The report as one HTML string (no external resources)."""
    return _environment().get_template("report.html.j2").render(**build_context(result))


def notebook_html(result) -> str:
    """What a notebook shows for an AlignResult: the HTML report (the same as ``report="html"``
    writes) in an inline frame, so its styles and script stay its own; the text report in a
    <pre> block where Jinja2 is not installed."""
    import html
    import importlib.util

    if importlib.util.find_spec("jinja2") is None:
        return f"<pre>{html.escape(result.report or str(result))}</pre>"
    page = render_html(result)
    return (f'<iframe class="padiff-report" srcdoc="{html.escape(page, quote=True)}" '
            'style="width:100%;height:640px;border:1px solid #dadce0" sandbox="allow-scripts"></iframe>')


def write_html(result, path: str) -> str:
    """Write the HTML report to ``path`` (a file, or a folder to hold ``padiff_report.html``);
    returns the file's path. Raises PadiffError when Jinja2 is missing or the folder is not
    writable."""
    text = render_html(result)
    if os.path.isdir(path):
        path = os.path.join(path, HTML_NAME)
    folder = os.path.dirname(os.path.abspath(path))
    ensure_log_dir(folder)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def write_reports(result, log_dir: str) -> List[str]:
    """The HTML report and both metric tables in ``log_dir``: [html, csv, json] paths."""
    html_path = write_html(result, os.path.join(log_dir, HTML_NAME))
    csv_path, json_path = tables.write_tables(result, log_dir)
    return [html_path, csv_path, json_path]


register_view("notebook_html", notebook_html)  # an AlignResult shown in a notebook
