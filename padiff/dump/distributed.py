"""Distributed runs: one dump per rank, ranks paired between two runs, tensor-parallel shards gathered.

**Writing.** ``padiff.dump`` inside a torch.distributed or paddle.distributed run (found through
the adapter's ``distributed_info``, not configured) writes each rank's dump into
``FOLDER/rank<k>/``: a whole dump of the usual format whose manifest's ``distributed`` entry says
the rank, the world size, the backend and the parallel groups (:func:`run_entry`), and whose layer
table marks each tensor-parallel layer with its layout (:func:`layer_layout`).

**Reading.** A folder without a manifest of its own that holds ``rank<k>/`` dumps is a
:class:`RankedDump`; each rank is read as an ordinary :class:`~padiff.dump.reader.Dump`.

**Comparing** (``ranked.py``, :func:`~padiff.dump.ranked.compare_distributed`). Two runs of the same layout (world size and groups)
are compared rank by rank: rank k with rank k, shards with shards. Otherwise each side's
tensor-parallel groups are gathered into one unsharded run each (:class:`GatheredDump`) and
compared data-parallel replica by replica: so a tensor-parallel run is compared with a
single-process one, or with a run at another tensor-parallel degree. A single-process dump is
compared with the distributed run's rank 0 (its tensor-parallel group gathered); ``rank=k``
chooses another rank's replica, ``rank="all"`` compares it with every replica. Each pair is
compared by ``compare_dumps`` as two single dumps are (one pair of arrays at a time), in this
process or in ``jobs`` worker processes, one pair per process at a time.

**Layouts, as rules** (Megatron-LM's, which paddle's fleet classes follow):

* ``column`` (ColumnParallelLinear): the weight and bias are sharded on the output features; the
  output on its last dim (unless the layer gathers it); the input is whole on every rank.
* ``row`` (RowParallelLinear): the weight is sharded on the input features, the bias is whole;
  the input is sharded on its last dim; the output is all-reduced (whole on every rank; when the
  all-reduce comes after the layer, its partial outputs are summed).
* ``vocab`` (VocabParallelEmbedding): the weight is sharded on its rows (the vocabulary); the
  output is all-reduced (or summed, as for ``row``).

Values recorded between tensor-parallel layers (activations, attention scores, their framework
calls) follow no declared rule: each is whole on every rank or sharded along one dim, which the
shape of its counterpart in the other run tells (:func:`resolve_shards`).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..compare.api_names import canonical
from ..compare.result import STAGE_TITLES, Verdict
from ..errors import PadiffError
from ..record.trace import Node, TensorRecord, Trace
from .format import FORMAT, MANIFEST, PARTIAL, partial_pid, pid_alive, read_manifest
from .reader import Dump, DumpAdapter, LazyRecord, open_dump

LAYOUTS = ("column", "row", "vocab")
_LAYOUT_WORDS = {"column": "column", "col": "column", "colwise": "column", "column_parallel": "column",
                 "row": "row", "rowwise": "row", "row_parallel": "row",
                 "vocab": "vocab", "vocab_parallel": "vocab", "embedding": "vocab",
                 "none": None, "replicated": None}
TITLES = {"column": "column-parallel", "row": "row-parallel", "vocab": "vocab-parallel"}
# The unsharded class a tensor-parallel layer stands for: the weight rules apply to it.
_UNSHARDED_CLASS = {"column": "Linear", "row": "Linear", "vocab": "Embedding"}
_RANK_DIR = re.compile(r"^rank(\d+)(" + re.escape(PARTIAL) + r"\d+)?$")


# --- layouts ----------------------------------------------------------------------------------------

def layout_map(mapping, what: str = "tp_layout") -> Dict[str, Optional[str]]:
    """A user's ``{layer path pattern: layout}``, checked: layouts are ``column``, ``row``,
    ``vocab`` (or ``none``: not sharded, whatever its class)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise PadiffError(f"{what} must be a dict {{layer path: layout}}, such as {{'mlp.up': 'column', "
                          f"'mlp.down': 'row'}}; got a {type(mapping).__name__}.")
    out = {}
    for key, value in mapping.items():
        word = value.lower().replace("-", "_") if isinstance(value, str) else value
        if not isinstance(key, str) or not key or word not in _LAYOUT_WORDS:
            raise PadiffError(f"{what}[{key!r}] = {value!r}: a layer path (dotted, fnmatch patterns allowed) maps "
                              "to 'column', 'row', 'vocab' or 'none'.")
        out[key] = _LAYOUT_WORDS[word]
    return out


