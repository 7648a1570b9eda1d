"""Keeping a run's records within a memory budget: beyond it, each new array is written to a
temporary folder and read back memory-mapped, so it lives in the page cache rather than in
the process, and its pages are handed back after it has been compared (``release``)."""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile

import numpy as np

from . import arena as arenas


SMALL = 1 << 16  # bytes: a smaller array stays in memory whatever the budget, in fresh heap memory
# (the heap serves it without page faults: the arena is for large ones)


class Spill:
    """A budget in bytes and the file arrays go to once it is spent: one file per model run,
    each array a region of it. Use as a context manager: the file is removed on exit,
    whatever happened."""

    def __init__(self, budget_bytes, reuse: bool = False):
        self.budget = float("inf") if budget_bytes is None else budget_bytes
        self.held = 0
        self.folder = None
        self._file = None
        # reuse: copies kept in memory go to an arena (record/arena.py) that outlives the run
        self._reuse = reuse
        self._arena = None

    def __enter__(self):
        if self._reuse:
            self._arena = arenas.lease(int(min(self.budget, arenas.MAX_ARENA_BYTES)))
        return self

    def __exit__(self, *exc):
        if self._arena is not None:
            arena, self._arena = self._arena, None
            arenas.give_back(arena)
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
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
            self.folder = tempfile.mkdtemp(prefix="padiff-spill-")
            self._file = open(os.path.join(self.folder, "records.bin"), "w+b")
        array = np.ascontiguousarray(array)
        offset = self._file.seek(0, os.SEEK_END)
        array.tofile(self._file)
        self._file.flush()
        return np.memmap(self._file, dtype=array.dtype, mode="r", offset=offset, shape=array.shape)


def release(array) -> None:
    """Drop a memory-mapped array's pages from the process (they stay in the file)."""
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass
