"""``padiff.dump``: record one model's run into a folder, for comparing in another process.

The recording is auto_diff's own (``padiff.run``'s ``run_side``: forward, loss, backward,
through the model's framework adapter); this module only writes what it records. Each array goes to its
``.npy`` file as it is recorded (``_ArrayFiles``, run_side's ``spill``), straight from the
tensor's memory where the framework shows it, and the run holds a placeholder instead of the
array: a dump's memory does not grow with the model. When the framework leaves a CPU core
idle, a worker thread writes the files while the model runs on (``_Worker``). The rest goes
to ``manifest.json``; everything is written into ``PATH.partial-<pid>/`` first and renamed to
``PATH`` when complete.
"""

from __future__ import annotations

import collections
import datetime
import io
import json
import os
import platform
import shutil
import sys
import threading
from dataclasses import asdict
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..compare.overlap import wants_overlap
from ..errors import PadiffError, PadiffInternalError
from ..frameworks import adapter_for, type_choices
from ..options import build_options
from ..record.trace import TensorRecord, Trace
from ..report.console import P
from ..run.prepare import make_call, random_layer_note, refuse_single_step, training_options
from ..run.record import run_side
from ..run.train import clear_grads, train_step
from ..side import Side
from ..structure import flatten
from .distributed import describe_run, layer_layout, layout_map, prepare_folder, run_entry
from .format import FORMAT, MANIFEST, VERSION, partial_path, partial_pid, partials_of, pid_alive


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
    layer_table = _layer_table(side, mapping)
    path, ranked = _rank_folder(path, ad, layer_table, tp_size, notes)
    opts = training_options(opts, loss_fn is not None, optimizer is not None, notes, dumped=True, auto_weights=False)
    _check_target(path)
    call = make_call(Side(ad, caller, side.name, side.label), inputs, notes, grad_inputs=opts.check_backward)
    note = random_layer_note(side, dumped=True)
    if note:
        notes.append(note)
    # arrays are written as the model runs; by a worker thread when the framework leaves a CPU
    # core idle (as auto_diff compares while the model runs; the option overlap decides)
    w = _Writer(path, wants_overlap(opts.overlap, ad, model))
    try:
        manifest = _header(side, opts, notes)
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