def match_layout(mapping: Dict[str, Optional[str]], path: str, root: str):
    """(key, layout) of the first pattern of ``mapping`` matching the dotted ``path`` (with or
    without the model's root name), or None."""
    rel = path[len(root) + 1:] if path.startswith(root + ".") else path
    for key, layout in mapping.items():
        if fnmatch.fnmatchcase(rel, key) or fnmatch.fnmatchcase(path, key):
            return key, layout
    return None


def layer_layout(ad, layer, path: str, root: str, mapping: Dict[str, Optional[str]]) -> Optional[dict]:
    """The layer table's ``tp`` entry of one layer while dumping: from the user's mapping,
    else from the framework's tensor-parallel classes (by class name); None for others."""
    hit = match_layout(mapping, path, root) if mapping else None
    if hit is not None:
        return {"layout": hit[1], "from": f"tp_layout[{hit[0]!r}]"} if hit[1] else None
    for cls in type(layer).__mro__:  # the class's own name, or a base class's
        layout = ad.parallel_layer_classes.get(cls.__name__)
        if layout is not None:
            return {"layout": layout, "from": f"class {cls.__name__}"}
    return None


def shard_dim(layout: Optional[str], ndim: int, weight_layout: Optional[str]) -> Optional[int]:
    """The dim along which a parameter of a ``layout`` layer is sharded; None when it is whole
    on every rank. ``weight_layout`` is how the framework stores a Linear weight (``out_in``:
    torch, ``in_out``: paddle)."""
    if layout == "column":
        if ndim == 2:
            return 0 if weight_layout == "out_in" else 1
        return 0 if ndim == 1 else None
    if layout == "row":
        return (1 if weight_layout == "out_in" else 0) if ndim == 2 else None
    if layout == "vocab":
        return 0 if ndim == 2 else None
    return None


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


def prepare_folder(folder: str, rank: int, world: int) -> None:
    """Before a rank writes ``folder/rank<k>``: refuse a folder holding a single-process dump;
    rank 0 removes the dumps of ranks this run does not have (left by a larger run)."""
    if os.path.isfile(folder):
        raise PadiffError(f"`{folder}` is a file: a distributed padiff.dump writes one folder per rank into the "
                          "folder it is given. Choose another path.")
    if _is_padiff_manifest(os.path.join(folder, MANIFEST)):
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
        if m.group(2) or _is_padiff_manifest(os.path.join(full, MANIFEST)):
            shutil.rmtree(full, ignore_errors=True)


def _is_padiff_manifest(file: str) -> bool:
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def describe_run(d: dict) -> str:
    """``rank 1 of 2`` and the groups: ``tensor-parallel 2 (ranks 0-1), data-parallel 1``."""
    return f"rank {d['rank']} of {d['world_size']}, {_degrees_text(d.get('degrees', {}))}"


_GROUP_TITLES = {"dp": "data-parallel", "tp": "tensor-parallel", "pp": "pipeline-parallel",
                 "sharding": "sharding", "sep": "sequence-parallel"}


def _degrees_text(degrees: dict) -> str:
    order = list(_GROUP_TITLES) + sorted(k for k in degrees if k not in _GROUP_TITLES)
    shown = [f"{_GROUP_TITLES.get(k, k)} {degrees[k]}" for k in order if degrees.get(k, 1) > 1]
    return ", ".join(shown) or "data-parallel 1"


def ranks_text(ranks: Sequence[int]) -> str:
    ranks = sorted(ranks)
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


# --- reading a distributed dump ------------------------------------------------------------------------

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
        text = (f"{self.framework}, {self.world_size} ranks: {_degrees_text(self.degrees)}"
                f"{', ' + self.backend if self.backend else ''}")
        if self.missing:
            text += f"; {ranks_text(self.missing)} not dumped"
        return text

    def __repr__(self) -> str:
        return f"RankedDump({self.path!r}, framework={self.framework!r}, ranks={sorted(self.ranks)})"


