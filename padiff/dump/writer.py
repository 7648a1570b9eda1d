"""``padiff.dump``: record one model's run into a folder, for comparing in another process.

The recording is auto_diff's own (``padiff.run``'s ``run_side``: forward, loss, backward,
through the model's framework adapter); this module only hands what it records to the folder
writer (``folder_writer.py``). Each array goes to its ``.npy`` file as it is recorded
(``ArrayFiles``, run_side's ``spill``), straight from the tensor's memory where the framework
shows it, and the run holds a placeholder instead of the array: a dump's memory does not grow
with the model. When the framework leaves a CPU core idle, a worker thread writes the files
while the model runs on (``npy_writer.Worker``). The rest goes to ``manifest.json``
(``manifest_entries.py``); everything is written into ``PATH.partial-<pid>/`` first and renamed
to ``PATH`` when complete.
"""

from __future__ import annotations

import os
import shutil
from typing import List

import numpy as np

from .._memory import spare_existing_objects
from ..compare.overlap import wants_overlap
from ..errors import PadiffError
from ..frameworks import adapter_for, type_choices
from ..options import build_options
from ..record.trace import TensorRecord
from ..report.console import P
from ..run.prepare import make_call, random_layer_note, refuse_single_step, training_options
from ..run.record import run_side
from ..run.train import clear_grads, train_step
from ..side import Side
from .folder_writer import Writer
from .format import MANIFEST, is_padiff_manifest, partial_pid, partials_of, pid_alive
from .manifest_entries import build_layer_table, input_records, manifest_header, trace_entry
from .parallel_groups import describe_run, run_entry
from .ranks import prepare_folder
from .tp_layout import layout_map


def dump(model, inputs, path, loss_fn=None, optimizer=None, steps=None, options=None, scheduler=None,
         tp_layout=None, tp_size=None, **kwargs) -> str:
    """Run ``model`` on ``inputs`` as ``auto_diff`` would run one of its two models, and write
    everything the comparison needs into the folder ``path``; returns ``path``.

    ``inputs`` is this model's input (a dict of keyword arguments, a list/tuple of positional
    ones, or one tensor); ``loss_fn``, ``optimizer`` and ``scheduler`` are this model's own
    (not pairs). Options are auto_diff's (``diff_phase``, ``steps``, ``api_check``, ...).
    Compare two dumps with ``padiff.compare_dumps(a, b)`` or ``padiff compare A B``.

    Inside a torch.distributed or paddle.distributed run each rank writes its own dump into
    ``path/rank<k>`` and returns that folder; its manifest says the rank, the world size and the
    parallel groups the framework knows. A data-parallel wrapper (DistributedDataParallel,
    paddle.DataParallel) is called as given and the model inside it recorded. Tensor-parallel
    layers are found from their classes (ColumnParallelLinear, RowParallelLinear,
    VocabParallelEmbedding) or declared with ``tp_layout={"mlp.up": "column", "mlp.down": "row"}``
    (dotted paths below the model, fnmatch patterns allowed); ``tp_size`` says how many
    consecutive ranks form a tensor-parallel group where the framework does not (torch).
    """
    path = os.fspath(path).rstrip(os.sep) or os.fspath(path)
    if steps is not None:
        kwargs["steps"] = steps
    opts = build_options(options, **kwargs)
    refuse_single_step(opts, recorded=False)
    ad = _check_arguments(model, loss_fn, optimizer, scheduler)
    caller = model
    notes: List[str] = []
    model = _unwrapped(ad, model, notes)
    mapping = layout_map(tp_layout)
    side = Side(ad, model, type(model).__name__, ad.name)
    layer_table = build_layer_table(side, mapping)
    path, ranked = _rank_folder(path, ad, layer_table, tp_size, notes)
    opts = training_options(opts, loss_fn is not None, optimizer is not None, notes, dumped=True, auto_weights=False)
    _check_target(path)
    call = make_call(Side(ad, caller, side.name, side.label), inputs, notes, grad_inputs=opts.check_backward)
    note = random_layer_note(side, dumped=True)
    if note:
        notes.append(note)
    # arrays are written as the model runs; by a worker thread when the framework leaves a CPU
    # core idle (as auto_diff compares while the model runs; the option overlap decides)
    w = Writer(path, wants_overlap(opts.overlap, ad, model))
    try:
        manifest = manifest_header(side, opts, notes)
        if ranked is not None:
            manifest["distributed"] = ranked
        w.manifest(manifest, complete=False)
        _record(w, manifest, side, layer_table, inputs, call, opts, loss_fn, optimizer, scheduler)
        w.drain()  # every array in its file before the manifest says the dump is complete
        w.manifest(manifest, complete=True)
        w.commit()
    except BaseException:
        w.abort()
        raise
    finally:
        if optimizer is None:
            clear_grads(side)
    _say_dumped(side, manifest, ranked, path, notes)
    return path


def _check_arguments(model, loss_fn, optimizer, scheduler):
    """The model's adapter; a PadiffError for what is not one model and its own functions."""
    ad = adapter_for(model, "model")
    if not ad.is_layer(model):
        raise PadiffError(f"padiff.dump takes a model ({type_choices('model')}), got a "
                          f"{type(model).__name__}.")
    for value, what in ((loss_fn, "loss_fn"), (optimizer, "optimizer"), (scheduler, "scheduler")):
        if isinstance(value, (list, tuple)):
            raise PadiffError(f"padiff.dump records one model: pass this model's own {what}, not a pair "
                              f"(got a {type(value).__name__} of {len(value)}).")
    return ad


