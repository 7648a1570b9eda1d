"""padiff convert / convert_checkpoint: a torch state dict becomes a paddle .pdparams whose
model computes what the torch model computes."""

from __future__ import annotations

import io
import os
import textwrap

import numpy as np
import paddle
import pytest
import torch

from models_weights import (PaddleMHABlock, PaddleResNet, TorchResNet, TorchTransformerBlock, max_diff,
                            randomize_bn, seeded)
from padiff import LayerMap, PadiffError
from padiff.convert_cli import main
from padiff.porting import convert_checkpoint

TESTS = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-5


def _convert(*args, **kwargs):
    out = io.StringIO()
    table = convert_checkpoint(*args, stream=out, **kwargs)
    return table, out.getvalue()


def _load_into(paddle_model, path):
    missing, unexpected = paddle_model.set_state_dict(paddle.load(path))
    return missing, unexpected


def _row(table, src_key):
    found = [r for r in table.rows if r.src_key == src_key]
    assert found, f"no row for {src_key}"
    return found[0]


class TorchNamesNet(torch.nn.Module):
    """A seeds-style model: an embedding, Linears, a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.tok_emb = torch.nn.Embedding(10, 4)
        self.fc1 = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.fc2 = torch.nn.Linear(8, 8)

    def forward(self, ids):
        return self.fc2(torch.relu(self.bn(self.fc1(self.tok_emb(ids).mean(1)))))


class PaddleNamesNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.tok_emb = paddle.nn.Embedding(10, 4)
        self.fc1 = paddle.nn.Linear(4, 8)
        self.bn = paddle.nn.BatchNorm1D(8)
        self.fc2 = paddle.nn.Linear(8, 8)

    def forward(self, ids):
        return self.fc2(paddle.nn.functional.relu(self.bn(self.fc1(self.tok_emb(ids).mean(1)))))


IDS = np.random.RandomState(0).randint(0, 10, (3, 5)).astype("int64")


# --- through both models ------------------------------------------------------------------------

def test_round_trip_through_both_models_with_auto_map(tmp_path):
    seeded(0)
    t, p = randomize_bn(TorchResNet()), PaddleResNet()
    src, dst = tmp_path / "resnet.pth", tmp_path / "out" / "resnet.pdparams"
    torch.save(t.state_dict(), src)
    lm = LayerMap()
    lm.auto(p, t, stream=io.StringIO())
    reference = TorchResNet()
    reference.load_state_dict(torch.load(src))
    with torch.no_grad():  # the values must be the checkpoint's, not the torch model's
        for v in t.parameters():
            v.mul_(0.5)
    table, text = _convert(src, dst, paddle_model=p, torch_model=t, layer_map=lm)
    assert bool(table) and table.mode == "models"
    t = reference
    fresh = PaddleResNet()
    missing, unexpected = _load_into(fresh, str(dst))
    assert not missing and not unexpected
    x = np.random.RandomState(1).rand(2, 3, 8, 8).astype("float32")
    assert max_diff(t, fresh, x) < TOL
    fc = _row(table, "fc.weight")
    assert (fc.action, fc.dst_key, fc.src_shape, fc.dst_shape) == ("transposed", "head.weight", (5, 16), (16, 5))
    bn = _row(table, "layer1.0.downsample.1.running_var")
    assert (bn.action, bn.dst_key) == ("renamed", "blocks.0.short_norm._variance")
    assert _row(table, "layer1.0.bn1.num_batches_tracked").action == "dropped"
    assert table.counts()["dropped"] == 6 and table.counts()["unmatched"] == 0
    assert f"[padiff convert] {src} -> {dst} (mapped through both models)" in text
    assert "  fc.weight " in text and "transposed  head.weight" in text
    assert f"[padiff convert] Wrote {dst} ({len(table.keys)} keys)." in text


def test_without_a_map_structure_pairs_what_registration_order_does_not(tmp_path):
    t, p = TorchResNet(), PaddleResNet()  # the paddle model defines its head first
    torch.save(t.state_dict(), tmp_path / "r.pth")
    out = io.StringIO()
    table = convert_checkpoint(tmp_path / "r.pth", tmp_path / "r.pdparams", paddle_model=p, torch_model=t, stream=out)
    assert bool(table)
    text = out.getvalue()
    assert "[padiff convert] Registration order does not pair the weights (torch::Conv2d has 1 parameters/buffers" in text
    assert "by structure instead" in text
    fresh = PaddleResNet()
    _load_into(fresh, str(tmp_path / "r.pdparams"))
    x = np.random.RandomState(1).rand(2, 3, 8, 8).astype("float32")
    assert max_diff(t, fresh, x) < TOL


def test_when_neither_order_nor_structure_pairs_the_report_names_the_layers(tmp_path):
    t, p = TorchResNet(), PaddleResNet(classes=7)  # a head of another size: nothing fits it
    torch.save(t.state_dict(), tmp_path / "r.pth")
    out = io.StringIO()
    with pytest.raises(PadiffError, match=r"The two models' weights could not be paired \(see the report above\)"):
        convert_checkpoint(tmp_path / "r.pth", tmp_path / "r.pdparams", paddle_model=p, torch_model=t, stream=out)
    assert "[padiff convert] Assign weight Failed !!!" in out.getvalue()
    assert "<---  *** HERE ***" in out.getvalue()
    assert not (tmp_path / "r.pdparams").exists()


def test_checkpoint_that_does_not_fit_the_torch_model_is_named(tmp_path):
    t = TorchNamesNet()
    sd = t.state_dict()
    sd["fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(PadiffError, match=r"The checkpoint's `fc1.weight` has shape \[3, 3\] but the torch "
                                          r"model's has \[8, 4\]"):
        _convert(sd, None, paddle_model=PaddleNamesNet(), torch_model=t)


# --- with the paddle model only -----------------------------------------------------------------

def test_paddle_model_only_splits_multihead_attention(tmp_path):
    seeded(1)
    t = TorchTransformerBlock()
    torch.save(t.state_dict(), tmp_path / "blk.pth")
    table, text = _convert(tmp_path / "blk.pth", tmp_path / "blk.pdparams", paddle_model=PaddleMHABlock())
    assert bool(table) and table.mode == "paddle model"
    fresh = PaddleMHABlock()
    assert _load_into(fresh, str(tmp_path / "blk.pdparams")) == ([], [])
    assert max_diff(t, fresh, np.random.RandomState(2).rand(2, 5, 16).astype("float32")) < TOL
    splits = sorted(r.dst_key for r in table.rows if r.action == "split")
    assert splits == ["attn.k_proj.bias", "attn.k_proj.weight", "attn.q_proj.bias", "attn.q_proj.weight",
                      "attn.v_proj.bias", "attn.v_proj.weight"]
    assert "(mapped by the paddle model's layers)" in text


class _TEnc(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.enc(x)


class _PEnc(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.enc = paddle.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)

    def forward(self, x):
        return self.enc(x)


def test_builtin_composite_layers_convert_part_by_part(tmp_path):
    """TransformerEncoderLayer has no rule of its own: its attention, Linears and norms are
    converted one by one (with the paddle model only, and through both models)."""
    seeded(2)
    t = _TEnc()
    torch.save(t.state_dict(), tmp_path / "enc.pth")
    x = np.random.RandomState(3).rand(2, 4, 8).astype("float32")
    for kwargs in ({}, {"torch_model": _TEnc()}):
        table, _ = _convert(tmp_path / "enc.pth", tmp_path / "enc.pdparams", paddle_model=_PEnc(), **kwargs)
        assert bool(table), [r for r in table.rows if r.action == "unmatched"]
        fresh = _PEnc()
        assert _load_into(fresh, str(tmp_path / "enc.pdparams")) == ([], [])
        assert max_diff(t, fresh, x) < TOL
        assert _row(table, "enc.linear1.weight").action == "transposed"


class _TTagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 6)
        self.lstm = torch.nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True, proj_size=4)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.out(self.lstm(self.embed(ids))[0])


class _PTagger(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.embed = paddle.nn.Embedding(20, 6)
        self.lstm = paddle.nn.LSTM(6, 8, num_layers=2, direction="bidirect", proj_size=4)
        self.out = paddle.nn.Linear(8, 3)

    def forward(self, ids):
        return self.out(self.lstm(self.embed(ids))[0])


def test_lstm_with_projection_fills_paddle_aliases(tmp_path):
    """paddle's LSTM saves each weight twice (flat and per cell); both keys get the value."""
    seeded(3)
    t = _TTagger()
    torch.save(t.state_dict(), tmp_path / "lstm.pth")
    table, _ = _convert(tmp_path / "lstm.pth", tmp_path / "lstm.pdparams", paddle_model=_PTagger())
    assert bool(table)
    fresh = _PTagger()
    assert _load_into(fresh, str(tmp_path / "lstm.pdparams")) == ([], [])
    ids = np.random.RandomState(4).randint(0, 20, (2, 6)).astype("int64")
    assert max_diff(t, fresh, ids) < TOL
    hr = _row(table, "lstm.weight_hr_l0")
    assert hr.action == "transposed" and hr.src_shape == (4, 8) and hr.dst_shape == (8, 4)
    assert "also saved as lstm.0.cell_fw.weight_ho" in hr.note


def test_paddle_names_that_differ_are_left_unmatched_and_said(tmp_path):
    t = TorchResNet()
    torch.save(t.state_dict(), tmp_path / "r.pth")
    table, text = _convert(tmp_path / "r.pth", tmp_path / "r.pdparams", paddle_model=PaddleResNet())
    assert bool(table) is False
    assert "head.weight" in [r.dst_key for r in table.missing]
    assert "without a source in the checkpoint (they would keep the model's random initial values)" in text
    assert "give the torch model too" in text
    assert "the checkpoint has no key under `head.`" in text
    assert "Nothing written to" in text and not (tmp_path / "r.pdparams").exists()


# --- by names (the seeds' torch2paddle recipe) ---------------------------------------------------

def test_names_only_guesses_and_says_so(tmp_path):
    seeded(4)
    t = randomize_bn(TorchNamesNet())
    torch.save(t.state_dict(), tmp_path / "n.pth")
    table, text = _convert(tmp_path / "n.pth", tmp_path / "n.pdparams")
    assert table.mode == "names"
    assert {r.src_key for r in table.guessed} == {"tok_emb.weight", "fc1.weight", "fc2.weight"}
    assert _row(table, "tok_emb.weight").action == "copied"
    assert _row(table, "fc2.weight").action == "transposed"  # square: transposed all the same
    assert (_row(table, "bn.running_mean").action, _row(table, "bn.running_mean").dst_key) == ("renamed", "bn._mean")
    assert _row(table, "bn.num_batches_tracked").action == "dropped"
    assert "guessed: 2-D weight assumed to be a Linear" in text
    assert "guessed: 2-D weight kept: the layer looks like an embedding" in text
    assert "3 keys converted by a guess from the names (tok_emb.weight, fc1.weight, fc2.weight)" in text
    fresh = PaddleNamesNet()
    assert _load_into(fresh, str(tmp_path / "n.pdparams")) == ([], [])
    assert max_diff(t, fresh, IDS) < TOL


