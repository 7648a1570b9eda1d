"""Working buffers for comparing large arrays, reused from one comparison to the next.

Comparing two arrays of ``n`` elements needs three more of the same size (the difference,
the reference's magnitudes, a free one for the allowance and the relative difference).
Fresh memory of that size is faulted in page by page on every comparison; buffers kept
here are resident after their first use. Small comparisons allocate as before (the heap
serves them without faults, and a lookup here would cost more than it saves).
"""

from __future__ import annotations

import threading
from typing import List, Optional

import numpy as np

MIN_ELEMENTS = 1 << 15  # below this, plain allocations
BUFFERS = 3
MAX_FREE = 2  # sets kept (the worker thread's and the caller's)

_lock = threading.Lock()
_free: List[List[np.ndarray]] = []


def take(n: int, dtype) -> Optional[List[np.ndarray]]:
    """``BUFFERS`` arrays of ``n`` elements of ``dtype`` to work in, or None for a small ``n``;
    hand them back with :func:`give` (the caller must keep none of them)."""
    if n < MIN_ELEMENTS:
        return None
    dtype = np.dtype(dtype)
    with _lock:
        found = _free.pop() if _free else None
    if found is None or found[0].dtype != dtype or found[0].size < n:
        found = [np.empty(n, dtype) for _ in range(BUFFERS)]
    return [b[:n] for b in found] + [found]


def give(taken: Optional[List[np.ndarray]]) -> None:
    if taken is None:
        return
    with _lock:
        _free.append(taken[-1])
        del _free[:-MAX_FREE]
