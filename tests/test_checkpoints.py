"""Checkpoints as users have them (issue 21): safetensors (sharded) read and written without the
safetensors package, Hugging Face and torchvision checkpoints converted both ways through the
two models and checked with --verify.

The third-party quirks of tests/real_ports/conftest.py are repeated here, before anything
imports torchvision or transformers: torchvision 0.28's meta registrations fail on the CPU
wheel of torch (an empty module stands in), paddlecodec's `torchcodec` breaks transformers'
audio utilities (hidden), HF is imported before paddleformers, and paddleformers configs get
fuse_rms_norm=False. The model zoos are imported in fixtures, so collecting the rest of the
suite does not pay for them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import textwrap
import types

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
sys.modules["torchcodec"] = None

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from padiff import PadiffError, register_rule  # noqa: E402
from padiff.weights.checkpoint import (SafetensorsWriter, TensorInfo, open_checkpoint,  # noqa: E402
                                       write_safetensors)
from padiff.convert_cli import main
from padiff.porting import convert_checkpoint  # noqa: E402
from padiff.weights.rules import Converted, _RULES  # noqa: E402

st_numpy = pytest.importorskip("safetensors.numpy")
st_torch = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402



def _rows(table):
    return {(r.src_key, r.dst_key): r for r in table.rows}


# --- reading and writing safetensors against the safetensors package -------------------------

def test_reader_reads_what_the_safetensors_package_writes(tmp_path):
    rng = np.random.RandomState(0)
    arrays = {"w": rng.rand(3, 5).astype("float32"), "h": rng.rand(4).astype("float16"),
              "ids": np.arange(6, dtype="int64").reshape(2, 3), "scalar": np.array(2.5, "float32"),
              "mask": np.array([True, False]), "empty": np.zeros((0, 3), "float32")}
    st_numpy.save_file(arrays, str(tmp_path / "a.safetensors"), metadata={"format": "np", "note": "x"})
    bf = torch.randn(4, 6).to(torch.bfloat16)
    st_torch.save_file({"bf": bf}, str(tmp_path / "b.safetensors"), metadata={"format": "pt"})
    with open_checkpoint(str(tmp_path / "a.safetensors")) as ck:
        assert ck.metadata == {"format": "np", "note": "x"} and ck.framework == "paddle"
        for k, a in arrays.items():
            got = ck.array(k)
            assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a), k
        assert ck.info("scalar") == TensorInfo("scalar", (), "float32")
        assert not ck.array("w").flags.writeable  # a view of the file
    with open_checkpoint(str(tmp_path / "b.safetensors")) as ck:
        assert ck.framework == "torch" and ck.info("bf").dtype == "bfloat16"
        assert np.array_equal(ck.array("bf"), bf.view(torch.uint16).numpy())  # the raw bits


def test_writer_is_read_by_the_safetensors_package(tmp_path):
    rng = np.random.RandomState(1)
    bf = torch.randn(3, 4).to(torch.bfloat16)
    tensors = {"f32": (rng.rand(2, 3).astype("float32"), "float32"), "f16": (rng.rand(5).astype("float16"), "float16"),
               "bf16": (bf.view(torch.uint16).numpy(), "bfloat16"), "i64": (np.array([[1, -2]], "int64"), "int64"),
               "zero_d": (np.array(7, "int64"), "int64")}
    files = write_safetensors(tmp_path / "out.safetensors", tensors, metadata={"format": "pt"})
    assert files == [str(tmp_path / "out.safetensors")]
    loaded = st_torch.load_file(files[0])
    assert torch.equal(loaded["bf16"], bf) and loaded["bf16"].dtype == torch.bfloat16
    assert loaded["zero_d"].shape == () and int(loaded["zero_d"]) == 7
    for k in ("f32", "f16", "i64"):
        assert np.array_equal(loaded[k].numpy(), tensors[k][0]) and loaded[k].numpy().dtype == tensors[k][0].dtype
    with safe_open(files[0], framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    with open(files[0], "rb") as fh:  # the data starts 8-byte aligned
        assert int.from_bytes(fh.read(8), "little") % 8 == 0


def test_sharded_writer_writes_an_index_as_hugging_face_does(tmp_path):
    a = np.arange(100, dtype="float32").reshape(10, 10)  # 400 bytes
    big = np.ones((30, 10), "float32")  # 1200 bytes: over the shard size, a shard of its own
    b = np.arange(50, dtype="int64")  # 400 bytes
    entries = [TensorInfo("a", a.shape, "float32"), TensorInfo("big", big.shape, "float32"),
               TensorInfo("b", b.shape, "int64")]
    writer = SafetensorsWriter(f"{tmp_path / 'model'}/", entries, {"format": "np"}, max_shard_size="800B")
    for name, arr in (("b", b), ("big", big), ("a", a)):  # any order
        writer.write(name, arr)
    files = writer.close()
    folder = tmp_path / "model"
    names = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
             "model-00003-of-00003.safetensors"]
    assert files == [str(folder / n) for n in names] + [str(folder / "model.safetensors.index.json")]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert index == {"metadata": {"total_size": 2000}, "weight_map": {"a": names[0], "big": names[1], "b": names[2]}}
    assert st_numpy.load_file(str(folder / names[1]))["big"].shape == (30, 10)
    for src in (folder, folder / "model.safetensors.index.json"):  # a folder or its index
        with open_checkpoint(str(src)) as ck:
            assert ck.keys() == ["a", "big", "b"] and ck.kind == "safetensors"
            assert np.array_equal(ck.array("a"), a) and np.array_equal(ck.array("b"), b)


def test_writer_and_reader_refuse_what_does_not_fit(tmp_path):
    writer = SafetensorsWriter(tmp_path / "x.safetensors", [TensorInfo("w", (2, 2), "float32")])
    with pytest.raises(PadiffError, match=r"`w` is float64 \[2, 2\], but float32 \[2, 2\] was declared"):
        writer.write("w", np.zeros((2, 2)))
    with pytest.raises(PadiffError, match=r"1 tensor\(s\) were declared but never written \(w\)"):
        writer.close()
    assert not (tmp_path / "x.safetensors").exists()
    st_numpy.save_file({"w": np.ones((64, 64), "float32")}, str(tmp_path / "cut.safetensors"))
    with open(tmp_path / "cut.safetensors", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(PadiffError, match=r"`w` \(F32 \[64, 64\], 16384 bytes\) has data offsets \[0, 16384\], "
                                          r"which do not fit it or the file: the file is damaged or cut short"):
        open_checkpoint(str(tmp_path / "cut.safetensors"))


# --- small models: both directions, bfloat16, models without values ------------------------------

class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.fc = torch.nn.Linear(6, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(torch.relu(self.bn(self.fc(self.emb(ids).mean(1)))))


class PaddleNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.emb = paddle.nn.Embedding(11, 6)
        self.fc = paddle.nn.Linear(6, 8)
        self.bn = paddle.nn.BatchNorm1D(8)
        self.head = paddle.nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(paddle.nn.functional.relu(self.bn(self.fc(self.emb(ids).mean(1)))))


def _torch_net():
    torch.manual_seed(0)
    t = TorchNet().eval()
    with torch.no_grad():
        t.bn.running_mean.uniform_(-1, 1)
        t.bn.running_var.uniform_(0.5, 2)
    return t


def test_a_bfloat16_checkpoint_converts_bit_for_bit_both_ways(tmp_path):
    t = _torch_net().to(torch.bfloat16)
    st_torch.save_file(t.state_dict(), str(tmp_path / "t.safetensors"), metadata={"format": "pt"})
    table = convert_checkpoint(str(tmp_path / "t.safetensors"), str(tmp_path / "p.safetensors"),
                               paddle_model=PaddleNet(), torch_model=TorchNet(), stream=io.StringIO())
    assert bool(table) and (table.src_framework, table.dst_framework) == ("torch", "paddle")
    with safe_open(str(tmp_path / "p.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "np"}  # what paddleformers reads
    got = st_torch.load_file(str(tmp_path / "p.safetensors"))
    assert got["fc.weight"].dtype == torch.bfloat16 and torch.equal(got["fc.weight"], t.fc.weight.detach().T)
    assert torch.equal(got["bn._variance"], t.bn.running_var)
    row = _rows(table)[("bn.num_batches_tracked", "")]
    assert (row.action, row.note) == ("dropped", "paddle has no such tensor")
    back = convert_checkpoint(str(tmp_path / "p.safetensors"), str(tmp_path / "back.pth"),
                              paddle_model=PaddleNet(), torch_model=TorchNet(), stream=io.StringIO())
    assert (back.src_framework, back.dst_framework) == ("paddle", "torch") and bool(back)
    sd = torch.load(str(tmp_path / "back.pth"), weights_only=True)
    for k, v in t.state_dict().items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    added = _rows(back)[("", "bn.num_batches_tracked")]
    assert (added.action, added.note) == ("added", "paddle has no such tensor: the torch model's own value")
    assert _rows(back)[("fc.weight", "fc.weight")].action == "transposed"
    TorchNet().load_state_dict(sd)  # strict: every torch key is there


class TorchTagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 6)
        self.lstm = torch.nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True, proj_size=4)
        self.out = torch.nn.Linear(8, 3)


class PaddleTagger(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.embed = paddle.nn.Embedding(20, 6)
        self.lstm = paddle.nn.LSTM(6, 8, num_layers=2, direction="bidirect", proj_size=4)
        self.out = paddle.nn.Linear(8, 3)


@pytest.mark.parametrize("pair", ["mha", "lstm"])
def test_split_and_aliased_tensors_convert_back_bit_for_bit(pair, tmp_path):
    """torch's packed in_proj_weight is split into paddle's q/k/v (and fused back from them);
    paddle's LSTM saves each weight under two keys (either one gives the torch tensor)."""
    from models_weights import PaddleMHABlock, TorchTransformerBlock

    T, P = {"mha": (TorchTransformerBlock, PaddleMHABlock), "lstm": (TorchTagger, PaddleTagger)}[pair]
    torch.manual_seed(3)
    t = T()
    torch.save(t.state_dict(), tmp_path / "t.pth")
    assert convert_checkpoint(str(tmp_path / "t.pth"), str(tmp_path / "p.pdparams"), paddle_model=P(), torch_model=T(),
                              stream=io.StringIO())
    back = convert_checkpoint(str(tmp_path / "p.pdparams"), str(tmp_path / "b.safetensors"), paddle_model=P(),
                              torch_model=T(), stream=io.StringIO())
    assert bool(back) and back.counts()["unmatched"] == 0
    sd = st_torch.load_file(str(tmp_path / "b.safetensors"))
    assert sd.keys() == t.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in t.state_dict().items())
    if pair == "mha":
        row = _rows(back)[("attn.{q_proj, k_proj, v_proj}.weight", "attn.in_proj_weight")]
        assert (row.action, row.dst_shape) == ("fused", (48, 16))


