"""assign_weight, LayerMap (by hand and auto) and the conversion rules, on real torch and
paddle models whose structure differs."""

from __future__ import annotations

import io

import numpy as np
import paddle
import pytest
import torch

from models_weights import (PaddleBasicBlock, PaddleMHABlock, PaddleMLP, PaddleMLPReordered, PaddleResNet,
                            PaddleSelfAttention, PaddleTagger, PaddleTransformerBlock, TorchBasicBlock,
                            TorchFusedBlock, TorchMLP, TorchResNet, TorchSelfAttention, TorchTagger,
                            TorchTransformerBlock, max_diff, randomize_bn, seeded)
from padiff import LayerMap, PadiffError, assign_weight, auto_diff, register_rule
from padiff.weights import rules as rules_mod
from padiff.weights.rules import Converted, RuleError

TOL = 1e-5


def _auto(paddle_model, torch_model, layer_map=None):
    out = io.StringIO()
    lm = layer_map or LayerMap()
    res = lm.auto(paddle_model, torch_model, stream=out)
    return lm, res, out.getvalue()


def _assign(first, second, lm=None):
    out = io.StringIO()
    ok = assign_weight(first, second, lm, stream=out)
    return ok, out.getvalue()


def _snapshot(paddle_model):
    return {n: p.numpy().copy() for n, p in paddle_model.named_parameters()}


def _row(text, *cells):
    """The table line holding all the cells, in order."""
    for line in text.splitlines():
        pos = 0
        for c in cells:
            pos = line.find(c, pos)
            if pos < 0:
                break
            pos += len(c)
        else:
            return line
    raise AssertionError(f"no line with {cells} in:\n{text}")


# --- ResNet-style block: other order, flat downsample branch, other names ---------------------

def test_resnet_registration_order_fails_and_structure_pairs_it():
    seeded(0)
    t, p = randomize_bn(TorchResNet()), PaddleResNet()
    ok, text = _assign(p, t)
    # registration order pairs the paddle head (defined first) with the torch stem conv; structure pairs all
    assert ok is True, text
    assert ("[assign_weight] Registration order does not pair the weights (torch::Conv2d has 1 parameters/buffers "
            "(weight) but paddle::Linear has 2 (weight, bias)); paired 13 layers by structure instead") in text
    _row(text, "TorchResNet.layer1.0.bn1", "BatchNorm2d", "PaddleResNet.blocks.0.norm_a", "BatchNorm2D", "neighbour")
    x = np.random.RandomState(1).rand(2, 3, 8, 8).astype("float32")
    assert max_diff(t, p, x) < TOL

    t, p = randomize_bn(TorchResNet()), PaddleResNet()
    lm, res, table = _auto(p, t)
    assert bool(res) is True and len(res.pairs) == 13
    assert "Every layer with weights has a partner." in table
    _row(table, "PaddleResNet.blocks.0.short_conv", "Conv2D", "TorchResNet.layer1.0.downsample.0", "Conv2d")
    _row(table, "PaddleResNet.blocks.0.short_norm", "BatchNorm2D", "TorchResNet.layer1.0.downsample.1")
    # three BatchNorm[16] in block 0: the one after conv_a is bn1, found by its neighbour
    _row(table, "PaddleResNet.blocks.0.norm_a", "TorchResNet.layer1.0.bn1", "neighbour")
    _row(table, "PaddleResNet.stem_norm", "BatchNorm2D", "TorchResNet.stem.1", "SyncBatchNorm")

    ok, text = _assign(p, t, lm)
    assert ok is True, text
    x = np.random.RandomState(1).rand(2, 3, 8, 8).astype("float32")
    assert max_diff(t, p, x) < TOL
    # buffers too: BatchNorm statistics land in paddle's _mean/_variance
    np.testing.assert_array_equal(p.blocks[0].short_norm._mean.numpy(),
                                  t.layer1[0].downsample[1].running_mean.numpy())
    np.testing.assert_array_equal(p.stem_norm._variance.numpy(), t.stem[1].running_var.numpy())


