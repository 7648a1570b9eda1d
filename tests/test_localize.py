"""Localisation: framework-call (API) tracing, single-step mode, the user's source line."""

import numpy as np
import paddle
import paddle.nn.functional as PF
import pytest
import torch
import torch.nn.functional as TF
from torch.nn.functional import gelu as imported_gelu  # bound before padiff patches anything

import custom_ops
import models
import padiff
from padiff import PadiffError, auto_diff
from support import hook_count, make_net, net_input


def encoder_inputs(dim=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((2, 8, dim)).astype("float32")
    return {"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}


def test_tanh_gelu_in_block_7_is_named_with_the_source_line(capsys):
    paddle_model, torch_model = models.encoder_pair(bug="gelu_tanh", depth=12, bug_block=7)
    result = auto_diff(paddle_model, torch_model, encoder_inputs(), options={"tree_inline_lines": 20})
    text = capsys.readouterr().out
    first = result.first
    assert first.stage == "forward"
    assert first.ref_node.kind == "api" and first.ref_node.path == "TorchEncoder.blocks.7.mlp"
    assert first.ref_type == "torch.nn.functional.gelu" and first.test_type == "paddle.nn.functional.gelu"
    assert "[AutoDiff]     Route: PaddleEncoder.blocks.7.mlp > paddle.nn.functional.gelu" in text
    assert "(api) paddle.nn.functional.gelu    <---  *** HERE ***" in text
    assert "(api) torch.nn.functional.gelu    <---  *** HERE ***" in text
    # both stacks end at the user's line that made the call
    assert "    return self.fc2(PF.gelu(self.fc1(x), approximate=self.bug == \"gelu_tanh\"))" in text
    assert "    return self.fc2(TF.gelu(self.fc1(x)))" in text
    assert "site-packages" not in text.split("Stacks:")[1]


def test_single_step_lists_only_the_layer_with_its_own_difference(capsys):
    paddle_model, torch_model = models.encoder_pair(bug="gelu_tanh", depth=12, bug_block=7)
    result = auto_diff(paddle_model, torch_model, encoder_inputs(), options={"single_step": True})
    text = capsys.readouterr().out
    bad = [f for f in result.steps[0].forward + result.steps[0].backward if not f.passed]
    assert {f.test_path for f in bad} == {"PaddleEncoder.blocks.7.mlp"}
    assert "[AutoDiff] Single-step: 1 layer(s) differ on their own" in text
    assert "input[0][0] of TorchEncoder.blocks.7.mlp.fc2 (own, single step)" in text
    assert "runs every layer once more" in text  # backward single-step costs an extra forward


class TorchChaos(torch.nn.Module):
    def forward(self, x):
        return 3.9 * x * (1 - x)


class PaddleChaos(paddle.nn.Layer):
    def forward(self, x):
        return 3.9 * (x - x * x)  # the same function, rounded differently


class TorchDeep(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([TorchChaos() for _ in range(24)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class PaddleDeep(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.layers = paddle.nn.LayerList([PaddleChaos() for _ in range(24)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def chaos_inputs():
    x = np.random.default_rng(0).uniform(0.1, 0.9, (4, 64)).astype("float32")
    return {"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}


def test_rounding_that_grows_fails_late_but_no_layer_differs_on_its_own(capsys):
    normal = auto_diff(PaddleDeep(), TorchDeep(), chaos_inputs())
    assert not normal
    index = int(normal.first.ref_node.path.split(".")[2])
    assert index >= 8, normal.first.ref_path  # the first failure is late, not at layer 0
    single = auto_diff(PaddleDeep(), TorchDeep(), chaos_inputs(), options={"single_step": True})
    text = capsys.readouterr().out
    assert single
    assert all(f.passed for f in single.steps[0].forward + single.steps[0].backward)
    assert "single-step finds 0 layer(s) whose own difference exceeds tolerance" in text


def test_backward_single_step_finds_the_custom_op_with_a_wrong_backward(capsys):
    paddle_model, torch_model = make_net("paddle", "backward"), make_net("torch")
    result = auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")),
                       options={"single_step": True, "diff_phase": "backward"})
    text = capsys.readouterr().out
    assert not result
    bad = [f for f in result.steps[0].backward if not f.passed]
    assert [f.test_path for f in bad] == ["PaddleNet.cube"]
    assert bad[0].what.startswith("input gradient")
    assert "backward PaddleNet.cube  (PaddleCubeLayer vs TorchCubeLayer): input gradient" in text
    assert hook_count(paddle_model) == 0 and hook_count(torch_model) == 0


def _patched_state():
    import paddle.nn.layer.norm as paddle_norm

    return (torch.nn.functional.gelu, torch.matmul, paddle.nn.functional.gelu, paddle_norm.layer_norm,
            paddle.Tensor.__add__, "__add__" in torch.Tensor.__dict__, "__mul__" in torch.Tensor.__dict__,
            dict(vars(torch.nn.functional)), dict(vars(paddle.nn.functional)))


def test_every_patch_is_restored_when_the_model_raises():
    before = _patched_state()

    class Broken(torch.nn.Module):
        def forward(self, x):
            y = TF.gelu(x) + 1
            raise ValueError("boom inside the model")

    torch_model, paddle_model = make_net("torch"), make_net("paddle")
    torch_model.cube = Broken()
    with pytest.raises(PadiffError, match="The torch model raised ValueError inside layer `TorchNet.cube`"):
        auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")))
    after = _patched_state()
    assert after[:7] == before[:7]
    assert after[7] == before[7] and after[8] == before[8]
    assert getattr(torch.nn.functional.gelu, "__padiff_wrapped__", None) is None


def test_a_model_calling_no_traced_function_is_left_as_it_was():
    before = _patched_state()

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(8))

    class PlainP(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.w = self.create_parameter([8])

    class T(Plain):
        def forward(self, x):
            return x.T.T

    class P(PlainP):
        def forward(self, x):
            return x.T.T

    result = auto_diff(P(), T(), (net_input("paddle"), net_input("torch")), diff_phase="forward")
    assert result
    assert [n.kind for n in result.steps[0].test_trace.nodes] == ["net"]
    assert _patched_state()[:7] == before[:7]


class TorchImported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return imported_gelu(self.fc(x))  # imported by name before tracing


class PaddleGelu(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(8, 8)

    def forward(self, x):
        return PF.gelu(self.fc(x))


def test_functions_imported_by_name_before_tracing_are_traced():
    result = auto_diff(PaddleGelu(), TorchImported(), (net_input("paddle"), net_input("torch")))
    assert result
    names = [n.name for n in result.steps[0].ref_trace.nodes if n.kind == "api"]
    assert "torch.nn.functional.gelu" in names
    assert getattr(imported_gelu, "__padiff_wrapped__", None) is None  # and restored


def test_api_check_off_records_layers_only(monkeypatch):
    monkeypatch.setenv("PADIFF_API_CHECK", "OFF")
    result = auto_diff(make_net("paddle"), make_net("torch"), (net_input("paddle"), net_input("torch")))
    assert result
    assert {n.kind for n in result.steps[0].ref_trace.nodes} == {"net"}


class TorchCustom(torch.nn.Module):
    def forward(self, x):
        return custom_ops.scaled_tanh(x)


class PaddleCustom(paddle.nn.Layer):
    def forward(self, x):
        return custom_ops.scaled_tanh(x, scale=2.5)  # a port that got the op's argument wrong


def test_custom_ops_from_the_environment_are_traced_and_named(monkeypatch, capsys):
    monkeypatch.setenv("PADDLE_THIRDPARTY_API", "custom_ops.scaled_tanh")
    result = auto_diff(PaddleCustom(), TorchCustom(), (net_input("paddle"), net_input("torch")))
    assert not result
    assert result.first.ref_type == "custom_ops.scaled_tanh" == result.first.test_type
    assert "(api) custom_ops.scaled_tanh    <---  *** HERE ***" in capsys.readouterr().out
    assert getattr(custom_ops.scaled_tanh, "__padiff_wrapped__", None) is None


def test_register_api_is_the_same_as_the_environment_switch():
    padiff.register_api(custom_ops.scaled_tanh)
    try:
        result = auto_diff(PaddleCustom(), TorchCustom(), (net_input("paddle"), net_input("torch")))
        assert result.first.ref_type == "custom_ops.scaled_tanh"
    finally:
        padiff.auto_diff_module.unregister_api(custom_ops.scaled_tanh)


def test_unknown_custom_api_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PADDLE_THIRDPARTY_API", "custom_ops.no_such_op")
    with pytest.raises(PadiffError, match="Module 'custom_ops' has no attribute 'no_such_op'"):
        auto_diff(PaddleCustom(), TorchCustom(), (net_input("paddle"), net_input("torch")))


@pytest.mark.parametrize("spelling", ["PADIFF_SKIP_WRAP_LAYER", "PADIFF_SIKP_WRAP_LAYER"])
def test_skip_wrap_layer_leaves_weightless_layers_out(monkeypatch, spelling):
    monkeypatch.setenv(spelling, "TRUE")
    result = auto_diff(make_net("paddle"), make_net("torch"), (net_input("paddle"), net_input("torch")))
    assert result
    compared = {f.ref_node.path for f in result.steps[0].forward if f.ref_node.kind == "net"}
    assert compared == {"TorchNet", "TorchNet.linear1", "TorchNet.proj", "TorchNet.norm", "TorchNet.linear2"}


def test_calls_pair_only_when_their_inputs_agree(capsys):
    # torch computes 3.9 * x * (1 - x), the port 3.9 * (x - x * x): both are a multiplication,
    # a subtraction and a multiplication of this shape, but 3.9 * x is not x * x. The late
    # failure is named at the layer, not at a mis-paired call.
    result = auto_diff(PaddleDeep(), TorchDeep(), chaos_inputs())
    assert not result and result.first.ref_node.kind == "net"
    assert result.first.ref_path.startswith("TorchDeep.layers.")
    api_pairs = [(a, b) for a, b in result.steps[0].pairing.pairs if a.kind == "api"]
    for a, b in api_pairs:
        assert a.in_prints is not None and len(a.in_prints) == len(b.in_prints)
