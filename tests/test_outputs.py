"""Outputs of any shape: tuples with None, dicts, dataclasses, dict-like model outputs and cache
objects, paired by field name or position; what only one side returns is a note, not a
difference (issue 15, item 6; issue 19, optional outputs)."""

import collections
import dataclasses
import json
import typing

import numpy as np
import paddle
import pytest
import torch

import padiff
from padiff import auto_diff
from padiff.compare.metrics import Tolerance, compare_records
from padiff.record.trace import TensorRecord
from padiff.structure import NAME, POS, flatten, pair_flat, split_id


# --- models: one Linear, whose output ``pack`` arranges as each test wants ---------------------------

class TorchTwin(torch.nn.Module):
    def __init__(self, pack):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.pack = pack

    def forward(self, x):
        return self.pack(self.proj(x), torch)


class PaddleTwin(paddle.nn.Layer):
    def __init__(self, pack):
        super().__init__()
        self.proj = paddle.nn.Linear(8, 8)
        self.pack = pack

    def forward(self, x):
        return self.pack(self.proj(x), paddle)


def _x():
    x = np.random.default_rng(0).standard_normal((2, 8)).astype("float32")
    return paddle.to_tensor(x), torch.tensor(x)


def run(torch_pack, paddle_pack, capsys=None, **kw):
    """auto_diff(paddle, torch): torch is the reference (the weights are copied from it)."""
    torch.manual_seed(0)
    kw.setdefault("diff_phase", "forward")
    kw.setdefault("api_check", False)  # the layers' outputs are under test, not the framework calls in them
    result = auto_diff(PaddleTwin(paddle_pack), TorchTwin(torch_pack), _x(), **kw)
    text = capsys.readouterr().out if capsys is not None else result.report
    return result, text


def notes(result):
    return [n for s in result.steps for n in s.notes]


# --- None and one-sided outputs -------------------------------------------------------------------

def test_tensor_against_none_is_a_note_not_a_failure(capsys):
    result, text = run(lambda y, fw: (y, y * 2), lambda y, fw: (y, None), capsys)
    assert result, text[-2000:]
    expected = ("Not compared: output[1] of `TorchTwin` / `PaddleTwin` (TorchTwin / PaddleTwin): a float32 tensor "
                "[2, 8] in the torch model, None in the paddle model. Only what both models return is compared.")
    assert notes(result) == [expected]
    assert f"[AutoDiff] NOTE: {expected}" in text
    assert "nested differently" not in text
    root = [f for f in result.steps[0].forward if f.ref_node is result.steps[0].ref_trace.root]
    assert [f.what for f in root] == ["output[0]"]


def test_tensor_only_one_side_returns_is_a_note():
    result, _ = run(lambda y, fw: {"y": y, "attn": y * 3}, lambda y, fw: {"y": y})
    assert result
    assert notes(result) == [
        'Not compared: output["attn"] of `TorchTwin` / `PaddleTwin` (TorchTwin / PaddleTwin): a float32 tensor '
        "[2, 8] in the torch model, nothing in the paddle model. Only what both models return is compared."]


def test_none_on_both_sides_or_none_against_nothing_is_silent():
    result, _ = run(lambda y, fw: (y, None, None), lambda y, fw: (y, None))
    assert result
    assert notes(result) == []


def test_the_tested_model_returning_more_is_a_note_too():
    result, _ = run(lambda y, fw: y, lambda y, fw: (y, y.sum()))
    assert result
    assert notes(result) == [
        "Not compared: output[1] of `TorchTwin` / `PaddleTwin` (TorchTwin / PaddleTwin): nothing in the torch "
        "model, a float32 tensor [] in the paddle model. Only what both models return is compared."]


# --- names and positions ----------------------------------------------------------------------------

def test_dict_outputs_pair_by_key_whatever_their_order():
    result, _ = run(lambda y, fw: {"a": y, "b": y + 1}, lambda y, fw: {"b": y + 1, "a": y})
    assert result
    assert notes(result) == []
    root = [f for f in result.steps[0].forward if f.ref_node is result.steps[0].ref_trace.root]
    assert [f.what for f in root] == ['output["a"]', 'output["b"]']


def test_a_difference_in_one_named_output_is_named():
    result, text = run(lambda y, fw: {"a": y, "b": y + 1}, lambda y, fw: {"b": y + 1.5, "a": y})
    assert not result
    assert result.first.what == 'output["b"]'
    assert result.first.ref_path == "TorchTwin"
    assert "Compared: output[\"b\"]" in text


