"""Comparing paired traces and paired parameters; returns Findings, prints nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Tuple

from ..record.spill import read_blocks, release
from ..record.trace import Node, TensorRecord
from ..structure import pair_flat, show_id
from .context import GradientContext
from .metrics import BLOCK, TensorDiff, carried_error, compare_records, explained_error, tolerance_for
from .pairing import Pairing
from .result import Finding


def _compare_once(test_rec: TensorRecord, ref_rec: TensorRecord, tol, mode: str, memo,
                  broadcast: bool = False) -> TensorDiff:
    """The same two records are often compared more than once (a layer's output is its last
    framework call's output; a gradient reaches several hooks): ``memo``, a dict that lives
    for one step's comparison, makes each pair compared once."""
    if memo is None or test_rec.array is None or ref_rec.array is None:
        return compare_records(test_rec, ref_rec, tol, mode, broadcast, layout=True)
    key = (id(test_rec), id(ref_rec), tol, mode, broadcast)
    hit = memo.get(key)
    if hit is not None and hit[0] is test_rec and hit[1] is ref_rec:
        return hit[2]
    diff = compare_records(test_rec, ref_rec, tol, mode, broadcast, layout=True)
    memo[key] = (test_rec, ref_rec, diff)
    release(test_rec.array)  # spilled records: their pages go back until needed again
    release(ref_rec.array)
    return diff


@dataclass
class OutputGap:
    """Part of a paired call's outputs (or inputs) that is compared on neither side: returned
    by one model only, None in one of them, or an object (a cache). Data; the text is made by
    :func:`gap_notes`."""

    what: str  # "output", "input"
    ref_node: Node
    test_node: Node
    ref_id: Optional[str]  # where it is in the reference's value (None: it returns nothing there)
    ref: List[Tuple[str, TensorRecord]]  # the reference's values there
    test_id: Optional[str]
    test: List[Tuple[str, TensorRecord]]

    @property
    def kind(self) -> str:
        """"object" (an object on either side), "one-sided" (values against None or nothing),
        or "type" (values of kinds that do not compare, such as a tensor against a string)."""
        kinds = {r.kind for _, r in self.ref + self.test}
        if "object" in kinds:
            return "object"
        side_kinds = [{r.kind for _, r in leaves} - {"none"} for leaves in (self.ref, self.test)]
        return "one-sided" if not side_kinds[0] or not side_kinds[1] else "type"

    def where(self) -> str:
        ids = [i for i in (self.ref_id, self.test_id) if i is not None]
        if len(ids) == 2 and ids[0] != ids[1]:
            return f"{show_id(ids[0], self.what)} / {show_id(ids[1], self.what)}"
        return show_id(ids[0], self.what)


def _pairable(a: TensorRecord, b: TensorRecord) -> bool:
    kinds = {a.kind, b.kind}
    return kinds <= {"tensor", "number"} or kinds == {"text"}


def _is_none(rec: TensorRecord) -> bool:
    return rec.kind == "none"


def _compare_lists(ref: List[Tuple[str, TensorRecord]], test: List[Tuple[str, TensorRecord]], options,
                   path: str, what: str, memo=None, stage: str = "forward",
                   gaps_out: list = None, carried=None) -> List[Tuple[str, TensorDiff]]:
    """Pair two flattened nested values (by field name where both sides name their fields,
    by position otherwise: :func:`structure.pair_flat`) and compare each pair. What only one
    side returns, what is None on one side, and objects are not compared: they are returned
    through ``gaps_out`` as :class:`structure.Gap` (a note, not a difference). Torch's
    ``MultiheadAttention`` returns ``(out, None)`` where paddle's returns ``out``; HF's
    attention returns its weights where a port returns None.

    Forward values whose shapes differ only in size-1 dimensions are compared after
    broadcasting (a rotary embedding's ``cos`` of shape ``[1, S, D]`` in a port against
    ``[B, S, D]``): every consumer that broadcasts sees the same values."""
    pairs, gaps = pair_flat(ref, test, _is_none, _pairable)
    if gaps_out is not None:
        gaps_out.extend(gaps)
    out = []
    for (id_r, rec_r), (id_t, rec_t) in pairs:
        tol = tolerance_for(options, rec_t.dtype, rec_r.dtype, path, stage=stage, carried=carried)
        name = show_id(id_r, what) if id_r == id_t else f"{show_id(id_r, what)} / {show_id(id_t, what)}"
        out.append((name, _compare_once(rec_t, rec_r, tol, options.compare_mode, memo, stage == "forward")))
    return out


def compare_outputs(a: Node, b: Node, ref_outputs, test_outputs, options, step: int,
                    what: str = "output", suffix: str = "", memo=None, gaps: list = None,
                    carried=None) -> List[Finding]:
    """Findings for the paired values of two calls; ``gaps``, when given, receives an
    :class:`OutputGap` for each part compared on neither side; ``carried``: the difference
    the calls before these passed with (``metrics.carried_error``)."""
    found = [] if gaps is not None else None
    findings = [Finding("forward", w + suffix, a.label(), b.label(), a.name, b.name, diff, step,
                        ref_node=a, test_node=b)
                for w, diff in _compare_lists(ref_outputs, test_outputs, options, a.path, what, memo,
                                              gaps_out=found, carried=carried)]
    if gaps is not None:
        gaps.extend(OutputGap(what, a, b, *gap) for gap in found)
    return findings


def _describe(leaves: List[Tuple[str, TensorRecord]], shapes: bool) -> str:
    """What a side returns at a gap: "a float32 tensor [2, 4]", "None", "nothing", "a Cache
    object", "3 tensors"."""
    if not leaves:
        return "nothing"
    recs = [r for _, r in leaves if r.kind != "none"]
    if not recs:
        return "None"
    parts = []
    tensors = [r for r in recs if r.kind == "tensor"]
    if len(tensors) == 1:
        r = tensors[0]
        parts.append(f"a {r.dtype} tensor {list(r.shape)}" if shapes else "a tensor")
    elif tensors:
        parts.append(f"{len(tensors)} tensors")
    objects = [r.dtype for r in recs if r.kind == "object"]
    if objects:
        names = list(dict.fromkeys(objects))
        parts.append(f"a {names[0]} object" if len(objects) == 1 else
                     f"{len(objects)} objects ({', '.join(names[:3])})")
    values = [r for r in recs if r.kind in ("number", "text")]
    if len(values) == 1:
        v = values[0]
        parts.append(f"the {v.dtype} {v.value!r}" if shapes and v.value is not None else f"a {v.dtype}")
    elif values:
        parts.append(f"{len(values)} values")
    return " and ".join(parts)


_GAP_REASONS = {
    "one-sided": "Only what both models return is compared.",
    "object": "Objects are not compared (nor with ==): only the tensors both models return are.",
    "type": "These do not compare.",
}


def gap_notes(gaps: Iterable[OutputGap], ref_label: str = "reference", test_label: str = "tested") -> List[str]:
    """One note per kind of gap: the same part of the same pair of layer types, however many
    calls show it (a port's attention returns None for its weights in every layer)."""
    groups: dict = {}
    for g in gaps:
        key = (g.where(), g.ref_node.name, g.test_node.name, _describe(g.ref, False), _describe(g.test, False))
        groups.setdefault(key, []).append(g)
    notes = []
    for (where, ref_type, test_type, _, _), found in groups.items():
        g = found[0]
        a, b = g.ref_node.label(), g.test_node.label()
        layers = f"`{a}`" if a == b else f"`{a}` / `{b}`"
        names = ref_type if ref_type == test_type else f"{ref_type} / {test_type}"
        at = f"{layers} ({names})" if len(found) == 1 else f"{names} ({len(found)} calls, first {layers})"
        notes.append(f"Not compared: {where} of {at}: {_describe(g.ref, True)} in the {ref_label} model, "
                     f"{_describe(g.test, True)} in the {test_label} model. {_GAP_REASONS[g.kind]}")
    return notes


def compare_grads(a: Node, b: Node, ref_grads, test_grads, options, step: int, what: str,
                  context=None) -> List[Finding]:
    """Gradients keyed by id path; a gradient that reached only one side is a finding.
    ``context``: the rounding context of the reference's gradients, a number or a function
    of the reference's record (:meth:`GradientContext.for_own`)."""
    findings = []
    for k in ref_grads:
        if k not in test_grads:
            d = TensorDiff(False, (), (), "", "", None, problem="structure",
                           detail=f"Only the reference model's {show_id(k, what)} received a gradient.")
        else:
            tol = tolerance_for(options, test_grads[k].dtype, ref_grads[k].dtype, a.path, stage="backward",
                                context=context(ref_grads[k]) if callable(context) else context)
            d = compare_records(test_grads[k], ref_grads[k], tol, options.compare_mode)
        findings.append(Finding("backward", show_id(k, what), a.label(), b.label(), a.name, b.name, d, step,
                                ref_node=a, test_node=b, gradient=what.split()[0]))
    return findings


def _distinct_grads(node: Node, grads):
    """(id path, record) of a node's input gradients in forward order, each record once."""
    order = list(node.input_ids)
    order += [k for k in grads if k not in order]
    seen, out = set(), []
    for k in order:
        rec = grads.get(k)
        if rec is not None and id(rec) not in seen:
            seen.add(id(rec))
            out.append((k, rec))
    return out


def _output_grads(a: Node, b: Node, ga, gb):
    """The gradients of two paired calls' outputs, paired as their outputs are
    (:func:`structure.pair_flat`): (reference list, tested list, extras), the lists aligned,
    each pair of records once. A gradient of an output that the other model does not return
    is left out (the forward comparison notes that output); one whose output is paired but
    reached only one model's is an extra: ``(side, id path, record)``, unless all zero."""
    pairs, _ = pair_flat(a.outputs, b.outputs, _is_none, _pairable)
    la, lb, extra, seen = [], [], [], set()
    for (id_a, _), (id_b, _) in pairs:
        rec_a, rec_b = ga.get(id_a), gb.get(id_b)
        if (rec_a is None and rec_b is None) or (id(rec_a), id(rec_b)) in seen:
            continue
        seen.add((id(rec_a), id(rec_b)))
        if rec_a is not None and rec_b is not None:
            la.append((id_a, rec_a))
            lb.append((id_b, rec_b))
        elif rec_a is not None and not _all_zero(rec_a):
            extra.append(("reference", id_a, rec_a))
        elif rec_b is not None and not _all_zero(rec_b):
            extra.append(("tested", id_b, rec_b))
    return la, lb, extra


def _all_zero(rec: TensorRecord) -> bool:
    return rec.array is not None and not rec.array.any()


def largest_magnitude(records) -> float:
    """The largest magnitude among floating tensor records (0.0 when there is none). Spilled
    records' pages are handed back after reading: this reads every gradient of a run."""
    found = 0.0
    for r in records:
        arr = r.array if r is not None else None
        if arr is not None and arr.size and arr.dtype.kind == "f":
            for x in read_blocks(arr, BLOCK):  # a spilled record straight from its file
                found = max(found, float(x.max()), -float(x.min()))
            release(arr)
    return found


def gradient_scale(ref_events: List[Tuple[Node, str]]) -> float:
    """The largest gradient magnitude of the reference's backward pass: the size of the values
    every gradient is computed from, so rounding alone leaves errors of about u times it."""
    return largest_magnitude([r for a, _ in ref_events for g in (a.grad_out, a.grad_in) for r in g.values()])


def compare_forward(pairing: Pairing, ref_order: List[Node], options, step: int, memo=None,
                    gaps: list = None) -> List[Finding]:
    """The outputs of paired calls, in the reference's order; ``gaps`` (a list), when given,
    receives an :class:`OutputGap` for each part of them compared on neither side. Each call
    may carry the difference the calls before it passed with (``metrics.carried_error``)."""
    findings = []
    carried = None
    for a in ref_order:
        b = pairing.partner.get(id(a))
        if b is not None and pairing.only.get(id(a)) != "in":
            found = compare_outputs(a, b, a.outputs, b.outputs, options, step, memo=memo, gaps=gaps,
                                    carried=carried)
            carried = carried_error([f.diff for f in found], carried)
            findings += found
    return findings


def compare_backward(pairing: Pairing, ref_events: List[Tuple[Node, str]], options, step: int,
                     memo=None, context=None, ready=None, notes: list = None, near_ties: bool = True) -> List[Finding]:
    """The gradients of paired calls in the order the reference's backward reached them.
    ``ready(test_node, kind)``, when given, waits until the tested node's gradients are in.
    ``context``: each reference gradient's rounding context (a :class:`GradientContext` of
    ``ref_events``, made here when not given; a number: one context for every gradient).
    ``near_ties=False`` tolerates no near-tie flip: where the forward outputs already differ,
    a gradient that is zero in one model only is what that difference did (a ReLU mask moved)."""
    findings = []
    unshared: List[Tuple[Node, str, int, int]] = []  # input gradients left out (see _read_apart)
    context = GradientContext(ref_events) if context is None else context
    explained = None  # the difference near-tie flips tolerated so far account for (see metrics)
    carried = None  # the difference the gradients so far passed with (metrics.carried_error)
    for a, kind in ref_events:
        b = pairing.partner.get(id(a))
        if b is None or pairing.only.get(id(a)) == ("in" if kind == "exit" else "out"):
            continue
        if ready is not None:
            ready(b, kind)
        ga, gb = (a.grad_out, b.grad_out) if kind == "exit" else (a.grad_in, b.grad_in)
        paired = _paired_grads(a, b, kind, ga, gb, unshared) if ga or gb else None
        if paired is None:
            continue
        la, lb, extra = paired
        what = "output gradient" if kind == "exit" else "input gradient"
        if extra and a.parent is not None:
            findings.append(_one_sided_gradient(a, b, extra[0], what, step))
        for (k, rec_a), (k_b, rec_b) in zip(la, lb):
            if kind == "enter" and _read_apart(a, b, k, k_b, unshared):
                continue
            tol = tolerance_for(options, rec_b.dtype, rec_a.dtype, a.path, stage="backward",
                                context=context.of(rec_a) if isinstance(context, GradientContext) else context,
                                explained=explained, near_ties=near_ties, carried=carried)
            diff = _compare_once(rec_b, rec_a, tol, options.compare_mode, memo)
            explained = explained_error([diff], explained)
            carried = carried_error([diff], carried)
            name = show_id(k, what) if kind != "exit" or k == k_b else f"{show_id(k, what)} / {show_id(k_b, what)}"
            findings.append(Finding("backward", name, a.label(), b.label(), a.name, b.name, diff, step,
                                    ref_node=a, test_node=b, gradient=what.split()[0]))
    if unshared and notes is not None:
        notes.append(_unshared_note(unshared))
    return findings


def _paired_grads(a: Node, b: Node, kind: str, ga, gb, unshared: list):
    """(reference list, tested list, extras) of two paired calls' gradients of one kind, or None
    where their input gradients are cut differently (noted in ``unshared``)."""
    # Output gradients pair as their outputs do (by name or position); input gradients
    # pair the distinct gradients of each side by position, in forward order: torch's
    # MultiheadAttention takes (x, x, x) where a port takes x; one tensor seen three
    # times has one gradient.
    if kind == "exit":
        return _output_grads(a, b, ga, gb)
    la = _distinct_grads(a, ga)
    lb = _distinct_grads(b, gb)
    if len(la) != len(lb) and _composite(a) and _composite(b):
        # A list of tensors against one concatenated tensor (torch's _DenseLayer against
        # paddle's DenseLayer): the layers' inputs are cut differently, not detached.
        unshared.extend((a, k, len(la), len(lb)) for k, _ in la[:1])
        return None
    extra = [(side, k, r) for side, lst, n in (("reference", la, len(lb)), ("tested", lb, len(la)))
             for k, r in lst[n:] if not _all_zero(r)]
    return la, lb, extra


def _one_sided_gradient(a: Node, b: Node, extra, what: str, step: int) -> Finding:
    """The finding for a gradient that reached one model's call only."""
    has, k, _ = extra
    d = TensorDiff(False, (), (), "", "", None, problem="structure",
                   detail=f"Only the {has} model's {show_id(k, what)} received a gradient: in the other "
                          "model this tensor does not reach the loss (a detach, no_grad, stop_gradient, "
                          "or an integer tensor?).")
    return Finding("backward", show_id(k, what), a.label(), b.label(), a.name, b.name, d, step,
                   ref_node=a, test_node=b, gradient=what.split()[0])


def _unshared_note(unshared: list) -> str:
    a, k, ua, ub = unshared[0]
    return (f"{len(unshared)} input gradient(s) not compared (first: {show_id(k, 'input')} of `{a.path}`, read by "
            f"{ua} call(s) in the reference model and {ub} in the tested one): a tensor's gradient is the sum over "
            "every call that reads it, so where the two models read it a different number of times the sums "
            "differ without either being wrong. The calls' own outputs and the gradients of what they read are "
            "compared.")


def _composite(node: Node) -> bool:
    return any(c.kind == "net" for c in node.children)


def _read_apart(a: Node, b: Node, k: str, k_b: str, unshared: list) -> bool:
    """True (and noted) where a paired input is read by a different number of innermost calls
    in the two models (paddle's ``DenseLayer`` reads its input in its BatchNorm and again in a
    concat; torch's ``_DenseLayer`` concatenates first): its recorded gradients are sums over
    different calls. Unknown counts (older dumps) compare as before."""
    if a.input_uses is None or b.input_uses is None:
        return False
    ua, ub = a.input_uses.get(k), b.input_uses.get(k_b)
    if ua is None or ub is None or ua == ub:
        return False
    unshared.append((a, k, ua, ub))
    return True


def compare_links(links: Iterable, read_ref: Callable, read_test: Callable, stage: str, what: str,
                  options, step: int, reprs: Callable = None, context=None,
                  explained=None, carried=None) -> List[Finding]:
    """Compare tensors through weight links: the reference (copy source) value is turned into
    the tested model's layout by the link's rule, then compared. A destination made from
    several source tensors (a fused ``qkv_proj`` from ``q_proj``, ``k_proj``, ``v_proj``) is
    compared against the same fusion of the reference's values: ``read_ref`` is called on each
    of ``link.sources()`` (single-source views of the link) and the rule's transform gets them
    all; one source split into several destinations is one link per destination, as usual.
    ``context``: the rounding context, a number or ``context(link, reference record)``;
    ``explained``, ``carried``: see :func:`metrics.tolerance_for`."""
    findings = []
    for link in links:
        sources = link.sources()
        ref_recs = [read_ref(s) for s in sources]
        test_rec = read_test(link)
        missing = [s for s, r in zip(sources, ref_recs) if r is None]
        if len(missing) == len(sources) and test_rec is None:
            continue
        if missing or test_rec is None:
            has = "reference" if test_rec is None else "tested"
            detail = f"Only the {has} model has a {what} for this parameter (frozen on one side?)."
            if missing and len(sources) > 1 and len(missing) < len(sources):
                detail = (f"The reference model has no {what} for `{missing[0].src_path}`, one of the "
                          f"{len(sources)} tensors fused into this parameter (frozen?).")
            diff = TensorDiff(False, (), (), "", "", None, problem="structure", detail=detail)
        else:
            ref_arr = link.converted.apply([r.array for r in ref_recs])
            ref_rec = ref_recs[0]
            ref_conv = TensorRecord(ref_arr, ref_rec.dtype, tuple(ref_arr.shape))
            tol = tolerance_for(options, test_rec.dtype, ref_rec.dtype, link.dst_path, stage=stage,
                                context=context(link, ref_conv) if callable(context) else context,
                                explained=explained, carried=carried)
            diff = compare_records(test_rec, ref_conv, tol, options.compare_mode)
        ref_repr, test_repr = reprs(link) if reprs else ("", "")
        name = link.src_name if len(sources) == 1 else link.dst_name.rsplit(".", 1)[-1]
        label = f"{what} of {name}"
        if link.converted.fused is not None:
            label += f" ({link.converted.note.split(' ')[0]}: {link.converted.fused.summary()})"
        findings.append(Finding(stage, label, link.src_label, link.dst_path,
                                type(link.src_unit.layer).__name__, type(link.dst_unit.layer).__name__,
                                diff, step, ref_repr=ref_repr, test_repr=test_repr))
    return findings
