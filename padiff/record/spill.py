"""Keeping a run's records within a memory budget: beyond it, each new array is written to a
temporary file and read back memory-mapped, so it lives in the page cache rather than in the
process, and its pages are handed back after it has been compared (``release``).

With ``reuse`` (live runs), the file outlives the run and the next run writes over it from
the start: writing a new file and deleting it every step cost far more than writing over
pages already cached (the 6-block Transformer of the speed bench: 2.15x against 1.72x of a
bare run, alternated in one process). A file is written over only when no memory map of the
run before is still referenced; :func:`release_buffers` (``padiff.release_buffers``) removes
the kept files with the kept memory, and so does the end of the process."""

from __future__ import annotations

import atexit
import mmap
import os
import shutil
import tempfile
import threading
import weakref
from typing import List

import numpy as np

from . import arena as arenas


SMALL = 1 << 16  # bytes: a smaller array stays in memory whatever the budget, in fresh heap memory
# (the heap serves it without page faults: the arena is for large ones)
MAX_FREE_FILES = 2  # spill files kept for reuse (one per model of a comparison)

_files_lock = threading.Lock()
_free_files: List["SpillFile"] = []


class SpillFile:
    """A temporary file that arrays are written to one after the other, each read back as a
    read-only memory map of its region."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="padiff-spill-")
        self.file = open(os.path.join(self.folder, "records.bin"), "w+b")
        self.end = 0  # where this run's next array goes
        self._maps: list = []  # weak references to the maps handed out since the run began

    def write(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array)
        offset = self.end
        self.file.seek(offset)
        array.tofile(self.file)
        self.file.flush()
        self.end = offset + array.nbytes
        mapped = np.memmap(self.file, dtype=array.dtype, mode="r", offset=offset, shape=array.shape)
        self._maps.append(weakref.ref(mapped))
        return mapped

    def in_use(self) -> bool:
        """Whether a map this file handed out is still referenced (a view keeps its map)."""
        return any(r() is not None for r in self._maps)

    def size(self) -> int:
        try:
            return os.fstat(self.file.fileno()).st_size
        except (OSError, ValueError):
            return 0

    def remove(self) -> None:
        try:
            self.file.close()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _take_file() -> SpillFile:
    """A kept file no map still reads, written over from its start (the last one given back:
    its pages are the likeliest to be cached); else a new file."""
    with _files_lock:
        for f in reversed(_free_files):
            if not f.in_use():
                _free_files.remove(f)
                f.end, f._maps = 0, []
                return f
    return SpillFile()


def _give_back_file(f: SpillFile) -> None:
    """Keep a run's file for the next run, cut to what this run wrote (a larger run before
    does not hold its disk space), unless a map of it is still read."""
    if f.in_use():
        f.remove()  # a map still reads it: never written over (the maps stay valid, unlinked)
        return
    try:
        f.file.truncate(f.end)
    except OSError:
        f.remove()
        return
    with _files_lock:
        _free_files.append(f)
        extra = _free_files[MAX_FREE_FILES:]
        del _free_files[MAX_FREE_FILES:]
    for old in extra:
        old.remove()


def _remove_kept_files() -> int:
    with _files_lock:
        kept = [f for f in _free_files if not f.in_use()]
        _free_files[:] = [f for f in _free_files if f.in_use()]
    size = sum(f.size() for f in kept)
    for f in kept:
        f.remove()
    return size


atexit.register(_remove_kept_files)


def release_buffers() -> int:
    """Let go of what padiff keeps between calls to make the next one faster: the memory for
    the copies of records (``record/arena.py``) and the spill files. Returns the number of
    bytes released (memory and files)."""
    return arenas.release_arenas() + _remove_kept_files()


class Spill:
    """A budget in bytes and the file arrays go to once it is spent: one file per model run,
    each array a region of it. Use as a context manager: on exit the file is removed, or,
    with ``reuse``, kept for the next run, whatever happened."""

    def __init__(self, budget_bytes, reuse: bool = False):
        self.budget = float("inf") if budget_bytes is None else budget_bytes
        self.held = 0
        self.folder = None  # the spill file's folder, once there is one
        self._file = None
        # reuse: copies kept in memory go to an arena (record/arena.py) and spilled ones to a
        # file, both kept for the next run
        self._reuse = reuse
        self._arena = None

    def __enter__(self):
        if self._reuse:
            self._arena = arenas.lease(int(min(self.budget, arenas.MAX_ARENA_BYTES)))
        return self

    def __exit__(self, *exc):
        arena, self._arena = self._arena, None
        f, self._file, self.folder = self._file, None, None
        try:
            if arena is not None:
                arenas.give_back(arena)
        finally:
            if f is not None and self._reuse:
                _give_back_file(f)
            elif f is not None:
                f.remove()
        return False

    def keep(self, array: np.ndarray, view: bool = False) -> np.ndarray:
        """The array itself while within budget, else a read-only memory map of a copy on disk.
        ``view``: the array shares a live tensor's memory, so what is kept is a copy (made in
        memory within budget, into the run's arena when there is one and the array is not
        small, else by writing it to the file: one copy, not two)."""
        small = array.nbytes < SMALL
        if small or self.held + array.nbytes <= self.budget:
            self.held += array.nbytes
            if not view:
                return array
            kept = self._arena.copy(array) if self._arena is not None and not small else None
            return kept if kept is not None else array.copy()
        if self._file is None:
            self._file = _take_file() if self._reuse else SpillFile()
            self.folder = self._file.folder
        return self._file.write(array)


def release(array) -> None:
    """Drop a memory-mapped array's pages from the process (they stay in the file)."""
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass
