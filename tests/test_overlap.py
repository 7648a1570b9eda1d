"""Comparing while the tested model runs (``overlap``): the same findings as comparing after
it, and failures on either thread end the run cleanly."""

import threading

import numpy as np
import paddle
import pytest
import torch

import padiff
from padiff import PadiffError, auto_diff
from support import grads_are_clear, hook_count, make_net, net_input

import models


def figures(result):
    return [(f.stage, f.ref_path, f.test_path, f.what, f.diff.max_abs, f.diff.rel_l2, f.diff.max_rel, f.passed)
            for f in result.steps[0].all_findings()]


def compare_threads():
    return [t for t in threading.enumerate() if t.name == "padiff-compare"]


@pytest.mark.parametrize("bug", [None, "activation", "backward"])
@pytest.mark.parametrize("pair", [("paddle", "torch"), ("torch", "torch")], ids=["paddle-torch", "torch-torch"])
def test_overlap_gives_the_findings_of_comparing_afterwards(pair, bug):
    runs = {}
    for overlap in (False, True):
        torch.manual_seed(0), paddle.seed(0)
        same = pair[0] == pair[1]  # across frameworks the port (paddle) has the bug, else the second
        a, b = make_net(pair[0], None if same else bug), make_net(pair[1], bug if same else None)
        a.eval(), b.eval()
        runs[overlap] = auto_diff(a, b, (net_input(pair[0]), net_input(pair[1])), options={"overlap": overlap})
    assert bool(runs[True]) == bool(runs[False]) == (bug is None)
    assert figures(runs[True]) == figures(runs[False])
    assert len(figures(runs[True])) > 20
    if bug is not None:
        assert runs[True].first.ref_path == runs[False].first.ref_path
    assert compare_threads() == []


def test_overlap_on_a_transformer_with_framework_calls_and_a_spill(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    padiff.release_buffers()  # no spill file kept from an earlier call: this one's go to tmp_path
    x = np.random.default_rng(0).standard_normal((4, 32, 64)).astype("float32")
    runs = {}
    for overlap in (False, True):
        torch.manual_seed(0), paddle.seed(0)
        paddle_model, torch_model = models.encoder_pair(bug="gelu_tanh", dim=64, hidden=256, depth=2)
        runs[overlap] = auto_diff(paddle_model, torch_model, ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}),
                                  options={"overlap": overlap, "memory_budget_mb": 0.5})
    assert not runs[True] and not runs[False]
    assert runs[True].first.ref_path == runs[False].first.ref_path
    assert "gelu" in runs[True].first.test_path
    assert figures(runs[True]) == figures(runs[False])
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("padiff-spill-")]
    assert 1 <= len(kept) <= 2  # the spill files are kept for the next call, one per model at most
    padiff.release_buffers()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("padiff-spill-")] == []


def test_a_backward_that_raises_ends_the_worker_and_removes_hooks():
    class Exploding(paddle.autograd.PyLayer):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward kernel missing")

    paddle_model, torch_model = make_net("paddle"), make_net("torch")
    paddle_model.norm.forward = lambda x, _f=paddle_model.norm.forward: Exploding.apply(_f(x))
    with pytest.raises(PadiffError, match="(?s)The paddle model.s backward raised .*backward kernel missing"):
        auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")), options={"overlap": True})
    assert compare_threads() == []
    assert hook_count(paddle_model) == 0 and hook_count(torch_model) == 0
    assert grads_are_clear(paddle_model) and grads_are_clear(torch_model)


def test_a_tested_run_that_fails_before_recording_ends_the_waiting_worker(monkeypatch):
    """The worker starts with the tested run and waits for its forward: a run that fails before
    recording anything must still let it go (no hang), and its error reach the caller."""
    from padiff.run import record as record_module

    real = record_module.Recorder.__init__

    def failing(self, adapter, model, *a, **k):
        if adapter.name == "paddle":
            raise PadiffError("the paddle model cannot be walked")
        real(self, adapter, model, *a, **k)

    monkeypatch.setattr(record_module.Recorder, "__init__", failing)
    paddle_model, torch_model = make_net("paddle"), make_net("torch")
    outcome = []

    def run():
        try:
            auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")), options={"overlap": True})
        except PadiffError as exc:
            outcome.append(str(exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "auto_diff hung waiting for the worker"
    assert outcome == ["the paddle model cannot be walked"]
    assert compare_threads() == []


def test_a_pairing_error_in_the_worker_reaches_the_caller():
    paddle_model, torch_model = make_net("paddle", extra=True), make_net("torch")
    with pytest.raises(PadiffError, match="The two models are built differently") as err:
        auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")), auto_weights=False,
                  options={"overlap": True})
    assert "paddle: `PaddleNet` calls 7:" in str(err.value)
    assert compare_threads() == []
    assert hook_count(paddle_model) == 0 and hook_count(torch_model) == 0


def test_overlap_is_off_in_single_step_mode(monkeypatch):
    from padiff.compare import overlap as overlap_module

    started = []
    real = overlap_module.Background.__init__

    def spy(self, fn, threaded):
        started.append(threaded)
        real(self, fn, threaded)

    monkeypatch.setattr(overlap_module.Background, "__init__", spy)
    paddle_model, torch_model = make_net("paddle"), make_net("torch")
    result = auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")),
                       options={"overlap": True, "single_step": True})
    assert result and started == [False]
    started.clear()
    auto_diff(make_net("paddle"), make_net("torch"), (net_input("paddle"), net_input("torch")),
              options={"overlap": True})
    assert started == [True]


def test_small_records_are_compared_without_a_worker_unless_asked():
    # a tiny model's comparison is mostly Python work: a worker would contend for the
    # interpreter lock with the tested model's gradient hooks
    from padiff.run.live import OVERLAP_MIN_BYTES

    inputs = (net_input("paddle"), net_input("torch"))
    small = auto_diff(make_net("paddle"), make_net("torch"), inputs)
    assert small and small.overlapped is False and OVERLAP_MIN_BYTES == 16 << 20
    asked = auto_diff(make_net("paddle"), make_net("torch"), inputs, options={"overlap": True})
    assert asked and asked.overlapped is True


def test_the_worker_works_out_the_references_part_while_the_tested_forward_runs(monkeypatch):
    """The rounding context reads the reference's records only: with overlap it is ready
    before the tested model's forward ends (a slow paddle layer here), not after its backward."""
    import time

    from padiff.compare.overlap import Arrivals
    from padiff.run import live

    events = []
    real_context, real_recorded = live.reference_context, Arrivals.forward_recorded
    monkeypatch.setattr(live, "reference_context",
                        lambda run, opts: (events.append("context"), real_context(run, opts))[1])
    monkeypatch.setattr(Arrivals, "forward_recorded", lambda self, run: (events.append("forward"),
                                                                        real_recorded(self, run))[1])

    class Slow(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(8, 8)

        def forward(self, x):
            time.sleep(0.3)
            return self.fc(x)

    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    runs = {}
    for overlap in (True, False):
        events.clear()
        torch.manual_seed(0)
        paddle_model, torch_model = Slow(), torch.nn.Sequential()
        torch_model.fc = torch.nn.Linear(8, 8)
        runs[overlap] = auto_diff(paddle_model, torch_model, ({"x": paddle.to_tensor(x)}, {"input": torch.tensor(x)}),
                                  options={"overlap": overlap})
        assert events == (["context", "forward"] if overlap else ["forward", "context"])
    assert runs[True] and figures(runs[True]) == figures(runs[False])
    assert compare_threads() == []
