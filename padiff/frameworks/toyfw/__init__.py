"""toyfw: a framework small enough to read in one sitting, over numpy.

It is padiff's reference example of a framework: tensors with hand-written backward
(:mod:`.tensor`), layers with forward hooks (:mod:`.nn`), functions layers call
(:mod:`.functional`) and SGD (:mod:`.optim`). ``padiff/frameworks/toy.py`` is its adapter,
the whole of what padiff needs to know about it; padiff's own unit tests run on it, without
torch or paddle, in a few seconds.
"""

from . import functional, nn, optim
from .nn import Linear, Module, Parameter, ReLU, Sequential, Tanh, manual_seed
from .optim import SGD, StepLR
from .tensor import Tensor, add, from_op, matmul, mean, mul, no_grad, run_backward, sum, tanh

__all__ = ["Tensor", "Parameter", "Module", "Linear", "Tanh", "ReLU", "Sequential", "SGD", "StepLR",
           "functional", "nn", "optim", "no_grad", "manual_seed", "run_backward", "from_op",
           "add", "mul", "matmul", "tanh", "mean", "sum"]