def test_names_with_the_torch_model_guess_nothing(tmp_path):
    t = randomize_bn(TorchNamesNet())
    table, text = _convert(t.state_dict(), tmp_path / "n.pdparams", torch_model=TorchNamesNet())
    assert table.guessed == [] and "guess" not in text
    assert table.mode == "torch model names"
    fresh = PaddleNamesNet()
    _load_into(fresh, str(tmp_path / "n.pdparams"))
    assert max_diff(t, fresh, IDS) < TOL


def test_nested_and_data_parallel_checkpoints_are_unwrapped(tmp_path):
    t = TorchNamesNet()
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in t.state_dict().items()}}
    torch.save(wrapped, tmp_path / "w.pth")
    table, text = _convert(tmp_path / "w.pth", None, paddle_model=PaddleNamesNet())
    assert bool(table) and not table.written
    assert "took the state dict under the checkpoint's `state_dict` key" in text
    assert "removed the `module.` prefix" in text
    assert "-> (not written)" in text


def test_layer_map_without_both_models_is_refused():
    with pytest.raises(PadiffError, match="A layer_map pairs the layers of two models"):
        _convert(TorchNamesNet().state_dict(), None, paddle_model=PaddleNamesNet(), layer_map=LayerMap())


# --- the command line -----------------------------------------------------------------------------

