"""Fuzzing auto_diff with bad input: random nestings of dicts, lists and tuples whose two sides
differ in structure, dtype or shape, NaN/Inf, non-tensor leaves, tensors of the wrong framework,
models that raise in forward or backward, wrong layer maps, bad loss functions and options.

Whatever it is given, padiff returns an AlignResult or raises PadiffError, never anything else,
and leaves the models as they were: no hook, no patched function, no changed weight, no
gradient. Seeded: the same cases every run (``CASES`` of them, in well under a minute).
"""

from __future__ import annotations

import random
import sys
import traceback
import types

import numpy as np
import paddle
import pytest
import torch

from padiff import AlignResult, LayerMap, PadiffError, auto_diff
from padiff.frameworks import get_adapter
from padiff.record.api import api_targets
from support import hook_count

SEED = 19
CASES = 300
W, W2 = 4, 3  # widths of the twin models' Linears


# --- twin models whose behaviour the case picks -----------------------------------------------------

class TorchRaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("deliberately broken backward")


class PaddleRaiseInBackward(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("deliberately broken backward")


def _torch_leaves(value, out):
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _torch_leaves(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _torch_leaves(v, out)
    return out


def _paddle_leaves(value, out):
    if isinstance(value, paddle.Tensor):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _paddle_leaves(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _paddle_leaves(v, out)
    return out


def _shaped(kind, h, h2, extra):
    """The model's output in the structure the case asked for."""
    if kind == "none":
        return None
    if kind == "number":
        return 3.0
    if kind == "tensor":
        return h
    if kind == "tuple":
        return (h, h2)
    if kind == "dict":
        return {"y": h, "aux": h2 if extra else None}
    if kind == "list":
        return [h, 3, "text"]
    if kind == "optional":
        return (h, h2 if extra else None)
    return {"y": h, "nested": [h2, {"z": h * 2}]}


class TorchTwin(torch.nn.Module):
    def __init__(self, width, mode, out_kind, extra):
        super().__init__()
        self.lin = torch.nn.Linear(W, width)
        self.lin2 = torch.nn.Linear(width, W2)
        self.norm = torch.nn.LayerNorm(W2)
        self.act = torch.nn.ReLU()
        self.mode, self.out_kind, self.extra = mode, out_kind, extra

    def forward(self, *args, **kwargs):
        if self.mode == "raise_forward":
            raise ValueError("deliberately broken forward")
        leaves = [t for t in _torch_leaves((args, kwargs), []) if t.is_floating_point() or t.dtype == torch.int64]
        s = sum((t.to(torch.float32).mean() for t in leaves), torch.tensor(0.5))
        h = self.act(self.lin(torch.ones(2, W) * s))
        if self.mode == "log_negative":
            h = torch.log(h - 10.0)
        if self.mode == "raise_backward":
            h = TorchRaiseInBackward.apply(h)
        h2 = self.norm(self.lin2(h))
        if self.mode == "detach":
            h2 = h2.detach()
        elif self.mode == "integer":
            h2 = (h2 * 10).to(torch.int64)
        elif self.mode == "inplace" and leaves:
            leaves[0].add_(1.0)
        return _shaped(self.out_kind, h2, h2 * 3, self.extra)


class PaddleTwin(paddle.nn.Layer):
    def __init__(self, width, mode, out_kind, extra):
        super().__init__()
        self.lin = paddle.nn.Linear(W, width)
        self.lin2 = paddle.nn.Linear(width, W2)
        self.norm = paddle.nn.LayerNorm(W2)
        self.act = paddle.nn.ReLU()
        self.mode, self.out_kind, self.extra = mode, out_kind, extra

    def forward(self, *args, **kwargs):
        if self.mode == "raise_forward":
            raise ValueError("deliberately broken forward")
        leaves = [t for t in _paddle_leaves((args, kwargs), []) if t.dtype in (paddle.float32, paddle.float64,
                                                                                 paddle.int64)]
        s = paddle.to_tensor(0.5)
        for t in leaves:
            s = s + t.astype("float32").mean()
        h = self.act(self.lin(paddle.ones([2, W]) * s))
        if self.mode == "log_negative":
            h = paddle.log(h - 10.0)
        if self.mode == "raise_backward":
            h = PaddleRaiseInBackward.apply(h)
        h2 = self.norm(self.lin2(h))
        if self.mode == "detach":
            h2 = h2.detach()
        elif self.mode == "integer":
            h2 = (h2 * 10).astype("int64")
        elif self.mode == "inplace" and leaves:
            leaves[0].add_(paddle.to_tensor(1.0, dtype=leaves[0].dtype))
        return _shaped(self.out_kind, h2, h2 * 3, self.extra)


def _set_weights(model, fw):
    """Every Linear of one shape holds the same values, in both frameworks (paddle's transposed):
    whatever pairs padiff copies between, a correct copy changes nothing, so any weight that
    changes is one padiff should not have touched."""
    rng = np.random.default_rng(0)
    values = {}
    for lin in (model.lin, model.lin2):
        w = lin.weight
        shape = tuple(w.shape) if fw == "torch" else tuple(w.shape)[::-1]  # torch layout [out, in]
        if shape not in values:
            values[shape] = (rng.standard_normal(shape).astype("float32") * 0.5,
                             rng.standard_normal(shape[0]).astype("float32") * 0.1)
        a, b = values[shape]
        if fw == "torch":
            with torch.no_grad():
                lin.weight.copy_(torch.tensor(a))
                lin.bias.copy_(torch.tensor(b))
        else:
            lin.weight.set_value(a.T.copy())
            lin.bias.set_value(b)


# --- inputs -----------------------------------------------------------------------------------

class Leaf:
    """A tensor leaf of an input structure, made in a framework only when materialized."""

    def __init__(self, array, foreign=False):
        self.array, self.foreign = array, foreign


def _tree(rng: random.Random, depth: int):
    """An input structure: containers with numpy arrays and plain values at the leaves."""
    kinds = ["array", "array", "array", "int", "str", "none", "ndarray"]
    if depth < 3:
        kinds += ["list", "tuple", "dict", "dict"]
    kind = rng.choice(kinds)
    if kind == "array":
        shape = tuple(rng.randint(0 if rng.random() < 0.1 else 1, 3) for _ in range(rng.randint(0, 3)))
        dtype = rng.choice(["float32"] * 6 + ["float16", "float64", "int64", "bool"])
        return Leaf(np.random.default_rng(rng.randint(0, 1 << 30)).standard_normal(shape).astype(dtype))
    if kind == "int":
        return rng.randint(-3, 3)
    if kind == "str":
        return rng.choice(["relu", "", "x"])
    if kind == "none":
        return None
    if kind == "ndarray":
        return np.arange(3)
    n = rng.randint(0, 3)
    items = [_tree(rng, depth + 1) for _ in range(n)]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    return {f"k{i}": v for i, v in enumerate(items)}


def _mutate(rng: random.Random, tree):
    """The other side's input: the same, or with one mistake somewhere."""
    what = rng.choice(["same", "same", "shape", "dtype", "int", "nan", "inf", "container", "key", "drop", "leaf",
                       "foreign"])
    return _apply(rng, tree, what)


def _apply(rng, tree, what):
    if isinstance(tree, Leaf):
        arr = tree.array
        if what == "shape":
            return Leaf(np.zeros(arr.shape + (2,), dtype=arr.dtype))
        if what == "dtype":
            return Leaf(arr.astype("float64"))
        if what == "int":
            return Leaf(arr.astype("int64"))
        if what in ("nan", "inf") and arr.size and arr.dtype.kind == "f":
            arr = arr.copy()
            arr.reshape(-1)[0] = np.nan if what == "nan" else np.inf
            return Leaf(arr)
        if what == "leaf":
            return rng.choice([1.5, "text", None, arr])
        if what == "foreign":
            return Leaf(arr, foreign=True)
        return tree
    if isinstance(tree, dict):
        if what == "key" and tree:
            k = rng.choice(list(tree))
            return {("other_" + k if kk == k else kk): v for kk, v in tree.items()}
        if what == "drop" and tree:
            k = rng.choice(list(tree))
            return {kk: v for kk, v in tree.items() if kk != k}
        if what == "container":
            return list(tree.values())
        return {k: _apply(rng, v, what) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        if what == "container":
            return tuple(tree) if isinstance(tree, list) else list(tree)
        if what == "drop" and tree:
            return type(tree)(tree[:-1])
        return type(tree)(_apply(rng, v, what) for v in tree)
    return tree


def _materialize(tree, fw):
    other = "paddle" if fw == "torch" else "torch"
    if isinstance(tree, Leaf):
        use = other if tree.foreign else fw
        return torch.tensor(tree.array) if use == "torch" else paddle.to_tensor(tree.array)
    if isinstance(tree, dict):
        return {k: _materialize(v, fw) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_materialize(v, fw) for v in tree)
    return tree


def _top(rng, tree):
    """How the model is called: a dict (keywords), a list/tuple (positional), or one value."""
    how = rng.choice(["dict", "tuple", "list", "single"])
    if how == "dict":
        return {"x": tree} if rng.random() < 0.5 else {"x": tree, "extra": _tree(rng, 2)}
    if how == "tuple":
        return (tree,)
    if how == "list":
        return [tree, _tree(rng, 2)]
    return tree


# --- everything padiff must leave as it was ---------------------------------------------------------

def _state(model):
    if isinstance(model, torch.nn.Module):
        return {n: t.detach().numpy().copy() for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    return {n: t.numpy().copy() for n, t in list(model.named_parameters()) + list(model.named_buffers())}


def _grads(model):
    if isinstance(model, torch.nn.Module):
        return [n for n, p in model.named_parameters() if p.grad is not None]
    return [n for n, p in model.named_parameters() if p.grad is not None]


def _originals():
    """Every attribute padiff's API tracing wraps, as found before any run."""
    return {(id(owner), attr): (owner, attr, getattr(owner, attr))
            for fw in ("torch", "paddle") for owner, attr, _ in api_targets(get_adapter(fw))}


def _left_wrapped(originals):
    return [f"{getattr(owner, '__name__', owner)}.{attr}" for owner, attr, fn in originals.values()
            if getattr(owner, attr) is not fn]


def _wrapped_anywhere():
    """A padiff wrapper bound anywhere in any loaded module (aliases such as
    `from torch.nn.functional import gelu` included)."""
    found = []
    for name, module in list(sys.modules.items()):
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for attr, value in items:
            # padiff's wrappers are plain functions carrying the original (no getattr on other
            # objects: some compute attributes, such as torch.backends.cuda's)
            if isinstance(value, types.FunctionType) and "__padiff_wrapped__" in value.__dict__:
                found.append(f"{name}.{attr}")
    return found


# --- one case ----------------------------------------------------------------------------------

def _case(rng: random.Random):
    pair = rng.choice([("paddle", "torch"), ("torch", "paddle"), ("torch", "torch"), ("paddle", "paddle")])
    modes = ["ok"] * 6 + ["raise_forward", "raise_backward", "log_negative", "detach", "integer", "inplace"]
    out_kinds = ["tensor"] * 3 + ["tuple", "dict", "list", "optional", "nested", "none", "number"]
    same_out = rng.random() < 0.6
    kind0 = rng.choice(out_kinds)
    models = []
    for i, fw in enumerate(pair):
        width = W if rng.random() < 0.85 else W + 1
        mode = rng.choice(modes) if rng.random() < 0.35 else "ok"
        kind = kind0 if same_out or i == 0 else rng.choice(out_kinds)
        cls = TorchTwin if fw == "torch" else PaddleTwin
        m = cls(width, mode, kind, extra=rng.random() < 0.7)
        _set_weights(m, fw)
        m.eval()
        models.append(m)
    if rng.random() < 0.03:
        models[1] = models[0]  # one model twice
    tree = _tree(rng, 0)
    top = _top(rng, tree)
    other = _mutate(rng, top)
    inputs = [_materialize(top, pair[0]), _materialize(other, pair[1])]
    if rng.random() < 0.05:
        inputs = inputs[0]  # not a pair
    elif rng.random() < 0.05:
        inputs = inputs[::-1]  # swapped

    kwargs = {"auto_weights": rng.random() < 0.7, "verbose": rng.random() < 0.2}
    lm = rng.random()
    a, b = models
    if lm < 0.08:
        kwargs["layer_map"] = {a.lin: b.lin2}  # wrong pair (shapes may differ)
    elif lm < 0.12:
        kwargs["layer_map"] = {a.lin: a.lin2}  # both from one model
    elif lm < 0.15:
        kwargs["layer_map"] = {"lin": b.lin}  # not a layer
    elif lm < 0.17:
        kwargs["layer_map"] = [a.lin, b.lin]  # not a map
    elif lm < 0.22:
        m = LayerMap()
        m.map = {a.act: b.lin}  # a weightless layer against a Linear
        kwargs["layer_map"] = m
    elif lm < 0.26:
        m = LayerMap()
        m.ignore(b.lin2)
        kwargs["layer_map"] = m
    extra = rng.random()
    if extra < 0.05:
        kwargs["optimizer"] = [object(), object()]  # not optimizers
    elif extra < 0.08:
        kwargs["optimizer"] = [lambda: None, lambda: None]  # no-argument functions that change nothing
        kwargs["steps"] = 2
    elif extra < 0.1:
        kwargs["scheduler"] = [3, 4]
    loss = rng.random()
    if loss < 0.1:
        kwargs["loss_fn"] = [lambda o: 1.0, lambda o: 1.0]  # not tensors
    elif loss < 0.15:
        kwargs["loss_fn"] = lambda o: o  # not a pair
    elif loss < 0.2:
        def broken(o):
            raise KeyError("no such output")
        kwargs["loss_fn"] = [broken, broken]
    opts = {}
    for key, values in (("diff_phase", ["forward", "backward", "both"]), ("single_step", [True, False]),
                        ("api_check", [True, False]), ("compare_mode", ["strict", "mean", "abs_mean"])):
        if rng.random() < 0.3:
            opts[key] = rng.choice(values)
    bad = rng.random()
    if bad < 0.04:
        opts["atol"] = "1e-4"
    elif bad < 0.06:
        opts["tree_inline_lines"] = "lots"
    elif bad < 0.08:
        opts["atoll"] = 1e-4
    elif bad < 0.10:
        opts["thirdparty_api"] = 3
    elif bad < 0.12:
        opts["steps"] = 0
    kwargs["options"] = opts
    return models, inputs, kwargs


def test_bad_input_gives_a_result_or_a_padiff_error_and_leaves_nothing_behind(capsys):
    rng = random.Random(SEED)
    originals = _originals()
    outcomes = {"aligned": 0, "not aligned": 0, "PadiffError": 0}
    problems = []
    for i in range(CASES):
        models, inputs, kwargs = _case(rng)
        before = [_state(m) for m in models]
        what = f"case {i}: {[type(m).__name__ + '/' + m.mode + '/' + m.out_kind for m in models]} {kwargs}"
        try:
            result = auto_diff(models[0], models[1], inputs, **kwargs)
        except PadiffError as e:
            outcomes["PadiffError"] += 1
            assert str(e).strip(), what
        except BaseException:
            problems.append(f"{what}\n{traceback.format_exc()}")
        else:
            if not isinstance(result, AlignResult):
                problems.append(f"{what}: returned a {type(result).__name__}")
            else:
                outcomes["aligned" if result else "not aligned"] += 1
                # the renderers of the result work on whatever came out
                assert len(str(result)) < 4000 and repr(result)
                if result.first is not None:
                    assert len(str(result.first)) < 4000 and repr(result.first)
                if i % 10 == 0:
                    assert "<" in result._repr_html_()
        for m, old in zip(models, before):
            if hook_count(m):
                problems.append(f"{what}: {hook_count(m)} hook(s) left on {type(m).__name__}")
            new = _state(m)
            changed = [n for n in old if not np.array_equal(old[n], new[n], equal_nan=True)]
            if changed:
                problems.append(f"{what}: weights changed in {type(m).__name__}: {changed}")
            trained = callable((kwargs.get("optimizer") or [None])[0])  # a step leaves its gradients, as torch's
            if _grads(m) and not trained:
                problems.append(f"{what}: gradients left on {type(m).__name__}: {_grads(m)}")
        left = _left_wrapped(originals)
        if left:
            problems.append(f"{what}: functions left patched: {left[:5]}")
            for owner, attr, fn in originals.values():
                setattr(owner, attr, fn)
        if not torch.is_grad_enabled() or not paddle.is_grad_enabled():
            problems.append(f"{what}: gradient recording left off")
            torch.set_grad_enabled(True)
            paddle.set_grad_enabled(True)
        capsys.readouterr()  # drop what the run printed
    assert not problems, f"{len(problems)} of {CASES} cases went wrong; the first:\n" + "\n\n".join(problems[:3])
    assert _wrapped_anywhere() == []
    # the cases reach every outcome, so the invariants above were tested on each
    assert all(n >= 10 for n in outcomes.values()), outcomes
    print(f"{CASES} fuzz cases: {outcomes}")
