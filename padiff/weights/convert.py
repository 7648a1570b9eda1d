"""Converting checkpoints between torch and paddle, one tensor at a time.

Sources: ``.safetensors`` (one file, or shards through their index), ``.pth``/``.bin``
(``torch.load`` with ``weights_only``, memory-mapped), ``.pdparams`` (``paddle.load``), a folder
``save_pretrained`` wrote, or a state dict. Destinations: ``.safetensors`` (streamed, sharded
with ``max_shard_size``), ``.pdparams`` (``paddle.save``) or ``.pth`` (``torch.save``); the two
framework files are written whole (one pickle each), safetensors tensor by tensor.

Three ways, from the most to the least informed:

* both models given (either direction): the weight-copy plan of ``assign_weight`` (the same
  LayerMap, structural pairing, rules, fused layouts, buffers a checkpoint leaves out) is made
  between the two models, torch -> paddle as always. A torch checkpoint is converted by
  applying each link's transform to the checkpoint's tensors. A paddle checkpoint is converted
  by running the plan backwards: the transforms only move elements about (transposes, slices,
  concatenations, interleavings), so pushing an index array ``arange(n).reshape(shape)`` of
  each torch tensor through a link's transform tells where each torch element lands in the
  paddle tensor, and gathering by it inverts the link (the torch tensors and paddle tensors a
  fused group links are inverted together). A transform that does more than move elements
  cannot be inverted and is named. The plan keeps no values (``keep_values=False``), and
  models built without values (``torch.device("meta")``, ``paddle.LazyGuard()``) are enough,
  so a conversion holds about one tensor (or one fused group) at a time. With inputs, fused
  layouts are found by running the two models (``fused.py``'s probe) and the converted
  checkpoint can be verified with ``auto_diff``;
* the paddle model only (torch -> paddle): every paddle layer with weights takes the
  checkpoint keys under its own path and converts them with the rule for its class
  (BatchNorm statistics renamed, Linear weights transposed, ``in_proj_weight`` split for
  MultiHeadAttention, ...);
* no model (torch -> paddle): the seeds' ``torch2paddle.py`` recipe by names: 2-D ``.weight``
  of layers that do not look like embeddings are transposed (Linear),
  ``running_mean``/``running_var`` become ``_mean``/``_variance``, ``num_batches_tracked`` is
  dropped; every key decided by such a guess is marked as guessed. A torch model alone tells
  which layers are Linear.

The last two convert everything before writing. The result is a :class:`ConvertTable`
(data); ``report/weights.py`` prints it and writes it as CSV.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import PadiffError
from ..frameworks import get_adapter
from .auto import SKIP_BUFFERS, state_of
from .checkpoint import Checkpoint, SafetensorsWriter, TensorInfo, open_checkpoint, parse_size, storage_dtype
from .fused import brace
from .rules import PADDLE_TO_TORCH_CLASS, RuleError, family, find_rule, in_order

DROPPED = ("num_batches_tracked",)
FRAMEWORKS = ("torch", "paddle")


class ConvertFailed(PadiffError):
    """The two models' weights could not be paired (the report was printed)."""


@dataclass
class ConvertRow:
    src_key: str  # checkpoint key ("" when the destination key has no source)
    src_shape: Optional[Tuple[int, ...]]
    action: str  # copied | transposed | renamed | split | fused | dropped | added | unmatched
    dst_key: str  # destination key ("" when dropped or unmatched)
    dst_shape: Optional[Tuple[int, ...]]
    note: str = ""
    guessed: bool = False


@dataclass
class _Job:
    """One destination value: the keys that take it, its shape and dtype (known before it is
    made), and how to make it from the checkpoint."""

    keys: List[str]
    shape: Tuple[int, ...]
    dtype: str
    make: Callable[[], np.ndarray]


@dataclass
class ConvertTable:
    """What ``convert_checkpoint`` did to every key; true when every destination key got a
    value (and, when verified, the two models agreed)."""

    src_path: str
    dst_path: Optional[str]
    mode: str  # "models", "paddle model", "torch model names", "names"
    rows: List[ConvertRow] = field(default_factory=list)
    src_framework: str = "torch"
    dst_framework: str = "paddle"
    keys: List[str] = field(default_factory=list)  # destination keys, in the order written
    files: List[str] = field(default_factory=list)  # files written (shards, then the index)
    written: bool = False
    notes: List[str] = field(default_factory=list)
    verified: object = None  # the AlignResult of the check after converting (None: not checked)
    verified_from: str = ""  # the written file the destination model was loaded from
    kept_own: List[str] = field(default_factory=list)  # model keys in neither checkpoint, at the check
    _jobs: List[_Job] = field(default_factory=list, repr=False)

    @property
    def mode_text(self) -> str:
        return {
            "models": "mapped through both models",
            "paddle model": "mapped by the paddle model's layers",
            "torch model names": "by names, with the torch model's layer classes",
            "names": "by names only (the torch2paddle recipe)",
        }[self.mode]

    def put(self, keys: List[str], value: np.ndarray, dtype: str) -> None:
        """A destination value already made (the modes without both models)."""
        self.add(_Job(list(keys), tuple(np.shape(value)), dtype, lambda v=value: v))

    def add(self, job: _Job) -> None:
        self._jobs.append(job)
        self.keys += job.keys

    def counts(self) -> "OrderedDict[str, int]":
        out = OrderedDict((k, 0) for k in ("copied", "transposed", "renamed", "split", "fused", "dropped",
                                           "added", "unmatched"))
        for r in self.rows:
            key = r.action.split(" ", 1)[0]
            out[key] = out.get(key, 0) + 1
        return out

    @property
    def unmatched(self) -> List[ConvertRow]:
        return [r for r in self.rows if r.action == "unmatched"]

    @property
    def missing(self) -> List[ConvertRow]:
        """Destination keys that got no value."""
        return [r for r in self.rows if r.action == "unmatched" and r.dst_key]

    @property
    def guessed(self) -> List[ConvertRow]:
        return [r for r in self.rows if r.guessed]

    def __bool__(self) -> bool:
        return not self.missing and (self.verified is None or bool(self.verified))