def unsharded_classes(manifest: dict) -> dict:
    """The manifest with each tensor-parallel layer's class given as the class it stands for
    (``Linear``, ``Embedding``), so the weight rules apply; its own class stays in its repr."""
    if not any(e.get("tp") for e in manifest["layers"]):
        return manifest
    out = dict(manifest)
    out["layers"] = [dict(e, **{"class": _UNSHARDED_CLASS[e["tp"]["layout"]], "builtin": True,
                                "repr": f"{e.get('repr', e['class'])} [{TITLES[e['tp']['layout']]}]"})
                     if e.get("tp") else e for e in manifest["layers"]]
    return out


def open_rank(path: str) -> Dump:
    """One rank's dump, its tensor-parallel layers standing for their unsharded classes."""
    d = open_dump(path)
    return Dump(d.path, unsharded_classes(d.manifest))


# --- gathering a tensor-parallel group ---------------------------------------------------------------

_DROP = "drop"  # a sharded value whose shard dim could not be told: not compared


class GatheredRecord(TensorRecord):
    """One value of a tensor-parallel group, made from its ranks' records when read: concatenated
    along a dim (``("cat", d)``), summed (``"sum"``), rank 0's (``"whole"``), rank 0's if every
    rank holds the same else summed (``"whole_or_sum"``), or not yet known (None: the shard
    shapes are shown until :func:`resolve_shards` decides)."""

    def __init__(self, parts: List[TensorRecord], mode=None):
        self.parts = parts
        self.mode = mode
        self.dtype = parts[0].dtype
        self.value = None
        self.file = getattr(parts[0], "file", None)

    @property
    def is_tensor(self) -> bool:
        return self.parts[0].is_tensor and self.mode != _DROP

    @property
    def is_object(self) -> bool:
        return self.mode == _DROP

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
        if mode == _DROP:
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


class _GatheredAdapter(DumpAdapter):
    def to_numpy(self, tensor) -> np.ndarray:
        return self.dump.initial(tensor).array


def _layer_layouts(base: dict, mapping) -> Tuple[Dict[int, Tuple[str, str]], List[str]]:
    """layer index -> (layout, where it was found) for a dump's tensor-parallel layers, the
    user's ``tp_layout`` over what the dump recorded; and the layouts it overrode, in words."""
    root = base["model"]["name"]
    layouts: Dict[int, Tuple[str, str]] = {}
    overridden = []
    for e in base["layers"]:
        found = (e["tp"]["layout"], e["tp"]["from"]) if e.get("tp") else None
        hit = match_layout(mapping, e["path"], root) if mapping else None
        if hit is not None:
            if found and found[0] != hit[1]:
                overridden.append(f"`{e['path']}` ({TITLES.get(found[0])} by its {found[1]}) as "
                                  f"{TITLES.get(hit[1], 'not sharded')}")
            found = (hit[1], f"tp_layout[{hit[0]!r}]") if hit[1] else None
        if found:
            layouts[int(e["index"])] = found
    return layouts, overridden


def _tensor_modes(base: dict, layouts, weight_layout) -> Dict[int, object]:
    """Every parameter's gather mode (``("cat", dim)`` or "whole"), from the layout of the
    layer that owns it."""
    modes: Dict[int, object] = {}
    for e in base["layers"]:
        layout = layouts.get(int(e["index"]), (None,))[0]
        for _, ti in e["params"]:
            if ti in modes:
                continue
            d = shard_dim(layout, len(base["tensors"][ti]["shape"]), weight_layout)
            modes[ti] = ("cat", d) if d is not None else "whole"
    return modes


