"""What ``compare``, ``check_dataloader`` and ``check_schedule`` return, and how it is reported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..compare.result import AlignResult, Finding
from ..report import checks as render
from ..report.console import write_log

LOG_FILES = {"compare": "compare.log", "dataloader": "dataloader_diff.log", "schedule": "schedule_diff.log"}


@dataclass(eq=False)
class CompareResult(AlignResult):
    """What ``compare``, ``check_dataloader`` and ``check_schedule`` return.

    An :class:`AlignResult` (true when the sides agree, ``== False`` when not, ``.first``,
    ``.report``, ``.notes``, ``.log_files``) with, in addition:

    * ``kind``: "compare", "dataloader" or "schedule"; ``name``: the root of the id paths.
    * ``findings``: every compared pair as a :class:`Finding` (``what`` is the id path such as
      ``logits["top1"][0]``, ``diff`` the :class:`TensorDiff` with shapes, dtypes and error
      figures). For a data loader: the length checks and the fields of the first differing
      batch (batches that agree are not kept); for a schedule: one per step.
    * ``mismatches``: the findings that failed.
    * ``index``: the first differing batch / step (None when none differs, and for compare).
    * ``count``: values / batches / steps compared.
    * ``lengths``: data loaders only, ``{"dataset": (first, second), "batches": (...)}`` from
      ``len(loader.dataset)`` and ``len(loader)`` (None where a loader has no length).
    * ``stop``: data loaders only: "end" (both ran out), "max_batches", "diff" or "length".
    * ``values``: schedules only, the learning rates of both sides, one per step.

    ``steps`` (auto_diff's per-step results) stays empty.
    """

    kind: str = "compare"
    name: str = "value"
    findings: List[Finding] = field(default_factory=list)
    index: Optional[int] = None
    count: int = 0
    lengths: Dict[str, Tuple[Optional[int], Optional[int]]] = field(default_factory=dict)
    stop: str = ""
    values: Tuple[List[float], List[float]] = field(default_factory=lambda: ([], []))

    @property
    def mismatches(self) -> List[Finding]:
        return [f for f in self.findings if not f.passed]

    def __repr__(self) -> str:
        if self.passed:
            return f"CompareResult(kind={self.kind!r}, passed=True, count={self.count})"
        where = "" if self.index is None else f", index={self.index}"
        return (f"CompareResult(kind={self.kind!r}, passed=False{where}, first={self.first.what!r}, "
                f"mismatches={len(self.mismatches)})")


def finish(result: CompareResult, quiet: bool) -> CompareResult:
    """Write the log file of a failed check, set the report, and print it unless ``quiet``."""
    if not result.passed:
        lines = render.log_lines(result)
        result.log_files.append(write_log(result.options.log_dir, LOG_FILES[result.kind], lines))
    result.report = "\n".join(render.console_lines(result))
    if not quiet:
        print(result.report)
    return result