def _action(conv) -> str:
    note = conv.note or ""
    if note.startswith("split"):
        return "split"
    if note.startswith("fused") or conv.several:
        return "fused"
    if "transposed" in note:
        return "transposed"
    if _last(conv.src_name) != _last(conv.dst_name):
        return "renamed"
    return "copied"


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _strip_root(path: str) -> str:
    return path.split(".", 1)[1] if "." in path else ""


def _keys_by_id(ad, model) -> Dict[int, List[str]]:
    """State-dict keys of each of the model's tensors (aliases share one tensor)."""
    keys: Dict[int, List[str]] = {}
    for k, t in ad.state_items(model):
        keys.setdefault(id(t), []).append(k)
    return keys


_paddle_keys = _keys_by_id  # the paddle-model-only mode's name for it


def _shape_of(ckpt, key):
    return tuple(ckpt.info(key).shape) if key in ckpt else None


def _with(a: str, b: str) -> str:
    return "; ".join(x for x in (a, b) if x)


def _finish(table, ckpt, used, dst_items, dst_ad, dst_name):
    """Rows for dropped and unused checkpoint keys and for destination keys left without a value."""
    for info in ckpt.infos():
        if info.name in used:
            continue
        if _last(info.name) in DROPPED:
            table.rows.append(ConvertRow(info.name, info.shape, "dropped", "", None, f"{dst_name} has no such tensor"))
        else:
            table.rows.append(ConvertRow(info.name, info.shape, "unmatched", "", None,
                                         f"no {dst_name} tensor takes it"))
    if dst_items is None:
        return
    filled = set(table.keys) | {r.dst_key for r in table.rows if r.dst_key}  # given a value, or said why not
    for k, t in dst_items:
        if k not in filled and _last(k) not in SKIP_BUFFERS:
            table.rows.append(ConvertRow("", None, "unmatched", k, tuple(dst_ad.shape(t)),
                                         "no source in the checkpoint"))


# --- mode 1: both models ----------------------------------------------------------------------

def _placeholders(side) -> Dict[int, np.ndarray]:
    """Zero-stride stand-ins for the values of tensors built without any (meta device,
    LazyGuard): the plan checks shapes with them and keeps no value."""
    ad, out = side.adapter, {}
    for _, t in list(ad.all_params(side.model)) + list(ad.all_buffers(side.model)):
        if not ad.has_data(t):
            out[id(t)] = np.broadcast_to(np.zeros((), storage_dtype(ad.dtype_name(t))), tuple(ad.shape(t)))
    return out


def _check_fits(ckpt: Checkpoint, side) -> None:
    """The checkpoint's tensors have the shapes of the model whose framework wrote it."""
    for key, t in side.adapter.state_items(side.model):
        if key in ckpt:
            shape = tuple(side.adapter.shape(t))
            if tuple(ckpt.info(key).shape) != shape:
                raise PadiffError(
                    f"The checkpoint's `{key}` has shape {list(ckpt.info(key).shape)} but the {side.label} model's "
                    f"has {list(shape)}: the checkpoint was not saved from this {side.label} model.")


def _in_ckpt(ckpt, keys: List[str]) -> Optional[str]:
    return next((k for k in keys if k in ckpt), None)


def _through_models(table, ckpt, paddle_model, torch_model, layer_map, stream, probe):
    from ..report.weights import copy_failure_lines, structure_lines
    from ..side import make_sides
    from .assign import plan_copy

    sides, ref_i = make_sides(paddle_model, torch_model)
    src, dst = sides[ref_i], sides[1 - ref_i]  # the plan: torch -> paddle, whichever way the checkpoint goes
    if src.adapter.name != "torch" or dst.adapter.name != "paddle":
        raise PadiffError("convert_checkpoint takes a paddle model (paddle_model=) and a torch model "
                          f"(torch_model=); got a {src.adapter.name} and a {dst.adapter.name} model.")
    _check_fits(ckpt, src if table.src_framework == "torch" else dst)
    values = _placeholders(src)
    if probe is not None and (values or _placeholders(dst)):
        raise PadiffError("Inputs run the two models (to find fused layouts, to verify), but a model was built "
                          "without values (on the meta device, or under paddle.LazyGuard): build both with their "
                          "weights, or leave the inputs out.")
    plan = plan_copy(src, dst, layer_map, values=values or None, probe=probe, keep_values=False)
    if not plan.ok:
        for line in copy_failure_lines(plan, first_side=sides[0], layer_map=layer_map, header="[padiff convert]"):
            print(line, file=stream)
        raise ConvertFailed("The two models' weights could not be paired (see the report above): "
                            + plan.failure.message)
    for line in structure_lines(plan, header="[padiff convert]"):
        print(line, file=stream)
    for g in plan.fused:
        if g.how == "assumed" and probe is None:
            g.why = ("without inputs to run the models on (give them to find it: inputs=, --verify INPUT.npz or "
                     "--inputs module:factory)")
        table.notes.append(g.describe(src.label, dst.label))
    if table.src_framework == "torch":
        _forward(table, ckpt, plan)
    else:
        _backward(table, ckpt, plan)
    return plan


