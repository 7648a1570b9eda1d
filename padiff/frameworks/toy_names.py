"""The toy framework's names, as data (see ``FrameworkNames``): the reference example's table."""

from __future__ import annotations

from .base import FrameworkNames

NAMES = FrameworkNames(
    name="toy",
    title="Toy",
    product="padiff's toy framework",
    distribution="padiff",
    reference_rank=0,  # against a real framework the real one is the reference
    type_names={"model": "padiff.frameworks.toyfw.Module", "tensor": "padiff.frameworks.toyfw.Tensor",
                "loader": "iterable of batches", "scheduler": "padiff.frameworks.toyfw.StepLR"},
    package_dirs=("toyfw",),
    api_top_level_names=("add", "mul", "matmul", "tanh", "mean", "sum"),
    api_tensor_methods=("__add__", "__radd__", "__mul__", "__rmul__", "__matmul__", "mean", "sum", "tanh", "relu",
                        "transpose"),
    api_not_ops=frozenset(),
    api_spellings={},
)
