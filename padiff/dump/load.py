"""``load_dump``: open a dump folder, single or distributed."""

from __future__ import annotations

import os

from .ranks import RankedDump, is_distributed
from .reader import Dump, open_dump


def load_dump(path) -> Dump:
    """Open the dump at ``path`` (made by ``padiff.dump``). Refuses, with a PadiffError, a dump
    that is missing, unfinished, interrupted, of another format or damaged. A distributed dump
    (a folder of ``rank<k>`` dumps) opens as a :class:`~padiff.dump.ranks.RankedDump`."""
    path = os.fspath(path)
    if is_distributed(path):
        return RankedDump(path)
    return open_dump(path)