def _forward(table, ckpt, plan):
    """torch checkpoint -> paddle: each link's transform applied to the checkpoint's tensors."""
    src, dst = plan.src, plan.dst
    src_keys, dst_keys = _keys_by_id(src.adapter, src.model), _keys_by_id(dst.adapter, dst.model)
    used = set()
    for link in plan.links:
        dks = dst_keys.get(id(link.dst_tensor), [])
        if not dks:
            continue  # a buffer no state dict holds (a rotary embedding's inv_freq)
        readers, labels, own, lost = [], [], [], []
        for s in link.sources():
            names = src_keys.get(id(s.src_tensor), [_join(_strip_root(s.src_unit.path), s.src_name)])
            key = _in_ckpt(ckpt, names)
            labels.append(key or names[0])
            used.update(k for k in names if k in ckpt)  # aliases (tied weights) too
            if key is not None:
                readers.append((lambda k=key: ckpt.array(k), ckpt.info(key).dtype))
            elif src.adapter.has_data(s.src_tensor):
                own.append(names[0])
                readers.append((lambda t=s.src_tensor: src.adapter.raw_array(t)[0],
                                src.adapter.dtype_name(s.src_tensor)))
            else:
                lost.append(names[0])
        src_key = labels[0] if len(labels) == 1 else brace(labels)
        shape = tuple(dst.adapter.shape(link.dst_tensor))
        if lost:
            for dk in dks:
                table.rows.append(ConvertRow(src_key, None, "unmatched", dk, shape,
                                             f"not in the checkpoint: {', '.join(lost)}"))
            continue
        note = "" if not own else "not in the checkpoint: the torch model's own value" + (
            f" for {', '.join(own)}" if len(labels) > 1 else "")
        if link.converted.fused is not None:
            note = _with(note, link.converted.fused.summary())
        if len(dks) > 1:
            note = _with(note, "also saved as " + ", ".join(dks[1:]))
        table.rows.append(ConvertRow(src_key, _shape_of(ckpt, src_key), _action(link.converted), dks[0], shape, note))
        conv = link.converted
        table.add(_Job(dks, shape, readers[0][1], lambda c=conv, r=readers: c.apply([read() for read, _ in r])))
    _finish(table, ckpt, used, dst.adapter.state_items(dst.model), dst.adapter, "paddle")


def _components(links) -> List[list]:
    """Links joined by the torch tensors they share (a fused group, a split MultiheadAttention),
    in the order of their first link."""
    parent: Dict[tuple, tuple] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for link in links:
        for s in link.sources():
            parent[find(("t", id(s.src_tensor)))] = find(("p", id(link.dst_tensor)))
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    for link in links:
        groups.setdefault(find(("p", id(link.dst_tensor))), []).append(link)
    return list(groups.values())


class _Inverse:
    """The torch tensors of one component, made from its paddle tensors by running each link's
    transform on index arrays (see the module docstring). Computed when the first of them is
    asked for, handed out one by one, then forgotten."""

    def __init__(self, links, tensors, read, shapes):
        self.links = links  # TensorLinks: torch sources -> one paddle tensor each
        self.tensors = tensors  # [(id, shape)] of the torch tensors, in order
        self.read = read  # link -> the paddle tensor's values from the checkpoint
        self.shapes = shapes  # id(paddle tensor) -> shape
        self._out: Optional[Dict[int, np.ndarray]] = None

    def take(self, tid: int) -> np.ndarray:
        if self._out is None:
            self._out = self._compute()
        return self._out.pop(tid)

    def _compute(self) -> Dict[int, np.ndarray]:
        offsets, sizes, total = {}, {}, 0
        for tid, shape in self.tensors:
            offsets[tid], sizes[tid] = total, int(np.prod(shape, dtype=np.int64))
            total += sizes[tid]
        itype = np.int32 if total < 2 ** 31 else np.int64
        shape_of = dict(self.tensors)
        readers = {}
        for link in self.links:
            for s in link.sources():
                readers[id(s.src_tensor)] = readers.get(id(s.src_tensor), 0) + 1
        # First where each element goes (index arrays pushed through the transforms), then the
        # values: the index arrays are gone before the paddle tensors are read.
        recipes = []
        for link in self.links:
            srcs = link.sources()
            idx = [np.arange(offsets[id(s.src_tensor)], offsets[id(s.src_tensor)] + sizes[id(s.src_tensor)],
                             dtype=itype).reshape(shape_of[id(s.src_tensor)]) for s in srcs]
            pushed = np.asarray(link.converted.apply(idx))
            _check_pushed(link, pushed, self.shapes[id(link.dst_tensor)], total)
            tid, kind = id(srcs[0].src_tensor), None
            if len(srcs) == 1 and readers[tid] == 1 and pushed.size == sizes[tid]:
                if np.array_equal(pushed.reshape(-1), idx[0].reshape(-1)):
                    kind = "same"  # the same elements in the same order
                elif idx[0].ndim == 2 and pushed.shape == idx[0].T.shape and np.array_equal(pushed, idx[0].T):
                    kind = "transposed"  # a Linear weight
            del idx
            recipes.append((link, srcs, kind, None if kind else pushed))
            del pushed
        out: Dict[int, np.ndarray] = {}
        flat: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}  # tid -> (values, filled), gathered piecewise
        for link, srcs, kind, pushed in recipes:
            values = self.read(link)
            tid = id(srcs[0].src_tensor)
            if kind == "same":
                out[tid] = values.reshape(shape_of[tid])
                continue
            if kind == "transposed":
                out[tid] = np.ascontiguousarray(values.T)
                continue
            fp, fv = pushed.reshape(-1), values.reshape(-1)
            for s in {id(s.src_tensor): s for s in srcs}.values():
                sid = id(s.src_tensor)
                lo, n = offsets[sid], sizes[sid]
                hit = (fp >= lo) & (fp < lo + n)
                if sid not in flat:
                    flat[sid] = (np.empty(n, values.dtype), np.zeros(n, bool))
                pos = fp[hit] - lo
                flat[sid][0][pos] = fv[hit]
                flat[sid][1][pos] = True
        for sid, (vals, filled) in flat.items():
            if not filled.all():
                raise PadiffError(
                    f"The paddle tensors linked to a torch tensor of shape {list(shape_of[sid])} give values for "
                    f"{int(filled.sum())} of its {filled.size} elements: the rules "
                    f"({', '.join(sorted({l.converted.note or 'copied' for l in self.links}))}) do not cover it, "
                    "so it cannot be made from the paddle checkpoint.")
            out[sid] = vals.reshape(shape_of[sid])
        return out


