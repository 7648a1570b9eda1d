"""Small model twins in both frameworks with injectable porting bugs, and checks that a
model carries no padiff hooks."""

from __future__ import annotations

import numpy as np
import paddle
import torch


# --- custom ops: x**3 / 3, whose derivative is x**2 ---------------------------------------

class TorchCube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x * x / 3.0

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x * x


class TorchCubeWrongGrad(TorchCube):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x  # wrong: should be g * x * x


class PaddleCube(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x * x / 3.0

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensor()
        return g * x * x


class PaddleCubeWrongGrad(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x * x / 3.0

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensor()
        return g * x


# --- the nets ----------------------------------------------------------------------------

class TorchProj(torch.nn.Module):
    def __init__(self, dim, bug=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(dim, dim) * 0.3)
        self.bug = bug

    def forward(self, x):
        return x @ (self.w if self.bug == "transpose" else self.w.T)


class PaddleProj(paddle.nn.Layer):
    def __init__(self, dim, bug=None):
        super().__init__()
        self.w = self.create_parameter([dim, dim])
        self.bug = bug

    def forward(self, x):
        return x @ (self.w if self.bug == "transpose" else self.w.T)


class TorchCubeLayer(torch.nn.Module):
    def __init__(self, bug=None):
        super().__init__()
        self.fn = TorchCubeWrongGrad if bug == "backward" else TorchCube

    def forward(self, x):
        return self.fn.apply(x)


class PaddleCubeLayer(paddle.nn.Layer):
    def __init__(self, bug=None):
        super().__init__()
        self.fn = PaddleCubeWrongGrad if bug == "backward" else PaddleCube

    def forward(self, x):
        return self.fn.apply(x)


class TorchNet(torch.nn.Module):
    def __init__(self, bug=None, extra=False):
        super().__init__()
        self.linear1 = torch.nn.Linear(8, 16)
        self.act = torch.nn.Sigmoid() if bug == "activation" else torch.nn.ReLU()
        self.proj = TorchProj(16, bug)
        self.cube = TorchCubeLayer(bug)
        self.norm = torch.nn.LayerNorm(16, eps=1e-3 if bug == "ln_epsilon" else 1e-5)
        self.linear2 = torch.nn.Linear(16, 4)
        self.extra = torch.nn.Linear(4, 4) if extra else None

    def forward(self, x):
        x = self.act(self.linear1(x))
        x = self.norm(self.cube(self.proj(x)))
        x = self.linear2(x)
        return self.extra(x) if self.extra is not None else x


class PaddleNet(paddle.nn.Layer):
    def __init__(self, bug=None, extra=False):
        super().__init__()
        self.linear1 = paddle.nn.Linear(8, 16)
        self.act = paddle.nn.Sigmoid() if bug == "activation" else paddle.nn.ReLU()
        self.proj = PaddleProj(16, bug)
        self.cube = PaddleCubeLayer(bug)
        self.norm = paddle.nn.LayerNorm(16, epsilon=1e-3 if bug == "ln_epsilon" else 1e-5)
        self.linear2 = paddle.nn.Linear(16, 4)
        self.extra = paddle.nn.Linear(4, 4) if extra else None

    def forward(self, x):
        x = self.act(self.linear1(x))
        x = self.norm(self.cube(self.proj(x)))
        x = self.linear2(x)
        return self.extra(x) if self.extra is not None else x


def make_net(framework: str, bug=None, **kw):
    return TorchNet(bug, **kw) if framework == "torch" else PaddleNet(bug, **kw)


def net_input(framework: str, seed: int = 0, batch: int = 6):
    x = np.random.default_rng(seed).standard_normal((batch, 8)).astype("float32")
    return {"x": torch.tensor(x) if framework == "torch" else paddle.to_tensor(x)}


def class_name(framework: str) -> str:
    return "TorchNet" if framework == "torch" else "PaddleNet"


# --- hook checks -------------------------------------------------------------------------

def hook_count(model) -> int:
    if isinstance(model, torch.nn.Module):
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                   for m in model.modules())
    return sum(len(layer._forward_pre_hooks) + len(layer._forward_post_hooks) for layer in model.sublayers(include_self=True))


def output_array(model, inp):
    out = model(**inp)
    return out.detach().numpy() if isinstance(out, torch.Tensor) else out.numpy()


def grads_are_clear(model) -> bool:
    if isinstance(model, torch.nn.Module):
        return all(p.grad is None for p in model.parameters())
    return all(p.grad is None for p in model.parameters())
