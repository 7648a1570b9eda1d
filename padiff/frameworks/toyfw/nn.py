"""The toy framework's layers: a Module base (named children, parameters and buffers, train
mode, forward hooks) and three built-in layers, Linear, Tanh and Sequential."""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np

from . import functional
from .tensor import Handle, Tensor

_RNG = {"gen": np.random.default_rng(0)}


def manual_seed(seed: int) -> None:
    """Make the initial weights of the layers built from now on repeatable."""
    _RNG["gen"] = np.random.default_rng(seed)


class Parameter(Tensor):
    """A tensor a Module registers as a weight; it needs a gradient."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)


class Module:
    """Base of every layer. Assigning a Parameter or a Module to an attribute registers it, in
    assignment order; ``register_buffer`` registers a tensor that is state but no weight."""

    def __init__(self):
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "non_persistent_buffers", set())  # names a state dict leaves out
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "forward_pre_hooks", {})
        object.__setattr__(self, "forward_hooks", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        for table in (self._params, self._buffers, self._children):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._children[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only reached when normal lookup fails
        for table in ("_params", "_buffers", "_children"):
            found = self.__dict__.get(table, {})
            if name in found:
                return found[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_buffer(self, name: str, tensor: Tensor, persistent: bool = True) -> None:
        self._buffers[name] = tensor
        if not persistent:
            self.non_persistent_buffers.add(name)

    # --- walking -----------------------------------------------------------------------------
    def named_children(self) -> List[Tuple[str, "Module"]]:
        return list(self._children.items())

    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def _named(self, table: str, recurse: bool) -> List[Tuple[str, Tensor]]:
        out, seen = [], set()
        for prefix, module in (self.named_modules() if recurse else [("", self)]):
            for name, t in getattr(module, table).items():
                if id(t) not in seen:
                    seen.add(id(t))
                    out.append((f"{prefix}.{name}" if prefix else name, t))
        return out

    def named_parameters(self, recurse: bool = True) -> List[Tuple[str, Parameter]]:
        return self._named("_params", recurse)

    def named_buffers(self, recurse: bool = True) -> List[Tuple[str, Tensor]]:
        return self._named("_buffers", recurse)

    def parameters(self) -> List[Parameter]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> Dict[str, Tensor]:
        """Parameters and persistent buffers by dotted name (the tensors themselves)."""
        out = {}
        for prefix, module in self.named_modules():
            for name, t in list(module._params.items()) + list(module._buffers.items()):
                if name not in module.non_persistent_buffers:
                    out[f"{prefix}.{name}" if prefix else name] = t
        return out

    def train(self, mode: bool = True) -> "Module":
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # --- calling -----------------------------------------------------------------------------
    def register_forward_pre_hook(self, fn: Callable) -> Handle:
        """``fn(module, args, kwargs)`` before forward; it may return new ``(args, kwargs)``."""
        handle = Handle(self.forward_pre_hooks)
        self.forward_pre_hooks[handle.key] = fn
        return handle

    def register_forward_hook(self, fn: Callable) -> Handle:
        """``fn(module, args, kwargs, output)`` after forward; it may return a new output."""
        handle = Handle(self.forward_hooks)
        self.forward_hooks[handle.key] = fn
        return handle

    def __call__(self, *args, **kwargs):
        for hook in list(self.forward_pre_hooks.values()):
            changed = hook(self, args, kwargs)
            if changed is not None:
                args, kwargs = changed
        out = self.forward(*args, **kwargs)
        for hook in list(self.forward_hooks.values()):
            changed = hook(self, args, kwargs, out)
            if changed is not None:
                out = changed
        return out

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward")

    def extra_repr(self) -> str:
        return ""


class Linear(Module):
    """``y = x @ weight.T + bias``; ``weight`` is [out_features, in_features] (as torch's)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / np.sqrt(in_features)
        gen = _RNG["gen"]
        self.weight = Parameter(gen.uniform(-bound, bound, (out_features, in_features)).astype(np.float32))
        if bias:
            self.bias = Parameter(gen.uniform(-bound, bound, (out_features,)).astype(np.float32))

    def forward(self, x):
        return functional.linear(x, self.weight, self._params.get("bias"))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={'bias' in self._params}"


class Tanh(Module):
    def forward(self, x):
        return functional.tanh(x)


class ReLU(Module):
    def forward(self, x):
        return functional.relu(x)


class Sequential(Module):
    """Calls its layers in turn; they are named "0", "1", ..."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def forward(self, x):
        for _, layer in self.named_children():
            x = layer(x)
        return x
