"""The results of comparing two distributed runs (compared in ``ranked.py``): one per compared
pair of ranks or replicas, and the verdict over them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..compare.result import Verdict


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
