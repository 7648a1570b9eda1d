"""The toy framework's weight tables (see ``WeightTables``): plain data, like torch's and paddle's."""

from __future__ import annotations

from .base import WeightTables

WEIGHT_TABLES = WeightTables(
    layer_kinds={"Linear": "linear"},
    tensor_names={},
    linear_weight_layout="out_in",  # Linear.weight is [out_features, in_features], as torch's
    skipped_buffers=(),
)
