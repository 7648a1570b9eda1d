"""PaddlePaddle's names and spellings, as data: read without importing paddle (see ``FrameworkNames``)."""

from __future__ import annotations

from .base import FrameworkNames

NAMES = FrameworkNames(
    name="paddle",
    title="Paddle",
    product="PaddlePaddle",
    distribution="paddlepaddle",
    reference_rank=0,  # the port under test, when the other model is torch's
    type_names={"model": "paddle.nn.Layer", "tensor": "paddle.Tensor", "loader": "paddle.io.DataLoader",
                "scheduler": "paddle.optimizer.lr.LRScheduler"},
    package_dirs=("paddle",),
    api_top_level_names=(
        "matmul", "mm", "bmm", "einsum", "add", "subtract", "sub", "multiply", "mul", "divide", "div",
        "exp", "log", "tanh", "sigmoid", "softmax", "cat", "concat", "stack", "sum", "mean",
        "flatten", "reshape", "transpose", "permute", "sqrt", "rsqrt", "pow", "clamp", "clip", "where", "erf",
        "abs", "maximum", "minimum", "split", "chunk", "unsqueeze", "squeeze", "cumsum", "var", "std", "norm",
        "gather", "index_select", "masked_fill", "sin", "cos", "tril", "triu", "outer", "logsumexp",
        "layer_norm", "addmm", "baddbmm", "square", "sign", "floor", "ceil", "round",
    ),
    api_tensor_methods=(
        "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
        "__matmul__", "__rmatmul__", "__pow__", "__neg__", "reshape", "view", "transpose", "permute", "flatten",
        "mean", "sum", "softmax", "exp", "sqrt", "rsqrt", "pow", "matmul", "unsqueeze", "squeeze", "chunk",
        "split", "sigmoid", "tanh", "abs", "clamp", "clip", "masked_fill", "var", "std", "norm", "square", "log",
    ),
    # paddle.nn.functional's context manager for the attention kernel choice
    api_not_ops=frozenset({"sdp_kernel"}),
    # paddle's spellings, and the torch-style aliases paddle 3 has (cat, permute, view, clamp, ...)
    api_spellings={"concat": "cat", "multiply": "mul", "subtract": "sub", "divide": "div", "clip": "clamp",
                   "mm": "matmul", "bmm": "matmul", "permute": "transpose", "view": "reshape",
                   "scaled_dot_product_attention": "sdpa"},
)