def test_models_built_without_values_convert_the_same(tmp_path):
    """Models on the meta device / under LazyGuard hold no weights: the conversion then holds
    only the tensors it converts."""
    t = _torch_net()
    torch.save(t.state_dict(), tmp_path / "t.bin")
    with torch.device("meta"):
        meta = TorchNet()
    with paddle.LazyGuard():
        lazy = PaddleNet()
    table = convert_checkpoint(str(tmp_path / "t.bin"), str(tmp_path / "p.pdparams"), paddle_model=lazy,
                               torch_model=meta, stream=io.StringIO())
    assert bool(table)
    p = PaddleNet()
    p.eval()
    assert p.set_state_dict(paddle.load(str(tmp_path / "p.pdparams"))) == ([], [])
    ids = np.random.RandomState(0).randint(0, 11, (4, 5))
    with torch.no_grad():
        want = t(torch.tensor(ids)).numpy()
    np.testing.assert_allclose(p(paddle.to_tensor(ids)).numpy(), want, rtol=1e-5, atol=1e-6)
    back = convert_checkpoint(str(tmp_path / "p.pdparams"), str(tmp_path / "back.safetensors"), paddle_model=lazy,
                              torch_model=meta, stream=io.StringIO())
    assert _rows(back)[("", "bn.num_batches_tracked")].note == "paddle has no such tensor: written as 0"
    with pytest.raises(PadiffError, match=r"a model was built without values \(on the meta device, or under "
                                          r"paddle.LazyGuard\)"):
        convert_checkpoint(str(tmp_path / "t.bin"), None, paddle_model=lazy, torch_model=meta,
                           inputs={"ids": ids}, stream=io.StringIO())


