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
    on 8x64 tokens."""
    import numpy as np

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