def _record(w: "_Writer", manifest: dict, side: Side, layer_table, inputs, call, opts, loss_fn, optimizer,
            scheduler) -> None:
    """The inputs, the initial weights and every step, written and entered in ``manifest``."""
    ad = side.adapter
    layers, tensors, tensor_objs, layer_index = layer_table
    manifest["layers"] = layers
    manifest["tensors"] = tensors
    viewing = Side(_ViewingAdapter(ad), side.model, side.name, side.label)  # each array is written at once
    manifest["inputs"] = [[i, w.record(rec, f"inputs/i{k}")] for k, (i, rec) in
                          enumerate(_inputs(viewing, inputs))]
    for t, entry in zip(tensor_objs, tensors):
        entry["init"] = w.record(TensorRecord(viewing.adapter.to_numpy(t), ad.dtype_name(t), ad.shape(t)),
                                 f"weights/t{entry['index']}")
    params = [(str(e["index"]), t) for t, e in zip(tensor_objs, tensors) if e["is_param"]]
    manifest["steps"] = []
    for step in range(opts.steps):
        clear_grads(side)
        files = w.files(f"steps/{step}")
        run = run_side(viewing, call, opts=opts, loss_fn=loss_fn, need_loss=opts.check_backward or loss_fn is not None,
                       param_paths=params, keep_inputs=False, spill=files)
        files.check()
        # the loss and the parameter gradients are views of the tensors (not kept by the
        # spill): written now, before the optimizer step or the next run changes them
        entry = _trace_json(run.trace, w, f"steps/{step}", layer_index)
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
    """Writes into ``PATH.partial-<pid>``; ``commit`` renames it to ``PATH``. With ``background``
    a worker thread (:class:`_Worker`) creates, writes and renames the array files, in the order
    they are asked for; ``drain`` waits for it."""

    def __init__(self, path: str, background: bool = False):
        self.path = path
        self.root = partial_path(path, os.getpid())
        self._seen: Dict[int, tuple] = {}  # id(record) -> (record, manifest entry)
        self._files: Optional[_ArrayFiles] = None  # the arrays of the step being recorded
        self._dirs = set()
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            os.makedirs(self.root)
        except OSError as exc:
            raise PadiffError(f"Cannot create the dump folder `{self.root}`: {exc.strerror or exc}. Choose a "
                              "writable place for the dump.") from None
        self._worker = _Worker() if background else None

    def full(self, rel: str) -> str:
        """The path of ``rel`` in the dump, its folder made."""
        full = os.path.join(self.root, rel)
        folder = os.path.dirname(full)
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        return full

    def failed(self, exc: Exception) -> PadiffError:
        return PadiffError(f"Writing the dump `{self.path}` failed: {getattr(exc, 'strerror', None) or exc} "
                           "(disk full?).")

    def put(self, rel: str, arr: np.ndarray) -> None:
        """Write ``arr`` as the file ``rel``: copied into the worker's ring and written by it, or
        written now (no worker, or it is behind: then both threads write). ``arr`` may be a view
        of a live tensor: it is copied before this returns."""
        if isinstance(arr, _Placeholder):
            raise PadiffInternalError(f"padiff.dump was about to write a placeholder as `{rel}`")
        try:
            if self._worker is None or not self._worker.write(self.full(rel), arr):
                write_npy(self.full(rel), arr)
        except OSError as exc:
            raise self.failed(exc) from None

    def rename(self, rel: str, new: str) -> None:
        """Rename the file ``rel`` (written by ``put``) to ``new``, after it is written."""
        src, dst = os.path.join(self.root, rel), self.full(new)
        if self._worker is not None:
            self._worker.rename(src, dst)
            return
        try:
            os.replace(src, dst)
        except OSError as exc:
            raise self.failed(exc) from None

    def remove(self, rel: str) -> None:
        if self._worker is not None:
            self._worker.remove(os.path.join(self.root, rel))
            return
        try:
            os.remove(os.path.join(self.root, rel))
        except OSError:
            pass

    def drain(self) -> None:
        """Wait until every file asked for is written; raise what writing one raised."""
        if self._worker is not None:
            error = self._worker.drain()
            if error is not None:
                raise self.failed(error)

    def array(self, arr: np.ndarray, rel: str) -> str:
        rel = rel + ".npy"
        self.put(rel, arr)
        return rel

    def files(self, folder: str) -> "_ArrayFiles":
        """The spill of one step's run: writes every array it is given at once."""
        self._files = _ArrayFiles(self, folder)
        return self._files

    def record(self, rec: TensorRecord, rel: str) -> dict:
        """The manifest entry of a record, its array written once: the recorder shares one record
        between the calls that saw the same tensor, and so do the entries (one file). An array
        the run already wrote (``_ArrayFiles``) is only renamed to ``rel``."""
        seen = self._seen.get(id(rec))
        if seen is not None and seen[0] is rec:
            return dict(seen[1])
        if rec.array is not None and rec.array.dtype != object and (rec.is_tensor or rec.value is None):
            kind = "tensor" if rec.is_tensor else "array"
            shape = list(rec.shape) if rec.is_tensor else list(rec.array.shape)
            written = self._files.claim(rec.array, rel + ".npy") if self._files is not None else None
            entry = {"kind": kind, "dtype": rec.dtype, "shape": shape,
                     "file": written if written is not None else self.array(rec.array, rel)}
            self._seen[id(rec)] = (rec, entry)
            return dict(entry)
        if rec.is_object:  # only its type: objects are never stored, nor compared
            return {"kind": "object", "dtype": rec.dtype}
        return {"kind": "value", "dtype": rec.dtype, "value": _jsonable(rec.value)}

    def forget(self) -> None:
        """Drop the records of a finished step (their arrays are on disk, or queued)."""
        self._seen.clear()
        if self._files is not None:
            self._files.close()
            self._files = None

    def manifest(self, manifest: dict, complete: bool) -> None:
        """The manifest, replaced whole; the final one ("complete": true) is synced to disk."""
        manifest["complete"] = complete
        tmp = os.path.join(self.root, MANIFEST + ".tmp")
        text = json.dumps(manifest, separators=(",", ":"))  # one string: json's C encoder (json.dump is Python)
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                if complete:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, os.path.join(self.root, MANIFEST))
        except OSError as exc:
            raise PadiffError(f"Writing the dump `{self.path}` failed: {exc.strerror or exc} (disk full?).") from None

    def commit(self) -> None:
        if self._worker is not None:
            worker, self._worker = self._worker, None
            error = worker.stop()
            if error is not None:
                raise self.failed(error)
        old = None
        if os.path.exists(self.path):
            old = f"{self.path}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
        os.replace(self.root, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if self._worker is not None:
            self._worker.stop(discard=True)
            self._worker = None
        self._files = None
        shutil.rmtree(self.root, ignore_errors=True)


# --- arrays -----------------------------------------------------------------------------------------

def write_npy(full: str, arr: np.ndarray) -> None:
    """Write ``arr`` as the ``.npy`` file ``full``: what ``numpy.save`` writes, byte for byte,
    header and data in one ``writev``, the data from the array's own memory (a strided array
    is made C-contiguous first, as numpy.save writes it)."""
    if arr.dtype.hasobject:
        raise ValueError("object arrays are not dumped")
    arr = np.ascontiguousarray(arr) if arr.ndim else arr  # ascontiguousarray makes 0-d arrays 1-d
    _write_file(full, [memoryview(_npy_header(arr)), memoryview(arr.reshape(-1).view(np.uint8))])


_HEADERS: Dict[tuple, bytes] = {}


def _npy_header(arr: np.ndarray) -> bytes:
    """The ``.npy`` header numpy.save writes for ``arr`` once C-ordered (cached per dtype and shape)."""
    key = (arr.dtype.str, arr.shape)
    header = _HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        d = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False, "shape": arr.shape}
        try:
            np.lib.format.write_array_header_1_0(buf, d)
        except ValueError:  # a header over 64 KiB (a huge number of dimensions): version 2.0, as numpy.save
            buf = io.BytesIO()
            np.lib.format.write_array_header_2_0(buf, d)
        header = buf.getvalue()
        if len(_HEADERS) < 4096:
            _HEADERS[key] = header
    return header