def _check_pushed(link, pushed, shape, total) -> None:
    """The transform only moved elements: integers in, integers out, each a torch element."""
    where = f"`{link.src_label}` -> `{link.dst_path}`"
    if pushed.dtype.kind not in "iu" or tuple(pushed.shape) != tuple(shape) or \
            (pushed.size and (int(pushed.min()) < 0 or int(pushed.max()) >= total)):
        raise PadiffError(
            f"The conversion of {where} ({link.converted.note or 'copied'}) does more than move elements about "
            f"(run on index arrays it gave {pushed.dtype} {list(pushed.shape)}"
            + (f" holding {int(pushed.min())}..{int(pushed.max())} for {total} elements" if pushed.size and
               pushed.dtype.kind in "iuf" else "")
            + "), so it cannot be run backwards to convert a paddle checkpoint into torch. Register a rule whose "
              "transform rearranges elements (transpose, slice, concatenate).")


def _backward(table, ckpt, plan):
    """paddle checkpoint -> torch: the plan's links run backwards (see the module docstring)."""
    src, dst = plan.src, plan.dst  # src: torch (written), dst: paddle (the checkpoint)
    torch_keys, paddle_keys = _keys_by_id(src.adapter, src.model), _keys_by_id(dst.adapter, dst.model)
    links = [l for l in plan.links if paddle_keys.get(id(l.dst_tensor)) and
             all(torch_keys.get(id(s.src_tensor)) for s in l.sources())]
    used = set()
    for comp in _components(links):
        keys = {id(l.dst_tensor): _in_ckpt(ckpt, paddle_keys[id(l.dst_tensor)]) for l in comp}
        tensors: "OrderedDict[int, object]" = OrderedDict()
        feeds: Dict[int, list] = {}
        for l in comp:
            for s in l.sources():
                tensors.setdefault(id(s.src_tensor), s.src_tensor)
                feeds.setdefault(id(s.src_tensor), []).append(l)
        absent = [paddle_keys[id(l.dst_tensor)][0] for l in comp if keys[id(l.dst_tensor)] is None]
        used.update(k for l in comp for k in paddle_keys[id(l.dst_tensor)] if k in ckpt)  # aliases too
        shapes = {id(l.dst_tensor): tuple(dst.adapter.shape(l.dst_tensor)) for l in comp}
        inverse = _Inverse(comp, [(tid, tuple(src.adapter.shape(t))) for tid, t in tensors.items()],
                           lambda l, k=keys: ckpt.array(k[id(l.dst_tensor)]), shapes)
        dtype = next((ckpt.info(k).dtype for k in keys.values() if k is not None), None)
        for tid, t in tensors.items():
            tks = torch_keys[tid]
            ls = feeds[tid]
            pkeys = [keys[id(l.dst_tensor)] or paddle_keys[id(l.dst_tensor)][0] for l in ls]
            src_key = pkeys[0] if len(pkeys) == 1 else brace(pkeys)
            shape = tuple(src.adapter.shape(t))
            if absent:
                for tk in tks:
                    table.rows.append(ConvertRow(src_key, None, "unmatched", tk, shape,
                                                 f"not in the checkpoint: {', '.join(absent)}"))
                continue
            if len(ls) > 1:
                action = "fused"
            elif ls[0].converted.several:
                action = "split"
            else:
                action = _action(ls[0].converted)
            note = ls[0].converted.fused.summary() if ls[0].converted.fused is not None else ""
            if len(tks) > 1:
                note = _with(note, "also saved as " + ", ".join(tks[1:]))
            table.rows.append(ConvertRow(src_key, _shape_of(ckpt, src_key), action, tks[0], shape, note))
            table.add(_Job(tks, shape, dtype, lambda i=inverse, tid=tid: i.take(tid)))
    # torch tensors paddle has no counterpart for (BatchNorm's num_batches_tracked): the torch model's own
    filled = set(table.keys)
    for key, t in src.adapter.state_items(src.model):
        if key in filled or _last(key) not in DROPPED:
            continue
        has = src.adapter.has_data(t)
        table.rows.append(ConvertRow("", None, "added", key, tuple(src.adapter.shape(t)),
                                     "paddle has no such tensor: the torch model's own value" if has else
                                     "paddle has no such tensor: written as 0"))
        dtype = src.adapter.dtype_name(t)
        make = (lambda t=t: src.adapter.raw_array(t)[0]) if has else \
            (lambda s=tuple(src.adapter.shape(t)), d=dtype: np.zeros(s, storage_dtype(d)))
        table.add(_Job([key], tuple(src.adapter.shape(t)), dtype, make))
    _finish(table, ckpt, used, src.adapter.state_items(src.model), src.adapter, "torch")


# --- mode 2: the paddle model only ------------------------------------------------------------

def _leaves(ad, layer, prefix, tensors, whole):
    """Paddle layers to convert one by one: a built-in layer with a rule (or no insides) is
    one; others are opened into their own tensors and their children."""
    cls = type(layer).__name__
    guess = PADDLE_TO_TORCH_CLASS.get(cls, cls)
    if not whole or find_rule(guess, cls, True) is not None or \
            len(state_of(ad, layer, True)) == len(state_of(ad, layer, False)):
        return [(prefix, layer, tensors, guess, whole)]
    out = []
    own = state_of(ad, layer, False)
    if own:
        out.append((prefix, layer, own, guess, False))
    for name, child in ad.named_children(layer):
        inner = state_of(ad, child, True)
        if inner:
            out += _leaves(ad, child, _join(prefix, name), inner, True)
    return out