class GatheredDump(Dump):
    """The ranks of one tensor-parallel group, seen as one unsharded run: parameters gathered by
    their layer's layout, every recorded value made from the ranks' values (:class:`GatheredRecord`).
    Framework calls inside tensor-parallel layers (partial sums, collectives) are left out; the
    layers' own results are compared."""

    def __init__(self, parts: List[Dump], label: str, ranks: Sequence[int], tp_layout=None):
        self.parts = parts
        self.group = list(ranks)
        base = parts[0].manifest
        weight_layout = base.get("linear_weight_layout")
        self.layouts, overridden = _layer_layouts(base, layout_map(tp_layout))
        if self.layouts and weight_layout is None:
            raise PadiffError(f"`{parts[0].path}` was made by an older padiff that did not record how its framework "
                              "stores Linear weights: dump it again to gather its tensor-parallel shards.")
        self.tensor_modes = _tensor_modes(base, self.layouts, weight_layout)
        manifest = dict(base, tensors=self._gathered_tensors(base), layers=self._gathered_layers(base),
                        notes=self._notes(base, label, overridden))
        super().__init__(f"{label} [{ranks_text(self.group)}]", manifest)
        self.adapter = _GatheredAdapter(self)
        self._weight_shapes = {}  # layer index -> the local shape of its 2-d weight
        for e in base["layers"]:
            for name, ti in e["params"]:
                if len(base["tensors"][ti]["shape"]) == 2:
                    self._weight_shapes.setdefault(int(e["index"]), tuple(base["tensors"][ti]["shape"]))
        self._weight_layout = weight_layout

    def _gathered_tensors(self, base: dict) -> List[dict]:
        """The manifest's tensor table with each sharded parameter at its gathered shape."""
        tensors = []
        for e in base["tensors"]:
            mode = self.tensor_modes.get(int(e["index"]), "whole")
            shape = list(e["shape"])
            if isinstance(mode, tuple):
                shape[mode[1]] *= len(self.parts)
            tensors.append(dict(e, shape=shape))
        return tensors

    def _gathered_layers(self, base: dict) -> List[dict]:
        """The manifest's layer table with each tensor-parallel layer standing for its unsharded class."""
        layers = []
        for e in base["layers"]:
            lay = self.layouts.get(int(e["index"]))
            if lay:
                e = dict(e, **{"class": _UNSHARDED_CLASS[lay[0]], "builtin": True,
                               "repr": f"{e.get('repr', e['class'])} [{TITLES[lay[0]]}, {len(self.parts)} shards "
                                       "gathered]"})
            layers.append(e)
        return layers

    def _notes(self, base: dict, label: str, overridden: List[str]) -> List[str]:
        counts = {}
        for layout, _ in self.layouts.values():
            counts[layout] = counts.get(layout, 0) + 1
        notes = list(base.get("notes", []))
        notes.append(f"{ranks_text(self.group)} of `{label}` ran tensor-parallel; their shards were gathered: "
                     + (", ".join(f"{n} {TITLES[k]}" for k, n in counts.items()) + " layer(s)"
                        if counts else "no tensor-parallel layers were found (tp_layout declares them)") + ".")
        if overridden:
            notes.append("tp_layout gathered " + "; ".join(overridden) + ".")
        return notes

    # --- parameters ----------------------------------------------------------------------------
    def _param(self, tensor, get) -> Optional[TensorRecord]:
        recs = [get(p, p.tensors[tensor.index]) for p in self.parts]
        if any(r is None for r in recs):
            return None
        if not isinstance(recs[0], LazyRecord):
            return recs[0]
        return GatheredRecord(recs, self.tensor_modes.get(tensor.index, "whole"))

    def initial(self, tensor) -> TensorRecord:
        return self._param(tensor, lambda p, t: p.initial(t))

    def grad(self, tensor, step: int):
        return self._param(tensor, lambda p, t: p.grad(t, step))

    def weight_after(self, tensor, step: int):
        return self._param(tensor, lambda p, t: p.weight_after(t, step))

    # --- whole on every rank -----------------------------------------------------------------------
    def inputs(self):
        return self.parts[0].inputs()

    def loss(self, step: int):
        return self.parts[0].loss(step)

    def lr(self, step: int):
        return self.parts[0].lr(step)

    # --- the call tree ---------------------------------------------------------------------------
    def trace(self, step: int = 0, api: bool = True) -> Trace:
        traces = [p.trace(step, api=api) for p in self.parts]
        base = traces[0]
        for k, tr in enumerate(traces[1:], 1):
            bad = len(tr.nodes) != len(base.nodes) or next(
                (i for i, (x, y) in enumerate(zip(base.nodes, tr.nodes))
                 if (x.kind, x.name, x.path) != (y.kind, y.name, y.path)), None) is not None
            if bad:
                raise PadiffError(
                    f"Ranks {self.group[0]} and {self.group[k]} of `{self.path}` recorded different calls in step "
                    f"{step} ({len(base.nodes)} and {len(tr.nodes)}): the ranks of a tensor-parallel group run the "
                    "same code on the same data. Check the dumps.")
        shared: Dict[tuple, GatheredRecord] = {}

        def wrap(recs):
            if not isinstance(recs[0], LazyRecord):
                return recs[0]
            key = tuple(id(r) for r in recs)
            got = shared.get(key)
            if got is None:
                got = shared[key] = GatheredRecord(list(recs))
            return got

        for i, n in enumerate(base.nodes):
            others = [tr.nodes[i] for tr in traces]
            n.outputs = [(idp, wrap([o.outputs[j][1] for o in others])) for j, (idp, _) in enumerate(n.outputs)]
            for attr in ("grad_out", "grad_in"):
                mine = getattr(n, attr)
                setattr(n, attr, {k: wrap([getattr(o, attr).get(k, r) for o in others]) for k, r in mine.items()})
            if n.in_prints is not None and all(o.in_prints is not None for o in others):
                n.in_prints = _gathered_norms([o.in_prints for o in others])
        if base.loss is not None and isinstance(base.loss, LazyRecord):
            base.loss = GatheredRecord([tr.loss for tr in traces], "whole")
        inside = []
        for n in base.nodes:
            lay = self.layouts.get(n.layer_key) if n.kind == "net" else None
            if lay is not None:
                self._apply_rules(n, lay[0])
                inside.extend(c for c in n.walk() if c is not n and c.kind == "api")
        if inside:
            gone = {id(c) for c in inside}
            for n in base.nodes:
                n.children = [c for c in n.children if id(c) not in gone]
            base.nodes = [n for n in base.nodes if id(n) not in gone]
        return base

    def _apply_rules(self, node: Node, layout: str) -> None:
        """The modes the layout rules give a tensor-parallel layer's own values."""
        shape = self._weight_shapes.get(node.layer_key)
        out_dim = shard_dim("column", 2, self._weight_layout)
        in_dim = shard_dim("row", 2, self._weight_layout)

        def last_dim_is(size):
            return lambda r: ("cat", len(r.shape) - 1) if size is not None and r.shape and r.shape[-1] == size \
                else "whole"

        if layout == "column":
            rules = {"outputs": last_dim_is(shape[out_dim] if shape else None),
                     "grad_out": last_dim_is(shape[out_dim] if shape else None),
                     "grad_in": lambda r: "whole_or_sum"}  # partial where the copy-to-ranks op is outside
        elif layout == "row":
            rules = {"outputs": lambda r: "whole_or_sum", "grad_out": lambda r: "whole",
                     "grad_in": last_dim_is(shape[in_dim] if shape else None)}
        else:
            rules = {"outputs": lambda r: "whole_or_sum", "grad_out": lambda r: "whole",
                     "grad_in": lambda r: "whole"}
        for attr, rule in rules.items():
            for r in _records(node, attr):
                if isinstance(r, GatheredRecord) and r.mode is None:
                    r.mode = rule(r)

    def check_layouts(self) -> None:
        """Refuse a layout that does not fit the shards, from the data alone: a column-parallel
        layer's output is sharded, so it differs between ranks (a row-parallel layer's is
        all-reduced: the same on every rank); a row-parallel layer's input is sharded, so its
        input gradient differs between ranks (a column-parallel layer's is whole, or partial where
        the all-reduce of its input gradient comes after the layer). Read at each layer's first
        call of step 0."""
        if not self.layouts or not self.steps:
            return
        trace = self.trace(0, api=False)
        seen = set()
        wrong = []
        for n in trace.nodes:
            lay = self.layouts.get(n.layer_key) if n.kind == "net" else None
            if lay is None or n.layer_key in seen:
                continue
            seen.add(n.layer_key)
            layout = lay[0]
            outs = [r for r in _records(n, "outputs") if isinstance(r, GatheredRecord) and r.is_tensor]
            gins = [r for r in _records(n, "grad_in") if isinstance(r, GatheredRecord) and r.is_tensor]
            why = []
            if layout == "column":  # (its input gradients may be partial sums: they tell nothing)
                sharded_out = [r for r in outs if isinstance(r.mode, tuple)]
                if sharded_out and all(same_on_ranks(r) for r in sharded_out):
                    why.append("its outputs are the same on every rank (all-reduced)")
                like = "row"
            elif layout == "row":
                sharded_in = [r for r in gins if isinstance(r.mode, tuple)]
                if sharded_in and all(same_on_ranks(r) for r in sharded_in):
                    why.append("its input gradients are the same on every rank (its input is whole)")
                like = "column"
            else:
                continue
            if why:
                wrong.append((n.path, layout, lay[1], like, why))
        if wrong:
            root = self.model_name
            lines = []
            for path, layout, source, like, why in wrong:
                rel = path[len(root) + 1:] if path.startswith(root + ".") else path
                lines.append(f"`{path}` is gathered as {TITLES[layout]} (from its {source}), but "
                             f"{' and '.join(why)}, as a {TITLES[like]} layer's are: its layout is {like!r} "
                             f"(tp_layout={{{rel!r}: {like!r}}})")
            raise PadiffError(
                f"The tensor-parallel layout of {len(wrong)} layer(s) of `{self.path}` does not fit the shards, so "
                "they cannot be gathered: " + "; ".join(lines) + ". Declare the right layout with tp_layout (on "
                "padiff.dump or padiff.compare_dumps, `--tp-layout PATH=LAYOUT` on the command line), or fix the "
                "layer if its class is wrong.")


