"""Helpers for the real-ports tests (no library quirks here: those are in conftest.py)."""

import random
import re
import time

import numpy as np
import paddle
import torch

from padiff import auto_diff

# Quirk 4: paddle's fused RMSNorm kernel (fused_rms_norm_ext) is not registered for CPU
# ("The kernel `fused_rms_norm_ext` is not registered"). paddleformers' RMSNorm
# (paddleformers/nn/norm.py) uses it unless the config has fuse_rms_norm=False (it reads
# config.get("fuse_rms_norm", True)). Every paddleformers config in these tests gets this.
PD_CPU = {"fuse_rms_norm": False}


def seed_all(seed=0):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    paddle.seed(seed)


def torch_params(model):
    return sum(p.numel() for p in model.parameters())


def paddle_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def run_pair(paddle_model, torch_model, paddle_inputs, torch_inputs, loss_fns, record=None):
    """auto_diff with zero glue: models, inputs and a loss pair, in model order (paddle first)."""
    if record is not None:
        record["torch_params"] = torch_params(torch_model)
        record["paddle_params"] = paddle_params(paddle_model)
    start = time.perf_counter()
    result = auto_diff(paddle_model, torch_model, (paddle_inputs, torch_inputs), loss_fn=list(loss_fns))
    if record is not None:
        record["auto_diff_s"] = round(time.perf_counter() - start, 2)
        record["aligned"] = bool(result)
    return result


def image_batch(batch, size, seed=0):
    """The same float32 image batch for both frameworks."""
    x = np.random.RandomState(seed).standard_normal((batch, 3, size, size)).astype("float32")
    return paddle.to_tensor(x), torch.from_numpy(x.copy())


def token_ids(batch, seq, vocab, seed=0):
    """The same int64 token ids for both frameworks; id 0 (the pad token) is never used."""
    ids = np.random.RandomState(seed).randint(1, vocab, size=(batch, seq)).astype("int64")
    return paddle.to_tensor(ids), torch.from_numpy(ids.copy())


def _first(out, key):
    """The tensor `key` of a model output: a ModelOutput / dict (HF, paddleformers with
    return_dict=True), a tuple or list (paddleformers' default return_dict=False), or a tensor."""
    if isinstance(out, (torch.Tensor, paddle.Tensor)):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        if key in out.keys() and out[key] is not None:
            return out[key]
    return out[0]


def hidden_mean(out):
    return _first(out, "last_hidden_state").mean()


def logits_mean(out):
    return _first(out, "logits").mean()


def output_mean(out):
    return _first(out, "logits").mean()


def layer_of(path):
    """The layer part of a finding's path ('LlamaModel.layers.0.self_attn > paddle.matmul' ->
    'LlamaModel.layers.0.self_attn'): padiff may add the framework call after ' > ', and
    ' (call 2)' for a layer's second call."""
    return re.sub(r" \(call \d+\)$", "", (path or "").split(" > ")[0].strip())


def names_layer(path, layer):
    """True when the finding's layer is `layer`, a dotted path below the root model:
    names_layer('AlexNet._drop1', '_drop1'), names_layer('LlamaModel.layers.1.mlp', 'layers.1.mlp')."""
    head = layer_of(path)
    return head == layer or head.endswith("." + layer)


def describe(result):
    """For assertion messages: the first finding and the end of the report."""
    first = result.first
    where = "no failing finding" if first is None else (
        f"first: stage={first.stage!r} what={first.what!r} ref_path={first.ref_path!r} "
        f"test_path={first.test_path!r}")
    report = result.report or ""
    return where + "\n--- report (last 3000 chars) ---\n" + report[-3000:]


def assert_aligned(result):
    assert bool(result) is True, describe(result)


def assert_fails_at(result, torch_layer, paddle_layer):
    """The pair differs and padiff names the expected layer on both sides (torch is the
    reference across frameworks: ref_path is the torch path, test_path the paddle one)."""
    assert bool(result) is False, "expected a difference, padiff says aligned\n" + describe(result)
    first = result.first
    assert first is not None, describe(result)
    assert names_layer(first.ref_path, torch_layer), f"torch side should be {torch_layer!r}\n" + describe(result)
    assert names_layer(first.test_path, paddle_layer), f"paddle side should be {paddle_layer!r}\n" + describe(result)
