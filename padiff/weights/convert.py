"""Converting checkpoints between two frameworks (torch and paddle), one tensor at a time.

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
  paddle tensor, and gathering by it inverts the link (``invert.py``). The plan keeps no values
  (``keep_values=False``), and
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
(data); ``report/weights.py`` prints it and writes it as CSV. Which framework is which comes
from the adapters (:class:`Frameworks`): the *reference* one is the one the conversion rules
take as source (torch), the *port* the other (paddle); their file formats, class tables and
tensor names are the adapters' (``padiff/frameworks/base.py``). The public front door with its
``torch_model``/``paddle_model`` keywords, and the check after converting, are
``padiff/porting.py``'s; running a plan backwards is ``invert.py``'s.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import PadiffError
from ..side import Side, make_sides
from .assign import plan_copy, units_of
from .auto import state_of
from .checkpoint import Checkpoint, SafetensorsWriter, TensorInfo, open_checkpoint, storage_dtype
from .convert_table import (ConvertRow, ConvertTable, Job, action_of, finish, join, keys_by_id, last_name, shape_in,
                            strip_root, with_note)
from .fused import brace
from .invert import backward, in_ckpt
from .rules import RuleError, counterpart_class, family, find_rule, in_order


@dataclass
class Frameworks:
    """The two frameworks of a conversion, and their models where given. ``ref``: the adapter of
    the framework the conversion rules take as source (the reference model's: torch); ``port``:
    the other (paddle)."""

    ref: object
    port: object
    ref_model: object = None
    port_model: object = None

    @property
    def names(self) -> Tuple[str, str]:
        return self.ref.name, self.port.name

    def adapter(self, name: str):
        return self.ref if name == self.ref.name else self.port

    def skipped(self) -> Tuple[str, ...]:
        """Buffers no conversion carries, of either framework."""
        return tuple(self.ref.weight_tables.skipped_buffers) + tuple(self.port.weight_tables.skipped_buffers)


class ConvertFailed(PadiffError):
    """The two models' weights could not be paired; ``plan`` holds why (the report prints it)."""

    def __init__(self, message: str, plan=None):
        super().__init__(message)
        self.plan = plan


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


def _through_models(table, ckpt, fw: Frameworks, layer_map, probe):
    """Mode 1: the weight-copy plan between the two models (reference -> port, whichever way the
    checkpoint goes) applied to the checkpoint's tensors, or run backwards."""
    sides, ref_i = make_sides(fw.port_model, fw.ref_model)
    src, dst = sides[ref_i], sides[1 - ref_i]  # the plan: torch -> paddle, whichever way the checkpoint goes
    if (src.adapter.name, dst.adapter.name) != fw.names:
        raise PadiffError(f"convert_checkpoint takes a {fw.port.name} model ({fw.port.name}_model=) and a "
                          f"{fw.ref.name} model ({fw.ref.name}_model=); got a {src.adapter.name} and a "
                          f"{dst.adapter.name} model.")
    _check_fits(ckpt, src if table.src_framework == fw.ref.name else dst)
    values = _placeholders(src)
    if probe is not None and (values or _placeholders(dst)):
        raise PadiffError("Inputs run the two models (to find fused layouts, to verify), but a model was built "
                          f"without values ({fw.ref.lazy_build}, or {fw.port.lazy_build}): build both with their "
                          "weights, or leave the inputs out.")
    plan = plan_copy(src, dst, layer_map, values=values or None, probe=probe, keep_values=False)
    table.plan = plan
    if not plan.ok:
        raise ConvertFailed("The two models' weights could not be paired (see the report above): "
                            + plan.failure.message, plan)
    for g in plan.fused:
        if g.how == "assumed" and probe is None:
            g.why = ("without inputs to run the models on (give them to find it: inputs=, --verify INPUT.npz or "
                     "--inputs module:factory)")
        table.notes.append(g.describe(src.label, dst.label))
    if table.src_framework == fw.ref.name:
        _forward(table, ckpt, plan, fw)
    else:
        backward(table, ckpt, plan)


def _forward(table, ckpt, plan, fw: Frameworks):
    """A reference (torch) checkpoint into the port's layout (paddle): each link's transform
    applied to the checkpoint's tensors."""
    src, dst = plan.src, plan.dst
    src_keys, dst_keys = keys_by_id(src.adapter, src.model), keys_by_id(dst.adapter, dst.model)
    used = set()
    for link in plan.links:
        dks = dst_keys.get(id(link.dst_tensor), [])
        if not dks:
            continue  # a buffer no state dict holds (a rotary embedding's inv_freq)
        readers, labels, own, lost = [], [], [], []
        for s in link.sources():
            names = src_keys.get(id(s.src_tensor), [join(strip_root(s.src_unit.path), s.src_name)])
            key = in_ckpt(ckpt, names)
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
        note = "" if not own else f"not in the checkpoint: the {src.adapter.name} model's own value" + (
            f" for {', '.join(own)}" if len(labels) > 1 else "")
        if link.converted.fused is not None:
            note = with_note(note, link.converted.fused.summary())
        if len(dks) > 1:
            note = with_note(note, "also saved as " + ", ".join(dks[1:]))
        table.rows.append(ConvertRow(src_key, shape_in(ckpt, src_key), action_of(link.converted), dks[0], shape, note))
        conv = link.converted
        table.add(Job(dks, shape, readers[0][1], lambda c=conv, r=readers: c.apply([read() for read, _ in r])))
    finish(table, ckpt, used, dst.adapter.state_items(dst.model), dst.adapter, dst.adapter.name,
           src.adapter.weight_tables.skipped_buffers, fw.skipped())


# --- mode 2: the port model only ---------------------------------------------------------------

def _leaves(fw: Frameworks, layer, prefix, tensors, whole):
    """Port (paddle) layers to convert one by one: a built-in layer with a rule (or no insides)
    is one; others are opened into their own tensors and their children."""
    ad = fw.port
    cls = type(layer).__name__
    guess = counterpart_class(cls, ad, fw.ref)
    if not whole or find_rule(guess, cls, fw.ref, ad) is not None or \
            len(state_of(ad, layer, True)) == len(state_of(ad, layer, False)):
        return [(prefix, layer, tensors, guess, whole)]
    out = []
    own = state_of(ad, layer, False)
    if own:
        out.append((prefix, layer, own, guess, False))
    for name, child in ad.named_children(layer):
        inner = state_of(ad, child, True)
        if inner:
            out += _leaves(fw, child, join(prefix, name), inner, True)
    return out


def _through_port_model(table, ckpt, fw: Frameworks, layer_map):
    """Mode 2: every port layer with weights takes the checkpoint keys under its own path and
    converts them with the rule for its class."""
    ad, model = fw.port, fw.port_model
    side = Side(ad, model, type(model).__name__, ad.name)
    keys = keys_by_id(ad, model)
    used = set()

    def has_rule(layer):  # paddle's MultiHeadAttention: converted from torch's by the shipped rule
        cls = type(layer).__name__
        return ad.is_builtin(layer) and find_rule(counterpart_class(cls, ad, fw.ref), cls, fw.ref, ad) is not None

    for unit in units_of(side, layer_map, whole_if=has_rule):
        for leaf in _leaves(fw, unit.layer, strip_root(unit.path), unit.tensors, unit.whole):
            _convert_leaf(table, ckpt, fw, keys, used, *leaf)
    finish(table, ckpt, used, ad.state_items(model), ad, ad.name, fw.ref.weight_tables.skipped_buffers, fw.skipped())


def _convert_leaf(table, ckpt, fw: Frameworks, keys, used, prefix, layer, tensors, guess, whole) -> None:
    """One port layer's tensors from the checkpoint keys under its path (``used``: keys taken)."""
    ad = fw.port
    lead = prefix + "." if prefix else ""
    dropped = fw.ref.weight_tables.skipped_buffers
    if whole:
        src_keys = [k for k in ckpt if k.startswith(lead) and k not in used and last_name(k) not in dropped]
    else:
        src_keys = [k for k in ckpt if k.startswith(lead) and "." not in k[len(lead):] and k not in used
                    and last_name(k) not in dropped]
    src = [(k[len(lead):], ckpt[k]) for k in src_keys]
    dst = [(n, tuple(ad.shape(t))) for n, t, _ in tensors]
    cls = type(layer).__name__
    rule = find_rule(guess, cls, fw.ref, ad)
    kinds = {"src_kind": f"{fw.ref.name}::{guess}", "dst_kind": f"{ad.name}::{cls}"}
    try:
        if not src:
            raise RuleError(f"the checkpoint has no key under `{lead or '(top level)'}`")
        converted = rule.convert(src, dst, **kinds) if rule is not None else in_order(src, dst, **kinds)
    except RuleError as exc:
        for n, t, _ in tensors:
            for dk in keys.get(id(t), []):
                table.rows.append(ConvertRow("", None, "unmatched", dk, tuple(ad.shape(t)), str(exc)))
        return
    by_name = {n: t for n, t, _ in tensors}
    for c in converted:
        src_key = lead + c.src_name if not c.several else brace([lead + n for n in c.src_names])
        used.update(lead + n for n in c.src_names)
        dst_keys = keys.get(id(by_name[c.dst_name]), [])
        if dst_keys:
            table.put(dst_keys, c.array, ckpt.info(lead + c.src_names[0]).dtype)
            table.rows.append(ConvertRow(src_key, shape_in(ckpt, src_key), action_of(c), dst_keys[0],
                                         tuple(np.shape(c.array)),
                                         "also saved as " + ", ".join(dst_keys[1:]) if len(dst_keys) > 1 else ""))


# --- mode 3: names ----------------------------------------------------------------------------

_EMBEDDING_WORDS = ("emb", "wte", "wpe", "lookup")
BACKSLASH = "\\"  # the port's projection name is a regular expression: shown without its escapes


def _looks_like_embedding(layer_path: str) -> bool:
    return any(w in part.lower() for part in layer_path.split(".") for w in _EMBEDDING_WORDS)


def _layer_classes(ad, model) -> Dict[str, str]:
    """Class name of every layer of the model, by its path below the model ("" for the model)."""
    out = {}

    def walk(layer, path):
        out[path] = type(layer).__name__
        for name, child in ad.named_children(layer):
            walk(child, join(path, name))

    walk(model, "")
    return out


class _ByNames:
    """Mode 3: the seeds' torch2paddle recipe, by the checkpoint's names, with the names of both
    frameworks' tables (``classes``: the reference model's layer classes by path, when given)."""

    def __init__(self, table, ckpt, fw: Frameworks, classes: Optional[Dict[str, str]]):
        self.table, self.ckpt, self.fw, self.classes = table, ckpt, fw, classes
        self.src_names, self.dst_names = fw.ref.weight_tables.tensor_names, fw.port.weight_tables.tensor_names
        projection = self.src_names.get("rnn.projection")
        self.projection = re.compile(projection) if projection else None
        self.flip = fw.ref.weight_tables.linear_weight_layout != fw.port.weight_tables.linear_weight_layout
        self.singles = {self.src_names.get(f"attention.{p}_weight"): p for p in "qkv"}
        self.singles.pop(None, None)

    def run(self) -> None:
        for key, arr in self.ckpt.items():
            self.one(key, arr)

    def put(self, key, arr, dst_key, value, action, note="", guessed=False):
        self.table.put([dst_key], value, self.ckpt.info(key).dtype)
        self.table.rows.append(ConvertRow(key, tuple(arr.shape), action, dst_key, tuple(np.shape(value)), note,
                                          guessed))

    def one(self, key, arr) -> None:
        layer, last = key.rsplit(".", 1) if "." in key else ("", key)
        known = self.classes is not None
        fam = family(self.classes[layer]) if known and layer in self.classes else None
        n = self.src_names
        if last in self.fw.ref.weight_tables.skipped_buffers:
            self.table.rows.append(ConvertRow(key, tuple(arr.shape), "dropped", "", None,
                                              f"{self.fw.port.name} has no such tensor"))
        elif last in (n.get("batchnorm.mean"), n.get("batchnorm.variance")):
            role = "batchnorm.mean" if last == n.get("batchnorm.mean") else "batchnorm.variance"
            self.put(key, arr, join(layer, self.dst_names[role]), arr, "renamed", "BatchNorm statistics")
        elif last in (n.get("attention.packed_weight"), n.get("attention.packed_bias")) and arr.shape[0] % 3 == 0:
            self.packed(key, arr, layer, fam)
        elif last in self.singles:
            part = self.dst_names[f"attention.{self.singles[last]}_weight"]
            self.put(key, arr, join(layer, part), self._t(arr), "transposed", "MultiheadAttention projection",
                     not known or fam is None)
        elif self.projection is not None and self.projection.fullmatch(last):
            self.table.rows.append(ConvertRow(
                key, tuple(arr.shape), "unmatched", "", None,
                f"an LSTM projection: {self.fw.port.name} names it `<layer>."
                f"{self.dst_names.get('rnn.projection', '').replace(BACKSLASH, '')}`; pass the {self.fw.port.name} "
                "model to convert it"))
        else:
            self.plain(key, arr, layer, last, fam, known)

    def _t(self, arr):
        return np.ascontiguousarray(arr.T) if self.flip else arr

    def packed(self, key, arr, layer, fam) -> None:
        """A packed q/k/v projection, split into three (and transposed to the port's layout)."""
        e = arr.shape[0] // 3
        what = "weight" if arr.ndim == 2 else "bias"
        for i, proj in enumerate("qkv"):
            part = arr[i * e:(i + 1) * e]
            part = self._t(part) if arr.ndim == 2 else part
            self.put(key, arr, join(layer, self.dst_names[f"attention.{proj}_{what}"]), part, "split",
                     "MultiheadAttention: packed q/k/v split" + (" and transposed" if arr.ndim == 2 else ""),
                     fam != "multiheadattention")

    def plain(self, key, arr, layer, last, fam, known) -> None:
        """A tensor under its own name: a 2-D weight transposed where it is (or looks like) a
        Linear's; InstanceNorm and PReLU weights renamed."""
        guessed = not known or fam is None
        if last == "weight" and arr.ndim == 2:
            if known and fam is not None:
                if fam == "linear":
                    self.put(key, arr, key, self._t(arr), "transposed", "Linear weight")
                else:
                    self.put(key, arr, key, arr, "copied")
            elif _looks_like_embedding(layer):
                self.put(key, arr, key, arr, "copied", "2-D weight kept: the layer looks like an embedding", guessed)
            else:
                self.put(key, arr, key, self._t(arr), "transposed", "2-D weight assumed to be a Linear", guessed)
        elif known and fam in ("instancenorm", "prelu") and last == self.src_names.get(f"{fam}.{_ROLE[fam]}"):
            role = f"{fam}.{_ROLE[fam]}"
            self.put(key, arr, join(layer, self.dst_names[role]), arr, "renamed", _TITLE[fam])
        else:
            self.put(key, arr, key, arr, "copied")


_ROLE = {"instancenorm": "scale", "prelu": "weight"}
_TITLE = {"instancenorm": "InstanceNorm", "prelu": "PReLU"}


# --- which framework wrote the checkpoint ------------------------------------------------------

def _source_of(ckpt: Checkpoint, source, fw: Frameworks) -> Tuple[str, str]:
    """(framework, how it was decided)."""
    names = fw.names
    if source is not None:
        if source not in names:
            raise PadiffError(f"source must be {' or '.join(repr(n) for n in names)}, got {source!r}.")
        return source, ""
    if ckpt.framework in names:
        return ckpt.framework, ""
    scores = {}
    for ad, model in ((fw.ref, fw.ref_model), (fw.port, fw.port_model)):
        if model is not None:
            scores[ad.name] = sum(1 for k, t in ad.state_items(model)
                                  if k in ckpt and tuple(ckpt.info(k).shape) == tuple(ad.shape(t)))
    if scores and max(scores.values()) > 0 and len(set(scores.values())) > 1:
        best = max(scores, key=scores.get)
        return best, (f"the file does not say which framework wrote it; its shapes fit the {best} model's "
                      f"({scores[best]} of {len(ckpt)} keys): read as a {best} checkpoint")
    return fw.ref.name, (f"the file does not say which framework wrote it: read as a {fw.ref.name} checkpoint "
                         f"(say source='{fw.port.name}' / --from {fw.port.name} otherwise)") \
        if ckpt.kind == "safetensors" else ""


# --- writing ----------------------------------------------------------------------------------

def format_of(dst_path: str, dst_ad, fw: Frameworks) -> str:
    """"safetensors", or the framework whose own file format the path names (checked against
    ``dst_ad``'s, the framework whose layout the converted tensors are in)."""
    lower = dst_path.lower()
    if lower.endswith(".safetensors") or os.path.isdir(dst_path) or dst_path.endswith(("/", os.sep)):
        return "safetensors"
    ext = os.path.splitext(lower)[1]
    other = fw.port if dst_ad is fw.ref else fw.ref
    owner = next((ad for ad in (dst_ad, other) if ext in ad.state_file_suffixes), None)
    if owner is None:
        raise PadiffError(f"padiff writes .safetensors (or a folder for model.safetensors), {fw.port.state_file_label} "
                          f"or {fw.ref.state_file_label}; `{dst_path}` is none of them.")
    if owner is not dst_ad:
        raise PadiffError(f"`{dst_path}` is a {owner.name} file, but the converted tensors are in {dst_ad.name}'s "
                          f"layout: write a {dst_ad.state_file_suffixes[0]} or a .safetensors file.")
    return owner.name


def _write(table: ConvertTable, dst_path: str, max_shard_size, fw: Frameworks) -> Tuple[List[str], str]:
    """Write every job; (the files written, the path to read the checkpoint back from)."""
    dst_ad = fw.adapter(table.dst_framework)
    fmt = format_of(dst_path, dst_ad, fw)
    if fmt == "safetensors":
        entries = [TensorInfo(k, job.shape, job.dtype) for job in table._jobs for k in job.keys]
        writer = SafetensorsWriter(dst_path, entries, {"format": dst_ad.safetensors_formats[0]}, max_shard_size)
        try:
            for job in table._jobs:
                value = job.make()
                for k in job.keys:
                    writer.write(k, value)
                del value
        except BaseException:
            writer.abort()
            raise
        files = writer.close()
        return files, writer.index_path or files[0]
    if max_shard_size is not None:
        raise PadiffError(f"Shards are written for .safetensors only; `{dst_path}` is one {fmt} file.")
    state = OrderedDict()
    for job in table._jobs:
        value = job.make()
        for k in job.keys:
            state[k] = (value, job.dtype)
    folder = os.path.dirname(os.path.abspath(dst_path))
    os.makedirs(folder, exist_ok=True)
    dst_ad.save_raw(state, dst_path)
    return [dst_path], dst_path


# --- inputs -----------------------------------------------------------------------------------

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


def inputs_for(ad, value):
    """The inputs' arrays as ``ad``'s tensors, in the same structure."""
    if isinstance(value, dict):
        return {k: inputs_for(ad, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(inputs_for(ad, v) for v in value)
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        return ad.from_array(arr, str(arr.dtype))
    return value


def call_with(model, inp):
    """A no-argument callable running the model on the inputs."""
    if isinstance(inp, dict):
        return lambda: model(**inp)
    if isinstance(inp, (list, tuple)):
        return lambda: model(*inp)
    return lambda: model(inp)


# --- the conversion ---------------------------------------------------------------------------

def _mode(fw: Frameworks, src_fw: str, layer_map) -> str:
    """Which of the three ways (see the module docstring) the models given allow."""
    ref, port = fw.names
    if fw.port_model is not None and fw.ref_model is not None:
        return "models"
    if src_fw == port:
        raise PadiffError(f"Converting a {port} checkpoint into {ref} needs both models ({port}_model= and "
                          f"{ref}_model=; --{port}-model and --{ref}-model): the {ref} layout is read from them.")
    mode = f"{port} model" if fw.port_model is not None else f"{ref} model names" if fw.ref_model is not None \
        else "names"
    if layer_map is not None:
        raise PadiffError(f"A layer_map pairs the layers of two models: give both {port}_model and {ref}_model "
                          f"(--{port}-model and --{ref}-model) with it.")
    return mode


def _check_model(ad, model, what: str) -> None:
    if model is not None and not ad.is_layer(model):
        raise PadiffError(f"{what} is a {type(model).__name__}, not a {ad.layer_class}.")


def _run_mode(table, ckpt, fw: Frameworks, layer_map, inputs) -> None:
    if table.mode == "models":
        probe = None
        if inputs is not None:
            probe = (call_with(fw.ref_model, inputs_for(fw.ref, inputs)),
                     call_with(fw.port_model, inputs_for(fw.port, inputs)))
        _through_models(table, ckpt, fw, layer_map, probe)
    elif table.mode == "names" or fw.port_model is None:
        _check_model(fw.ref, fw.ref_model, f"{fw.ref.name}_model")
        classes = _layer_classes(fw.ref, fw.ref_model) if fw.ref_model is not None else None
        _ByNames(table, ckpt, fw, classes).run()
    else:
        _check_model(fw.port, fw.port_model, f"{fw.port.name}_model")
        _through_port_model(table, ckpt, fw, layer_map)


def convert(src_path, dst_path, fw: Frameworks, *, layer_map=None, source: Optional[str] = None, inputs=None,
            max_shard_size=None) -> Tuple[ConvertTable, Optional[str]]:
    """Convert the checkpoint at ``src_path`` (a path or a state dict) between ``fw``'s two
    frameworks and write it at ``dst_path`` (None: a dry run). Returns the table and the path the
    written checkpoint is read back from (None when nothing was written). ``inputs`` (numpy,
    :func:`load_inputs`) find fused layouts by running both models. Raises :class:`ConvertFailed`
    when the two models' weights cannot be paired (its ``plan`` says why)."""
    with open_checkpoint(src_path, framework=source) as ckpt:
        src_fw, how = _source_of(ckpt, source, fw)
        dst_fw = fw.names[1] if src_fw == fw.names[0] else fw.names[0]
        mode = _mode(fw, src_fw, layer_map)
        shown = os.fspath(src_path) if isinstance(src_path, (str, os.PathLike)) else "(state dict)"
        table = ConvertTable(shown, os.fspath(dst_path) if dst_path is not None else None, mode,
                             [ConvertRow(k, None, "dropped", "", None, why) for k, why in ckpt.dropped],
                             src_framework=src_fw, dst_framework=dst_fw, ref_framework=fw.ref.name)
        table.notes += ckpt.notes + ([how] if how else [])
        if dst_path is not None:
            format_of(os.fspath(dst_path), fw.adapter(dst_fw), fw)  # a wrong destination is said before any work
        _run_mode(table, ckpt, fw, layer_map, inputs)
        read_back = None
        if dst_path is not None and table._jobs:
            table.files, read_back = _write(table, os.fspath(dst_path), max_shard_size, fw)
            table.written = True
    table._jobs = []
    return table, read_back
