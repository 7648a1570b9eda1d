"""Writing ``.npy`` files fast: numpy.save's bytes in one ``writev`` from the array's own memory
(:func:`write_npy`), in the model's thread or by a worker thread that copies each array into a
ring of memory and writes it while the model runs on (:class:`Worker`)."""

from __future__ import annotations

import collections
import io
import os
import threading
from typing import Dict, List, Optional, Tuple

import numpy as np


def write_npy(full: str, arr: np.ndarray) -> None:
    """Write ``arr`` as the ``.npy`` file ``full``: what ``numpy.save`` writes, byte for byte,
    header and data in one ``writev``, the data from the array's own memory (a strided array
    is made C-contiguous first, as numpy.save writes it)."""
    if arr.dtype.hasobject:
        raise ValueError("object arrays are not dumped")
    arr = np.ascontiguousarray(arr) if arr.ndim else arr  # ascontiguousarray makes 0-d arrays 1-d
    write_file(full, [memoryview(_npy_header(arr)), memoryview(arr.reshape(-1).view(np.uint8))])


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


RING = 32 << 20  # bytes of the background writer's ring; arrays over half of it are written at once


class Worker:
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
                    write_file(full, [memoryview(header), ring[start:start + n]])
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


def write_file(full: str, bufs: List[memoryview]) -> None:
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
