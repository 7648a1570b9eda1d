"""``auto_diff`` end to end on two toy models: the verdict, the layer a planted bug is named at
(forward, backward, optimizer), and the models and the framework left as they were."""

import numpy as np
import pytest

from padiff import PadiffError, auto_diff
from padiff.frameworks import toyfw as T
from toy_models import hooks_left, pair


def _run(base, raw, inputs, **opts):
    return auto_diff(base, raw, inputs, auto_weights=True, verbose=False, **opts)


def test_two_builds_agree_and_are_left_as_they_were():
    base, raw, inputs = pair()
    linear = T.functional.linear
    result = _run(base, raw, inputs)
    assert result == True  # noqa: E712 (the seeds compare with ==)
    lines = result.report.splitlines()
    assert "[AutoDiff] Assign weight success !!!" in lines and lines[-1] == "[AutoDiff] SUCCESS !!!"
    assert "[AutoDiff] forward stage compared." in lines and "[AutoDiff] backward stage compared." in lines
    assert hooks_left(base) == hooks_left(raw) == 0
    assert all(p.grad is None for p in base.parameters() + raw.parameters())
    assert T.functional.linear is linear and inputs[0].grad is None
    for (name, p), q in zip(base.named_parameters(), raw.parameters()):  # auto_weights copied base into raw
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_a_forward_bug_is_named_at_its_layer():
    base, raw, inputs = pair(factor=1.01)
    result = _run(base, raw, inputs)
    assert not result
    first = result.first
    assert (first.stage, first.ref_path, first.test_path, first.test_type) == (
        "forward", "Net.block.scale > padiff.frameworks.toyfw.Tensor.__mul__", "Net.block.scale > "
        "padiff.frameworks.toyfw.Tensor.__mul__", "padiff.frameworks.toyfw.Tensor.__mul__")
    assert "[AutoDiff] Diff found in Forward Stage in step 0" in result.report
    assert "|    |--- (net) Scale" in result.report
    assert first.diff.max_rel == pytest.approx(0.01, rel=1e-3)


def test_a_backward_bug_with_an_exact_forward_is_named_at_its_layer():
    base, raw, inputs = pair(slope=2.1)  # d(x*x)/dx taken as 2.1 x
    result = _run(base, raw, inputs)
    first = result.first
    assert (first.stage, first.ref_path, first.what) == ("backward", "Net.square", "input gradient[0][0]")
    assert first.diff.rel_l2 == pytest.approx(0.05, rel=1e-4)
    lines = result.report.splitlines()
    assert "[AutoDiff] Max elementwise output diff is 0.0 (the model's final output)" in lines
    assert "[AutoDiff]     Route: Net.square  (toy (base))" in lines
    assert "+--- (net) Square    <---  *** HERE ***" in lines


def test_single_step_names_the_layer_whose_own_output_differs():
    base, raw, inputs = pair(factor=1.01)
    result = _run(base, raw, inputs, single_step=True)
    first = result.first
    assert (first.stage, first.ref_path, first.what) == ("forward", "Net.block.scale", "output (own, single step)")
    assert "[AutoDiff] Single-step: 2 layer(s) differ on their own (each run on the reference's inputs):" \
        in result.report.splitlines()


def test_training_steps_agree_and_an_optimizer_bug_shows_in_the_weights():
    base, raw, inputs = pair()
    opts = [T.SGD(base.parameters(), lr=0.1), T.SGD(raw.parameters(), lr=0.1)]
    scheds = [T.StepLR(o, step_size=1, gamma=0.5) for o in opts]
    assert _run(base, raw, inputs, optimizer=opts, scheduler=scheds, steps=3)
    assert opts[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)

    base, raw, inputs = pair()

    def wrong_step():  # the port's optimizer: twice the step
        for p in raw.parameters():
            p.set_(p.data - 0.2 * p.grad.data)

    result = _run(base, raw, inputs, optimizer=[T.SGD(base.parameters(), lr=0.1), wrong_step])
    assert result.first.stage == "weight" and result.first.cause.startswith(
        "The gradients agreed before the optimizer step, so this is an optimizer difference")
    assert "The gradients agreed: an optimizer difference." in result.report


def test_inputs_of_other_shapes_are_refused_before_anything_runs():
    base, raw, _ = pair()
    with pytest.raises(PadiffError) as err:
        _run(base, raw, (T.Tensor(np.ones((2, 3))), T.Tensor(np.ones((4, 3)))))
    assert str(err.value) == ("The models' inputs differ in shape at input: [2, 3] (toy (base)) vs [4, 3] (toy (raw)). "
                              "Give both models the same data.")
    assert hooks_left(base) == 0