def _unwrapped(ad, model, notes: List[str]):
    """The model inside a data-parallel wrapper (recorded under its own name, called through
    the wrapper), else the model."""
    inner = ad.data_parallel_inner(model)
    if inner is None:
        return model
    notes.append(f"The model was given inside {type(model).__name__}: padiff called the wrapper and recorded "
                 f"the {type(inner).__name__} inside it.")
    return inner


def _rank_folder(path: str, ad, layer_table, tp_size, notes: List[str]):
    """(the folder this process writes, the manifest's "distributed" entry or None): inside a
    distributed run each rank writes ``path/rank<k>``."""
    info = ad.distributed_info()
    if info is None:
        if tp_size is not None:
            notes.append(f"tp_size={tp_size} was ignored: this process is not part of a distributed run.")
        return path, None
    tp_layers = sum(1 for e in layer_table[0] if e.get("tp"))
    ranked = run_entry(info, tp_size, tp_layers, notes)
    prepare_folder(path, ranked["rank"], ranked["world_size"])
    return os.path.join(path, f"rank{ranked['rank']}"), ranked


def _record(w: "Writer", manifest: dict, side: Side, layer_table, inputs, call, opts, loss_fn, optimizer,
            scheduler) -> None:
    """The inputs, the initial weights and every step, written and entered in ``manifest``."""
    ad = side.adapter
    layers, tensors, tensor_objs, layer_index = layer_table
    manifest["layers"] = layers
    manifest["tensors"] = tensors
    viewing = Side(_ViewingAdapter(ad), side.model, side.name, side.label)  # each array is written at once
    manifest["inputs"] = [[i, w.record(rec, f"inputs/i{k}")] for k, (i, rec) in
                          enumerate(input_records(viewing, inputs))]
    for t, entry in zip(tensor_objs, tensors):
        entry["init"] = w.record(TensorRecord(viewing.adapter.to_numpy(t), ad.dtype_name(t), ad.shape(t)),
                                 f"weights/t{entry['index']}")
    params = [(str(e["index"]), t) for t, e in zip(tensor_objs, tensors) if e["is_param"]]
    manifest["steps"] = []
    for step in range(opts.steps):
        clear_grads(side)
        files = w.files(f"steps/{step}")
        with spare_existing_objects():
            run = run_side(viewing, call, opts=opts, loss_fn=loss_fn,
                           need_loss=opts.check_backward or loss_fn is not None, param_paths=params,
                           keep_inputs=False, spill=files)
        files.check()
        # the loss and the parameter gradients are views of the tensors (not kept by the
        # spill): written now, before the optimizer step or the next run changes them
        entry = trace_entry(run.trace, w, f"steps/{step}", layer_index)
        entry["step"] = step
        entry["grads"] = {k: w.record(r, f"steps/{step}/grad_t{k}") for k, r in run.grads.items()}
        del run
        w.forget()
        if optimizer is not None:
            entry["lr"] = train_step(side, optimizer, scheduler)
            entry["weights"] = {str(e["index"]): w.record(TensorRecord(viewing.adapter.to_numpy(t),
                                                                       ad.dtype_name(t), ad.shape(t)),
                                                          f"steps/{step}/w_t{e['index']}")
                                for t, e in zip(tensor_objs, tensors)}
        manifest["steps"].append(entry)


def _say_dumped(side: Side, manifest: dict, ranked, path: str, notes: List[str]) -> None:
    calls = sum(len(s["nodes"]) for s in manifest["steps"])
    where = f", {describe_run(ranked)}" if ranked is not None else ""
    n = len(manifest["steps"])
    print(f"{P} Dumped {side.name} ({side.adapter.name}{where}, {n} step{'s' if n != 1 else ''}, {calls} recorded "
          f"calls) to `{path}`.")
    for note in notes:
        print(f"{P} NOTE: {note}")


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
    if os.path.isdir(path) and (not os.listdir(path) or is_padiff_manifest(os.path.join(path, MANIFEST))):
        return  # an empty folder or an earlier dump (finished or not): replaced when this one is complete
    raise PadiffError(f"`{path}` exists and is not a padiff dump: padiff.dump will not overwrite it. Choose "
                      "another folder, or remove it.")


class _ViewingAdapter:
    """The model's adapter, except that ``to_numpy`` gives a view of a CPU tensor's memory
    (``host_view``) where there is one, instead of a copy. The recorder already hands views
    to the spill, which writes them at once; this makes the rest the dump writes at once
    (run_side's loss and parameter gradients, the weights) views too: the dump writes each
    before anything runs again, so the copy would be made only to be written and dropped."""

    def __init__(self, adapter):
        self._adapter = adapter

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def to_numpy(self, tensor) -> np.ndarray:
        try:
            view = self._adapter.host_view(tensor)
        except RuntimeError:  # e.g. a torch tensor with its conjugate or negative bit set
            view = None
        return view if view is not None else self._adapter.to_numpy(tensor)