def test_a_safetensors_file_that_does_not_say_is_read_by_the_shapes_it_fits(tmp_path):
    p = PaddleNet()
    st_numpy.save_file({k: v.numpy() for k, v in p.state_dict().items()}, str(tmp_path / "p.safetensors"))
    out = io.StringIO()
    table = convert_checkpoint(str(tmp_path / "p.safetensors"), None, paddle_model=p, torch_model=TorchNet(),
                               stream=out)
    assert table.src_framework == "paddle"
    assert ("[padiff convert] Note: the file does not say which framework wrote it; its shapes fit the paddle "
            "model's (9 of 9 keys): read as a paddle checkpoint") in out.getvalue()
    assert "  paddle key " in out.getvalue() and " torch key " in out.getvalue()


def test_a_rule_that_does_more_than_move_elements_is_not_run_backwards(tmp_path):
    class TScale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(4))

    class PScale(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.w = self.create_parameter([4])

    def doubled(src, dst, *, src_kind, dst_kind):
        (name, _), = dst
        return [Converted(name, "w", dict(src)["w"] * 2.0, "scaled", lambda a: a * 2.0)]

    register_rule("TScale", "PScale", doubled)
    try:
        st_numpy.save_file({"w": np.ones(4, "float32")}, str(tmp_path / "p.safetensors"), metadata={"format": "np"})
        with pytest.raises(PadiffError, match=r"The conversion of `TScale.w` -> `PScale.w` \(scaled\) does more than "
                                              r"move elements about \(run on index arrays it gave float64 \[4\] "
                                              r"holding 0..6 for 4 elements\), so it cannot be run backwards"):
            convert_checkpoint(str(tmp_path / "p.safetensors"), str(tmp_path / "t.safetensors"),
                               paddle_model=PScale(), torch_model=TScale(), stream=io.StringIO())
    finally:
        del _RULES[0]


def test_torch_files_old_and_new_and_a_save_pretrained_folder_are_read(tmp_path):
    t = _torch_net()
    torch.save(t.state_dict(), tmp_path / "new.pth")  # a zip: memory-mapped
    torch.save({"epoch": 3, "state_dict": t.state_dict()}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "hf").mkdir()
    torch.save(t.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    for src in ("new.pth", "old.pth", "hf"):
        with open_checkpoint(str(tmp_path / src)) as ck:
            assert ck.framework == "torch" and ck.info("fc.weight") == TensorInfo("fc.weight", (8, 6), "float32")
            assert np.array_equal(ck.array("bn.running_var"), t.bn.running_var.numpy()), src
    with open_checkpoint(str(tmp_path / "old.pth")) as ck:
        assert ck.notes == ["took the state dict under the checkpoint's `state_dict` key"]
        assert ck.dropped == [] and "epoch" not in ck
    table = convert_checkpoint(str(tmp_path / "hf"), str(tmp_path / "p.pdparams"), paddle_model=PaddleNet(),
                               stream=io.StringIO())
    assert bool(table) and table.mode == "paddle model"


def test_usage_mistakes_are_named(tmp_path):
    torch.save(TorchNet().state_dict(), tmp_path / "t.pth")
    paddle.save(PaddleNet().state_dict(), str(tmp_path / "p.pdparams"))
    with pytest.raises(PadiffError, match=r"Converting a paddle checkpoint into torch needs both models"):
        convert_checkpoint(str(tmp_path / "p.pdparams"), None, torch_model=TorchNet(), stream=io.StringIO())
    with pytest.raises(PadiffError, match=r"`.*x.pth` is a torch file, but the converted tensors are in paddle's "
                                          r"layout: write a .pdparams or a .safetensors file"):
        convert_checkpoint(str(tmp_path / "t.pth"), str(tmp_path / "x.pth"), paddle_model=PaddleNet(),
                           stream=io.StringIO())
    with pytest.raises(PadiffError, match=r"verify runs both models on inputs: give inputs"):
        convert_checkpoint(str(tmp_path / "t.pth"), str(tmp_path / "x.pdparams"), paddle_model=PaddleNet(),
                           torch_model=TorchNet(), verify=True, stream=io.StringIO())
    with pytest.raises(PadiffError, match=r"A shard size is a number of bytes with an optional unit"):
        convert_checkpoint(str(tmp_path / "t.pth"), None, max_shard_size="big", stream=io.StringIO())


# --- Hugging Face Llama and Gemma 3, torchvision ResNet-18 -------------------------------------

FACTORIES = textwrap.dedent("""
    import numpy as np

    from transformers import Gemma3TextConfig, Gemma3TextModel, LlamaConfig, LlamaForCausalLM
    from paddleformers.transformers import Gemma3TextConfig as PDGemma3TextConfig
    from paddleformers.transformers import Gemma3TextModel as PDGemma3TextModel
    from paddleformers.transformers import LlamaConfig as PDLlamaConfig
    from paddleformers.transformers import LlamaForCausalLM as PDLlamaForCausalLM

    THETA = 10000.0
    COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, tie_word_embeddings=False)
    LLAMA = dict(COMMON, head_dim=8, rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False)
    GEMMA = dict(COMMON, head_dim=16, rms_norm_eps=1e-5, hidden_activation="gelu_pytorch_tanh",
                 query_pre_attn_scalar=24, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                 attention_bias=False, final_logit_softcapping=None, attn_logit_softcapping=None)
    ROPE = {"rope_type": "default", "rope_theta": THETA}

    def hf_llama():
        return LlamaForCausalLM(LlamaConfig(**LLAMA, rope_parameters=ROPE, attn_implementation="eager")).eval()

    def pd_llama():
        return PDLlamaForCausalLM(PDLlamaConfig(**LLAMA, rope_theta=THETA, _attn_implementation="eager",
                                                fuse_rms_norm=False))

    def pd_llama_scaled():  # a porting slip: layers.1's attention scale doubled
        model = pd_llama()
        model.model.layers[1].self_attn.scaling *= 2.0
        return model

    def hf_gemma():
        rope = {"full_attention": ROPE, "sliding_attention": ROPE}
        return Gemma3TextModel(Gemma3TextConfig(**GEMMA, rope_parameters=rope, attn_implementation="eager")).eval()

    def pd_gemma():
        return PDGemma3TextModel(PDGemma3TextConfig(**GEMMA, rope_theta=THETA, rope_local_base_freq=THETA,
                                                    _attn_implementation="eager", fuse_rms_norm=False))

    def ids():
        return {"input_ids": np.random.RandomState(0).randint(1, 96, (2, 8)).astype("int64")}
""")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The model factories as a module file (what --torch-model module:factory loads), with the
    third-party imports in the order the quirks need."""
    pytest.importorskip("transformers")
    import transformers  # noqa: F401  (before paddleformers: quirk 3)
    from transformers import Gemma3TextModel, LlamaForCausalLM  # noqa: F401

    pytest.importorskip("paddleformers")
    folder = tmp_path_factory.mktemp("zoo")
    (folder / "zoo_models.py").write_text(FACTORIES)
    spec = f"{folder / 'zoo_models.py'}"
    from padiff.convert_cli import load_object

    return spec, lambda name: load_object(f"{spec}:{name}", "test")


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hf_llama_sharded_safetensors_into_paddleformers_and_back(zoo, tmp_path, capsys):
    spec, get = zoo
    torch.manual_seed(0)
    hf = get("hf_llama")()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="60KB")
    shards = sorted(f for f in os.listdir(tmp_path / "hf") if f.endswith(".safetensors"))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    np.savez(tmp_path / "ids.npz", **get("ids")())
    models = ["--torch-model", f"{spec}:hf_llama", "--paddle-model", f"{spec}:pd_llama"]

    code, out, err = _cli(capsys, tmp_path / "hf", tmp_path / "pd" / "llama.pdparams", *models,
                          "--verify", tmp_path / "ids.npz", "--table", tmp_path / "llama.csv")
    assert code == 0, out + err
    assert f"[padiff convert] {tmp_path / 'hf'} -> {tmp_path / 'pd' / 'llama.pdparams'} (mapped through both models)" \
        in out
    assert "[padiff convert] 7 copied, 14 transposed" in out
    assert (f"[padiff convert] Verify: the torch model loaded from {tmp_path / 'hf'} against the paddle model loaded "
            f"from {tmp_path / 'pd' / 'llama.pdparams'}, forward on the inputs: ALIGNED.") in out
    with open(tmp_path / "llama.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 21
    assert rows[1] == {"source_key": "model.layers.0.self_attn.q_proj.weight", "source_shape": "32x32",
                       "action": "transposed", "destination_key": "model.layers.0.self_attn.q_proj.weight",
                       "destination_shape": "32x32", "note": "", "guessed": ""}

    code, out, err = _cli(capsys, tmp_path / "hf", tmp_path / "pd" / "scaled.pdparams", "--torch-model",
                          f"{spec}:hf_llama", "--paddle-model", f"{spec}:pd_llama_scaled", "--inputs", f"{spec}:ids",
                          "--verify")
    assert code == 1, out + err
    assert "forward on the inputs: NOT ALIGNED: the first difference is in torch " \
           "`LlamaForCausalLM.model.layers.1.self_attn" in out

    code, out, err = _cli(capsys, tmp_path / "pd" / "llama.pdparams", f"{tmp_path / 'back'}/", *models,
                          "--verify", tmp_path / "ids.npz", "--max-shard-size", "60KB")
    assert code == 0, out + err
    assert "  paddle key " in out and "[padiff convert] 7 copied, 14 transposed" in out
    assert f"[padiff convert] Wrote 2 shards and {tmp_path / 'back' / 'model.safetensors.index.json'} (21 keys)." in out
    assert "forward on the inputs: ALIGNED." in out
    # bit for bit what HF saved, and HF itself loads it
    sd = {}
    for f in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        sd.update(st_torch.load_file(str(tmp_path / "back" / f)))
    assert sd.keys() == hf.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in hf.state_dict().items())
    # paddleformers' own save_pretrained writes safetensors in HF's layout and without a `format`:
    # the shapes tell (k_proj [16, 32] fits the torch model only), and it converts like HF's
    pd = get("pd_llama")()
    pd.set_state_dict(paddle.load(str(tmp_path / "pd" / "llama.pdparams")))
    pd.save_pretrained(str(tmp_path / "pf"))
    out = io.StringIO()
    table = convert_checkpoint(str(tmp_path / "pf"), str(tmp_path / "pf.pdparams"), paddle_model=get("pd_llama")(),
                               torch_model=get("hf_llama")(), stream=out)
    assert table.src_framework == "torch" and bool(table), out.getvalue()
    assert ("the file does not say which framework wrote it; its shapes fit the torch model's (21 of 21 keys): read "
            "as a torch checkpoint") in out.getvalue()
    first, again = paddle.load(str(tmp_path / "pd" / "llama.pdparams")), paddle.load(str(tmp_path / "pf.pdparams"))
    assert all(np.array_equal(again[k].numpy(), v.numpy()) for k, v in first.items())
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "back" / "config.json")
    again = type(hf).from_pretrained(str(tmp_path / "back"))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in hf.state_dict().items())


def test_gemma3_fused_layout_found_by_the_probe_converts_both_ways(zoo, tmp_path):
    """paddleformers' Gemma3 interleaves q/k/v per kv head in one qkv_proj: without inputs the
    converter assumes concatenation and says so; with them it finds the layout by running the
    models, and the paddle checkpoint converts back into HF's separate projections."""
    spec, get = zoo
    torch.manual_seed(1)
    hf = get("hf_gemma")()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids = get("ids")()
    out = io.StringIO()
    convert_checkpoint(str(tmp_path / "hf"), None, paddle_model=get("pd_gemma")(), torch_model=get("hf_gemma")(),
                       stream=out)
    assert ("are fused into paddle `Gemma3TextModel.layers.0.self_attn.qkv_proj` (and 1 more of this kind): "
            "concatenated [q_proj | k_proj | v_proj], assumed, without inputs to run the models on (give them to "
            "find it: inputs=, --verify INPUT.npz or --inputs module:factory).") in out.getvalue()
    out = io.StringIO()
    table = convert_checkpoint(str(tmp_path / "hf"), str(tmp_path / "pd.safetensors"), paddle_model=get("pd_gemma")(),
                               torch_model=get("hf_gemma")(), inputs=ids, verify=True, stream=out)
    assert bool(table), out.getvalue()
    assert "interleaved in 2 groups, each [32 rows of q_proj | 16 of k_proj | 16 of v_proj], found by running" \
        in out.getvalue()
    row = _rows(table)[("layers.0.self_attn.{q_proj, k_proj, v_proj}.weight", "layers.0.self_attn.qkv_proj.weight")]
    assert (row.action, row.dst_shape) == ("fused", (32, 128))
    out = io.StringIO()
    back = convert_checkpoint(str(tmp_path / "pd.safetensors"), str(tmp_path / "back.safetensors"),
                              paddle_model=get("pd_gemma")(), torch_model=get("hf_gemma")(), inputs=ids, verify=True,
                              stream=out)
    assert bool(back) and "forward on the inputs: ALIGNED." in out.getvalue()
    split = _rows(back)[("layers.0.self_attn.qkv_proj.weight", "layers.0.self_attn.k_proj.weight")]
    assert (split.action, split.src_shape, split.dst_shape) == ("split", (32, 128), (32, 32))
    sd = st_torch.load_file(str(tmp_path / "back.safetensors"))
    assert all(torch.equal(sd[k], v) for k, v in hf.state_dict().items())


def test_torchvision_resnet18_pth_into_paddle_vision_verifies(tmp_path, capsys):
    pytest.importorskip("torchvision")
    import torchvision

    torch.manual_seed(2)
    t = torchvision.models.resnet18()
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(t.state_dict(), tmp_path / "resnet18.pth")
    np.savez(tmp_path / "img.npz", np.random.RandomState(0).standard_normal((1, 3, 64, 64)).astype("float32"))
    models = ["--torch-model", "torchvision.models:resnet18", "--paddle-model", "paddle.vision.models:resnet18"]
    code, out, err = _cli(capsys, tmp_path / "resnet18.pth", tmp_path / "resnet18.pdparams", *models,
                          "--verify", tmp_path / "img.npz")
    assert code == 0, out + err
    assert "[padiff convert] 61 copied, 1 transposed, 40 renamed, 20 dropped" in out
    assert "forward on the inputs: ALIGNED." in out
    p = paddle.vision.models.resnet18()
    assert p.set_state_dict(paddle.load(str(tmp_path / "resnet18.pdparams"))) == ([], [])
