"""The toy framework's tensor: a numpy array with a gradient and a tape.

Every operation on tensors that need a gradient records its inputs and a hand-written
backward function on the tensor it returns; :func:`run_backward` walks that graph from the
loss back to the leaves once, in reverse topological order, so each tensor's gradient is
complete (summed over every use) when its hooks see it, as in torch.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

_GRAD = {"enabled": True}  # off inside no_grad()


@contextlib.contextmanager
def no_grad():
    """Operations inside record no graph (as ``torch.no_grad``)."""
    before, _GRAD["enabled"] = _GRAD["enabled"], False
    try:
        yield
    finally:
        _GRAD["enabled"] = before


class Handle:
    """What a hook registration returns: ``remove()`` takes the hook out of its table."""

    _next = 0

    def __init__(self, table: Dict[int, Callable]):
        Handle._next += 1
        self.key = Handle._next
        self.table = table

    def remove(self) -> None:
        self.table.pop(self.key, None)


class Tensor:
    """An array, whether it needs a gradient, its gradient once computed, and, for a tensor
    made by an operation, the operation's inputs and backward function."""

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = np.array(data, dtype=dtype if dtype is not None else _default_dtype(data))
        self.requires_grad = bool(requires_grad)
        self.grad: Optional[Tensor] = None
        self.version = 0  # bumped by every in-place change
        self.parents: Tuple[Tensor, ...] = ()
        self.backward_fn: Optional[Callable] = None  # grad array -> one grad array (or None) per parent
        self.grad_hooks: Dict[int, Callable] = {}

    # --- reading ---------------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def is_leaf(self) -> bool:
        return self.backward_fn is None

    def numpy(self) -> np.ndarray:
        return self.data

    def __repr__(self) -> str:
        return f"toyfw.Tensor({self.data!r}, requires_grad={self.requires_grad})"

    # --- autograd --------------------------------------------------------------------------
    def register_hook(self, fn: Callable[["Tensor"], None]) -> Handle:
        """Call ``fn(grad)`` when this tensor's gradient is computed."""
        handle = Handle(self.grad_hooks)
        self.grad_hooks[handle.key] = fn
        return handle

    def backward(self, grad: Optional["Tensor"] = None) -> None:
        run_backward([self], [grad])

    def detach(self) -> "Tensor":
        return Tensor(self.data, dtype=self.data.dtype)

    def set_(self, array) -> None:
        """Write ``array`` into this tensor in place (cast to its dtype; the shapes must agree)."""
        array = np.asarray(array, dtype=self.data.dtype)
        if array.shape != self.data.shape:
            raise ValueError(f"cannot set a tensor of shape {list(self.shape)} from shape {list(array.shape)}")
        self.data[...] = array
        self.version += 1

    # --- operators (each one function of ops below) ----------------------------------------
    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return add(self, mul(other, -1.0))

    def __mul__(self, other):
        return mul(self, other)

    def __rmul__(self, other):
        return mul(other, self)

    def __neg__(self):
        return mul(self, -1.0)

    def __matmul__(self, other):
        return matmul(self, other)

    def tanh(self):
        return tanh(self)

    def relu(self):
        return relu(self)

    def sum(self):
        return sum(self)

    def mean(self):
        return mean(self)

    def transpose(self):
        return transpose(self)


def _default_dtype(data):
    """float32 for Python floats and lists of them (as torch), else numpy's choice."""
    if isinstance(data, (np.ndarray, np.generic)):
        return data.dtype
    arr = np.asarray(data)
    return np.float32 if arr.dtype == np.float64 else arr.dtype


def as_tensor(x, like: Optional[Tensor] = None) -> Tensor:
    """``x`` itself when it is a tensor, else a constant of ``like``'s dtype."""
    if isinstance(x, Tensor):
        return x
    return Tensor(x, dtype=like.dtype if like is not None else None)


