"""The toy framework's optimizer and learning-rate scheduler: plain SGD and a step decay."""

from __future__ import annotations

from typing import List

from .tensor import Tensor


class SGD:
    """``p -= lr * grad`` for every parameter that has a gradient."""

    def __init__(self, params, lr: float):
        self.params: List[Tensor] = list(params)
        self.param_groups = [{"params": self.params, "lr": float(lr)}]

    def step(self) -> None:
        lr = self.param_groups[0]["lr"]
        for p in self.params:
            if p.grad is not None:
                p.set_(p.data - lr * p.grad.data)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


class StepLR:
    """Multiplies the optimizer's learning rate by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer: SGD, step_size: int, gamma: float = 0.1):
        self.optimizer = optimizer
        self.step_size, self.gamma = step_size, gamma
        self.base_lr = optimizer.param_groups[0]["lr"]
        self.count = 0

    def step(self) -> None:
        self.count += 1
        self.optimizer.param_groups[0]["lr"] = self.base_lr * self.gamma ** (self.count // self.step_size)
