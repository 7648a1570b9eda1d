"""Where a divergence starts, found from how the error grows, whatever tolerance decides.

The verdict uses the rule the user chose (their atol/rtol, or the default). A loose tolerance
can let the start of a divergence through and fail only later, where the difference has
grown or summed up (a parameter gradient, the loss, a weight after the optimizer step): the
first failure then names the wrong place. Apart from the verdict, the comparisons are read in
the order padiff makes them (forward in execution order, the loss, then backward in the order
backward runs) and the first one where the error *jumps* is taken as the likely origin:

* its relative L2 error exceeds what rounding leaves (the default rule's limit for its dtype,
  ``metrics.rounding_tolerance``) and ``GROWTH`` times the largest relative L2 error of the
  comparisons before it (what they carry into it); or its greatest difference, as a share of
  the tensor's scale, does the same elementwise;
* a comparison whose whole error is within the rounding floor of its context (a gradient that
  is rounding noise in both models) neither jumps nor counts as carried error;
* rounding that grows steadily layer after layer (a chaotic map, a deep stack) never jumps
  by ``GROWTH`` at once, so it is not taken for an origin.

Data only: :func:`likely_origin` returns a :class:`LikelyOrigin` (or None); the console
renders it (``report/console.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .metrics import rounding_tolerance
from .result import Finding

GROWTH = 10.0  # a jump: this many times the error the comparisons before it carry


@dataclass
class LikelyOrigin:
    """The comparison where the error jumps, with the figures that say so."""

    finding: Finding
    rel_l2: float  # its relative L2 error (flipped elements left out)
    max_scaled: float  # its greatest difference as a share of the tensor's scale
    carried_rel_l2: float  # the largest relative L2 error of the comparisons before it
    carried_max_scaled: float  # the largest scaled difference before it
    rounding_l2: float  # what rounding may leave there (the default rule's relative L2 limit)
    rounding_max_scaled: float  # ... and elementwise, as a share of the scale
    by: str  # "relative L2" or "elementwise": the measure that jumped
    readers: Tuple[str, ...] = ()  # an output gradient's origin: the layers whose backward computed it

    @property
    def let_through(self) -> bool:
        """True when the chosen tolerance passed this comparison."""
        return self.finding.passed

    @property
    def growth(self) -> float:
        """How many times the error carried into it the jump is (inf when nothing came before)."""
        now, before = ((self.rel_l2, self.carried_rel_l2) if self.by == "relative L2"
                       else (self.max_scaled, self.carried_max_scaled))
        return now / before if before > 0 else math.inf


def _measures(f: Finding):
    """(relative L2, scaled max, rounding tolerance) of a finding, or None where it carries no
    figure of divergence (a structural problem, an empty tensor, a plain value, an error within
    the rounding floor of its context)."""
    d = f.diff
    if d.problem is not None or not d.numel or d.mode != "strict":
        return None
    tol = d.tolerance
    explained = tol.explained if tol is not None and tol.auto else (0.0, 0.0)
    rule = rounding_tolerance(d.dtype_a, d.dtype_b, tol.context if tol is not None else 0.0, explained)
    if d.rms_error <= rule.floor and d.max_abs <= max(rule.atol * d.scale, rule.floor):
        return None  # rounding noise against rounding noise: no figure of divergence
    rel_l2 = d.rel_l2_rest if math.isfinite(d.rel_l2_rest) else math.inf
    max_scaled = 0.0 if d.flips else d.max_scaled
    return rel_l2, max_scaled, rule


def _allowed_scaled(d, rule) -> float:
    """What the rounding rule allows at the greatest difference, as a share of the scale."""
    if d.scale <= 0:
        return math.inf
    b = abs(d.value_b) if isinstance(d.value_b, (int, float)) and math.isfinite(d.value_b) else 0.0
    return (rule.rtol * b + max(rule.atol * d.scale, rule.floor)) / d.scale


def likely_origin(findings: List[Finding]) -> Optional[LikelyOrigin]:
    """The first comparison among ``findings`` (in the order they were made) where the error
    jumps; None when none does. Only comparisons up to the first failing one are read: an
    origin after the first failure says nothing the failure does not."""
    carried_l2 = carried_max = 0.0
    for f in findings:
        m = _measures(f)
        if m is not None:
            rel_l2, max_scaled, rule = m
            jump_l2 = rel_l2 > rule.l2 and rel_l2 > GROWTH * carried_l2
            jump_max = max_scaled > _allowed_scaled(f.diff, rule) and max_scaled > GROWTH * carried_max
            if jump_l2 or jump_max:
                return LikelyOrigin(f, rel_l2, max_scaled, carried_l2, carried_max, rule.l2, rule.atol,
                                    "relative L2" if jump_l2 else "elementwise")
            carried_l2 = max(carried_l2, rel_l2)
            carried_max = max(carried_max, max_scaled)
        if not f.passed:
            break
    return None


def readers_of(finding: Finding, nodes) -> Tuple[str, ...]:
    """For an output gradient, the layers (innermost) among ``nodes`` that read that output:
    their backward computed the gradient, so an error that appears there is theirs."""
    node = finding.ref_node
    if node is None or finding.stage != "backward" or finding.gradient != "output":
        return ()
    records = {id(r) for r in node.grad_out.values() if r is not None}
    reading = [n for n in nodes if n.kind == "net" and n is not node
               and any(id(r) in records for r in n.grad_in.values())]
    inner = [n for n in reading if not any(m is not n and _inside(m, n) for m in reading)]
    return tuple(dict.fromkeys(n.label() for n in inner))


def _inside(node, ancestor) -> bool:
    p = node.parent
    while p is not None:
        if p is ancestor:
            return True
        p = p.parent
    return False


def step_origin(step) -> Optional[LikelyOrigin]:
    """The likely origin within one step's layer comparisons: forward, the loss, backward."""
    loss = [step.loss] if step.loss is not None else []
    origin = likely_origin(list(step.forward) + loss + list(step.backward))
    if origin is not None and step.ref_trace is not None:
        origin.readers = readers_of(origin.finding, step.ref_trace.nodes)
    return origin
