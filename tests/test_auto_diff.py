"""auto_diff end to end on real torch and paddle, for all four model pairs."""

import numpy as np
import paddle
import pytest
import torch

import padiff
from padiff import AlignResult, PadiffError, auto_diff
from support import class_name, grads_are_clear, hook_count, make_net, net_input, output_array

PAIRS = [("paddle", "torch"), ("torch", "paddle"), ("torch", "torch"), ("paddle", "paddle")]
PAIR_IDS = ["paddle-torch", "torch-paddle", "torch-torch", "paddle-paddle"]


def build(pair, bug=None, **kw):
    """Models and inputs in the user's order; for one framework twice the bug goes into the
    second ("raw") model, across frameworks into the paddle one (the port)."""
    first, second = pair
    bug_index = 1 if first == second else pair.index("paddle")
    models = [make_net(fw, bug if i == bug_index else None, **kw) for i, fw in enumerate(pair)]
    for m in models:
        m.eval()
    inputs = (net_input(first), net_input(second))
    return models, inputs


def run(pair, bug=None, capsys=None, **opts):
    models, inputs = build(pair, bug)
    result = auto_diff(models[0], models[1], inputs, auto_weights=True, **opts)
    text = capsys.readouterr().out if capsys else result.report
    return result, text, models, inputs


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_agreeing_pair_passes_and_leaves_no_hooks(pair, capsys):
    result, text, models, _ = run(pair, capsys=capsys)
    assert isinstance(result, AlignResult)
    assert result and result == True  # noqa: E712 (the seeds compare with ==)
    assert "[AutoDiff] Assign weight success !!!" in text
    assert "[AutoDiff] forward stage compared." in text
    assert "[AutoDiff] backward stage compared." in text
    assert text.rstrip().endswith("[AutoDiff] SUCCESS !!!")
    for m in models:
        assert hook_count(m) == 0
        assert grads_are_clear(m)
    # every layer, output gradient and parameter gradient was compared
    step = result.steps[0]
    layers = [f for f in step.forward if f.ref_node.kind == "net"]
    calls = [f for f in step.forward if f.ref_node.kind == "api"]
    assert len(layers) == 7  # root + 6 sublayer calls
    # framework calls inside them: linear, relu, matmul, mul, mul, truediv, layer_norm, linear
    assert [f.ref_node.name.rsplit(".", 1)[-1] for f in calls] == [
        "linear", "relu", "__matmul__", "__mul__", "__mul__", "__truediv__", "layer_norm", "linear"]
    assert {f.stage for f in step.backward} == {"backward"}
    assert len(step.grads) == 7  # linear1 w,b; proj w; norm w,b; linear2 w,b


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("bug,stage,layer,what", [
    ("activation", "Forward Stage", "act", "output"),
    ("ln_epsilon", "Forward Stage", "norm", "output"),
    ("transpose", "Forward Stage", "proj", "output"),
    ("backward", "Backward Stage", "cube", "input gradient"),
])
def test_injected_bug_is_named_at_its_layer(pair, bug, stage, layer, what, capsys):
    result, text, models, _ = run(pair, bug, capsys=capsys)
    assert not result and result == False  # noqa: E712
    first = result.first
    assert first.ref_node.path.endswith("." + layer) and first.test_node.path.endswith("." + layer)
    assert first.what.startswith(what)
    assert f"[AutoDiff] Diff found in {stage} in step 0" in text
    names = [class_name(fw) + "." + layer for fw in pair]
    assert f"[AutoDiff]     Route: {names[0]}" in text
    assert f"[AutoDiff]            {names[1]}" in text
    assert "Mismatched elements: " in text and "Greatest absolute difference: " in text
    assert text.count("<---  *** HERE ***") == 2
    here_lines = [l for l in text.splitlines() if "*** HERE ***" in l]
    assert any(first.ref_type in l for l in here_lines) and any(first.test_type in l for l in here_lines)
    assert text.rstrip().endswith("[AutoDiff] FAILED !!!")
    for m in models:
        assert hook_count(m) == 0


def test_backward_only_bug_reports_the_custom_op_layer_not_parameters(capsys):
    result, text, _, _ = run(("paddle", "torch"), "backward", capsys=capsys)
    assert result.stage == "backward"
    assert result.first.ref_path == "TorchNet.cube" and result.first.test_path == "PaddleNet.cube"
    assert result.first.ref_node.kind == "net"
    assert "Compared: input gradient" in text
    # forward agreed everywhere
    assert all(f.passed for f in result.steps[0].forward)


