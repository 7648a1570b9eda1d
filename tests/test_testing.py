"""padiff.testing.assert_aligned, the pytest helper, on real torch and paddle models."""

import re

import pytest

from padiff import AlignResult, PadiffError
from padiff.testing import assert_aligned
from support import make_net, net_input

pytest_plugins = ["pytester"]


def models(bug=None):
    return make_net("torch"), make_net("paddle", bug), (net_input("torch"), net_input("paddle"))


def test_agreeing_models_pass_and_give_the_result():
    a, b, inputs = models()
    result = assert_aligned(a, b, inputs)
    assert isinstance(result, AlignResult) and result
    assert len(result.steps[0].forward) > 0


def test_a_difference_fails_with_the_short_report(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # an assertion message is plain text, always
    a, b, inputs = models("activation")
    with pytest.raises(AssertionError) as e:
        assert_aligned(a, b, inputs)
    lines = str(e.value).splitlines()
    assert lines[0] == "padiff: NOT ALIGNED  torch (reference) vs paddle, 1 step"
    assert lines[1] == "First diff: Forward Stage in step 0, compared output"
    assert lines[2:4] == ["  torch:  TorchNet.act (ReLU)", "  paddle: PaddleNet.act (Sigmoid)"]
    assert re.match(r"  torch source:  .*support\.py:\d+ in forward: x = self\.act\(self\.linear1\(x\)\)$", lines[4])
    assert "  Mismatched elements: 96 / 96 (100.0%)" in lines
    assert "\x1b" not in str(e.value)


def test_options_reach_auto_diff():
    # a bug only in the backward: invisible to a forward-only check, named by a backward one
    a, b, inputs = models("backward")
    assert assert_aligned(a, b, inputs, diff_phase="forward")
    a, b, inputs = models("backward")
    with pytest.raises(AssertionError) as e:
        assert_aligned(a, b, inputs, options={"diff_phase": "backward"})
    assert "First diff: Backward Stage in step 0, compared input gradient" in str(e.value)
    # user tolerances: |a - b| <= 10 holds everywhere in this net, even with the activation bug
    a, b, inputs = models("activation")
    assert assert_aligned(a, b, inputs, atol=10.0, rtol=0.0)


def test_a_mistake_in_the_call_is_an_error_not_a_failure():
    a, b, inputs = models()
    with pytest.raises(PadiffError, match="inputs must be a pair"):
        assert_aligned(a, b, inputs[0])
    with pytest.raises(PadiffError, match="Unknown option 'atoll'. Did you mean 'atol'"):
        assert_aligned(a, b, inputs, atoll=1e-3)


def test_in_a_users_test_suite_pytest_shows_the_report_at_the_users_line(pytester):
    pytester.makepyfile(test_port="""
        from padiff.testing import assert_aligned
        from support import make_net, net_input

        def test_port_matches():
            inputs = (net_input("torch"), net_input("paddle"))
            assert_aligned(make_net("torch"), make_net("paddle", "ln_epsilon"), inputs)
    """)
    res = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert "E       AssertionError: padiff: NOT ALIGNED  torch (reference) vs paddle, 1 step" in out
    assert re.search(r"^E         torch:  TorchNet\.norm\b", out, re.M)
    # the traceback ends at the user's call: padiff's own frames are hidden
    assert ">       assert_aligned(make_net(\"torch\"), make_net(\"paddle\", \"ln_epsilon\"), inputs)" in out
    assert "padiff/testing.py" not in out and "padiff/auto_diff.py" not in out
