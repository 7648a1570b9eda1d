"""The parallel groups of a distributed run: the manifest's ``distributed`` entry (rank, world
size, backend, groups), and the words that describe it."""

from __future__ import annotations

from typing import List, Optional, Sequence

from ..errors import PadiffError


def run_entry(info: dict, tp_size: Optional[int], tp_layers: int, notes: List[str]) -> dict:
    """The manifest's ``distributed`` entry from an adapter's ``distributed_info``: the groups the
    framework says, completed where it says none (``tp_size``, or one tensor-parallel group of
    the whole world when the model has tensor-parallel layers; the other ranks data-parallel)."""
    world, rank = int(info["world_size"]), int(info["rank"])
    groups = {k: [int(r) for r in v] for k, v in (info.get("groups") or {}).items()}
    if tp_size is not None and (not isinstance(tp_size, int) or isinstance(tp_size, bool) or tp_size < 1):
        raise PadiffError(f"tp_size must be a positive whole number, got {tp_size!r}.")
    if "tp" in groups:
        if tp_size is not None and tp_size != len(groups["tp"]):
            raise PadiffError(f"tp_size={tp_size} but {info['from']} says this rank's tensor-parallel group is "
                              f"ranks {groups['tp']} ({len(groups['tp'])}): leave tp_size out.")
    else:
        tp = tp_size if tp_size is not None else (world if tp_layers else 1)
        if world % tp:
            raise PadiffError(f"tp_size={tp} does not divide the world size {world}.")
        start = rank - rank % tp
        groups["tp"] = list(range(start, start + tp))
        groups.setdefault("dp", list(range(rank % tp, world, tp)))
        if tp_size is None and tp > 1:
            notes.append(f"{info['from']} does not say which ranks are tensor-parallel: the model has "
                         f"{tp_layers} tensor-parallel layer(s), so all {world} ranks were taken as one "
                         "tensor-parallel group. Pass tp_size=... to padiff.dump otherwise.")
    groups.setdefault("dp", [rank])
    return {"rank": rank, "world_size": world, "backend": info.get("backend"), "from": info.get("from"),
            "run": info.get("run"), "groups": groups, "degrees": {k: len(v) for k, v in groups.items()}}


def describe_run(d: dict) -> str:
    """``rank 1 of 2`` and the groups: ``tensor-parallel 2 (ranks 0-1), data-parallel 1``."""
    return f"rank {d['rank']} of {d['world_size']}, {degrees_text(d.get('degrees', {}))}"


_GROUP_TITLES = {"dp": "data-parallel", "tp": "tensor-parallel", "pp": "pipeline-parallel",
                 "sharding": "sharding", "sep": "sequence-parallel"}


def degrees_text(degrees: dict) -> str:
    order = list(_GROUP_TITLES) + sorted(k for k in degrees if k not in _GROUP_TITLES)
    shown = [f"{_GROUP_TITLES.get(k, k)} {degrees[k]}" for k in order if degrees.get(k, 1) > 1]
    return ", ".join(shown) or "data-parallel 1"


def ranks_text(ranks: Sequence[int]) -> str:
    ranks = sorted(ranks)
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))
