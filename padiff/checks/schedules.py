"""``padiff.check_schedule``: two learning-rate schedules, step by step."""

from __future__ import annotations

import dataclasses
from typing import List, Mapping, Optional

import numpy as np

from ..errors import PadiffError
from ..frameworks import adapter_for_value, type_names
from ..options import build_options, preflight
from .leaves import Leaf, as_leaf, node_kind, object_word
from .pairer import Pairer
from .result import CompareResult, finish


class _Schedule:
    """One side's learning rate per step: a framework scheduler (through its adapter), a
    callable step -> lr, or a sequence of learning rates."""

    def __init__(self, obj, which: str, steps: int, pairer_note):
        self.obj, self.which = obj, which
        self.adapter = adapter_for_value(obj)
        self.word = object_word(obj)
        ad = self.adapter
        if ad is not None and ad.is_lr_scheduler(obj):
            if ad.scheduler_needs_metric(obj):
                raise PadiffError(
                    f"The {which} schedule is a {self.word}, which steps on a metric (scheduler.step(loss)), so "
                    "padiff cannot step it alone. Pass a function step -> lr that steps it with your metric and "
                    "returns its learning rate.")
            self.kind = "scheduler"
        elif isinstance(obj, (list, tuple, np.ndarray)):
            if len(obj) < steps:
                raise PadiffError(f"The {which} schedule is a sequence of {len(obj)} learning rates, fewer than "
                                  f"steps={steps}: pass at least {steps}, or lower steps.")
            self.kind = "values"
            self.word = f"{type(obj).__name__} of {len(obj)} values"
        elif callable(obj):
            self.kind = "callable"
        else:
            hint = " (an optimizer: pass its scheduler)" if ad is not None and ad.is_optimizer(obj) else ""
            schedulers = "".join(f"a {n}, " for n in type_names("scheduler"))
            raise PadiffError(
                f"The {which} schedule is a {type(obj).__name__}{hint}: pass {schedulers}a function step -> lr, "
                "or a list of learning rates.")
        self.note = pairer_note

    def lr(self, step: int) -> Leaf:
        what = f"the {self.which} schedule's learning rate at step {step}"
        if self.kind == "scheduler":
            lrs = self.adapter.scheduler_lr(self.obj)
            if len(set(lrs)) > 1:
                self.note(f"The {self.which} schedule's optimizer has {len(lrs)} parameter groups with different "
                          "learning rates; padiff compared the first group's.")
            value = lrs[0]
        elif self.kind == "values":
            value = self.obj[step]
        else:
            try:
                value = self.obj(step)
            except Exception as exc:
                raise PadiffError(f"The {self.which} schedule ({self.word}) raised {type(exc).__name__} at step "
                                  f"{step}: {exc}") from exc
        if node_kind(value) != "leaf":
            raise PadiffError(f"{what[0].upper() + what[1:]} is a {type(value).__name__}: a schedule gives one "
                              "number per step.")
        leaf = as_leaf(value, what)
        if leaf.python:  # schedules compute in Python doubles on both sides: judge them as float64
            leaf = dataclasses.replace(leaf, dtype="float64")
        if leaf.array is None or leaf.array.size != 1:
            raise PadiffError(f"{what[0].upper() + what[1:]} is {value!r}: a schedule gives one number per step.")
        return leaf

    def step(self, step: int) -> None:
        if self.kind != "scheduler":
            return
        try:
            self.adapter.scheduler_step(self.obj)
        except Exception as exc:
            raise PadiffError(f"The {self.which} schedule ({self.word}) raised {type(exc).__name__} when stepped "
                              f"after step {step}: {exc}") from exc


def check_schedule(a, b, steps: int, *, name: str = "lr", options: Optional[Mapping] = None, quiet: bool = False,
                   **kwargs) -> CompareResult:
    """Step two learning-rate schedules and compare the learning rate at every step.

    Each side is a paddle ``LRScheduler``, a torch ``LRScheduler`` (its optimizer's learning
    rate is read, first parameter group), a function ``step -> lr``, or a sequence of learning
    rates. Step ``i`` is the learning rate after ``i`` calls of ``scheduler.step()`` (step 0:
    as built), so ``steps`` values need ``steps - 1`` calls; the schedulers are left stepped:
    build fresh ones for the check. ``b`` is the reference.
    """
    opts = build_options(options, **kwargs)
    preflight(opts)  # an unwritable log folder is named now, not after the comparison
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise PadiffError(f"steps must be a whole number >= 1, got {steps!r}.")
    notes: List[str] = []

    def note(text):
        if text not in notes:
            notes.append(text)

    sa, sb = _Schedule(a, "first", steps, note), _Schedule(b, "second", steps, note)
    result = CompareResult(False, options=opts, test_label=sa.word, ref_label=sb.word, kind="schedule",
                           name=str(name), notes=notes)
    for i in range(steps):
        la, lb = sa.lr(i), sb.lr(i)
        pairer = Pairer(opts, str(name), "lr", step=i)
        pairer.compare_leaves(str(name), la, lb)
        for n in pairer.notes:
            note(n)
        result.findings.extend(pairer.findings)
        result.values[0].append(float(la.array.reshape(-1)[0].real))
        result.values[1].append(float(lb.array.reshape(-1)[0].real))
        if i < steps - 1:
            sa.step(i)
            sb.step(i)
    result.count = steps
    result.first = next((f for f in result.findings if not f.passed), None)
    result.index = result.first.step if result.first is not None else None
    result.passed = result.first is None
    return finish(result, quiet)
