"""Distributed runs: one dump per rank, ranks paired between two runs, tensor-parallel shards gathered.

**Writing.** ``padiff.dump`` inside a torch.distributed or paddle.distributed run (found through
the adapter's ``distributed_info``, not configured) writes each rank's dump into
``FOLDER/rank<k>/``: a whole dump of the usual format whose manifest's ``distributed`` entry says
the rank, the world size, the backend and the parallel groups
(:func:`~padiff.dump.parallel_groups.run_entry`), and whose layer table marks each
tensor-parallel layer with its layout (:func:`~padiff.dump.tp_layout.layer_layout`).

**Reading.** A folder without a manifest of its own that holds ``rank<k>/`` dumps is a
:class:`~padiff.dump.ranks.RankedDump`; each rank is read as an ordinary
:class:`~padiff.dump.reader.Dump`.

**Comparing** (``ranked.py``, :func:`~padiff.dump.ranked.compare_distributed`). Two runs of the
same layout (world size and groups) are compared rank by rank: rank k with rank k, shards with
shards. Otherwise each side's tensor-parallel groups are gathered into one unsharded run each
(:class:`~padiff.dump.gather.GatheredDump`) and compared data-parallel replica by replica: so a
tensor-parallel run is compared with a single-process one, or with a run at another
tensor-parallel degree. A single-process dump is compared with the distributed run's rank 0 (its
tensor-parallel group gathered); ``rank=k`` chooses another rank's replica, ``rank="all"``
compares it with every replica. Each pair is compared by ``compare_dumps`` as two single dumps
are (one pair of arrays at a time), in this process or in ``jobs`` worker processes, one pair
per process at a time.

**Layouts, as rules** (``tp_layout.py``; Megatron-LM's, which paddle's fleet classes follow):

* ``column`` (ColumnParallelLinear): the weight and bias are sharded on the output features; the
  output on its last dim (unless the layer gathers it); the input is whole on every rank.
* ``row`` (RowParallelLinear): the weight is sharded on the input features, the bias is whole;
  the input is sharded on its last dim; the output is all-reduced (whole on every rank; when the
  all-reduce comes after the layer, its partial outputs are summed).
* ``vocab`` (VocabParallelEmbedding): the weight is sharded on its rows (the vocabulary); the
  output is all-reduced (or summed, as for ``row``).

Values recorded between tensor-parallel layers (activations, attention scores, their framework
calls) follow no declared rule: each is whole on every rank or sharded along one dim, which the
shape of its counterpart in the other run tells (:func:`~padiff.dump.shard_dims.resolve_shards`).

This module is the overview; each part lives in its own module: ``tp_layout.py`` (the layouts),
``parallel_groups.py`` (a run's groups), ``ranks.py`` (the rank folders), ``gathered_record.py``
and ``gather.py`` (gathering a tensor-parallel group), ``shard_dims.py`` (shard dims told by the
counterpart), ``distributed_result.py`` (the results). It re-exports their public faces.
"""

from .distributed_result import DistributedResult, RankResult
from .gather import GatheredDump
from .ranks import RankedDump, is_distributed, open_rank
from .shard_dims import resolve_shards
from .tp_layout import layout_map

__all__ = ["DistributedResult", "GatheredDump", "RankResult", "RankedDump", "is_distributed", "layout_map",
           "open_rank", "resolve_shards"]
