"""Framework adapters: the only modules that import torch or paddle.

An adapter is found from the type of a user's object (a model or a tensor) and imported
lazily, so a process that has only one framework (or none, for offline compares) works.
Both adapters can live in one process; there is no global "current backend".
"""

from __future__ import annotations

import importlib
from typing import Dict, Optional

from ..errors import PadiffError

# Framework name -> (the package that defines its classes, its adapter module). A new framework
# is one module beside this file and one line here (or one register_adapter call). The toy
# framework over numpy (toyfw/, adapter toy.py) is the reference example; its package lives
# inside padiff, so it is named by its dotted path.
_FRAMEWORKS = {
    "torch": ("torch", "padiff.frameworks.torch"),
    "paddle": ("paddle", "padiff.frameworks.paddle"),
    "toy": ("padiff.frameworks.toyfw", "padiff.frameworks.toy"),
}
_PACKAGES = {package: name for name, (package, _) in _FRAMEWORKS.items()}  # package -> framework name
_CACHE: Dict[str, object] = {}


def register_adapter(name: str, module: str, package: Optional[str] = None) -> None:
    """Make padiff find the adapter in ``module`` (its ``Adapter`` class, implementing
    :class:`~padiff.frameworks.base.FrameworkAdapter`) for objects whose classes are defined in
    ``package`` (a top-level package, or a dotted one; default: ``name``). The module is
    imported when such an object is first met."""
    _FRAMEWORKS[name] = (package or name, module)
    _PACKAGES[package or name] = name
    _CACHE.pop(name, None)


def _framework_of_module(module: str) -> Optional[str]:
    """The framework whose package holds ``module``, looked up from the module outwards."""
    while module:
        name = _PACKAGES.get(module)
        if name is not None:
            return name
        module = module.rpartition(".")[0]
    return None


def framework_of(obj) -> Optional[str]:
    """'torch', 'paddle', 'toy' or None, from the packages that define the object's classes."""
    for cls in type(obj).__mro__:
        name = _framework_of_module(cls.__module__ or "")
        if name is not None:
            return name
    return None


def get_adapter(name: str):
    if name not in _CACHE:
        module = importlib.import_module(_FRAMEWORKS[name][1])
        _CACHE[name] = module.Adapter()
    return _CACHE[name]


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
