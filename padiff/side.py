"""One model as padiff sees it: its framework adapter, its root name, its role."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PadiffError
from .frameworks import adapter_for, type_choices


@dataclass
class Side:
    adapter: object
    model: object
    name: str  # root name used in dotted paths, e.g. "SimpleModule"
    label: str  # "torch", "paddle", or "torch (base)" / "torch (raw)" for one framework twice

    @property
    def title(self) -> str:
        """Heading of this model's tree: "Torch Model", "Paddle Model (raw)"."""
        suffix = self.label[self.label.index("("):] if "(" in self.label else ""
        return f"{self.adapter.title} Model" + (f" {suffix}" if suffix else "")


def reference_index(ad1, ad2) -> int:
    """Which of two models is the reference (the weight source): across frameworks, the one whose
    adapter declares the higher ``reference_rank`` (torch's: the seeds copy torch into paddle),
    the first on a tie; with one framework twice, the first."""
    if ad1.name == ad2.name:
        return 0
    return 1 if ad2.reference_rank > ad1.reference_rank else 0


def make_sides(first_model, second_model):
    """Sides in the user's order, plus which one is the reference (:func:`reference_index`); with
    one framework twice, the first model is "base", the second "raw"."""
    ad1 = adapter_for(first_model, "first model")
    ad2 = adapter_for(second_model, "second model")
    for ad, model, which in ((ad1, first_model, "first"), (ad2, second_model, "second")):
        if not ad.is_layer(model):
            raise PadiffError(
                f"The {which} argument is a {type(model).__name__}, not a model: pass "
                f"{type_choices('model')}."
            )
    name1, name2 = type(first_model).__name__, type(second_model).__name__
    if ad1.name != ad2.name:
        s1 = Side(ad1, first_model, name1, ad1.name)
        s2 = Side(ad2, second_model, name2, ad2.name)
    else:
        s1 = Side(ad1, first_model, name1, f"{ad1.name} (base)")
        s2 = Side(ad2, second_model, name2, f"{ad2.name} (raw)")
    return [s1, s2], reference_index(ad1, ad2)
