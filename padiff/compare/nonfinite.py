"""Where NaN and Inf first appear in a run, and whether a difference comes from them.

When a step fails, each model's trace is read in the order its values were made (forward:
the order calls returned; backward: the order the gradients arrived) up to the first record
that holds a NaN or an Inf. That call (a layer or a framework call) is the first to produce a
non-finite value: a difference whose values hold NaN/Inf is reported as caused by it. A
passing step is not read at all, so tracking costs nothing there; a failing step reads its
records once more, at most up to the first non-finite one.

Data only; the words are made by the renderers (``report/console.py``), apart from the
finding's ``cause`` line, which every renderer shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..record.spill import release
from ..record.trace import Node, TensorRecord
from ..structure import show_id


@dataclass(frozen=True)
class NonFinite:
    """The first value of one model that holds NaN or Inf."""

    label: str  # the model: "paddle", "torch (raw)", ...
    stage: str  # "input" (the model's own input), "forward" or "backward"
    node: Optional[Node]  # the layer or framework call that made it (None for an input)
    what: str  # "output[0]", "output gradient", "input["x"]", ...
    nan: int
    inf: int
    numel: int

    @property
    def kind(self) -> str:
        return "NaN" if self.nan and not self.inf else "Inf" if self.inf and not self.nan else "NaN and Inf"

    @property
    def where(self) -> str:
        """`Net.block > paddle.log` or the input's id path."""
        return self.what if self.node is None else self.node.label()

    @property
    def source(self):
        """The user's source line that made it (a ``SourceFrame``), or None."""
        frames = getattr(self.node, "frames", ()) or ()
        return frames[-1] if frames else None

    def describe(self) -> str:
        """"the output of `P > paddle.log` (12 of 12 elements NaN), made at model.py:10 in forward"."""
        count = (f"{self.nan} NaN" if not self.inf else f"{self.inf} Inf" if not self.nan
                 else f"{self.nan} NaN, {self.inf} Inf")
        if self.node is None:
            return f"its {self.what} ({count} of {self.numel} elements)"
        src = self.source
        at = f", made at {src.filename}:{src.lineno} in {src.function}" if src is not None else ""
        return f"the {self.what} of `{self.node.label()}` ({count} of {self.numel} elements){at}"


def count_nonfinite(array) -> Optional[Tuple[int, int, int]]:
    """(NaN count, Inf count, elements) of a floating array holding any, else None."""
    if array is None:
        return None
    a = np.asarray(array)
    if a.dtype.kind not in "fc" or a.size == 0:
        return None
    try:
        if np.isfinite(a).all():
            return None
        nan = int(np.count_nonzero(np.isnan(a)))
        return nan, int(np.count_nonzero(np.isinf(a))), int(a.size)
    finally:
        release(array)  # a spilled record: its pages go back


def _first_in(records, label: str, stage: str, node: Optional[Node], what: str) -> Optional[NonFinite]:
    for id_path, rec in records:
        if not isinstance(rec, TensorRecord) or rec.kind not in ("tensor", "number"):
            continue
        found = count_nonfinite(rec.array)
        if found is not None:
            return NonFinite(label, stage, node, show_id(id_path, what), *found)
    return None


def _firsts(items, label: str, stage: str) -> List[NonFinite]:
    """The first record holding a non-finite value among ``items`` ((node, records, what) in
    the order they were made) and, when that one holds only Inf (an attention mask made with
    -inf), the first holding a NaN too."""
    out: List[NonFinite] = []
    for node, records, what in items:
        for id_path, rec in records:
            if not isinstance(rec, TensorRecord) or rec.kind not in ("tensor", "number"):
                continue
            found = count_nonfinite(rec.array)
            if found is None or (out and not found[0]):
                continue
            out.append(NonFinite(label, stage, node, show_id(id_path, what), *found))
            if out[-1].nan:
                return out
    return out


def first_forward(trace, label: str) -> List[NonFinite]:
    """The first call of the run (in the order calls returned) whose output holds NaN or Inf
    (and the first holding NaN, when that one holds only Inf)."""
    return _firsts(((n, n.outputs, "output") for n in trace.exit_order()), label, "forward")


def first_backward(trace, label: str) -> List[NonFinite]:
    """The same for gradients, in the order backward reached them."""
    return _firsts(((n, sorted(n.grad_out.items()) if kind == "exit" else sorted(n.grad_in.items()),
                     "output gradient" if kind == "exit" else "input gradient")
                    for n, kind in trace.backward_events()), label, "backward")


def first_in_inputs(label: str, arrays) -> Optional[NonFinite]:
    """``arrays``: (id path, array) of one model's input."""
    for id_path, arr in arrays:
        found = count_nonfinite(arr)
        if found is not None:
            return NonFinite(label, "input", None, show_id(id_path, "input"), *found)
    return None


def track(step, ref_label: str, test_label: str, inputs=()) -> List[NonFinite]:
    """Read a failed step's traces for their first non-finite values (``step.nonfinite``) and,
    when the step's first difference holds NaN/Inf, say where they came from in its ``cause``
    (``finding.nonfinite``). ``inputs``: NonFinite records of the models' inputs, found
    before the run."""
    found: List[NonFinite] = list(inputs)
    for trace, label in ((step.ref_trace, ref_label), (step.test_trace, test_label)):
        if trace is not None:
            found += first_forward(trace, label) + first_backward(trace, label)
    step.nonfinite = found
    first = step.first_failure
    if first is None or first.diff.problem != "nan" or not found:
        return found
    nan = any(x is not None and x[1] == "NaN" for x in first.diff.nonfinite)  # else the values hold Inf only
    origins = []
    by_side = []
    for label in (test_label, ref_label):
        mine = next((x for x in found if x.label == label and (x.nan if nan else x.inf)), None)
        if mine is not None:
            origins.append(mine)
            by_side.append(f"the {label} model's first {'NaN' if nan else 'Inf'} is in {mine.describe()}")
        else:
            by_side.append(f"the {label} model has none")
    if not origins:
        return found
    first.nonfinite = tuple(origins)
    text = "Caused by a non-finite value: " + "; ".join(by_side) + "."
    first.cause = text + (" " + first.cause if first.cause else "")
    return found