def test_two_blocks_mapped_by_hand_have_their_insides_paired_by_structure():
    seeded(1)
    t, p = randomize_bn(TorchBasicBlock(8, 16, 2)), PaddleBasicBlock(8, 16, 2)
    lm = LayerMap()
    lm.map = {p: t}
    ok, text = _assign(p, t, lm)
    assert ok is True, text
    assert max_diff(t, p, np.random.RandomState(2).rand(2, 8, 6, 6).astype("float32")) < TOL


# --- Transformer block: nn.MultiheadAttention against q/k/v Linears ---------------------------

def test_transformer_mha_against_separate_qkv_linears():
    seeded(2)
    t, p = TorchTransformerBlock(), PaddleTransformerBlock()
    lm, res, table = _auto(p, t)
    assert bool(res)
    _row(table, "PaddleTransformerBlock.attention", "PaddleSelfAttention", "TorchTransformerBlock.attn",
         "MultiheadAttention", "conversion rule")
    _row(table, "PaddleTransformerBlock.fc2", "Linear", "TorchTransformerBlock.mlp.2", "Linear")
    # the torch model first this time: the copy still goes torch -> paddle
    t_before = {n: v.detach().clone() for n, v in t.named_parameters()}
    ok, text = _assign(t, p, lm)
    assert ok is True, text
    assert all(torch.equal(t_before[n], v) for n, v in t.named_parameters())
    e = 16
    np.testing.assert_array_equal(p.attention.k.weight.numpy(), t.attn.in_proj_weight[e:2 * e].detach().numpy().T)
    np.testing.assert_array_equal(p.attention.v.bias.numpy(), t.attn.in_proj_bias[2 * e:].detach().numpy())
    assert max_diff(t, p, np.random.RandomState(3).rand(2, 5, 16).astype("float32")) < TOL


def test_transformer_mha_against_paddle_multiheadattention_in_order():
    seeded(3)
    t, p = TorchTransformerBlock(), PaddleMHABlock()
    ok, text = _assign(p, t)  # same definition order: no LayerMap needed
    assert ok is True, text
    assert max_diff(t, p, np.random.RandomState(4).rand(3, 4, 16).astype("float32")) < TOL


def test_mapped_user_blocks_transpose_square_linears():
    """Two attention blocks defined in another order, paired by hand: their square Linears
    are paired by name and transposed (a flat in-order copy would not transpose them)."""
    seeded(4)
    t, p = TorchSelfAttention(16, 4), PaddleSelfAttention(16, 4)
    lm = LayerMap()
    lm.map = {t: p}  # either model's layer first
    ok, text = _assign(p, t, lm)
    assert ok is True, text
    np.testing.assert_array_equal(p.proj.weight.numpy(), t.o.weight.detach().numpy().T)
    assert max_diff(t, p, np.random.RandomState(5).rand(2, 5, 16).astype("float32")) < TOL