@dataclasses.dataclass
class Out:
    logits: typing.Any = None
    hidden: typing.Any = None
    aux: typing.Any = None


class DictOutput(collections.OrderedDict):
    """Shaped like a Hugging Face ``ModelOutput``: a dict whose keys are its non-None fields."""

    def __init__(self, **fields):
        super().__init__((k, v) for k, v in fields.items() if v is not None)


def test_dataclass_against_a_model_output_like_dict_pairs_by_field_name():
    result, _ = run(lambda y, fw: Out(logits=y, aux=y * 2), lambda y, fw: DictOutput(aux=y * 2, logits=y))
    assert result
    assert notes(result) == []  # the dataclass's None `hidden` has no counterpart and holds nothing
    root = [f for f in result.steps[0].forward if f.ref_node is result.steps[0].ref_trace.root]
    assert [f.what for f in root] == ['output.logits / output["logits"]', 'output.aux / output["aux"]']

    result, _ = run(lambda y, fw: Out(logits=y, aux=y * 2), lambda y, fw: DictOutput(aux=y * 2.5, logits=y))
    assert not result
    assert result.first.what == 'output.aux / output["aux"]'


def test_named_output_against_a_tuple_pairs_fields_in_order_without_none():
    result, _ = run(lambda y, fw: Out(logits=y, aux=y * 2), lambda y, fw: (y, y * 2))
    assert result
    assert notes(result) == []
    root = [f for f in result.steps[0].forward if f.ref_node is result.steps[0].ref_trace.root]
    assert [f.what for f in root] == ["output.logits / output[0]", "output.aux / output[1]"]

    result, _ = run(lambda y, fw: DictOutput(logits=y, aux=y * 2), lambda y, fw: (y, y * 3))
    assert not result
    assert result.first.what == 'output["aux"] / output[1]'


def test_namedtuple_fields_pair_by_name_and_by_position_against_a_tuple():
    Pair = collections.namedtuple("Pair", "y extra")
    result, _ = run(lambda y, fw: Pair(y, None), lambda y, fw: {"extra": None, "y": y})
    assert result and notes(result) == []
    result, _ = run(lambda y, fw: Pair(y, y * 2), lambda y, fw: (y, None))
    assert result
    assert notes(result)[0].startswith("Not compared: output.extra / output[1] of `TorchTwin`")


def test_a_shape_difference_in_a_paired_output_still_fails():
    result, _ = run(lambda y, fw: {"y": y, "head": y[:, :4]}, lambda y, fw: {"head": y[:, :3], "y": y})
    assert not result
    assert result.first.what == 'output["head"]'
    assert result.first.diff.problem == "shape"
    assert result.first.diff.message() == "Shapes differ: [2, 3] (tested) vs [2, 4] (reference)."
    assert "Shapes differ: [2, 3] (paddle) vs [2, 4] (torch)." in result.report


def _expand(y, fw):
    cos = fw.cos(y).reshape([1, 2, 8])
    return y, (cos.expand([3, 2, 8]) if fw is torch else cos)


def test_shapes_differing_only_in_size_one_dimensions_are_compared_by_broadcasting():
    # A rotary embedding's cos: [batch, seq, dim] in HF, [1, seq, dim] in paddleformers.
    result, _ = run(_expand, _expand)
    assert result
    d = [f for f in result.steps[0].forward if f.what == "output[1]" and f.ref_node.kind == "net"][0].diff
    assert d.passed and d.broadcast == (3, 2, 8) and (d.shape_a, d.shape_b) == ((1, 2, 8), (3, 2, 8))
    assert ("Shapes [1, 2, 8] vs [3, 2, 8] differ only where one model has a dimension of size 1: compared "
            "after broadcasting both to [3, 2, 8].") in d.message()

    def wrong(y, fw):
        return y, fw.sin(y).reshape([1, 2, 8])

    result, _ = run(_expand, wrong)
    assert not result
    assert result.first.what == "output[1]" and result.first.diff.problem is None
    assert "compared after broadcasting both to [3, 2, 8]" in result.first.diff.message()


# --- objects -----------------------------------------------------------------------------------------

class Cache:
    """A cache object that holds tensors; its == must never be called."""

    def __init__(self, *tensors):
        self.layers = list(tensors)

    def __eq__(self, other):
        raise AssertionError("padiff called == on a cache object")

    __hash__ = object.__hash__


