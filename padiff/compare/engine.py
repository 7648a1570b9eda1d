"""Comparing paired traces and paired parameters; returns Findings, prints nothing."""

from __future__ import annotations

from typing import Callable, Iterable, List, Tuple

from ..record.spill import release
from ..record.trace import Node, TensorRecord
from ..structure import show_id
from .metrics import TensorDiff, compare_records, explained_error, tolerance_for
from .pairing import Pairing
from .result import Finding


def _compare_once(test_rec: TensorRecord, ref_rec: TensorRecord, tol, mode: str, memo) -> TensorDiff:
    """The same two records are often compared more than once (a layer's output is its last
    framework call's output; a gradient reaches several hooks): ``memo``, a dict that lives
    for one step's comparison, makes each pair compared once."""
    if memo is None or test_rec.array is None or ref_rec.array is None:
        return compare_records(test_rec, ref_rec, tol, mode)
    key = (id(test_rec), id(ref_rec), tol, mode)
    hit = memo.get(key)
    if hit is not None and hit[0] is test_rec and hit[1] is ref_rec:
        return hit[2]
    diff = compare_records(test_rec, ref_rec, tol, mode)
    memo[key] = (test_rec, ref_rec, diff)
    release(test_rec.array)  # spilled records: their pages go back until needed again
    release(ref_rec.array)
    return diff


def _compare_lists(ref: List[Tuple[str, TensorRecord]], test: List[Tuple[str, TensorRecord]], options,
                   path: str, what: str, memo=None, stage: str = "forward") -> List[Tuple[str, TensorDiff]]:
    """Pair two flattened nested values by position; a structure difference is a finding.
    ``None`` entries are dropped first: torch's ``MultiheadAttention`` returns ``(out, None)``
    where paddle's returns ``out``."""
    out = []
    ref = [(i, r) for i, r in ref if r.is_tensor or r.value is not None]
    test = [(i, r) for i, r in test if r.is_tensor or r.value is not None]
    if len(ref) != len(test):
        ids_r = ", ".join(show_id(i, what) for i, _ in ref[:6]) or "nothing"
        ids_t = ", ".join(show_id(i, what) for i, _ in test[:6]) or "nothing"
        d = TensorDiff(False, (), (), "", "", None, problem="structure",
                       detail=f"The {what}s are nested differently: reference has {len(ref)} "
                              f"({ids_r}), tested has {len(test)} ({ids_t}).")
        return [(what, d)]
    for (id_r, rec_r), (id_t, rec_t) in zip(ref, test):
        tol = tolerance_for(options, rec_t.dtype, rec_r.dtype, path, stage=stage)
        out.append((show_id(id_r, what), _compare_once(rec_t, rec_r, tol, options.compare_mode, memo)))
    return out


def compare_outputs(a: Node, b: Node, ref_outputs, test_outputs, options, step: int,
                    what: str = "output", suffix: str = "", memo=None) -> List[Finding]:
    return [Finding("forward", w + suffix, a.label(), b.label(), a.name, b.name, diff, step, ref_node=a, test_node=b)
            for w, diff in _compare_lists(ref_outputs, test_outputs, options, a.path, what, memo)]


def compare_grads(a: Node, b: Node, ref_grads, test_grads, options, step: int, what: str,
                  context: float = None) -> List[Finding]:
    """Gradients keyed by id path; a gradient that reached only one side is a finding.
    ``context``: the reference's largest gradient (:func:`gradient_scale`)."""
    findings = []
    for k in ref_grads:
        if k not in test_grads:
            d = TensorDiff(False, (), (), "", "", None, problem="structure",
                           detail=f"Only the reference model's {show_id(k, what)} received a gradient.")
        else:
            tol = tolerance_for(options, test_grads[k].dtype, ref_grads[k].dtype, a.path, stage="backward",
                                context=context)
            d = compare_records(test_grads[k], ref_grads[k], tol, options.compare_mode)
        findings.append(Finding("backward", show_id(k, what), a.label(), b.label(), a.name, b.name, d, step,
                                ref_node=a, test_node=b))
    return findings


def _distinct_grads(node: Node, grads, kind: str):
    """(id path, record) of a node's gradients in forward order, each record once."""
    order = [i for i, r in node.outputs if r.is_tensor] if kind == "exit" else list(node.input_ids)
    order += [k for k in grads if k not in order]
    seen, out = set(), []
    for k in order:
        rec = grads.get(k)
        if rec is not None and id(rec) not in seen:
            seen.add(id(rec))
            out.append((k, rec))
    return out


def _all_zero(rec: TensorRecord) -> bool:
    return rec.array is not None and not rec.array.any()


