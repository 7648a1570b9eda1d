"""Loading a dump: the manifest is read at once, arrays only when a comparison reads them.

Traces come back as the recorder's own ``Trace``/``Node``/``TensorRecord`` objects, so the
comparison code runs on them unchanged. A record's array is memory-mapped from its ``.npy``
file each time it is read (nothing is kept open or in RAM). The model's layers come back as
:class:`DumpLayer` objects behind a :class:`DumpAdapter`, a framework-free adapter, so the
weight pairing of ``padiff.weights.assign`` runs on a dump as on a live model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import PadiffError
from ..frameworks import names_of, tables_for
from ..frameworks.base import RecordedModelAdapter
from ..record.trace import Node, SourceFrame, TensorRecord, Trace
from .format import manifest_files, read_manifest


# --- records --------------------------------------------------------------------------------------

class LazyRecord(TensorRecord):
    """A TensorRecord whose array is read (memory-mapped) from its file when asked for."""

    def __init__(self, file: str, dtype: str, shape, is_tensor: bool = True):
        self.file = file
        self.dtype = dtype
        self.shape = tuple(shape)
        self.value = None
        self.is_tensor = is_tensor

    @property
    def array(self) -> np.ndarray:
        try:
            arr = np.load(self.file, mmap_mode="r", allow_pickle=False)
        except ValueError:  # an empty array cannot be mapped
            arr = np.load(self.file, allow_pickle=False)
        except OSError as exc:
            raise PadiffError(f"The dump array `{self.file}` cannot be read ({exc.strerror or exc}): the dump was "
                              "damaged after it was written. Re-run padiff.dump.") from None
        return arr

    @array.setter
    def array(self, value) -> None:
        raise AttributeError("a dumped record is read-only")

    def __repr__(self) -> str:
        return f"LazyRecord({self.file!r}, dtype={self.dtype!r}, shape={self.shape})"


@dataclass(frozen=True)
class StoredFrame(SourceFrame):
    """A source frame whose line text was read when the dump was made (the file may be elsewhere)."""

    text: str = ""

    def line_text(self) -> str:
        return self.text


# --- layers and tensors -----------------------------------------------------------------------------

class DumpTensor:
    """A parameter or buffer of a dumped model: its shape and dtype; values are read from the dump."""

    def __init__(self, dump: "Dump", entry: dict):
        self.dump = dump
        self.index = int(entry["index"])
        self.path = entry["path"]
        self.shape = tuple(entry["shape"])
        self.dtype = entry["dtype"]
        self.is_param = bool(entry["is_param"])
        self.init = entry["init"]

    def __repr__(self) -> str:
        return f"DumpTensor({self.path!r}, shape={list(self.shape)}, dtype={self.dtype!r})"


class DumpLayer:
    """A layer of a dumped model. Each class name gets its own subclass, so ``type(layer).__name__``
    is the model's class name, as the weight rules expect."""

    def __init__(self, entry: dict):
        self.index = int(entry["index"])
        self.path = entry["path"]
        self.builtin = bool(entry["builtin"])
        self.container = bool(entry["container"])
        self.training = bool(entry.get("training", False))
        self.text = entry.get("repr", entry["class"] + "()")
        self.children: List[Tuple[str, "DumpLayer"]] = []
        self.params: List[Tuple[str, DumpTensor]] = []
        self.buffers: List[Tuple[str, DumpTensor]] = []
        self.transient: set = set()  # own buffers a checkpoint leaves out

    def __repr__(self) -> str:
        return self.text


_LAYER_CLASSES: Dict[str, type] = {}


def _layer_class(name: str) -> type:
    if name not in _LAYER_CLASSES:
        _LAYER_CLASSES[name] = type(name, (DumpLayer,), {"__module__": __name__})
    return _LAYER_CLASSES[name]


def _named(layer: DumpLayer, attr: str):
    """All tensors below a layer with dotted names, each layer and tensor once, own first: the
    order of torch's ``named_parameters`` and paddle's."""
    out, seen_t, seen_l = [], set(), set()
    stack = [(layer, "")]
    while stack:
        l, prefix = stack.pop()
        if id(l) in seen_l:
            continue
        seen_l.add(id(l))
        for n, t in getattr(l, attr):
            if id(t) not in seen_t:
                seen_t.add(id(t))
                out.append((prefix + n, t))
        for n, c in reversed(l.children):
            stack.append((c, f"{prefix}{n}."))
    return out


