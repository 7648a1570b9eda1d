"""The written adapter protocol (padiff/frameworks/base.py) against its implementations and the core.

Both framework adapters implement every member of FrameworkAdapter, the dump reader's adapter every
member of RecordedModelAdapter, and every adapter member the core uses is declared in one of them,
so a new framework file knows what to implement.
"""

from __future__ import annotations

import inspect
import os
import re
import types
import typing

import pytest

from padiff.dump.distributed import _GatheredAdapter
from padiff.dump.reader import DumpAdapter
from padiff.frameworks import get_adapter
from padiff.frameworks.base import FrameworkAdapter, RecordedModelAdapter

PADIFF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "padiff")

# A variable holding an adapter, as the core names them: ad, da, ad1, src_ad, dst_ad, torch_ad,
# adapter, self.adapter, side.adapter, self._adapter.
_HOLDER = r"(?:ad|da|ad\d|[a-z]\w*_ad|\w*adapter)"
_USE = re.compile(rf"\b{_HOLDER}\.([A-Za-z_]\w*)")
_BY_NAME = re.compile(rf"\b(?:has|get)attr\(\s*(?:\w+\.)*{_HOLDER}\s*,\s*[\"']([A-Za-z_]\w*)[\"']")


def protocol_members(proto) -> dict:
    """name -> "method" or "data", over the protocol and the protocols it extends."""
    out = {}
    for cls in reversed(proto.__mro__):
        if not getattr(cls, "_is_protocol", False) or cls is typing.Protocol:
            continue
        for name in cls.__dict__.get("__annotations__", {}):
            out[name] = "data"
        for name, value in vars(cls).items():
            if inspect.isfunction(value) and not name.startswith("_"):
                out[name] = "method"
    return out


def adapter_uses(source: str) -> set:
    """Adapter members a piece of core source uses: ``ad.name``, ``side.adapter.to_numpy(t)``,
    ``getattr(ad, "linear_weight_layout", None)``."""
    return set(_USE.findall(source)) | set(_BY_NAME.findall(source))


def core_uses() -> dict:
    """Adapter member -> the core files (outside frameworks/) that use it."""
    found: dict = {}
    for folder, dirs, files in os.walk(PADIFF):
        dirs[:] = [d for d in dirs if d not in ("frameworks", "__pycache__")]
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                with open(path, encoding="utf-8") as fh:
                    for name in adapter_uses(fh.read()):
                        found.setdefault(name, []).append(os.path.relpath(path, PADIFF))
    return found


def _own_definition(impl, name):
    """Where the implementation defines ``name`` itself (instance or a non-protocol class), else None:
    a member inherited from the protocol is a docstring-only stub that returns None."""
    if name in vars(impl):
        return vars(impl)[name]
    for cls in type(impl).__mro__:
        if getattr(cls, "_is_protocol", False) or cls in (object, typing.Generic):
            continue
        if name in vars(cls):
            return vars(cls)[name]
    return None


def _params(fn):
    return [p.name for p in inspect.signature(fn).parameters.values()][1:]  # without self


def _check_implements(impl, proto):
    members = protocol_members(proto)
    assert members, proto
    missing, wrong = [], []
    for name, kind in members.items():
        own = _own_definition(impl, name)
        if own is None:
            missing.append(name)
        elif kind == "method":
            if not callable(getattr(impl, name)):
                wrong.append(f"{name} is not callable")
            elif _params(getattr(proto, name)) != _params(own):
                wrong.append(f"{name}{tuple(_params(own))}, the protocol says {tuple(_params(getattr(proto, name)))}")
        elif callable(own):
            wrong.append(f"{name} is declared as data but is callable")
    assert not missing, f"{type(impl).__name__} lacks {missing}"
    assert not wrong, f"{type(impl).__name__}: {wrong}"
    assert isinstance(impl, proto)


def _dump_adapter(cls=DumpAdapter):
    stand_in = types.SimpleNamespace(framework="paddle", manifest={"framework_title": "Paddle"})
    return cls(stand_in)


def test_protocol_sizes_and_nesting():
    small, full = protocol_members(RecordedModelAdapter), protocol_members(FrameworkAdapter)
    assert set(small) < set(full)
    assert {"name", "title", "package_prefix", "to_numpy", "named_children"} <= set(small)
    assert {"linear_weight_layout", "supports_kwargs_hooks", "add_forward_hooks", "backward"} <= set(full) - set(small)
    for proto in (RecordedModelAdapter, FrameworkAdapter):  # a docstring for every method
        for name, kind in protocol_members(proto).items():
            if kind == "method":
                assert inspect.getdoc(getattr(proto, name)), f"{proto.__name__}.{name} has no docstring"


# The toy framework over numpy (padiff/frameworks/toyfw) is the reference implementation.
_PREFIXES = {"torch": "torch.", "paddle": "paddle.", "toy": "padiff.frameworks.toyfw."}


@pytest.mark.parametrize("framework", ["torch", "paddle", "toy"])
def test_framework_adapter_implements_every_member(framework):
    ad = get_adapter(framework)
    _check_implements(ad, FrameworkAdapter)
    assert ad.name == framework and ad.title == framework.capitalize()
    assert ad.package_prefix == _PREFIXES[framework]
    assert ad.linear_weight_layout in ("out_in", "in_out")
    assert isinstance(ad.supports_kwargs_hooks, bool) and isinstance(ad.supports_tensor_grad_hooks, bool)


@pytest.mark.parametrize("cls", [DumpAdapter, _GatheredAdapter])
def test_dump_adapter_implements_the_recorded_model_part(cls):
    ad = _dump_adapter(cls)
    _check_implements(ad, RecordedModelAdapter)
    assert (ad.name, ad.title, ad.package_prefix) == ("paddle", "Paddle", "paddle.")
    # The dump reader does not say how Linear weights are stored; the core reads it with getattr.
    assert getattr(ad, "linear_weight_layout", None) is None


def test_the_scan_sees_every_way_the_core_names_an_adapter():
    text = ("x = ad.frobnicate(t); side.adapter.shape(t); self.adapter.version(t); ctx.src_ad.title\n"
            "da.set_value(p, a); ad1.name; self._adapter.host_view(t)\n"
            "if hasattr(ad, 'parallel_layer'): getattr(ctx.dst_ad, \"linear_weight_layout\", None)\n"
            "load.x; grad.y; bad.z; ads.w; adapter_for(m)")
    assert adapter_uses(text) == {"frobnicate", "shape", "version", "title", "set_value", "name", "host_view",
                                  "parallel_layer", "linear_weight_layout"}


def test_core_uses_only_declared_adapter_members():
    uses = core_uses()
    assert len(uses) > 40, sorted(uses)  # the scan found the core's adapter calls
    declared = set(protocol_members(FrameworkAdapter))
    undeclared = {name: files for name, files in uses.items() if name not in declared}
    assert not undeclared, ("core modules use adapter members that padiff/frameworks/base.py does not declare: "
                            f"{undeclared}")
