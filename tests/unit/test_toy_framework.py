"""The toy framework itself: its hand-written backward agrees with finite differences, its hooks
behave as torch's do, so what padiff's tests find on it is padiff's doing."""

import numpy as np
import pytest

from padiff.frameworks import toyfw as T


def _loss(model, x):
    y = model(x)
    return T.mean(y * y + T.tanh(y))


def _numeric_grad(f, array, eps=1e-6):
    g = np.zeros_like(array)
    for i in np.ndindex(array.shape):
        old = array[i]
        array[i] = old + eps
        up = f()
        array[i] = old - eps
        down = f()
        array[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


def test_backward_agrees_with_finite_differences():
    T.manual_seed(3)
    model = T.Sequential(T.Linear(3, 5), T.ReLU(), T.Linear(5, 2), T.Tanh())
    for _, p in model.named_parameters():
        p.data = p.data.astype(np.float64)
    x = T.Tensor(np.random.default_rng(1).standard_normal((4, 3)), requires_grad=True, dtype=np.float64)
    _loss(model, x).backward()
    value = lambda: float(_loss(model, x).data)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.data, _numeric_grad(value, p.data), rtol=1e-5, atol=1e-8, err_msg=name)
    np.testing.assert_allclose(x.grad.data, _numeric_grad(value, x.data), rtol=1e-5, atol=1e-8)


def test_hook_sees_the_whole_gradient_of_a_tensor_read_twice():
    x = T.Tensor([1.0, 2.0], requires_grad=True)
    h = x * 3.0
    seen = []
    handle = h.register_hook(lambda g: seen.append(g.data.copy()))
    (h * h + h).sum().backward()  # d/dh = 2h + 1
    np.testing.assert_allclose(seen[0], [7.0, 13.0])
    np.testing.assert_allclose(x.grad.data, [21.0, 39.0])
    handle.remove()
    (x * 3.0).sum().backward()  # a new graph: the leaf's gradient adds up
    np.testing.assert_allclose(x.grad.data, [24.0, 42.0])
    assert len(seen) == 1 and h.grad_hooks == {}


def test_forward_hooks_replace_and_are_removed_by_their_handles():
    layer = T.Tanh()
    calls = []
    pre = layer.register_forward_pre_hook(lambda m, args, kwargs: calls.append(("pre", args[0].shape)))
    post = layer.register_forward_hook(lambda m, args, kwargs, out: T.Tensor(out.data * 0))
    out = layer(T.Tensor(np.ones((2, 2))))
    assert calls == [("pre", (2, 2))] and not out.data.any()  # the post hook's value replaced the output
    pre.remove()
    post.remove()
    assert layer.forward_pre_hooks == {} and layer.forward_hooks == {}
    np.testing.assert_allclose(layer(T.Tensor([0.5])).data, np.tanh([0.5]).astype("float32"))


def test_state_dict_and_named_tensors():
    class WithBuffers(T.Module):
        def __init__(self):
            super().__init__()
            self.fc = T.Linear(2, 2)
            self.register_buffer("count", T.Tensor([0.0]))
            self.register_buffer("cache", T.Tensor([1.0]), persistent=False)
            self.again = self.fc  # one layer under two names: its tensors are listed once

    m = WithBuffers()
    assert [n for n, _ in m.named_parameters()] == ["fc.weight", "fc.bias"]
    assert [n for n, _ in m.named_buffers()] == ["count", "cache"]
    assert list(m.state_dict()) == ["count", "fc.weight", "fc.bias", "again.weight", "again.bias"]
    assert m.non_persistent_buffers == {"cache"}
    m.eval()
    assert not m.fc.training
    with pytest.raises(AttributeError, match="WithBuffers has no attribute 'nothing'"):
        m.nothing


def test_no_grad_records_no_graph_and_sgd_steps():
    layer = T.Linear(2, 1)
    with T.no_grad():
        assert not layer(T.Tensor([[1.0, 2.0]])).requires_grad
    opt = T.SGD(layer.parameters(), lr=0.5)
    sched = T.StepLR(opt, step_size=1, gamma=0.1)
    before = layer.weight.data.copy()
    layer(T.Tensor([[1.0, 2.0]])).sum().backward()
    opt.step()
    np.testing.assert_allclose(layer.weight.data, before - 0.5 * np.array([[1.0, 2.0]]), rtol=1e-6)
    assert layer.weight.version == 1
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"cannot set a tensor of shape \[1, 2\] from shape \[2\]"):
        layer.weight.set_(np.zeros(2))
