"""Converting a torch checkpoint (.pth state dict) into a paddle .pdparams file.

Three ways, from the most to the least informed:

* both models given: the weight-copy plan of ``assign_weight`` (the same LayerMap, the same
  rules) is worked out between the two models, with the checkpoint's values in place of
  the torch model's own;
* the paddle model only: every paddle layer with weights takes the checkpoint keys under
  its own path and converts them with the rule for its class (BatchNorm statistics renamed,
  Linear weights transposed, ``in_proj_weight`` split for MultiHeadAttention, ...);
* no model: the seeds' ``torch2paddle.py`` recipe by names: 2-D ``.weight`` of layers that
  do not look like embeddings are transposed (Linear), ``running_mean``/``running_var``
  become ``_mean``/``_variance``, ``num_batches_tracked`` is dropped; every key decided by
  such a guess is marked as guessed. A torch model alone tells which layers are Linear.

The result is a :class:`ConvertTable` (data); ``report/weights.py`` prints it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import PadiffError
from ..frameworks import get_adapter
from .auto import SKIP_BUFFERS, state_of
from .rules import PADDLE_TO_TORCH_CLASS, RuleError, family, find_rule, in_order

DROPPED = ("num_batches_tracked",)


class ConvertFailed(PadiffError):
    """The two models' weights could not be paired (the report was printed)."""


@dataclass
class ConvertRow:
    src_key: str  # torch key ("" when the paddle key has no source)
    src_shape: Optional[Tuple[int, ...]]
    action: str  # copied | transposed | renamed | split | dropped | unmatched
    dst_key: str  # paddle key ("" when dropped or unmatched)
    dst_shape: Optional[Tuple[int, ...]]
    note: str = ""
    guessed: bool = False


@dataclass
class ConvertTable:
    """What ``convert_checkpoint`` did to every key; true when every paddle key got a value."""

    src_path: str
    dst_path: Optional[str]
    mode: str  # "models", "paddle model", "torch model names", "names"
    rows: List[ConvertRow] = field(default_factory=list)
    state: "OrderedDict[str, np.ndarray]" = field(default_factory=OrderedDict)
    written: bool = False

    @property
    def mode_text(self) -> str:
        return {
            "models": "mapped through both models",
            "paddle model": "mapped by the paddle model's layers",
            "torch model names": "by names, with the torch model's layer classes",
            "names": "by names only (the torch2paddle recipe)",
        }[self.mode]

    def counts(self) -> "OrderedDict[str, int]":
        out = OrderedDict((k, 0) for k in ("copied", "transposed", "renamed", "split", "dropped", "unmatched"))
        for r in self.rows:
            key = r.action.split(" ", 1)[0]
            out[key] = out.get(key, 0) + 1
        return out

    @property
    def unmatched(self) -> List[ConvertRow]:
        return [r for r in self.rows if r.action == "unmatched"]

    @property
    def missing(self) -> List[ConvertRow]:
        """Paddle keys that got no value."""
        return [r for r in self.rows if r.action == "unmatched" and r.dst_key]

    @property
    def guessed(self) -> List[ConvertRow]:
        return [r for r in self.rows if r.guessed]

    def __bool__(self) -> bool:
        return not self.missing


# --- reading the checkpoint --------------------------------------------------------------------

_WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "net", "network")


