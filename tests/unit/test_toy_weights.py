"""Weight planning and copying (padiff/weights/assign.py, auto.py) between toy models: which
tensors pair, how (registration order or structure), and the report when nothing pairs."""

import io

import numpy as np

from padiff import LayerMap, assign_weight
from padiff.frameworks import toyfw as T
from padiff.side import make_sides
from padiff.weights.assign import apply_copy, plan_copy
from toy_models import Net


def _plan(a, b, layer_map=None):
    (src, dst), ref = make_sides(a, b)
    assert ref == 0  # one framework twice: the first model is the weight source
    return plan_copy(src, dst, layer_map)


def _values(model):
    return {n: p.data.copy() for n, p in model.named_parameters()}


class InOut(T.Module):
    """Two Linears of different sizes, the output one first when ``out_first``."""

    def __init__(self, out_first: bool):
        super().__init__()
        if out_first:
            self.fc_out = T.Linear(4, 2)
            self.fc_in = T.Linear(3, 4)
        else:
            self.fc_in = T.Linear(3, 4)
            self.fc_out = T.Linear(4, 2)

    def forward(self, x):
        return self.fc_out(self.fc_in(x))


def test_two_builds_pair_in_registration_order_and_copy_exactly():
    T.manual_seed(0)
    a = Net()
    T.manual_seed(1)
    b = Net()
    plan = _plan(a, b)
    assert plan.ok and plan.how == "order"
    assert [(l.src_path, l.dst_path, l.converted.note) for l in plan.links] == [
        (f"Net.{p}", f"Net.{p}", "") for p in
        ("body.0.weight", "body.0.bias", "block.fc1.weight", "block.fc1.bias", "block.fc2.weight", "block.fc2.bias")]
    apply_copy(plan)
    for (name, x), y in zip(_values(a).items(), _values(b).values()):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_layers_defined_in_another_order_pair_by_structure():
    a, b = InOut(out_first=False), InOut(out_first=True)
    plan = _plan(a, b)
    assert plan.ok and plan.how == "structure"
    assert plan.order_failure.message.startswith("Shape of param `weight` in toy::Linear and param `weight` in "
                                                 "toy::Linear is not the same. [4, 3] vs [2, 4]")
    assert sorted((l.src_path, l.dst_path) for l in plan.links) == [
        ("InOut.fc_in.bias", "InOut.fc_in.bias"), ("InOut.fc_in.weight", "InOut.fc_in.weight"),
        ("InOut.fc_out.bias", "InOut.fc_out.bias"), ("InOut.fc_out.weight", "InOut.fc_out.weight")]


def test_a_layer_map_pairs_what_order_would_not():
    a, b = InOut(out_first=False), InOut(out_first=True)
    layer_map = LayerMap()
    layer_map.map = {a.fc_in: b.fc_in, a.fc_out: b.fc_out}
    plan = _plan(a, b, layer_map)
    assert plan.ok and plan.how == "order"
    assert [(l.src_path, l.dst_path) for l in plan.links][:2] == [("InOut.fc_in.weight", "InOut.fc_in.weight"),
                                                                 ("InOut.fc_in.bias", "InOut.fc_in.bias")]


def test_a_failed_copy_names_both_layers_and_leaves_the_destination_alone():
    a, b = Net(width=8), Net(width=6)
    before = _values(b)
    out = io.StringIO()
    assert assign_weight(a, b, stream=out) is False
    lines = out.getvalue().splitlines()
    assert lines[:7] == [
        "[assign_weight] Assign weight Failed !!!",
        "Error occured between:",
        "    toy (raw): `Linear(in_features=4, out_features=6, bias=True)`",
        "               `Net.block.fc1.weight`",
        "    toy (base): `Linear(in_features=4, out_features=8, bias=True)`",
        "                `Net.block.fc1.weight`",
        "Shape of param `weight` in toy::Linear and param `weight` in toy::Linear is not the same. [8, 4] vs [6, 4]"]
    assert "|    |--- Linear    <---  *** HERE ***" in lines
    for name, value in _values(b).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
