"""Giving freed memory back to the operating system, and sparing the garbage collector
the objects that were there before padiff ran.

padiff allocates and frees a copy of every recorded tensor each step. glibc's allocator keeps
such freed blocks in the process (its mmap threshold rises after large frees), so without a
trim the resident size of a process that calls auto_diff in a loop climbs call after call
(measured: 438 MB to 944 MB over 8 calls of a 6-block Transformer; flat at 35 MB with it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc

_TRIM = None


def _malloc_trim():
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _TRIM = libc.malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
            pass
    return _TRIM


def release_freed_memory() -> None:
    """Return the allocator's free memory to the system, where possible. (No garbage
    collection: the recorded arrays are freed by reference counting, and a full collection
    with both frameworks loaded costs more than the whole comparison of a small model.)"""
    trim = _malloc_trim()
    if trim:
        trim(0)


# Whether auto_diff freezes the objects that exist when it starts (see spare_existing_objects).
FREEZE = True


@contextlib.contextmanager
def spare_existing_objects():
    """While padiff runs, the cyclic garbage collector leaves alone every object that existed
    before (``gc.freeze``) and looks only at those made since; they are handed back to it at
    the end (``gc.unfreeze``).

    padiff makes many small objects per recorded call (nodes, records, findings); every so
    often they set off a full collection, which walks every object in the process: with
    torch, paddle and a model loaded, about 350,000 of them, 200 ms a time, and two or three
    per step of a 24-block Transformer. Objects made during the run are collected as before.
    Left as it is when the user froze objects themselves or turned the collector off."""
    if not FREEZE or not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