class TorchStack(torch.nn.Module):
    def __init__(self, n=3, d=8):
        super().__init__()
        self.blocks = torch.nn.ModuleList([TorchTransformerBlock(d, 2) for _ in range(n)])
        self.head = torch.nn.Linear(d, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class PaddleStack(paddle.nn.Layer):
    def __init__(self, n=3, d=8):
        super().__init__()
        self.head = paddle.nn.Linear(d, 3)
        self.layers = paddle.nn.LayerList([PaddleTransformerBlock(d, 2) for _ in range(n)])

    def forward(self, x):
        for b in self.layers:
            x = b(x)
        return self.head(x)


def test_stack_of_blocks_built_differently_inside():
    """Equal blocks whose insides differ (MultiheadAttention against four Linears) are paired
    block by block, in order, not mixed across blocks."""
    seeded(8)
    t, p = TorchStack(), PaddleStack()
    lm, res, table = _auto(p, t)
    assert bool(res), table
    _row(table, "PaddleStack.layers.2.attention", "TorchStack.blocks.2.attn", "conversion rule")
    _row(table, "PaddleStack.layers.1.ln_2", "TorchStack.blocks.1.norm2")
    assert _assign(p, t, lm)[0] is True
    assert max_diff(t, p, np.random.RandomState(12).rand(2, 4, 8).astype("float32")) < TOL


def test_fused_qkv_linear_against_three_linears():
    """A timm-style fused qkv Linear against separate q, k, v: auto pairs the fused Linear with
    the three (out projections by name) and the fused weight is split by rows (and transposed).
    Without inputs to probe, assign_weight takes plain concatenation and says so."""
    seeded(9)
    t, p = TorchFusedBlock(), PaddleTransformerBlock()
    lm, res, table = _auto(p, t)
    assert bool(res), table
    _row(table, "PaddleTransformerBlock.attention.{q, k, v}", "Linear x3", "TorchFusedBlock.attn.qkv", "Linear",
         "fused projection")
    _row(table, "PaddleTransformerBlock.attention.proj", "Linear", "TorchFusedBlock.attn.proj", "Linear", "name")
    ok, text = _assign(p, t, lm)
    assert ok is True, text
    assert ("Fused projections: torch `TorchFusedBlock.attn.qkv` is split into paddle "
            "`PaddleTransformerBlock.attention.{q, k, v}`: concatenated [q | k | v], assumed, without inputs") in text
    np.testing.assert_array_equal(p.attention.v.weight.numpy(), t.attn.qkv.weight[32:].detach().numpy().T)
    assert max_diff(t, p, np.random.RandomState(13).rand(2, 5, 16).astype("float32")) < TOL


def test_blocks_that_do_not_correspond_are_not_copied_flat_in_order():
    """Mapped by hand, two blocks whose parts do not pair fail with a message naming the part
    (no flat copy in order, which would leave square Linears untransposed)."""
    t, p = TorchMLP(hidden=4), PaddleMLP(hidden=4)
    t.fc2 = torch.nn.Linear(4, 4)
    p.fc2 = paddle.nn.Linear(4, 4)
    p.extra = paddle.nn.Linear(4, 4)
    t.other = torch.nn.Conv1d(4, 4, 1)
    lm = LayerMap()
    lm.map = {p: t}
    ok, text = _assign(p, t, lm)
    assert ok is False
    assert "`TorchMLP` (TorchMLP) and `PaddleMLP` (PaddleMLP) are built differently: inside them, " \
           "`PaddleMLP.extra` (Linear) of the paddle model has no partner in the torch model." in text
    assert "            `PaddleMLP.extra.weight`" in text
    assert "padiff.register_rule('TorchMLP', 'PaddleMLP', fn)" in text


# --- LSTM -----------------------------------------------------------------------------------------

def test_lstm_tagger_defined_in_reverse_order():
    seeded(5)
    t, p = TorchTagger(), PaddleTagger()
    lm, res, table = _auto(p, t)
    assert bool(res)
    _row(table, "PaddleTagger.rnn", "LSTM", "TorchTagger.lstm", "LSTM")
    _row(table, "PaddleTagger.word_emb", "Embedding", "TorchTagger.embed", "Embedding")
    ok, text = _assign(p, t, lm)
    assert ok is True, text
    ids = np.random.RandomState(6).randint(0, 20, (3, 7)).astype("int64")
    assert max_diff(t, p, ids) < TOL


# --- every shipped rule, against the real layers of both frameworks ---------------------------

class TWrap(torch.nn.Module):
    def __init__(self, layer, fn):
        super().__init__()
        self.layer, self.fn = layer, fn

    def forward(self, x):
        return self.fn(self.layer, x)


class PWrap(paddle.nn.Layer):
    def __init__(self, layer, fn):
        super().__init__()
        self.layer, self.fn = layer, fn

    def forward(self, x):
        return self.fn(self.layer, x)


def _call(layer, x):
    return layer(x)


def _first(layer, x):
    return layer(x)[0]


def _mha_t(layer, x):
    return layer(x, x, x, need_weights=False)[0]


def _mha_p(layer, x):
    return layer(x, x, x)


def _mha_kv_t(layer, x):
    return layer(x[..., :8], x[..., 8:12], x[..., 12:18], need_weights=False)[0]


def _mha_kv_p(layer, x):
    return layer(x[..., :8], x[..., 8:12], x[..., 12:18])


def _bn(m):
    randomize_bn(m)
    return m


ZOO = [
    ("Linear", lambda: torch.nn.Linear(6, 6), lambda: paddle.nn.Linear(6, 6), _call, _call, (2, 6)),
    ("Conv1d", lambda: torch.nn.Conv1d(4, 6, 3), lambda: paddle.nn.Conv1D(4, 6, 3), _call, _call, (2, 4, 9)),
    ("Conv2d groups", lambda: torch.nn.Conv2d(4, 6, 3, groups=2), lambda: paddle.nn.Conv2D(4, 6, 3, groups=2),
     _call, _call, (2, 4, 7, 7)),
    ("ConvTranspose2d", lambda: torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
     lambda: paddle.nn.Conv2DTranspose(4, 6, 3, stride=2, groups=2), _call, _call, (2, 4, 5, 5)),
    ("BatchNorm1d", lambda: _bn(torch.nn.BatchNorm1d(5)), lambda: paddle.nn.BatchNorm1D(5), _call, _call, (4, 5)),
    ("BatchNorm2d -> BatchNorm", lambda: _bn(torch.nn.BatchNorm2d(3)), lambda: paddle.nn.BatchNorm(3),
     _call, _call, (2, 3, 4, 4)),
    ("InstanceNorm2d", lambda: torch.nn.InstanceNorm2d(3, affine=True), lambda: paddle.nn.InstanceNorm2D(3),
     _call, _call, (2, 3, 5, 5)),
    ("LayerNorm", lambda: torch.nn.LayerNorm(6), lambda: paddle.nn.LayerNorm(6), _call, _call, (2, 6)),
    ("GroupNorm", lambda: torch.nn.GroupNorm(2, 4), lambda: paddle.nn.GroupNorm(2, 4), _call, _call, (2, 4, 3, 3)),
    ("PReLU", lambda: torch.nn.PReLU(3, init=0.1), lambda: paddle.nn.PReLU(3), _call, _call, (2, 3, 4, 4)),
    ("GRU", lambda: torch.nn.GRU(4, 5, num_layers=2, batch_first=True),
     lambda: paddle.nn.GRU(4, 5, num_layers=2), _first, _first, (2, 6, 4)),
    ("RNN", lambda: torch.nn.RNN(4, 5, batch_first=True, bidirectional=True),
     lambda: paddle.nn.SimpleRNN(4, 5, direction="bidirect"), _first, _first, (2, 6, 4)),
    ("LSTM proj_size", lambda: torch.nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True, proj_size=3),
     lambda: paddle.nn.LSTM(4, 6, num_layers=2, direction="bidirect", proj_size=3), _first, _first, (2, 5, 4)),
    ("MultiheadAttention", lambda: torch.nn.MultiheadAttention(8, 2, batch_first=True),
     lambda: paddle.nn.MultiHeadAttention(8, 2), _mha_t, _mha_p, (2, 5, 8)),
    ("MultiheadAttention no bias", lambda: torch.nn.MultiheadAttention(8, 2, bias=False, batch_first=True),
     lambda: paddle.nn.MultiHeadAttention(8, 2, bias_attr=False), _mha_t, _mha_p, (2, 5, 8)),
    ("MultiheadAttention kdim/vdim", lambda: torch.nn.MultiheadAttention(8, 2, kdim=4, vdim=6, batch_first=True),
     lambda: paddle.nn.MultiHeadAttention(8, 2, kdim=4, vdim=6), _mha_kv_t, _mha_kv_p, (2, 5, 18)),
]


