"""Offline dumps: record one model's run to a folder (``dump``), compare two folders later, in
another process, without torch or paddle (``compare_dumps``). The format is docs/dump-format.md.
Distributed runs (one dump per rank, ranks paired, tensor-parallel shards gathered): distributed.py."""

from .compare import compare_dumps
from .distributed_result import DistributedResult, RankResult
from .format import FORMAT, VERSION
from .load import load_dump
from .ranks import RankedDump
from .reader import Dump
from .writer import dump

__all__ = ["dump", "compare_dumps", "load_dump", "Dump", "FORMAT", "VERSION", "RankedDump", "DistributedResult",
           "RankResult"]
