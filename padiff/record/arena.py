"""Reusable, pre-faulted memory for the kept copies of a run's records.

Copying a recorded tensor into fresh memory costs the copy and, for large arrays, a page
fault for every 4 KiB page the first time it is written; glibc hands large freed blocks back
to the system, so every step and every ``auto_diff`` call faulted its records in again
(measured: 400 MB of float32 arrays copied in 175-344 ms into fresh memory, in 66 ms into
memory already touched). An :class:`Arena` hands out slices of one buffer that stays
resident between steps and calls: the first use learns how much a run keeps in memory, the
buffer grows to it (touched once, so it is resident) and later runs copy into it.

An arena is reused only when nothing outside it still holds one of its slices (a numpy view
keeps a reference to the buffer it slices): records someone kept past their step are never
overwritten; a new arena is made instead.
"""

from __future__ import annotations

import sys
import threading
from typing import List, Optional

import numpy as np

from .._memory import release_freed_memory

ALIGN = 64  # bytes: every slice starts on a cache line
MAX_ARENA_BYTES = 1 << 30  # an arena never grows past this, whatever the memory budget
MAX_FREE = 2  # arenas kept for reuse (one per model of a comparison)

_lock = threading.Lock()
_free: List["Arena"] = []


class Arena:
    """One buffer handed out in slices, first come first served, until :func:`give_back`."""

    def __init__(self, cap: int):
        self.cap = cap  # the most this arena may grow to
        self.buf = np.empty(0, np.uint8)
        self.used = 0
        self.wanted = 0  # bytes this run asked for, fitting or not: the size for the next run

    @property
    def capacity(self) -> int:
        return int(self.buf.nbytes)

    def copy(self, view: np.ndarray) -> Optional[np.ndarray]:
        """A copy of ``view`` in this arena's buffer, or None when it does not fit (the
        caller copies into fresh memory; the next run's arena will be large enough)."""
        start = -(-self.used // ALIGN) * ALIGN
        end = start + view.nbytes
        self.wanted = -(-self.wanted // ALIGN) * ALIGN + view.nbytes
        if end > self.capacity:
            return None
        out = self.buf[start:end].view(view.dtype).reshape(view.shape)
        np.copyto(out, view, casting="no")
        out.flags.writeable = False  # a record is read, never written
        self.used = end
        return out

    def in_use(self) -> bool:
        """Whether a slice of the buffer is still referenced outside the arena."""
        return sys.getrefcount(self.buf) > 2  # self.buf and getrefcount's own argument

    def _grow(self) -> None:
        size = min(self.wanted, self.cap, MAX_ARENA_BYTES)
        if size > self.capacity:
            self.buf = np.empty(0, np.uint8)  # the old buffer goes before the new one is touched
            buf = np.empty(size, np.uint8)
            buf.fill(0)  # fault every page in now: later runs write to resident memory
            self.buf = buf


def lease(cap: int) -> Arena:
    """An arena for one model run's records that may grow to ``cap`` bytes: a free one no
    record still uses (the largest), else a new, empty one."""
    with _lock:
        for arena in _free:  # largest first: give_back keeps the list in that order
            if not arena.in_use():
                _free.remove(arena)
                break
        else:
            arena = Arena(cap)
    arena.cap = cap
    arena.used = arena.wanted = 0
    return arena


def give_back(arena: Arena) -> None:
    """The run is over: grow the arena to what the run wanted (within its cap), and keep it
    for the next run; beyond ``MAX_FREE`` free arenas, the smallest are let go."""
    if not arena.in_use() and min(arena.wanted, arena.cap, MAX_ARENA_BYTES) > arena.capacity:
        release_freed_memory()  # the run's fresh copies, freed by now: handed back before growing
        arena._grow()
    with _lock:
        _free.append(arena)
        _free.sort(key=lambda a: -a.capacity)
        del _free[MAX_FREE:]


def release_arenas() -> int:
    """Let go of the memory padiff keeps between calls for the copies of records (it is
    reused by the next ``auto_diff`` call; a process done comparing can hand it back, with
    ``padiff.release_buffers``). Returns the number of bytes released."""
    with _lock:
        freed = sum(a.capacity for a in _free if not a.in_use())
        _free[:] = [a for a in _free if a.in_use()]
    return freed
