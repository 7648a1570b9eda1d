"""Writing one dump folder: into ``PATH.partial-<pid>/``, renamed to ``PATH`` when complete
(:class:`Writer`); each array of a step written as it is recorded, the run holding a placeholder
in its place (:class:`ArrayFiles`, run_side's ``spill``)."""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import PadiffError, PadiffInternalError
from ..record.trace import TensorRecord
from .format import MANIFEST, partial_path
from .npy_writer import Worker, write_npy


class Writer:
    """Writes into ``PATH.partial-<pid>``; ``commit`` renames it to ``PATH``. With ``background``
    a worker thread (:class:`Worker`) creates, writes and renames the array files, in the order
    they are asked for; ``drain`` waits for it."""

    def __init__(self, path: str, background: bool = False):
        self.path = path
        self.root = partial_path(path, os.getpid())
        self._seen: Dict[int, tuple] = {}  # id(record) -> (record, manifest entry)
        self._files: Optional[ArrayFiles] = None  # the arrays of the step being recorded
        self._dirs = set()
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            os.makedirs(self.root)
        except OSError as exc:
            raise PadiffError(f"Cannot create the dump folder `{self.root}`: {exc.strerror or exc}. Choose a "
                              "writable place for the dump.") from None
        self._worker = Worker() if background else None

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

    def files(self, folder: str) -> "ArrayFiles":
        """The spill of one step's run: writes every array it is given at once."""
        self._files = ArrayFiles(self, folder)
        return self._files

    def record(self, rec: TensorRecord, rel: str) -> dict:
        """The manifest entry of a record, its array written once: the recorder shares one record
        between the calls that saw the same tensor, and so do the entries (one file). An array
        the run already wrote (``ArrayFiles``) is only renamed to ``rel``."""
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


class ArrayFiles:
    """run_side's ``spill`` for a dump: ``keep(array)`` writes each recorded array to a file of the
    step's folder as it is recorded (``Writer.put``), and the run holds a placeholder in its
    place: an array of its dtype and shape that takes no memory (zeros; the dump reads nothing
    of the run's records but their dtype, shape and identity). When the step is written,
    ``claim`` renames each file to the name of the first call that refers to it (the names of
    docs/dump-format.md); ``close`` removes files no call referred to."""

    def __init__(self, writer: Writer, folder: str):
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
    """What a dump's run holds for an array already on its way to a file (see ArrayFiles)."""


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    return {"repr": repr(value), "type": type(value).__name__}
