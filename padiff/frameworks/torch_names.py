"""PyTorch's names and spellings, as data: read without importing torch (see ``FrameworkNames``)."""

from __future__ import annotations

from .base import FrameworkNames

NAMES = FrameworkNames(
    name="torch",
    title="Torch",
    product="PyTorch",
    distribution="torch",
    reference_rank=1,  # the seeds copy torch's weights into the paddle port: torch is the reference
    type_names={"model": "torch.nn.Module", "tensor": "torch.Tensor", "loader": "torch.utils.data.DataLoader",
                "scheduler": "torch.optim.lr_scheduler.LRScheduler"},
    package_dirs=("torch",),
    api_top_level_names=(
        "matmul", "mm", "bmm", "einsum", "add", "subtract", "sub", "multiply", "mul", "divide", "div",
        "exp", "log", "tanh", "sigmoid", "softmax", "log_softmax", "cat", "concat", "stack", "sum", "mean",
        "flatten", "reshape", "transpose", "permute", "sqrt", "rsqrt", "pow", "clamp", "clip", "where", "erf",
        "abs", "maximum", "minimum", "split", "chunk", "unsqueeze", "squeeze", "cumsum", "var", "std", "norm",
        "gather", "index_select", "masked_fill", "sin", "cos", "tril", "triu", "outer", "logsumexp",
        "layer_norm", "relu", "addmm", "baddbmm", "square", "sign", "floor", "ceil", "round",
    ),
    api_tensor_methods=(
        "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
        "__matmul__", "__rmatmul__", "__pow__", "__neg__", "reshape", "view", "transpose", "permute", "flatten",
        "mean", "sum", "softmax", "exp", "sqrt", "rsqrt", "pow", "matmul", "unsqueeze", "squeeze", "chunk",
        "split", "sigmoid", "tanh", "relu", "abs", "clamp", "clip", "masked_fill", "var", "std", "norm", "square",
        "log",
    ),
    # torch.nn.functional's dispatch helpers (__torch_function__ and argument checks)
    api_not_ops=frozenset({"handle_torch_function", "has_torch_function", "has_torch_function_unary",
                           "has_torch_function_variadic", "boolean_dispatch", "assert_int_or_pair"}),
    # torch's aliases (concat, multiply, subtract, divide, clip) are paddle's spellings
    api_spellings={"concat": "cat", "multiply": "mul", "subtract": "sub", "divide": "div", "clip": "clamp",
                   "mm": "matmul", "bmm": "matmul", "permute": "transpose", "view": "reshape",
                   "scaled_dot_product_attention": "sdpa"},
)
