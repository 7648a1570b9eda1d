"""The written adapter protocol (padiff/frameworks/base.py) against its implementations and the core.

Both framework adapters implement every member of FrameworkAdapter, the dump reader's adapter every
member of RecordedModelAdapter, and every adapter member the core uses is declared in one of them,
so a new framework file knows what to implement.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import types
import typing

import paddle
import pytest
import torch

from padiff.checks import check_dataloader, check_schedule
from padiff.compare.api_names import canonical
from padiff.dump.gather import GatheredAdapter
from padiff.dump.reader import DumpAdapter
from padiff.errors import PadiffError
from padiff.frameworks import get_adapter, names_of
from padiff.frameworks.base import FrameworkAdapter, RecordedModelAdapter
from padiff.record.api import api_targets
from padiff.record.recorder import Recorder
from padiff.side import make_sides, reference_index

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
    assert {"name", "title", "linear_weight_layout", "reference_rank", "api_spellings", "to_numpy",
            "named_children"} <= set(small)
    assert {"package_dirs", "api_top_level_names", "add_forward_hooks",
            "backward"} <= set(full) - set(small)
    for proto in (RecordedModelAdapter, FrameworkAdapter):  # a docstring for every method
        for name, kind in protocol_members(proto).items():
            if kind == "method":
                assert inspect.getdoc(getattr(proto, name)), f"{proto.__name__}.{name} has no docstring"


# The toy framework over numpy (padiff/frameworks/toyfw) is the reference implementation.
@pytest.mark.parametrize("framework", ["torch", "paddle", "toy"])
def test_framework_adapter_implements_every_member(framework):
    ad = get_adapter(framework)
    _check_implements(ad, FrameworkAdapter)
    assert ad.name == framework and ad.title == framework.capitalize()
    assert ad.linear_weight_layout in ("out_in", "in_out")


@pytest.mark.parametrize("cls", [DumpAdapter, GatheredAdapter])
def test_dump_adapter_implements_the_recorded_model_part(cls):
    ad = _dump_adapter(cls)
    _check_implements(ad, RecordedModelAdapter)
    assert (ad.name, ad.title) == ("paddle", "Paddle")
    assert ad.linear_weight_layout == "in_out"  # from the dump, or paddle's weight tables


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


# The core names no framework: tests/test_layering.py (one scan, with its allowlist).

# --- names tables, read without the framework ------------------------------------------------------

@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_adapter_members_come_from_its_names_table(framework):
    ad, names = get_adapter(framework), names_of(framework)
    for member in ("name", "title", "reference_rank", "package_dirs", "api_top_level_names", "api_tensor_methods",
                   "api_not_ops", "api_spellings"):
        assert getattr(ad, member) == getattr(names, member), member
    assert names_of("jax") is None


def test_names_tables_and_messages_import_no_framework():
    code = ("import sys\nfor m in ('torch', 'paddle'):\n    sys.modules[m] = None\n"
            "from padiff.frameworks import adapter_for, known_frameworks, type_choices\n"
            "print([fw.name for fw in known_frameworks()])\nprint(type_choices('model'))\n"
            "try:\n    adapter_for(3, 'first model')\nexcept Exception as e:\n    print(e)\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(PADIFF))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "['torch', 'paddle']",
        "a torch.nn.Module or a paddle.nn.Layer",
        "The first model is a builtins.int, which is neither a torch.nn.Module/torch.Tensor nor a "
        "paddle.nn.Layer/paddle.Tensor."]


# --- the reference side, by declared rank ---------------------------------------------------------

@pytest.mark.parametrize("order", [("torch", "paddle"), ("paddle", "torch")])
def test_the_model_of_the_higher_reference_rank_is_the_reference(order):
    models = {"torch": torch.nn.Linear(2, 2), "paddle": paddle.nn.Linear(2, 2)}
    sides, ref = make_sides(models[order[0]], models[order[1]])
    assert [s.label for s in sides] == list(order)
    assert sides[ref].label == "torch" and get_adapter("torch").reference_rank > get_adapter("paddle").reference_rank


def test_reference_index_reads_the_declared_rank_not_the_name():
    low, high = types.SimpleNamespace(name="a", reference_rank=0), types.SimpleNamespace(name="b", reference_rank=5)
    assert reference_index(low, high) == 1 and reference_index(high, low) == 0
    assert reference_index(low, types.SimpleNamespace(name="c", reference_rank=0)) == 0  # a tie: the first
    same = types.SimpleNamespace(name="a", reference_rank=9)
    assert reference_index(low, same) == 0  # one framework twice: the first ("base")


def test_a_tensor_passed_as_a_model_is_told_the_model_classes_of_every_framework():
    with pytest.raises(PadiffError) as err:
        make_sides(torch.nn.Linear(2, 2), paddle.ones([2]))
    assert str(err.value) == ("The second argument is a Tensor, not a model: pass a torch.nn.Module or a "
                              "paddle.nn.Layer.")


def test_what_to_pass_lists_every_frameworks_loader_and_scheduler_classes():
    with pytest.raises(PadiffError) as err:
        check_dataloader(3, [1])
    assert str(err.value) == ("The first loader is a int, not an iterable of batches: pass a "
                              "torch.utils.data.DataLoader, a paddle.io.DataLoader, or any iterable or generator of "
                              "batches.")
    with pytest.raises(PadiffError) as err:
        check_schedule({"lr": 1}, [0.1, 0.1], steps=2)
    assert str(err.value) == ("The first schedule is a dict: pass a torch.optim.lr_scheduler.LRScheduler, a "
                              "paddle.optimizer.lr.LRScheduler, a function step -> lr, or a list of learning rates.")


# --- framework calls: what is traced, and how the names pair ----------------------------------------

@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_api_tracing_wraps_the_adapters_lists_and_leaves_out_its_non_operations(framework):
    ad = get_adapter(framework)
    names = {name for _, _, name in api_targets(ad)}
    top, top_name = ad.api_top_level()
    assert f"{top_name}.concat" in names and f"{ad.api_tensor_class()[1]}.__rmul__" in names
    functional_name = ad.api_functional()[1]
    for skipped in ad.api_not_ops:
        assert f"{functional_name}.{skipped}" not in names
    assert all(callable(getattr(top, n)) for n in ad.api_top_level_names if f"{top_name}.{n}" in names)


def test_calls_pair_by_both_traces_spellings():
    spellings = {**get_adapter("torch").api_spellings, **get_adapter("paddle").api_spellings}
    assert canonical("paddle.concat", spellings) == canonical("torch.cat", spellings) == "cat"
    assert canonical("paddle.Tensor.__rtruediv__", spellings) == canonical("torch.divide", spellings) == "div"
    assert canonical("paddle.clip", {}) == "clip"  # without the tables, a spelling is its own name
    rec = Recorder(get_adapter("paddle"), paddle.nn.Linear(2, 2), "Net", grads=False)
    assert rec.trace.api_spellings == get_adapter("paddle").api_spellings
    assert rec._internal == (os.sep + "paddle" + os.sep,)  # frames in paddle's own files are not the user's