@pytest.mark.parametrize("name,make_t,make_p,run_t,run_p,shape", ZOO, ids=[z[0] for z in ZOO])
def test_shipped_rule_makes_outputs_agree(name, make_t, make_p, run_t, run_p, shape):
    seeded(7)
    t, p = TWrap(make_t(), run_t), PWrap(make_p(), run_p)
    ok, text = _assign(p, t)
    assert ok is True, text
    x = np.random.RandomState(8).randn(*shape).astype("float32")
    assert max_diff(t, p, x) < TOL


def test_batchnorm_into_paddle_syncbatchnorm_copies_the_statistics():
    # paddle's SyncBatchNorm has no CPU kernel, so this checks the values, not an output
    t = TWrap(randomize_bn(torch.nn.BatchNorm2d(4)), _call)
    p = PWrap(paddle.nn.SyncBatchNorm(4), _call)
    assert _assign(p, t)[0] is True
    np.testing.assert_array_equal(p.layer._mean.numpy(), t.layer.running_mean.numpy())
    np.testing.assert_array_equal(p.layer._variance.numpy(), t.layer.running_var.numpy())
    np.testing.assert_array_equal(p.layer.weight.numpy(), t.layer.weight.detach().numpy())


def test_embedding_rule_keeps_the_layout():
    t, p = TWrap(torch.nn.Embedding(7, 3), _call), PWrap(paddle.nn.Embedding(7, 3), _call)
    assert _assign(p, t)[0] is True
    assert max_diff(t, p, np.array([[0, 6, 2]], dtype="int64")) == 0.0


