"""Keeping a run's records within a memory budget (by default none: every array of ``SMALL``
bytes or more): beyond it, each new array is written to a temporary file, so it lives in the
page cache rather than in the process. It is handed back as a read-only view of a map of the
file, for whoever needs an array; the comparison reads it from the file instead
(:func:`read_blocks`, :func:`loaded`), and pages a reader did map are handed back after use
(:func:`release`).

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

from ..errors import PadiffError
from . import arena as arenas


SMALL = 1 << 16  # bytes: a smaller array stays in memory whatever the budget, in fresh heap memory
# (the heap serves it without page faults: the arena is for large ones)
MAX_FREE_FILES = 2  # spill files kept for reuse (one per model of a comparison)
PAGE = mmap.ALLOCATIONGRANULARITY  # an array in the file starts on this boundary (a map's offset must)
CHUNK = 64 << 20  # bytes of the file mapped at once (more for a larger array)

_files_lock = threading.Lock()
_free_files: List["SpillFile"] = []


class SpillFile:
    """A temporary file that arrays are written to one after the other, each read back as a
    read-only view of a memory map of the file.

    Each array starts on a page boundary and is written with ``os.pwrite`` (one copy, from
    the tensor's own memory where the recorder hands a view of it); the file is mapped in
    chunks of ``CHUNK`` bytes or more, so a run makes a few maps rather than one per array
    (which, with ``tofile`` and ``flush``, cost 60 ms of the 170 ms that writing 470 MB of
    1 MB arrays took)."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="padiff-spill-")
        self.file = open(os.path.join(self.folder, "records.bin"), "w+b")
        self.end = 0  # where this run's last array ends
        self._length = 0  # the file's length (grown a chunk at a time)
        self._chunk = None  # (file offset, length, map) of the chunk arrays are written into
        self._maps: list = []  # weak references to the chunk maps made since the run began

    def write(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array)
        n = array.nbytes
        if n == 0:
            return array.copy()
        offset = -(-self.end // PAGE) * PAGE
        start, length, mm = self._chunk or (0, 0, None)
        if mm is None or offset + n > start + length:
            start, length = offset, max(CHUNK, -(-n // PAGE) * PAGE)
            if start + length > self._length:
                os.ftruncate(self.file.fileno(), start + length)
                self._length = start + length
            mm = mmap.mmap(self.file.fileno(), length, prot=mmap.PROT_READ, offset=start)
            self._chunk = (start, length, mm)
            self._maps.append(weakref.ref(mm))
            _register_source(mm, self, start)
        data = memoryview(array.reshape(-1).view(np.uint8))
        if hasattr(os, "pwrite"):
            at = offset
            while data:  # pwrite may write less than asked (2 GiB at most per call on Linux)
                written = os.pwrite(self.file.fileno(), data, at)
                data, at = data[written:], at + written
        else:  # Windows
            self.file.seek(offset)
            self.file.write(data)
            self.file.flush()
        self.end = offset + n
        return np.frombuffer(mm, array.dtype, array.size, offset - start).reshape(array.shape)

    def end_run(self) -> None:
        """The run is over: no more arrays; the current chunk's map lives on only through the
        arrays that view it."""
        self._chunk = None

    def in_use(self) -> bool:
        """Whether a map this file handed out is still referenced (every array read from the
        file, and every view of one, keeps its chunk's map)."""
        return any(r() is not None for r in self._maps)

    def size(self) -> int:
        try:
            return os.fstat(self.file.fileno()).st_size
        except (OSError, ValueError):
            return 0

    def remove(self) -> None:
        self._chunk = None
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
                f.end, f._maps, f._chunk = 0, [], None
                return f
    return SpillFile()


def _give_back_file(f: SpillFile) -> None:
    """Keep a run's file for the next run, cut to what this run wrote (a larger run before
    does not hold its disk space), unless a map of it is still read."""
    f.end_run()
    if f.in_use():
        f.remove()  # a map still reads it: never written over (the maps stay valid, unlinked)
        return
    try:
        f.file.truncate(f.end)
        f._length = f.end
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
    flush_releases()
    return arenas.release_arenas() + _remove_kept_files()


class Spill:
    """A budget in bytes and the file arrays go to once it is spent: one file per model run,
    each array a region of it. Use as a context manager: on exit the file is removed, or,
    with ``reuse``, kept for the next run, whatever happened."""

    def __init__(self, budget_bytes, reuse: bool = False):
        self.budget = float("inf") if budget_bytes is None else budget_bytes
        self.held = 0  # bytes kept in memory
        self.spilled = 0  # bytes written to the file
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
        flush_releases()  # the maps the pending spans hold keep the file from being written over
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
        try:
            if self._file is None:
                self._file = _take_file() if self._reuse else SpillFile()
                self.folder = self._file.folder
            kept = self._file.write(array)
            self.spilled += array.nbytes
            return kept
        except OSError as exc:  # no room on the disk, a TMPDIR that is not there or not writable
            where = self.folder or os.path.join(tempfile.gettempdir(), "padiff-spill-*")
            raise PadiffError(
                f"padiff could not write the records beyond memory_budget_mb={self.budget / 2 ** 20:g} to a "
                f"temporary file in {where}: {exc}. Point TMPDIR to a folder with room, or raise "
                "memory_budget_mb (None keeps every record in memory).") from exc


# id(chunk map) -> (weak reference to the map, its SpillFile, the map's offset in the file):
# lets a reader of a spilled array read it from the file (read_blocks) rather than through the map
_sources: dict = {}


def _register_source(mm, spill_file, start: int) -> None:
    key = id(mm)

    def gone(ref, key=key):
        if _sources.get(key, (None,))[0] is ref:
            del _sources[key]

    _sources[key] = (weakref.ref(mm, gone), spill_file, start)


def _map_of(array):
    """The mmap behind an array read from a spill file (None for any other array)."""
    base = getattr(array, "base", None)
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # numpy.frombuffer's base
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def _file_region(array):
    """``(file descriptor, byte offset)`` where a C-contiguous array read from a spill file lies
    in that file, while the file is open; None for any other array."""
    mm = _map_of(array)
    if mm is None or not array.flags.c_contiguous or not hasattr(os, "preadv"):
        return None  # (no preadv on Windows: read through the map)
    found = _sources.get(id(mm))
    if found is None or found[0]() is not mm or found[1].file.closed:
        return None
    return found[1].file.fileno(), found[2] + _offset_in(mm, array)


def _offset_in(mm, array) -> int:
    """Where ``array``'s data starts in the map ``mm``, in bytes."""
    return array.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8, 1).ctypes.data


_raw = threading.local()  # per thread: the buffers read_blocks reads into


def read_blocks(array: np.ndarray, block: int, which: int = 0):
    """The flat ``array`` ``block`` elements at a time. An array read from a spill file is read
    from the file (``os.preadv``) into a buffer of this thread's (``which``: 0 or 1, for two
    arrays read side by side), so its pages never enter the process: no page faults, nothing
    to hand back, and none of the cost of dropping mapped pages (every CPU running the process
    is interrupted to forget them). Each block is valid until the next one is read."""
    flat = array.reshape(-1)
    n = int(flat.size)
    region = _file_region(array) if n else None
    if region is None:
        for start in range(0, n, block):
            yield flat[start:start + block]
        return
    fd, offset = region
    item = flat.dtype.itemsize
    bufs = getattr(_raw, "bufs", None)
    if bufs is None:
        bufs = _raw.bufs = [np.empty(0, np.uint8), np.empty(0, np.uint8)]
    need = min(block, n) * item
    if bufs[which].nbytes < need:  # a new buffer: a block read before stays valid in the old one
        bufs[which] = np.empty(max(need, 1 << 19), np.uint8)
    raw = bufs[which]
    for start in range(0, n, block):
        k = min(block, n - start)
        view = memoryview(raw[:k * item])
        at, done = offset + start * item, 0
        while done < k * item:
            got = os.preadv(fd, [view[done:]], at + done)
            if got <= 0:
                raise OSError(f"short read from padiff's spill file at byte {at + done}")
            done += got
        yield raw[:k * item].view(flat.dtype)


def loaded(array: np.ndarray, which: int, most: int) -> np.ndarray:
    """``array`` itself, or, when it was read from a spill file and holds at most ``most``
    elements, a copy read from the file into this thread's buffer ``which`` (see
    :func:`read_blocks`; valid until that buffer is read into again)."""
    if array.size > most or _map_of(array) is None:
        return array
    return next(read_blocks(array, most, which)).reshape(array.shape)


def release(array) -> None:
    """Drop a memory-mapped array's pages from the process (they stay in the file): an array
    read from a spill file (in batches, see ``RELEASE_BATCH``), or a ``numpy.memmap`` (at once)."""
    mm = getattr(array, "_mmap", None)
    if mm is not None:  # a numpy.memmap (a dump read back): all of its map
        _advise(mm, 0, None)
        return
    base = _map_of(array)
    if base is not None and array.nbytes:
        try:
            start = _offset_in(base, array)
        except (TypeError, ValueError):
            return
        if start % PAGE == 0:  # what a spill file hands out; a view further in is left alone
            _defer(base, start, min(-(-array.nbytes // PAGE) * PAGE, len(base) - start))


# Released records of spill files give their pages back this many bytes at a time, with one
# madvise per chunk map over the span they cover: each madvise makes every CPU running the
# process drop its cached address translations, and one per record (3,300 a step on the
# 6-block Transformer) cost 0.3 s of a 1.8 s step. Pages of the span that another record still
# reads are read again from the page cache, unchanged.
RELEASE_BATCH = 4 << 20
_pending_lock = threading.Lock()
_pending: dict = {}  # id(chunk map) -> [map, start of the span, end of the span]
_pending_bytes = 0


def _defer(mm, start: int, length: int) -> None:
    global _pending_bytes
    with _pending_lock:
        span = _pending.get(id(mm))
        if span is None:
            _pending[id(mm)] = [mm, start, start + length]
        else:
            span[1], span[2] = min(span[1], start), max(span[2], start + length)
        _pending_bytes += length
        if _pending_bytes < RELEASE_BATCH:
            return
        spans = _take_pending()
    _advise_spans(spans)


def _take_pending() -> list:
    global _pending_bytes
    spans = list(_pending.values())
    _pending.clear()
    _pending_bytes = 0
    return spans


def _advise_spans(spans) -> None:
    for mm, start, end in spans:
        _advise(mm, start, end - start)


def flush_releases() -> None:
    """Give back the pages of every record released since the last batch (the end of a run:
    the pending spans also hold their maps, which keep a spill file from being written over)."""
    with _pending_lock:
        spans = _take_pending()
    _advise_spans(spans)


def _advise(mm, start, length) -> None:
    try:
        if length is None:
            mm.madvise(mmap.MADV_DONTNEED)
        else:
            mm.madvise(mmap.MADV_DONTNEED, start, length)
    except (OSError, ValueError, AttributeError):
        pass
