"""padiff/weights/ as a framework-free layer: conversion rules come from the adapters' declared
tables (class kinds, tensor names, Linear layouts), no weights module names a framework in its
code, and none imports a report module (plans carry what the renderers need)."""

from __future__ import annotations

import ast
import os
import types

import numpy as np
import pytest

from padiff.dump.reader import DumpAdapter
from padiff.frameworks import get_adapter
from padiff.frameworks.base import WeightTables
from padiff.weights.rules import counterpart_class, find_rule

WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "padiff", "weights")
# Framework names in weights/ code: tests/test_layering.py's scan covers the whole package.


def _modules():
    return sorted(f for f in os.listdir(WEIGHTS) if f.endswith(".py"))


@pytest.mark.parametrize("module", _modules())
def test_weights_module_imports_no_report_module(module):
    with open(os.path.join(WEIGHTS, module), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    froms = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in froms if m.split(".")[0] in ("report", "auto_diff", "porting") or ".report" in m]


def test_counterpart_classes_come_from_the_adapters_tables():
    pt, pd = get_adapter("torch"), get_adapter("paddle")
    assert counterpart_class("BatchNorm", pd, pt) == "BatchNorm2d"
    assert counterpart_class("SimpleRNN", pd, pt) == "RNN"
    assert counterpart_class("MultiHeadAttention", pd, pt) == "MultiheadAttention"
    assert counterpart_class("MyBlock", pd, pt) == "MyBlock"


def test_shipped_batchnorm_rule_renames_by_the_adapters_tensor_names():
    pt, pd = get_adapter("torch"), get_adapter("paddle")
    rule = find_rule("BatchNorm2d", "BatchNorm2D", pt, pd)
    src = [("weight", np.ones(3, "float32")), ("bias", np.zeros(3, "float32")),
           ("running_mean", np.full(3, 2.0, "float32")), ("running_var", np.full(3, 4.0, "float32"))]
    dst = [("weight", (3,)), ("bias", (3,)), ("_mean", (3,)), ("_variance", (3,))]
    out = rule.convert(src, dst, src_kind="torch::BatchNorm2d", dst_kind="paddle::BatchNorm2D")
    assert [(c.dst_name, c.src_name, c.note) for c in out] == [
        ("weight", "weight", ""), ("bias", "bias", ""), ("_mean", "running_mean", "renamed"),
        ("_variance", "running_var", "renamed")]
    assert find_rule("BatchNorm2d", "BatchNorm2D", pt, pt) is None  # shipped rules are across frameworks only


def test_a_new_framework_gets_the_shipped_rules_from_its_tables_alone():
    """A toy framework that stores Linear weights as torch does, and names BatchNorm statistics its own way:
    the Linear rule copies without transposing, the BatchNorm rule renames into its names."""
    pt = get_adapter("torch")
    toy = types.SimpleNamespace(name="toy", weight_tables=WeightTables(
        layer_kinds={"Dense": "linear", "Norm": "batchnorm2d"},
        tensor_names={"batchnorm.mean": "avg", "batchnorm.variance": "var"},
        linear_weight_layout="out_in", skipped_buffers=()))
    w = np.arange(6, dtype="float32").reshape(2, 3)
    (dense,) = find_rule("Linear", "Dense", pt, toy).convert([("weight", w)], [("weight", (2, 3))],
                                                             src_kind="torch::Linear", dst_kind="toy::Dense")
    assert dense.note == "" and np.array_equal(dense.array, w)
    norm = find_rule("BatchNorm1d", "Norm", pt, toy).convert(
        [("running_mean", np.zeros(2)), ("running_var", np.ones(2))], [("avg", (2,)), ("var", (2,))],
        src_kind="torch::BatchNorm1d", dst_kind="toy::Norm")
    assert [(c.src_name, c.dst_name) for c in norm] == [("running_mean", "avg"), ("running_var", "var")]
    assert find_rule("Linear", "Dense", pt, get_adapter("paddle")) is None  # Dense is no paddle class


def test_an_offline_dump_reads_its_frameworks_tables_without_the_framework():
    """The dump reader's adapter has the live adapter's weight tables, so dumps pair and convert alike."""
    for name in ("torch", "paddle"):
        dump = types.SimpleNamespace(framework=name, manifest={})
        assert DumpAdapter(dump).weight_tables is get_adapter(name).weight_tables
    assert get_adapter("torch").weight_tables.skipped_buffers == ("num_batches_tracked",)