# --- failures -------------------------------------------------------------------------------------

def test_wrong_map_gives_the_report_naming_the_layer():
    t, p = TorchTransformerBlock(), PaddleTransformerBlock()
    lm, _, _ = _auto(p, t)
    lm.map = {p.fc2: t.mlp[0]}  # wrong on purpose: fc2 is 64 -> 16, mlp.0 is 16 -> 64
    before = _snapshot(p)
    ok, text = _assign(p, t, lm)
    assert ok is False
    assert "[assign_weight] Assign weight Failed !!!" in text
    assert "Error occured between:" in text
    assert "    paddle: `Linear(in_features=64, out_features=16, dtype=float32)`" in text
    assert "            `PaddleTransformerBlock.fc2.weight`" in text
    assert "    torch: `Linear(in_features=16, out_features=64, bias=True)`" in text
    assert "           `TorchTransformerBlock.mlp.0.weight`" in text
    assert ("Shape of param `weight` in torch::Linear and param `weight` in paddle::Linear is not the same. "
            "[16, 64] vs [64, 16]") in text
    paddle_tree = text[text.index("Paddle Model"):text.index("Torch Model")]
    torch_tree = text[text.index("Torch Model"):text.index("NOTICE")]
    assert "PaddleTransformerBlock    (skip)\n|--- Linear\n|--- Linear    <---  *** HERE ***\n" in paddle_tree
    assert "+--- Sequential    (skip)\n     |--- Linear    <---  *** HERE ***\n     |--- GELU    (skip)\n" in torch_tree
    assert "Hint:" in text and "Check the definition order" in text and "param <=> buffer" in text
    assert "layer_map.auto(model_a, model_b)" in text
    assert all(np.array_equal(before[n], v.numpy()) for n, v in p.named_parameters())


