"""torch's weight tables: its layer classes by neutral kind, the names of the tensors the conversion
rules rename, how it stores Linear weights and which buffers no other framework has. Plain data,
imported without torch: the adapter declares them (``Adapter.weight_tables``) and the offline dump
reader reads them by framework name.
"""

from __future__ import annotations

from .base import WeightTables

# Built-in layer classes with weights -> their neutral kind (padiff.weights.rules pairs kinds
# across frameworks); the first class of a kind is the one another framework's layer is taken for.
_LAYER_KINDS = {
    "Linear": "linear", "NonDynamicallyQuantizableLinear": "linear", "LazyLinear": "linear",
    "Conv1d": "conv1d", "Conv2d": "conv2d", "Conv3d": "conv3d",
    "ConvTranspose1d": "convtranspose1d", "ConvTranspose2d": "convtranspose2d", "ConvTranspose3d": "convtranspose3d",
    "InstanceNorm1d": "instancenorm1d", "InstanceNorm2d": "instancenorm2d", "InstanceNorm3d": "instancenorm3d",
    "BatchNorm1d": "batchnorm1d", "BatchNorm2d": "batchnorm2d", "BatchNorm3d": "batchnorm3d",
    "SyncBatchNorm": "syncbatchnorm", "LayerNorm": "layernorm", "GroupNorm": "groupnorm",
    "Embedding": "embedding", "PReLU": "prelu", "LSTM": "lstm", "GRU": "gru", "RNN": "rnn",
    "MultiheadAttention": "multiheadattention",
}
# Tensor names the shipped rules rename, by neutral name (see WeightTables.tensor_names).
_TENSOR_NAMES = {
    "batchnorm.mean": "running_mean", "batchnorm.variance": "running_var",
    "instancenorm.scale": "weight", "prelu.weight": "weight",
    "attention.packed_weight": "in_proj_weight", "attention.packed_bias": "in_proj_bias",
    "attention.q_weight": "q_proj_weight", "attention.k_weight": "k_proj_weight",
    "attention.v_weight": "v_proj_weight", "attention.bias_k": "bias_k", "attention.bias_v": "bias_v",
    "attention.out_weight": "out_proj.weight", "attention.out_bias": "out_proj.bias",
    "rnn.projection": r"weight_hr_l\d+(_reverse)?",
}

WEIGHT_TABLES = WeightTables(
    layer_kinds=_LAYER_KINDS,
    tensor_names=_TENSOR_NAMES,
    linear_weight_layout="out_in",
    skipped_buffers=("num_batches_tracked",),  # BatchNorm's step counter: no other framework keeps one
)
