"""The rest of the reproduction checklist: compare anything, data loaders, learning rates.

    padiff.compare(paddle_out, torch_out, atol=1e-5, name="logits")     # nested tensors/arrays/scalars
    padiff.check_dataloader(paddle_loader, torch_loader, max_batches=5)  # batch by batch
    padiff.check_schedule(paddle_scheduler, torch_scheduler, steps=100)  # learning rate per step

All three use the comparison core of ``auto_diff`` (``compare.metrics``: the same figures,
the same dtype-aware default tolerances, the same ``atol``/``rtol``/``compare_mode`` options)
and return a :class:`CompareResult`, an :class:`~padiff.compare.result.AlignResult` that is
true when the two sides agree and ``== False`` when not.

Conventions (documented in the README):

* The first argument is the one under test, the second the reference (torch, in the
  guide's order ``(paddle, torch)``): relative errors are measured against the second.
* Values are paired recursively by dict key and list/tuple position; a missing key, a
  different length or a container against a tensor is a "structure" mismatch, never a crash.
* Dtypes: a different *kind* (bool / integer / floating point / complex) is a mismatch; a
  different precision of one kind (float32 vs float64, int32 vs int64) is a note, and the
  values are compared with the looser dtype's tolerance. Python numbers carry no dtype of
  their own: only their value counts. Two one-element values of different shapes ([1] vs [])
  are compared as scalars, with a note.
* Reports print with the prefix ``[padiff]``; a failure also writes the full report to the
  log folder (``compare.log``, ``dataloader_diff.log``, ``schedule_diff.log``).

The core imports no framework: tensors, schedulers and their learning rates are reached
through the adapters.

One idea per module: ``leaves`` (one value as the comparison sees it), ``pairer`` (pairing two
nested values and comparing their leaves), ``diagnose`` (what a difference looks like),
``result`` (:class:`CompareResult` and its report), then the front doors ``values``
(``compare``), ``loaders`` (``check_dataloader``), ``schedules`` (``check_schedule``) and
``files`` (``padiff compare FILE FILE``).
"""

from __future__ import annotations

from .files import load_saved, main_compare
from .loaders import check_dataloader
from .result import CompareResult
from .schedules import check_schedule
from .values import compare

__all__ = ["compare", "check_dataloader", "check_schedule", "CompareResult", "main_compare", "load_saved"]
