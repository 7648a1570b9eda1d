"""One model as padiff sees it: its framework adapter, its root name, its role."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PadiffError
from .frameworks import adapter_for


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


def make_sides(first_model, second_model):
    """Sides in the user's order, plus which one is the reference (the weight source).

    Across frameworks the torch model is the reference (the seeds copy torch into paddle);
    with one framework twice, the first model ("base") is, the second is "raw"."""
    ad1 = adapter_for(first_model, "first model")
    ad2 = adapter_for(second_model, "second model")
    for ad, model, which in ((ad1, first_model, "first"), (ad2, second_model, "second")):
        if not ad.is_layer(model):
            raise PadiffError(
                f"The {which} argument is a {type(model).__name__}, not a model: pass a torch.nn.Module "
                "or a paddle.nn.Layer."
            )
    name1, name2 = type(first_model).__name__, type(second_model).__name__
    if ad1.name != ad2.name:
        s1 = Side(ad1, first_model, name1, ad1.name)
        s2 = Side(ad2, second_model, name2, ad2.name)
        ref_index = 0 if ad1.name == "torch" else 1 if ad2.name == "torch" else 0
    else:
        s1 = Side(ad1, first_model, name1, f"{ad1.name} (base)")
        s2 = Side(ad2, second_model, name2, f"{ad2.name} (raw)")
        ref_index = 0
    return [s1, s2], ref_index