def test_cache_objects_are_skipped_with_a_note_and_never_compared_with_eq(capsys):
    result, text = run(lambda y, fw: (y, Cache(y, y * 2)), lambda y, fw: (y, Cache(y, y * 2)), capsys)
    assert result, text[-2000:]
    assert notes(result) == [
        "Not compared: output[1] of `TorchTwin` / `PaddleTwin` (TorchTwin / PaddleTwin): a Cache object in the "
        "torch model, a Cache object in the paddle model. Objects are not compared (nor with ==): only the "
        "tensors both models return are."]
    assert "Values differ" not in text
    # the record keeps the object's type, never the object itself
    rec = dict(result.steps[0].ref_trace.root.outputs)["[1]"]
    assert (rec.kind, rec.dtype, rec.value, rec.array) == ("object", "Cache", None, None)


def test_cache_object_against_a_tuple_of_tensors_is_one_note():
    result, _ = run(lambda y, fw: DictOutput(last=y, past=Cache(y)), lambda y, fw: DictOutput(last=y, past=((y, y),)))
    assert result
    assert notes(result) == [
        'Not compared: output["past"] of `TorchTwin` / `PaddleTwin` (TorchTwin / PaddleTwin): a Cache object in '
        "the torch model, 2 tensors in the paddle model. Objects are not compared (nor with ==): only the tensors "
        "both models return are."]


def test_records_of_objects_never_call_eq():
    a, b = TensorRecord.plain(Cache()), TensorRecord.plain(Cache())
    assert a.is_object and a.value is None
    d = compare_records(a, b, Tolerance(0.0, 0.0, False), "strict")
    assert not d.passed and d.problem == "type"
    assert d.message() == "Not comparable: a Cache object vs a Cache object."
    assert compare_records(TensorRecord.plain("x"), TensorRecord.plain("x"), None, "strict").passed
    assert not compare_records(TensorRecord.plain("x"), TensorRecord.plain(None), None, "strict").passed


# --- layers' outputs and their gradients ------------------------------------------------------------------

class TorchAttn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(8, 8)
        self.v = torch.nn.Linear(8, 8)

    def forward(self, x):
        w = torch.softmax(self.q(x) @ x.transpose(-1, -2), -1)
        return w @ self.v(x), w  # HF eager attention returns its weights