def test_diff_phase_forward_skips_backward(capsys):
    result, text, _, _ = run(("paddle", "torch"), "backward", capsys=capsys, options={"diff_phase": "forward"})
    assert result
    assert "backward stage compared." not in text
    assert result.steps[0].backward == [] and result.steps[0].grads == []


def test_diff_phase_backward_ignores_forward_only_bug_output_is_still_measured(capsys):
    result, text, _, _ = run(("paddle", "torch"), "backward", capsys=capsys, options={"diff_phase": "backward"})
    assert not result and result.stage == "backward"
    assert result.steps[0].forward == []


def test_models_give_same_outputs_after_run_without_weight_copy():
    models, inputs = build(("paddle", "torch"))
    before = [output_array(m, i) for m, i in zip(models, inputs)]
    auto_diff(models[0], models[1], inputs, auto_weights=False)
    after = [output_array(m, i) for m, i in zip(models, inputs)]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert all(hook_count(m) == 0 for m in models)


def test_seed001_keyword_style_and_mean_mode(capsys):
    models, inputs = build(("torch", "paddle"))
    result = auto_diff(models[0], models[1], inputs, atol=1e-4, compare_mode="mean", single_step=False,
                       auto_init=True)
    text = capsys.readouterr().out
    assert result
    assert "  atol: `0.0001`" in text and "  compare_mode: `mean`" in text


def test_strict_catches_what_mean_hides(capsys):
    # a permutation of the output keeps its mean: mean mode cannot see it, strict does
    class Flip(torch.nn.Module):
        def forward(self, x):
            return x.flip(-1)

    class Keep(paddle.nn.Layer):
        def forward(self, x):
            return x * 1.0

    x = np.arange(6, dtype="float32").reshape(2, 3)
    inp = ({"x": torch.tensor(x)}, {"x": paddle.to_tensor(x)})
    assert auto_diff(Flip(), Keep(), inp, compare_mode="mean", diff_phase="forward")
    assert not auto_diff(Flip(), Keep(), inp, diff_phase="forward")


def test_user_atol_rtol_are_exact_in_strict_mode(capsys):
    models, inputs = build(("paddle", "torch"), "ln_epsilon")
    loose = auto_diff(models[0], models[1], inputs, options={"atol": 10.0, "rtol": 0.0})
    assert loose  # |a-b| <= 10 is accepted: nothing in this net differs by 10
    strict = auto_diff(models[0], models[1], inputs, options={"atol": 0.0, "rtol": 0.0, "compare_mode": "strict"})
    assert not strict
    assert "Not equal to tolerance rtol=0, atol=0\n" in strict.report


def test_user_atol_is_an_allowance_on_top_of_rounding_by_default(capsys):
    # compare_mode "auto" (the default): the user's atol/rtol widen the rounding-aware rule and
    # never narrow it, so a tolerance tighter than rounding does not fail a clean port ...
    models, inputs = build(("paddle", "torch"))
    assert auto_diff(models[0], models[1], inputs, options={"atol": 0.0, "rtol": 0.0})
    # ... while a real difference still fails, and the message names both criteria.
    models, inputs = build(("paddle", "torch"), "ln_epsilon")
    bug = auto_diff(models[0], models[1], inputs, options={"atol": 1e-9})
    assert not bug
    assert "(x scale, auto); or within your atol=1e-09, rtol=1e-07" in bug.report


def test_seed002_mismatched_input_keys_are_passed_by_position(capsys):
    models, inputs = build(("paddle", "torch"))
    inputs = (inputs[0], {"y": inputs[1]["x"]})
    result = auto_diff(models[0], models[1], inputs)
    text = capsys.readouterr().out
    assert result
    assert "forward does not take the keyword(s) 'y'; padiff passed the dict's values by position" in text


@pytest.mark.parametrize("form", ["list", "tensor"])
def test_positional_and_single_tensor_inputs(form):
    models, inputs = build(("paddle", "torch"))
    if form == "list":
        inputs = ([inputs[0]["x"]], [inputs[1]["x"]])
    else:
        inputs = (inputs[0]["x"], inputs[1]["x"])
    assert auto_diff(models[0], models[1], inputs)


# --- what a user can get wrong -----------------------------------------------------------

def test_inputs_not_a_pair():
    models, inputs = build(("paddle", "torch"))
    with pytest.raises(PadiffError, match=r"inputs must be a pair \(input of the first model, input of the second"):
        auto_diff(models[0], models[1], inputs[0])


