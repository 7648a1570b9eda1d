"""Per-layer metrics as CSV and JSON, and the console summary, rendered from real runs."""

import csv
import inspect
import json
import math
import os
import re

import numpy as np
import paddle
import pytest
import torch

from padiff import PadiffError, auto_diff
from padiff.report.tables import (COLUMN_NAMES, CSV_NAME, JSON_NAME, color_enabled, console_summary,
                                  metric_rows, write_tables)
from support import PaddleNet, TorchNet, make_net, net_input

DOCUMENTED = ["step", "stage", "order", "ref_path", "test_path", "ref_type", "test_type", "what", "passed",
              "max_abs", "max_rel", "rel_l2", "cosine", "mismatched", "numel", "atol", "rtol", "problem",
              "first", "tolerance"]


def run(bug=None, log_dir=None):
    torch.manual_seed(0)
    paddle.seed(0)
    opts = {"log_dir": log_dir} if log_dir else {}
    return auto_diff(make_net("torch"), make_net("paddle", bug), (net_input("torch"), net_input("paddle")),
                     auto_weights=True, options=opts)


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    return run("activation", str(tmp_path_factory.mktemp("fail_log")))


@pytest.fixture(scope="module")
def passing(tmp_path_factory):
    return run(None, str(tmp_path_factory.mktemp("pass_log")))


def _strict(name):
    raise ValueError(f"not JSON: {name}")


def test_csv_and_json_hold_one_row_per_comparison_in_the_documented_schema(failing, tmp_path):
    csv_path, json_path = write_tables(failing, str(tmp_path))
    assert (os.path.basename(csv_path), os.path.basename(json_path)) == (CSV_NAME, JSON_NAME)
    assert list(COLUMN_NAMES) == DOCUMENTED
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == DOCUMENTED
        rows = list(reader)
    step = failing.steps[0]
    assert len(rows) == len(step.all_findings())
    stages = [r["stage"] for r in rows]
    assert sorted(set(stages), key=stages.index) == ["forward", "loss", "backward", "grad"]
    assert [int(r["order"]) for r in rows if r["stage"] == "forward"] == list(range(len(step.forward)))

    firsts = [r for r in rows if r["first"] == "True"]
    assert len(firsts) == 1
    f = firsts[0]
    assert (f["stage"], f["ref_path"], f["test_path"], f["ref_type"], f["test_type"], f["what"], f["passed"]) == \
        ("forward", "TorchNet.act", "PaddleNet.act", "ReLU", "Sigmoid", "output", "False")
    assert int(f["mismatched"]) == int(f["numel"]) == 96
    assert f["tolerance"] == "auto float32: rtol=0.0001, atol=0.0001 x scale, rel-L2 <= 0.0001"
    assert float(f["rel_l2"]) == failing.first.diff.rel_l2
    # the ReLU's zeros make the greatest relative difference infinite: an empty cell, a JSON null
    assert math.isinf(failing.first.diff.max_rel) and f["max_rel"] == ""

    with open(json_path, encoding="utf-8") as fh:
        doc = json.loads(fh.read(), parse_constant=_strict)  # strict JSON: no NaN / Infinity
    assert (doc["format"], doc["version"], doc["passed"], doc["steps"]) == ("padiff.metrics", 1, False, 1)
    assert (doc["ref_label"], doc["test_label"]) == ("torch", "paddle")
    assert doc["first"] == {"step": 0, "stage": "forward", "ref_path": "TorchNet.act",
                            "test_path": "PaddleNet.act", "what": "output"}
    assert [c["name"] for c in doc["columns"]] == DOCUMENTED
    assert all(c["type"] in ("int", "float", "str", "bool") and c["description"] for c in doc["columns"])
    assert doc["rows"] == metric_rows(failing)
    # the two files say the same thing
    for c_row, j_row in zip(rows, doc["rows"]):
        for name, kind, _ in ((c["name"], c["type"], 0) for c in doc["columns"]):
            value, cell = j_row[name], c_row[name]
            if value is None:
                assert cell == ""
            elif kind == "float":
                assert float(cell) == value
            elif kind == "int":
                assert int(cell) == value
            else:
                assert cell == str(value)
    assert doc["rows"][[r["first"] for r in doc["rows"]].index(True)]["max_rel"] is None


