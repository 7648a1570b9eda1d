"""The default tolerance: dtype- and scale-aware figures, near-zero regions, near-tie flips,
calibration, and a fixed-seed version of bench/bench_tolerance.py on real torch and paddle."""

import math
import os
import sys

import numpy as np
import paddle
import pytest
import torch

from padiff import PadiffError, auto_diff
from padiff.calibrate import Calibration, LayerNoise, calibrate
from padiff.compare.metrics import (AUTO_TOLERANCES, EXPLAINED_FACTOR, UNIT_ROUNDOFF, compare_arrays,
                                    tolerance_for)
from padiff.options import build_options
from support import hook_count, make_net, net_input
from test_localize import PaddleDeep, TorchDeep, chaos_inputs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import tolerance_models as tm  # noqa: E402

DEFAULT = build_options(None)


def auto(dtype="float32", **hints):
    return tolerance_for(DEFAULT, dtype, dtype, "Net.layer", **hints)


# --- the rule on arrays ------------------------------------------------------------------------

def test_every_figure_is_reported():
    b = np.array([[1.0, -2.0], [0.0, 4.0]], dtype="float32")
    a = b + np.array([[0.0, 0.0], [0.0, 0.01]], dtype="float32")
    d = compare_arrays(a, b, auto())
    assert not d
    assert d.max_abs == pytest.approx(0.01, rel=1e-4) and d.max_abs_index == (1, 1)
    assert d.max_rel == pytest.approx(0.0025, rel=1e-3) and d.max_rel_index == (1, 1)
    assert d.rel_l2 == pytest.approx(0.01 / math.sqrt(21), rel=1e-3)
    assert 0.9999 < d.cosine < 1.0
    assert (d.mismatched, d.numel, d.share_over) == (1, 4, 0.25)
    assert d.scale == pytest.approx(4.01) and d.max_scaled == pytest.approx(0.01 / 4.01, rel=1e-3)
    msg = d.message()
    assert "Mismatched elements: 1 / 4 (25.0%)" in msg
    assert "Relative L2 error: " in msg and "cosine similarity: " in msg


def test_user_atol_rtol_are_exactly_allclose():
    rng = np.random.default_rng(0)
    b = rng.standard_normal(1000)
    a = b + rng.standard_normal(1000) * 1e-3
    for atol, rtol in ((1e-3, 0.0), (0.0, 1e-3), (1e-4, 1e-3)):
        opts = build_options(None, atol=atol, rtol=rtol, compare_mode="strict")
        tol = tolerance_for(opts, "float32", "float32", "Net.layer")
        assert not tol.auto and (tol.atol, tol.rtol) == (atol, rtol)
        d = compare_arrays(a, b, tol)
        assert d.mismatched == int(np.count_nonzero(np.abs(a - b) > atol + rtol * np.abs(b)))
        assert d.passed == np.allclose(a, b, rtol=rtol, atol=atol)
    # per dtype and per layer path: exactly what was asked, nothing auto
    opts = build_options({"dtype_tolerances": {"float16": {"atol": 0.5}},
                          "layer_tolerances": {"encoder.*": {"atol": 1e-3, "rtol": 0.0}}, "compare_mode": "strict"})
    assert tolerance_for(opts, "float16", "float32", "Net.fc").atol == 0.5
    assert tolerance_for(opts, "float32", "float32", "encoder.block").atol == 1e-3
    assert tolerance_for(opts, "float32", "float32", "Net.fc").auto


def test_user_atol_rtol_widen_the_default_rule_in_auto_mode():
    # compare_mode "auto" (the default): the auto rule, and the user's atol/rtol accepted on top
    rng = np.random.default_rng(0)
    b = rng.standard_normal(1000)
    tol = tolerance_for(build_options(None, atol=1e-3), "float32", "float32", "Net.layer")
    assert tol.auto and tol.allowance == (1e-3, 1e-7)
    rounding = b * (1 + 1e-6)  # within the rule, far outside an atol of 1e-9
    tight = compare_arrays(rounding, b, tolerance_for(build_options(None, atol=1e-9), "float32", "float32"))
    assert tight and not tight.by_allowance
    wide = compare_arrays(b + 5e-4, b, tol)  # over the rule's relative L2 limit, within atol
    assert wide and wide.by_allowance
    over = compare_arrays(b + 2e-3 * (np.arange(1000) == 7), b, tol)  # one element over both
    assert not over and over.mismatched == 1
    assert over.message().startswith("Not equal to tolerance rtol=0.0001, atol=0.0001 (x scale, auto); "
                                     "or within your atol=0.001, rtol=1e-07\n")
    # per dtype and per layer path widen likewise
    opts = build_options({"dtype_tolerances": {"float16": {"atol": 0.5}},
                          "layer_tolerances": {"encoder.*": {"atol": 1e-3, "rtol": 0.0}}})
    assert tolerance_for(opts, "float16", "float32", "Net.fc").allowance == (0.5, 1e-7)
    assert tolerance_for(opts, "float32", "float32", "encoder.block").allowance == (1e-3, 0.0)
    assert tolerance_for(opts, "float32", "float32", "Net.fc").allowance is None