class PaddleAttn(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.q = paddle.nn.Linear(8, 8)
        self.v = paddle.nn.Linear(8, 8)

    def forward(self, x):
        w = paddle.nn.functional.softmax(self.q(x) @ x.transpose([0, 2, 1]), -1)
        return w @ self.v(x), None  # the port does not


class TorchStack(torch.nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.layers = torch.nn.ModuleList([TorchAttn() for _ in range(n)])

    def forward(self, x):
        for layer in self.layers:
            x, _ = layer(x)
        return {"y": x}


class PaddleStack(paddle.nn.Layer):
    def __init__(self, n=3):
        super().__init__()
        self.layers = paddle.nn.LayerList([PaddleAttn() for _ in range(n)])

    def forward(self, x):
        for layer in self.layers:
            x, _ = layer(x)
        return {"y": x}


def test_layer_outputs_one_sided_is_one_note_per_run_and_backward_agrees(capsys):
    torch.manual_seed(0)
    tm, pm = TorchStack(), PaddleStack()
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype("float32")
    result = auto_diff(pm, tm, (paddle.to_tensor(x), torch.tensor(x)), steps=2,
                       loss_fn=[lambda o: o["y"].mean(), lambda o: o["y"].mean()],
                       optimizer=[paddle.optimizer.SGD(0.1, parameters=pm.parameters()),
                                  torch.optim.SGD(tm.parameters(), lr=0.1)])
    text = capsys.readouterr().out
    assert result, text[-3000:]
    expected = ("Not compared: output[1] of TorchAttn / PaddleAttn (3 calls, first `TorchStack.layers.0` / "
                "`PaddleStack.layers.0`): a float32 tensor [2, 3, 3] in the torch model, None in the paddle model. "
                "Only what both models return is compared.")
    assert [n for n in result.steps[0].notes if n.startswith("Not compared")] == [expected]
    assert len(result.steps) == 2
    assert text.count(expected) == 1  # once per run, not per call nor per step
    # the attention weights get a gradient in torch only; the output gradients still pair by output
    back = [f for f in result.steps[0].backward if f.ref_path == "TorchStack.layers.0" and "output" in f.what]
    assert [f.what for f in back] == ["output gradient[0]"]


# --- dumps -----------------------------------------------------------------------------------------------

def test_dumps_keep_objects_as_their_type_and_compare_like_auto_diff(tmp_path):
    torch.manual_seed(0)
    tm = TorchTwin(lambda y, fw: DictOutput(last=y, past=Cache(y)))
    pm = PaddleTwin(lambda y, fw: DictOutput(last=y))
    assert padiff.assign_weight(pm, tm)
    px, tx = _x()
    padiff.dump(tm, tx, str(tmp_path / "t"), diff_phase="forward")
    padiff.dump(pm, px, str(tmp_path / "p"), diff_phase="forward")
    with open(tmp_path / "t" / "manifest.json") as fh:
        root = json.load(fh)["steps"][0]["nodes"][0]
    assert dict(root["outputs"])['["past"]'] == {"kind": "object", "dtype": "Cache"}
    result = padiff.compare_dumps(str(tmp_path / "p"), str(tmp_path / "t"))
    assert result, result.report[-2000:]
    assert [n for n in notes(result) if n.startswith("Not compared")] == [
        'Not compared: output["past"] of `TorchTwin` / `PaddleTwin` (TorchTwin / PaddleTwin): a Cache object in '
        "the torch model, nothing in the paddle model. Objects are not compared (nor with ==): only the tensors "
        "both models return are."]


def test_an_older_dumps_object_entry_reads_as_an_object():
    from padiff.dump.reader import Dump

    rec = Dump.record(None, {"kind": "value", "dtype": "Cache", "value": {"repr": "<Cache at 0x1>", "type": "Cache"}})
    assert (rec.kind, rec.dtype, rec.value) == ("object", "Cache", None)
    rec = Dump.record(None, {"kind": "object", "dtype": "Cache"})
    assert (rec.kind, rec.dtype) == ("object", "Cache")


# --- the pairing rule itself (framework-free) -----------------------------------------------------------

def _leaf(v):
    return v is None or isinstance(v, (int, float, str))


def _pair(a, b):
    flat_a, flat_b = flatten(a, _leaf), flatten(b, _leaf)
    pairs, gaps = pair_flat(flat_a, flat_b, lambda v: v is None,
                            lambda x, y: all(isinstance(v, (int, float)) for v in (x, y)))
    return [(ia, ib) for (ia, _), (ib, _) in pairs], [(g.ref_id, g.test_id) for g in gaps]


def test_split_id_reads_back_what_flatten_writes():
    Point = collections.namedtuple("Point", "x y")
    flat = flatten({"a\"b": [Point(1, 2)], 3: Out(logits=4)}, _leaf)
    assert [i for i, _ in flat] == ['["a\\"b"][0].x', '["a\\"b"][0].y', "[3].logits", "[3].hidden", "[3].aux"]
    assert split_id('["a\\"b"][0].x') == [(NAME, 'a"b'), (POS, 0), (NAME, "x")]
    assert split_id("[(1, 2)][-1]") == [(NAME, "(1, 2)"), (POS, -1)]
    assert split_id("") == []


def test_pairing_rules():
    # a leaf against a sequence stands for a 1-tuple: torch MultiheadAttention's (out, None) against out
    assert _pair((1.0, None), 1.0) == ([("[0]", "")], [])
    # two named containers that share no name pair by position
    assert _pair({"a": 1, "b": 2}, {"x": 1, "y": 2}) == ([('["a"]', '["x"]'), ('["b"]', '["y"]')], [])
    # a named container against a sequence of the same length keeps its None fields in place
    Pair = collections.namedtuple("Pair", "a b c")
    assert _pair(Pair(1, None, 3), (1, None, 3)) == ([(".a", "[0]"), (".c", "[2]")], [])
    # ... and drops them when that makes the counts agree (a ModelOutput's to_tuple())
    assert _pair(Out(logits=1, aux=3), (1, 3)) == ([(".logits", "[0]"), (".aux", "[1]")], [])
    # what only one side holds, and a value against None, are gaps (notes)
    assert _pair({"a": 1, "b": 2}, {"a": 1, "b": None}) == ([('["a"]', '["a"]')], [('["b"]', '["b"]')])
    assert _pair((1, (2, 3)), (1,)) == ([("[0]", "[0]")], [("[1]", None)])
    # an object against a container of values is one gap
    assert _pair({"p": [[1, 2]]}, {"p": object()}) == ([], [('["p"]', '["p"]')])


def test_flatten_stops_at_a_container_that_holds_itself():
    @dataclasses.dataclass
    class Node:
        value: float
        parent: typing.Any = None
        child: typing.Any = None

    root = Node(1.0)
    root.child = Node(2.0, parent=root)
    flat = flatten(root, _leaf)
    assert [i for i, _ in flat] == [".value", ".parent", ".child.value", ".child.parent", ".child.child"]
    assert flat[3][1] is root  # the cycle is cut: the repeated container is a leaf (an object)
