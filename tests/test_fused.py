"""Fused projections: separate q/k/v (gate/up) Linears against one fused Linear, found by
structure, the row layout found by probing, checked with zero glue in both directions, across
frameworks and within one; a register_rule with two source tensors."""

from __future__ import annotations

import io
import math

import numpy as np
import paddle
import paddle.nn.functional as PF
import pytest
import torch
import torch.nn.functional as TF

from padiff import assign_weight, auto_diff, register_rule
from padiff.weights import rules as rules_mod
from padiff.weights.fused import FusedGroup, Layout, brace, candidates
from padiff.weights.rules import Converted

D, H, K, HD, INTER = 32, 4, 2, 8, 48  # hidden, heads, kv heads, head dim, MLP width
G = H // K
B, S = 2, 5


# --- the models, in both frameworks ---------------------------------------------------------------
# qkv: None (q_proj, k_proj, v_proj), "concat" ([q | k | v]) or "heads" (per kv head:
# [G*HD of q | HD of k | HD of v] for each of the K kv heads, as paddleformers' Gemma3/Qwen2).
# mlp: None (gate_proj, up_proj), "gate_up" ([gate | up]) or "up_gate" ([up | gate]).
# bug: "v_bias" adds 0.05 to v (forward; a constant added to k would not show: softmax ignores
# it); "grad" scales the fused (or k_proj) weight's gradient
# by 1.1 without changing any forward value.


def _split_qkv(y, qkv, split):
    if qkv == "concat":
        return split(y, [H * HD, K * HD, K * HD])
    y = y.reshape([y.shape[0], y.shape[1], K, (G + 2) * HD])
    return split(y, [G * HD, HD, HD])


class TorchAttention(torch.nn.Module):
    def __init__(self, qkv=None, bias=False, bug=None):
        super().__init__()
        self.qkv, self.bug = qkv, bug
        if qkv is None:
            self.q_proj = torch.nn.Linear(D, H * HD, bias=bias)
            self.k_proj = torch.nn.Linear(D, K * HD, bias=bias)
            self.v_proj = torch.nn.Linear(D, K * HD, bias=bias)
        else:
            self.qkv_proj = torch.nn.Linear(D, (H + 2 * K) * HD, bias=bias)
        self.o_proj = torch.nn.Linear(H * HD, D, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        if self.qkv is None:
            kw = self.k_proj.weight * 1.1 - (self.k_proj.weight * 0.1).detach() if self.bug == "grad" else None
            k = self.k_proj(x) if kw is None else TF.linear(x, kw, self.k_proj.bias)
            q, v = self.q_proj(x), self.v_proj(x)
        else:
            w = self.qkv_proj.weight
            y = self.qkv_proj(x) if self.bug != "grad" else TF.linear(x, w * 1.1 - (w * 0.1).detach(),
                                                                         self.qkv_proj.bias)
            q, k, v = _split_qkv(y, self.qkv, lambda t, sizes: torch.split(t, sizes, dim=-1))
        if self.bug == "v_bias":
            v = v + 0.05
        q = q.reshape(b, s, H, HD).transpose(1, 2)
        k = k.reshape(b, s, K, HD).transpose(1, 2).repeat_interleave(G, dim=1)
        v = v.reshape(b, s, K, HD).transpose(1, 2).repeat_interleave(G, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD), dim=-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(b, s, H * HD))