class DumpAdapter(RecordedModelAdapter):
    """The adapter protocol, as far as weight pairing and reports use it, over a dump."""

    def __init__(self, dump: "Dump"):
        self.dump = dump
        self.name = dump.framework
        self.title = dump.manifest.get("framework_title") or dump.framework.capitalize()
        # the recording framework's names table (no import of the framework); a framework this
        # padiff does not know ranks lowest and pairs its calls by their own names
        names = names_of(self.name)
        self.reference_rank = names.reference_rank if names else -1
        self.api_spellings = dict(names.api_spellings) if names else {}
        self.weight_tables = tables_for(self.name)  # declared data, read without the framework
        self.linear_weight_layout = dump.manifest.get("linear_weight_layout") or (
            self.weight_tables.linear_weight_layout if self.weight_tables is not None else None)

    def is_layer(self, obj) -> bool:
        return isinstance(obj, DumpLayer)

    def is_tensor(self, obj) -> bool:
        return isinstance(obj, DumpTensor)

    def is_builtin(self, layer) -> bool:
        return layer.builtin

    def is_container(self, layer) -> bool:
        return layer.container

    def named_children(self, layer):
        return list(layer.children)

    def own_params(self, layer):
        return list(layer.params)

    def own_buffers(self, layer):
        return list(layer.buffers)

    def transient_buffers(self, layer):
        return set(layer.transient)

    def all_params(self, layer):
        return _named(layer, "params")

    def all_buffers(self, layer):
        return _named(layer, "buffers")

    def is_training(self, layer) -> bool:
        return layer.training

    def random_layer_p(self, layer):
        return None

    def layer_repr(self, layer) -> str:
        return layer.text

    def shape(self, tensor):
        return tensor.shape

    def dtype_name(self, tensor) -> str:
        return tensor.dtype

    def has_data(self, tensor) -> bool:
        return True  # a dump holds every tensor's values

    def to_numpy(self, tensor) -> np.ndarray:
        """The value before the first step (what the weight rules convert)."""
        return self.dump.record(tensor.init).array


# --- the dump ---------------------------------------------------------------------------------------