def test_a_comparison_without_figures_has_empty_figures(tmp_path):
    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x)

    class P(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(3, 3)

        def forward(self, x):
            return paddle.log(self.fc(x) - 100.0)  # NaN

    x = np.ones((2, 3), "float32")
    result = auto_diff(T(), P(), (torch.tensor(x), paddle.to_tensor(x)), auto_weights=True, diff_phase="forward")
    assert not result
    rows = [r for r in metric_rows(result) if r["problem"] is not None]
    assert rows and rows[0]["first"] and rows[0]["problem"] == "nan"
    assert all(rows[0][k] is None for k in ("max_abs", "max_rel", "rel_l2", "cosine", "mismatched"))
    assert rows[0]["numel"] == 6
    csv_path, _ = write_tables(result, str(tmp_path))
    with open(csv_path, newline="", encoding="utf-8") as fh:
        first = [r for r in csv.DictReader(fh) if r["first"] == "True"][0]
    assert (first["problem"], first["max_abs"], first["rel_l2"], first["numel"]) == ("nan", "", "", "6")


def test_unwritable_folder_is_a_clear_error(failing, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PadiffError, match="Cannot write padiff's log folder"):
        write_tables(failing, str(blocker / "logs"))


def _line(fn, text):
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, l in enumerate(lines) if text in l)


def test_summary_of_a_failing_run(failing):
    here = inspect.getsourcefile(TorchNet)
    t_line, p_line = _line(TorchNet.forward, "self.act("), _line(PaddleNet.forward, "self.act(")
    text = console_summary(failing, color=False)
    lines = text.splitlines()
    d = failing.first.diff
    assert lines[:12] == [
        "padiff: NOT ALIGNED  torch (reference) vs paddle, 1 step",
        "First diff: Forward Stage in step 0, compared output",
        "  torch:  TorchNet.act (ReLU)",
        "  paddle: PaddleNet.act (Sigmoid)",
        f"  torch source:  {here}:{t_line} in forward: x = self.act(self.linear1(x))",
        f"  paddle source: {here}:{p_line} in forward: x = self.act(self.linear1(x))",
        "  Not equal to tolerance rtol=0.0001, atol=0.0001 (x scale, auto)",
        "  Mismatched elements: 96 / 96 (100.0%)",
        f"  Greatest absolute difference: {d.max_abs:.6g} at index {d.max_abs_index} "
        f"(up to {d.allowed_at_max:.6g} allowed)",
        f"  Greatest relative difference: inf at index {d.max_rel_index}",
        f"  Relative L2 error: {d.rel_l2:.6g} (up to 0.0001 allowed), cosine similarity: {d.cosine:.8f}",
        lines[11],
    ]
    assert lines[11].startswith("Forward rel L2 error: at most ") and " before it, " in lines[11]
    assert f", {d.rel_l2:.3g} at it, " in lines[11] and lines[11].endswith(" at the model output")
    step = failing.steps[0]
    bad = {s: sum(1 for f in getattr(step, s) if not f.passed) for s in ("forward", "backward", "grads")}
    assert lines[12] == (f"Checked: forward {bad['forward']} of {len(step.forward)} differ, loss 1 of 1 differ, "
                         f"backward {bad['backward']} of {len(step.backward)} differ, "
                         f"parameter grads {bad['grads']} of {len(step.grads)} differ")
    assert lines[13:] == ["Reports: " + failing.log_files[0]] + ["         " + p for p in failing.log_files[1:]]
    assert "\x1b" not in text


def test_summary_of_a_passing_run(passing):
    lines = console_summary(passing, color=False).splitlines()
    step = passing.steps[0]
    assert lines[0] == "padiff: ALIGNED  torch (reference) vs paddle, 1 step"
    assert lines[1] == (f"Checked: forward {len(step.forward)}, loss 1, backward {len(step.backward)}, "
                        f"parameter grads {len(step.grads)} (all within tolerance)")
    assert lines[2].startswith("Closest to its tolerance: ")
    assert re.search(r"\(\d+% of the allowed error, (elementwise|relative L2|rounding floor)\)$", lines[2]), lines[2]
    assert len(lines) == 3


def test_colour_only_on_a_terminal_without_no_color(failing, monkeypatch, tmp_path):
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    red = "padiff: \x1b[31;1mNOT ALIGNED\x1b[0m"
    assert console_summary(failing, color=True).startswith(red)
    assert "\x1b[36mTorchNet.act\x1b[0m" in console_summary(failing, color=True)
    with open(tmp_path / "out.txt", "w") as pipe_like:
        assert not color_enabled(pipe_like)
        assert "\x1b" not in console_summary(failing, stream=pipe_like)
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            assert color_enabled(tty)
            assert console_summary(failing, stream=tty).startswith(red)
            monkeypatch.setenv("TERM", "dumb")
            assert not color_enabled(tty)
            monkeypatch.delenv("TERM")
            monkeypatch.setenv("NO_COLOR", "1")
            assert not color_enabled(tty)
            assert "\x1b" not in console_summary(failing, stream=tty)
    finally:
        os.close(master)
        os.close(slave)
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("FORCE_COLOR", "1")
    with open(tmp_path / "out.txt", "w") as pipe_like:
        assert color_enabled(pipe_like)
