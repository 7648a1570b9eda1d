"""The default loss's weights: what padiff backpropagates when the user gives no loss_fn.

The seeds' default loss is the mean of the output. Its gradient is the same for every
element, and a normalisation at the end of a model turns a constant gradient into zero:
``d/dx mean(LayerNorm(x)) = 0``, softmax likewise, and a train-mode BatchNorm under average
pooling and a Linear (every ResNet) passes back a gradient that is zero in exact arithmetic.
Every gradient behind it is then rounding noise, which can neither show a bug nor be judged
fairly. padiff therefore takes a *weighted* mean: each output element ``i`` (in row-major
order) is weighted ``1 + 0.5 * cos(GOLDEN_ANGLE * i)``, a fixed pattern in [0.5, 1.5] with
no period along any axis, the same in both models and in every run.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple

import numpy as np

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))  # radians: successive weights never line up


@lru_cache(maxsize=16)
def default_loss_weights(shape: Tuple[int, ...]) -> np.ndarray:
    """The weights of the default loss for an output of ``shape`` (float64; cached, so never written to)."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    w = 1.0 + 0.5 * np.cos(GOLDEN_ANGLE * np.arange(n, dtype=np.float64))
    return w.reshape(tuple(shape))  # cached: callers only read it
