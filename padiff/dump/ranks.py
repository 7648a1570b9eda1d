"""A distributed dump on disk: ``FOLDER/rank<k>/``, one whole dump per rank.

Each rank writes its folder (:func:`prepare_folder` first tidies the folder they share); a
folder without a manifest of its own that holds ``rank<k>/`` dumps is read as a
:class:`RankedDump`, each rank as an ordinary :class:`~padiff.dump.reader.Dump`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from typing import Dict, List

from ..errors import PadiffError
from .format import MANIFEST, PARTIAL, is_padiff_manifest, partial_pid, pid_alive, read_manifest
from .parallel_groups import degrees_text, ranks_text
from .reader import Dump, open_dump
from .tp_layout import unsharded_classes

_RANK_DIR = re.compile(r"^rank(\d+)(" + re.escape(PARTIAL) + r"\d+)?$")


def prepare_folder(folder: str, rank: int, world: int) -> None:
    """Before a rank writes ``folder/rank<k>``: refuse a folder holding a single-process dump;
    rank 0 removes the dumps of ranks this run does not have (left by a larger run)."""
    if os.path.isfile(folder):
        raise PadiffError(f"`{folder}` is a file: a distributed padiff.dump writes one folder per rank into the "
                          "folder it is given. Choose another path.")
    if is_padiff_manifest(os.path.join(folder, MANIFEST)):
        raise PadiffError(f"`{folder}` holds a single-process padiff dump, and this run is distributed: each rank "
                          f"writes `{folder}/rank<k>`. Remove it, or dump into another folder.")
    if rank != 0 or not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        m = _RANK_DIR.match(name)
        if m is None or int(m.group(1)) < world:
            continue
        full = os.path.join(folder, name)
        if m.group(2) and pid_alive(partial_pid(full)):
            continue
        if m.group(2) or is_padiff_manifest(os.path.join(full, MANIFEST)):
            shutil.rmtree(full, ignore_errors=True)


def rank_folders(path: str) -> Dict[int, str]:
    """rank -> ``path/rank<k>`` for every rank folder (finished or not) under ``path``."""
    if not os.path.isdir(path):
        return {}
    out = {}
    for name in os.listdir(path):
        m = _RANK_DIR.match(name)
        if m is not None and os.path.isdir(os.path.join(path, name)):
            out[int(m.group(1))] = os.path.join(path, f"rank{m.group(1)}")
    return out


def is_distributed(path) -> bool:
    """Whether ``path`` is a distributed dump: a folder with rank folders and no manifest of its own."""
    if isinstance(path, RankedDump):
        return True
    if isinstance(path, Dump):
        return False
    path = os.fspath(path)
    return (os.path.isdir(path) and not os.path.exists(os.path.join(path, MANIFEST))
            and bool(rank_folders(path)))


@dataclass
class RankInfo:
    """What the parent of a distributed compare keeps of one rank's manifest."""

    rank: int
    path: str
    run: dict  # the manifest's "distributed" entry
    framework: str
    model_class: str


class RankedDump:
    """A distributed dump: ``FOLDER/rank<k>/``, one whole dump per rank. Each rank's manifest is
    read once to check it (a rank that was interrupted is refused as a single dump is) and only
    its ``distributed`` entry is kept; ``open(k)`` loads a rank's dump."""

    def __init__(self, path: str):
        self.path = os.fspath(path).rstrip(os.sep) or os.fspath(path)
        self.ranks: Dict[int, RankInfo] = {}
        for k, folder in sorted(rank_folders(self.path).items()):
            manifest = read_manifest(folder)
            d = manifest.get("distributed")
            if not isinstance(d, dict) or d.get("rank") != k:
                raise PadiffError(f"`{folder}` is not the dump of rank {k} of a distributed run (its manifest says "
                                  f"{'rank ' + str(d.get('rank')) if isinstance(d, dict) else 'no rank'}). Dump "
                                  "again, or move it out of the folder.")
            self.ranks[k] = RankInfo(k, folder, d, manifest["framework"], manifest["model"]["class"])
            del manifest
        if not self.ranks:
            raise PadiffError(f"`{self.path}` holds no rank folders: it is not a distributed padiff dump.")
        first = self.ranks[min(self.ranks)]
        self.world_size: int = int(first.run["world_size"])
        self.framework: str = first.framework
        self.model_class: str = first.model_class
        for info in self.ranks.values():
            if int(info.run["world_size"]) != self.world_size or info.framework != self.framework:
                raise PadiffError(
                    f"The rank dumps in `{self.path}` come from different runs: rank {first.rank} ran {first.framework} "
                    f"on {self.world_size} ranks, rank {info.rank} {info.framework} on {info.run['world_size']}. "
                    "Dump every rank of one run into the folder.")
        runs = {info.run.get("run") for info in self.ranks.values()}
        if len(runs) > 1 and None not in runs:
            raise PadiffError(f"The rank dumps in `{self.path}` come from different runs (launched at "
                              f"{', '.join(sorted(map(str, runs)))}): dump every rank of one run into the folder.")
        extra = sorted(k for k in self.ranks if k >= self.world_size)
        if extra:
            raise PadiffError(f"`{self.path}` holds rank {extra[0]}, but the run had {self.world_size} ranks: it is "
                              "left from another run. Remove it.")
        self.missing = sorted(set(range(self.world_size)) - set(self.ranks))
        self.degrees: Dict[str, int] = dict(first.run.get("degrees") or {})
        self.backend = first.run.get("backend")

    def group(self, rank: int, name: str) -> List[int]:
        return list(self.ranks[rank].run.get("groups", {}).get(name) or [rank])

    @property
    def tp(self) -> int:
        return int(self.degrees.get("tp", 1))

    @property
    def pp(self) -> int:
        return int(self.degrees.get("pp", 1))

    def replicas(self) -> List[List[int]]:
        """The tensor-parallel groups (each one model replica), ordered by their first rank."""
        seen, out = set(), []
        for k in sorted(self.ranks):
            g = tuple(sorted(self.group(k, "tp")))
            if g not in seen:
                seen.add(g)
                out.append(list(g))
        return out

    def describe(self) -> str:
        text = (f"{self.framework}, {self.world_size} ranks: {degrees_text(self.degrees)}"
                f"{', ' + self.backend if self.backend else ''}")
        if self.missing:
            text += f"; {ranks_text(self.missing)} not dumped"
        return text

    def __repr__(self) -> str:
        return f"RankedDump({self.path!r}, framework={self.framework!r}, ranks={sorted(self.ranks)})"


def open_rank(path: str) -> Dump:
    """One rank's dump, its tensor-parallel layers standing for their unsharded classes."""
    d = open_dump(path)
    return Dump(d.path, unsharded_classes(d.manifest))