def test_input_shapes_differ():
    models, _ = build(("paddle", "torch"))
    inputs = (net_input("paddle", batch=6), net_input("torch", batch=5))
    with pytest.raises(PadiffError, match=r"inputs differ in shape at input\[\"x\"\]: \[6, 8\] \(paddle\) vs \[5, 8\] \(torch\)"):
        auto_diff(models[0], models[1], inputs)
    assert all(hook_count(m) == 0 for m in models)


def test_different_depth_fails_weight_copy_with_trees(capsys):
    paddle_model, torch_model = make_net("paddle", extra=True), make_net("torch")
    with pytest.raises(PadiffError, match="has no partner"):
        auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")))
    text = capsys.readouterr().out
    assert "[AutoDiff] Assign weight Failed !!!" in text
    assert "`PaddleNet.extra` (Linear) has no partner" in text
    assert "+--- Linear    <---  *** HERE ***" in text
    assert "Hint:" in text


def test_different_depth_without_weight_copy_names_both_layers():
    paddle_model, torch_model = make_net("paddle", extra=True), make_net("torch")
    inp = (net_input("paddle"), net_input("torch"))
    with pytest.raises(PadiffError) as err:
        auto_diff(paddle_model, torch_model, inp, auto_weights=False)
    msg = str(err.value)
    assert "The two models are built differently" in msg
    assert "torch: `TorchNet` calls 6: Linear, ReLU, TorchProj, TorchCubeLayer, LayerNorm, Linear" in msg
    assert "paddle: `PaddleNet` calls 7:" in msg
    assert hook_count(paddle_model) == 0 and hook_count(torch_model) == 0