class _ArrayFiles:
    """run_side's ``spill`` for a dump: ``keep(array)`` writes each recorded array to a file of the
    step's folder as it is recorded (``_Writer.put``), and the run holds a placeholder in its
    place: an array of its dtype and shape that takes no memory (zeros; the dump reads nothing
    of the run's records but their dtype, shape and identity). When the step is written,
    ``claim`` renames each file to the name of the first call that refers to it (the names of
    docs/dump-format.md); ``close`` removes files no call referred to."""

    def __init__(self, writer: _Writer, folder: str):
        self.writer = writer
        self.folder = folder
        self._count = 0
        self._written: Dict[int, Tuple[np.ndarray, str]] = {}  # id(placeholder) -> (placeholder, file)
        self.error: Optional[PadiffError] = None

    def check(self) -> None:
        """Raise what writing an array of the run raised."""
        if self.error is not None:
            raise self.error

    def keep(self, array: np.ndarray, view: bool = False) -> np.ndarray:
        rel = f"{self.folder}/r{self._count}.npy"
        self._count += 1
        if self.error is None:
            try:
                self.writer.put(rel, array)
            except PadiffError as exc:  # raised once the run is over (``check``): inside the model's
                self.error = exc        # backward, the framework would wrap it in its own error
        kept = np.broadcast_to(np.zeros((), array.dtype), array.shape).view(_Placeholder)
        self._written[id(kept)] = (kept, rel)
        return kept

    def claim(self, array: np.ndarray, rel: str) -> Optional[str]:
        """The file ``array`` (one ``keep`` returned) was written to, renamed to ``rel``; None for
        an array this step did not write."""
        hit = self._written.get(id(array))
        if hit is None or hit[0] is not array:
            return None
        del self._written[id(array)]
        self.writer.rename(hit[1], rel)
        return rel

    def close(self) -> None:
        for _, rel in self._written.values():
            self.writer.remove(rel)
        self._written.clear()


class _Placeholder(np.ndarray):
    """What a dump's run holds for an array already on its way to a file (see _ArrayFiles)."""


RING = 32 << 20  # bytes of the background writer's ring; arrays over half of it are written at once


