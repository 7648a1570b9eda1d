"""``padiff.dump``: record one model's run into a folder, for comparing in another process.

The recording is auto_diff's own (``run_side``: forward, loss, backward, through the
model's framework adapter); this module only writes what it records. Arrays go to ``.npy``
files as each step finishes, the rest to ``manifest.json``; everything is written into
``PATH.partial-<pid>/`` first and renamed to ``PATH`` when complete.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
from dataclasses import asdict, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..auto_diff import (_clear_grads, _learning_rates, _random_layers, _step_optimizer, _step_scheduler,
                         make_call, run_side)
from ..errors import PadiffError
from ..frameworks import adapter_for
from ..options import build_options
from ..record.trace import TensorRecord, Trace
from ..report.console import P
from ..side import Side
from ..structure import flatten
from .format import FORMAT, MANIFEST, VERSION, partial_path, partial_pid, partials_of, pid_alive


def dump(model, inputs, path, loss_fn=None, optimizer=None, steps=None, options=None, scheduler=None,
         **kwargs) -> str:
    """Run ``model`` on ``inputs`` as ``auto_diff`` would run one of its two models, and write
    everything the comparison needs into the folder ``path``; returns ``path``.

    ``inputs`` is this model's input (a dict of keyword arguments, a list/tuple of positional
    ones, or one tensor); ``loss_fn``, ``optimizer`` and ``scheduler`` are this model's own
    (not pairs). Options are auto_diff's (``diff_phase``, ``steps``, ``api_check``, ...).
    Compare two dumps with ``padiff.compare_dumps(a, b)`` or ``padiff compare A B``.
    """
    path = os.fspath(path).rstrip(os.sep) or os.fspath(path)
    if steps is not None:
        kwargs["steps"] = steps
    opts = build_options(options, **kwargs)
    if opts.single_step:
        raise PadiffError(
            "single_step runs the tested model's layers on the reference model's inputs, so it needs both "
            "models in one process: use padiff.auto_diff for it, and dump without single_step.")
    ad = adapter_for(model, "model")
    if not ad.is_layer(model):
        raise PadiffError(f"padiff.dump takes a model (torch.nn.Module or paddle.nn.Layer), got a "
                          f"{type(model).__name__}.")
    for value, what in ((loss_fn, "loss_fn"), (optimizer, "optimizer"), (scheduler, "scheduler")):
        if isinstance(value, (list, tuple)):
            raise PadiffError(f"padiff.dump records one model: pass this model's own {what}, not a pair "
                              f"(got a {type(value).__name__} of {len(value)}).")
    side = Side(ad, model, type(model).__name__, ad.name)
    notes: List[str] = []
    if opts.steps > 1 and optimizer is None:
        notes.append(f"steps={opts.steps} without an optimizer would repeat the same step: padiff dumped 1 step. "
                     "Pass optimizer=... to train several steps.")
    opts = replace(opts, use_loss=loss_fn is not None, use_opt=optimizer is not None,
                   steps=opts.steps if optimizer is not None else 1, auto_weights=False)
    _check_target(path)
    call = make_call(side, inputs, notes, grad_inputs=opts.check_backward)
    rnd = _random_layers(side)
    if rnd:
        notes.append(f"The {side.label} model is in train mode with random layers ({', '.join(rnd[:3])}"
                     f"{', ...' if len(rnd) > 3 else ''}): their outputs cannot agree with another run. Call "
                     ".eval() on the model, or set their drop probability to 0, before dumping.")

    w = _Writer(path)
    try:
        manifest = _header(side, opts, notes)
        w.manifest(manifest, complete=False)
        layers, tensors, tensor_objs, layer_index = _layer_table(side)
        manifest["layers"] = layers
        manifest["tensors"] = tensors
        manifest["inputs"] = [[i, w.record(rec, f"inputs/i{k}")] for k, (i, rec) in enumerate(_inputs(side, inputs))]
        for t, entry in zip(tensor_objs, tensors):
            entry["init"] = w.record(TensorRecord(ad.to_numpy(t), ad.dtype_name(t), ad.shape(t)),
                                     f"weights/t{entry['index']}")
        need_loss = opts.check_backward or loss_fn is not None
        params = [(str(e["index"]), t) for t, e in zip(tensor_objs, tensors) if e["is_param"]]
        manifest["steps"] = []
        for step in range(opts.steps):
            _clear_grads(side)
            run = run_side(side, call, opts=opts, loss_fn=loss_fn, need_loss=need_loss, param_paths=params,
                           keep_inputs=False)
            entry = _trace_json(run.trace, w, f"steps/{step}", layer_index)
            entry["step"] = step
            entry["grads"] = {k: w.record(r, f"steps/{step}/grad_t{k}") for k, r in run.grads.items()}
            del run
            w.forget()
            if optimizer is not None:
                entry["lr"] = _learning_rates(side, optimizer)
                _step_optimizer(side, optimizer)
                if scheduler is not None:
                    _step_scheduler(side, scheduler)
                entry["weights"] = {str(e["index"]): w.record(TensorRecord(ad.to_numpy(t), ad.dtype_name(t),
                                                                           ad.shape(t)), f"steps/{step}/w_t{e['index']}")
                                    for t, e in zip(tensor_objs, tensors)}
            manifest["steps"].append(entry)
        w.manifest(manifest, complete=True)
        w.commit()
    except BaseException:
        w.abort()
        raise
    finally:
        if optimizer is None:
            _clear_grads(side)
    calls = sum(len(s["nodes"]) for s in manifest["steps"])
    print(f"{P} Dumped {side.name} ({ad.name}, {len(manifest['steps'])} step"
          f"{'s' if len(manifest['steps']) != 1 else ''}, {calls} recorded calls) to `{path}`.")
    for n in notes:
        print(f"{P} NOTE: {n}")
    return path


# --- the target folder ----------------------------------------------------------------------------

def _check_target(path: str) -> None:
    """Refuse to overwrite anything but an earlier dump; remove unfinished dumps of dead processes."""
    for p in partials_of(path):
        if partial_pid(p) != os.getpid() and pid_alive(partial_pid(p)):
            raise PadiffError(f"Another padiff.dump into `{path}` is running (process {partial_pid(p)}, writing "
                              f"`{p}`). Wait for it, or dump into another folder.")
        shutil.rmtree(p, ignore_errors=True)
    if not os.path.exists(path):
        return
    if os.path.isdir(path) and (not os.listdir(path) or _is_padiff_manifest(os.path.join(path, MANIFEST))):
        return  # an empty folder or an earlier dump (finished or not): replaced when this one is complete
    raise PadiffError(f"`{path}` exists and is not a padiff dump: padiff.dump will not overwrite it. Choose "
                      "another folder, or remove it.")


def _is_padiff_manifest(file: str) -> bool:
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class _Writer:
    """Writes into ``PATH.partial-<pid>``; ``commit`` renames it to ``PATH``."""

    def __init__(self, path: str):
        self.path = path
        self.root = partial_path(path, os.getpid())
        self._seen: Dict[int, tuple] = {}  # id(record) -> (record, manifest entry)
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            os.makedirs(self.root)
        except OSError as exc:
            raise PadiffError(f"Cannot create the dump folder `{self.root}`: {exc.strerror or exc}. Choose a "
                              "writable place for the dump.") from None

    def array(self, arr: np.ndarray, rel: str) -> str:
        rel = rel + ".npy"
        full = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        try:
            np.save(full, np.ascontiguousarray(arr), allow_pickle=False)
        except OSError as exc:
            raise PadiffError(f"Writing the dump `{self.path}` failed: {exc.strerror or exc} (disk full?).") from None
        return rel

    def record(self, rec: TensorRecord, rel: str) -> dict:
        """The manifest entry of a record, its array written once: the recorder shares one record
        between the calls that saw the same tensor, and so do the entries (one file)."""
        seen = self._seen.get(id(rec))
        if seen is not None and seen[0] is rec:
            return dict(seen[1])
        if rec.array is not None and rec.array.dtype != object and (rec.is_tensor or rec.value is None):
            kind = "tensor" if rec.is_tensor else "array"
            shape = list(rec.shape) if rec.is_tensor else list(rec.array.shape)
            entry = {"kind": kind, "dtype": rec.dtype, "shape": shape, "file": self.array(rec.array, rel)}
            self._seen[id(rec)] = (rec, entry)
            return dict(entry)
        return {"kind": "value", "dtype": rec.dtype, "value": _jsonable(rec.value)}

    def forget(self) -> None:
        """Drop the records of a finished step (their arrays are on disk)."""
        self._seen.clear()

    def manifest(self, manifest: dict, complete: bool) -> None:
        """The manifest, replaced whole; the final one ("complete": true) is synced to disk."""
        manifest["complete"] = complete
        tmp = os.path.join(self.root, MANIFEST + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=None, separators=(",", ":"))
                if complete:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, os.path.join(self.root, MANIFEST))
        except OSError as exc:
            raise PadiffError(f"Writing the dump `{self.path}` failed: {exc.strerror or exc} (disk full?).") from None

    def commit(self) -> None:
        old = None
        if os.path.exists(self.path):
            old = f"{self.path}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
        os.replace(self.root, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --- what is written ------------------------------------------------------------------------------

def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    return {"repr": repr(value), "type": type(value).__name__}


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


def _header(side: Side, opts, notes) -> dict:
    ad = side.adapter
    return {
        "format": FORMAT,
        "version": VERSION,
        "complete": False,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "framework": ad.name,
        "framework_title": ad.title,
        "versions": _versions(ad),
        "model": {"class": type(side.model).__name__, "name": side.name, "repr": ad.layer_repr(side.model)},
        "options": _options_json(opts),
        "shown": {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in opts.shown().items()},
        "notes": list(notes),
    }


def _layer_table(side: Side):
    """Every layer of the model (built-in layers' insides too), in registration order, and every
    parameter and buffer once: what the weight pairing of ``padiff.weights.assign`` reads."""
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
                 "buffers": [[n, tensor(t, f"{path}.{n}", False)] for n, t in ad.own_buffers(layer)]}
        layers.append(entry)
        for cname, child in reversed(ad.named_children(layer)):
            stack.append((child, f"{path}.{cname}", entry, cname))
    return layers, tensors, tensor_objs, layer_index


def _inputs(side: Side, inputs) -> List[Tuple[str, TensorRecord]]:
    ad = side.adapter
    leaves = flatten(list(inputs.values()) if isinstance(inputs, dict) else inputs, ad.is_tensor)
    out = []
    for id_path, leaf in leaves:
        if ad.is_tensor(leaf):
            out.append((id_path, TensorRecord(ad.to_numpy(leaf), ad.dtype_name(leaf), ad.shape(leaf))))
        elif isinstance(leaf, (np.ndarray, np.generic, bool, int, float)):
            out.append((id_path, TensorRecord.plain(leaf)))
    return out


def _trace_json(trace: Trace, w: _Writer, folder: str, layer_index: Dict[int, int]) -> dict:
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
