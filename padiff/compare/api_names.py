"""Which framework calls are the same operation: one table, as data.

Each traced call gets a canonical name; two calls pair when their canonical names match.
``torch.nn.functional.gelu`` and ``paddle.nn.functional.gelu`` are both ``gelu``;
``torch.cat`` and ``paddle.concat`` are both ``cat``; ``Tensor.__rmul__`` is ``mul``.
"""

from __future__ import annotations

# last name segment (after stripping dunders and the reflected "r") -> canonical name
SAME_OPERATION = {
    "concat": "cat",
    "multiply": "mul",
    "subtract": "sub",
    "divide": "div",
    "truediv": "div",
    "mm": "matmul",
    "bmm": "matmul",
    "permute": "transpose",
    "view": "reshape",
    "clip": "clamp",
    "neg": "neg",
    "scaled_dot_product_attention": "sdpa",
}
_REFLECTED = {"radd": "add", "rsub": "sub", "rmul": "mul", "rtruediv": "truediv", "rmatmul": "matmul",
              "rpow": "pow"}


def canonical(name: str) -> str:
    last = name.rsplit(".", 1)[-1]
    if last.startswith("__") and last.endswith("__"):
        last = last[2:-2]
    last = _REFLECTED.get(last, last)
    if last.endswith("_") and not last.startswith("_"):
        last = last[:-1]  # in-place variants: relu_ -> relu
    return SAME_OPERATION.get(last, last)