class _Worker:
    """A thread creating and writing array files from a ring of memory that ``write`` copies the
    arrays into, and renaming and removing files, in the order asked. Arrays leave the ring in
    the order they came, so it is reused as a queue: copying into memory the process already
    has costs the model's thread a fraction of creating and writing a file.

    Nothing may read the dump folder before ``drain``."""

    def __init__(self, size: Optional[int] = None):
        self.ring = np.empty(size or RING, np.uint8)
        self.largest = len(self.ring) // 2
        self._head = 0  # where the next array goes
        self._used = 0  # bytes of the ring not yet written (with the gap a wrap leaves at its end)
        self._queue = collections.deque()  # (op, *args, ring bytes held)
        self._cv = threading.Condition()
        self._stopping = False
        self._discard = False
        self.error: Optional[Exception] = None
        self._thread = threading.Thread(target=self._run, name="padiff-dump-writer", daemon=True)
        self._thread.start()

    def write(self, full: str, array: np.ndarray) -> bool:
        """Copy ``array`` into the ring, to be written as ``full``; False when the ring has no
        room for it (the worker is behind, or the array is over half the ring): the caller
        writes it itself, so that both threads write rather than one waiting for the other."""
        if self.error is not None:
            raise self.error
        n = array.nbytes
        got = self._reserve(n) if n <= self.largest else None
        if got is None:
            return False
        start, held = got
        np.copyto(self.ring[start:start + n].view(array.dtype).reshape(array.shape), array, casting="no")
        self._put(("write", full, _npy_header(array), start, n, held))
        return True

    def rename(self, src: str, dst: str) -> None:
        self._put(("rename", src, dst, 0))

    def remove(self, full: str) -> None:
        self._put(("remove", full, 0))

    def _put(self, item) -> None:
        with self._cv:
            self._queue.append(item)
            self._cv.notify_all()

    def _reserve(self, n: int) -> Optional[Tuple[int, int]]:
        """(start, bytes held) of ``n`` bytes of the ring, 64-byte aligned; None without room."""
        size = len(self.ring)
        need = -(-n // 64) * 64
        with self._cv:
            if self._used == 0:
                self._head = 0
            start = self._head if self._head + need <= size else 0
            held = need + (size - self._head if start == 0 and self._head else 0)
            if self._used + held > size:
                return None
            self._head = start + need
            self._used += held
            return start, held

    def _run(self) -> None:
        ring = memoryview(self.ring)
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    return
                item = self._queue[0]
                skip = self._discard or self.error is not None
            try:
                if skip:
                    pass
                elif item[0] == "write":
                    _, full, header, start, n, _ = item
                    _write_file(full, [memoryview(header), ring[start:start + n]])
                elif item[0] == "rename":
                    os.replace(item[1], item[2])
                else:
                    try:
                        os.remove(item[1])
                    except FileNotFoundError:
                        pass
            except Exception as exc:  # kept for the model's thread, which raises it
                self.error = exc
            finally:
                with self._cv:
                    self._queue.popleft()
                    self._used -= item[-1]
                    self._cv.notify_all()

    def drain(self) -> Optional[Exception]:
        """Wait until everything asked for is done; the first error, if any."""
        with self._cv:
            while self._queue:
                self._cv.wait()
        return self.error

    def stop(self, discard: bool = False) -> Optional[Exception]:
        """Let the worker do what is queued (or drop it) and end; its first error, if any."""
        with self._cv:
            self._stopping = True
            self._discard = self._discard or discard
            self._cv.notify_all()
        self._thread.join()
        return self.error


def _write_file(full: str, bufs: List[memoryview]) -> None:
    """Create ``full`` holding ``bufs`` one after another (one ``writev``, repeated for what the
    kernel did not take)."""
    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        left = sum(b.nbytes for b in bufs)
        while left:
            done = os.writev(fd, bufs)  # may write less than asked (large arrays)
            left -= done
            while bufs and done >= bufs[0].nbytes:
                done -= bufs[0].nbytes
                bufs = bufs[1:]
            if bufs and done:
                bufs = [bufs[0][done:]] + bufs[1:]
    finally:
        os.close(fd)


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
        "linear_weight_layout": ad.linear_weight_layout,
        "versions": _versions(ad),
        "model": {"class": type(side.model).__name__, "name": side.name, "repr": ad.layer_repr(side.model)},
        "options": _options_json(opts),
        "shown": {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in opts.shown().items()},
        "notes": list(notes),
    }


def _layer_table(side: Side, tp_layout=None):
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