def test_layer_without_a_source_is_an_error_not_left_random():
    t, p = TorchMLP(), PaddleMLP()
    p.gate = paddle.nn.Linear(3, 3)  # only the port has it
    lm, res, table = _auto(p, t)
    assert bool(res) is False
    assert "[LayerMap.auto] Not paired (1), their weights would have no source:" in table
    _row(table, "paddle", "PaddleMLP.gate", "Linear", "weight [3, 3], bias [3]")
    ok, text = _assign(p, t, lm)
    assert ok is False
    assert "The paddle model has more layers with weights than the torch model: `PaddleMLP.gate` (Linear) " \
           "has no partner." in text
    assert "+--- Linear    <---  *** HERE ***" in text
    lm.ignore(p.gate)  # the user says: leave it out
    assert _assign(p, t, lm)[0] is True


def test_ignore_recursively_leaves_an_aux_head_out():
    t, p = TorchMLP(), PaddleMLP()
    t.aux = torch.nn.Sequential(torch.nn.Linear(6, 2), torch.nn.BatchNorm1d(2))
    ok, text = _assign(p, t)
    assert ok is False and "`TorchMLP.aux.0` (Linear) has no partner" in text
    lm = LayerMap()
    lm.ignore_recursively(t.aux)
    lm.ignore(t.act)  # no weights: ignoring it changes nothing
    assert _assign(p, t, lm)[0] is True
    assert max_diff(t, p, np.random.RandomState(9).rand(2, 4).astype("float32")) < TOL


def test_param_count_mismatch_names_both_tensor_lists():
    t = TWrap(torch.nn.Linear(4, 4, bias=False), _call)
    p = PWrap(paddle.nn.Linear(4, 4), _call)
    ok, text = _assign(p, t)
    assert ok is False
    assert "torch::Linear has 1 parameters/buffers (weight) but paddle::Linear has 2 (weight, bias)." in text


# --- LayerMap as an object ----------------------------------------------------------------------

def test_layer_map_map_adds_and_replaces_pairs_and_is_live():
    t, p = TorchMLP(), PaddleMLP()
    lm = LayerMap()
    lm.map = {p.fc1: t.fc2}
    lm.map = {p.fc2: t.fc2}  # t.fc2 takes its new partner
    assert len(lm.map) == 1 and lm.map[p.fc2] is t.fc2
    lm.map[p.fc1] = t.fc1  # the dict writes through
    assert lm.map[p.fc1] is t.fc1 and len(lm.map) == 2
    del lm.map[p.fc1]
    assert p.fc1 not in lm.map
    assert "1 pairs by hand" in repr(lm)


def test_layer_map_rejects_what_is_not_a_layer():
    lm = LayerMap()
    with pytest.raises(PadiffError, match=r"LayerMap.map must be a dict \{layer_of_one_model: layer_of_the_other\}"):
        lm.map = [(1, 2)]
    with pytest.raises(PadiffError, match=r"The argument of LayerMap.ignore is a builtins.str"):
        lm.ignore("fc1")
    with pytest.raises(PadiffError, match="pairs a Linear with itself"):
        fc = torch.nn.Linear(2, 2)
        lm.add(fc, fc)


def test_a_plain_dict_serves_as_a_layer_map():
    t, p = TorchMLP(), PaddleMLPReordered()
    ok, text = _assign(p, t, {p.fc1: t.fc1, t.fc2: p.fc2})
    assert ok is True and "by structure" not in text
    with pytest.raises(PadiffError, match="layer_map must be a padiff.LayerMap or a dict"):
        _assign(p, t, [p.fc1, t.fc1])


def test_hand_pairs_win_over_auto_pairs():
    t, p = TorchMLP(hidden=4), PaddleMLP(hidden=4)
    t.fc3 = torch.nn.Linear(4, 4)
    p.fc3 = paddle.nn.Linear(4, 4)
    lm, _, table = _auto(p, t)
    _row(table, "PaddleMLP.fc3", "TorchMLP.fc3", "name")
    lm.map = {p.fc3: t.fc1}  # the person says otherwise
    lm.map = {p.fc1: t.fc3}
    assert _assign(p, t, lm)[0] is True
    np.testing.assert_array_equal(p.fc3.weight.numpy(), t.fc1.weight.detach().numpy().T)
    np.testing.assert_array_equal(p.fc1.weight.numpy(), t.fc3.weight.detach().numpy().T)


