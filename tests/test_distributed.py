"""Distributed runs: per-rank dumps under torch.distributed and paddle.distributed (gloo, CPU),
ranks paired between two runs, tensor-parallel shards gathered by their layouts.

Every run is a set of worker processes on the loopback interface, on a port this file finds
free; each worker imports only its own framework, and is killed (with its whole group) when the
run fails or overruns its time. The runs are made once per module (fixtures) and compared by the
tests, in this process or by `padiff compare` in a subprocess."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from padiff import PadiffError
from padiff.dump import compare_dumps, dump, load_dump
from padiff.dump.distributed_result import DistributedResult
from padiff.dump.ranks import RankedDump

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 90  # seconds for one distributed run (both ranks); they take 5-15 s here

# The torch models: the single-process references (dumped in this process) and the torch
# workers' models, one source for both.
TORCH_MODELS = textwrap.dedent('''
    import torch

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear1 = torch.nn.Linear(8, 16)
            self.act = torch.nn.ReLU()
            self.norm = torch.nn.LayerNorm(16)
            self.linear2 = torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.linear2(self.norm(self.act(self.linear1(x))))

    class TorchAttention(torch.nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads, self.head_dim = heads, dim // heads
            self.q_proj = torch.nn.Linear(dim, dim)
            self.k_proj = torch.nn.Linear(dim, dim)
            self.v_proj = torch.nn.Linear(dim, dim)
            self.o_proj = torch.nn.Linear(dim, dim)

        def forward(self, x):
            b, s, _ = x.shape
            split = lambda t: t.reshape(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)
            q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
            scores = torch.matmul(q, k.permute(0, 1, 3, 2)) * (self.head_dim ** -0.5)
            out = torch.matmul(torch.nn.functional.softmax(scores, dim=-1), v)
            return self.o_proj(out.permute(0, 2, 1, 3).reshape(b, s, self.heads * self.head_dim))

    class TorchMLP(torch.nn.Module):
        def __init__(self, dim=16, hidden=32, down_bias=True, gelu="none"):
            super().__init__()
            self.up = torch.nn.Linear(dim, hidden)
            self.act = torch.nn.GELU(approximate=gelu)
            self.down = torch.nn.Linear(hidden, dim, bias=down_bias)

        def forward(self, x):
            return self.down(self.act(self.up(x)))

    class TorchBlock(torch.nn.Module):
        def __init__(self, vocab=32, dim=16, heads=4, hidden=32, gelu="none"):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, dim)
            self.ln1 = torch.nn.LayerNorm(dim)
            self.attn = TorchAttention(dim, heads)
            self.ln2 = torch.nn.LayerNorm(dim)
            self.mlp = TorchMLP(dim, hidden, gelu=gelu)

        def forward(self, ids):
            x = self.embed(ids)
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
''')
exec(TORCH_MODELS)

# The worker: `python worker.py KIND RANK WORLD PORT DATA OUT MODELS`. KIND is torch_dp, paddle_dp or
# paddle_tp. DATA is an .npz of weights (torch layout) and inputs written by the test.
WORKER = textwrap.dedent('''
    import os, socket, sys, time
    import numpy as np

    kind, rank, world, port, data, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \\
        sys.argv[5], sys.argv[6]
    D = dict(np.load(data))

    def wait_for_master():
        # rank 0 listens first; the others connect once it does (no retry pauses)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)

    if kind == "torch_dp":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
        import torch, torch.distributed as dist
        import padiff
        if rank:
            wait_for_master()
        dist.init_process_group("gloo", init_method="env://")
        exec(open(sys.argv[7]).read())  # TorchNet, TorchBlock

        for prefix, model, inp, name in (("dp.", TorchNet(), torch.tensor(D[f"x{rank}"]), "dp_torch"),
                                         ("tp.", TorchBlock(), {"ids": torch.tensor(D["ids"])}, "dp_block_torch")):
            model.load_state_dict({k[len(prefix):]: torch.tensor(v) for k, v in D.items() if k.startswith(prefix)})
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            padiff.dump(ddp, inp, f"{out}/{name}", loss_fn=lambda y: (y * y).mean(), optimizer=opt, steps=2)
        dist.barrier()
        dist.destroy_process_group()
        sys.exit(0)

    os.environ.update(PADDLE_TRAINER_ID=str(rank), PADDLE_TRAINERS_NUM=str(world), PADDLE_DISTRI_BACKEND="gloo",
                      PADDLE_TRAINER_ENDPOINTS=",".join(f"127.0.0.1:{port + k}" for k in range(world)),
                      PADDLE_CURRENT_ENDPOINT=f"127.0.0.1:{port + rank}", PADDLE_MASTER=f"127.0.0.1:{port}")
    import paddle, paddle.distributed as dist
    import padiff
    paddle.set_device("cpu")
    if rank:
        wait_for_master()

    def load(layer, state):
        layer.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})

    if kind == "paddle_dp":
        dist.init_parallel_env()

        class Net(paddle.nn.Layer):
            def __init__(self, bug=False):
                super().__init__()
                self.linear1 = paddle.nn.Linear(8, 16)
                self.act = paddle.nn.LeakyReLU(0.1) if bug else paddle.nn.ReLU()
                self.norm = paddle.nn.LayerNorm(16)
                self.linear2 = paddle.nn.Linear(16, 4)
            def forward(self, x):
                return self.linear2(self.norm(self.act(self.linear1(x))))

        state = {k[3:]: (v.T if k.endswith("linear1.weight") or k.endswith("linear2.weight") else v)
                 for k, v in D.items() if k.startswith("dp.")}
        for name, bug in (("dp_paddle", False), ("dp_paddle_bug", rank == 1)):  # the bug: rank 1 only
            net = Net(bug)
            load(net, state)
            model = paddle.DataParallel(net)
            opt = paddle.optimizer.SGD(0.1, parameters=model.parameters())
            padiff.dump(model, paddle.to_tensor(D[f"x{rank}"]), f"{out}/{name}", loss_fn=lambda y: (y * y).mean(),
                        optimizer=opt, steps=2)
        dist.barrier()
        sys.exit(0)

    # paddle_tp: 2-way tensor parallel, fleet's hybrid topology; the layers are paddle's own
    # parallel classes, with forwards whose collectives are written here (on CPU, paddle 3.3.1's
    # own forwards stop: c_identity has no CPU kernel, ProcessGroupGloo has no calc-stream all_reduce)
    from paddle.autograd import PyLayer
    from paddle.distributed import fleet
    from paddle.distributed.fleet.meta_parallel import (ColumnParallelLinear, RowParallelLinear,
                                                        VocabParallelEmbedding)
    F = paddle.nn.functional
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": 1, "mp_degree": world, "pp_degree": 1}
    fleet.init(is_collective=True, strategy=strategy)
    group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
    tp, r = group.nranks, group.rank

    class CopyToTP(PyLayer):  # identity; the gradient all-reduced
        @staticmethod
        def forward(ctx, x):
            return x.clone()
        @staticmethod
        def backward(ctx, g):
            g = g.clone()
            dist.all_reduce(g, group=group)
            return g

    class ReduceFromTP(PyLayer):  # all-reduce; the gradient as it is
        @staticmethod
        def forward(ctx, x):
            y = x.clone()
            dist.all_reduce(y, group=group)
            return y
        @staticmethod
        def backward(ctx, g):
            return g

    class Column(ColumnParallelLinear):
        def forward(self, x):
            return F.linear(CopyToTP.apply(x), self.weight, self.bias)

    class Row(RowParallelLinear):
        def forward(self, x):
            return ReduceFromTP.apply(F.linear(x, self.weight)) + self.bias

    class VocabEmbedding(VocabParallelEmbedding):
        def forward(self, ids):
            n = self.weight.shape[0]
            outside = (ids < self.vocab_start_index) | (ids >= self.vocab_start_index + n)
            local = paddle.where(outside, paddle.zeros_like(ids), ids - self.vocab_start_index)
            out = F.embedding(local, self.weight) * (~outside).astype("float32").unsqueeze(-1)
            return ReduceFromTP.apply(out)

    class Attention(paddle.nn.Layer):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads, self.head_dim = heads // tp, dim // heads
            self.q_proj = Column(dim, dim, has_bias=True, gather_output=False)
            self.k_proj = Column(dim, dim, has_bias=True, gather_output=False)
            self.v_proj = Column(dim, dim, has_bias=True, gather_output=False)
            self.o_proj = Row(dim, dim, has_bias=True, input_is_parallel=True)
        def forward(self, x):
            b, s, _ = x.shape
            split = lambda t: t.reshape([b, s, self.heads, self.head_dim]).transpose([0, 2, 1, 3])
            q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
            scores = paddle.matmul(q, k.transpose([0, 1, 3, 2])) * (self.head_dim ** -0.5)
            out = paddle.matmul(F.softmax(scores, axis=-1), v)
            return self.o_proj(out.transpose([0, 2, 1, 3]).reshape([b, s, self.heads * self.head_dim]))

    class MLP(paddle.nn.Layer):
        def __init__(self, dim, hidden):
            super().__init__()
            self.up = Column(dim, hidden, has_bias=True, gather_output=False)
            self.act = paddle.nn.GELU()
            self.down = Row(hidden, dim, has_bias=True, input_is_parallel=True)
        def forward(self, x):
            return self.down(self.act(self.up(x)))

    class Block(paddle.nn.Layer):
        def __init__(self, vocab=32, dim=16, heads=4, hidden=32):
            super().__init__()
            self.embed = VocabEmbedding(vocab, dim)
            self.ln1 = paddle.nn.LayerNorm(dim)
            self.attn = Attention(dim, heads)
            self.ln2 = paddle.nn.LayerNorm(dim)
            self.mlp = MLP(dim, hidden)
        def forward(self, ids):
            x = self.embed(ids)
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class PlainMLP(paddle.nn.Layer):  # plain Linears holding shards; the layouts declared by tp_layout
        def __init__(self, dim=16, hidden=32):
            super().__init__()
            self.up = paddle.nn.Linear(dim, hidden // tp)
            self.act = paddle.nn.GELU()
            self.down = paddle.nn.Linear(hidden // tp, dim, bias_attr=False)
        def forward(self, x):
            return ReduceFromTP.apply(self.down(self.act(self.up(CopyToTP.apply(x)))))

    def shard(name, v):  # the torch reference's tensor -> this rank's shard, in paddle's layout
        layout = D["layout." + name] if "layout." + name in D else None
        layout = str(layout) if layout is not None else ""
        if v.ndim == 2 and layout in ("column", "row"):
            v = v.T
        if layout == "column":
            return np.split(v, tp, axis=-1)[r]
        if layout in ("row", "vocab") and v.ndim == 2:
            return np.split(v, tp, axis=0)[r]
        return v

    for prefix, model, name, extra in (("tp.", Block(), "tp_paddle", {}),
                                       ("mlp.", PlainMLP(), "tp_plain", {"tp_layout": {"up": "column", "down": "row"}})):
        load(model, {k[len(prefix):]: shard(k, v) for k, v in D.items() if k.startswith(prefix)})
        inp = {"ids": paddle.to_tensor(D["ids"])} if prefix == "tp." else paddle.to_tensor(D["h"])
        opt = paddle.optimizer.SGD(0.1, parameters=model.parameters())
        padiff.dump(model, inp, f"{out}/{name}", loss_fn=lambda y: (y * y).mean(), optimizer=opt, steps=2, **extra)
    dist.barrier()
    sys.exit(0)
''')


TP_LAYOUTS = {"embed.weight": "vocab", "attn.q_proj": "column", "attn.k_proj": "column", "attn.v_proj": "column",
              "attn.o_proj": "row", "mlp.up": "column", "mlp.down": "row"}


def _layout_of(name: str) -> str:
    for key, layout in TP_LAYOUTS.items():
        if name.startswith(key):
            return layout
    return ""


def _loss(y):
    return (y * y).mean()


# --- running workers -------------------------------------------------------------------------------

def free_port(span: int = 1) -> int:
    """A loopback port with ``span - 1`` free ports after it (paddle gives each rank its own)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span >= 65535:
            continue
        taken = False
        for p in range(port + 1, port + span):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    taken = True
                    break
        if not taken:
            return port
    raise RuntimeError("no free loopback port")