class Dump:
    """A complete dump, loaded lazily. ``load_dump(path)`` makes one (and refuses a dump that is
    not whole)."""

    def __init__(self, path: str, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.framework: str = manifest["framework"]
        self.model_name: str = manifest["model"]["name"]
        self.model_class: str = manifest["model"]["class"]
        self.options: dict = manifest.get("options", {})
        self.notes: List[str] = list(manifest.get("notes", []))
        self.steps: int = len(manifest["steps"])
        self.tensors: List[DumpTensor] = [DumpTensor(self, e) for e in manifest["tensors"]]
        self.layers: List[DumpLayer] = []
        for e in manifest["layers"]:
            self.layers.append(_layer_class(e["class"])(e))
        for e, layer in zip(manifest["layers"], self.layers):
            layer.children = [(n, self.layers[i]) for n, i in e["children"]]
            layer.params = [(n, self.tensors[i]) for n, i in e["params"]]
            layer.buffers = [(n, self.tensors[i]) for n, i in e["buffers"]]
            layer.transient = set(e.get("transient", ()))  # older dumps do not say: all persistent
        self.model: DumpLayer = self.layers[0]
        self.adapter = DumpAdapter(self)

    # --- what was dumped ---------------------------------------------------------------------
    @property
    def check_backward(self) -> bool:
        return self.options.get("diff_phase", "both") in ("backward", "both")

    @property
    def use_loss(self) -> bool:
        return bool(self.options.get("use_loss"))

    @property
    def use_opt(self) -> bool:
        return bool(self.options.get("use_opt"))

    def has_api_calls(self) -> bool:
        return any(n["kind"] == "api" for s in self.manifest["steps"] for n in s["nodes"])

    def __repr__(self) -> str:
        return (f"Dump({self.path!r}, framework={self.framework!r}, model={self.model_class!r}, "
                f"steps={self.steps})")

    # --- records -----------------------------------------------------------------------------
    def record(self, entry, shared: Optional[dict] = None) -> Optional[TensorRecord]:
        """The TensorRecord of one manifest record (arrays lazy). Entries naming the same file
        give the same record object through ``shared`` (as the recorder shared them)."""
        if entry is None:
            return None
        kind = entry["kind"]
        if kind in ("tensor", "array"):
            key = (entry["file"], entry["dtype"], tuple(entry["shape"]), kind)
            if shared is not None and key in shared:
                return shared[key]
            rec = LazyRecord(os.path.join(self.path, entry["file"]), entry["dtype"], entry["shape"],
                             is_tensor=kind == "tensor")
            if shared is not None:
                shared[key] = rec
            return rec
        if kind == "object":
            return TensorRecord.object(entry["dtype"])
        value = entry.get("value")
        if isinstance(value, dict) and "complex" in value:
            value = complex(*value["complex"])
        elif isinstance(value, dict):  # an object, as dumps before format "object" entries kept it
            return TensorRecord.object(value.get("type", entry["dtype"]))
        if isinstance(value, (bool, int, float, complex)):
            return TensorRecord(np.asarray(value), entry["dtype"], (), value, False)
        return TensorRecord(None, entry["dtype"], (), value, False)

    def inputs(self) -> List[Tuple[str, TensorRecord]]:
        return [(i, self.record(r)) for i, r in self.manifest.get("inputs", [])]

    def loss(self, step: int) -> Optional[TensorRecord]:
        return self.record(self.manifest["steps"][step].get("loss"))

    def lr(self, step: int):
        return self.manifest["steps"][step].get("lr")

    def grad(self, tensor: DumpTensor, step: int) -> Optional[TensorRecord]:
        return self.record(self.manifest["steps"][step].get("grads", {}).get(str(tensor.index)))

    def weight_after(self, tensor: DumpTensor, step: int) -> Optional[TensorRecord]:
        """The tensor's value after the optimizer step of ``step`` (None without an optimizer)."""
        return self.record(self.manifest["steps"][step].get("weights", {}).get(str(tensor.index)))

    def initial(self, tensor: DumpTensor) -> TensorRecord:
        """The tensor's value before the first step."""
        return self.record(tensor.init)

    def trace(self, step: int = 0, api: bool = True) -> Trace:
        """The recorded call tree of one step, as the recorder made it (arrays lazy). Without
        ``api`` the framework calls are left out."""
        s = self.manifest["steps"][step]
        trace = Trace(self.framework, s.get("model_name", self.model_name), api_spellings=self.adapter.api_spellings)
        nodes: Dict[int, Node] = {}
        shared: dict = {}
        for e in s["nodes"]:
            if e["kind"] == "api" and not api:
                continue
            n = Node(index=e["index"], kind=e["kind"], name=e["name"], path=e["path"], layer_key=e["layer"],
                     enter_seq=e["enter"], exit_seq=e["exit"], has_params=e["has_params"],
                     call_count=e["call_count"])
            n.frames = tuple(StoredFrame(f[0], f[1], f[2], f[3] if len(f) > 3 else "") for f in e["frames"])
            n.input_ids = list(e.get("input_ids", ()))
            uses = e.get("input_uses")
            n.input_uses = dict(uses) if uses is not None else None
            prints = e.get("in_prints")
            n.in_prints = tuple(prints) if prints is not None else None
            n.outputs = [(i, self.record(r, shared)) for i, r in e["outputs"]]
            n.grad_out = {i: self.record(r, shared) for i, r in e["grad_out"]}
            n.grad_in = {i: self.record(r, shared) for i, r in e["grad_in"]}
            nodes[e["index"]] = n
            trace.nodes.append(n)
        for e in s["nodes"]:
            n = nodes.get(e["index"])
            if n is None:
                continue
            if e["parent"] is not None:
                n.parent = nodes.get(e["parent"])
            n.children = [nodes[c] for c in e["children"] if c in nodes]
        trace.root = nodes.get(s["root"]) if s.get("root") is not None else None
        trace.loss = self.record(s.get("loss"), shared)
        return trace


def open_dump(path) -> Dump:
    """Open the single dump at ``path`` (made by ``padiff.dump``). Refuses, with a PadiffError, a
    dump that is missing, unfinished, interrupted, of another format or damaged. A distributed
    dump (a folder of ``rank<k>`` dumps) is opened by ``padiff.dump.load_dump``."""
    path = os.fspath(path)
    manifest = read_manifest(path)
    missing = [f for f in dict.fromkeys(manifest_files(manifest)) if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise PadiffError(f"The padiff dump `{path}` is damaged: {len(missing)} array file(s) are missing (first: "
                          f"`{missing[0]}`). Re-run padiff.dump(model, inputs, path) to make it again.")
    try:
        return Dump(path, manifest)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PadiffError(f"The manifest of the padiff dump `{path}` is damaged ({type(exc).__name__}: {exc}). "
                          "Re-run padiff.dump(model, inputs, path) to make it again.") from None
