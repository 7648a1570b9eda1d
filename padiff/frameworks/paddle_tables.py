"""paddle's weight tables: its layer classes by neutral kind, the names of the tensors the conversion
rules rename, how it stores Linear weights and which buffers no other framework has. Plain data,
imported without paddle: the adapter declares them (``Adapter.weight_tables``) and the offline dump
reader reads them by framework name.
"""

from __future__ import annotations

from .base import WeightTables

# Built-in layer classes with weights -> their neutral kind (padiff.weights.rules pairs kinds
# across frameworks); the first class of a kind is the one another framework's layer is taken for.
_LAYER_KINDS = {
    "Linear": "linear", "Conv1D": "conv1d", "Conv2D": "conv2d", "Conv3D": "conv3d",
    "Conv1DTranspose": "convtranspose1d", "Conv2DTranspose": "convtranspose2d", "Conv3DTranspose": "convtranspose3d",
    "InstanceNorm1D": "instancenorm1d", "InstanceNorm2D": "instancenorm2d", "InstanceNorm3D": "instancenorm3d",
    "BatchNorm": "batchnorm2d", "BatchNorm1D": "batchnorm1d", "BatchNorm2D": "batchnorm2d",
    "BatchNorm3D": "batchnorm3d", "SyncBatchNorm": "syncbatchnorm", "LayerNorm": "layernorm",
    "GroupNorm": "groupnorm", "Embedding": "embedding", "PReLU": "prelu", "LSTM": "lstm", "GRU": "gru",
    "SimpleRNN": "rnn", "MultiHeadAttention": "multiheadattention",
}
# Tensor names the shipped rules rename, by neutral name (see WeightTables.tensor_names).
_TENSOR_NAMES = {
    "batchnorm.mean": "_mean", "batchnorm.variance": "_variance",
    "instancenorm.scale": "scale", "prelu.weight": "_weight",
    "attention.q_weight": "q_proj.weight", "attention.k_weight": "k_proj.weight",
    "attention.v_weight": "v_proj.weight", "attention.q_bias": "q_proj.bias",
    "attention.k_bias": "k_proj.bias", "attention.v_bias": "v_proj.bias",
    "attention.out_weight": "out_proj.weight", "attention.out_bias": "out_proj.bias",
    "rnn.projection": r"cell\.weight_ho",
}

WEIGHT_TABLES = WeightTables(
    layer_kinds=_LAYER_KINDS,
    tensor_names=_TENSOR_NAMES,
    linear_weight_layout="in_out",
    skipped_buffers=("_dropout_state",),  # the RNNs' dropout state: no other framework keeps one
)
