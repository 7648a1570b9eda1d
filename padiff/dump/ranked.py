"""Two runs compared when at least one is distributed (see ``distributed.py``): the pairs of
runs to compare are planned (rank with rank, replica with replica, or a single-process run with
one rank's group), each pair compared as two single dumps are (``offline.py``), in this process
or in worker processes, and the per-rank verdicts gathered."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import multiprocessing
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..compare.result import STAGE_TITLES
from ..errors import PadiffError
from ..options import build_options
from ..report.console import P
from ..report.run import Printer, distributed_tail
from .distributed_result import DistributedResult, RankResult
from .gather import GatheredDump
from .offline import compare_two
from .parallel_groups import ranks_text
from .ranks import RankedDump, is_distributed, open_rank
from .reader import Dump, open_dump
from .tp_layout import layout_map


@dataclass
class Unit:
    """One pair of runs to compare: each side a single dump, one rank, or a gathered group."""

    label: str
    a: tuple  # ("single", path) | ("rank", path, k) | ("gather", path, [ranks])
    b: tuple
    folder: str = ""  # of its log files and report, in the log folder: rank1, ranks0-1, replica0
    by_rank: bool = True  # a rank (or one rank's gathered group), not a data-parallel replica

    def ranks(self, side: int) -> List[int]:
        spec = (self.a, self.b)[side]
        return [] if spec[0] == "single" else [spec[2]] if spec[0] == "rank" else list(spec[2])


# --- which pairs ----------------------------------------------------------------------------------

def plan_units(a, b, rank=None) -> Tuple[List[Unit], str, List[str]]:
    """The pairs to compare, a sentence saying so, and notes."""
    notes: List[str] = []
    if rank is not None and rank != "all" and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
        raise PadiffError(f"rank must be a rank number or 'all', got {rank!r}.")
    if isinstance(a, RankedDump) and isinstance(b, RankedDump):
        for d in (a, b):
            if d.missing:
                notes.append(f"`{d.path}`: {ranks_text(d.missing)} of {d.world_size} were not dumped.")
        common = sorted(set(a.ranks) & set(b.ranks))
        if a.world_size == b.world_size and common and all(
                a.ranks[k].run.get("groups") == b.ranks[k].run.get("groups") for k in common):
            return _same_layout_units(a, b, common, rank) + (notes,)
        return _replica_units(a, b, rank, notes) + (notes,)
    return _single_units(a, b, rank, notes) + (notes,)


def _same_layout_units(a: RankedDump, b: RankedDump, common: List[int], rank) -> Tuple[List[Unit], str]:
    if rank not in (None, "all"):
        if rank not in common:
            raise PadiffError(f"rank={rank}: both dumps hold {ranks_text(common)}.")
        common = [rank]
    units = [Unit(f"rank {k}", ("rank", a.ranks[k].path, k), ("rank", b.ranks[k].path, k), f"rank{k}")
             for k in common]
    return units, ("Both ran the same layout: each rank is compared with the same rank of the other run, "
                   "shard with shard.")


def _replica_units(a: RankedDump, b: RankedDump, rank, notes: List[str]) -> Tuple[List[Unit], str]:
    if a.pp > 1 or b.pp > 1:
        raise PadiffError(
            f"`{(a if a.pp > 1 else b).path}` ran pipeline-parallel ({(a if a.pp > 1 else b).pp} stages): each rank "
            "holds one stage's layers, so padiff compares such runs only rank by rank, with another run of the "
            "same layout.")
    ra, rb = a.replicas(), b.replicas()
    n = min(len(ra), len(rb))
    if len(ra) != len(rb):
        notes.append(f"`{a.path}` holds {len(ra)} model replica(s) (data-parallel) and `{b.path}` {len(rb)}: the "
                     f"first {n} are compared.")
    idx = list(range(n))
    if rank not in (None, "all"):
        idx = [i for i in idx if rank in ra[i]] or [i for i in idx if rank in rb[i]]
        if not idx:
            raise PadiffError(f"rank={rank} is in no compared replica.")
    if a.tp == b.tp and a.tp > 1:  # the same shards: compared shard by shard, nothing gathered
        units = [Unit(f"replica {i} tp rank {j} ({ranks_text([ra[i][j]])} / {ranks_text([rb[i][j]])})",
                      ("rank", a.ranks[ra[i][j]].path, ra[i][j]), ("rank", b.ranks[rb[i][j]].path, rb[i][j]),
                      f"replica{i}_tp{j}", by_rank=False) for i in idx for j in range(a.tp)]
        return units, (f"The two runs used different layouts with the same tensor-parallel degree ({a.tp}): "
                       "data-parallel replica i of one run is compared with replica i of the other, shard by "
                       "shard (tensor-parallel rank j with rank j).")
    units = [Unit(f"replica {i} ({ranks_text(ra[i])} / {ranks_text(rb[i])})", _spec(a, ra[i]), _spec(b, rb[i]),
                  f"replica{i}", by_rank=False) for i in idx]
    return units, ("The two runs used different layouts: each run's tensor-parallel group is gathered into one "
                   "unsharded model, and data-parallel replica i of one run is compared with replica i of the "
                   "other.")


def _single_units(a, b, rank, notes: List[str]) -> Tuple[List[Unit], str]:
    single, dist = (a, b) if isinstance(b, RankedDump) else (b, a)
    if dist.missing:
        notes.append(f"`{dist.path}`: {ranks_text(dist.missing)} of {dist.world_size} were not dumped.")
    if dist.pp > 1:
        raise PadiffError(f"`{dist.path}` ran pipeline-parallel ({dist.pp} stages): each rank holds one stage's "
                          "layers, so it cannot be compared with a single-process run.")
    replicas = dist.replicas()
    if rank == "all":
        chosen = replicas
    else:
        k = 0 if rank is None else rank
        chosen = [g for g in replicas if k in g]
        if not chosen:
            raise PadiffError(f"rank={k}: `{dist.path}` holds {ranks_text(sorted(dist.ranks))}.")
    units = []
    for g in chosen:
        spec = _spec(dist, g)
        label = f"rank {g[0]}" if len(g) == 1 else ranks_text(g) + " gathered"
        units.append(Unit(label, ("single", _path_of(single)) if single is a else spec,
                          spec if single is a else ("single", _path_of(single)),
                          f"rank{g[0]}" if len(g) == 1 else f"ranks{g[0]}-{g[-1]}"))
    what = ("every rank" if rank == "all" else f"rank {0 if rank is None else rank}")
    if dist.tp > 1:
        what += "'s tensor-parallel group, gathered into one unsharded model" if rank != "all" else \
            " (each tensor-parallel group gathered into one unsharded model)"
    return units, (f"`{_path_of(single)}` is a single-process run: it is compared with {what} of `{dist.path}`"
                   + ("" if rank is not None else " (rank=... chooses another rank, rank='all' every one)") + ".")


def _path_of(d) -> str:
    return d.path if isinstance(d, (Dump, RankedDump)) else os.fspath(d)


def _spec(d: RankedDump, group: List[int]) -> tuple:
    missing = [k for k in group if k not in d.ranks]
    if missing:
        raise PadiffError(f"`{d.path}`: {ranks_text(missing)} of the tensor-parallel group {group} were not dumped, "
                          "so the group's shards cannot be gathered. Dump every rank of the group.")
    return ("rank", d.ranks[group[0]].path, group[0]) if len(group) == 1 else ("gather", d.path, list(group))


# --- one pair -------------------------------------------------------------------------------------

def _open(spec: tuple, tp_layout) -> Dump:
    if spec[0] == "single":
        return open_dump(spec[1])
    if spec[0] == "rank":
        return open_rank(spec[1])
    _, path, ranks = spec
    parts = [open_rank(os.path.join(path, f"rank{k}")) for k in ranks]
    gathered = GatheredDump(parts, path, ranks, tp_layout)
    gathered.check_layouts()
    return gathered


def _first_order(result) -> Optional[Tuple[int, int]]:
    for s in result.steps:
        for i, f in enumerate(s.all_findings()):
            if f is result.first:
                return s.step, i
    return (len(result.steps), 0) if result.first is not None else None


def _where(f) -> str:
    d = f.diff
    figure = (f"relative L2 error {d.rel_l2:.3g}" if d.problem is None else
              {"shape": f"shapes {list(d.shape_b)} vs {list(d.shape_a)}"}.get(d.problem, d.problem))
    test = f"`{f.test_path}`" + (f" ({f.test_type})" if f.test_type else "")
    ref = f"`{f.ref_path}`" + (f" ({f.ref_type})" if f.ref_type else "")
    return f"{STAGE_TITLES.get(f.stage, f.stage)} of step {f.step}: {f.what} at {test} vs {ref}, {figure}"


def _compare_unit(unit: Unit, options, kwargs, tp_layout, log_dir: str, keep: bool) -> RankResult:
    unit_dir = os.path.join(log_dir, unit.folder or re.sub(r"[^A-Za-z0-9_.-]+", "_", unit.label).strip("_"))
    da, db = _open(unit.a, tp_layout), _open(unit.b, tp_layout)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = compare_two([da, db], options, **dict(kwargs, log_dir=unit_dir))
    os.makedirs(unit_dir, exist_ok=True)
    with open(os.path.join(unit_dir, "report.txt"), "w", encoding="utf-8") as fh:
        fh.write(result.report + "\n")
    out = RankResult(unit.label, unit.ranks(0), unit.ranks(1), bool(result.passed), report=result.report,
                     log_dir=unit_dir, result=result if keep else None, by_rank=unit.by_rank)
    f = result.first
    if f is not None:
        out.stage, out.step, out.order = f.stage, f.step, _first_order(result)
        out.ref_path, out.test_path, out.where = f.ref_path, f.test_path, _where(f)
    return out


def _unit_worker(args) -> Tuple[Optional[RankResult], Optional[str]]:
    """A worker process's task: compare one pair; a PadiffError comes back as its message."""
    unit, options, kwargs, tp_layout, log_dir = args
    try:
        return _compare_unit(unit, options, kwargs, tp_layout, log_dir, keep=False), None
    except PadiffError as exc:
        return None, str(exc)