def _through_paddle_model(table, ckpt, paddle_model, layer_map):
    from ..side import Side
    from .assign import units_of

    ad = get_adapter("paddle")
    side = Side(ad, paddle_model, type(paddle_model).__name__, "paddle")
    keys = _paddle_keys(ad, paddle_model)
    used = set()

    def has_rule(layer):  # paddle's MultiHeadAttention: converted from torch's by the shipped rule
        cls = type(layer).__name__
        return ad.is_builtin(layer) and find_rule(PADDLE_TO_TORCH_CLASS.get(cls, cls), cls, True) is not None

    for unit in units_of(side, layer_map, whole_if=has_rule):
        for prefix, layer, tensors, guess, whole in _leaves(ad, unit.layer, _strip_root(unit.path), unit.tensors,
                                                            unit.whole):
            lead = prefix + "." if prefix else ""
            if whole:
                src_keys = [k for k in ckpt if k.startswith(lead) and k not in used and _last(k) not in DROPPED]
            else:
                src_keys = [k for k in ckpt if k.startswith(lead) and "." not in k[len(lead):] and k not in used
                            and _last(k) not in DROPPED]
            src = [(k[len(lead):], ckpt[k]) for k in src_keys]
            dst = [(n, tuple(ad.shape(t))) for n, t, _ in tensors]
            cls = type(layer).__name__
            rule = find_rule(guess, cls, True)
            try:
                if not src:
                    raise RuleError(f"the checkpoint has no key under `{lead or '(top level)'}`")
                if rule is not None:
                    converted = rule.convert(src, dst, src_kind=f"torch::{guess}", dst_kind=f"paddle::{cls}")
                else:
                    converted = in_order(src, dst, src_kind=f"torch::{guess}", dst_kind=f"paddle::{cls}")
            except RuleError as exc:
                for n, t, _ in tensors:
                    for dk in keys.get(id(t), []):
                        table.rows.append(ConvertRow("", None, "unmatched", dk, tuple(ad.shape(t)), str(exc)))
                continue
            by_name = {n: t for n, t, _ in tensors}
            for c in converted:
                src_key = lead + c.src_name if not c.several else brace([lead + n for n in c.src_names])
                used.update(lead + n for n in c.src_names)
                dst_keys = keys.get(id(by_name[c.dst_name]), [])
                if dst_keys:
                    table.put(dst_keys, c.array, ckpt.info(lead + c.src_names[0]).dtype)
                if dst_keys:
                    table.rows.append(ConvertRow(src_key, _shape_of(ckpt, src_key), _action(c), dst_keys[0],
                                                 tuple(np.shape(c.array)),
                                                 "also saved as " + ", ".join(dst_keys[1:]) if len(dst_keys) > 1
                                                 else ""))
    _finish(table, ckpt, used, ad.state_items(paddle_model), ad, "paddle")


# --- mode 3: names ----------------------------------------------------------------------------

_EMBEDDING_WORDS = ("emb", "wte", "wpe", "lookup")
_HR = re.compile(r"weight_hr_l\d+(_reverse)?")


def _looks_like_embedding(layer_path: str) -> bool:
    return any(w in part.lower() for part in layer_path.split(".") for w in _EMBEDDING_WORDS)


def _torch_classes(torch_model) -> Dict[str, str]:
    ad = get_adapter("torch")
    out = {}

    def walk(layer, path):
        out[path] = type(layer).__name__
        for name, child in ad.named_children(layer):
            walk(child, _join(path, name))

    walk(torch_model, "")
    return out


def _by_names(table, ckpt, classes: Optional[Dict[str, str]]):
    known = classes is not None
    for key, arr in ckpt.items():
        layer, last = key.rsplit(".", 1) if "." in key else ("", key)
        fam = family(classes[layer]) if known and layer in classes else None
        guessed = not known or fam is None
        shape = tuple(arr.shape)

        def put(dst_key, value, action, note="", g=guessed):
            table.put([dst_key], value, ckpt.info(key).dtype)
            table.rows.append(ConvertRow(key, shape, action, dst_key, tuple(np.shape(value)), note, g))

        if last in DROPPED:
            table.rows.append(ConvertRow(key, shape, "dropped", "", None, "paddle has no such tensor"))
        elif last in ("running_mean", "running_var"):
            put(_join(layer, "_mean" if last == "running_mean" else "_variance"), arr, "renamed",
                "BatchNorm statistics", g=False)
        elif last in ("in_proj_weight", "in_proj_bias") and arr.shape[0] % 3 == 0:
            e = arr.shape[0] // 3
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                part = arr[i * e:(i + 1) * e]
                part = np.ascontiguousarray(part.T) if arr.ndim == 2 else part
                put(_join(layer, f"{proj}.{'weight' if arr.ndim == 2 else 'bias'}"), part, "split",
                    "MultiheadAttention: packed q/k/v split" + (" and transposed" if arr.ndim == 2 else ""),
                    g=fam != "multiheadattention")
        elif last in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            put(_join(layer, last[:-len("_weight")] + ".weight"), np.ascontiguousarray(arr.T), "transposed",
                "MultiheadAttention projection")
        elif _HR.fullmatch(last):
            table.rows.append(ConvertRow(key, shape, "unmatched", "", None,
                                         "an LSTM projection: paddle names it `<layer>.cell.weight_ho`; pass the "
                                         "paddle model to convert it"))
        elif last == "weight" and arr.ndim == 2:
            if known and fam is not None:
                if fam == "linear":
                    put(key, np.ascontiguousarray(arr.T), "transposed", "Linear weight", g=False)
                else:
                    put(key, arr, "copied", "", g=False)
            elif _looks_like_embedding(layer):
                put(key, arr, "copied", "2-D weight kept: the layer looks like an embedding")
            else:
                put(key, np.ascontiguousarray(arr.T), "transposed", "2-D weight assumed to be a Linear")
        elif known and fam == "instancenorm" and last == "weight":
            put(_join(layer, "scale"), arr, "renamed", "InstanceNorm", g=False)
        elif known and fam == "prelu" and last == "weight":
            put(_join(layer, "_weight"), arr, "renamed", "PReLU", g=False)
        else:
            put(key, arr, "copied", "", g=False)


# --- which framework wrote the checkpoint ------------------------------------------------------