def test_parameter_shape_mismatch_names_both_parameters(capsys):
    class TorchWide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(x)

    class PaddleNarrow(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(PadiffError, match=r"\[8, 5\] vs \[8, 4\]"):
        auto_diff(PaddleNarrow(), TorchWide(), (net_input("paddle"), net_input("torch")))
    text = capsys.readouterr().out
    assert "    paddle: `Linear(in_features=8, out_features=4, dtype=float32)`" in text
    assert "`PaddleNarrow.fc.weight`" in text and "`TorchWide.fc.weight`" in text


def test_model_that_raises_names_the_layer_and_removes_hooks():
    class Broken(paddle.nn.Layer):
        def forward(self, x):
            return x.reshape([7, -1, 5])

    paddle_model, torch_model = make_net("paddle"), make_net("torch")
    paddle_model.cube = Broken()
    with pytest.raises(PadiffError, match=r"The paddle model raised \w+ inside layer `PaddleNet.cube`"):
        auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")))
    assert hook_count(paddle_model) == 0 and hook_count(torch_model) == 0


def test_non_tensor_output_is_a_clear_error():
    class Text(torch.nn.Module):
        def forward(self, x):
            return "done"

    class TextP(paddle.nn.Layer):
        def forward(self, x):
            return "done"

    with pytest.raises(PadiffError, match="output \\(str\\) holds no floating-point tensor"):
        auto_diff(TextP(), Text(), (net_input("paddle"), net_input("torch")))


def test_nan_is_reported_at_the_layer_that_made_it(capsys):
    class Log(torch.nn.Module):
        def forward(self, x):
            return torch.log(x)

    class LogP(paddle.nn.Layer):
        def forward(self, x):
            return paddle.log(x)

    torch_model, paddle_model = make_net("torch"), make_net("paddle")
    torch_model.cube, paddle_model.cube = Log(), LogP()
    result = auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")))
    assert not result
    assert result.first.test_path == "PaddleNet.cube > paddle.log"  # the framework call itself
    assert "NaN" in result.report and "non-finite value" in result.report


def test_unknown_option_suggests_the_right_one():
    models, inputs = build(("paddle", "torch"))
    with pytest.raises(PadiffError, match="Unknown option 'atoll'. Did you mean 'atol'"):
        auto_diff(models[0], models[1], inputs, options={"atoll": 1e-3})


def test_unwritable_log_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    models, inputs = build(("paddle", "torch"), "activation")
    with pytest.raises(PadiffError, match="Option log_dir: cannot write padiff's log folder"):
        auto_diff(models[0], models[1], inputs, options={"log_dir": str(blocker / "logs"), "tree_inline_lines": 1})


def test_long_trees_go_to_the_log_folder(tmp_path, capsys):
    models, inputs = build(("paddle", "torch"), "activation")
    log_dir = tmp_path / "logs"
    result = auto_diff(models[0], models[1], inputs, options={"log_dir": str(log_dir), "tree_inline_lines": 4})
    text = capsys.readouterr().out
    assert (log_dir / "report_paddle.log").read_text().count("*** HERE ***") == 1
    assert (log_dir / "report_torch.log").exists()
    assert f"Logs: {log_dir / 'report_paddle.log'}" in text
    assert str(log_dir / "report_paddle.log") in result.log_files


def test_nothing_written_when_models_agree(tmp_path):
    models, inputs = build(("paddle", "torch"))
    log_dir = tmp_path / "logs"
    assert auto_diff(models[0], models[1], inputs, options={"log_dir": str(log_dir)})
    assert not log_dir.exists()


def test_path_log_switch_adds_paths_to_trees(monkeypatch, capsys):
    monkeypatch.setenv("PADIFF_PATH_LOG", "ON")
    result, text, _, _ = run(("paddle", "torch"), "activation", capsys=capsys)
    assert "(net) Sigmoid  (PaddleNet.act)    <---  *** HERE ***" in text


# --- differently built models, paired by a LayerMap ------------------------------------------

def _layer_map_run(paddle_model, torch_model, x, dtype="float32"):
    from padiff import LayerMap

    layer_map = LayerMap()
    assert layer_map.auto(paddle_model, torch_model)
    paddle_model.eval()
    torch_model.eval()
    inputs = ({"x": paddle.to_tensor(x.astype(dtype))}, {"x": torch.tensor(x.astype(dtype))})
    return auto_diff(paddle_model, torch_model, inputs, layer_map=layer_map)


def test_resnet_built_differently_aligns_with_an_auto_layer_map(capsys):
    from models_weights import PaddleResNet, TorchResNet, randomize_bn, seeded

    seeded(1)
    torch_model, paddle_model = TorchResNet(), PaddleResNet()
    randomize_bn(torch_model)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype("float32")
    result = _layer_map_run(paddle_model, torch_model, x)
    text = capsys.readouterr().out
    assert result, text[-3000:]
    assert "the wrappers around them were not" in text  # torch's Sequential stem against flat layers


def test_torch_multihead_attention_against_paddle_qkv_linears(capsys):
    from models_weights import PaddleTransformerBlock, TorchTransformerBlock, seeded

    seeded(2)
    torch_model, paddle_model = TorchTransformerBlock(), PaddleTransformerBlock()
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype("float32")
    result = _layer_map_run(paddle_model, torch_model, x)
    assert result, capsys.readouterr().out[-3000:]


def test_ignored_layers_are_left_out_of_the_comparison():
    from padiff import LayerMap

    paddle_model, torch_model = make_net("paddle", "activation"), make_net("torch")
    layer_map = LayerMap()
    layer_map.ignore([paddle_model.act, torch_model.act])
    result = auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")), layer_map=layer_map)
    assert not result
    assert result.first.ref_node.path == "TorchNet.proj"  # act itself is not compared; what follows it differs


def test_fp32_against_bf16_of_the_same_torch_model(capsys):
    from support import TorchNet

    x = np.random.default_rng(0).standard_normal((6, 8)).astype("float32")
    full, half = TorchNet(), TorchNet().to(torch.bfloat16)
    result = auto_diff(full, half, ({"x": torch.tensor(x)}, {"x": torch.tensor(x).bfloat16()}))
    assert result, capsys.readouterr().out[-2000:]
    compared = result.steps[0].forward[0].diff
    assert compared.dtype_b == "float32" and compared.dtype_a == "bfloat16"
    assert compared.tolerance.source == "bfloat16"  # the lower precision decides
    # and a real bug is still found at bf16 tolerance
    buggy = TorchNet("activation").to(torch.bfloat16)
    result = auto_diff(full, buggy, ({"x": torch.tensor(x)}, {"x": torch.tensor(x).bfloat16()}))
    assert not result and result.first.ref_node.path == "TorchNet.act"


def test_weights_copy_into_bfloat16_paddle_parameters():
    from padiff import assign_weight

    torch_model, paddle_model = make_net("torch"), make_net("paddle")
    paddle_model.to(dtype="bfloat16")
    assert assign_weight(paddle_model, torch_model)
    copied = paddle_model.linear1.weight.astype("float32").numpy()
    expected = torch_model.linear1.weight.detach().numpy().T
    np.testing.assert_allclose(copied, expected, rtol=1e-2, atol=1e-2)
    assert str(paddle_model.linear1.weight.dtype).endswith("bfloat16")


def test_report_ends_with_what_it_checked_then_one_verdict(capsys):
    result, text, _, _ = run(("paddle", "torch"), "activation", capsys=capsys)
    lines = text.rstrip().splitlines()
    assert lines[-1] == "[AutoDiff] FAILED !!!"
    assert lines[-2].startswith("[AutoDiff] Checked: forward 7 of 9 differ, ")  # plain: not a terminal
    assert "\x1b[" not in text
    # one verdict, the report once: the first difference is not repeated as a summary
    assert text.count("FAILED !!!") == 1 and "NOT ALIGNED" not in text
    assert text.count("Route: PaddleNet.act") == 1 and text.count("Mismatched elements") == 1


def test_in_place_ops_do_not_rewrite_what_was_recorded(capsys):
    # torch's ReLU(inplace=True) and `x += ...` change the previous layer's output tensor in
    # place; a port without in-place ops must still agree at every layer, forward and backward
    class TorchInPlace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)
            self.act = torch.nn.ReLU(inplace=True)
            self.fc2 = torch.nn.Linear(8, 8)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x):
            h = self.act(self.fc(x))
            y = self.fc2(h)
            y += h
            return self.head(y)

    class PaddleNoInPlace(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(8, 8)
            self.act = paddle.nn.ReLU()
            self.fc2 = paddle.nn.Linear(8, 8)
            self.head = paddle.nn.Linear(8, 2)

        def forward(self, x):
            h = self.act(self.fc(x))
            return self.head(self.fc2(h) + h)

    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    result = auto_diff(PaddleNoInPlace(), TorchInPlace(), ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}))
    assert result, capsys.readouterr().out[-3000:]
    fc = [f for f in result.steps[0].forward if f.ref_path == "TorchInPlace.fc"][0]
    assert fc.diff.value_b is not None and fc.passed