def test_auto_then_auto_diff_uses_the_map_for_the_weight_copy():
    seeded(6)
    t, p = TorchMLP(), PaddleMLPReordered()
    x = np.random.RandomState(10).rand(5, 4).astype("float32")
    result = auto_diff(p, t, (paddle.to_tensor(x), torch.as_tensor(x)), auto_weights=True, atol=1e-5)
    assert result and "[AutoDiff] Registration order does not pair the weights (Shape of param `weight`" in result.report
    lm, res, _ = _auto(p, t)
    assert bool(res)
    result = auto_diff(p, t, (paddle.to_tensor(x), torch.as_tensor(x)), layer_map=lm, auto_weights=True,
                       atol=1e-5)
    assert result and "by structure" not in result.report
    assert "[AutoDiff] Assign weight success !!!" in result.report


# --- rules registered by the user (special init) ------------------------------------------------

class TorchScale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 5))  # [out, in]

    def forward(self, x):
        return x @ self.w.T


class PaddleScale(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.kernel = self.create_parameter([5, 3])  # [in, out]

    def forward(self, x):
        return x @ self.kernel


@pytest.fixture
def clean_rules():
    saved = list(rules_mod._RULES)
    yield
    rules_mod._RULES[:] = saved


def test_user_rule_for_a_pair_of_classes(clean_rules):
    t, p = TorchScale(), PaddleScale()
    ok, text = _assign(p, t)
    assert ok is False and "[3, 5] vs [5, 3]" in text

    @register_rule(TorchScale, "PaddleScale")
    def scale(src, dst, *, src_kind, dst_kind):
        (sname, w), = src
        (dname, shape), = dst
        flip = lambda a: a.T
        return [Converted(dname, sname, flip(w), "transposed", flip)]

    ok, text = _assign(p, t)
    assert ok is True, text
    assert max_diff(t, p, np.random.RandomState(11).rand(2, 5).astype("float32")) < TOL


def test_user_rule_that_raises_is_named(clean_rules):
    def broken(src, dst, *, src_kind, dst_kind):
        return src[5]

    register_rule("TorchScale", "PaddleScale", broken)
    with pytest.raises(PadiffError, match=r"The rule registered for torch::TorchScale -> paddle::PaddleScale "
                                          r"\(.*broken\) raised IndexError"):
        _assign(PaddleScale(), TorchScale())


def test_user_rule_may_refuse_with_rule_error(clean_rules):
    def refuse(src, dst, *, src_kind, dst_kind):
        raise RuleError(f"{src_kind} cannot become {dst_kind}: scale too small", "w", "kernel")

    register_rule("TorchScale", "PaddleScale", refuse)
    ok, text = _assign(PaddleScale(), TorchScale())
    assert ok is False
    assert "torch::TorchScale cannot become paddle::PaddleScale: scale too small" in text
    assert "`PaddleScale.kernel`" in text and "`TorchScale.w`" in text


def test_register_rule_needs_a_function():
    with pytest.raises(PadiffError, match=r"register_rule\('A', 'B', \.\.\.\) needs a function"):
        register_rule("A", "B", 3)


# --- one framework twice ------------------------------------------------------------------------

def test_same_framework_copies_first_into_second():
    a, b = TorchMLP(), TorchMLP()
    assert _assign(a, b)[0] is True
    assert torch.equal(a.fc1.weight, b.fc1.weight)  # no transpose between two torch models
    pa, pb = PaddleMLP(), PaddleMLPReordered()
    lm, res, table = _auto(pa, pb)
    assert bool(res)
    _row(table, "paddle (base) layer", "paddle (raw) layer")
    assert _assign(pa, pb, lm)[0] is True
    np.testing.assert_array_equal(pa.fc2.weight.numpy(), pb.fc2.weight.numpy())
