"""The toy framework's functions on tensors, the ones layers call (as ``torch.nn.functional``).

Layers call them through this module (``functional.linear(...)``), so a tool that replaces
the module's attributes (padiff's API tracing) sees every call.
"""

from __future__ import annotations

from . import tensor as _t


def linear(x, weight, bias=None):
    """``x @ weight.T + bias``, ``weight`` stored as [out_features, in_features]."""
    y = _t.matmul(x, _t.transpose(weight))
    return y if bias is None else _t.add(y, bias)


def tanh(x):
    return _t.tanh(x)


def relu(x):
    return _t.relu(x)
