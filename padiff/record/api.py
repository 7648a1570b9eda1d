"""Framework-call ("API") tracing: wrap the functions an adapter lists, restore them after.

Only calls made while a traced layer is running are recorded, only the outermost one of
nested calls (``F.layer_norm`` calling ``torch.layer_norm`` is one call), and nothing that
padiff itself does while recording. Every patched attribute is put back in ``__exit__``,
whatever happened.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from typing import Callable, Dict, List, Sequence, Tuple

from ..errors import PadiffError

# Names tried on each framework's top-level module and its Tensor class. An adapter keeps
# those that exist; both frameworks' functional modules are traced whole.
TOP_LEVEL = (
    "matmul", "mm", "bmm", "einsum", "add", "subtract", "sub", "multiply", "mul", "divide", "div",
    "exp", "log", "tanh", "sigmoid", "softmax", "log_softmax", "cat", "concat", "stack", "sum", "mean",
    "flatten", "reshape", "transpose", "permute", "sqrt", "rsqrt", "pow", "clamp", "clip", "where", "erf",
    "abs", "maximum", "minimum", "split", "chunk", "unsqueeze", "squeeze", "cumsum", "var", "std", "norm",
    "gather", "index_select", "masked_fill", "sin", "cos", "tril", "triu", "outer", "logsumexp", "layer_norm",
    "relu", "gelu", "silu", "addmm", "baddbmm", "square", "sign", "floor", "ceil", "round",
)
TENSOR_METHODS = (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
    "__matmul__", "__rmatmul__", "__pow__", "__neg__", "reshape", "view", "transpose", "permute", "flatten",
    "mean", "sum", "softmax", "exp", "sqrt", "rsqrt", "pow", "matmul", "unsqueeze", "squeeze", "chunk", "split",
    "sigmoid", "tanh", "relu", "abs", "clamp", "clip", "masked_fill", "var", "std", "norm", "square", "log",
)


_NOT_OPS = {"handle_torch_function", "has_torch_function", "has_torch_function_unary",
            "has_torch_function_variadic", "boolean_dispatch", "assert_int_or_pair", "sdp_kernel"}


def api_targets(adapter, extra: Sequence[str] = ()) -> List[Tuple[object, str, str]]:
    """Everything to wrap for one framework: its functional module whole, the listed names of
    its top-level module and Tensor class that exist, and the user's own dotted names."""
    import inspect

    functional, functional_name = adapter.api_functional()
    top, top_name = adapter.api_top_level()
    tensor_cls, tensor_name = adapter.api_tensor_class()
    targets = []
    for name in dir(functional):
        fn = getattr(functional, name)
        if (name.startswith("_") or not name.islower() or name in _NOT_OPS or not callable(fn)
                or inspect.ismodule(fn) or inspect.isclass(fn)):
            continue
        targets.append((functional, name, f"{functional_name}.{name}"))
    targets += [(top, n, f"{top_name}.{n}") for n in TOP_LEVEL if callable(getattr(top, n, None))]
    targets += [(tensor_cls, n, f"{tensor_name}.{n}") for n in TENSOR_METHODS if callable(getattr(tensor_cls, n, None))]
    for dotted in extra:
        owner, attr = resolve_dotted(dotted)
        targets.append((owner, attr, dotted))
    return targets


def resolve_dotted(dotted: str) -> Tuple[object, str]:
    """'pkg.mod.fn' -> (module object, 'fn'), for user-registered functions."""
    mod_name, _, attr = dotted.rpartition(".")
    if not mod_name:
        raise PadiffError(f"Custom API {dotted!r} must be a full dotted name like 'paddle3d.ops.iou3d_nms'.")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise PadiffError(f"Cannot import {mod_name!r} for the custom API {dotted!r} (PADDLE_THIRDPARTY_API / "
                          f"padiff.register_api): {e}") from None
    if not hasattr(module, attr):
        raise PadiffError(f"Module {mod_name!r} has no attribute {attr!r} (custom API {dotted!r}).")
    return module, attr


class _AliasIndex:
    """Where else a function object is bound at module level: ``from torch.nn.functional import
    gelu`` (in a user's module or inside the framework itself) binds the same object under
    another module, and a patch of the original attribute alone would miss those calls.
    Built once and refreshed when new modules are imported."""

    def __init__(self):
        self._seen = 0
        self._index: Dict[int, List[Tuple[object, str]]] = {}

    def aliases(self, fn) -> List[Tuple[object, str]]:
        if len(sys.modules) != self._seen:
            self._rebuild()
        return self._index.get(id(fn), [])

    def _rebuild(self):
        index: Dict[int, List[Tuple[object, str]]] = {}
        for module in list(sys.modules.values()):
            try:
                attrs = vars(module)
            except TypeError:
                continue
            for attr, value in list(attrs.items()):
                if callable(value) and not isinstance(value, type) and not attr.startswith("__"):
                    index.setdefault(id(value), []).append((module, attr))
        self._index = index
        self._seen = len(sys.modules)


_ALIASES = _AliasIndex()


class ApiPatcher:
    """Context manager: wraps ``targets`` (owner, attr, display name) so each call goes to
    ``on_call(name, original, args, kwargs)``; restores every attribute on exit."""

    def __init__(self, targets: Sequence[Tuple[object, str, str]], on_call: Callable):
        self.targets = list(targets)
        self.on_call = on_call
        self._saved: List[Tuple[object, str, object, bool]] = []

    def __enter__(self):
        try:
            done = set()
            for owner, attr, name in self.targets:
                original = getattr(owner, attr)
                if getattr(original, "__padiff_wrapped__", None) is not None or (id(owner), attr) in done:
                    continue  # already wrapped by an enclosing recorder
                wrapper = self._wrap(original, name)
                places = [(owner, attr)]
                if isinstance(owner, types.ModuleType):
                    places += [p for p in _ALIASES.aliases(original) if p[0] is not owner or p[1] != attr]
                for place_owner, place_attr in places:
                    if (id(place_owner), place_attr) in done:
                        continue
                    done.add((id(place_owner), place_attr))
                    own = place_attr in getattr(place_owner, "__dict__", {})
                    setattr(place_owner, place_attr, wrapper)
                    self._saved.append((place_owner, place_attr, original, own))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc):
        self._restore()
        return False

    def _restore(self):
        saved, self._saved = self._saved, []
        failures = []
        for owner, attr, original, own in reversed(saved):
            try:
                if own:
                    setattr(owner, attr, original)
                else:
                    delattr(owner, attr)
            except Exception as e:  # keep restoring the rest
                failures.append(f"{getattr(owner, '__name__', owner)}.{attr}: {e!r}")
        if failures:
            from ..errors import PadiffInternalError

            raise PadiffInternalError("could not restore " + "; ".join(failures))

    def _wrap(self, original, name):
        on_call = self.on_call

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            return on_call(name, original, args, kwargs)

        wrapper.__padiff_wrapped__ = original
        return wrapper