def test_zeros_and_tiny_values_are_judged_against_the_tensor_not_themselves():
    # a ReLU output: exact zeros, and elements near zero that differ by rounding
    b = np.array([0.0, 0.0, 3e-9, 2.0, 5.0], dtype="float32")
    a = np.array([0.0, 1e-6, 5e-9, 2.0, 5.0], dtype="float32")
    d = compare_arrays(a, b, auto())
    assert d and math.isinf(d.max_rel) and d.max_rel_index == (1,)  # infinite relative error, no alarm
    # the same error in a tensor whose values are 1000 times smaller is a real difference
    b[3:], a[3:] = b[3:] / 1000, a[3:] / 1000
    assert not compare_arrays(a, b, auto())
    # a systematic relative shift of 1e-3 is caught on any scale
    for scale in (1e-3, 1.0, 1e6):
        x = np.linspace(-1, 1, 101) * scale
        assert not compare_arrays(x * (1 + 1e-3), x, auto())
        assert compare_arrays(x * (1 + 1e-6), x, auto())


def test_defaults_depend_on_the_lower_precision_dtype():
    x = np.linspace(-3, 3, 601)
    y = x + 3e-3 * np.sin(7 * x)  # ~1e-3 of scale: float16 rounding, a float32 bug
    assert compare_arrays(y, x, tolerance_for(DEFAULT, "float16", "float32"))
    assert compare_arrays(y, x, tolerance_for(DEFAULT, "bfloat16", "bfloat16"))
    assert not compare_arrays(y, x, tolerance_for(DEFAULT, "float32", "float32"))
    assert not compare_arrays(y, x, tolerance_for(DEFAULT, "float64", "float64"))
    assert tolerance_for(DEFAULT, "bfloat16", "float16").source == "bfloat16"
    for dtype, (rtol, atol, _, l2) in AUTO_TOLERANCES.items():
        tol = tolerance_for(DEFAULT, dtype, dtype)
        assert (tol.rtol, tol.atol, tol.l2) == (rtol, atol, l2)
        assert atol > 10 * UNIT_ROUNDOFF[dtype]  # well above one rounding


def test_many_small_errors_fail_on_relative_l2_even_when_each_is_within_atol():
    rng = np.random.default_rng(1)
    b = rng.standard_normal(10000)
    b[0] = 40.0  # one large value makes atol x scale generous for all the others
    a = b + rng.choice([-1, 1], 10000) * 8e-4 * np.abs(b)
    a[0] = b[0]
    d = compare_arrays(a, b, auto())
    assert d.mismatched == 0 and d.rel_l2 > AUTO_TOLERANCES["float32"][3] and not d


def test_gradient_scale_sets_the_floor_for_noise_sized_gradients():
    u = UNIT_ROUNDOFF["float32"]
    rng = np.random.default_rng(2)
    # a gradient that is zero in exact arithmetic: both models hold rounding noise of u x 1e-3
    noise_a, noise_b = rng.standard_normal(512) * u * 1e-3, rng.standard_normal(512) * u * 1e-3
    assert not compare_arrays(noise_a, noise_b, auto(context=0.0))
    assert compare_arrays(noise_a, noise_b, auto(stage="backward", context=1e-3))
    # real gradients that are all tiny (a mean over a huge output): a 2% difference is a bug,
    # whatever the absolute size; the old absolute floor would hide it
    g = rng.standard_normal(512) * 1e-9
    assert compare_arrays(g * 1.02, g, auto())  # no context: the dtype's absolute floor (1e-7) decides
    assert not compare_arrays(g * 1.02, g, auto(stage="backward", context=3e-9))
    assert compare_arrays(g * (1 + 1e-6), g, auto(stage="backward", context=3e-9))


def test_near_tie_flips_are_left_out_of_a_gradient_verdict_and_widen_what_follows():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(4096) * (rng.random(4096) > 0.5)  # a ReLU's input gradient
    flip = int(np.flatnonzero(ref)[0])
    test = ref.copy()
    test[flip] = 0.0  # the ReLU took the other branch for one near-zero input
    d = compare_arrays(test, ref, auto(stage="backward", context=3.0))
    assert d and d.flips == 1 and d.mismatched == 1 and d.rel_l2 > 1e-3 and d.rel_l2_rest == 0.0
    assert "1 element(s) are exactly zero in one model and not in the other" in d.message()
    # only in the backward, only when every element over tolerance is such a flip, and only a few
    assert not compare_arrays(test, ref, auto(stage="forward"))
    worse = test.copy()
    worse[np.flatnonzero(ref)[1]] += 0.1
    assert not compare_arrays(worse, ref, auto(stage="backward", context=3.0))
    many = ref.copy()
    many[np.flatnonzero(ref)[:50]] = 0.0
    assert not compare_arrays(many, ref, auto(stage="backward", context=3.0))
    # what a flip explains widens the comparisons after it, by EXPLAINED_FACTOR
    widened = auto(stage="backward", context=3.0, explained=(d.max_scaled, d.rel_l2))
    assert widened.atol == pytest.approx(EXPLAINED_FACTOR * d.max_scaled)
    assert widened.l2 == pytest.approx(EXPLAINED_FACTOR * d.rel_l2)


# --- end to end -----------------------------------------------------------------------------------

class TorchKinkNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(16, 4)
        with torch.no_grad():  # unit 0 receives exactly 0: ReLU sits on its kink
            self.fc1.weight[0] = 0.0
            self.fc1.bias[0] = 0.0

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PaddleNudgedReLU(paddle.nn.Layer):
    """A ReLU whose input rounding landed one element on the other side of the kink (by 1e-30)."""

    def forward(self, x):
        mask = np.zeros(x.shape, dtype="float32")
        mask[0, 0] = 1e-30
        return paddle.nn.functional.relu(x + paddle.to_tensor(mask))


class PaddleKinkNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc1 = paddle.nn.Linear(8, 16)
        self.act = PaddleNudgedReLU()
        self.fc2 = paddle.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_relu_on_its_kink_is_a_tolerated_flip_and_the_gradients_after_it_pass():
    torch.manual_seed(0)
    paddle.seed(0)
    inputs = (net_input("paddle"), net_input("torch"))
    result = auto_diff(PaddleKinkNet(), TorchKinkNet(), inputs)
    assert result, result.report
    flipped = [f for f in result.steps[0].backward if f.diff.flips]
    assert flipped and flipped[0].ref_path == "TorchKinkNet.act" and flipped[0].diff.flips == 1
    assert "1 element(s) are exactly zero in one model and not in the other" in flipped[0].diff.message()
    # fc1's weight gradient differs in the flipped unit's row: allowed as explained, not as noise
    grad = next(f for f in result.steps[0].grads if f.ref_path == "TorchKinkNet.fc1.weight")
    assert grad.passed and grad.diff.rel_l2 > 10 * AUTO_TOLERANCES["float32"][3]
    assert grad.diff.tolerance.explained == (flipped[0].diff.max_scaled, flipped[0].diff.rel_l2)


def test_a_bug_that_zeroes_gradients_is_not_taken_for_flips():
    inputs = (net_input("paddle"), net_input("torch"))
    # the custom op's wrong backward (support.py) gives many gradients that are not flips
    result = auto_diff(make_net("paddle", "backward"), make_net("torch"), inputs)
    assert not result and result.first.ref_path == "TorchNet.cube" and result.first.diff.flips == 0


@pytest.mark.parametrize("name", tm.CLEAN)
def test_clean_pairs_pass_at_default_settings(name):
    for seed in (0, 1):
        case = tm.PAIRS[name](seed)
        result = auto_diff(*case.models, case.inputs, **case.kwargs)
        assert result, f"seed {seed}: {result.first and result.first.diff.message()}"
        assert all(f.diff.problem is None for s in result.steps for f in s.all_findings())


@pytest.mark.parametrize("bug", tm.BUGS, ids=[b.bug + "@" + b.pair.split()[0] for b in tm.BUGS])
def test_injected_bug_is_caught_at_its_layer(bug):
    case = tm.PAIRS[bug.pair](0, bug.bug)
    result = auto_diff(*case.models, case.inputs, **case.kwargs)
    assert not result
    first, paths = tm.pointed_at(result)  # the likely origin where the pair's atol let it through
    assert first.stage == bug.stage
    if bug.layer:
        assert bug.layer in paths
    else:
        assert "optimizer difference" in first.cause