def _source_of(ckpt: Checkpoint, source, paddle_model, torch_model) -> Tuple[str, str]:
    """(framework, how it was decided)."""
    if source is not None:
        if source not in FRAMEWORKS:
            raise PadiffError(f"source must be 'torch' or 'paddle', got {source!r}.")
        return source, ""
    if ckpt.framework in FRAMEWORKS:
        return ckpt.framework, ""
    scores = {}
    for name, model in (("torch", torch_model), ("paddle", paddle_model)):
        if model is not None:
            ad = get_adapter(name)
            scores[name] = sum(1 for k, t in ad.state_items(model)
                               if k in ckpt and tuple(ckpt.info(k).shape) == tuple(ad.shape(t)))
    if scores and max(scores.values()) > 0 and len(set(scores.values())) > 1:
        best = max(scores, key=scores.get)
        return best, (f"the file does not say which framework wrote it; its shapes fit the {best} model's "
                      f"({scores[best]} of {len(ckpt)} keys): read as a {best} checkpoint")
    return "torch", ("the file does not say which framework wrote it: read as a torch checkpoint "
                     "(say source='paddle' / --from paddle otherwise)") if ckpt.kind == "safetensors" else ""


# --- writing ----------------------------------------------------------------------------------

_FILE_OF = {".pdparams": "paddle", ".pth": "torch", ".pt": "torch", ".bin": "torch"}


def _format_of(dst_path: str, dst_framework: str) -> str:
    """"safetensors", or the framework whose own file format the path names."""
    lower = dst_path.lower()
    if lower.endswith(".safetensors") or os.path.isdir(dst_path) or dst_path.endswith(("/", os.sep)):
        return "safetensors"
    ext = os.path.splitext(lower)[1]
    if ext not in _FILE_OF:
        raise PadiffError(f"padiff writes .safetensors (or a folder for model.safetensors), .pdparams or .pth/.bin; "
                          f"`{dst_path}` is none of them.")
    if _FILE_OF[ext] != dst_framework:
        raise PadiffError(f"`{dst_path}` is a {_FILE_OF[ext]} file, but the converted tensors are in {dst_framework}'s "
                          f"layout: write a {'.pdparams' if dst_framework == 'paddle' else '.pth'} or a .safetensors "
                          "file.")
    return _FILE_OF[ext]


def _write(table: ConvertTable, dst_path: str, max_shard_size) -> Tuple[List[str], str]:
    """Write every job; (the files written, the path to read the checkpoint back from)."""
    fmt = _format_of(dst_path, table.dst_framework)
    if fmt == "safetensors":
        entries = [TensorInfo(k, job.shape, job.dtype) for job in table._jobs for k in job.keys]
        meta = {"format": "pt" if table.dst_framework == "torch" else "np"}
        writer = SafetensorsWriter(dst_path, entries, meta, max_shard_size)
        try:
            for job in table._jobs:
                value = job.make()
                for k in job.keys:
                    writer.write(k, value)
                del value
        except BaseException:
            writer._abort()
            raise
        files = writer.close()
        return files, writer.index_path or files[0]
    if max_shard_size is not None:
        raise PadiffError(f"Shards are written for .safetensors only; `{dst_path}` is one {fmt} file.")
    ad = get_adapter(fmt)
    state = OrderedDict()
    for job in table._jobs:
        value = job.make()
        for k in job.keys:
            state[k] = (value, job.dtype)
    folder = os.path.dirname(os.path.abspath(dst_path))
    os.makedirs(folder, exist_ok=True)
    ad.save_raw(state, dst_path)
    return [dst_path], dst_path


# --- inputs, and the check after converting ----------------------------------------------------

def load_inputs(spec):
    """Inputs as numpy: a ``.npz`` (keys ``arr_0``, ``arr_1``, ... as ``np.savez(path, a, b)`` names
    them are positional arguments, other names keywords), a ``.npy`` (one argument), or the
    structure itself (a dict of keywords, a list/tuple of positional arguments, one array)."""
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if not os.path.isfile(path):
            raise PadiffError(f"The inputs file `{path}` does not exist.")
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise PadiffError(f"`{path}` is not a .npz file of arrays ({exc}).") from None
        if data and all(re.fullmatch(r"arr_\d+", k) for k in data):
            return [data[f"arr_{i}"] for i in range(len(data))]
        return data
    return spec


