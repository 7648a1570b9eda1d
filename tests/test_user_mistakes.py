"""What a user sees for their own mistakes and for bad values: a clear answer at once, and a
short one. Each test states the text the user reads."""

import html
import os
import re

import numpy as np
import paddle
import pytest
import torch

from padiff import PadiffError, ReprodDiffHelper, auto_diff, compare
from padiff.reprod import render_report
from padiff.testing import assert_aligned
from support import grads_are_clear, hook_count, make_net, net_input


# --- inputs in model order ----------------------------------------------------------------------

class Counting:
    """Counts the forward calls of a model (a forward pre-hook that stays, like a user's)."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(self)  # the same call in torch and paddle

    def __call__(self, *args):
        self.calls += 1


def test_inputs_given_in_the_wrong_order_are_named_before_anything_runs(capsys):
    a, b = make_net("paddle"), make_net("torch")
    before = b.linear1.weight.detach().numpy().copy()
    with pytest.raises(PadiffError) as e:
        auto_diff(a, b, (net_input("torch"), net_input("paddle")))
    assert str(e.value) == (
        'The first input holds torch tensors (input["x"]) but the first model is paddle, and the second input holds '
        'paddle tensors (input["x"]) but the second model is torch: inputs are in model order (the first model\'s '
        "input first), each made of its own model's tensors. Swap the two inputs.")
    assert capsys.readouterr().out == ""  # nothing ran, nothing printed
    assert np.array_equal(b.linear1.weight.detach().numpy(), before)  # no weight copied


def test_one_input_of_the_wrong_framework():
    a, b = make_net("paddle"), make_net("torch")
    bad = {"x": torch.tensor(np.zeros((6, 8), "float32"))}
    with pytest.raises(PadiffError, match=re.escape(
            'The first input holds torch tensors (input["x"]) but the first model is paddle: inputs are in model '
            "order (the first model's input first), each made of its own model's tensors.")):
        auto_diff(a, b, (bad, net_input("torch")))


# --- exceptions that say everything ---------------------------------------------------------------

class TorchOne(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1 = torch.nn.Linear(100, 30)

    def forward(self, x):
        return self.linear1(x)


class PaddleOne(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.linear1 = paddle.nn.Linear(100, 20)

    def forward(self, x):
        return self.linear1(x)


def _one_inputs():
    x = np.random.default_rng(0).random((4, 100)).astype("float32")
    return {"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}


def test_a_weight_shape_mismatch_raises_with_both_layers_and_both_paths(capsys):
    with pytest.raises(PadiffError) as e:
        auto_diff(PaddleOne(), TorchOne(), _one_inputs())
    assert str(e.value).splitlines() == [
        "Weights could not be copied from the torch model into the paddle model. The error occurred between:",
        "    paddle: `Linear(in_features=100, out_features=20, dtype=float32)`",
        "            `PaddleOne.linear1.weight`",
        "    torch: `Linear(in_features=100, out_features=30, bias=True)`",
        "           `TorchOne.linear1.weight`",
        "Shape of param `weight` in torch::Linear and param `weight` in paddle::Linear is not the same. "
        "[100, 30] vs [100, 20] (after transposing the Linear weight)",
        "(The full report with both model trees is printed above.)",
    ]
    printed = capsys.readouterr().out
    # the printed report keeps the seeds' line as they print it ("occured")
    assert "[AutoDiff] Assign weight Failed !!!\nError occured between:\n    paddle: `Linear(" in printed
    assert e.value.report == printed.rstrip("\n")


def test_a_quiet_run_keeps_the_weight_report_on_the_error(capsys):
    with pytest.raises(PadiffError) as e:
        auto_diff(PaddleOne(), TorchOne(), _one_inputs(), verbose=False)
    assert capsys.readouterr().out == ""
    assert str(e.value).endswith("(The full report with both model trees is this error's `report`.)")
    tree = "Torch Model\n=========================\nTorchOne    (skip)\n+--- Linear    <---  *** HERE ***"
    assert tree in e.value.report


def test_shapes_differ_says_which_model_has_which():
    result = auto_diff(PaddleOne(), TorchOne(), _one_inputs(), auto_weights=False, verbose=False)
    assert not result
    assert "\nShapes differ: [4, 20] (paddle) vs [4, 30] (torch).\n" in result.report
    assert result.first.diff.message() == "Shapes differ: [4, 20] (tested) vs [4, 30] (reference)."


# --- options checked before any model runs ------------------------------------------------------

@pytest.mark.parametrize("report", ["text", "html"])
def test_an_unwritable_log_folder_fails_before_the_models_run(tmp_path, report, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    a, b = make_net("paddle"), make_net("torch")  # models that agree: nothing would be written
    counts = [Counting(a), Counting(b)]
    with pytest.raises(PadiffError) as e:
        auto_diff(a, b, (net_input("paddle"), net_input("torch")),
                  options={"log_dir": str(blocker / "logs"), "report": report})
    assert str(e.value) == (
        f"Option log_dir: cannot write padiff's log folder `{blocker / 'logs'}`: Not a directory. Choose a "
        "writable folder with options={'log_dir': ...} or the PADIFF_LOG_DIR environment variable.")
    assert [c.calls for c in counts] == [0, 0]
    assert capsys.readouterr().out == ""


def test_the_log_folder_check_leaves_no_folder_behind(tmp_path):
    log_dir = tmp_path / "new" / "logs"
    a, b = make_net("paddle"), make_net("torch")
    assert auto_diff(a, b, (net_input("paddle"), net_input("torch")), options={"log_dir": str(log_dir)},
                     verbose=False)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("options,message", [
    ({"tree_inline_lines": "lots"}, "Option tree_inline_lines must be a whole number of lines >= 0, got 'lots'."),
    ({"single_step": "False"}, "Option single_step must be True or False, got 'False' (str)."),
    ({"atol": float("nan")}, "Option atol must be a number >= 0, got nan."),
    ({"atol": "1e-4"}, "Option atol must be a number, got '1e-4' (str)."),
    ({"layer_tolerances": {"fc.*": {"atol": "big"}}},
     "Option layer_tolerances['fc.*']['atol'] must be a number, got 'big' (str)."),
    ({"thirdparty_api": 3}, "Option thirdparty_api must be a list of dotted function names ('pkg.mod.op'), got 3."),
    ({"log_dir": 3}, "Option log_dir must be a folder path, got 3."),
    ({"verbose": None}, "Option verbose must be True or False, got None (NoneType)."),
])
def test_option_types_are_checked_with_the_option_named(options, message):
    a, b = make_net("paddle"), make_net("torch")
    counts = [Counting(a), Counting(b)]
    with pytest.raises(PadiffError) as e:
        auto_diff(a, b, (net_input("paddle"), net_input("torch")), options=options)
    assert str(e.value) == message
    assert [c.calls for c in counts] == [0, 0]


def test_html_without_jinja2_fails_up_front(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jinja2" else real(name, *a))
    a, b = make_net("paddle"), make_net("torch")
    counts = [Counting(a), Counting(b)]
    with pytest.raises(PadiffError, match=r"^Option report='html' needs Jinja2: pip install 'padiff\[html\]'"):
        auto_diff(a, b, (net_input("paddle"), net_input("torch")), options={"report": "html"})
    assert [c.calls for c in counts] == [0, 0]


# --- NaN and Inf --------------------------------------------------------------------------------

class TorchLog(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(4, 4)
        self.l2 = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.l2(torch.log(torch.clamp(self.l(x), min=1e-3)))


class PaddleLog(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.l = paddle.nn.Linear(4, 4)
        self.l2 = paddle.nn.Linear(4, 4)

    def forward(self, x):
        return self.l2(paddle.log(self.l(x)))  # the port forgot the clamp: log of a negative number


def _log_inputs():
    x = np.random.default_rng(0).random((3, 4)).astype("float32")
    return {"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}


def test_a_nan_made_by_one_framework_call_is_named_as_the_cause():
    paddle.seed(0)
    torch.manual_seed(0)
    result = auto_diff(PaddleLog(), TorchLog(), _log_inputs(), verbose=False)
    assert not result
    first = result.first
    assert (first.stage, first.test_path) == ("forward", "PaddleLog.l2")  # the next paired layer
    origin = result.nonfinite[0]
    assert (origin.label, origin.node.label(), origin.what, origin.kind) == ("paddle", "PaddleLog > paddle.log",
                                                                             "output", "NaN")
    assert origin.nan > 0 and origin.numel == 12 and origin.source.function == "forward"
    line = f"{__file__}:{origin.source.lineno} in forward"
    assert "return self.l2(paddle.log(self.l(x)))" in origin.source.line_text()
    cause = (f"Caused by a non-finite value: the paddle model's first NaN is in the output of `PaddleLog > paddle.log` "
             f"({origin.nan} NaN of 12 elements), made at {line}; the torch model has none.")
    assert first.cause == cause
    lines = result.report.splitlines()
    assert f"[AutoDiff]     {cause}" in lines
    assert "[AutoDiff] Max elementwise output diff is nan (the model's final output)" in lines
    assert (f"The paddle model's value holds 12 NaN (first at index (0, 0)). A non-finite value makes every later "
            "comparison meaningless: look at this layer's inputs and weights.") in lines
    assert cause in str(result)


def test_nan_in_an_input_is_noted_and_named():
    x = np.random.default_rng(0).random((6, 8)).astype("float32")
    x[1, 2] = np.nan
    a, b = make_net("paddle"), make_net("torch")
    result = auto_diff(a, b, ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}), verbose=False)
    assert not result
    assert ("[AutoDiff] NOTE: The paddle model's input[\"x\"] holds 1 NaN and 0 Inf of 48 values: every value "
            "computed from it will be non-finite.") in result.report.splitlines()
    assert [(x.label, x.stage, x.what) for x in result.nonfinite[:2]] == [("paddle", "input", 'input["x"]'),
                                                                          ("torch", "input", 'input["x"]')]


def test_a_passing_run_reads_no_records_for_nan(monkeypatch):
    from padiff.compare import nonfinite

    read = []
    monkeypatch.setattr(nonfinite, "track", lambda *a, **k: read.append(1))
    a, b = make_net("paddle"), make_net("torch")
    assert auto_diff(a, b, (net_input("paddle"), net_input("torch")), verbose=False)
    assert read == []


# --- short str/repr -----------------------------------------------------------------------------

def test_printing_a_result_or_a_finding_gives_a_few_lines():
    a, b = make_net("paddle", "activation"), make_net("torch")
    result = auto_diff(a, b, (net_input("paddle"), net_input("torch")), verbose=False)
    first = str(result.first).splitlines()
    assert first[:3] == ["Forward Stage, step 0, compared output:",
                         "  reference: TorchNet.act (ReLU)",
                         "  tested:    PaddleNet.act (Sigmoid)"]
    assert re.match(r"  max abs 0\.\d+, max rel inf, rel L2 [\d.]+, 96/96 over tolerance$", first[-1])
    assert len(first) <= 8
    text = str(result).splitlines()
    assert text[0] == "NOT ALIGNED: torch (reference) vs paddle"
    assert text[2:4] == ["  torch:  TorchNet.act (ReLU)", "  paddle: PaddleNet.act (Sigmoid)"]
    assert len(str(result)) < 800
    assert repr(result.first).startswith("Finding(FAILED, stage='forward', step=0, what='output', "
                                         "ref='TorchNet.act' (ReLU), test='PaddleNet.act' (Sigmoid), max abs 0.")
    assert len(repr(result.first)) < 300 and len(repr(result.steps[0])) < 300
    assert repr(result.first.ref_node) == "Node(net 'TorchNet.act', ReLU, 1 output(s), 1 child call(s))"
    assert repr(result.first.diff).startswith("TensorDiff(passed=False, shape=[6, 16], max_abs=0.")
    ok = auto_diff(make_net("paddle"), make_net("torch"), (net_input("paddle"), net_input("torch")), verbose=False)
    assert str(ok) == "ALIGNED: torch (reference) vs paddle, 1 step compared"


# --- one verdict, one report --------------------------------------------------------------------

def test_one_verdict_line_and_the_report_once(capsys):
    a, b = make_net("paddle", "activation"), make_net("torch")
    result = auto_diff(a, b, (net_input("paddle"), net_input("torch")))
    out = capsys.readouterr().out
    assert out.count("FAILED !!!") == 1 and out.rstrip().endswith("[AutoDiff] FAILED !!!")
    assert out.count("Mismatched elements") == 1 and out.count("Route: PaddleNet.act") == 1
    assert out.count("Diff found in Forward Stage in step 0") == 1
    assert "comparing failed" not in out and "NOT ALIGNED" not in out
    assert out.rstrip("\n") == result.report
    ok = auto_diff(make_net("paddle"), make_net("torch"), (net_input("paddle"), net_input("torch")))
    out = capsys.readouterr().out
    assert out.count("SUCCESS !!!") == 1 and out.rstrip().endswith("[AutoDiff] SUCCESS !!!") and ok


def test_compare_prints_one_verdict():
    r = compare(np.array([1.0, 2.0]), np.array([1.0, 3.0]), quiet=True)
    assert r.report.count("FAILED !!!") == 1 and r.report.endswith("[padiff] FAILED !!!")
    assert "[padiff] 1 of 1 value differs." in r.report.splitlines()


# --- assert_aligned is quiet --------------------------------------------------------------------

def test_assert_aligned_prints_nothing_unless_asked(capsys):
    assert assert_aligned(make_net("torch"), make_net("paddle"), (net_input("torch"), net_input("paddle")))
    with pytest.raises(AssertionError):
        assert_aligned(make_net("torch"), make_net("paddle", "activation"), (net_input("torch"), net_input("paddle")))
    assert capsys.readouterr().out == ""
    result = assert_aligned(make_net("torch"), make_net("paddle"), (net_input("torch"), net_input("paddle")),
                            verbose=True)
    out = capsys.readouterr().out
    assert out.rstrip().endswith("[AutoDiff] SUCCESS !!!") and out.rstrip("\n") == result.report


# --- reprod: the threshold that judged each key -------------------------------------------------

def test_reprod_names_each_keys_threshold():
    helper = ReprodDiffHelper()
    ref = {"logits": np.ones(4, "float32"), "loss": np.float32(2.0)}
    other = {"logits": np.ones(4, "float32") + np.float32(2e-6), "loss": np.float32(2.0001)}
    helper.compare_info(ref, other)
    plain = render_report(helper.check())
    report = helper.check(diff_threshold={"loss": 1e-3, "default": 1e-6}, rel_threshold={"logits": 1e-5})
    logits, loss = report.keys
    assert render_report(report) == [
        "logits: ",
        f"    mean diff: check passed: True, value: {logits.methods[0].value!r}, threshold: "
        f"{logits.methods[0].threshold!r} (diff_threshold 1e-06 + rel_threshold['logits'] 1e-05 x mean |reference| 1)",
        "loss: ",
        f"    mean diff: check passed: True, value: {loss.methods[0].value!r}, threshold: 0.001 "
        "(diff_threshold['loss'] 0.001)",
        "diff check passed",
    ]
    # one absolute threshold for every key: the reprod_log lines of seeds 003/004, unchanged
    assert plain[1] == f"    mean diff: check passed: False, value: {logits.methods[0].value!r}"


# --- HTML ---------------------------------------------------------------------------------------

def test_an_aligned_html_report_has_no_link_without_a_target(tmp_path):
    a, b = make_net("paddle"), make_net("torch")
    result = auto_diff(a, b, (net_input("paddle"), net_input("torch")), verbose=False,
                       options={"report": "html", "log_dir": str(tmp_path)})
    page = (tmp_path / "padiff_report.html").read_text()
    assert result and 'href="#first-divergence"' not in page and 'id="first-divergence"' not in page
    a, b = make_net("paddle", "activation"), make_net("torch")
    result = auto_diff(a, b, (net_input("paddle"), net_input("torch")), verbose=False,
                       options={"report": "html", "log_dir": str(tmp_path)})
    page = (tmp_path / "padiff_report.html").read_text()
    assert page.count('id="first-divergence"') == 1
    assert '<a href="#first-divergence">first difference</a>' in page
    assert '<a href="#first-divergence">show it in the tree</a>' in page


def _without_time(page):
    return re.sub(r"Generated [^<]*\.", "Generated", page)


def test_a_result_shows_its_html_report_in_a_notebook(tmp_path, monkeypatch):
    a, b = make_net("paddle", "activation"), make_net("torch")
    result = auto_diff(a, b, (net_input("paddle"), net_input("torch")), verbose=False,
                       options={"report": "html", "log_dir": str(tmp_path)})
    shown = result._repr_html_()
    m = re.fullmatch(r'<iframe class="padiff-report" srcdoc="([^"]*)" [^>]*></iframe>', shown)
    assert m is not None
    from padiff.report.html import render_html

    assert _without_time(html.unescape(m.group(1))) == _without_time(render_html(result))  # the same report
    written = (tmp_path / "padiff_report.html").read_text()
    # the file was written before its own path joined the result's log files: the rest is the same
    assert _without_time(written).split("<h3>Log files</h3>")[0] == _without_time(render_html(result)).split(
        "<h3>Log files</h3>")[0]

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jinja2" else real(name, *a))
    shown = result._repr_html_()
    assert shown.startswith("<pre>[AutoDiff] Your options:") and shown.endswith("[AutoDiff] FAILED !!!</pre>")


def test_an_optimizer_that_is_not_one_is_named_before_the_models_run():
    a, b = make_net("paddle"), make_net("torch")
    counts = [Counting(a), Counting(b)]
    with pytest.raises(PadiffError) as e:
        auto_diff(a, b, (net_input("paddle"), net_input("torch")), optimizer=[object(), object()])
    assert str(e.value) == ("optimizer[0] (for the first model, paddle) is a object: pass an optimizer of its "
                            "framework or a no-argument function that updates the weights.")
    assert [c.calls for c in counts] == [0, 0] and grads_are_clear(a) and grads_are_clear(b)
    assert hook_count(a) == 1 and hook_count(b) == 1  # the user's own counting hooks, nothing of padiff's


class TorchMaskA(torch.nn.Module):
    def forward(self, x):
        return torch.where(x > 0, torch.log(torch.clamp(x, min=1e-6)), torch.zeros_like(x))


class PaddleMaskA(paddle.nn.Layer):
    def forward(self, x):
        return paddle.where(x > 0, paddle.log(x), paddle.zeros_like(x))  # NaN where x < 0, masked


class TorchMasked(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = TorchMaskA()
        self.b = torch.nn.Linear(8, 8)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.b(self.a(x)))


class PaddleMasked(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.a = PaddleMaskA()
        self.b = paddle.nn.Linear(8, 8)
        self.act = paddle.nn.Sigmoid()  # the port's bug, unrelated to the NaN

    def forward(self, x):
        return self.act(self.b(self.a(x)))


def test_a_masked_nan_is_listed_under_a_difference_of_finite_values():
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    result = auto_diff(PaddleMasked(), TorchMasked(), ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}),
                       verbose=False)
    assert not result and result.first.test_path == "PaddleMasked.act" and not result.first.cause
    lines = result.report.splitlines()
    i = lines.index("[AutoDiff]     NaN appeared before this difference, though its values are finite:")
    assert re.fullmatch(r"\[AutoDiff\]         paddle: the output of `PaddleMasked\.a > paddle\.log` \(\d+ NaN of 32 "
                        r"elements\), made at .*test_user_mistakes\.py:\d+ in forward", lines[i + 1])
    assert lines[i + 2] == "[AutoDiff]             return paddle.where(x > 0, paddle.log(x), paddle.zeros_like(x))  " \
                           "# NaN where x < 0, masked"
