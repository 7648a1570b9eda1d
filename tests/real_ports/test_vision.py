"""torchvision 0.28 against paddle.vision.models (paddlepaddle 3.3.1), zero glue.

Both models in eval mode, random weights (torch's, copied into paddle by auto_diff), one small
random batch. The smallest input each pair accepts keeps every test to a few seconds.
"""

import numpy as np
import paddle
import paddle.vision.models as pvm
import pytest
import torch
import torchvision.models as tvm
from realports_support import (assert_aligned, assert_fails_at, image_batch, output_mean, paddle_params, run_pair,
                               torch_params)

from padiff import auto_diff


def _pair(name, **kwargs):
    torch_model = getattr(tvm, name)(**kwargs).eval()
    paddle_model = getattr(pvm, name)(**kwargs)
    paddle_model.eval()
    return paddle_model, torch_model


# (torchvision/paddle constructor, batch, input size): the smallest input whose last feature
# map is still at least 1x1 in both ports.
ALIGNED = [
    ("resnet18", 2, 32),
    ("vgg11", 1, 32),
    ("mobilenet_v3_small", 2, 32),
    ("densenet121", 1, 32),
]


@pytest.mark.parametrize("name,batch,size", ALIGNED, ids=[a[0] for a in ALIGNED])
def test_torchvision_port_aligns(name, batch, size, record):
    paddle_model, torch_model = _pair(name)
    x_pd, x_pt = image_batch(batch, size)
    result = run_pair(paddle_model, torch_model, x_pd, x_pt, [output_mean, output_mean], record)
    assert_aligned(result)


def test_alexnet_dropout_scales_in_eval(record):
    """paddle.vision's AlexNet builds its dropouts as Dropout(p=0.5, mode="downscale_in_infer")
    (paddle/vision/models/alexnet.py): in eval that multiplies activations by 1-p = 0.5, where
    torch's Dropout (torchvision's classifier.0) is the identity. The first difference is the
    first dropout's output: paddle `_drop1`, torch `classifier.0`.

    paddle's AlexNet flattens conv5's output straight into a 256*6*6 Linear (no adaptive pool,
    unlike torchvision's avgpool), so it only accepts inputs of 223 to 226 pixels."""
    paddle_model, torch_model = _pair("alexnet")
    x_pd, x_pt = image_batch(1, 224)
    result = run_pair(paddle_model, torch_model, x_pd, x_pt, [output_mean, output_mean], record)
    assert_fails_at(result, torch_layer="classifier.0", paddle_layer="_drop1")


def test_squeezenet_shared_pool_ceil_mode(record):
    """torchvision's squeezenet1_0 has three MaxPool2d(3, 2, ceil_mode=True) modules
    (features.2, features.6, features.11); paddle.vision's SqueezeNet has one
    MaxPool2D(3, 2, padding=0) (ceil_mode False), `_pool`, called three times. They agree
    whenever (size - 3) is even. At 32x32 the first call sees 13x13 (6x6 out in both), the
    second 6x6: torch gives 3x3, paddle 2x2. The failure is the second call of paddle's `_pool`,
    paired with torch's features.6. (paddle's Dropout(downscale_in_infer) before the final conv
    would differ too, but later.)"""
    paddle_model, torch_model = _pair("squeezenet1_0")
    x_pd, x_pt = image_batch(1, 32)
    result = run_pair(paddle_model, torch_model, x_pd, x_pt, [output_mean, output_mean], record)
    assert_fails_at(result, torch_layer="features.6", paddle_layer="_pool")


@pytest.mark.parametrize("options", [{}, {"atol": 5e-5}], ids=["defaults", "padiff02-atol"])
def test_resnet50_in_train_mode_as_padiff02_runs_it(options, record):
    """PaDiff 0.2's own test_resnet50: freshly built models (train mode: BatchNorm uses batch
    statistics), the default loss, `options={"atol": 5e-5}`, 224 px. Rounding grows along 50
    layers to a relative L2 error of 1e-4 at the last stage's BatchNorms; a ReLU near its kink
    there flips, and the train-mode BatchNorms spread that over the batch in the backward pass
    (gradients differ by 1e-2). padiff must pass it: each comparison may carry what the ones
    before it passed with, and the user's atol is accepted on top of the default rule (never in
    place of it)."""
    torch_model, paddle_model = tvm.resnet50(), pvm.resnet50()
    x = np.random.RandomState(0).rand(2, 3, 224, 224).astype("float32")
    record["torch_params"], record["paddle_params"] = torch_params(torch_model), paddle_params(paddle_model)
    result = auto_diff(paddle_model, torch_model, ({"x": paddle.to_tensor(x)}, {"x": torch.from_numpy(x)}),
                       auto_weights=True, options=dict(options, verbose=False))
    record["aligned"] = bool(result)
    assert_aligned(result)
    carried = [f for s in result.steps for f in s.all_findings() if max(f.diff.tolerance.carried) > 0]
    assert carried, "no comparison needed the carried difference: the case no longer tests it"