def _records(node: Node, attr: str) -> List[TensorRecord]:
    if attr == "outputs":
        return [r for _, r in node.outputs]
    return list(getattr(node, attr).values())


def _gathered_norms(prints: List[Tuple[float, ...]]) -> Tuple[float, ...]:
    """A framework call's input norms over the group: one rank's where every rank saw the same
    input, else the norm of the shards together."""
    out = []
    for values in zip(*prints):
        first = values[0]
        if all(abs(v - first) <= 1e-6 * max(abs(first), 1e-30) for v in values):
            out.append(first)
        else:
            out.append(float(np.sqrt(sum(v * v for v in values))))
    return tuple(out)


# --- shard dims the rules do not declare: told by the counterpart's shape ------------------------------

def _candidates(rec):
    """(mode, full shape) this record may stand for."""
    if isinstance(rec, GatheredRecord) and rec.mode is None:
        s, t = tuple(rec.parts[0].shape), len(rec.parts)
        return [("whole", s)] + [(("cat", d), s[:d] + (s[d] * t,) + s[d + 1:]) for d in range(len(s))]
    if not rec.is_tensor:
        return []
    return [(None, tuple(rec.shape))]


def _resolve(x, y) -> None:
    cx, cy = _candidates(x), _candidates(y)
    if not cx or not cy or (cx[0][0] is None and cy[0][0] is None):
        return
    fits = [(mx, my) for mx, sx in cx for my, sy in cy if sx == sy]
    if not fits:  # the same axes in another order (a port that moves the head axis)
        fits = [(mx, my) for mx, sx in cx for my, sy in cy if sorted(sx) == sorted(sy)]
    if not fits:
        return
    both_whole = [f for f in fits if f[0] in (None, "whole") and f[1] in (None, "whole")]
    if both_whole:
        fits = both_whole[:1]
    if len(fits) != 1:
        return
    mx, my = fits[0]
    for rec, mode in ((x, mx), (y, my)):
        if mode is not None and isinstance(rec, GatheredRecord) and rec.mode is None:
            rec.mode = mode