@pytest.mark.parametrize("single_step", [False, True])
def test_records_beyond_the_memory_budget_spill_to_disk_with_the_same_findings(tmp_path, monkeypatch, single_step):
    import tempfile

    import models

    from padiff.record import spill as spill_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    padiff.release_buffers()  # no spill file kept from an earlier call: this one's go to tmp_path
    mapped = []
    keep = spill_module.Spill.keep
    monkeypatch.setattr(spill_module.Spill, "keep",
                        lambda self, array, **kw: mapped.append(1) or keep(self, array, **kw) if self.budget == 0
                        else keep(self, array, **kw))
    x = np.random.default_rng(0).standard_normal((4, 64, 64)).astype("float32")  # 64 KiB activations
    runs = {}
    for budget in (None, 0):
        paddle_model, torch_model = models.encoder_pair(bug="gelu_tanh", dim=64, hidden=256, depth=2)
        inputs = ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)})
        runs[budget] = auto_diff(paddle_model, torch_model, inputs,
                                 options={"memory_budget_mb": budget, "single_step": single_step})
    in_memory, spilled = runs[None], runs[0]
    assert not in_memory and not spilled
    assert spilled.first.ref_path == in_memory.first.ref_path
    figures = lambda r: [(f.ref_path, f.what, f.diff.max_abs, f.diff.rel_l2, f.passed)
                         for f in r.steps[0].all_findings()]
    assert figures(spilled) == figures(in_memory)
    assert 1 <= len([p for p in tmp_path.iterdir() if p.name.startswith("padiff-spill-")]) <= 2  # kept for reuse
    padiff.release_buffers()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("padiff-spill-")] == []
    assert len(mapped) > 50  # the budget-0 run did go through the spill


def test_memory_budget_must_be_a_size():
    models, inputs = build(("paddle", "torch"))
    with pytest.raises(PadiffError, match="Option memory_budget_mb must be a number of megabytes >= 0 or None"):
        auto_diff(models[0], models[1], inputs, options={"memory_budget_mb": "lots"})