def largest_magnitude(records) -> float:
    """The largest magnitude among floating tensor records (0.0 when there is none). Spilled
    records' pages are handed back after reading: this reads every gradient of a run."""
    found = 0.0
    for r in records:
        arr = r.array if r is not None else None
        if arr is not None and arr.size and arr.dtype.kind == "f":
            found = max(found, float(arr.max()), -float(arr.min()))
            release(arr)
    return found


def gradient_scale(ref_events: List[Tuple[Node, str]]) -> float:
    """The largest gradient magnitude of the reference's backward pass: the size of the values
    every gradient is computed from, so rounding alone leaves errors of about u times it."""
    return largest_magnitude([r for a, _ in ref_events for g in (a.grad_out, a.grad_in) for r in g.values()])


def compare_forward(pairing: Pairing, ref_order: List[Node], options, step: int, memo=None) -> List[Finding]:
    findings = []
    for a in ref_order:
        b = pairing.partner.get(id(a))
        if b is not None:
            findings += compare_outputs(a, b, a.outputs, b.outputs, options, step, memo=memo)
    return findings


def compare_backward(pairing: Pairing, ref_events: List[Tuple[Node, str]], options, step: int,
                     memo=None, context: float = None, ready=None) -> List[Finding]:
    """The gradients of paired calls in the order the reference's backward reached them.
    ``ready(test_node, kind)``, when given, waits until the tested node's gradients are in."""
    findings = []
    context = gradient_scale(ref_events) if context is None else context
    explained = None  # the difference near-tie flips tolerated so far account for (see metrics)
    for a, kind in ref_events:
        b = pairing.partner.get(id(a))
        if b is None:
            continue
        if ready is not None:
            ready(b, kind)
        ga, gb = (a.grad_out, b.grad_out) if kind == "exit" else (a.grad_in, b.grad_in)
        what = "output gradient" if kind == "exit" else "input gradient"
        if not ga and not gb:
            continue
        # Pair the distinct gradients of each side by position, in forward order: torch's
        # MultiheadAttention takes (x, x, x) and returns (out, None) where a port takes x and
        # returns out; one tensor seen three times has one gradient.
        la = _distinct_grads(a, ga, kind)
        lb = _distinct_grads(b, gb, kind)
        extra = [(side, k, r) for side, lst, n in (("reference", la, len(lb)), ("tested", lb, len(la)))
                 for k, r in lst[n:] if not _all_zero(r)]
        if extra and a.parent is not None:
            has, k, _ = extra[0]
            d = TensorDiff(False, (), (), "", "", None, problem="structure",
                           detail=f"Only the {has} model's {show_id(k, what)} received a gradient: in the other "
                                  "model this tensor does not reach the loss (a detach, no_grad, stop_gradient, "
                                  "or an integer tensor?).")
            findings.append(Finding("backward", show_id(k, what), a.label(), b.label(), a.name, b.name, d, step,
                                    ref_node=a, test_node=b))
        for (k, rec_a), (_, rec_b) in zip(la, lb):
            tol = tolerance_for(options, rec_b.dtype, rec_a.dtype, a.path, stage="backward", context=context,
                                explained=explained)
            diff = _compare_once(rec_b, rec_a, tol, options.compare_mode, memo)
            explained = explained_error([diff], explained)
            findings.append(Finding("backward", show_id(k, what), a.label(), b.label(), a.name, b.name, diff, step,
                                    ref_node=a, test_node=b))
    return findings


def compare_links(links: Iterable, read_ref: Callable, read_test: Callable, stage: str, what: str,
                  options, step: int, reprs: Callable = None, context: float = None,
                  explained=None) -> List[Finding]:
    """Compare tensors through weight links: the reference (copy source) value is turned into
    the tested model's layout by the link's rule, then compared."""
    findings = []
    for link in links:
        ref_rec = read_ref(link)
        test_rec = read_test(link)
        if ref_rec is None and test_rec is None:
            continue
        if ref_rec is None or test_rec is None:
            has = "reference" if ref_rec is not None else "tested"
            diff = TensorDiff(False, (), (), "", "", None, problem="structure",
                              detail=f"Only the {has} model has a {what} for this parameter (frozen on one side?).")
        else:
            ref_arr = link.converted.transform(ref_rec.array)
            ref_conv = TensorRecord(ref_arr, ref_rec.dtype, tuple(ref_arr.shape))
            tol = tolerance_for(options, test_rec.dtype, ref_rec.dtype, link.dst_path, stage=stage, context=context,
                                explained=explained)
            diff = compare_records(test_rec, ref_conv, tol, options.compare_mode)
        ref_repr, test_repr = reprs(link) if reprs else ("", "")
        findings.append(Finding(stage, f"{what} of {link.src_name}", link.src_path, link.dst_path,
                                type(link.src_unit.layer).__name__, type(link.dst_unit.layer).__name__,
                                diff, step, ref_repr=ref_repr, test_repr=test_repr))
    return findings
