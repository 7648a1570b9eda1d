"""Pairing two recorded runs (padiff/compare/pairing.py) and comparing them (metrics.py,
engine.py) on toy models: which calls pair, what a difference says, where it is found."""

import numpy as np
import pytest

from padiff.compare.engine import compare_forward
from padiff.compare.metrics import Tolerance, compare_arrays
from padiff.compare.pairing import pair_traces
from padiff.errors import PadiffError
from padiff.frameworks import get_adapter, toyfw as T
from padiff.options import Options
from padiff.record.recorder import Recorder
from toy_models import Net, Scale

AD = get_adapter("toy")


def _trace(model, x):
    rec = Recorder(AD, model, type(model).__name__, grads=False)
    with rec:
        rec.run(lambda: model(x), "toy")
    return rec.trace


def _pair(a, b, x=None):
    x = x if x is not None else T.Tensor(np.random.default_rng(0).standard_normal((2, 3)).astype("float32"))
    ta, tb = _trace(a, x), _trace(b, x)
    return ta, tb, pair_traces(ta, tb, ref_label="toy (base)", test_label="toy (raw)")


def _same_weights(src, dst):
    for (_, p), (_, q) in zip(src.named_parameters(), dst.named_parameters()):
        q.set_(p.data)


def test_calls_of_two_builds_pair_path_for_path():
    ta, tb, pairing = _pair(Net(), Net())
    assert [(a.path, b.path) for a, b in pairing.pairs] == [(n.path, n.path) for n in ta.nodes]
    assert pairing.unpaired == [] and pairing.notes == []


def test_a_weightless_layer_on_one_side_only_is_left_out_with_a_note():
    class Plain(T.Module):
        def __init__(self, extra):
            super().__init__()
            self.fc = T.Linear(3, 2)
            self.act = T.Tanh()
            self.extra = extra
            if extra:
                self.keep = Scale(1.0)

        def forward(self, x):
            y = self.act(self.fc(x))
            return self.keep(y) if self.extra else y

    _, _, pairing = _pair(Plain(False), Plain(True))
    # every call without weights goes: the weighted ones are what pairs for sure
    assert [n.path for n in pairing.unpaired] == ["Plain.act", "Plain.act", "Plain.keep"]
    assert pairing.notes == [
        "Inside `Plain` the models call a different number of sublayers (toy (base): 2, toy (raw): 3); the calls "
        "without weights (Tanh, Tanh, Scale) were left out of the comparison and the rest paired in order."]


def test_models_that_call_different_weighted_layers_are_refused_with_both_lists():
    class Two(T.Module):
        def __init__(self, n):
            super().__init__()
            self.layers = [T.Linear(3, 3) for _ in range(n)]
            for i, layer in enumerate(self.layers):
                setattr(self, f"fc{i}", layer)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    with pytest.raises(PadiffError) as err:
        _pair(Two(2), Two(3))
    assert str(err.value).splitlines()[:3] == [
        "The two models are built differently: padiff pairs sublayer calls in the order they run, and their counts "
        "differ.",
        "    toy (base): `Two` calls 2: Linear, Linear",
        "    toy (raw): `Two` calls 3: Linear, Linear, Linear"]


def test_the_difference_message_names_count_place_and_allowance():
    d = compare_arrays(np.array([1.0, 2.0, 3.0, 6.0]), np.array([1.0, 2.0, 3.0, 4.0]), Tolerance(1e-5, 0.0, False))
    assert not d and d.mismatched == 1 and d.max_abs_index == (3,)
    assert d.message().splitlines()[:3] == [
        "Not equal to tolerance rtol=0, atol=1e-05",
        "Mismatched elements: 1 / 4 (25.0%)",
        "Greatest absolute difference: 2 at index (3,) (up to 1e-05 allowed)"]


def test_the_first_differing_output_is_the_planted_bug():
    T.manual_seed(0)
    base = Net()
    raw = Net(factor=1.01)
    _same_weights(base, raw)
    ta, _, pairing = _pair(base, raw)
    findings = compare_forward(pairing, ta.exit_order(), Options(), 0)
    assert all(f.passed for f in findings[:4])  # body.0, body.1, block.fc1, block.act
    first = next(f for f in findings if not f.passed)
    assert (first.stage, first.ref_path, first.test_path, first.what) == (
        "forward", "Net.block.scale", "Net.block.scale", "output")
    assert first.diff.max_rel == pytest.approx(0.01, rel=1e-3)
