"""One value of a tensor-parallel group, made from its ranks' records when it is read."""

from __future__ import annotations

from typing import List

import numpy as np

from ..record.trace import Node, TensorRecord

DROP = "drop"  # a sharded value whose shard dim could not be told: not compared


class GatheredRecord(TensorRecord):
    """One value of a tensor-parallel group, made from its ranks' records when read: concatenated
    along a dim (``("cat", d)``), summed (``"sum"``), rank 0's (``"whole"``), rank 0's if every
    rank holds the same else summed (``"whole_or_sum"``), or not yet known (None: the shard
    shapes are shown until :func:`~padiff.dump.shard_dims.resolve_shards` decides)."""

    def __init__(self, parts: List[TensorRecord], mode=None):
        self.parts = parts
        self.mode = mode
        self.dtype = parts[0].dtype
        self.value = None
        self.file = getattr(parts[0], "file", None)

    @property
    def is_tensor(self) -> bool:
        return self.parts[0].is_tensor and self.mode != DROP

    @property
    def is_object(self) -> bool:
        return self.mode == DROP

    @property
    def shape(self):
        shape = tuple(self.parts[0].shape)
        if isinstance(self.mode, tuple):
            d = self.mode[1]
            shape = shape[:d] + (shape[d] * len(self.parts),) + shape[d + 1:]
        return shape

    @property
    def array(self):
        mode = self.mode
        if mode == DROP:
            return None
        if isinstance(mode, tuple):
            return np.concatenate([p.array for p in self.parts], axis=mode[1])
        if mode == "sum":
            return _summed(self.parts)
        if mode == "whole_or_sum":
            return self.parts[0].array if same_on_ranks(self) else _summed(self.parts)
        return self.parts[0].array

    @array.setter
    def array(self, value) -> None:  # Trace.drop_arrays: nothing is held
        pass

    def __repr__(self) -> str:
        return f"GatheredRecord({len(self.parts)} ranks, mode={self.mode!r}, shape={list(self.shape)})"


def _summed(parts) -> np.ndarray:
    total = np.array(parts[0].array, dtype=np.result_type(parts[0].array.dtype, np.float32) if
                     parts[0].array.dtype.kind == "f" else parts[0].array.dtype)
    for p in parts[1:]:
        total += p.array
    return total


def same_on_ranks(rec: GatheredRecord, rel: float = 1e-5) -> bool:
    """Whether every rank recorded the same value (as after an all-reduce), within ``rel`` of its
    scale; read one rank at a time."""
    first = np.asarray(rec.parts[0].array)
    if first.dtype.kind not in "fc":
        return all(np.array_equal(first, np.asarray(p.array)) for p in rec.parts[1:])
    first = first.astype(np.float64)
    scale = float(np.max(np.abs(first))) if first.size else 0.0
    for p in rec.parts[1:]:
        other = np.asarray(p.array)
        if other.shape != first.shape or (first.size and float(np.max(np.abs(other - first))) > rel * scale + 1e-30):
            return False
    return True


def node_records(node: Node, attr: str) -> List[TensorRecord]:
    """The records of one of a call's value kinds (``outputs``, ``grad_out``, ``grad_in``), in order."""
    if attr == "outputs":
        return [r for _, r in node.outputs]
    return list(getattr(node, attr).values())
