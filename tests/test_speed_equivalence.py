"""The fixed-cost optimisations of recording (issue 18) change nothing a user sees: the same
run gives the same findings, verdict and source lines with each of them turned off, and the
patched framework functions are all put back when auto_diff returns."""

import sys
import textwrap

import numpy as np
import paddle
import pytest
import torch

import models
from padiff import auto_diff
from padiff.frameworks import adapter_for
from padiff.record import api, recorder
from support import make_net, net_input

SWITCHES = [("api", k) for k in api.FAST] + [("recorder", k) for k in recorder.FAST]


def _flags(monkeypatch, off):
    """Turn off the optimisations in ``off`` ((module, name) pairs)."""
    for mod, name in off:
        monkeypatch.setitem((api if mod == "api" else recorder).FAST, name, False)


def _frames(node):
    return [(f.filename, f.lineno, f.function, f.line_text()) for f in (getattr(node, "frames", ()) or ())]


def seen(result):
    """Everything a user reads of a run: the verdict, every finding with its figures, and the
    source frames (with their text) of both calls of every finding."""
    out = [bool(result), result.stage]
    for step in result.steps:
        for f in step.all_findings():
            out.append((f.stage, f.what, f.ref_path, f.test_path, f.ref_type, f.test_type, f.diff.max_abs,
                        f.diff.rel_l2, f.passed, f.cause, _frames(f.ref_node), _frames(f.test_node)))
    first = result.first
    if first is not None:
        out.append(("first", first.ref_path, first.test_path, str(first)))
    return out


def _encoder_run(bug):
    x = np.random.default_rng(0).standard_normal((2, 8, 32)).astype("float32")
    torch.manual_seed(0), paddle.seed(0)
    paddle_model, torch_model = models.encoder_pair(bug=bug, dim=32, hidden=64, depth=1)
    return auto_diff(paddle_model, torch_model, ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}))


def _net_run(bug):
    torch.manual_seed(0), paddle.seed(0)
    a, b = make_net("torch"), make_net("paddle", bug)
    a.eval(), b.eval()
    return auto_diff(a, b, (net_input("torch"), net_input("paddle")))


RUNS = {"encoder gelu_tanh": lambda: _encoder_run("gelu_tanh"), "encoder aligned": lambda: _encoder_run(None),
        "net backward": lambda: _net_run("backward"), "net activation": lambda: _net_run("activation")}


@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("off", [[s] for s in SWITCHES] + [SWITCHES], ids=[f"{m}.{k}" for m, k in SWITCHES] + ["all"])
def test_each_optimisation_leaves_the_findings_and_source_lines_alone(run, off, monkeypatch):
    fast = seen(RUNS[run]())
    with monkeypatch.context() as m:
        _flags(m, off)
        plain = seen(RUNS[run]())
    assert fast == plain
    if run != "encoder aligned":
        assert fast[0] is False
        shown = [f for f in fast[2:] if isinstance(f, tuple) and f[0] != "first" and not f[8]]
        assert shown and any(f[10] or f[11] for f in shown)  # a failing call shows its source line
    else:
        assert fast[0] is True


def test_the_source_line_of_a_failing_call_is_the_users_line():
    result = _encoder_run("gelu_tanh")
    frames = result.first.test_node.frames
    assert frames, "the failing call has the user's frames"
    last = frames[-1]
    assert last.filename.endswith("models.py")
    assert "gelu" in last.line_text()
    assert frames == tuple(frames)  # reads like the tuple of SourceFrames it stands for
    assert len(frames[-2:]) == min(2, len(frames))


def test_framework_functions_are_restored_and_a_kept_wrapper_calls_the_original(monkeypatch):
    import torch.nn.functional as F

    before = {n: F.__dict__[n] for n in ("gelu", "linear", "softmax", "layer_norm")}
    tensor_add = torch.Tensor.__dict__.get("__add__")
    kept = []

    class Keeps(torch.nn.Module):
        def forward(self, x):
            kept.append(F.gelu)  # the wrapper, while padiff traces
            return F.gelu(x)

    class KeepsPd(paddle.nn.Layer):
        def forward(self, x):
            return paddle.nn.functional.gelu(x)

    x = np.ones((2, 3), "float32")
    for _ in range(2):  # the second call reuses the wrappers of the first
        assert auto_diff(KeepsPd(), Keeps(), ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}))
        assert {n: F.__dict__[n] for n in before} == before
        assert torch.Tensor.__dict__.get("__add__") is tensor_add
    assert kept[0] is kept[1] and kept[0] is not F.gelu and getattr(kept[0], "__padiff_wrapped__") is F.gelu
    t = torch.tensor([1.0])
    assert torch.equal(kept[0](t), F.gelu(t))  # not traced any more: the original runs


def _calls_seen():
    """(the names of the framework calls seen, a patcher's ``on_call`` that notes each and runs it)."""
    calls = []

    def on_call(name, fn, a, k):
        calls.append(name)
        return fn(*a, **k)

    return calls, on_call


