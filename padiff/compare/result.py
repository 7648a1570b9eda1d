"""Result objects: everything a report needs, and true when the models agree."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ..errors import PadiffInternalError
from .metrics import TensorDiff

STAGE_TITLES = {
    "weights": "Weight Copy",
    "input": "Inputs",
    "forward": "Forward Stage",
    "loss": "Loss",
    "backward": "Backward Stage",
    "grad": "Parameter Gradients",
    "weight": "Weights After Optimizer Step",
    "lr": "Learning Rate",
}


class Cause(enum.Enum):
    """What padiff concludes a difference means, as data: code and renderers branch on it, never
    on the sentence (``Finding.cause``) that says it to the user."""

    BUFFER_UPDATE = "buffer_update"  # a buffer the forward updates (BatchNorm statistics), not a weight
    OPTIMIZER = "optimizer"  # the weights differ after the step though the gradients agreed
    FOLLOWS_BACKWARD = "follows_backward"  # the weights differ because the gradients already did
    PARAMETER_GRADIENT = "parameter_gradient"  # a parameter's gradient differs: a backward difference
    LOSS_FUNCTION = "loss_function"  # the losses differ while every layer output agreed
    LEARNING_RATE = "learning_rate"  # the learning rates in force differ
    INITIAL_WEIGHTS = "initial_weights"  # two dumps started from different weights


@dataclass
class Finding:
    """One comparison of two tensors (or values) with where they came from."""

    stage: str  # a key of STAGE_TITLES
    what: str  # "output", "output[0]", "output gradient[0]", "grad of weight", ...
    ref_path: str
    test_path: str
    ref_type: str
    test_type: str
    diff: TensorDiff
    step: int = 0
    ref_node: object = None  # record.trace.Node of the reference model, when a layer call
    test_node: object = None
    ref_repr: str = ""  # layer reprs, for parameter findings
    test_repr: str = ""
    cause: str = ""  # what padiff concludes the difference means, in words for the user
    cause_kind: Optional[Cause] = None  # the same as data
    gradient: str = ""  # backward findings of a call: "output" or "input", the gradient compared
    # compare.nonfinite.NonFinite: where the NaN/Inf this finding's values hold first appeared
    nonfinite: tuple = ()

    @property
    def passed(self) -> bool:
        return self.diff.passed

    def explain(self, kind: Cause, text: str) -> None:
        """Say what the difference means: ``kind`` for code, ``text`` for the user."""
        self.cause_kind = kind
        self.cause = text

    def __repr__(self) -> str:
        return (f"Finding({'passed' if self.passed else 'FAILED'}, stage={self.stage!r}, step={self.step}, "
                f"what={self.what!r}, ref={self.ref_path!r} ({self.ref_type}), test={self.test_path!r} "
                f"({self.test_type}), {_view('short_figures')(self.diff)})")

    def __str__(self) -> str:
        """A few lines: stage, both paths, the key figures, the cause. The whole report is in
        ``AlignResult.report``, the logs and the HTML."""
        return "\n".join(_view("finding_lines")(self))


# How results show themselves (``str``, ``repr``, a notebook's HTML) is the report package's:
# its renderers register here when imported (padiff's __init__ imports them), so that this data
# module never imports a renderer.
_VIEWS: Dict[str, Callable] = {}


def register_view(name: str, render: Callable) -> None:
    """Called by the report package: ``short_figures(diff)``, ``finding_lines(finding, ref, test,
    origin)``, ``notebook_html(result)``."""
    _VIEWS[name] = render


def _view(name: str) -> Callable:
    try:
        return _VIEWS[name]
    except KeyError:
        raise PadiffInternalError(f"no renderer registered for {name!r}: padiff.report was not imported") from None


@dataclass
class StepResult:
    step: int
    forward: List[Finding] = field(default_factory=list)
    loss: Optional[Finding] = None
    backward: List[Finding] = field(default_factory=list)
    grads: List[Finding] = field(default_factory=list)
    weights: List[Finding] = field(default_factory=list)
    lr: List[Finding] = field(default_factory=list)
    max_output_diff: float = 0.0
    notes: List[str] = field(default_factory=list)
    ref_trace: object = None
    test_trace: object = None
    pairing: object = None
    likely_origin: object = None  # origin.LikelyOrigin: where the error jumps, whatever the tolerance
    # compare.nonfinite.NonFinite of a failed step: the first NaN/Inf of each model (None: not read)
    nonfinite: Optional[list] = None

    def __repr__(self) -> str:
        f = self.first_failure
        counts = ", ".join(f"{name} {len(x)}" for name, x in (("forward", self.forward), ("backward", self.backward),
                                                             ("grads", self.grads), ("weights", self.weights)) if x)
        head = f"StepResult(step={self.step}, {'passed' if f is None else 'FAILED'}, compared: {counts or 'nothing'}"
        if f is not None:
            head += f", first: {f.stage} {f.what} of {f.ref_path!r} / {f.test_path!r}"
        return head + ")"

    def all_findings(self) -> List[Finding]:
        loss = [self.loss] if self.loss is not None else []
        return self.forward + loss + self.backward + self.grads + self.lr + self.weights

    @property
    def first_failure(self) -> Optional[Finding]:
        """The first difference in the order padiff checks: forward (in execution order),
        loss, backward (in the order backward runs), parameter gradients, the learning rate in
        force, then the weights after the optimizer step."""
        for f in self.all_findings():
            if not f.passed:
                return f
        return None

    @property
    def passed(self) -> bool:
        return self.first_failure is None


class Verdict:
    """A result that is true when the models agree: ``if result``, ``result == True`` (PaDiff
    0.2's scripts); ``passed`` is its field. Compared with anything else, it is itself only."""

    passed: bool

    def __bool__(self) -> bool:
        return self.passed

    def __eq__(self, other) -> bool:
        if isinstance(other, bool):
            return self.passed == other
        return self is other

    def __hash__(self) -> int:
        return id(self)


@dataclass(eq=False)
class AlignResult(Verdict):
    """What ``auto_diff`` returns. True when the models agree; ``== False`` when not."""

    passed: bool
    steps: List[StepResult] = field(default_factory=list)
    first: Optional[Finding] = None
    options: object = None
    ref_label: str = ""
    test_label: str = ""
    log_files: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    report: str = ""  # the text printed to the console
    overlapped: bool = False  # compared in a worker thread while the tested model ran
    # origin.LikelyOrigin: where the error jumped, when the chosen tolerance let it through and
    # a later check failed (None otherwise)
    likely_origin: object = None
    nonfinite: List[object] = field(default_factory=list)  # compare.nonfinite.NonFinite of the failed step

    @property
    def stage(self) -> Optional[str]:
        return self.first.stage if self.first else None

    def __repr__(self) -> str:
        if self.passed or self.first is None:
            return f"AlignResult(passed={self.passed}, steps={len(self.steps)})"
        f = self.first
        return (f"AlignResult(passed=False, stage={f.stage!r}, step={f.step}, "
                f"ref={f.ref_path!r}, test={f.test_path!r})")

    def __str__(self) -> str:
        """The verdict and, when the models differ, the first difference in a few lines: its stage,
        both paths, the key figures, the cause. ``result.report`` holds the whole report."""
        ref, test = self.ref_label or "reference", self.test_label or "tested"
        if self.passed:
            n = len(self.steps)
            return f"ALIGNED: {ref} (reference) vs {test}, {n} step{'s' if n != 1 else ''} compared"
        if self.first is None:
            return f"NOT ALIGNED: {ref} (reference) vs {test}"
        return "\n".join([f"NOT ALIGNED: {ref} (reference) vs {test}"]
                         + _view("finding_lines")(self.first, ref, test, origin=self.likely_origin))

    def _repr_html_(self) -> str:
        """A notebook shows the result as its HTML report (the same as ``report="html"``), or
        as the text report in a <pre> block where Jinja2 is not installed."""
        return _view("notebook_html")(self)

