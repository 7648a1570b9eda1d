"""The run pipeline (padiff/run/): what a difference means is data (Finding.cause_kind) that the
report reads, the result objects show themselves without importing a renderer, and the
pipeline's modules stay framework-free."""

from __future__ import annotations

import ast
import os
from dataclasses import replace

import paddle
import torch

from padiff import assign_weight, auto_diff
from padiff.compare.result import Cause
from padiff.report.run import Printer, failure
from padiff.side import make_sides
from support import make_net, net_input

PADIFF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "padiff")


def _momentum_off():
    paddle_model, torch_model = make_net("paddle"), make_net("torch")
    assert assign_weight(paddle_model, torch_model)
    popt = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.8, parameters=paddle_model.parameters())
    topt = torch.optim.SGD(torch_model.parameters(), lr=0.1, momentum=0.9)
    return auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")), auto_weights=False,
                     optimizer=[popt, topt], steps=2, verbose=False)


def test_an_optimizer_difference_is_a_kind_the_report_reads_not_a_sentence(tmp_path):
    result = _momentum_off()
    assert not result and result.first.stage == "weight" and result.first.cause_kind is Cause.OPTIMIZER
    assert "The gradients agreed: an optimizer difference." in result.report
    assert all(f.cause_kind is None for f in result.steps[1].grads)  # the gradients agreed
    # The report decides from the kind: reworded, the cause still reads as an optimizer difference;
    # another kind with the same words does not.
    sr = result.steps[-1]
    opts = replace(result.options, log_dir=str(tmp_path))
    sides, ref_i = make_sides(make_net("paddle"), make_net("torch"))  # torch is the reference
    assert ref_i == 1
    for f in sr.weights:
        f.cause = "Reworded."
    out = Printer(quiet=True)
    failure(result, out, sides[1], sides[0], 1, opts)
    assert out.text().endswith(f"check report `{tmp_path / 'weight_diff.log'}`. The gradients agreed: an optimizer "
                               "difference.")
    for f in sr.weights:
        f.explain(Cause.FOLLOWS_BACKWARD, "The gradients agreed before the optimizer step.")
    out = Printer(quiet=True)
    failure(result, out, sides[1], sides[0], 1, opts)
    assert out.text().endswith(f"check report `{tmp_path / 'weight_diff.log'}`.")


def test_a_learning_rate_and_a_loss_difference_carry_their_kinds():
    paddle_model, torch_model = make_net("paddle"), make_net("torch")
    assert assign_weight(paddle_model, torch_model)
    popt = paddle.optimizer.SGD(learning_rate=0.2, parameters=paddle_model.parameters())
    topt = torch.optim.SGD(torch_model.parameters(), lr=0.1)
    result = auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")), auto_weights=False,
                       optimizer=[popt, topt], verbose=False)
    assert not result and result.first.stage == "lr" and result.first.cause_kind is Cause.LEARNING_RATE
    assert result.first.cause == "The learning rates in force differ at step 0: [0.1] vs [0.2] (check the schedulers)."

    paddle_model, torch_model = make_net("paddle"), make_net("torch")
    assert assign_weight(paddle_model, torch_model)
    result = auto_diff(paddle_model, torch_model, (net_input("paddle"), net_input("torch")), auto_weights=False,
                       loss_fn=[lambda out: out.sum() * 2, lambda out: out.sum()], verbose=False)
    assert not result and result.first.stage == "loss" and result.first.cause_kind is Cause.LOSS_FUNCTION
    assert "Diff found in Loss in step 0" in result.report


def test_results_show_themselves_through_the_report_package():
    result = _momentum_off()
    assert repr(result.first).startswith("Finding(FAILED, stage='weight', step=1, what='weight of weight', "
                                         "ref='TorchNet.linear1.weight' (Linear), test='PaddleNet.linear1.weight' "
                                         "(Linear), max abs ")
    assert str(result.first).startswith("Weights After Optimizer Step, step 1, compared weight of weight:\n"
                                        "  reference: TorchNet.linear1.weight (Linear)")
    assert str(result).startswith("NOT ALIGNED: torch (reference) vs paddle\nWeights After Optimizer Step, step 1")


def _imports(path):
    """(module named, names) of every import in a file, at any depth (function-local too)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or ""), [a.name for a in node.names], node
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node


def test_the_pipeline_imports_no_framework_and_no_private_name():
    folder = os.path.join(PADIFF, "run")
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".py")]
    assert len(files) >= 8
    for path in files:
        top_level = set(map(id, ast.parse(open(path, encoding="utf-8").read()).body))
        for module, names, node in _imports(path):
            where = f"{os.path.basename(path)}:{node.lineno}"
            assert module.split(".")[0] not in ("torch", "paddle"), where
            assert not [n for n in names if n.startswith("_")], where
        # every import at module level: a cycle cannot hide in a function
        tree = ast.parse(open(path, encoding="utf-8").read())
        local = [n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not local, (path, local)
        assert top_level


def test_result_objects_import_no_renderer():
    modules = [m for m, _, _ in _imports(os.path.join(PADIFF, "compare", "result.py"))]
    assert modules and not [m for m in modules if "report" in m]