class PaddleAttention(paddle.nn.Layer):
    def __init__(self, qkv=None, bias=False, bug=None):
        super().__init__()
        self.qkv, self.bug = qkv, bug
        battr = None if bias else False
        if qkv is None:
            self.q_proj = paddle.nn.Linear(D, H * HD, bias_attr=battr)
            self.k_proj = paddle.nn.Linear(D, K * HD, bias_attr=battr)
            self.v_proj = paddle.nn.Linear(D, K * HD, bias_attr=battr)
        else:
            self.qkv_proj = paddle.nn.Linear(D, (H + 2 * K) * HD, bias_attr=battr)
        self.o_proj = paddle.nn.Linear(H * HD, D, bias_attr=False)

    def forward(self, x):
        b, s = x.shape[0], x.shape[1]
        if self.qkv is None:
            kw = self.k_proj.weight * 1.1 - (self.k_proj.weight * 0.1).detach() if self.bug == "grad" else None
            k = self.k_proj(x) if kw is None else PF.linear(x, kw, self.k_proj.bias)
            q, v = self.q_proj(x), self.v_proj(x)
        else:
            w = self.qkv_proj.weight
            y = self.qkv_proj(x) if self.bug != "grad" else PF.linear(x, w * 1.1 - (w * 0.1).detach(),
                                                                         self.qkv_proj.bias)
            q, k, v = _split_qkv(y, self.qkv, lambda t, sizes: paddle.split(t, sizes, axis=-1))
        if self.bug == "v_bias":
            v = v + 0.05
        q = q.reshape([b, s, H, HD]).transpose([0, 2, 1, 3])
        k = k.reshape([b, s, K, HD]).transpose([0, 2, 1, 3]).repeat_interleave(G, axis=1)
        v = v.reshape([b, s, K, HD]).transpose([0, 2, 1, 3]).repeat_interleave(G, axis=1)
        att = PF.softmax(q @ k.transpose([0, 1, 3, 2]) / math.sqrt(HD), axis=-1)
        return self.o_proj((att @ v).transpose([0, 2, 1, 3]).reshape([b, s, H * HD]))


class TorchMLP(torch.nn.Module):
    def __init__(self, mlp=None):
        super().__init__()
        self.mlp = mlp
        if mlp is None:
            self.gate_proj = torch.nn.Linear(D, INTER, bias=False)
            self.up_proj = torch.nn.Linear(D, INTER, bias=False)
        else:
            self.gate_up_proj = torch.nn.Linear(D, 2 * INTER, bias=False)
        self.down_proj = torch.nn.Linear(INTER, D, bias=False)

    def forward(self, x):
        if self.mlp is None:
            g, u = self.gate_proj(x), self.up_proj(x)
        else:
            a, b = self.gate_up_proj(x).chunk(2, dim=-1)
            g, u = (a, b) if self.mlp == "gate_up" else (b, a)
        return self.down_proj(TF.silu(g) * u)


class PaddleMLP(paddle.nn.Layer):
    def __init__(self, mlp=None):
        super().__init__()
        self.mlp = mlp
        if mlp is None:
            self.gate_proj = paddle.nn.Linear(D, INTER, bias_attr=False)
            self.up_proj = paddle.nn.Linear(D, INTER, bias_attr=False)
        else:
            self.gate_up_proj = paddle.nn.Linear(D, 2 * INTER, bias_attr=False)
        self.down_proj = paddle.nn.Linear(INTER, D, bias_attr=False)

    def forward(self, x):
        if self.mlp is None:
            g, u = self.gate_proj(x), self.up_proj(x)
        else:
            a, b = self.gate_up_proj(x).chunk(2, axis=-1)
            g, u = (a, b) if self.mlp == "gate_up" else (b, a)
        return self.down_proj(PF.silu(g) * u)