def _resolve_nodes(a: Node, b: Node) -> None:
    for attr in ("outputs", "grad_out", "grad_in"):
        for x, y in zip(_records(a, attr), _records(b, attr)):
            _resolve(x, y)


def _undecided(trace: Trace) -> bool:
    return any(isinstance(r, GatheredRecord) and r.mode is None
               for n in trace.nodes for attr in ("outputs", "grad_out", "grad_in") for r in _records(n, attr))


def resolve_shards(ref: Trace, test: Trace, pair) -> List[str]:
    """Decide how the values no layout rule covers are sharded, from their counterparts' shapes:
    a value of the shape its counterpart has is whole on every rank; one whose counterpart is
    ``tp`` times larger along one dim is sharded along it. ``pair(ref, test)`` pairs the calls
    as the comparison does (on the shard shapes: calls of sharded values do not pair yet); the
    framework calls left unpaired inside paired layers are matched by operation, in order. A
    value still undecided is not compared (a note says how many)."""
    if not (_undecided(ref) or _undecided(test)):
        return []
    pairing = pair(ref, test)
    spellings = {**ref.api_spellings, **test.api_spellings}
    paired = set()
    for a, b in pairing.pairs:
        _resolve_nodes(a, b)
        paired.update((id(a), id(b)))
    for a, b in pairing.pairs:
        if a.kind != "net":
            continue
        ca = [c for c in a.children if c.kind == "api" and id(c) not in paired]
        cb = [c for c in b.children if c.kind == "api" and id(c) not in paired]
        if not ca or not cb:
            continue
        sm = difflib.SequenceMatcher(a=[canonical(c.name, spellings) for c in ca],
                                     b=[canonical(c.name, spellings) for c in cb], autojunk=False)
        for blk in sm.get_matching_blocks():
            for k in range(blk.size):
                _resolve_nodes(ca[blk.a + k], cb[blk.b + k])
    dropped, where = set(), None
    for trace in (ref, test):
        for n in trace.nodes:
            for attr in ("outputs", "grad_out", "grad_in"):
                for r in _records(n, attr):
                    if isinstance(r, GatheredRecord) and r.mode is None:
                        r.mode = _DROP
                        dropped.add(id(r))
                        where = where or n
    if not dropped:
        return []
    return [f"{len(dropped)} value(s) recorded between the tensor-parallel layers (first in `{where.label()}`) "
            "have no counterpart of a shape that tells how they are sharded: they are not compared."]


