"""What the checkpoint converter did to every key (data), and the helpers that make its rows.

``report/weights.py`` prints a :class:`ConvertTable` and writes it as CSV; its jobs make the
destination's values when the checkpoint is written (``convert.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np


@dataclass
class ConvertRow:
    src_key: str  # checkpoint key ("" when the destination key has no source)
    src_shape: Optional[Tuple[int, ...]]
    action: str  # copied | transposed | renamed | split | fused | dropped | added | unmatched
    dst_key: str  # destination key ("" when dropped or unmatched)
    dst_shape: Optional[Tuple[int, ...]]
    note: str = ""
    guessed: bool = False


@dataclass
class Job:
    """One destination value: the keys that take it, its shape and dtype (known before it is
    made), and how to make it from the checkpoint."""

    keys: List[str]
    shape: Tuple[int, ...]
    dtype: str
    make: Callable[[], np.ndarray]


@dataclass
class ConvertTable:
    """What ``convert_checkpoint`` did to every key; true when every destination key got a
    value (and, when verified, the two models agreed)."""

    src_path: str
    dst_path: Optional[str]
    mode: str  # "models", "<port> model" ("paddle model"), "<reference> model names", "names"
    rows: List[ConvertRow] = field(default_factory=list)
    src_framework: str = ""  # the framework whose layout the checkpoint holds
    dst_framework: str = ""
    ref_framework: str = ""  # the framework the conversion rules take as source (torch)
    keys: List[str] = field(default_factory=list)  # destination keys, in the order written
    files: List[str] = field(default_factory=list)  # files written (shards, then the index)
    written: bool = False
    notes: List[str] = field(default_factory=list)
    verified: object = None  # the AlignResult of the check after converting (None: not checked)
    verified_from: str = ""  # the written file the destination model was loaded from
    kept_own: List[str] = field(default_factory=list)  # model keys in neither checkpoint, at the check
    plan: object = None  # the WeightPlan between the two models (mode "models")
    _jobs: List[Job] = field(default_factory=list, repr=False)

    @property
    def port_framework(self) -> str:
        return self.dst_framework if self.src_framework == self.ref_framework else self.src_framework

    @property
    def mode_text(self) -> str:
        ref, port = self.ref_framework, self.port_framework
        return {
            "models": "mapped through both models",
            f"{port} model": f"mapped by the {port} model's layers",
            f"{ref} model names": f"by names, with the {ref} model's layer classes",
            "names": f"by names only (the {ref}2{port} recipe)",
        }[self.mode]

    def put(self, keys: List[str], value: np.ndarray, dtype: str) -> None:
        """A destination value already made (the modes without both models)."""
        self.add(Job(list(keys), tuple(np.shape(value)), dtype, lambda v=value: v))

    def add(self, job: Job) -> None:
        self._jobs.append(job)
        self.keys += job.keys

    def counts(self) -> "OrderedDict[str, int]":
        out = OrderedDict((k, 0) for k in ("copied", "transposed", "renamed", "split", "fused", "dropped",
                                           "added", "unmatched"))
        for r in self.rows:
            key = r.action.split(" ", 1)[0]
            out[key] = out.get(key, 0) + 1
        return out

    @property
    def unmatched(self) -> List[ConvertRow]:
        return [r for r in self.rows if r.action == "unmatched"]

    @property
    def missing(self) -> List[ConvertRow]:
        """Destination keys that got no value."""
        return [r for r in self.rows if r.action == "unmatched" and r.dst_key]

    @property
    def guessed(self) -> List[ConvertRow]:
        return [r for r in self.rows if r.guessed]

    def __bool__(self) -> bool:
        return not self.missing and (self.verified is None or bool(self.verified))


def action_of(conv) -> str:
    note = conv.note or ""
    if note.startswith("split"):
        return "split"
    if note.startswith("fused") or conv.several:
        return "fused"
    if "transposed" in note:
        return "transposed"
    if last_name(conv.src_name) != last_name(conv.dst_name):
        return "renamed"
    return "copied"


def last_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def strip_root(path: str) -> str:
    return path.split(".", 1)[1] if "." in path else ""


def keys_by_id(ad, model) -> Dict[int, List[str]]:
    """State-dict keys of each of the model's tensors (aliases share one tensor)."""
    keys: Dict[int, List[str]] = {}
    for k, t in ad.state_items(model):
        keys.setdefault(id(t), []).append(k)
    return keys


def shape_in(ckpt, key):
    return tuple(ckpt.info(key).shape) if key in ckpt else None


def with_note(a: str, b: str) -> str:
    return "; ".join(x for x in (a, b) if x)


def finish(table, ckpt, used, dst_items, dst_ad, dst_name, dropped, skipped):
    """Rows for dropped and unused checkpoint keys and for destination keys left without a value.
    ``dropped``: last names of checkpoint keys that have no place on the other side (the reference
    framework's ``skipped_buffers``); ``skipped``: destination keys that need no value."""
    for info in ckpt.infos():
        if info.name in used:
            continue
        if last_name(info.name) in dropped:
            table.rows.append(ConvertRow(info.name, info.shape, "dropped", "", None, f"{dst_name} has no such tensor"))
        else:
            table.rows.append(ConvertRow(info.name, info.shape, "unmatched", "", None,
                                         f"no {dst_name} tensor takes it"))
    if dst_items is None:
        return
    filled = set(table.keys) | {r.dst_key for r in table.rows if r.dst_key}  # given a value, or said why not
    for k, t in dst_items:
        if k not in filled and last_name(k) not in skipped:
            table.rows.append(ConvertRow("", None, "unmatched", k, tuple(dst_ad.shape(t)),
                                         "no source in the checkpoint"))


# --- mode 1: both models ----------------------------------------------------------------------
