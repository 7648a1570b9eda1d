"""``compare_dumps``: auto_diff's comparison and report, on two dumps, with no framework.

A front door: two single dumps are compared by ``offline.py`` (the run pipeline on recorded
steps), a distributed one pair of ranks at a time by ``ranked.py``.
"""

from __future__ import annotations

from .offline import compare_two
from .ranked import compare_distributed
from .ranks import is_distributed
from .reader import Dump, open_dump


def compare_dumps(path_a, path_b, options=None, *, rank=None, jobs: int = 1, tp_layout=None, **kwargs):
    """Compare two dumps made by ``padiff.dump`` exactly as ``auto_diff`` compares two live
    models, and print the same report; returns an :class:`AlignResult` (true when aligned).
    ``path_a``/``path_b`` are dump folders, or dumps already opened with ``load_dump``.

    The torch dump is the reference when the frameworks differ, else the first. Options are
    the comparison's (``atol``, ``rtol``, ``compare_mode``, ``diff_phase``, ``log_dir``,
    ``layer_tolerances``, ...); what was recorded (steps, gradients, framework calls) comes from
    the dumps. Imports neither torch nor paddle.

    When either dump is distributed (a folder of ``rank<k>`` dumps made by ``padiff.dump`` under
    torch.distributed or paddle.distributed), ranks are paired and compared one pair at a time
    (``jobs`` worker processes compare pairs in parallel), tensor-parallel shards gathered where
    the layouts differ, and a :class:`~padiff.dump.distributed_result.DistributedResult` is returned
    (true when every rank agrees; which ranks agree, which diverged first and where). ``rank``
    chooses the rank a single-process dump is compared with (default 0; ``"all"``: every rank);
    ``tp_layout`` (``{"mlp.up": "column", "mlp.down": "row"}``) declares or corrects layouts.
    """
    if is_distributed(path_a) or is_distributed(path_b):
        return compare_distributed(path_a, path_b, options, rank=rank, jobs=jobs, tp_layout=tp_layout, **kwargs)
    dumps = [p if isinstance(p, Dump) else open_dump(p) for p in (path_a, path_b)]
    return compare_two(dumps, options, **kwargs)