@pytest.mark.parametrize("pair", [("paddle", "torch"), ("torch", "paddle")])
@pytest.mark.parametrize("failing", ["folder", "backward"])
def test_a_spill_that_cannot_be_written_is_the_users_error_and_leaves_the_models_as_they_were(
        tmp_path, monkeypatch, pair, failing):
    import errno
    import tempfile

    import models as model_pairs

    from padiff.record import spill as spill_module

    padiff.release_buffers()  # no kept spill file: this call makes its own
    if failing == "folder":  # TMPDIR names a folder that is not there
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    else:  # the disk fills up during the backward of the first model (its forward's arrays were written)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        from padiff.run import record as run_record

        write, loss_of, armed = spill_module.SpillFile.write, run_record.loss_of, []

        def filling(self, array):
            if armed:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(self, array)

        def arming(side, *a, **k):
            if side.adapter.name == pair[0]:
                armed.append(1)
            return loss_of(side, *a, **k)

        monkeypatch.setattr(run_record, "loss_of", arming)
        monkeypatch.setattr(spill_module.SpillFile, "write", filling)
    built = dict(zip(("paddle", "torch"), model_pairs.encoder_pair(dim=64, hidden=256, depth=2)))
    models = [built[fw] for fw in pair]
    x = np.random.default_rng(0).standard_normal((4, 64, 64)).astype("float32")  # 64 KiB activations
    inputs = [{"x": paddle.to_tensor(x)} if fw == "paddle" else {"x": torch.tensor(x)} for fw in pair]
    with pytest.raises(PadiffError) as raised:
        auto_diff(models[0], models[1], inputs, options={"memory_budget_mb": 0})
    text = str(raised.value)
    assert "padiff could not write the records beyond memory_budget_mb=0 to a temporary file in" in text
    assert ("No space left on device" if failing == "backward" else "No such file or directory") in text
    assert "Point TMPDIR to a folder with room, or raise memory_budget_mb (None keeps every record in memory)." \
        in text
    if failing == "backward":
        assert "backward raised" not in text  # padiff's own error, not the model's
    assert [hook_count(m) for m in models] == [0, 0]
    assert all(grads_are_clear(m) for m in models)
    monkeypatch.undo()
    assert auto_diff(models[0], models[1], inputs, options={"memory_budget_mb": 0})  # and they still align
    padiff.release_buffers()


class _TorchNormHead(torch.nn.Module):
    def __init__(self, bug=None):
        super().__init__()
        from support import TorchCubeLayer
        self.linear = torch.nn.Linear(8, 16)
        self.cube = TorchCubeLayer(bug)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(self.cube(self.linear(x)))


class _PaddleNormHead(paddle.nn.Layer):
    def __init__(self, bug=None):
        super().__init__()
        from support import PaddleCubeLayer
        self.linear = paddle.nn.Linear(8, 16)
        self.cube = PaddleCubeLayer(bug)
        self.norm = paddle.nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(self.cube(self.linear(x)))


def test_default_loss_sees_a_backward_bug_behind_a_final_normalisation(capsys):
    # The seeds' mean(output) has gradient zero through a final LayerNorm, so a wrong custom-op
    # backward before it cannot show; the default loss weights the output and catches it.
    torch_model, paddle_model = _TorchNormHead(), _PaddleNormHead("backward")
    inputs = (net_input("paddle"), net_input("torch"))
    plain_mean = auto_diff(paddle_model, torch_model, inputs, loss_fn=[lambda o: o.mean(), lambda o: o.mean()])
    assert plain_mean  # the bug is multiplied by a zero gradient: nothing to see
    result = auto_diff(paddle_model, torch_model, inputs)
    assert not result and result.first.stage == "backward"
    assert result.first.ref_path.split(" > ")[0] == "_TorchNormHead.cube"
    assert result.steps[0].loss.ref_type == "weighted mean(output)"
    assert plain_mean.steps[0].loss.ref_type == "loss_fn"


def test_one_numpy_array_is_the_input_of_both_models(capsys):
    # PaDiff before 0.2: auto_diff(layer, module, inp) with inp a numpy array
    x = np.random.default_rng(0).standard_normal((6, 8)).astype("float32")
    result = auto_diff(make_net("paddle"), make_net("torch"), x)
    assert result
    assert ("One numpy array [6, 8] (float32) was given as the input: each model received it as one positional "
            "tensor of its framework.") in result.notes
    with pytest.raises(PadiffError, match="or one numpy array that both models take as their only input"):
        auto_diff(make_net("paddle"), make_net("torch"), [x])


def test_one_framework_twice_titles_its_trees_base_and_raw():
    result = auto_diff(make_net("torch"), make_net("torch", "ln_epsilon"), (net_input("torch"), net_input("torch")),
                       options={"verbose": False})
    assert not result and (result.ref_label, result.test_label) == ("torch (base)", "torch (raw)")
    assert [l for l in result.report.splitlines() if l.endswith("Model (base)") or l.endswith("Model (raw)")] == [
        "Torch Model (base)", "Torch Model (raw)"]