FACTORIES = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {TESTS!r})
    from models_weights import PaddleResNet, TorchResNet
    from padiff import LayerMap

    def build_paddle():
        return PaddleResNet()

    def build_paddle_7():
        return PaddleResNet(classes=7)

    def build_torch():
        return TorchResNet()

    def pairs(paddle_model, torch_model):
        lm = LayerMap()
        lm.map = {{paddle_model.head: torch_model.fc}}
        return lm
""")


def test_cli_converts_with_both_models_and_auto(tmp_path, capsys):
    seeded(5)
    (tmp_path / "factories.py").write_text(FACTORIES)
    t = randomize_bn(TorchResNet())
    torch.save(t.state_dict(), tmp_path / "t.pth")
    dst = tmp_path / "p.pdparams"
    code = main([str(tmp_path / "t.pth"), str(dst), "--paddle-model", f"{tmp_path / 'factories.py'}:build_paddle",
                 "--torch-model", f"{tmp_path / 'factories.py'}:build_torch", "--auto",
                 "--layer-map", f"{tmp_path / 'factories.py'}:pairs"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[LayerMap.auto] 13 pairs of layers with weights (paddle <==> torch):" in out
    head = [line for line in out.splitlines() if "PaddleResNet.head" in line]
    assert head and "TorchResNet.fc" in head[0] and head[0].endswith("your LayerMap")  # paired by hand
    assert "[padiff convert] Wrote" in out
    fresh = PaddleResNet()
    assert _load_into(fresh, str(dst)) == ([], [])
    assert max_diff(t, fresh, np.random.RandomState(6).rand(1, 3, 8, 8).astype("float32")) < TOL


def test_cli_with_a_dotted_module_and_dry_run(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    torch.save(TorchResNet().state_dict(), tmp_path / "t.pth")
    code = main(["t.pth", "p.pdparams", "--paddle-model", "my_factories:build_paddle", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 1  # the paddle names differ: paddle keys are left without a source
    assert "(mapped by the paddle model's layers)" in out and not (tmp_path / "p.pdparams").exists()


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope.pth"), str(tmp_path / "x.pdparams")]) == 2
    assert f"padiff convert: error: The checkpoint `{tmp_path / 'nope.pth'}` does not exist." \
        in capsys.readouterr().err
    torch.save(TorchNamesNet().state_dict(), tmp_path / "t.pth")
    assert main([str(tmp_path / "t.pth"), str(tmp_path / "x.pdparams"), "--paddle-model", "no_such_mod:f"]) == 2
    assert "padiff convert: error: --paddle-model: cannot import `no_such_mod`" in capsys.readouterr().err
    assert main([str(tmp_path / "t.pth"), str(tmp_path / "x.pdparams"), "--auto"]) == 2
    assert "--layer-map and --auto pair two models' layers" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    assert main([str(tmp_path / "junk.pth"), str(tmp_path / "x.pdparams")]) == 2
    assert "torch could not read" in capsys.readouterr().err


def test_cli_models_that_cannot_be_paired_exit_1(tmp_path, capsys):
    (tmp_path / "factories.py").write_text(FACTORIES)
    torch.save(TorchResNet().state_dict(), tmp_path / "t.pth")
    f = tmp_path / "factories.py"
    code = main([str(tmp_path / "t.pth"), str(tmp_path / "p.pdparams"), "--paddle-model", f"{f}:build_paddle_7",
                 "--torch-model", f"{f}:build_torch"])
    captured = capsys.readouterr()
    assert code == 1
    assert "[padiff convert] Assign weight Failed !!!" in captured.out
    assert "padiff convert: The two models' weights could not be paired (see the report above): " in captured.err
