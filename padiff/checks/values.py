"""``padiff.compare``: two nested values of tensors, arrays, numbers and strings."""

from __future__ import annotations

from typing import Mapping, Optional

from ..options import build_options, preflight
from .leaves import origin
from .pairer import Pairer
from .result import CompareResult, finish


def compare(a, b, *, name: str = "value", options: Optional[Mapping] = None, quiet: bool = False,
            **kwargs) -> CompareResult:
    """Compare two nested values: tensors of either framework (any device), numpy arrays,
    Python numbers and strings, nested in dicts, lists and tuples.

    ``b`` is the reference. Options (``atol``, ``rtol``, ``compare_mode``, ``log_dir``, ...) are
    those of ``auto_diff``, as keywords or in ``options``. ``name`` is the root of the id paths
    (``name="logits"`` gives ``logits[0]``). Prints a short report unless ``quiet``; on a
    difference also writes it to ``<log_dir>/compare.log``.
    """
    opts = build_options(options, **kwargs)
    preflight(opts)  # an unwritable log folder is named now, not after the comparison
    pairer = Pairer(opts, str(name), "value")
    pairer.pair(a, b)
    result = CompareResult(pairer.passed, options=opts, test_label=origin(a), ref_label=origin(b),
                           notes=pairer.notes, kind="compare", name=str(name), findings=pairer.findings,
                           count=len(pairer.findings))
    result.first = next((f for f in pairer.findings if not f.passed), None)
    return finish(result, quiet)
