"""What a dump's manifest says, built from the recorded model and run: the header, the layer and
tensor tables, the inputs and each step's calls (their arrays written through the :class:`Writer`)."""

from __future__ import annotations

import datetime
import platform
import sys
from dataclasses import asdict
from typing import Dict, List, Tuple

import numpy as np

from ..record.trace import TensorRecord, Trace
from ..side import Side
from ..structure import flatten
from .folder_writer import Writer
from .format import FORMAT, VERSION
from .tp_layout import layer_layout


def _versions(ad) -> Dict[str, str]:
    fw = sys.modules.get(ad.name)
    pkg = sys.modules.get("padiff")
    return {
        ad.name: str(getattr(fw, "__version__", "?")),
        "padiff": str(getattr(pkg, "__version__", "?")),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _options_json(opts) -> dict:
    out = {}
    for k, v in asdict(opts).items():
        out[k] = [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
    return out


def manifest_header(side: Side, opts, notes) -> dict:
    ad = side.adapter
    return {
        "format": FORMAT,
        "version": VERSION,
        "complete": False,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "framework": ad.name,
        "framework_title": ad.title,
        "linear_weight_layout": ad.linear_weight_layout,
        "versions": _versions(ad),
        "model": {"class": type(side.model).__name__, "name": side.name, "repr": ad.layer_repr(side.model)},
        "options": _options_json(opts),
        "shown": {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in opts.shown().items()},
        "notes": list(notes),
    }


def build_layer_table(side: Side, tp_layout=None):
    """Every layer of the model (built-in layers' insides too), in registration order, and every
    parameter and buffer once: what the weight pairing of ``padiff.weights.assign`` reads.
    Tensor-parallel layers (by class, or by the user's ``tp_layout``) carry their layout."""
    ad = side.adapter
    layers: List[dict] = []
    layer_index: Dict[int, int] = {}
    tensors: List[dict] = []
    tensor_objs: List[object] = []
    tensor_index: Dict[int, int] = {}

    def tensor(t, path, is_param):
        key = id(t)
        if key not in tensor_index:
            tensor_index[key] = len(tensors)
            tensors.append({"index": len(tensors), "path": path, "is_param": is_param,
                            "dtype": ad.dtype_name(t), "shape": list(ad.shape(t))})
            tensor_objs.append(t)
        return tensor_index[key]

    stack = [(side.model, side.name, None, None)]
    while stack:  # depth first, children in order, without recursion (deep models)
        layer, path, parent_entry, name = stack.pop()
        if id(layer) in layer_index:
            parent_entry["children"].append([name, layer_index[id(layer)]])
            continue
        i = len(layers)
        layer_index[id(layer)] = i
        if parent_entry is not None:
            parent_entry["children"].append([name, i])
        entry = {"index": i, "path": path, "class": type(layer).__name__, "builtin": bool(ad.is_builtin(layer)),
                 "container": bool(ad.is_container(layer)), "training": bool(ad.is_training(layer)),
                 "repr": ad.layer_repr(layer), "children": [],
                 "params": [[n, tensor(t, f"{path}.{n}", True)] for n, t in ad.own_params(layer)],
                 "buffers": [[n, tensor(t, f"{path}.{n}", False)] for n, t in ad.own_buffers(layer)],
                 "transient": sorted(ad.transient_buffers(layer))}
        tp = layer_layout(ad, layer, path, side.name, tp_layout or {})
        if tp is not None:
            entry["tp"] = tp
        layers.append(entry)
        for cname, child in reversed(ad.named_children(layer)):
            stack.append((child, f"{path}.{cname}", entry, cname))
    return layers, tensors, tensor_objs, layer_index


def input_records(side: Side, inputs) -> List[Tuple[str, TensorRecord]]:
    ad = side.adapter
    leaves = flatten(list(inputs.values()) if isinstance(inputs, dict) else inputs, ad.is_tensor)
    out = []
    for id_path, leaf in leaves:
        if ad.is_tensor(leaf):
            out.append((id_path, TensorRecord(ad.to_numpy(leaf), ad.dtype_name(leaf), ad.shape(leaf))))
        elif isinstance(leaf, (np.ndarray, np.generic, bool, int, float)):
            out.append((id_path, TensorRecord.plain(leaf)))
    return out


def trace_entry(trace: Trace, w: Writer, folder: str, layer_index: Dict[int, int]) -> dict:
    index = {id(n): k for k, n in enumerate(trace.nodes)}
    nodes = []
    for k, n in enumerate(trace.nodes):
        base = f"{folder}/n{k}"
        nodes.append({
            "index": k, "kind": n.kind, "name": n.name, "path": n.path,
            "layer": layer_index.get(n.layer_key, -1) if n.kind == "net" else -1,
            "parent": index.get(id(n.parent)) if n.parent is not None else None,
            "children": [index[id(c)] for c in n.children if id(c) in index],
            "enter": n.enter_seq, "exit": n.exit_seq, "has_params": bool(n.has_params),
            "call_count": n.call_count,
            "input_ids": list(n.input_ids),
            "input_uses": dict(n.input_uses) if n.input_uses is not None else None,
            "in_prints": list(n.in_prints) if n.in_prints is not None else None,
            "frames": [[f.filename, f.lineno, f.function, f.line_text()] for f in n.frames],
            "outputs": [[i, w.record(r, f"{base}_out{j}")] for j, (i, r) in enumerate(n.outputs)],
            "grad_out": [[i, w.record(r, f"{base}_gout{j}")] for j, (i, r) in enumerate(n.grad_out.items())],
            "grad_in": [[i, w.record(r, f"{base}_gin{j}")] for j, (i, r) in enumerate(n.grad_in.items())],
        })
    return {
        "model_name": trace.model_name,
        "root": index.get(id(trace.root)) if trace.root is not None else None,
        "nodes": nodes,
        "loss": w.record(trace.loss, f"{folder}/loss") if trace.loss is not None else None,
    }
