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

# The optimisations of the patching's fixed cost (tests/test_speed_equivalence.py turns each
# off): "targets": the list of what to wrap is computed once per process (and again when the
# functional module changes); "wrappers": one wrapper per function per process, told which
# recorder to call while it is installed; "aliases": the index of where else a function is
# bound is extended with newly imported modules, not rebuilt.
FAST = {"targets": True, "wrappers": True, "aliases": True}

_TARGETS: Dict[tuple, Tuple[int, List[Tuple[object, str, str]]]] = {}


def api_targets(adapter, extra: Sequence[str] = ()) -> List[Tuple[object, str, str]]:
    """Everything to wrap for one framework: its functional module whole (but its
    ``api_not_ops``), the names its adapter lists for its top-level module and Tensor class
    that exist, and the user's own dotted names.
    Computed once per process for the framework's part; found again if the functional module
    gained or lost names since."""
    functional, _ = adapter.api_functional()
    stamp = len(vars(functional))
    key = (type(adapter), adapter.name)
    hit = _TARGETS.get(key) if FAST["targets"] else None
    if hit is None or hit[0] != stamp:
        hit = _TARGETS[key] = (stamp, _framework_targets(adapter))
    targets = list(hit[1])
    for dotted in extra:
        owner, attr = resolve_dotted(dotted)
        targets.append((owner, attr, dotted))
    return targets


def _framework_targets(adapter) -> List[Tuple[object, str, str]]:
    import inspect

    functional, functional_name = adapter.api_functional()
    top, top_name = adapter.api_top_level()
    tensor_cls, tensor_name = adapter.api_tensor_class()
    not_ops = adapter.api_not_ops
    targets = []
    for name in dir(functional):
        fn = getattr(functional, name)
        if (name.startswith("_") or not name.islower() or name in not_ops or not callable(fn)
                or inspect.ismodule(fn) or inspect.isclass(fn)):
            continue
        targets.append((functional, name, f"{functional_name}.{name}"))
    targets += [(top, n, f"{top_name}.{n}") for n in adapter.api_top_level_names if callable(getattr(top, n, None))]
    targets += [(tensor_cls, n, f"{tensor_name}.{n}") for n in adapter.api_tensor_methods
                if callable(getattr(tensor_cls, n, None))]
    return targets


