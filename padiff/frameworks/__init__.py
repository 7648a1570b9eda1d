"""Framework adapters: the only modules that import torch or paddle.

An adapter is found from the type of a user's object (a model or a tensor) and imported
lazily, so a process that has only one framework (or none, for offline compares) works.
Both adapters can live in one process; there is no global "current backend".

Each framework's names and spellings (:class:`~padiff.frameworks.base.FrameworkNames`) sit in a
module beside its adapter (``torch_names.py``) that does not import the framework: the core reads
them where it has no adapter at hand (a dump, a message listing what to pass, the command line).
"""

from __future__ import annotations

import importlib
from typing import Dict, Iterator, List, Optional

from ..errors import PadiffError
from .base import FrameworkNames

# Framework name -> (the package that defines its classes, its adapter module). Beside the adapter
# module sit "<adapter module>_names" (NAMES: names and spellings) and "<adapter module>_tables"
# (WEIGHT_TABLES), which import no framework. A new framework is those three modules and one line
# here, or one register_adapter call. The toy framework over numpy (toyfw/, adapter toy.py) is the
# reference example: found like any other, but not listed (_UNLISTED) where messages and the
# command line name the frameworks a user may pass.
_FRAMEWORKS = {
    "torch": ("torch", "padiff.frameworks.torch"),
    "paddle": ("paddle", "padiff.frameworks.paddle"),
    "toy": ("padiff.frameworks.toyfw", "padiff.frameworks.toy"),
}
_UNLISTED = {"toy"}
_PACKAGES = {package: name for name, (package, _) in _FRAMEWORKS.items()}  # package -> framework name
_CACHE: Dict[str, object] = {}


def register_adapter(name: str, module: str, package: Optional[str] = None, *, listed: bool = True) -> None:
    """Make padiff find the adapter in ``module`` (its ``Adapter`` class, implementing
    :class:`~padiff.frameworks.base.FrameworkAdapter`, with ``<module>_names`` and
    ``<module>_tables`` beside it) for objects whose classes are defined in ``package`` (a
    top-level package, or a dotted one; default: ``name``). The module is imported when such an
    object is first met. ``listed=False``: not named in messages that list what a user may pass."""
    _FRAMEWORKS[name] = (package or name, module)
    (_UNLISTED.discard if listed else _UNLISTED.add)(name)
    _PACKAGES[package or name] = name
    _CACHE.pop(name, None)


def unregister_adapter(name: str) -> None:
    """Forget a framework :func:`register_adapter` made known (a test's, a plugin's)."""
    package, _ = _FRAMEWORKS.pop(name)
    if _PACKAGES.get(package) == name:
        del _PACKAGES[package]
    _CACHE.pop(name, None)
    _UNLISTED.discard(name)


def _framework_of_module(module: str) -> Optional[str]:
    """The framework whose package holds ``module``, looked up from the module outwards."""
    while module:
        name = _PACKAGES.get(module)
        if name is not None:
            return name
        module = module.rpartition(".")[0]
    return None


def framework_of(obj) -> Optional[str]:
    """The name of the known framework that defines one of the object's classes, or None."""
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


def names_of(framework: str) -> Optional[FrameworkNames]:
    """The names table of a known framework (None for another name, as a dump of a framework this
    padiff does not know may hold); imports no framework."""
    if framework not in _FRAMEWORKS:
        return None
    return importlib.import_module(_FRAMEWORKS[framework][1] + "_names").NAMES


def known_frameworks() -> List[FrameworkNames]:
    """Every listed framework's names table, in registration order; imports no framework."""
    return [names_of(name) for name in _FRAMEWORKS if name not in _UNLISTED]


def type_names(*roles: str) -> List[str]:
    """The known frameworks' classes of ``roles`` (``"model"``, ``"tensor"``, ``"loader"``,
    ``"scheduler"``), one entry per framework, for messages: ``["torch.nn.Module", ...]``; with two
    roles each framework's are joined by "/" ("torch.nn.Module/torch.Tensor")."""
    return ["/".join(fw.type_names[r] for r in roles) for fw in known_frameworks()]


def type_choices(*roles: str, joiner: str = "or") -> str:
    """:func:`type_names` as a message lists them: ``type_choices("model")`` is "a torch.nn.Module
    or a paddle.nn.Layer"."""
    choices = ["a " + n for n in type_names(*roles)]
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} {joiner} {choices[-1]}"


def tables_for(name: str):
    """The weight tables of a framework by name, read without importing the framework (the offline
    dump reader's); None for a framework padiff has no adapter for."""
    if name not in _FRAMEWORKS:
        return None
    return importlib.import_module(f"{_FRAMEWORKS[name][1]}_tables").WEIGHT_TABLES


def adapters() -> Iterator[object]:
    """Every framework's adapter that can be imported here, in a fixed order (torch, paddle),
    each imported only when the caller asks for the next: a lookup that stops at the first
    framework that fits imports no other."""
    for name in _FRAMEWORKS:
        if name in _UNLISTED:
            continue
        try:
            yield get_adapter(name)
        except ImportError:
            continue


def adapter_for(obj, what: str = "object"):
    """The adapter for a user's model or tensor; a clear error for anything else."""
    name = framework_of(obj)
    if name is None:
        raise PadiffError(
            f"The {what} is a {type(obj).__module__}.{type(obj).__qualname__}, which is neither "
            f"{type_choices('model', 'tensor', joiner='nor')}."
        )
    return get_adapter(name)


def adapter_for_value(obj):
    """Adapter for a tensor-like leaf, or None for numpy arrays and Python scalars."""
    name = framework_of(obj)
    return get_adapter(name) if name else None