def from_op(data: np.ndarray, parents: Sequence[Tensor], backward: Callable) -> Tensor:
    """The tensor an operation returns: ``data`` computed from ``parents``, and ``backward``
    (the output's gradient array -> one gradient array, or None, per parent). It keeps its
    parents and backward only when one of them needs a gradient and recording is on. A user's
    own operation is one call of this (as a ``torch.autograd.Function``)."""
    out = Tensor(data, dtype=data.dtype)
    if _GRAD["enabled"] and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out.parents = tuple(parents)
        out.backward_fn = backward
    return out


def _unbroadcast(grad: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Sum a broadcast gradient back to the shape of the input it came from."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


# --- operations, each with its backward ------------------------------------------------------

def add(a, b) -> Tensor:
    a, b = as_tensor(a, b if isinstance(b, Tensor) else None), as_tensor(b, a if isinstance(a, Tensor) else None)
    return from_op(a.data + b.data, (a, b), lambda g: (_unbroadcast(g, a.shape), _unbroadcast(g, b.shape)))


def mul(a, b) -> Tensor:
    a, b = as_tensor(a, b if isinstance(b, Tensor) else None), as_tensor(b, a if isinstance(a, Tensor) else None)
    return from_op(a.data * b.data, (a, b),
                   lambda g: (_unbroadcast(g * b.data, a.shape), _unbroadcast(g * a.data, b.shape)))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for ``b`` 2-D and ``a`` of any rank >= 1 (rows in its leading axes)."""
    def backward(g):
        ga = g @ b.data.T
        gb = a.data.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])
        return ga, gb
    return from_op(a.data @ b.data, (a, b), backward)


def transpose(a: Tensor) -> Tensor:
    """The transpose of a 2-D tensor."""
    return from_op(a.data.T.copy(), (a,), lambda g: (g.T,))


def tanh(a: Tensor) -> Tensor:
    y = np.tanh(a.data)
    return from_op(y, (a,), lambda g: (g * (1.0 - y * y),))


def relu(a: Tensor) -> Tensor:
    mask = a.data > 0
    return from_op(a.data * mask, (a,), lambda g: (g * mask,))


def sum(a: Tensor) -> Tensor:  # noqa: A001 (the framework's name for it)
    return from_op(np.asarray(a.data.sum(), dtype=a.dtype), (a,),
                   lambda g: (np.broadcast_to(g, a.shape).astype(a.dtype),))


def mean(a: Tensor) -> Tensor:
    n = max(a.data.size, 1)
    return from_op(np.asarray(a.data.mean(), dtype=a.dtype), (a,),
                   lambda g: (np.broadcast_to(g / n, a.shape).astype(a.dtype),))


# --- the backward pass -----------------------------------------------------------------------

def _order(roots: Sequence[Tensor]) -> List[Tensor]:
    """Every tensor that needs a gradient behind ``roots``, each after all tensors made from it."""
    seen, order = set(), []
    stack = [(r, False) for r in roots if r.requires_grad]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        stack.extend((p, False) for p in t.parents if p.requires_grad and id(p) not in seen)
    order.reverse()
    return order


def run_backward(roots: Sequence[Tensor], grads: Sequence[Optional[Tensor]]) -> None:
    """Backpropagate from ``roots`` with their gradients (None: ones, for a scalar loss).
    Leaves add their gradient to ``.grad``; every tensor's hooks see its whole gradient."""
    pending: Dict[int, np.ndarray] = {}
    for r, g in zip(roots, grads):
        if not r.requires_grad:
            raise RuntimeError("backward from a tensor that does not require a gradient")
        value = np.ones_like(r.data) if g is None else np.asarray(as_tensor(g).data, dtype=r.dtype)
        pending[id(r)] = pending[id(r)] + value if id(r) in pending else value
    for t in _order(roots):
        g = pending.pop(id(t), None)
        if g is None:
            continue
        for hook in list(t.grad_hooks.values()):
            hook(Tensor(g, dtype=t.dtype))
        if t.is_leaf:
            t.grad = Tensor(g if t.grad is None else t.grad.data + g, dtype=t.dtype)
            continue
        for p, pg in zip(t.parents, t.backward_fn(g)):
            if p.requires_grad and pg is not None:
                pg = np.asarray(pg, dtype=p.dtype)
                pending[id(p)] = pending[id(p)] + pg if id(p) in pending else pg
