"""Keeping a run's records within a memory budget: beyond it, each new array is written to a
temporary folder and read back memory-mapped, so it lives in the page cache rather than in
the process, and its pages are handed back after it has been compared (``release``)."""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile

import numpy as np


class Spill:
    """A budget in bytes and the folder arrays go to once it is spent. Use as a context
    manager: the folder is removed on exit, whatever happened."""

    def __init__(self, budget_bytes):
        self.budget = float("inf") if budget_bytes is None else budget_bytes
        self.held = 0
        self.folder = None
        self.count = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        return False

    def keep(self, array: np.ndarray) -> np.ndarray:
        """The array itself while within budget, else a read-only memory map of a copy on disk."""
        if self.held + array.nbytes <= self.budget or array.nbytes < (1 << 16):
            self.held += array.nbytes
            return array
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="padiff-spill-")
        path = os.path.join(self.folder, f"{self.count}.npy")
        self.count += 1
        np.save(path, array, allow_pickle=False)
        return np.load(path, mmap_mode="r")


def release(array) -> None:
    """Drop a memory-mapped array's pages from the process (they stay in the file)."""
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass
