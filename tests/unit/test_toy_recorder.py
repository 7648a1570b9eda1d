"""The recorder (padiff/record) on the toy framework: the call tree, the values and gradients it
keeps, the framework calls it traces, and that it leaves the model and the framework as they were."""

import numpy as np
import pytest

from padiff.errors import PadiffError, PadiffInternalError
from padiff.frameworks import get_adapter, toyfw as T
from padiff.record.recorder import Recorder
from toy_models import Net, hooks_left

AD = get_adapter("toy")


def _record(model, x, **kw):
    rec = Recorder(AD, model, "Net", grads=True, **kw)
    with rec:
        out = rec.run(lambda: model(x), "toy")
        AD.backward(AD.default_loss([out], [np.ones(out.shape)]))
    return rec.trace, out


def test_the_call_tree_holds_every_layer_call_with_its_output_and_gradient():
    T.manual_seed(0)
    model = Net()
    x = T.Tensor(np.random.default_rng(0).standard_normal((2, 3)).astype("float32"), requires_grad=True)
    trace, out = _record(model, x)
    assert trace.framework == "toy" and trace.root.path == "Net"
    assert [(n.path, n.name) for n in trace.nodes] == [
        ("Net", "Net"), ("Net.body", "Sequential"), ("Net.body.0", "Linear"), ("Net.body.1", "ReLU"),
        ("Net.block", "Block"), ("Net.block.fc1", "Linear"), ("Net.block.act", "Tanh"),
        ("Net.block.scale", "Scale"), ("Net.block.fc2", "Linear"), ("Net.square", "Square")]
    assert [n.path for n in trace.root.children] == ["Net.body", "Net.block", "Net.square"]
    (path, rec), = trace.root.outputs
    assert path == "" and rec.dtype == "float32" and rec.shape == (2, 3)
    np.testing.assert_array_equal(rec.array, out.data)
    # the loss is mean(out) (weights of ones), so the output's gradient is 1 / numel everywhere
    np.testing.assert_allclose(trace.root.grad_out[""].array, np.full((2, 3), 1 / 6))
    np.testing.assert_allclose(trace.root.grad_in["[0][0]"].array, x.grad.data)
    assert [n.path for n in trace.exit_order()][-2:] == ["Net.square", "Net"]


def test_a_recorded_value_is_a_copy_that_later_in_place_changes_leave_alone():
    model = Net()
    trace, out = _record(model, T.Tensor(np.ones((1, 3))))
    kept = trace.root.outputs[0][1].array.copy()
    out.set_(np.zeros(out.shape))
    np.testing.assert_array_equal(trace.root.outputs[0][1].array, kept)


def test_framework_calls_are_traced_inside_layers_and_restored_after():
    model = Net()
    original = T.functional.linear
    trace, _ = _record(model, T.Tensor(np.ones((1, 3))), api=True)
    fc1 = next(n for n in trace.nodes if n.path == "Net.block.fc1" and n.kind == "net")
    assert [c.name for c in fc1.children] == ["padiff.frameworks.toyfw.functional.linear"]
    scale = next(n for n in trace.nodes if n.path == "Net.block.scale" and n.kind == "net")
    assert [c.name for c in scale.children] == ["padiff.frameworks.toyfw.Tensor.__mul__"]
    assert T.functional.linear is original and "__padiff_wrapped__" not in vars(T.Tensor.__mul__)


def test_a_failing_model_is_named_at_its_layer_and_leaves_no_hooks():
    model = Net()
    model.block.fc2 = T.Linear(5, 3)  # takes 5 features, gets 8
    rec = Recorder(AD, model, "Net", grads=True)
    with pytest.raises(PadiffError) as err, rec:
        rec.run(lambda: model(T.Tensor(np.ones((1, 3)))), "toy")
    assert str(err.value).startswith("The toy model raised ValueError inside layer `Net.block.fc2`: matmul")
    assert str(err.value).endswith("Fix the model or its inputs and run again (the traceback above shows the line).")
    assert hooks_left(model) == 0


def test_hooks_are_removed_on_exit_and_a_recorder_is_entered_once():
    model = Net()
    rec = Recorder(AD, model, "Net", grads=True)
    with rec:
        assert hooks_left(model) == 2 * 10  # a pre and a post hook on each of the ten layers
        with pytest.raises(PadiffInternalError, match="Recorder entered twice"):
            rec.__enter__()
    assert hooks_left(model) == 0
