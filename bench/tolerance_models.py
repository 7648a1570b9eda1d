"""Model pairs for the tolerance benchmark (bench/bench_tolerance.py) and its fixed-seed test
(tests/test_tolerance.py): the same networks in PyTorch and PaddlePaddle, clean or with one
injected porting bug on the paddle side.

A *case* is everything one ``auto_diff`` call needs: ``(paddle_model, torch_model)``, the input
pair and extra keyword arguments (optimizers, steps). ``CLEAN`` names the clean pairs, ``BUGS``
the injected bugs with the stage and the layer padiff must name.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import paddle
import paddle.nn.functional as PF
import torch
import torch.nn.functional as TF

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(_ROOT, "examples") not in sys.path:
    sys.path.insert(0, os.path.join(_ROOT, "examples"))

import models as examples  # noqa: E402  (examples/models.py: the bundled pairs)


@dataclass
class Case:
    models: Tuple[object, object]  # (paddle model, torch model), the user's order
    inputs: Tuple[object, object]
    kwargs: Dict[str, object] = field(default_factory=dict)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    paddle.seed(seed)
    np.random.seed(seed)


def _pair_inputs(x: np.ndarray, key: str = "x"):
    return {key: paddle.to_tensor(x)}, {key: torch.tensor(x)}


# --- conv-BN-ReLU: a stem and 8 conv3x3-BN-ReLU blocks, BatchNorm in training mode ------------

class TorchConvBNBlock(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(c)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class PaddleConvBNBlock(paddle.nn.Layer):
    def __init__(self, c, bug=None):
        super().__init__()
        self.conv = paddle.nn.Conv2D(c, c, 3, 1, 1, bias_attr=False)
        self.bn = paddle.nn.BatchNorm2D(c, epsilon=1e-3 if bug == "bn_epsilon" else 1e-5)
        self.act = paddle.nn.LeakyReLU(0.01) if bug == "leaky_relu" else paddle.nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class TorchConvBN(torch.nn.Module):
    def __init__(self, width=8, depth=8, classes=10):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 3, 1, 1)
        self.blocks = torch.nn.Sequential(*[TorchConvBNBlock(width) for _ in range(depth)])
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class PaddleConvBN(paddle.nn.Layer):
    def __init__(self, width=8, depth=8, classes=10, bug=None, bug_block=5):
        super().__init__()
        self.stem = paddle.nn.Conv2D(3, width, 3, 1, 1)
        self.blocks = paddle.nn.Sequential(*[PaddleConvBNBlock(width, bug if i == bug_block else None)
                                             for i in range(depth)])
        self.pool = paddle.nn.AdaptiveAvgPool2D(1)
        self.fc = paddle.nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(paddle.flatten(self.pool(self.blocks(self.stem(x))), 1))


def convbn_case(seed: int, bug: Optional[str] = None) -> Case:
    _seed(seed)
    p, t = PaddleConvBN(bug=bug), TorchConvBN()
    x = np.random.default_rng(seed).standard_normal((4, 3, 12, 12)).astype("float32")
    return Case((p, t), _pair_inputs(x))


# --- LSTM tagger: LSTM, last time step, square projection, custom-op activation, head ---------

class TorchSiLU(torch.autograd.Function):
    """x * sigmoid(x) with a hand-written backward (a user's custom op)."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * s * (1 + x * (1 - s))


class PaddleSiLU(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x):
        s = PF.sigmoid(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensor()
        return g * s * (1 + x * (1 - s))


class PaddleSiLUWrongGrad(PaddleSiLU):
    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensor()
        return g * s  # forgets the x * s * (1 - s) term


class TorchAct(torch.nn.Module):
    def forward(self, x):
        return TorchSiLU.apply(x)


class PaddleAct(paddle.nn.Layer):
    def __init__(self, bug=None):
        super().__init__()
        self.fn = PaddleSiLUWrongGrad if bug == "wrong_backward" else PaddleSiLU

    def forward(self, x):
        return self.fn.apply(x)


class TorchLastStep(torch.nn.Module):
    def forward(self, y):
        return y[:, -1]


class PaddleLastStep(paddle.nn.Layer):
    def __init__(self, bug=None):
        super().__init__()
        self.bug = bug

    def forward(self, y):
        return y[:, -2] if self.bug == "off_by_one" else y[:, -1]


class TorchProj(torch.nn.Module):
    """A square projection kept as a raw matrix, applied as ``x @ W.T``."""

    def __init__(self, dim):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(dim, dim) / dim ** 0.5)

    def forward(self, x):
        return x @ self.w.T


class PaddleProj(paddle.nn.Layer):
    def __init__(self, dim, bug=None):
        super().__init__()
        self.w = self.create_parameter([dim, dim])
        self.bug = bug

    def forward(self, x):
        return x @ (self.w if self.bug == "transpose" else self.w.T)


class TorchLSTMNet(torch.nn.Module):
    def __init__(self, features=16, hidden=32, classes=5):
        super().__init__()
        self.lstm = torch.nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.last = TorchLastStep()
        self.proj = TorchProj(hidden)
        self.act = TorchAct()
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(self.act(self.proj(self.last(y))))


class PaddleLSTMNet(paddle.nn.Layer):
    def __init__(self, features=16, hidden=32, classes=5, bug=None):
        super().__init__()
        self.lstm = paddle.nn.LSTM(features, hidden, num_layers=2)
        self.last = PaddleLastStep(bug)
        self.proj = PaddleProj(hidden, bug)
        self.act = PaddleAct(bug)
        self.head = paddle.nn.Linear(hidden, classes)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(self.act(self.proj(self.last(y))))


def lstm_case(seed: int, bug: Optional[str] = None) -> Case:
    """Two training steps with SGD and momentum 0.9; the "momentum" bug gives paddle 0.8."""
    _seed(seed)
    p, t = PaddleLSTMNet(bug=bug), TorchLSTMNet()
    x = np.random.default_rng(seed).standard_normal((4, 10, 16)).astype("float32")
    opts = [paddle.optimizer.Momentum(0.1, momentum=0.8 if bug == "momentum" else 0.9, parameters=p.parameters()),
            torch.optim.SGD(t.parameters(), lr=0.1, momentum=0.9)]
    return Case((p, t), _pair_inputs(x), dict(optimizer=opts, steps=2))


# --- Transformer encoder: the bundled hand-written encoder, 4 pre-norm blocks, dim 64 ---------

def transformer_case(seed: int, bug: Optional[str] = None) -> Case:
    p, t = examples.encoder_pair(bug=bug, seed=seed, dim=64, heads=4, hidden=128, depth=4, bug_block=2)
    x = np.random.default_rng(seed).standard_normal((4, 16, 64)).astype("float32")
    return Case((p, t), _pair_inputs(x))


# --- the bundled examples at their own sizes --------------------------------------------------

def example_convnet_case(seed: int, bug: Optional[str] = None) -> Case:
    p, t = examples.convnet_pair(bug=bug, seed=seed)
    return Case((p, t), examples.image_inputs(seed=seed))


def example_encoder_case(seed: int, bug: Optional[str] = None) -> Case:
    p, t = examples.encoder_pair(bug=bug, seed=seed)
    return Case((p, t), examples.token_inputs(seed=seed))


def _eval(case: Case) -> Case:
    for m in case.models:
        m.eval()
    return case


PAIRS: Dict[str, Callable[[int, Optional[str]], Case]] = {
    "conv-BN-ReLU x8 (train-mode BN)": convbn_case,
    "Transformer encoder (4 blocks)": lambda s, b=None: _eval(transformer_case(s, b)),
    # paddle's LSTM cannot run backward in eval mode; with no dropout train mode is deterministic.
    "LSTM (2 layers) + custom op, 2 SGD steps": lstm_case,
    "examples ConvNet (train-mode BN)": example_convnet_case,
    "examples Encoder": lambda s, b=None: _eval(example_encoder_case(s, b)),
}
CLEAN = list(PAIRS)


@dataclass(frozen=True)
class Bug:
    name: str
    pair: str
    bug: str
    stage: str  # the Finding.stage padiff must report
    layer: str  # the reference layer path padiff must name ("" when the stage is enough)


BUGS = [
    Bug("BatchNorm epsilon 1e-3 (not 1e-5)", CLEAN[0], "bn_epsilon", "forward", "TorchConvBN.blocks.5.bn"),
    Bug("LeakyReLU for ReLU", CLEAN[0], "leaky_relu", "forward", "TorchConvBN.blocks.5.act"),
    Bug("LayerNorm epsilon 1e-3 (not 1e-5)", CLEAN[1], "ln_epsilon", "forward", "TorchEncoder.blocks.2.norm1"),
    Bug("tanh-GELU for exact GELU", CLEAN[1], "gelu_tanh", "forward", "TorchEncoder.blocks.2.mlp"),
    Bug("attention scale sqrt(dim) for sqrt(head_dim)", CLEAN[1], "attn_scale", "forward",
        "TorchEncoder.blocks.2.attn"),
    Bug("transposed weight", CLEAN[2], "transpose", "forward", "TorchLSTMNet.proj"),
    Bug("off-by-one time step", CLEAN[2], "off_by_one", "forward", "TorchLSTMNet.last"),
    Bug("wrong backward of a custom op", CLEAN[2], "wrong_backward", "backward", "TorchLSTMNet.act"),
    Bug("SGD momentum 0.8 (not 0.9)", CLEAN[2], "momentum", "weight", ""),
    Bug("examples ConvNet: BatchNorm epsilon 1e-2", CLEAN[3], "bn_epsilon", "forward",
        "TorchConvNet.layers.1.bn1"),
]
