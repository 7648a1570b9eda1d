"""The toy adapter (padiff/frameworks/toy.py) and how padiff finds an adapter from a user's
objects (padiff/frameworks/__init__.py)."""

import numpy as np
import pytest

from padiff.errors import PadiffError
from padiff.frameworks import (adapter_for, adapter_for_value, framework_of, get_adapter, known_frameworks,
                               register_adapter, toyfw as T, unregister_adapter)
from padiff.frameworks.base import FrameworkAdapter

AD = get_adapter("toy")


class Mine(T.Module):
    def forward(self, x):
        return x


def test_the_toy_adapter_is_found_from_layers_tensors_and_subclasses():
    assert isinstance(AD, FrameworkAdapter) and AD.name == "toy" and AD.title == "Toy"
    assert adapter_for(T.Linear(1, 1)) is AD and adapter_for(Mine()) is AD
    assert framework_of(T.Tensor([1.0])) == "toy" and framework_of(T.Parameter([1.0])) == "toy"
    assert adapter_for_value(np.ones(2)) is None and framework_of(3.0) is None
    assert AD.is_builtin(T.Linear(1, 1)) and not AD.is_builtin(Mine())
    assert AD.is_container(T.Sequential()) and not AD.is_container(Mine())


def test_a_registered_package_is_found_from_its_classes_first():
    register_adapter("toy_again", "padiff.frameworks.toy", package=__name__, listed=False)
    try:
        assert framework_of(Mine()) == "toy_again"  # this module's class, before its toy base class
        assert framework_of(T.Linear(1, 1)) == "toy"
        assert get_adapter("toy_again").name == "toy"
        assert "toy_again" not in [fw.name for fw in known_frameworks()]
    finally:
        unregister_adapter("toy_again")
    assert framework_of(Mine()) == "toy"


def test_what_the_toy_framework_lacks_is_said_plainly():
    with pytest.raises(PadiffError, match="^The toy framework has no dtype 'bfloat16': it holds numpy arrays only.$"):
        AD.from_array(np.ones(2), "bfloat16")
    assert AD.distributed_info() is None and AD.data_parallel_inner(Mine()) is None
    assert AD.random_layer_p(T.Tanh()) is None and AD.parallel_layer_classes == {}


def test_tensors_through_the_adapter():
    t = AD.from_array(np.arange(6).reshape(2, 3), "float64")
    assert (AD.shape(t), AD.dtype_name(t), AD.is_floating(t)) == ((2, 3), "float64", True)
    kept = AD.to_numpy(t)
    AD.set_value(t, np.zeros((2, 3)))
    assert AD.version(t) == 1 and kept.sum() == 15 and AD.host_view(t).sum() == 0
    assert AD.fingerprint(AD.from_array(np.array([3.0, 4.0]), "float32")) == pytest.approx(5.0)
    leaf = AD.detach_requires_grad(AD.from_array(np.array([1.0, 2.0]), "float32"))
    AD.backward(AD.default_loss([leaf], [np.array([1.0, 3.0])]))  # mean(leaf * w) -> w / 2
    np.testing.assert_allclose(AD.tensor_grad(leaf).data, [0.5, 1.5])


def test_a_state_file_round_trip(tmp_path):
    a, b = T.Linear(2, 3), T.Linear(2, 3)
    path = str(tmp_path / "state.npz")
    AD.save_raw({k: AD.raw_array(t) for k, t in AD.state_items(a)}, path)
    loaded = AD.load_file(path)
    assert sorted(loaded) == ["bias", "weight"]
    for key, t in AD.state_items(b):
        AD.assign_raw(t, *AD.raw_array(loaded[key]))
    np.testing.assert_array_equal(b.weight.data, a.weight.data)
