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
    role: str = ""  # "base" / "raw" when both models are of one framework, else ""

    @property
    def title(self) -> str:
        """Heading of this model's tree: "Torch Model", "Paddle Model (raw)"."""
        return f"{self.adapter.title} Model" + (f" ({self.role})" if self.role else "")


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
    return pair_sides((ad1, first_model, type(first_model).__name__),
                      (ad2, second_model, type(second_model).__name__))


def pair_sides(first, second):
    """``([Side, Side], reference index)`` from two ``(adapter, model, root name)``, live models'
    or dumps': across frameworks each is labelled by its framework; with one framework twice the
    first is "base", the second "raw"."""
    (ad1, _, _), (ad2, _, _) = first, second
    roles = ("", "") if ad1.name != ad2.name else ("base", "raw")
    sides = [Side(ad, model, name, f"{ad.name} ({role})" if role else ad.name, role)
             for (ad, model, name), role in zip((first, second), roles)]
    return sides, reference_index(ad1, ad2)