def _load_checkpoint(src, torch_ad) -> Tuple["OrderedDict[str, np.ndarray]", List[ConvertRow], str]:
    """The checkpoint's tensors as arrays, rows for what is not a tensor, and a note."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise PadiffError(f"The torch checkpoint `{path}` does not exist.")
        try:
            obj = torch_ad.load_file(path)
        except Exception as exc:  # a file torch cannot read: the user's to fix
            raise PadiffError(f"torch could not read `{path}` as a checkpoint ({type(exc).__name__}: {exc}). "
                              "Pass a file written by torch.save(model.state_dict(), path).") from exc
    else:
        obj = src
    note = ""
    if not hasattr(obj, "items"):
        raise PadiffError(f"The torch checkpoint holds a {type(obj).__name__}, not a state dict: save "
                          "model.state_dict(), not the model.")
    for _ in range(3):
        if any(torch_ad.is_tensor(v) for v in obj.values()):
            break
        inner = next((k for k in _WRAPPERS if hasattr(obj.get(k), "items")), None)
        if inner is None:
            break
        note += f"took the state dict under the checkpoint's `{inner}` key. "
        obj = obj[inner]
    rows, state = [], OrderedDict()
    for k, v in obj.items():
        if torch_ad.is_tensor(v):
            state[str(k)] = torch_ad.to_numpy(v)
        else:
            rows.append(ConvertRow(str(k), None, "dropped", "", None, f"not a tensor ({type(v).__name__})"))
    if state and all(k.startswith("module.") for k in state):
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
        note += "removed the `module.` prefix (a DataParallel checkpoint). "
    return state, rows, note.strip()


def _action(conv) -> str:
    note = conv.note or ""
    if note.startswith("split"):
        return "split"
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


def _paddle_keys(paddle_ad, model) -> Dict[int, List[str]]:
    keys: Dict[int, List[str]] = {}
    for k, t in paddle_ad.state_items(model):
        keys.setdefault(id(t), []).append(k)
    return keys


# --- mode 1: both models ----------------------------------------------------------------------

def _through_models(table, ckpt, paddle_model, torch_model, layer_map, stream):
    from ..report.weights import copy_failure_lines, structure_lines
    from ..side import make_sides
    from .assign import plan_copy

    sides, ref_i = make_sides(paddle_model, torch_model)
    src, dst = sides[ref_i], sides[1 - ref_i]
    if src.adapter.name != "torch" or dst.adapter.name != "paddle":
        raise PadiffError("convert_checkpoint takes a paddle model (paddle_model=) and a torch model "
                          f"(torch_model=); got a {src.adapter.name} and a {dst.adapter.name} model.")
    values, used = {}, set()
    for name, tensor in src.adapter.state_items(src.model):
        if name in ckpt:
            arr = ckpt[name]
            if tuple(arr.shape) != tuple(src.adapter.shape(tensor)):
                raise PadiffError(
                    f"The checkpoint's `{name}` has shape {list(arr.shape)} but the torch model's has "
                    f"{list(src.adapter.shape(tensor))}: the checkpoint was not saved from this torch model.")
            values[id(tensor)] = arr
    plan = plan_copy(src, dst, layer_map, values=values)
    if not plan.ok:
        for line in copy_failure_lines(plan, first_side=sides[0], layer_map=layer_map, header="[padiff convert]"):
            print(line, file=stream)
        raise ConvertFailed("The two models' weights could not be paired (see the report above): "
                            + plan.failure.message)
    for line in structure_lines(plan, header="[padiff convert]"):
        print(line, file=stream)
    keys = _paddle_keys(dst.adapter, dst.model)
    for link in plan.links:
        src_key = _join(_strip_root(link.src_unit.path), link.src_name)
        dst_keys = keys.get(id(link.dst_tensor), [])
        note = "" if id(link.src_tensor) in values else "not in the checkpoint: the torch model's own value"
        if src_key in ckpt:
            used.add(src_key)
        for dk in dst_keys:
            table.state[dk] = link.converted.array
        shape = tuple(np.shape(link.converted.array))
        if dst_keys:
            table.rows.append(ConvertRow(src_key, _shape_of(ckpt, src_key), _action(link.converted), dst_keys[0],
                                         shape, _with(note, "also saved as " + ", ".join(dst_keys[1:])
                                                      if len(dst_keys) > 1 else "")))
    _finish(table, ckpt, used, [(k, t) for k, t in dst.adapter.state_items(dst.model)], dst.adapter)


def _shape_of(ckpt, key):
    return tuple(ckpt[key].shape) if key in ckpt else None


def _with(a: str, b: str) -> str:
    return "; ".join(x for x in (a, b) if x)


def _finish(table, ckpt, used, dst_items, dst_ad):
    """Rows for dropped and unused checkpoint keys and for paddle keys left without a value."""
    for k, arr in ckpt.items():
        if k in used:
            continue
        if _last(k) in DROPPED:
            table.rows.append(ConvertRow(k, tuple(arr.shape), "dropped", "", None, "paddle has no such tensor"))
        else:
            table.rows.append(ConvertRow(k, tuple(arr.shape), "unmatched", "", None,
                                         "no paddle tensor takes it"))
    if dst_items is None:
        return
    for k, t in dst_items:
        if k not in table.state and _last(k) not in SKIP_BUFFERS:
            table.rows.append(ConvertRow("", None, "unmatched", k, tuple(dst_ad.shape(t)),
                                         "no source in the checkpoint"))


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
                src_key = lead + c.src_name
                used.add(src_key)
                dst_keys = keys.get(id(by_name[c.dst_name]), [])
                for dk in dst_keys:
                    table.state[dk] = c.array
                if dst_keys:
                    table.rows.append(ConvertRow(src_key, _shape_of(ckpt, src_key), _action(c), dst_keys[0],
                                                 tuple(np.shape(c.array)),
                                                 "also saved as " + ", ".join(dst_keys[1:]) if len(dst_keys) > 1
                                                 else ""))
    # Rows for paddle keys already reported as unmatched must not be repeated by _finish.
    reported = {r.dst_key for r in table.rows if r.dst_key}
    items = [(k, t) for k, t in ad.state_items(paddle_model) if k not in reported]
    _finish(table, ckpt, used, items, ad)


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
            table.state[dst_key] = value
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


# --- the function -------------------------------------------------------------------------------

def convert_checkpoint(src_path, dst_path=None, paddle_model=None, layer_map=None, torch_model=None, *,
                       verbose: bool = True, stream=None) -> ConvertTable:
    """Convert a torch checkpoint (a state dict saved with ``torch.save``, or the dict itself)
    into a paddle state dict and save it at ``dst_path`` with ``paddle.save`` (nothing is
    written when ``dst_path`` is None).

    With ``paddle_model`` (and optionally ``torch_model`` and a ``layer_map``) the keys are
    mapped by the models' layers with the same rules as ``assign_weight``; without, by the
    names (the seeds' torch2paddle recipe), saying which keys were guessed. Prints a table
    of what was copied, transposed, renamed, split, dropped or left unmatched, and returns
    it as a :class:`ConvertTable`, true when every paddle key got a value.
    """
    from .layer_map import LayerMap

    stream = stream or sys.stdout
    layer_map = LayerMap.create_from(layer_map)
    torch_ad = get_adapter("torch")
    ckpt, rows, note = _load_checkpoint(src_path, torch_ad)
    shown = os.fspath(src_path) if isinstance(src_path, (str, os.PathLike)) else "(state dict)"
    if paddle_model is not None and torch_model is not None:
        mode = "models"
    elif paddle_model is not None:
        mode = "paddle model"
    elif torch_model is not None:
        mode = "torch model names"
    else:
        mode = "names"
    if layer_map is not None and mode != "models":
        raise PadiffError("A layer_map pairs the layers of two models: give both paddle_model and torch_model "
                          "(--paddle-model and --torch-model) with it.")
    table = ConvertTable(shown, os.fspath(dst_path) if dst_path is not None else None, mode, list(rows))
    if mode == "models":
        _through_models(table, ckpt, paddle_model, torch_model, layer_map, stream)
    elif mode == "paddle model":
        if get_adapter("paddle").is_layer(paddle_model) is False:
            raise PadiffError(f"paddle_model is a {type(paddle_model).__name__}, not a paddle.nn.Layer.")
        _through_paddle_model(table, ckpt, paddle_model, layer_map)
    else:
        if torch_model is not None and not torch_ad.is_layer(torch_model):
            raise PadiffError(f"torch_model is a {type(torch_model).__name__}, not a torch.nn.Module.")
        _by_names(table, ckpt, _torch_classes(torch_model) if torch_model is not None else None)
    if dst_path is not None and table.state:
        folder = os.path.dirname(os.path.abspath(os.fspath(dst_path)))
        os.makedirs(folder, exist_ok=True)
        get_adapter("paddle").save_file(dict(table.state), os.fspath(dst_path))
        table.written = True
    if verbose:
        from ..report.weights import convert_table_lines

        if note:
            print(f"[padiff convert] Note: {note}", file=stream)
        for line in convert_table_lines(table):
            print(line, file=stream)
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
    return factory()


def main(argv=None) -> int:
    """``padiff convert SRC.pth DST.pdparams [--paddle-model module:factory] ...``; returns the
    exit status: 0 when every paddle key got a value, 1 when some did not or the models' weights
    could not be paired, 2 for a usage mistake or an input padiff cannot use."""
    parser = argparse.ArgumentParser(
        prog="padiff convert",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a torch checkpoint (state dict) into a paddle .pdparams file, with the rules of "
                    "assign_weight (Linear transposed, BatchNorm statistics renamed, num_batches_tracked dropped, "
                    "MultiheadAttention split, ...).\nWithout a model the keys are converted by their names "
                    "(the torch2paddle recipe) and the table says which were guessed.",
        epilog="exit status: 0 every paddle key got a value, 1 some did not (or the models' weights could not be "
               "paired), 2 usage error or unusable input.\n"
               "example: padiff convert resnet.pth resnet.pdparams --paddle-model my_port:ResNet50 "
               "--torch-model torchvision.models:resnet50 --auto")
    parser.add_argument("src", help="the torch checkpoint (.pth), saved with torch.save(model.state_dict(), path)")
    parser.add_argument("dst", help="the paddle file to write (.pdparams)")
    parser.add_argument("--paddle-model", metavar="MODULE:FACTORY",
                        help="builds the paddle model (a class or function taking no arguments); keys are then "
                             "mapped by its layers")
    parser.add_argument("--torch-model", metavar="MODULE:FACTORY",
                        help="builds the torch model; with --paddle-model keys are mapped through both models")
    parser.add_argument("--layer-map", metavar="MODULE:FUNCTION",
                        help="function(paddle_model, torch_model) returning a padiff.LayerMap")
    parser.add_argument("--auto", action="store_true",
                        help="pair the two models' layers with LayerMap.auto (needs both models)")
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
        table = convert_checkpoint(args.src, None if args.dry_run else args.dst, paddle_model=paddle_model,
                                   layer_map=layer_map, torch_model=torch_model)
    except ConvertFailed as exc:
        print(f"padiff convert: {exc}", file=sys.stderr)
        return 1
    except PadiffError as exc:
        print(f"padiff convert: error: {exc}", file=sys.stderr)
        return 2
    return 0 if table else 1
