"""Framework adapters: the only modules that import torch or paddle.

An adapter is found from the type of a user's object (a model or a tensor) and imported
lazily, so a process that has only one framework (or none, for offline compares) works.
Both adapters can live in one process; there is no global "current backend".
"""

from __future__ import annotations

import importlib
from typing import Dict, Iterator

from ..errors import PadiffError

# Top-level package of an object's class -> adapter module. A new framework is one line here
# and one module beside this file.
_ADAPTER_MODULES = {
    "torch": "padiff.frameworks.torch",
    "paddle": "padiff.frameworks.paddle",
}
_CACHE: Dict[str, object] = {}


def framework_of(obj) -> str | None:
    """'torch', 'paddle' or None, from the packages that define the object's classes."""
    for cls in type(obj).__mro__:
        top = (cls.__module__ or "").split(".", 1)[0]
        if top in _ADAPTER_MODULES:
            return top
    return None


def get_adapter(name: str):
    if name not in _CACHE:
        module = importlib.import_module(_ADAPTER_MODULES[name])
        _CACHE[name] = module.Adapter()
    return _CACHE[name]


def tables_for(name: str):
    """The weight tables of a framework by name, read without importing the framework (the offline
    dump reader's); None for a framework padiff has no adapter for."""
    if name not in _ADAPTER_MODULES:
        return None
    return importlib.import_module(f"{_ADAPTER_MODULES[name]}_tables").WEIGHT_TABLES


def adapters() -> Iterator[object]:
    """Every framework's adapter that can be imported here, in a fixed order (torch, paddle),
    each imported only when the caller asks for the next: a lookup that stops at the first
    framework that fits imports no other."""
    for name in _ADAPTER_MODULES:
        try:
            yield get_adapter(name)
        except ImportError:
            continue


def adapter_for(obj, what: str = "object"):
    """The adapter for a user's model or tensor; a clear error for anything else."""
    name = framework_of(obj)
    if name is None:
        raise PadiffError(
            f"The {what} is a {type(obj).__module__}.{type(obj).__qualname__}, which is neither a "
            "torch.nn.Module/torch.Tensor nor a paddle.nn.Layer/paddle.Tensor."
        )
    return get_adapter(name)


def adapter_for_value(obj):
    """Adapter for a tensor-like leaf, or None for numpy arrays and Python scalars."""
    name = framework_of(obj)
    return get_adapter(name) if name else None
