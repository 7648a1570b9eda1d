"""The rounding context of each gradient: the size of the values it was computed from.

A gradient's absolute tolerance floor (``metrics.CONTEXT_ULPS * u * context``) must come from
the computation that produced that gradient, not from the largest gradient anywhere in the
backward pass: a model with one huge gradient (an RMSNorm's variance path: 33 in the tiny
Llama of the real-port tests, 1.5e3 in a Gemma-3-style decoder, up to 1e5 elsewhere) would
otherwise give most other gradients a floor near or above their own size.

The reference's backward pass is read as a graph: the recorder keeps one record per tensor's
gradient, shared by the call that produced the tensor (its output gradient) and every call
that read it (their input gradients), so records connect producers and consumers. For each
gradient record ``r`` the context ``K(r)`` is worked out in the order backward runs:

* a call ``Y`` that read the tensor contributes ``kappa(Y) * |r|``, where ``kappa(Y) =
  K(out) / |out|`` over its output gradients: how many times larger than itself the values
  behind its output gradient were. ``kappa`` is 1 for a gradient straight from the loss;
  it never shrinks along the backward pass, so rounding noise that a cancellation created
  keeps its context however it is scaled later (and a pure-noise gradient against pure
  noise passes wherever it travels);
* a call whose input gradient is much smaller than its output gradient (L2 norm under
  ``HEAVY_CANCELLATION`` times it: a final LayerNorm under a mean loss gives rounding noise
  for a gradient that is zero in exact arithmetic) has computed it from terms of the size of
  its output gradient: it contributes ``K(out)``. A call that only scales the gradient down
  (a mean over 4096 elements: 1/64 of the norm) does not raise the context;
* only the innermost calls that read a tensor contribute (a layer and its first sublayer
  read the same input: the sublayer is the finer account). Framework calls record no input
  gradient, so a tensor read only by them (``x + self.mlp(h)``: the ``+`` reads the MLP's
  output) has no recorded reader: its readers are among the calls its parent made after it,
  and it inherits the largest ``kappa`` of their output gradients (and of the parent's);
* ``K(r)`` is the largest contribution and at least ``|r|``; every comparison of ``r``
  (at each reader and at its producer) uses the same ``K(r)``.

A parameter's gradient is judged by its layer's calls the same way (``for_parameter``): the
layer's output gradient times ``kappa``, or the output gradient's own context where the
parameter gradient is a cancellation (a bias before a train-mode BatchNorm, the key bias of
an attention: zero in exact arithmetic).

``|x|`` is the largest magnitude of ``x``; everything here reads the reference model's
records only, and no framework. Records are known by ``id`` only while the trace keeps them
alive: the pass's own records. A record handed in to be judged (a parameter gradient turned
into the tested layout, a single-step replay's gradient) is often a temporary whose ``id`` a
freed one had, so its size is read afresh every time, never looked up by ``id`` nor kept:
the answer must not depend on what the memory allocator reused.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..record.spill import read_blocks, release
from .metrics import BLOCK

HEAVY_CANCELLATION = 1e-3  # input gradient norm under this share of the output gradient's: cancellation


def _floating(arr) -> Optional[np.ndarray]:
    if arr is None or not getattr(arr, "size", 0):
        return None
    if arr.dtype.kind == "f":
        return arr
    if arr.dtype.kind in "biuc" or arr.dtype == object:
        return None
    try:  # bfloat16 and other extension float types
        return arr.astype(np.float32)
    except (TypeError, ValueError):
        return None


def record_stats(rec) -> Tuple[float, float]:
    """(largest magnitude, L2 norm) of a floating record; (0, 0) otherwise. Spilled records'
    pages are handed back after reading."""
    arr = getattr(rec, "array", None)
    flt = _floating(arr)
    if flt is None:
        return 0.0, 0.0
    big, norm = _block_stats(flt)
    release(arr)
    return big, norm


def _block_stats(flt: np.ndarray) -> Tuple[float, float]:
    """``record_stats`` of an array, ``BLOCK`` elements at a time (a spilled record straight
    from its file; a small array is one block)."""
    big, squares = 0.0, 0.0
    wide = flt.dtype == np.float64
    for x in read_blocks(flt, BLOCK):
        big = max(big, float(x.max()), -float(x.min()))
        squares += float(np.dot(x, x))
    if big < 1e-15 and not wide:  # squares of tiny float32 values underflow: summed in float64
        squares = 0.0
        for x in read_blocks(flt, BLOCK):
            x = x.astype(np.float64)
            squares += float(np.dot(x, x))
    return big, math.sqrt(squares)


def _distinct(records: Iterable) -> List[object]:
    seen, out = set(), []
    for r in records:
        if r is not None and id(r) not in seen:
            seen.add(id(r))
            out.append(r)
    return out


class GradientContext:
    """``K(r)`` for every gradient record of the reference's backward pass (see the module
    docstring), and the context of parameter gradients by layer. ``largest`` is the largest
    gradient of the pass (the fallback where nothing better is known)."""

    def __init__(self, ref_events: List[Tuple[object, str]], heavy: float = HEAVY_CANCELLATION):
        self.heavy = heavy
        self.events = ref_events  # the backward pass it was worked out from
        self._stats: Dict[int, Tuple[float, float]] = {}
        self._k: Dict[int, float] = {}
        self._kappa: Dict[int, float] = {}  # id(node) -> kappa of its output gradients
        self._k_out: Dict[int, float] = {}  # id(node) -> largest K of its output gradients
        self._n_out: Dict[int, float] = {}  # id(node) -> L2 norm of its output gradients
        self._scope: Dict[int, float] = {}  # id(node) -> largest kappa of its children's outputs so far
        self._by_layer: Dict[object, List[object]] = {}  # layer key and path -> its calls ("net" nodes)
        self.largest = 0.0
        self._build(ref_events)

    # --- building -------------------------------------------------------------------------
    def _stat(self, rec) -> Tuple[float, float]:
        """``record_stats`` of one of the pass's records, read once (see the module docstring:
        only for records the trace keeps alive)."""
        s = self._stats.get(id(rec))
        if s is None:
            s = record_stats(rec)
            self._stats[id(rec)] = s
            self.largest = max(self.largest, s[0])
        return s

    def _inherited(self, node) -> float:
        """``kappa`` for a gradient of ``node`` with no recorded reader: the largest among the
        output gradients of the calls its parent made after it (their backward ran before) and
        the parent's own; 1 for the model's output."""
        p = getattr(node, "parent", None)
        while p is not None:
            k = self._scope.get(id(p))
            if k is not None:
                return k
            p = p.parent
        return 1.0

    def _build(self, events) -> None:
        inner_readers: Dict[int, set] = {}  # id(node) -> ids of records a child of it also reads
        for node, kind in events:
            if kind == "enter" and node.parent is not None:
                ids = inner_readers.setdefault(id(node.parent), set())
                ids.update(id(r) for r in node.grad_in.values() if r is not None)
            if kind == "exit" and getattr(node, "kind", "") == "net":
                for key in (getattr(node, "layer_key", None), getattr(node, "path", None)):
                    if key is not None:
                        self._by_layer.setdefault(key, []).append(node)
        for node, kind in events:
            if kind == "exit":
                outs = _distinct(node.grad_out.values())
                inherit = self._inherited(node)
                kappa, k_out, n2 = 0.0, 0.0, 0.0
                for r in outs:
                    big, norm = self._stat(r)
                    k = max(self._k.get(id(r), 0.0), inherit * big, big)
                    self._k[id(r)] = k
                    k_out, n2 = max(k_out, k), n2 + norm * norm
                    if big > 0:
                        kappa = max(kappa, k / big)
                self._kappa[id(node)] = kappa = kappa if kappa > 0 else inherit
                self._scope[id(node)] = kappa
                if node.parent is not None:
                    self._scope[id(node.parent)] = max(self._scope.get(id(node.parent), kappa), kappa)
                self._k_out[id(node)] = k_out
                self._n_out[id(node)] = math.sqrt(n2)
            else:
                finer = inner_readers.get(id(node), ())
                for r in _distinct(node.grad_in.values()):
                    if id(r) in finer:
                        continue  # a call inside this one read the same tensor: its account counts
                    c = self._reader_share(node, *self._stat(r))
                    self._k[id(r)] = max(self._k.get(id(r), 0.0), c)

    def _reader_share(self, node, big: float, norm: float) -> float:
        """What one reader of a tensor contributes to the context of the tensor's gradient
        (``big``, ``norm``: that gradient's :func:`record_stats`)."""
        kappa = self._kappa.get(id(node))
        if kappa is None:  # its outputs recorded no gradient
            kappa = self._inherited(node)
        share = max(big, kappa * big)
        n_out = self._n_out.get(id(node), 0.0)
        if n_out > 0 and norm < self.heavy * n_out:
            share = max(share, self._k_out.get(id(node), 0.0))
        return share

    # --- answers --------------------------------------------------------------------------
    def of(self, rec) -> float:
        """The context of one of the reference's gradient records (a record not seen in the
        backward pass: its own largest magnitude; an all-zero one: the pass's largest)."""
        k = self._k.get(id(rec))
        if k is None:
            k = record_stats(rec)[0]
        return k if k > 0 else self.largest

    def for_own(self, node, rec) -> float:
        """The context of a gradient ``node`` computes from its output gradient, recorded apart
        from the run (single-step mode replays a layer's backward on its own)."""
        k = self._reader_share(node, *record_stats(rec))
        return k if k > 0 else self.largest

    def for_parameter(self, layer_key=None, path: str = None, rec=None) -> float:
        """The context of a parameter gradient of the layer ``layer_key`` (or ``path``): over
        every call of that layer, the output gradient's ``kappa`` times the parameter
        gradient's size, or the output gradient's context where the parameter gradient is
        a cancellation of it. The pass's largest gradient when the layer has no call with an
        output gradient."""
        calls = self._by_layer.get(layer_key) or self._by_layer.get(path) or []
        big, norm = record_stats(rec) if rec is not None else (0.0, 0.0)
        best = 0.0
        for node in calls:
            n_out = self._n_out.get(id(node), 0.0)
            if n_out <= 0:
                continue
            share = max(big, self._kappa.get(id(node), 1.0) * big)
            if norm < self.heavy * n_out:
                share = max(share, self._k_out.get(id(node), 0.0))
            best = max(best, share)
        return best if best > 0 else max(self.largest, big)
