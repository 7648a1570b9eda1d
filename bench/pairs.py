"""What the benchmarks share: the bundled model pairs they measure, and Linux's /proc
readings of resident memory."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "examples")]


def model_pair(kind: str, quick: bool):
    """(paddle model, torch model, input array) of one bundled pair, in eval mode, with the
    same weights on both sides.

    convnet8: 8 conv-BN-ReLU blocks on 8x3x64x64 (32x32 with ``quick``).
    encoderN: N Transformer blocks; encoder6 is issue 9's model (width 256 on 8x128 tokens);
    encoder24 is narrower (width 128 on 8x64 tokens) so its run stays short; a trailing "n"
    (encoder6n, encoder24n) gives width 128 on 8x128 tokens at any depth. ``quick``: width 128
    on 8x64 tokens.
    llama2: a tiny 2-layer HF LlamaModel against the paddleformers port (hidden 32, 2x8
    tokens; :func:`llama_pair`): its input is int64 token ids."""
    import numpy as np

    if kind == "llama2":
        return llama_pair()

    import models
    from padiff import assign_weight

    rng = np.random.default_rng(0)
    if kind == "convnet8":
        paddle_model, torch_model = models.convnet_pair(width=16, blocks=(2, 2, 2, 2))
        size = 32 if quick else 64
        x = rng.standard_normal((8, 3, size, size)).astype("float32")
    elif kind.startswith("encoder") and kind[len("encoder"):].rstrip("n").isdigit():
        depth = int(kind[len("encoder"):].rstrip("n"))
        if quick or (depth == 24 and not kind.endswith("n")):
            dim, tokens = 128, 64
        elif kind.endswith("n"):
            dim, tokens = 128, 128
        else:
            dim, tokens = 256, 128
        paddle_model, torch_model = models.encoder_pair(depth=depth, dim=dim, heads=8, hidden=dim * 4)
        x = rng.standard_normal((8, tokens, dim)).astype("float32")
    else:
        raise SystemExit(f"unknown model {kind}")
    paddle_model.eval()
    torch_model.eval()
    assign_weight(paddle_model, torch_model)
    return paddle_model, torch_model, x


def _import_hf_and_paddleformers():
    """The import quirks of tests/real_ports/conftest.py (QUIRKS.md there says why): an empty
    torchvision._meta_registrations (the PyPI torchvision wheel needs CUDA torch), no
    torchcodec, and torch and HF imported before paddleformers."""
    import types

    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    if "transformers" not in sys.modules:
        sys.modules["torchcodec"] = None
    import paddle  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import LlamaModel  # noqa: F401  (resolved before paddleformers is imported)
    import paddleformers  # noqa: F401


def llama_pair():
    """(paddle model, torch model, token ids) of the tiny Llama pair: the config of
    tests/real_ports/test_transformers.py (2 layers, hidden 32, 4 heads, 2 KV heads, vocab 96),
    eager attention, fuse_rms_norm=False (paddle has no CPU kernel for the fused one), weights
    copied torch -> paddle, eval mode, 2x8 token ids (id 0, the pad token, never used)."""
    import numpy as np

    _import_hf_and_paddleformers()
    import paddle
    import torch
    from paddleformers.transformers import LlamaConfig as PDLlamaConfig
    from paddleformers.transformers import LlamaModel as PDLlamaModel
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaModel as HFLlamaModel

    from padiff import assign_weight

    torch.manual_seed(0)
    paddle.seed(0)
    kw = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, tie_word_embeddings=False,
              use_cache=True, head_dim=8, rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False)
    torch_model = HFLlamaModel(HFLlamaConfig(**kw, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                             attn_implementation="eager")).eval()
    paddle_model = PDLlamaModel(PDLlamaConfig(**kw, rope_theta=10000.0, _attn_implementation="eager",
                                              fuse_rms_norm=False))
    paddle_model.eval()
    assign_weight(paddle_model, torch_model)
    ids = np.random.RandomState(0).randint(1, 96, size=(2, 8)).astype("int64")
    return paddle_model, torch_model, ids


def first_output(out):
    """The tensor to take the mean of for the loss: a model's output itself, or the first
    output (last_hidden_state) of an HF ModelOutput / paddleformers tuple."""
    if hasattr(out, "shape"):
        return out
    if hasattr(out, "keys"):
        return out["last_hidden_state"]
    return out[0]


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (VmRSS, VmHWM, ...)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    """Reset VmHWM (the peak resident size) to the current one (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
