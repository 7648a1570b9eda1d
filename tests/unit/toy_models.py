"""Small models of the toy framework for the unit tests, each with a place to plant a bug."""

from __future__ import annotations

import numpy as np

from padiff.frameworks import toyfw as T


class Scale(T.Module):
    """Multiplies by a constant: a weightless user layer where a bug can hide."""

    def __init__(self, factor: float = 1.0):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def square(x, slope: float = 2.0):
    """``x * x`` as a user's own operation with a hand-written backward; ``slope`` other than 2
    is a backward bug that leaves the forward exact."""
    return T.from_op(x.data * x.data, (x,), lambda g: (g * slope * x.data,))


class Square(T.Module):
    def __init__(self, slope: float = 2.0):
        super().__init__()
        self.slope = slope

    def forward(self, x):
        return square(x, self.slope)


class Block(T.Module):
    """fc1 -> tanh -> scale -> fc2."""

    def __init__(self, width: int = 8, factor: float = 1.0):
        super().__init__()
        self.fc1 = T.Linear(4, width)
        self.act = T.Tanh()
        self.scale = Scale(factor)
        self.fc2 = T.Linear(width, 3)

    def forward(self, x):
        return self.fc2(self.scale(self.act(self.fc1(x))))


class Net(T.Module):
    """Sequential(Linear, ReLU) -> Block -> Square. ``factor`` != 1 is a forward bug in
    ``Net.block.scale``; ``slope`` != 2 a backward bug in ``Net.square``."""

    def __init__(self, factor: float = 1.0, slope: float = 2.0, width: int = 8):
        super().__init__()
        self.body = T.Sequential(T.Linear(3, 4), T.ReLU())
        self.block = Block(width, factor)
        self.square = Square(slope)

    def forward(self, x):
        return self.square(self.block(self.body(x)))


def pair(**raw_bug):
    """Two models of one build (the second with the given bug) and their inputs."""
    T.manual_seed(0)
    base = Net()
    T.manual_seed(1)  # other weights: auto_weights copies them from the first
    raw = Net(**raw_bug)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype("float32")
    return base, raw, (T.Tensor(x), T.Tensor(x))


def hooks_left(model) -> int:
    """Forward hooks still registered anywhere in the model."""
    return sum(len(m.forward_pre_hooks) + len(m.forward_hooks) for _, m in model.named_modules())