# --- every pair -----------------------------------------------------------------------------------

def _in_process(units: List[Unit], options, kwargs, tp_layout, log_dir: str) -> List[RankResult]:
    """Each pair compared here, one at a time; one AlignResult is kept: the first pair to
    diverge (else the first pair)."""
    results: List[RankResult] = []
    kept = None
    for u in units:
        try:
            r = _compare_unit(u, options, kwargs, tp_layout, log_dir, keep=True)
        except PadiffError as exc:
            raise PadiffError(f"{u.label}: {exc}") from None
        if kept is None or (not r.passed and (kept.passed or r.order < kept.order)):
            if kept is not None:
                kept.result = None
            kept = r
        else:
            r.result = None
        results.append(r)
    return results


def _in_workers(units: List[Unit], options, kwargs, tp_layout, log_dir: str, workers: int) -> List[RankResult]:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no framework, no forked threads
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        answers = list(pool.map(_unit_worker, [(u, options, kwargs, tp_layout, log_dir) for u in units]))
    results = []
    for u, (r, error) in zip(units, answers):
        if error is not None:
            raise PadiffError(f"{u.label}: {error}")
        results.append(r)
    return results


def _explain_by_all_reduce(results: List[RankResult], first: Optional[RankResult], sides) -> None:
    """In a data-parallel run, a later pair whose parameters differ only after the first pair
    diverged got the difference through the gradient all-reduce: said as its cause."""
    dp_run = any(isinstance(s, RankedDump) and int(s.degrees.get("dp", 1)) > 1 for s in sides)
    for r in results:
        if not r.passed and r is not first and dp_run and r.stage in ("grad", "weight") and r.order > first.order:
            r.cause = (f"its forward and backward agree; {first.label}'s difference reaches its parameters through "
                       "the data-parallel gradient all-reduce")