def _inputs_for(ad, value):
    if isinstance(value, dict):
        return {k: _inputs_for(ad, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_inputs_for(ad, v) for v in value)
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        return ad.from_array(arr, str(arr.dtype))
    return value


def _call(model, inp):
    if isinstance(inp, dict):
        return lambda: model(**inp)
    if isinstance(inp, (list, tuple)):
        return lambda: model(*inp)
    return lambda: model(inp)


def _assign(side, ckpt: Checkpoint) -> List[str]:
    """Load a checkpoint into a model, tensor by tensor; the model's keys it has no value for."""
    ad, missing = side.adapter, []
    for key, t in ad.state_items(side.model):
        if key in ckpt:
            ad.assign_raw(t, ckpt.array(key), ckpt.info(key).dtype)
        else:
            missing.append(key)
    return missing


def _verify(table, ckpt, read_back, paddle_model, torch_model, layer_map, inputs, stream):
    from ..auto_diff import auto_diff  # the check runs the front door itself
    from ..side import make_sides

    sides = {s.adapter.name: s for s in make_sides(paddle_model, torch_model)[0]}
    src_side, dst_side = sides[table.src_framework], sides[table.dst_framework]
    missing = _assign(src_side, ckpt)
    with open_checkpoint(read_back, framework=table.dst_framework) as written:
        missing += _assign(dst_side, written)
    missing = [k for k in missing if _last(k) not in SKIP_BUFFERS]
    pd_in, pt_in = _inputs_for(sides["paddle"].adapter, inputs), _inputs_for(sides["torch"].adapter, inputs)
    redirect = contextlib.redirect_stdout(stream) if stream is not sys.stdout else contextlib.nullcontext()
    with redirect:
        result = auto_diff(paddle_model, torch_model, (pd_in, pt_in), layer_map=layer_map, auto_weights=False,
                           diff_phase="forward")
    table.verified, table.verified_from, table.kept_own = result, read_back, missing


# --- the function -------------------------------------------------------------------------------

def convert_checkpoint(src_path, dst_path=None, paddle_model=None, layer_map=None, torch_model=None, *,
                       source: Optional[str] = None, inputs=None, verify: bool = False, max_shard_size=None,
                       table_csv=None, verbose: bool = True, stream=None) -> ConvertTable:
    """Convert a checkpoint between torch and paddle, tensor by tensor, and write it at
    ``dst_path`` (nothing is written when ``dst_path`` is None).

    ``src_path``: a ``.safetensors`` file, a safetensors index (``model.safetensors.index.json``),
    a ``.pth``/``.bin``, a ``.pdparams``, a folder ``save_pretrained`` wrote, or a state dict.
    ``source`` ("torch" or "paddle"): which framework's layout it holds, when neither the file
    nor the models tell. ``dst_path``: ``.safetensors`` (or a folder: ``model.safetensors``
    there; ``max_shard_size`` such as ``"2GB"`` splits it into shards with an index),
    ``.pdparams`` or ``.pth``. With both models the keys are mapped by the models' layers with
    the same pairing, rules and fused layouts as ``assign_weight``, in either direction; with
    the paddle model only, or no model, a torch checkpoint is converted by the paddle model's
    layers or by names (the seeds' torch2paddle recipe), saying which keys were guessed.

    ``inputs`` (numpy arrays: a dict of keywords, a list of positional arguments, one array,
    or a ``.npz``/``.npy`` path) let fused layouts be found by running both models; with
    ``verify=True`` the converted file is loaded back into the destination model, the
    checkpoint into the source model (both models keep those weights), and ``auto_diff``
    compares their forward on the inputs. Prints a table of what was copied, transposed,
    renamed, split, fused, dropped or left unmatched (``table_csv``: also as CSV) and returns
    it as a :class:`ConvertTable`, true when every destination key got a value and the check,
    if asked for, passed.
    """
    from .layer_map import LayerMap

    stream = stream or sys.stdout
    layer_map = LayerMap.create_from(layer_map)
    max_shard_size = parse_size(max_shard_size)
    inputs = load_inputs(inputs) if inputs is not None else None
    if verify and inputs is None:
        raise PadiffError("verify runs both models on inputs: give inputs (a .npz path or arrays; --verify "
                          "INPUT.npz or --inputs module:factory).")
    if (verify or inputs is not None) and (paddle_model is None or torch_model is None):
        raise PadiffError("Inputs run the two models: give both paddle_model and torch_model (--paddle-model and "
                          "--torch-model) with them.")
    if verify and dst_path is None:
        raise PadiffError("verify loads the converted checkpoint into the destination model: give a destination "
                          "(not a dry run).")
    with contextlib.ExitStack() as stack:
        ckpt = open_checkpoint(src_path, framework=source)
        stack.callback(ckpt.close)
        src_fw, how = _source_of(ckpt, source, paddle_model, torch_model)
        dst_fw = "paddle" if src_fw == "torch" else "torch"
        if paddle_model is not None and torch_model is not None:
            mode = "models"
        elif src_fw == "paddle":
            raise PadiffError("Converting a paddle checkpoint into torch needs both models (paddle_model= and "
                              "torch_model=; --paddle-model and --torch-model): the torch layout is read from them.")
        elif paddle_model is not None:
            mode = "paddle model"
        elif torch_model is not None:
            mode = "torch model names"
        else:
            mode = "names"
        if layer_map is not None and mode != "models":
            raise PadiffError("A layer_map pairs the layers of two models: give both paddle_model and torch_model "
                              "(--paddle-model and --torch-model) with it.")
        shown = os.fspath(src_path) if isinstance(src_path, (str, os.PathLike)) else "(state dict)"
        table = ConvertTable(shown, os.fspath(dst_path) if dst_path is not None else None, mode,
                             [ConvertRow(k, None, "dropped", "", None, why) for k, why in ckpt.dropped],
                             src_framework=src_fw, dst_framework=dst_fw)
        table.notes += ckpt.notes + ([how] if how else [])
        if dst_path is not None:
            _format_of(os.fspath(dst_path), dst_fw)  # a wrong destination is said before any work
        if mode == "models":
            probe = None
            if inputs is not None:
                pt_model_in = _inputs_for(get_adapter("torch"), inputs)
                pd_model_in = _inputs_for(get_adapter("paddle"), inputs)
                probe = (_call(torch_model, pt_model_in), _call(paddle_model, pd_model_in))
            _through_models(table, ckpt, paddle_model, torch_model, layer_map, stream, probe)
        elif mode == "paddle model":
            if get_adapter("paddle").is_layer(paddle_model) is False:
                raise PadiffError(f"paddle_model is a {type(paddle_model).__name__}, not a paddle.nn.Layer.")
            _through_paddle_model(table, ckpt, paddle_model, layer_map)
        else:
            torch_ad = get_adapter("torch")
            if torch_model is not None and not torch_ad.is_layer(torch_model):
                raise PadiffError(f"torch_model is a {type(torch_model).__name__}, not a torch.nn.Module.")
            _by_names(table, ckpt, _torch_classes(torch_model) if torch_model is not None else None)
        read_back = None
        if dst_path is not None and table._jobs:
            table.files, read_back = _write(table, os.fspath(dst_path), max_shard_size)
            table.written = True
        if verbose:
            from ..report.weights import convert_table_lines

            for note in table.notes:
                print(f"[padiff convert] Note: {note}", file=stream)
            for line in convert_table_lines(table):
                print(line, file=stream)
        if table_csv is not None:
            from ..report.weights import write_convert_csv

            write_convert_csv(table, os.fspath(table_csv))
        if verify and read_back is not None:
            _verify(table, ckpt, read_back, paddle_model, torch_model, layer_map, inputs, stream)
            if verbose:
                from ..report.weights import convert_verify_line

                print(convert_verify_line(table), file=stream)
    table._jobs = []
    return table


# --- the command line -------------------------------------------------------------------------

def load_object(spec: str, what: str):
    """``module:attr`` or ``path/to/file.py:attr`` -> the attribute (called when it is a
    factory taking no arguments is wanted by the caller)."""
    if ":" not in spec:
        raise PadiffError(f"{what} must be written module:factory (e.g. my_models:build_paddle), got `{spec}`.")
    mod_name, attr = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py") or os.sep in mod_name or "/" in mod_name:
            path = os.path.abspath(mod_name)
            if not os.path.isfile(path):
                raise PadiffError(f"{what}: the file `{mod_name}` does not exist.")
            mspec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise PadiffError(f"{what}: cannot import `{mod_name}` ({exc}).") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PadiffError(f"{what}: `{mod_name}` has no `{attr}`.")
        obj = getattr(obj, part)
    return obj


def _build_model(spec: str, what: str):
    factory = load_object(spec, what)
    if not callable(factory):
        raise PadiffError(f"{what}: `{spec}` is not callable: give a class or a function that builds the model.")
    model = factory()
    if hasattr(model, "eval"):  # both frameworks' layers: no dropout when the models are run
        model.eval()
    return model


def main(argv=None) -> int:
    """``padiff convert SRC DST [--paddle-model module:factory] [--torch-model module:factory] ...``;
    returns the exit status: 0 when every destination key got a value (and the check passed), 1
    when some did not, the models' weights could not be paired or the check found a difference,
    2 for a usage mistake or an input padiff cannot use."""
    parser = argparse.ArgumentParser(
        prog="padiff convert",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a checkpoint between torch and paddle, tensor by tensor, with the rules of assign_weight "
                    "(Linear transposed, BatchNorm statistics renamed, num_batches_tracked dropped, MultiheadAttention "
                    "split, fused projections laid out as the models lay them out, ...).\n"
                    "SRC: .safetensors, a model.safetensors.index.json (shards), .pth/.bin, .pdparams, or a folder "
                    "save_pretrained wrote. DST: .safetensors (or a folder; --max-shard-size makes shards and an "
                    "index), .pdparams or .pth.\n"
                    "With both models a checkpoint converts either way (torch -> paddle, paddle -> torch); without "
                    "them a torch checkpoint is converted by the paddle model's layers or by names (the "
                    "torch2paddle recipe) and the table says which keys were guessed.",
        epilog="exit status: 0 every destination key got a value (and --verify passed), 1 some did not, the models' "
               "weights could not be paired, or --verify found a difference; 2 usage error or unusable input.\n"
               "examples:\n"
               "  padiff convert hf_llama/ llama.pdparams --torch-model my_models:hf_llama "
               "--paddle-model my_models:pd_llama --verify ids.npz --table llama.csv\n"
               "  padiff convert model_state.pdparams torch_out/ --paddle-model my_port:Net --torch-model "
               "my_ref:Net --max-shard-size 2GB")
    parser.add_argument("src", help="the checkpoint to convert (see above)")
    parser.add_argument("dst", help="the file (or folder, for safetensors) to write")
    parser.add_argument("--paddle-model", metavar="MODULE:FACTORY",
                        help="builds the paddle model (a class or function taking no arguments); keys are then "
                             "mapped by its layers")
    parser.add_argument("--torch-model", metavar="MODULE:FACTORY",
                        help="builds the torch model; with --paddle-model keys are mapped through both models")
    parser.add_argument("--from", dest="source", choices=FRAMEWORKS, default=None,
                        help="the framework whose layout SRC holds, when neither the file nor the models tell "
                             "(a safetensors file without a `format` in its metadata)")
    parser.add_argument("--layer-map", metavar="MODULE:FUNCTION",
                        help="function(paddle_model, torch_model) returning a padiff.LayerMap")
    parser.add_argument("--auto", action="store_true",
                        help="pair the two models' layers with LayerMap.auto (needs both models)")
    parser.add_argument("--inputs", metavar="MODULE:FACTORY",
                        help="a function returning the models' inputs as numpy arrays (a dict of keywords, a list of "
                             "positional arguments, or one array): fused layouts are then found by running the models")
    parser.add_argument("--verify", nargs="?", const=True, default=None, metavar="INPUT.npz",
                        help="after converting, load the written checkpoint into the destination model and SRC into "
                             "the source model and compare their forward on these inputs (np.savez: arr_0, arr_1, ... "
                             "positional, other names keywords; without a file, the --inputs ones); prints ALIGNED or "
                             "the first layer that differs")
    parser.add_argument("--table", metavar="OUT.csv", help="also write the table of what was done as CSV")
    parser.add_argument("--max-shard-size", metavar="SIZE",
                        help="split a .safetensors destination into shards of at most SIZE (5GB, 500MB) with a "
                             "model.safetensors.index.json")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    try:
        paddle_model = _build_model(args.paddle_model, "--paddle-model") if args.paddle_model else None
        torch_model = _build_model(args.torch_model, "--torch-model") if args.torch_model else None
        layer_map = None
        if args.layer_map or args.auto:
            if paddle_model is None or torch_model is None:
                raise PadiffError("--layer-map and --auto pair two models' layers: give --paddle-model and "
                                  "--torch-model too.")
            if args.layer_map:
                layer_map = load_object(args.layer_map, "--layer-map")(paddle_model, torch_model)
            else:
                from .layer_map import LayerMap

                layer_map = LayerMap()
            if args.auto:
                layer_map.auto(paddle_model, torch_model)
        inputs = None
        if args.inputs:
            factory = load_object(args.inputs, "--inputs")
            inputs = factory() if callable(factory) else factory
        if isinstance(args.verify, str):
            inputs = args.verify
        elif args.verify is True and inputs is None:
            raise PadiffError("--verify needs inputs: --verify INPUT.npz, or --inputs module:factory.")
        if args.verify is not None and args.dry_run:
            raise PadiffError("--verify loads the written checkpoint: it cannot go with --dry-run.")
        table = convert_checkpoint(args.src, None if args.dry_run else args.dst, paddle_model=paddle_model,
                                   layer_map=layer_map, torch_model=torch_model, source=args.source, inputs=inputs,
                                   verify=args.verify is not None, max_shard_size=args.max_shard_size,
                                   table_csv=args.table)
    except ConvertFailed as exc:
        print(f"padiff convert: {exc}", file=sys.stderr)
        return 1
    except PadiffError as exc:
        print(f"padiff convert: error: {exc}", file=sys.stderr)
        return 2
    return 0 if table else 1