def run_ranks(kind: str, world: int, data: str, out: str, tmp) -> float:
    """Run ``world`` workers of ``kind`` to the end; on a failure or overrun kill every one (and
    its children) and fail with their output. Returns the seconds taken."""
    script = tmp / "worker.py"
    script.write_text(WORKER)
    (tmp / "torch_models.py").write_text(TORCH_MODELS)
    port = free_port(world)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", GLOG_minloglevel="2", FLAGS_call_stack_level="0",
               GLOO_SOCKET_IFNAME="lo")  # gloo's connections between ranks: loopback too
    procs, logs = [], []
    started = time.time()
    try:
        for rank in range(world):
            log = open(tmp / f"{kind}_rank{rank}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, str(script), kind, str(rank), str(world), str(port), data,
                                           out, str(tmp / "torch_models.py")], cwd=str(tmp), env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        deadline = started + RUN_TIMEOUT
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
        codes = [p.returncode for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    if codes != [0] * world:
        text = []
        for rank, log in enumerate(logs):
            log.seek(0)
            text.append(f"--- rank {rank} ---\n" + log.read()[-3000:])
        for log in logs:
            log.close()
        pytest.fail(f"{kind} run {'timed out' if codes is None else f'exited with {codes}'}:\n" + "\n".join(text))
    for log in logs:
        log.close()
    return time.time() - started


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every distributed run this file compares, made once: data-parallel in torch and in paddle
    (clean, and with a bug on rank 1 only), 2-way tensor-parallel in paddle (framework classes,
    and plain Linears declared by tp_layout), and torch single-process references."""
    tmp = tmp_path_factory.mktemp("distributed")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    data = {}
    net = TorchNet()
    data.update({f"dp.{k}": v.detach().numpy().copy() for k, v in net.state_dict().items()})
    for rank in range(2):
        data[f"x{rank}"] = rng.standard_normal((3, 8)).astype(np.float32)
    block, mlp = TorchBlock(), TorchMLP(down_bias=False)
    for prefix, model in (("tp.", block), ("mlp.", mlp)):
        for k, v in model.state_dict().items():
            data[prefix + k] = v.detach().numpy().copy()  # the dumps below train the models
            layout = _layout_of(k if prefix == "tp." else "mlp." + k)
            if layout:
                data["layout." + prefix + k] = np.array(layout)
    data["ids"] = rng.integers(0, 32, (2, 5)).astype(np.int64)
    data["h"] = rng.standard_normal((2, 5, 16)).astype(np.float32)
    np.savez(tmp / "data.npz", **data)
    out = str(tmp / "out")
    times = {kind: run_ranks(kind, 2, str(tmp / "data.npz"), out, tmp)
             for kind in ("torch_dp", "paddle_dp", "paddle_tp")}
    # the single-process torch references, dumped here
    dump(net, torch.tensor(data["x1"]), f"{out}/single_torch_x1", loss_fn=_loss)
    dump(block, {"ids": torch.tensor(data["ids"])}, f"{out}/tp_torch", loss_fn=_loss,
         optimizer=torch.optim.SGD(block.parameters(), lr=0.1), steps=2)
    dump(mlp, torch.tensor(data["h"]), f"{out}/mlp_torch", loss_fn=_loss,
         optimizer=torch.optim.SGD(mlp.parameters(), lr=0.1), steps=2)
    tanh = TorchBlock(gelu="tanh")  # a port's usual slip, between the sharded layers
    tanh.load_state_dict({k[3:]: torch.tensor(v) for k, v in data.items() if k.startswith("tp.")})
    dump(tanh, {"ids": torch.tensor(data["ids"])}, f"{out}/tp_torch_tanh", loss_fn=_loss)
    return {"out": out, "times": times, "tmp": tmp}


def _compare(a, b, capsys, **kwargs):
    result = compare_dumps(a, b, **kwargs)
    return result, capsys.readouterr().out


# --- writing ------------------------------------------------------------------------------------------

def test_each_rank_writes_its_own_dump_tagged_with_its_layout(runs):
    out = runs["out"]
    assert sorted(os.listdir(f"{out}/dp_torch")) == ["rank0", "rank1"]
    for rank in range(2):
        with open(f"{out}/dp_torch/rank{rank}/manifest.json") as fh:
            m = json.load(fh)
        d = m["distributed"]
        assert (d["rank"], d["world_size"], d["backend"]) == (rank, 2, "gloo")
        assert d["from"] == "torch.distributed" and d["run"] == m["distributed"]["run"]
        assert d["groups"] == {"tp": [rank], "dp": [0, 1]} and d["degrees"] == {"tp": 1, "dp": 2}
        assert m["model"]["class"] == "TorchNet"  # recorded inside DistributedDataParallel
        assert any("inside DistributedDataParallel" in n for n in m["notes"])
        assert m["layers"][0]["path"] == "TorchNet"
    with open(f"{out}/tp_paddle/rank1/manifest.json") as fh:
        m = json.load(fh)
    d = m["distributed"]
    assert d["from"] == "paddle.distributed (fleet hybrid parallel groups)"
    assert d["groups"]["tp"] == [0, 1] and d["groups"]["dp"] == [1] and d["degrees"]["tp"] == 2
    assert m["linear_weight_layout"] == "in_out"
    tp = {e["path"]: e["tp"] for e in m["layers"] if e.get("tp")}
    assert tp == {"Block.embed": {"layout": "vocab", "from": "class VocabParallelEmbedding"},
                  "Block.attn.q_proj": {"layout": "column", "from": "class ColumnParallelLinear"},
                  "Block.attn.k_proj": {"layout": "column", "from": "class ColumnParallelLinear"},
                  "Block.attn.v_proj": {"layout": "column", "from": "class ColumnParallelLinear"},
                  "Block.attn.o_proj": {"layout": "row", "from": "class RowParallelLinear"},
                  "Block.mlp.up": {"layout": "column", "from": "class ColumnParallelLinear"},
                  "Block.mlp.down": {"layout": "row", "from": "class RowParallelLinear"}}
    with open(f"{out}/tp_plain/rank0/manifest.json") as fh:
        m = json.load(fh)
    assert {e["path"]: e["tp"]["from"] for e in m["layers"] if e.get("tp")} == {
        "PlainMLP.up": "tp_layout['up']", "PlainMLP.down": "tp_layout['down']"}
    ranked = load_dump(f"{out}/tp_paddle")
    assert isinstance(ranked, RankedDump) and ranked.replicas() == [[0, 1]] and ranked.tp == 2


# --- pairing ranks ------------------------------------------------------------------------------------

def test_clean_data_parallel_runs_agree_on_every_rank(runs, capsys):
    out = runs["out"]
    result, text = _compare(f"{out}/dp_torch", f"{out}/dp_paddle", capsys)
    assert isinstance(result, DistributedResult) and result == True  # noqa: E712
    assert [r.label for r in result.ranks] == ["rank 0", "rank 1"] and result.agreeing == ["rank 0", "rank 1"]
    assert [(r.ranks_a, r.ranks_b) for r in result.ranks] == [([0], [0]), ([1], [1])]
    assert "Both ran the same layout: each rank is compared with the same rank of the other run" in text
    assert "    rank 0  aligned\n" in text and "    rank 1  aligned\n" in text
    assert "Every compared rank agrees (2 pair(s))." in text and text.rstrip().endswith("SUCCESS !!!")
    # the same in two worker processes (fresh interpreters), one pair each
    result, text = _compare(f"{out}/dp_torch", f"{out}/dp_paddle", capsys, jobs=2)
    assert result == True and "in 2 worker processes, one pair each at a time" in text  # noqa: E712
    assert [r.label for r in result.ranks] == ["rank 0", "rank 1"] and result.ranks[0].result is None


def test_a_bug_on_rank_1_only_is_reported_as_rank_1_at_its_layer(runs, capsys):
    out = runs["out"]
    result, text = _compare(f"{out}/dp_torch", f"{out}/dp_paddle_bug", capsys)
    assert result == False  # noqa: E712
    first = result.first
    assert first.label == "rank 1" and first.stage == "forward"
    assert first.test_path == "Net.act" and first.ref_path == "TorchNet.act"
    rank0 = result.ranks[0]
    # rank 0 ran clean; the gradient all-reduce carries rank 1's difference into its parameters
    assert not rank0.passed and rank0.stage == "grad" and "data-parallel gradient all-reduce" in rank0.cause
    assert "===== rank 1: the first to diverge; its report: =====" in text
    assert "Diverged first: rank 1, at `Net.act` (Forward Stage of step 0)." in text
    assert "    rank 1  NOT ALIGNED  Forward Stage of step 0: output at `Net.act` (LeakyReLU) vs `TorchNet.act` (ReLU)" in text
    assert text.rstrip().endswith("FAILED !!!")
    assert os.path.isfile(os.path.join(result.ranks[1].log_dir, "report.txt"))


def test_a_single_process_dump_is_compared_with_the_rank_it_names(runs, capsys):
    out = runs["out"]
    # data parallel: each rank had its own batch; the torch run had rank 1's
    result, text = _compare(f"{out}/single_torch_x1", f"{out}/dp_paddle", capsys, rank=1, diff_phase="forward")
    assert result == True and [r.label for r in result.ranks] == ["rank 1"]  # noqa: E712
    assert "is a single-process run: it is compared with rank 1 of" in text
    result, text = _compare(f"{out}/single_torch_x1", f"{out}/dp_paddle", capsys, diff_phase="forward")
    assert result == False and [r.label for r in result.ranks] == ["rank 0"]  # noqa: E712
    assert "(rank=... chooses another rank, rank='all' every one)" in text
    result, _ = _compare(f"{out}/single_torch_x1", f"{out}/dp_paddle", capsys, rank="all", diff_phase="forward")
    assert [r.passed for r in result.ranks] == [False, True]


# --- tensor parallel ----------------------------------------------------------------------------------

def test_tensor_parallel_paddle_block_agrees_with_single_process_torch(runs, capsys):
    out = runs["out"]
    result, text = _compare(f"{out}/tp_torch", f"{out}/tp_paddle", capsys)
    assert result == True, text  # noqa: E712
    (pair,) = result.ranks
    assert pair.label == "ranks 0, 1 gathered" and pair.ranks_b == [0, 1]
    assert "compared with rank 0's tensor-parallel group, gathered into one unsharded model" in text
    assert ("ranks 0, 1 of `" in pair.report and "ran tensor-parallel; their shards were gathered: 1 vocab-parallel, "
            "4 column-parallel, 2 row-parallel layer(s)." in pair.report)
    detail = pair.result
    fwd = {(f.test_path, f.what) for s in detail.steps for f in s.forward}
    # the layers' outputs, the attention's framework calls between the sharded layers, and the MLP
    assert ("Block.mlp.up", "output") in fwd and ("Block.mlp.act", "output") in fwd
    assert ("Block.attn.o_proj", "output") in fwd and ("Block.embed", "output") in fwd
    assert any(p.startswith("Block.attn >") and "softmax" in p for p, _ in fwd), sorted(fwd)
    grads = {f.test_path for s in detail.steps for f in s.grads}
    assert {"Block.attn.q_proj.weight", "Block.mlp.down.weight", "Block.embed.weight"} <= grads
    weights = [f for s in detail.steps for f in s.weights]
    assert len(detail.steps) == 2 and weights and all(f.passed for f in weights)
    gathered = [f for s in detail.steps for f in s.forward if f.test_path == "Block.mlp.up"]
    assert gathered and gathered[0].diff.shape_b == (2, 5, 32)  # two [2, 5, 16] shards on the last dim


def test_layouts_declared_by_tp_layout_and_partial_outputs_summed(runs, capsys):
    out = runs["out"]
    result, text = _compare(f"{out}/mlp_torch", f"{out}/tp_plain", capsys)
    assert result == True, text  # noqa: E712
    # the same shards gathered by a mapping at compare time: the dump's own tp_layout is replaced
    result, _ = _compare(f"{out}/mlp_torch", f"{out}/tp_plain", capsys, tp_layout={"*.up": "column", "*.down": "row"})
    assert result == True  # noqa: E712


def test_a_row_parallel_layer_treated_as_column_parallel_is_named(runs, capsys):
    out = runs["out"]
    with pytest.raises(PadiffError) as err:
        compare_dumps(f"{out}/tp_torch", f"{out}/tp_paddle", tp_layout={"mlp.down": "column"})
    msg = str(err.value)
    assert "`Block.mlp.down` is gathered as column-parallel (from its tp_layout['mlp.down'])" in msg
    assert "its outputs are the same on every rank (all-reduced), as a row-parallel layer's are" in msg
    assert "its layout is 'row' (tp_layout={'mlp.down': 'row'})" in msg
    assert "o_proj" not in msg  # only the wrong one


def test_a_bug_between_sharded_layers_is_found_in_the_gathered_activations(runs, capsys):
    out = runs["out"]
    result, _ = _compare(f"{out}/tp_torch_tanh", f"{out}/tp_paddle", capsys)
    assert result == False  # noqa: E712
    first = result.first
    assert first.stage == "forward" and first.label == "ranks 0, 1 gathered"
    assert (first.test_path, first.ref_path) == ("Block.mlp.act > paddle.nn.functional.gelu",
                                                 "TorchBlock.mlp.act > torch.nn.functional.gelu")
    assert first.result.first.diff.shape_b == (2, 5, 32)  # the GELU's output, gathered from two shards


def test_runs_of_different_layouts_are_compared_replica_by_replica(runs, capsys):
    out = runs["out"]
    # torch: data-parallel 2 (each rank a whole replica); paddle: tensor-parallel 2 (one replica)
    result, text = _compare(f"{out}/dp_block_torch", f"{out}/tp_paddle", capsys)
    assert result == True, text  # noqa: E712
    assert [(r.label, r.ranks_a, r.ranks_b) for r in result.ranks] == [("replica 0 (rank 0 / ranks 0, 1)", [0], [0, 1])]
    assert "The two runs used different layouts: each run's tensor-parallel group is gathered" in text
    assert "dp_block_torch` holds 2 model replica(s) (data-parallel) and `" in text
    assert "tp_paddle` 1: the first 1 are compared." in text and "    replica 0 (rank 0 / ranks 0, 1)  aligned" in text


def test_shard_dims_between_layers_are_told_by_the_other_run():
    # a value no layout rule covers is whole where its counterpart has its shape, sharded along
    # the one dim where the counterpart is tp times larger; two runs at other tensor-parallel
    # degrees (2 and 4) are both gathered, and the dim is the one where both shapes meet
    from padiff.dump.gathered_record import GatheredRecord
    from padiff.dump.shard_dims import resolve_pair
    from padiff.record.trace import TensorRecord

    def sharded(shape, t):
        return GatheredRecord([TensorRecord(None, "float32", shape) for _ in range(t)])

    whole = TensorRecord(None, "float32", (2, 4, 5, 5))
    for shard, t, mode in (((2, 2, 5, 5), 2, ("cat", 1)), ((2, 4, 5, 5), 2, "whole"), ((2, 4, 5, 5), 4, "whole")):
        rec = sharded(shard, t)
        resolve_pair(whole, rec)
        assert rec.mode == mode and rec.shape == (2, 4, 5, 5)
    a, b = sharded((2, 2, 5, 5), 2), sharded((2, 1, 5, 5), 4)
    resolve_pair(a, b)
    assert (a.mode, b.mode, a.shape, b.shape) == (("cat", 1), ("cat", 1), (2, 4, 5, 5), (2, 4, 5, 5))
    odd = sharded((3, 7), 2)  # nothing of the other run's shape: undecided, later left out
    resolve_pair(whole, odd)
    assert odd.mode is None


def test_runs_of_one_tensor_parallel_degree_are_compared_shard_by_shard(runs, capsys):
    out = runs["out"]
    result, text = _compare(f"{out}/tp_paddle", f"{out}/tp_paddle", capsys)
    assert result == True and [r.label for r in result.ranks] == ["rank 0", "rank 1"]  # noqa: E712
    assert "Both ran the same layout" in text


# --- the command line, in worker processes ---------------------------------------------------------

def test_cli_compares_ranks_in_parallel_processes(runs):
    out = runs["out"]
    env = dict(os.environ, PYTHONPATH=ROOT, PADIFF_LOG_DIR=str(runs["tmp"] / "cli_log"))
    code = ("import sys\nfrom padiff.cli import main\nrc = main(sys.argv[1:])\n"
            "assert not {'torch', 'paddle'} & set(sys.modules), 'a framework was imported'\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "compare", f"{out}/dp_torch", f"{out}/dp_paddle_bug", "--jobs",
                           "2"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "2 pair(s) to compare, in 2 worker processes, one pair each at a time." in proc.stdout
    assert "Diverged first: rank 1, at `Net.act` (Forward Stage of step 0)." in proc.stdout
    assert os.path.isfile(runs["tmp"] / "cli_log" / "rank1" / "report.txt")
    proc = subprocess.run([sys.executable, "-c", code, "compare", f"{out}/tp_torch", f"{out}/tp_paddle", "--tp-layout",
                           "mlp.down=column"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "`Block.mlp.down` is gathered as column-parallel" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", code, "compare", f"{out}/single_torch_x1", f"{out}/dp_paddle",
                           "--rank", "1", "--diff-phase", "forward"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0 and "    rank 1  aligned" in proc.stdout, proc.stdout + proc.stderr


def test_interrupted_rank_and_stale_ranks_are_refused(runs, tmp_path):
    import shutil

    from padiff.dump.ranks import prepare_folder

    out = runs["out"]
    folder = tmp_path / "dp"
    shutil.copytree(f"{out}/dp_torch", folder)
    os.rename(folder / "rank1", folder / "rank1.partial-999999")  # killed while writing
    with pytest.raises(PadiffError, match=r"rank1` was interrupted"):
        compare_dumps(str(folder), f"{out}/dp_paddle")
    shutil.copytree(f"{out}/dp_torch/rank1", folder / "rank1")
    shutil.rmtree(folder / "rank1.partial-999999")
    # rank 3 of an earlier 4-rank run into the same folder
    shutil.copytree(f"{out}/dp_torch/rank1", folder / "rank3")
    manifest = json.loads((folder / "rank3" / "manifest.json").read_text())
    manifest["distributed"].update(rank=3, world_size=4)
    (folder / "rank3" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PadiffError, match=r"come from different runs: rank 0 ran torch on 2 ranks, rank 3 torch on 4"):
        compare_dumps(str(folder), f"{out}/dp_paddle")
    prepare_folder(str(folder), 1, 2)  # only rank 0 tidies up
    assert (folder / "rank3").exists()
    prepare_folder(str(folder), 0, 2)  # as padiff.dump on rank 0 of a 2-rank run does
    assert sorted(os.listdir(folder)) == ["rank0", "rank1"]
    assert compare_dumps(str(folder), f"{out}/dp_paddle", diff_phase="forward") == True  # noqa: E712
    # a single-process dump in the folder a distributed run is given is refused, not mixed in
    with pytest.raises(PadiffError, match=r"holds a single-process padiff dump, and this run is distributed"):
        prepare_folder(f"{out}/tp_torch", 0, 2)