def compare_distributed(path_a, path_b, options=None, *, rank=None, jobs: int = 1, tp_layout=None,
                        **kwargs) -> DistributedResult:
    """Compare two dumps of which at least one is distributed (see ``distributed.py``); print the
    per-rank report and return a :class:`~padiff.dump.distributed_result.DistributedResult`."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise PadiffError(f"jobs must be a positive whole number, got {jobs!r}.")
    layout_map(tp_layout)  # checked before any work
    opts = build_options(options, **kwargs)
    sides = [p if isinstance(p, (RankedDump, Dump)) else (RankedDump(p) if is_distributed(p) else open_dump(p))
             for p in (path_a, path_b)]
    units, heading, notes = plan_units(*sides, rank=rank)
    out = Printer()
    desc = [f"`{s.path}` ({s.describe()})" if isinstance(s, RankedDump) else
            f"`{s.path}` ({s.framework} {s.model_class}, single process)" for s in sides]
    out(f"{P} Distributed dumps: {desc[0]} and {desc[1]}.", f"{P} {heading}")
    workers = min(jobs, len(units))
    out(f"{P} {len(units)} pair(s) to compare, " + ("one at a time." if workers == 1 else
                                                       f"in {workers} worker processes, one pair each at a time."))
    out(*[f"{P} NOTE: {n}" for n in notes])
    results = (_in_process(units, options, kwargs, tp_layout, opts.log_dir) if workers == 1 else
               _in_workers(units, options, kwargs, tp_layout, opts.log_dir, workers))
    failed = [r for r in results if not r.passed]
    first = min(failed, key=lambda r: r.order) if failed else None
    _explain_by_all_reduce(results, first, sides)
    files = [os.path.join(r.log_dir, "report.txt") for r in results]
    out(*distributed_tail(results, first, files))
    return DistributedResult(first is None, results, first, heading, notes, out.text(), files)