def resolve_dotted(dotted: str) -> Tuple[object, str]:
    """'pkg.mod.fn' -> (module object, 'fn'), for user-registered functions."""
    mod_name, _, attr = dotted.rpartition(".")
    if not mod_name:
        raise PadiffError(f"Custom API {dotted!r} must be a full dotted name like 'mypackage.ops.iou3d_nms'.")
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
    Built once; the modules imported since are added before each patching (a full rebuild
    over some 5000 modules took about 0.45 s, and the old index rebuilt it whenever the number
    of modules changed). Only the functions asked about are indexed (every callable of every
    module was 109,000 entries and 6 MB, most of a tiny model's extra memory); a function not
    asked about before has every module scanned for it once. A place is given only while it
    still holds the function."""

    def __init__(self):
        self._seen = 0
        self._scanned: Dict[str, object] = {}  # module name -> the module object scanned
        self._index: Dict[int, List[Tuple[object, str]]] = {}
        self._full: Dict[int, List[Tuple[object, str]]] = {}  # every callable (FAST["aliases"] off)
        self._wanted: Dict[int, object] = {}  # id -> each function indexed (kept: its id stays its own)
        self._main_size = -1
        self._stamp = None

    def aliases(self, fn) -> List[Tuple[object, str]]:
        if not FAST["aliases"]:
            if len(sys.modules) != self._seen:
                self._rebuild()
            return self._full.get(id(fn), [])
        return [(m, a) for m, a in self._index.get(id(fn), ()) if vars(m).get(a) is fn]

    def refresh(self, functions=()) -> None:
        """Index ``functions`` too (every module scanned for those new here), and add the modules
        imported since the last look (found by name), and the script's own module if it gained
        names."""
        if not FAST["aliases"]:
            return
        new = {id(f): f for f in functions if self._wanted.get(id(f)) is not f}
        if new:
            self._wanted.update(new)
            for module in list(self._scanned.values()):
                self._add(module, self._index, new)
        modules = sys.modules
        main = modules.get("__main__")
        if main is not None and len(getattr(main, "__dict__", ())) != self._main_size:
            self._main_size = len(main.__dict__)  # a script's own `from torch... import gelu`
            self._add(main, self._index, self._wanted)
        try:  # imports append to sys.modules: its size and last name tell whether any happened
            stamp = (len(modules), next(reversed(modules.keys())))
        except (StopIteration, RuntimeError):  # empty, or changed while read (another thread)
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return
        self._stamp = stamp
        scanned = self._scanned
        for name in scanned.keys() - modules.keys():  # removed: scanned again if imported again
            del scanned[name]
        for name in modules.keys() - scanned.keys():
            module = modules.get(name)
            scanned[name] = module
            self._add(module, self._index, self._wanted)

    @staticmethod
    def _add(module, index, wanted=None):
        """Enter ``module``'s bindings of the ``wanted`` functions (by id; all callables when
        None) in ``index``."""
        try:
            attrs = vars(module)
        except TypeError:
            return
        if wanted is None:
            for attr, value in list(attrs.items()):
                if callable(value) and not isinstance(value, type) and not attr.startswith("__"):
                    index.setdefault(id(value), []).append((module, attr))
            return
        for attr, value in list(attrs.items()):
            if id(value) in wanted and not attr.startswith("__"):
                places = index.setdefault(id(value), [])
                if (module, attr) not in places:
                    places.append((module, attr))

    def _rebuild(self):
        index: Dict[int, List[Tuple[object, str]]] = {}
        for module in list(sys.modules.values()):
            self._add(module, index)
        self._full = index
        self._seen = len(sys.modules)


_ALIASES = _AliasIndex()


class ApiPatcher:
    """Context manager: wraps ``targets`` (owner, attr, display name) so each call goes to
    ``on_call(name, original, args, kwargs)``; restores every attribute on exit."""

    def __init__(self, targets: Sequence[Tuple[object, str, str]], on_call: Callable):
        self.targets = list(targets)
        self.on_call = on_call
        self._saved: List[Tuple[object, str, object, bool]] = []
        self._slots: List[list] = []

    def __enter__(self):
        try:
            _ALIASES.refresh([getattr(owner, attr) for owner, attr, _ in self.targets
                              if isinstance(owner, types.ModuleType)])
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
        slots, self._slots = self._slots, []
        for slot in slots:
            slot[0] = None  # a wrapper kept elsewhere by the user's code calls the original now
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
        """The wrapper of ``original`` that calls this patcher's ``on_call``. With
        FAST["wrappers"] one wrapper per function and name is made per process and reused: its
        slot names the patcher to call while it is installed (None: call the original)."""
        if not FAST["wrappers"]:
            return _make_wrapper(original, name, [self.on_call])
        key = (id(original), name)
        hit = _WRAPPERS.get(key)
        if hit is None or hit[0] is not original:
            hit = _WRAPPERS[key] = (original, *_make_wrapper_slot(original, name))
        hit[2][0] = self.on_call
        self._slots.append(hit[2])
        return hit[1]


# (id(function), name) -> (function, its wrapper, the wrapper's slot [on_call or None])
_WRAPPERS: Dict[tuple, tuple] = {}


def _make_wrapper_slot(original, name):
    slot = [None]
    return _make_wrapper(original, name, slot), slot


def _make_wrapper(original, name, slot):
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        on_call = slot[0]
        if on_call is None:
            return original(*args, **kwargs)
        return on_call(name, original, args, kwargs)

    wrapper.__padiff_wrapped__ = original
    return wrapper
