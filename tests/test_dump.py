"""Offline dumps: padiff.dump in one process, compare_dumps in another, on real torch and paddle."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import paddle
import pytest
import torch

import padiff
from padiff import PadiffError, auto_diff
from padiff.dump import compare_dumps, dump, folder_writer, load_dump, npy_writer
from support import grads_are_clear, hook_count, make_net, net_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Twin models importable with only one framework installed (each function imports its own).
TWINS = textwrap.dedent('''
    import numpy as np

    def build(fw, bug=None):
        if fw == "torch":
            import torch
            class Proj(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.w = torch.nn.Parameter(torch.randn(16, 16) * 0.3)
                def forward(self, x):
                    return x @ self.w.T
            class Net(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.linear1 = torch.nn.Linear(8, 16)
                    self.act = torch.nn.ReLU()
                    self.proj = Proj()
                    self.norm = torch.nn.LayerNorm(16)
                    self.linear2 = torch.nn.Linear(16, 4)
                def forward(self, x):
                    return self.linear2(self.norm(self.proj(self.act(self.linear1(x)))))
            return Net()
        import paddle
        class Proj(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                self.w = self.create_parameter([16, 16])
            def forward(self, x):
                return x @ (self.w if bug == "transpose" else self.w.T)
        class Net(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                self.linear1 = paddle.nn.Linear(8, 16)
                self.act = paddle.nn.ReLU()
                self.proj = Proj()
                self.norm = paddle.nn.LayerNorm(16)
                self.linear2 = paddle.nn.Linear(16, 4)
            def forward(self, x):
                return self.linear2(self.norm(self.proj(self.act(self.linear1(x)))))
        return Net()

    def load(fw, model, state):
        if fw == "torch":
            import torch
            model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
        else:
            import paddle
            model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})

    def run(fw, bug, weights, x, out, kill_at_step=None):
        import padiff.dump
        model = build(fw, bug)
        load(fw, model, dict(np.load(weights)))
        if fw == "torch":
            import torch
            x = torch.tensor(np.load(x))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
        else:
            import paddle
            x = paddle.to_tensor(np.load(x))
            opt = paddle.optimizer.SGD(0.1, parameters=model.parameters())
        if kill_at_step is not None:
            import os, signal
            calls = [0]
            def hook(*args):
                calls[0] += 1
                if calls[0] > kill_at_step:
                    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
            if fw == "torch":
                model.linear2.register_forward_hook(hook)
            else:
                model.linear2.register_forward_post_hook(hook)
        padiff.dump(model, x, out, loss_fn=lambda y: (y * y).mean(), optimizer=opt, steps=2)
''')

BLOCK = "import sys\nfor _m in {mods!r}:\n    sys.modules[_m] = None  # importing it now raises ImportError\n"
CHECK = ("\nloaded = sorted(m for m in sys.modules if m.split('.')[0] in {mods!r} and sys.modules[m] is not None)\n"
         "assert not loaded, loaded[:3]\n")


def _python(tmp_path, code, block):
    """Run ``code`` in a fresh interpreter with the frameworks in ``block`` made unimportable,
    and check at its end that none of them was loaded."""
    script = BLOCK.format(mods=tuple(block)) + code + CHECK.format(mods=tuple(block))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]))
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def twins(tmp_path):
    """The twins module, weights (torch's, converted into paddle's layout) and an input."""
    (tmp_path / "twins.py").write_text(TWINS)
    sys.path.insert(0, str(tmp_path))
    try:
        import twins as mod

        t, p = mod.build("torch"), mod.build("paddle")
        padiff.assign_weight(p, t)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("twins", None)
    np.savez(tmp_path / "w_torch.npz", **{k: v.detach().numpy() for k, v in t.state_dict().items()})
    np.savez(tmp_path / "w_paddle.npz", **{k: v.numpy() for k, v in p.state_dict().items()})
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((6, 8)).astype("float32"))
    return tmp_path


def test_dumps_made_with_one_framework_each_compare_with_neither(twins):
    torch_run = _python(twins, "import twins\ntwins.run('torch', None, 'w_torch.npz', 'x.npy', 'run_torch')\n",
                        ["paddle"])
    assert torch_run.returncode == 0, torch_run.stderr
    assert "[AutoDiff] Dumped Net (torch, 2 steps, " in torch_run.stdout
    paddle_run = _python(twins, "import twins\n"
                                "twins.run('paddle', None, 'w_paddle.npz', 'x.npy', 'run_paddle')\n"
                                "twins.run('paddle', 'transpose', 'w_paddle.npz', 'x.npy', 'run_paddle_bug')\n",
                         ["torch"])
    assert paddle_run.returncode == 0, paddle_run.stderr
    compare = _python(twins, textwrap.dedent("""
        from padiff.cli import main
        print("EXIT", main(["compare", "run_paddle", "run_torch", "--atol", "1e-5", "--rtol", "1e-4"]))
        print("EXIT", main(["compare", "run_paddle_bug", "run_torch", "--atol", "1e-5", "--rtol", "1e-4"]))
        """), ["torch", "paddle"])
    assert compare.returncode == 0, compare.stderr
    good, bad = compare.stdout.split("EXIT 0\n")
    assert "the reference is `run_torch` (torch)" in good
    assert "  atol: `1e-05`\n  rtol: `0.0001`" in good
    for line in ("[AutoDiff] =================Train Step 1=================", "[AutoDiff] forward stage compared.",
                 "[AutoDiff] backward stage compared.", "[AutoDiff] weight and grad compared."):
        assert line in good
    assert good.rstrip().endswith("[AutoDiff] SUCCESS !!!")
    assert bad.rstrip().endswith("EXIT 1")
    assert "[AutoDiff] Diff found in Forward Stage in step 0" in bad
    assert "[AutoDiff]     Route: Net.proj > paddle.Tensor.__matmul__  (paddle)" in bad
    assert "[AutoDiff]            Net.proj > torch.Tensor.__matmul__   (torch)" in bad
    assert "|    +--- (api) paddle.Tensor.__matmul__    <---  *** HERE ***" in bad
    assert "return x @ (self.w if bug == \"transpose\" else self.w.T)" in bad  # the line, kept in the dump


def test_killed_dump_is_refused_and_a_new_dump_replaces_it(twins):
    killed = _python(twins, "import twins\ntwins.run('torch', None, 'w_torch.npz', 'x.npy', 'run', kill_at_step=1)\n",
                     ["paddle"])
    assert killed.returncode != 0
    assert not (twins / "run").exists()
    assert len([p for p in os.listdir(twins) if p.startswith("run.partial-")]) == 1
    with pytest.raises(PadiffError) as err:
        load_dump(twins / "run")
    assert "The padiff dump `" in str(err.value) and "run` was interrupted" in str(err.value)
    assert "Re-run padiff.dump(model, inputs, path) to make the dump again." in str(err.value)
    # the unfinished folder itself, copied or renamed into place, is refused too
    partial = next(p for p in os.listdir(twins) if p.startswith("run.partial-"))
    shutil.copytree(twins / partial, twins / "copied")
    with pytest.raises(PadiffError, match=r"The padiff dump `.*copied` is incomplete: its writing was interrupted"):
        load_dump(twins / "copied")
    os.remove(twins / "copied" / "manifest.json")
    with pytest.raises(PadiffError, match=r"copied` holds no manifest.json: it is not a padiff dump, or writing it "
                                          r"was interrupted"):
        load_dump(twins / "copied")
    # a complete dump with a later, unfinished one beside it is not read silently
    model = make_net("torch")
    dump(model, net_input("torch"), twins / "old")
    os.makedirs(twins / "old.partial-999999999")
    with pytest.raises(PadiffError, match=r"A newer padiff dump into `.*old` was interrupted or is still running"):
        load_dump(twins / "old")
    # dumping again cleans up and gives a readable dump
    dump(model, net_input("torch"), twins / "run")
    assert [p for p in os.listdir(twins) if p.startswith("run.")] == []
    assert load_dump(twins / "run").steps == 1


# --- in one process (both frameworks here; the comparison code is the same) --------------------------

def _pair(bug=None, **kw):
    t, p = make_net("torch", **kw), make_net("paddle", bug, **kw)
    t.eval()
    p.eval()
    padiff.assign_weight(p, t)
    return t, p


def _tail(text, start):
    lines = text.splitlines()
    return lines[next(i for i, l in enumerate(lines) if l.startswith(start)):]


@pytest.mark.parametrize("bug,stage", [("activation", "forward"), ("backward", "backward")])
def test_offline_report_is_auto_diffs_report(tmp_path, bug, stage, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t, p = _pair(bug)
    dump(t, net_input("torch"), "t")
    dump(p, net_input("paddle"), "p")
    offline = compare_dumps("p", "t")
    live = auto_diff(p, t, (net_input("paddle"), net_input("torch")), auto_weights=False)
    assert not offline and offline.stage == stage == live.stage
    assert (offline.first.ref_path, offline.first.test_path) == (live.first.ref_path, live.first.test_path)
    # everything from the step on is the same text, figures included
    assert _tail(offline.report, "[AutoDiff] =====") == _tail(live.report, "[AutoDiff] =====")
    assert "[AutoDiff] Comparing dumps `p` (paddle PaddleNet) and `t` (torch TorchNet); the reference is `t` " \
           "(torch)." in offline.report
    for m in (t, p):
        assert hook_count(m) == 0 and grads_are_clear(m)


def test_training_steps_optimizer_difference(tmp_path):
    t, p = _pair()
    loss = lambda y: (y * y).mean()
    dump(t, net_input("torch"), tmp_path / "t", loss_fn=loss, optimizer=torch.optim.SGD(t.parameters(), lr=0.1),
         steps=3)
    dump(p, net_input("paddle"), tmp_path / "p", loss_fn=loss,
         optimizer=paddle.optimizer.Momentum(0.1, momentum=0.9, parameters=p.parameters()), steps=3)
    result = compare_dumps(tmp_path / "t", tmp_path / "p")
    assert result.stage == "weight"
    assert [s.step for s in result.steps] == [0, 1]  # momentum shows from the second update on
    assert result.steps[0].loss.passed and len(result.steps[0].grads) == 7
    assert result.first.cause.startswith("The gradients agreed before the optimizer step, so this is an optimizer "
                                         "difference")
    assert "[AutoDiff] Diff found in Weights After Optimizer Step in step 1" in result.report
    assert "use_loss: `True`" in result.report and "use_opt: `True`" in result.report


def test_same_framework_dumps_and_initial_weights_that_differ(tmp_path):
    a, b = make_net("torch"), make_net("torch")
    dump(a, net_input("torch"), tmp_path / "a", diff_phase="forward")
    dump(b, net_input("torch"), tmp_path / "b", diff_phase="forward")
    result = compare_dumps(tmp_path / "a", tmp_path / "b")
    assert result.ref_label == "torch (base)" and result.test_label == "torch (raw)"
    # F.linear's inputs include the differing weights, so the call is not paired: the layer is named
    assert "[AutoDiff]     Route: TorchNet.linear1  (torch (base))" in result.report
    assert "[AutoDiff] NOTE: The dumps start from different weights: 5 of 7 tensors differ, first " \
           "`TorchNet.linear1.weight` vs `TorchNet.linear1.weight`" in result.report
    assert result.first.cause == ("The dumps' weights of `TorchNet.linear1` already differed before the first step: "
                                  "the models were not given the same weights.")
    with pytest.raises(PadiffError, match=r"diff_phase='both' compares gradients, but `.*a` holds none \(it was "
                                          r"dumped with diff_phase='forward'\)"):
        compare_dumps(tmp_path / "a", tmp_path / "b", diff_phase="both")
    same = compare_dumps(tmp_path / "a", tmp_path / "a", atol=0, rtol=0)
    assert same and "backward stage compared." not in same.report and "forward stage compared." in same.report


def test_dump_is_lazy_and_keeps_dtypes(tmp_path):
    model = make_net("torch").to(torch.bfloat16)
    x = {"x": net_input("torch")["x"].to(torch.bfloat16)}
    dump(model, x, tmp_path / "bf16")
    d = load_dump(tmp_path / "bf16")
    trace = d.trace(0)
    rec = trace.root.outputs[0][1]
    assert (rec.dtype, rec.shape) == ("bfloat16", (6, 4))
    assert "array" not in vars(rec)  # nothing held: read from disk when asked
    arr = rec.array
    assert isinstance(arr, np.memmap) and arr.dtype == np.float32 and not arr.flags.writeable
    np.testing.assert_array_equal(arr, model(**x).float().detach().numpy())
    manifest = json.load(open(tmp_path / "bf16" / "manifest.json"))
    assert (manifest["format"], manifest["version"], manifest["complete"]) == ("padiff-dump", 1, True)
    assert manifest["tensors"][0] == {"index": 0, "path": "TorchNet.linear1.weight", "is_param": True,
                                      "dtype": "bfloat16", "shape": [16, 8],
                                      "init": {"kind": "tensor", "dtype": "bfloat16", "shape": [16, 8],
                                               "file": "weights/t0.npy"}}
    # a tensor several calls saw (linear2's output is the model's) is stored once and read as one record
    linear2 = trace.root.children[-1]
    assert linear2.path == "TorchNet.linear2" and linear2.outputs[0][1] is rec
    nodes = manifest["steps"][0]["nodes"]
    assert nodes[0]["outputs"][0][1]["file"] == nodes[linear2.index]["outputs"][0][1]["file"]
    assert [n.label() for n in trace.root.children if n.kind == "net"] == [
        "TorchNet.linear1", "TorchNet.act", "TorchNet.proj", "TorchNet.cube", "TorchNet.norm", "TorchNet.linear2"]


def test_user_mistakes(tmp_path):
    model = make_net("paddle")
    with pytest.raises(PadiffError, match="single_step .* needs both models in one process: use padiff.auto_diff"):
        dump(model, net_input("paddle"), tmp_path / "d", single_step=True)
    with pytest.raises(PadiffError, match=r"padiff.dump records one model: pass this model's own loss_fn, not a "
                                          r"pair \(got a list of 2\)"):
        dump(model, net_input("paddle"), tmp_path / "d", loss_fn=[len, len])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("keep me")
    with pytest.raises(PadiffError, match=r"`.*mine` exists and is not a padiff dump: padiff.dump will not "
                                          r"overwrite it"):
        dump(model, net_input("paddle"), tmp_path / "mine")
    assert (tmp_path / "mine" / "data.txt").read_text() == "keep me"
    with pytest.raises(PadiffError, match=r"The paddle model raised ValueError inside layer `PaddleNet.linear1`"):
        dump(model, {"x": paddle.ones([2, 3])}, tmp_path / "bad")
    assert os.listdir(tmp_path) == ["mine"]  # nothing half-written left behind
    with pytest.raises(PadiffError, match=r"There is no padiff dump at `.*nowhere`: the folder does not exist"):
        compare_dumps(tmp_path / "nowhere", tmp_path / "mine")


def test_damaged_or_newer_dumps_are_refused(tmp_path):
    dump(make_net("paddle"), net_input("paddle"), tmp_path / "d")
    d = load_dump(tmp_path / "d")
    node = d.trace(0).root
    assert node.path == "PaddleNet" and d.framework == "paddle" and d.model_class == "PaddleNet"
    result = compare_dumps(tmp_path / "d", tmp_path / "d", report="html", atol=0, rtol=0)
    log_dir = os.environ["PADIFF_LOG_DIR"]
    assert result and result.log_files == [os.path.join(log_dir, name) for name in
                                           ("padiff_report.html", "padiff_metrics.csv", "padiff_metrics.json")]
    manifest = tmp_path / "d" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version":1', '"version":2'))
    with pytest.raises(PadiffError, match=r"The dump `.*d` has format version 2, made by a newer padiff; this padiff "
                                          r"reads version 1. Upgrade padiff to compare it."):
        load_dump(tmp_path / "d")
    manifest.write_text(manifest.read_text().replace('"version":2', '"version":1'))
    os.remove(tmp_path / "d" / "steps" / "0" / "n0_out0.npy")
    with pytest.raises(PadiffError, match=r"The padiff dump `.*d` is damaged: 1 array file\(s\) are missing \(first: "
                                          r"`steps/0/n0_out0.npy`\)"):
        load_dump(tmp_path / "d")


# --- writing: each array as it is recorded, by the model's thread or a worker ------------------------

def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _same_dumps(a, b):
    assert _files(a) == _files(b)
    for f in _files(a):
        if f != "manifest.json":
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for m in (ma, mb):
        m.pop("created")
        m["options"].pop("overlap")
        m["shown"].pop("overlap", None)
    assert ma == mb


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_worker_and_model_thread_write_the_same_dump(tmp_path, framework, monkeypatch):
    monkeypatch.setattr(npy_writer, "RING", 4096)  # a small ring: it wraps, fills, and the model's thread writes too
    model = make_net(framework)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1) if framework == "torch" else
           paddle.optimizer.SGD(0.1, parameters=model.parameters()))
    state = {k: v.detach().numpy().copy() if framework == "torch" else v.numpy() for k, v in model.state_dict().items()}
    for overlap in (False, True):
        if framework == "torch":
            model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
        else:
            model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
        dump(model, net_input(framework), tmp_path / f"d{overlap:d}", loss_fn=lambda y: (y * y).mean(), optimizer=opt,
             steps=2, overlap=overlap)
    _same_dumps(tmp_path / "d0", tmp_path / "d1")
    assert not [t for t in threading.enumerate() if t.name == "padiff-dump-writer"]
    d = tmp_path / "d1"
    assert not [f for f in _files(d) if os.path.basename(f).startswith("r")]  # every temporary name renamed
    for f in _files(d):
        if f.endswith(".npy"):  # numpy.save's bytes, C order, the tensor's own shape
            arr = np.load(d / f)
            buf = io.BytesIO()
            np.save(buf, arr)
            assert buf.getvalue() == (d / f).read_bytes(), f
    assert np.load(d / "steps" / "0" / "loss.npy").shape == ()
    manifest = json.loads((d / "manifest.json").read_text())
    root = manifest["steps"][0]["nodes"][0]["outputs"][0][1]
    first = load_dump(d).trace(0).root.outputs[0][1].array
    assert root["shape"] == [6, 4] and first.shape == (6, 4)
    assert compare_dumps(tmp_path / "d0", d, atol=0, rtol=0)


def test_dump_writes_arrays_while_the_model_runs_and_holds_none(tmp_path, monkeypatch):
    kept, seen = [], []
    keep = folder_writer.ArrayFiles.keep

    def spy(self, array, view=False):
        out = keep(self, array, view)
        kept.append((out, array.dtype, array.shape))
        return out

    monkeypatch.setattr(folder_writer.ArrayFiles, "keep", spy)
    model = make_net("torch")
    partial = str(tmp_path / "d") + ".partial-" + str(os.getpid())
    model.linear2.register_forward_hook(lambda *a: seen.append(_files(os.path.join(partial, "steps", "0"))))
    dump(model, net_input("torch"), tmp_path / "d", overlap=False)
    # by the last layer's call, the earlier calls' outputs were already in their files
    assert len(seen) == 1 and len(seen[0]) >= 5 and all(f.startswith("r") for f in seen[0])
    # what the run held for each array: its dtype and shape, no memory of its own
    assert kept and all(out.dtype == dt and out.shape == sh and not out.flags.writeable and not any(out.strides)
                        for out, dt, sh in kept)
    out = load_dump(tmp_path / "d").trace(0).root.outputs[0][1].array
    np.testing.assert_array_equal(out, model(**net_input("torch")).detach().numpy())
    assert hook_count(model) == 1 and grads_are_clear(model)  # the test's own hook is left


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("after", [3, 20])  # in the forward, in the backward
def test_a_failed_write_is_reported_and_leaves_nothing(tmp_path, monkeypatch, overlap, after):
    import errno

    calls = [0]
    real = npy_writer.write_file

    def full_disk(full, bufs):
        calls[0] += 1
        if calls[0] > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(full, bufs)

    monkeypatch.setattr(npy_writer, "write_file", full_disk)
    model = make_net("paddle")
    with pytest.raises(PadiffError, match=r"^Writing the dump `.*d` failed: No space left on device "
                                          r"\(disk full\?\)\.$"):
        dump(model, net_input("paddle"), tmp_path / "d", overlap=overlap)
    assert os.listdir(tmp_path) == []
    assert hook_count(model) == 0 and grads_are_clear(model)
    assert not [t for t in threading.enumerate() if t.name == "padiff-dump-writer"]


def test_write_npy_is_numpy_save(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = [base, base.T, base[:, ::2], np.float32(3.5).reshape(()), np.zeros((0, 3), np.int64),
              np.array([True, False]), base.astype(np.float16), (base + 1j).astype(np.complex64),
              base.astype(">f8")]
    for k, a in enumerate(arrays):
        npy_writer.write_npy(str(tmp_path / f"{k}.npy"), a)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a) if a.ndim else a)
        assert (tmp_path / f"{k}.npy").read_bytes() == buf.getvalue(), k


def test_compare_takes_opened_dumps_and_pairs_weights_on_shapes(tmp_path):
    t, p = _pair()
    dump(t, net_input("torch"), tmp_path / "t")
    dump(p, net_input("paddle"), tmp_path / "p")
    by_path = compare_dumps(tmp_path / "p", tmp_path / "t")
    opened = compare_dumps(load_dump(tmp_path / "p"), load_dump(tmp_path / "t"))
    assert by_path and opened and _tail(by_path.report, "[AutoDiff] =====") == _tail(opened.report, "[AutoDiff] =====")
    values = sys.modules["padiff.dump.offline"].shape_values(load_dump(tmp_path / "t"))
    shared = {id(v.base) for v in values.values()}
    largest = max(v.nbytes for v in values.values())
    assert len(shared) == 1 and next(iter(values.values())).base.nbytes == largest  # one buffer, the largest tensor
    assert all(not v.flags.writeable and v.T.flags.c_contiguous for v in values.values())
