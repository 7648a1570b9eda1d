"""Which framework calls are the same operation.

Each traced call gets a canonical name; two calls pair when their canonical names match. The
framework's own spellings come from its adapter (``api_spellings``: ``concat`` and ``cat`` are
both ``cat``), carried by each trace; what is left here is Python's: ``Tensor.__rmul__`` is
``mul``, ``relu_`` is ``relu``.
"""

from __future__ import annotations

from typing import Mapping

# Python's operator names (dunders stripped): reflected -> plain, and true division's own name
_REFLECTED = {"radd": "add", "rsub": "sub", "rmul": "mul", "rtruediv": "truediv", "rmatmul": "matmul",
              "rpow": "pow"}
_OPERATORS = {"truediv": "div"}


def canonical(name: str, spellings: Mapping[str, str]) -> str:
    """The name ``name`` (a traced call: ``"torch.Tensor.__rmul__"``) pairs by, with ``spellings``
    (both traces' ``api_spellings``) mapping framework spellings to common ones."""
    last = name.rsplit(".", 1)[-1]
    if last.startswith("__") and last.endswith("__"):
        last = last[2:-2]
    last = _REFLECTED.get(last, last)
    if last.endswith("_") and not last.startswith("_"):
        last = last[:-1]  # in-place variants: relu_ -> relu
    last = _OPERATORS.get(last, last)
    return spellings.get(last, last)