def test_a_module_imported_after_the_first_run_has_its_aliases_traced(tmp_path, monkeypatch):
    import torch.nn.functional as F

    ad = adapter_for(torch.nn.Linear(1, 1))
    with api.ApiPatcher(api.api_targets(ad), lambda name, fn, a, k: fn(*a, **k)):
        pass  # the alias index is built
    (tmp_path / "late_alias_mod.py").write_text(textwrap.dedent("""
        from torch.nn.functional import gelu as my_gelu
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import late_alias_mod

    calls, on_call = _calls_seen()
    try:
        with api.ApiPatcher(api.api_targets(ad), on_call):
            late_alias_mod.my_gelu(torch.ones(2))
        assert calls == ["torch.nn.functional.gelu"]
        assert late_alias_mod.my_gelu is F.gelu  # put back
    finally:
        sys.modules.pop("late_alias_mod", None)


def test_a_function_asked_about_after_the_index_was_built_is_found_where_it_was_bound_before(tmp_path, monkeypatch):
    """The index holds only the functions padiff patches; one wrapped later (a user's own API)
    is looked for in every module seen before, and the index stays small."""
    (tmp_path / "user_ops_mod.py").write_text("def iou(x):\n    return [x]\n")
    (tmp_path / "uses_user_ops_mod.py").write_text("from user_ops_mod import iou as my_iou\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_ops_mod
    import uses_user_ops_mod

    ad = adapter_for(torch.nn.Linear(1, 1))
    calls, on_call = _calls_seen()
    try:
        with api.ApiPatcher(api.api_targets(ad), on_call):
            pass  # the index is built, user_ops_mod scanned, iou not asked about
        assert sum(len(v) for v in api._ALIASES._index.values()) < 5000  # not every callable of every module
        with api.ApiPatcher(api.api_targets(ad) + [(user_ops_mod, "iou", "user_ops_mod.iou")], on_call):
            assert uses_user_ops_mod.my_iou(1.0) == [1.0]
        assert calls == ["user_ops_mod.iou"]
        assert uses_user_ops_mod.my_iou is user_ops_mod.iou  # put back
    finally:
        sys.modules.pop("user_ops_mod", None)
        sys.modules.pop("uses_user_ops_mod", None)


def test_a_rebound_alias_is_not_patched(tmp_path, monkeypatch):
    """A place the index remembers but that now holds something else is left alone."""
    import torch.nn.functional as F

    (tmp_path / "rebinds_mod.py").write_text("from torch.nn.functional import relu as act\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import rebinds_mod

    ad = adapter_for(torch.nn.Linear(1, 1))
    try:
        with api.ApiPatcher(api.api_targets(ad), lambda name, fn, a, k: fn(*a, **k)):
            assert getattr(rebinds_mod.act, "__padiff_wrapped__", None) is F.relu.__padiff_wrapped__ is not None
        mine = lambda x: x  # noqa: E731
        rebinds_mod.act = mine
        with api.ApiPatcher(api.api_targets(ad), lambda name, fn, a, k: fn(*a, **k)):
            assert rebinds_mod.act is mine
        assert rebinds_mod.act is mine
    finally:
        sys.modules.pop("rebinds_mod", None)


def test_tensor_items_matches_flatten_order_and_paths():
    from padiff.structure import flatten

    is_t = lambda v: isinstance(v, torch.Tensor)  # noqa: E731
    a, b, c = torch.ones(1), torch.ones(2), torch.ones(3)
    cases = [((a, 2, b), {"w": c, "s": "x"}), ((a,), {}), ((a, [b, c]), {"k": (a,)}), ((1.0, None), {"t": b}),
             ((a, {"x": b}), None)]
    for args, kwargs in cases:
        want = [(p, l) for p, l in flatten((args, kwargs or {}), is_t) if is_t(l)]
        got = recorder.tensor_items(args, kwargs, is_t)
        assert [p for p, _ in got] == [p for p, _ in want]
        assert all(x is y for (_, x), (_, y) in zip(got, want))


def _helper(layer, x):  # a user's function between a layer and its sublayer
    return layer(x) * 2


class _Deep(torch.nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.inner = _Deep(depth - 1) if depth else None

    def forward(self, x):
        y = torch.relu(self.lin(x))
        if self.inner is not None:
            y = _helper(self.inner, y) + self.inner(y)  # the same layer twice, from two lines
        return y.sum(-1, keepdim=True) + y


class _DeepPd(paddle.nn.Layer):
    def __init__(self, depth):
        super().__init__()
        self.lin = paddle.nn.Linear(4, 4)
        self.inner = _DeepPd(depth - 1) if depth else None

    def forward(self, x):
        y = paddle.nn.functional.relu(self.lin(x))
        if self.inner is not None:
            y = _helper(self.inner, y) + self.inner(y)
        return y.sum(-1, keepdim=True) + y


def _all_frames(model, x, monkeypatch, fast, limit=None):
    from padiff.record.recorder import Recorder

    with monkeypatch.context() as m:
        m.setitem(recorder.FAST, "frames", fast)
        ad = adapter_for(model)
        with Recorder(ad, model, "M", grads=True, api=True) as rec:
            rec.run(lambda: model(x), "tested")
        return [(n.label(), _frames(n)) for n in rec.trace.nodes]


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_every_calls_frames_match_a_whole_stack_walk(framework, monkeypatch):
    """The walk that stops at the running layer's anchor finds, for every layer and framework
    call of a nested model, the frames (and lines) a whole walk of the stack finds; deeper than
    the 12 frames kept, too."""
    x = np.ones((2, 4), "float32")
    for depth in (2, 9):
        model = _Deep(depth) if framework == "torch" else _DeepPd(depth)
        inp = torch.tensor(x) if framework == "torch" else paddle.to_tensor(x)
        fast = _all_frames(model, inp, monkeypatch, True)
        plain = _all_frames(model, inp, monkeypatch, False)
        assert fast == plain
        assert len(fast) > 10 and all(f for _, f in fast)
        assert max(len(f) for _, f in fast) == (12 if depth == 9 else max(len(f) for _, f in plain))
        assert any("_helper" in [fr[2] for fr in f] for _, f in fast)