# --- calibration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_calibrate_measures_every_layer_and_leaves_the_model_alone(framework):
    model = make_net(framework)
    before = [p.numpy().copy() if framework == "paddle" else p.detach().numpy().copy() for p in model.parameters()]
    cal = calibrate(model, net_input(framework))
    name = type(model).__name__
    assert isinstance(cal, Calibration) and cal.model == name and cal.dtype == "float64"
    # every layer's output and the loss; gradients where they are more than rounding noise of
    # the backward pass (smaller ones are judged by the gradient-scale floor, not by calibration)
    keys = {("forward", k) for k in ("", "linear1", "act", "proj", "cube", "norm", "linear2")}
    assert keys <= set(cal.noise) and {s for s, _ in cal.noise} <= {"forward", "loss", "backward", "grad"}
    for key, n in cal.noise.items():
        assert 0.0 <= n.rel_l2 < 1e-5 and n.max_scaled < 1e-5 and n.reference == "float64", (key, n)
    assert max(n.max_abs for n in cal.noise.values()) > 0  # float32 is not float64
    after = [p.numpy() if framework == "paddle" else p.detach().numpy() for p in model.parameters()]
    assert all(np.array_equal(x, y) for x, y in zip(before, after))
    assert hook_count(model) == 0 and all(p.grad is None for p in model.parameters())
    # looked up from either model's paths; unknown sublayers take their parent's noise
    assert cal.noise_for("PaddleNet.norm", "forward") == cal.noise[("forward", "norm")]
    assert cal.noise_for("Anything.linear1.inner", "forward") == cal.noise[("forward", "linear1")]
    assert cal.noise_for("Anything.nothing_like_it", "forward") is None


def test_calibration_accepts_rounding_that_grows_and_still_names_a_real_bug():
    torch_model = TorchDeep()
    cal = calibrate(torch_model, chaos_inputs()[1])
    assert not auto_diff(PaddleDeep(), torch_model, chaos_inputs())  # the default rule: grown rounding
    result = auto_diff(PaddleDeep(), torch_model, chaos_inputs(), options={"calibration": cal})
    assert result, result.report
    assert "  calibration: `float64 calibration of TorchDeep" in result.report
    deep = result.steps[0].forward[-1].diff
    assert deep.tolerance.noise is not None and deep.within_noise

    class PaddleChaosBug(paddle.nn.Layer):
        def forward(self, x):
            return 3.8 * (x - x * x)  # 3.8, not 3.9

    buggy = PaddleDeep()
    buggy.layers[2] = PaddleChaosBug()
    result = auto_diff(buggy, torch_model, chaos_inputs(), options={"calibration": cal})
    assert not result and result.first.ref_node.path == "TorchDeep.layers.2"
    assert "this difference is above 10 x the measured noise." in result.first.diff.message()


def test_calibrated_tolerance_is_never_below_the_default():
    quiet = LayerNoise(0.0, 1e-9, 1e-9)
    loud = LayerNoise(1.0, 3e-3, 2e-3)
    cal = Calibration("Net", "float64", {("forward", "quiet"): quiet, ("forward", "loud"): loud})
    opts = build_options({"calibration": cal})
    rtol, atol, _, l2 = AUTO_TOLERANCES["float32"]
    t = tolerance_for(opts, "float32", "float32", "TorchNet.quiet", stage="forward")
    assert (t.atol, t.l2, t.noise) == (atol, l2, quiet)
    t = tolerance_for(opts, "float32", "float32", "TorchNet.loud", stage="forward")
    assert (t.atol, t.l2) == (pytest.approx(3e-2), pytest.approx(2e-2)) and t.source == "float32, calibrated"
    assert tolerance_for(opts, "float32", "float32", "TorchNet.loud", stage="backward").noise is None
    # the user's own tolerances: exactly, in strict mode; on top of the calibrated rule otherwise
    opts = build_options({"calibration": cal, "atol": 1e-6, "compare_mode": "strict"})
    assert tolerance_for(opts, "float32", "float32", "TorchNet.loud", stage="forward").atol == 1e-6
    t = tolerance_for(build_options({"calibration": cal, "atol": 1e-6}), "float32", "float32", "TorchNet.loud",
                      stage="forward")
    assert t.atol == pytest.approx(3e-2) and t.allowance == (1e-6, 1e-7)


def test_calibration_as_plain_layer_tolerances_and_bad_option():
    torch_model = make_net("torch")
    cal = calibrate(torch_model, net_input("torch"))
    table = cal.layer_tolerances()
    assert table["*.linear1"]["rtol"] == 0.0 and table["*.linear1"]["atol"] > 0
    assert "TorchNet" in table and "*.linear2.weight" in table
    paddle_model = make_net("paddle")
    assert auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")),
                     options={"layer_tolerances": table})
    with pytest.raises(PadiffError, match="Option calibration must be what padiff.calibrate"):
        build_options({"calibration": {"linear1": 1e-3}})
    with pytest.raises(PadiffError, match="calibrate dtype='float8'"):
        calibrate(torch_model, net_input("torch"), dtype="float8")


def test_empty_tensors_of_any_dtype_compare_equal():
    for dtype in ("int64", "float32"):
        a = np.zeros((0, 3), dtype=dtype)
        d = compare_arrays(a, a.copy(), tolerance_for(build_options(None), dtype, dtype))
        assert d.passed and d.numel == 0 and d.max_abs_index == ()
