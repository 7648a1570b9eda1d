"""Comparing while the second model runs.

The reference model runs first and is recorded. While the tested model runs its backward,
a worker thread already pairs the two traces, compares the forward, and compares each
gradient as soon as the tested model's backward has produced it: the figures are ready
when the backward ends, instead of costing their own time after it. numpy releases the
interpreter lock in its loops, so the comparison runs on a core the framework leaves idle
(paddle's CPU kernels use one thread; a GPU leaves the CPU to padiff).

Nothing here touches a framework: the worker reads numpy records only.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Optional


def idle_cores(busy: int) -> int:
    """CPU cores left over while the framework computes on ``busy`` threads (0 on a GPU)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(cores - busy, 0)


def wants_overlap(choice: Optional[bool], adapter, model) -> bool:
    """The ``overlap`` option: the user's ``choice``, else whether ``model``'s framework
    leaves a CPU core idle while it computes."""
    return choice if choice is not None else idle_cores(adapter.compute_threads(model)) > 0


class Arrivals:
    """The tested model's gradients as its backward produces them: the recorder calls
    :meth:`arrived` after storing each one, the run calls :meth:`finish` when its backward
    and parameter gradients are complete (or it failed), and the worker waits in
    :meth:`ready` for what it is about to compare."""

    def __init__(self):
        self._cond = threading.Condition()
        self.done = False
        self.forward = None  # the tested run, once its forward is recorded

    def forward_recorded(self, run) -> None:
        with self._cond:
            self.forward = run
            self._cond.notify_all()

    def wait_forward(self):
        """Block until the tested model's forward is recorded: its run, or None when the run
        ended (failed) before."""
        with self._cond:
            while self.forward is None and not self.done:
                self._cond.wait()
            return self.forward

    def arrived(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def ready(self, node=None, kind: str = "") -> None:
        """Block until ``node``'s output gradients (``kind`` "exit") or input gradients
        ("enter") have all arrived, or the run is finished; ``node=None`` waits for the end."""
        with self._cond:
            while not self.done and (node is None or not _complete(node, kind)):
                self._cond.wait()


def _complete(node, kind: str) -> bool:
    if kind == "exit":
        store, wanted = node.grad_out, node.output_grad_ids
    else:
        store, wanted = node.grad_in, node.input_ids
    return all(k in store for k in wanted)


class Background:
    """``fn()`` run in a worker thread (``threaded``) or, when there is no idle core for it,
    at :meth:`result` in the caller's thread. :meth:`result` returns its value or raises
    its exception; :meth:`abandon` waits for a started worker and drops its outcome."""

    def __init__(self, fn: Callable[[], object], threaded: bool):
        self._fn = fn
        self._value = None
        self._error: Optional[BaseException] = None
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="padiff-compare", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc

    def result(self):
        if self._thread is None:
            return self._fn()
        self._thread.join()
        self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._value

    def abandon(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._error = None