# --- the results of comparing two distributed runs (compared in ranked.py) ----------------------------

@dataclass(eq=False)
class RankResult:
    """One compared pair of a distributed comparison: true when it agrees."""

    label: str  # "rank 1", or "replica 0" with the ranks of each side
    ranks_a: List[int]
    ranks_b: List[int]
    passed: bool
    stage: Optional[str] = None  # of the first difference (a key of STAGE_TITLES)
    step: Optional[int] = None
    order: Optional[Tuple[int, int]] = None  # (step, position in the order padiff checks)
    ref_path: str = ""
    test_path: str = ""
    where: str = ""  # one line: the first difference
    cause: str = ""
    report: str = ""  # the full report of this pair
    log_dir: str = ""
    # the AlignResult, for one pair compared in this process: the first to diverge, else the first
    result: object = None
    by_rank: bool = True  # a rank (or one rank's gathered group), not a data-parallel replica

    def __bool__(self) -> bool:
        return self.passed


@dataclass(eq=False)
class DistributedResult(Verdict):
    """What ``compare_dumps`` returns for distributed dumps: true when every compared pair of
    ranks agrees; ``ranks`` holds each pair's :class:`RankResult`, ``first`` the one that
    diverged first (the earliest first difference in the order padiff checks)."""

    passed: bool
    ranks: List[RankResult] = field(default_factory=list)
    first: Optional[RankResult] = None
    heading: str = ""
    notes: List[str] = field(default_factory=list)
    report: str = ""
    log_files: List[str] = field(default_factory=list)

    @property
    def agreeing(self) -> List[str]:
        return [r.label for r in self.ranks if r.passed]

    def __repr__(self) -> str:
        if self.passed:
            return f"DistributedResult(passed=True, pairs={len(self.ranks)})"
        return (f"DistributedResult(passed=False, first={self.first.label!r}, stage={self.first.stage!r}, "
                f"at={self.first.test_path!r})")