class TorchBlock(torch.nn.Module):
    def __init__(self, qkv, mlp, bias):
        super().__init__()
        self.attn = TorchAttention(qkv, bias)
        self.mlp = TorchMLP(mlp)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class PaddleBlock(paddle.nn.Layer):
    def __init__(self, qkv, mlp, bias):
        super().__init__()
        self.attn = PaddleAttention(qkv, bias)
        self.mlp = PaddleMLP(mlp)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class TorchNet(torch.nn.Module):
    def __init__(self, qkv=None, mlp=None, bias=False):
        super().__init__()
        self.layers = torch.nn.ModuleList([TorchBlock(qkv, mlp, bias) for _ in range(2)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class PaddleNet(paddle.nn.Layer):
    def __init__(self, qkv=None, mlp=None, bias=False):
        super().__init__()
        self.layers = paddle.nn.LayerList([PaddleBlock(qkv, mlp, bias) for _ in range(2)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


NETS = {"torch": TorchNet, "paddle": PaddleNet}


def _square_mean(out):
    return (out * out).mean()


def _inputs(*frameworks):
    x = np.random.RandomState(3).standard_normal((B, S, D)).astype("float32")
    return tuple(torch.from_numpy(x.copy()) if f == "torch" else paddle.to_tensor(x) for f in frameworks)


def _run(first, second, fw_first, fw_second, **kw):
    torch.manual_seed(0)
    paddle.seed(0)
    return auto_diff(first, second, _inputs(fw_first, fw_second), loss_fn=[_square_mean, _square_mean], **kw)


def _describe(result):
    first = result.first
    head = "aligned" if first is None else f"first: {first.stage} {first.what} {first.ref_path} | {first.test_path}"
    return head + "\n" + (result.report or "")[-4000:]


QKV_TEXT = {"heads": "interleaved in 2 groups, each [16 rows of q_proj | 8 of k_proj | 8 of v_proj]",
            "concat": "concatenated [q_proj | k_proj | v_proj]"}
MLP_TEXT = {"gate_up": "concatenated [gate_proj | up_proj]", "up_gate": "concatenated [up_proj | gate_proj]"}

# (framework of the fused model, framework of the separate one, which one is the weight source)
PAIRS = [
    pytest.param("paddle", "torch", "separate", id="torch-separate->paddle-fused"),
    pytest.param("torch", "paddle", "fused", id="torch-fused->paddle-separate"),
    pytest.param("torch", "torch", "separate", id="torch-separate->torch-fused"),
    pytest.param("torch", "torch", "fused", id="torch-fused->torch-separate"),
    pytest.param("paddle", "paddle", "separate", id="paddle-separate->paddle-fused"),
    pytest.param("paddle", "paddle", "fused", id="paddle-fused->paddle-separate"),
]


def _models(fw_fused, fw_sep, source, qkv, mlp, bias=False):
    """(first, second, frameworks, fused model, separate model) in auto_diff's argument order:
    across frameworks torch is the source whatever the order; within one, the first model is."""
    fused = NETS[fw_fused](qkv, mlp, bias)
    sep = NETS[fw_sep](None, None, bias)
    for m in (fused, sep):
        m.eval()
    if fw_fused != fw_sep:
        # paddle first, as users write it; torch is the source anyway
        return (fused, sep, (fw_fused, fw_sep)) if fw_fused == "paddle" else (sep, fused, (fw_sep, fw_fused))
    return (sep, fused, (fw_sep, fw_fused)) if source == "separate" else (fused, sep, (fw_fused, fw_sep))


def _fused_note(result):
    return [n for n in result.notes if n.startswith("Fused projections:")]


@pytest.mark.parametrize("qkv,mlp", [("heads", "up_gate"), ("concat", "gate_up")])
@pytest.mark.parametrize("fw_fused,fw_sep,source", PAIRS)
def test_separate_and_fused_projections_align_with_zero_glue(fw_fused, fw_sep, source, qkv, mlp):
    first, second, fws = _models(fw_fused, fw_sep, source, qkv, mlp)
    result = _run(first, second, *fws)
    assert bool(result) is True, _describe(result)
    notes = _fused_note(result)
    assert len(notes) == 2, result.notes  # one per kind: both blocks share the layout
    ref, test = result.ref_label, result.test_label
    fused_is_src = ref.startswith(fw_fused) if fw_fused != fw_sep else source == "fused"
    fused_root, sep_root = f"{fw_fused.capitalize()}Net", f"{fw_sep.capitalize()}Net"
    if fused_is_src:
        head = (f"Fused projections: {ref} `{fused_root}.layers.0.attn.qkv_proj` is split into {test} "
                f"`{sep_root}.layers.0.attn.{{q_proj, k_proj, v_proj}}` (and 1 more of this kind): ")
    else:
        head = (f"Fused projections: {ref} `{sep_root}.layers.0.attn.{{q_proj, k_proj, v_proj}}` are fused into "
                f"{test} `{fused_root}.layers.0.attn.qkv_proj` (and 1 more of this kind): ")
    attn = [n for n in notes if "qkv_proj" in n][0]
    mlp_note = [n for n in notes if "gate_up_proj" in n][0]
    assert attn.startswith(head + QKV_TEXT[qkv] + ", found by running `"), (head, attn)
    assert "(and 1 more of this kind): " + MLP_TEXT[mlp] + ", found by running `" in mlp_note, mlp_note
    # The fused weights' gradients are compared through the same layout, and agree.
    grads = [f for f in result.steps[0].grads if "(fused:" in f.what or "(split:" in f.what]
    per_layer = 2 if fused_is_src else 1  # split: one finding per part (k and v share a line of text)
    assert len(grads) >= 2 * (per_layer + 1), [f.what for f in result.steps[0].grads]
    assert all(f.passed for f in grads)
    qkv_grad = [f for f in grads if "qkv_proj" in (f.ref_path if fused_is_src else f.test_path)]
    assert qkv_grad and QKV_TEXT[qkv] in qkv_grad[0].what
    if not fused_is_src:
        assert qkv_grad[0].ref_path.endswith("layers.0.attn.{q_proj, k_proj, v_proj}.weight")


@pytest.mark.parametrize("fw_fused,fw_sep,source", [PAIRS[0], PAIRS[1], PAIRS[4]])
def test_wrong_bias_of_v_is_caught_and_the_layout_still_found(fw_fused, fw_sep, source):
    """q/k/v with biases (Qwen2 style), fused per kv head; the tested model adds 0.05 to v:
    the first difference is inside the first attention, and the note still gives the layout
    (the true layout leaves the smallest error; the others are far off)."""
    first, second, fws = _models(fw_fused, fw_sep, source, "heads", "gate_up", bias=True)
    tested = second if fws[0] == fws[1] else (first if fws[0] == "paddle" else second)
    tested.layers[0].attn.bug = "v_bias"
    result = _run(first, second, *fws)
    assert bool(result) is False
    assert result.first.stage == "forward", _describe(result)
    assert ".layers.0.attn" in result.first.test_path and ".layers.0.attn" in result.first.ref_path, \
        _describe(result)
    attn = [n for n in _fused_note(result) if "qkv_proj" in n][0]
    assert ": interleaved in 2 groups, each [16 rows of q_proj | 8 of k_proj | 8 of v_proj], found by running" \
           in attn, attn


@pytest.mark.parametrize("fw_fused,fw_sep,source", [PAIRS[0], PAIRS[1], PAIRS[3]])
def test_backward_difference_shows_in_the_fused_weights_gradient(fw_fused, fw_sep, source):
    """The tested model's fused qkv weight (or its k_proj weight, when the fused one is the
    source) gets 1.1 times its gradient, every forward value unchanged: forward and layer
    gradients agree, and the first difference is that parameter's gradient, compared through
    the fused layout."""
    first, second, fws = _models(fw_fused, fw_sep, source, "heads", "up_gate")
    tested = second if fws[0] == fws[1] else (first if fws[0] == "paddle" else second)
    tested.layers[1].attn.bug = "grad"
    result = _run(first, second, *fws)
    assert bool(result) is False
    f = result.first
    assert f.stage == "grad", _describe(result)
    bad = [g for g in result.steps[0].grads if not g.passed]
    assert bad == [f], [(g.ref_path, g.test_path) for g in bad]
    if tested.layers[1].attn.qkv is not None:  # the fused model is tested: its qkv weight
        assert f.test_path.endswith("layers.1.attn.qkv_proj.weight")
        assert f.ref_path.endswith("layers.1.attn.{q_proj, k_proj, v_proj}.weight")
        assert f.what == "grad of weight (fused: interleaved in 2 groups, each [16 rows of q_proj | 8 of k_proj | " \
                         "8 of v_proj])"
    else:  # the separate model is tested: its k_proj against k's rows of the fused gradient
        assert f.test_path.endswith("layers.1.attn.k_proj.weight")
        assert f.ref_path.endswith("layers.1.attn.qkv_proj.weight")
        assert f.what.startswith("grad of weight (split: interleaved in 2 groups")
    assert f.diff.rel_l2 == pytest.approx(0.1, rel=0.05)


def test_fused_weights_after_optimizer_steps_are_compared_through_the_layout():
    t, p = TorchNet(), PaddleNet("heads", "up_gate")
    t.eval()
    p.eval()
    result = _run(p, t, "paddle", "torch", steps=2,
                  optimizer=[lambda: paddle.optimizer.SGD(0.1, parameters=p.parameters()),
                             lambda: torch.optim.SGD(t.parameters(), lr=0.1)])
    assert bool(result) is True, _describe(result)
    assert len(result.steps) == 2
    fused = [f for f in result.steps[1].weights if "(fused:" in f.what]
    assert len(fused) == 4 and all(f.passed for f in fused)  # qkv and gate/up of both blocks
    assert fused[0].ref_path.endswith(".{q_proj, k_proj, v_proj}.weight") or \
        fused[0].ref_path.endswith(".{gate_proj, up_proj}.weight")


def test_layout_already_in_place_is_read_from_the_weights():
    """auto_weights=False with the weights copied by hand (per kv head): padiff finds the
    layout in the weights and runs nothing to probe it."""
    t, p = TorchNet(), PaddleNet("heads", "up_gate")
    t.eval()
    p.eval()
    ok = assign_weight(p, t, stream=io.StringIO())  # no inputs: assumes concatenation
    assert ok is True
    for tl, pl in zip(t.layers, p.layers):
        q, k, v = (getattr(tl.attn, n).weight.detach().numpy() for n in ("q_proj", "k_proj", "v_proj"))
        rows = []
        for j in range(K):
            rows += [q[j * G * HD:(j + 1) * G * HD], k[j * HD:(j + 1) * HD], v[j * HD:(j + 1) * HD]]
        pl.attn.qkv_proj.weight.set_value(np.concatenate(rows).T)
        gate, up = tl.mlp.gate_proj.weight.detach().numpy(), tl.mlp.up_proj.weight.detach().numpy()
        pl.mlp.gate_up_proj.weight.set_value(np.concatenate([up, gate]).T)
    result = _run(p, t, "paddle", "torch", auto_weights=False)
    assert bool(result) is True, _describe(result)
    attn, mlp = sorted(_fused_note(result), key=lambda n: "gate_up" in n)
    assert ": interleaved in 2 groups, each [16 rows of q_proj | 8 of k_proj | 8 of v_proj], found in the weights " \
           "already in place" in attn
    assert ": concatenated [up_proj | gate_proj], found in the weights already in place" in mlp


def test_split_layout_already_in_place_is_read_from_the_weights():
    """The other direction: torch's fused qkv [q | k | v] copied into paddle's q/k/v by
    assign_weight (which assumes concatenation), then compared with auto_weights=False."""
    t, p = TorchNet("concat", "gate_up"), PaddleNet()
    t.eval()
    p.eval()
    assert assign_weight(p, t, stream=io.StringIO()) is True
    result = _run(p, t, "paddle", "torch", auto_weights=False)
    assert bool(result) is True, _describe(result)
    attn = [n for n in _fused_note(result) if "qkv_proj" in n][0]
    assert attn.startswith("Fused projections: torch `TorchNet.layers.0.attn.qkv_proj` is split into paddle "
                           "`PaddleNet.layers.0.attn.{q_proj, k_proj, v_proj}` (and 1 more of this kind): "
                           "concatenated [q_proj | k_proj | v_proj], found in the weights already in place")


def test_without_inputs_the_layout_is_assumed_and_said():
    t, p = TorchNet(), PaddleNet("heads", "gate_up")
    out = io.StringIO()
    assert assign_weight(p, t, stream=out) is True
    text = out.getvalue()
    assert ("Fused projections: torch `TorchNet.layers.0.attn.{q_proj, k_proj, v_proj}` are fused into paddle "
            "`PaddleNet.layers.0.attn.qkv_proj` (and 1 more of this kind): concatenated [q_proj | k_proj | v_proj], "
            "assumed, without inputs to run the models on") in text


def test_separate_calls_stay_unpaired_without_a_structure_error():
    """The fused Linear's call has no single counterpart: the calls of q/k/v and qkv_proj are
    left unpaired, the rest of the attention pairs, and nothing is 'built differently'."""
    first, second, fws = _models("paddle", "torch", "separate", "heads", "gate_up")
    result = _run(first, second, *fws)
    assert bool(result) is True, _describe(result)
    pairing = result.steps[0].pairing
    paired = {(a.path, b.path) for a, b in pairing.pairs if a.kind == "net"}
    assert ("TorchNet.layers.0.attn.o_proj", "PaddleNet.layers.0.attn.o_proj") in paired
    assert not any("q_proj" in a or "qkv_proj" in b for a, b in paired)


# --- the layouts themselves ---------------------------------------------------------------------

def test_candidate_layouts_fit_the_shapes_and_are_distinct():
    cands = candidates([16, 8, 8])
    assert cands[0] == Layout((0, 1, 2))
    assert Layout((0, 1, 2), 2) in cands and Layout((0, 1, 2), 8) in cands
    assert Layout((1, 0, 2)) in cands
    assert len({c.key([16, 8, 8]) for c in cands}) == len(cands)
    assert [c.describe(["g", "u"], [4, 4]) for c in candidates([4, 4])] == [
        "concatenated [g | u]", "concatenated [u | g]", "interleaved in 2 groups, each [2 rows of g | 2 of u]",
        "interleaved in 4 groups, each [1 rows of g | 1 of u]"]


@pytest.mark.parametrize("src_out_in,dst_out_in", [(True, False), (True, True), (False, False), (False, True)])
def test_fuse_and_split_are_inverse(src_out_in, dst_out_in):
    sizes = [16, 8, 8]
    rng = np.random.RandomState(0)
    parts = [rng.rand(n, 6) for n in sizes]  # [out, in]
    lay = Layout((0, 1, 2), 2)
    g = FusedGroup(False, "m.qkv", ["m.q", "m.k", "m.v"], sizes, src_out_in, dst_out_in, (None, None), ("m", "m"),
                   [lay])
    src = [p if src_out_in else p.T for p in parts]
    fused = g.fuse(src, True)
    rows = fused if dst_out_in else fused.T
    np.testing.assert_array_equal(rows[:16], np.concatenate([parts[0][:8], parts[1][:4], parts[2][:4]]))
    back = FusedGroup(True, "m.qkv", ["m.q", "m.k", "m.v"], sizes, dst_out_in, src_out_in, (None, None),
                      ("m", "m"), [lay])
    for i, p in enumerate(parts):
        np.testing.assert_array_equal(back.part(i, fused, True), p if src_out_in else p.T)
    bias = [rng.rand(n) for n in sizes]
    np.testing.assert_array_equal(back.part(2, g.fuse(bias, False), False), bias[2])


def test_brace():
    assert brace(["a.b.q.weight", "a.b.k.weight"]) == "a.b.{q, k}.weight"
    assert brace(["a.q", "b.k"]) == "a.q, b.k"


# --- register_rule with two source tensors ------------------------------------------------------

class TorchHalves(torch.nn.Module):
    """Two weights [3, 5] and [4, 5] ([out, in]) used as one [7, 5]."""

    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(3, 5))
        self.w2 = torch.nn.Parameter(torch.randn(4, 5))

    def forward(self, x):
        return x @ torch.cat([self.w1, self.w2]).T


class PaddleWhole(paddle.nn.Layer):
    def __init__(self, bug=None):
        super().__init__()
        self.kernel = self.create_parameter([5, 7])  # [in, out]
        self.bug = bug

    def forward(self, x):
        k = self.kernel * 1.1 - (self.kernel * 0.1).detach() if self.bug == "grad" else self.kernel
        return x @ k


@pytest.fixture
def clean_rules():
    saved = list(rules_mod._RULES)
    yield
    rules_mod._RULES[:] = saved


def _halves_rule(src, dst, *, src_kind, dst_kind):
    s = dict(src)
    (name, shape), = dst
    fuse = lambda arrays: np.ascontiguousarray(np.concatenate(arrays).T)  # also applied to gradients
    return [Converted(name, ("w1", "w2"), fuse([s["w1"], s["w2"]]), "fused", fuse)]


def test_register_rule_with_two_sources_copies_and_compares_gradients(clean_rules):
    register_rule(TorchHalves, "PaddleWhole", _halves_rule)
    x = np.random.RandomState(1).rand(2, 5).astype("float32")
    t, p = TorchHalves(), PaddleWhole()
    result = auto_diff(p, t, (paddle.to_tensor(x), torch.from_numpy(x)), loss_fn=[_square_mean, _square_mean])
    assert bool(result) is True, _describe(result)
    np.testing.assert_allclose(p.kernel.numpy(), torch.cat([t.w1, t.w2]).detach().numpy().T)
    (grad,) = result.steps[0].grads
    assert grad.what == "grad of kernel" and grad.ref_path == "TorchHalves.{w1, w2}" and grad.passed

    bad = auto_diff(PaddleWhole(bug="grad"), t, (paddle.to_tensor(x), torch.from_numpy(x)),
                    loss_fn=[_square_mean, _square_mean])
    assert bool(bad) is False
    assert bad.first.stage == "grad" and bad.first.ref_path == "TorchHalves.{w1, w2}"
    assert bad.first.test_path == "PaddleWhole.kernel"
    assert bad.first.diff.rel_l2 == pytest.approx(0.1, rel=0.05)


def test_rule_naming_a_source_the_layer_lacks_is_refused(clean_rules):
    def wrong(src, dst, *, src_kind, dst_kind):
        (name, shape), = dst
        return [Converted(name, ("w1", "w3"), np.zeros(shape, "float32"), "fused", lambda a: a[0])]

    register_rule(TorchHalves, "PaddleWhole", wrong)
    with pytest.raises(Exception, match=r"names source `w3`, which torch::TorchHalves does not have \(w1, w2\)"):
        assign_weight(PaddleWhole(), TorchHalves(), stream=io.StringIO())


def test_dumps_of_a_fused_and_a_separate_model_compare_through_the_layout(tmp_path):
    """Offline, the dump reader knows how each framework stores Linear weights (its weight
    tables), so the fused projections of a dump are found as in a live run: here from the
    weights copied by assign_weight before dumping."""
    from padiff import compare_dumps, dump

    t, p = TorchNet(), PaddleNet("concat", "gate_up")
    t.eval()
    p.eval()
    assert assign_weight(p, t, stream=io.StringIO()) is True
    x_t, x_p = _inputs("torch", "paddle")
    a = dump(t, x_t, str(tmp_path / "torch"), loss_fn=_square_mean, options={"verbose": False})
    b = dump(p, x_p, str(tmp_path / "paddle"), loss_fn=_square_mean, options={"verbose": False})
    result = compare_dumps(b, a, verbose=False)
    assert bool(result) is True, _describe(result)
    fused = sorted((f.test_path, f.what) for s in result.steps for f in s.grads if "fused" in f.what)
    assert fused == [
        ("PaddleNet.layers.0.attn.qkv_proj.weight", "grad of weight (fused: concatenated [q_proj | k_proj | v_proj])"),
        ("PaddleNet.layers.0.mlp.gate_up_proj.weight", "grad of weight (fused: concatenated [gate_proj | up_proj])"),
        ("PaddleNet.layers.1.attn.qkv_proj.weight", "grad of weight (fused: concatenated [q_proj | k_proj | v_proj])"),
        ("PaddleNet.layers.1.mlp.gate_up_proj.weight", "grad of weight (fused: concatenated [gate_proj | up_proj])")]
