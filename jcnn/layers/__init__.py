"""jcnn layers: `(init, apply)` pairs with per-example semantics, their combinators, and `batched`.

Every layer is a `Layer` (a frozen dataclass that unpacks as ``init, apply = layer``) made by
calling its constructor: ``Relu()``, ``Conv(20, 5, padding=2)``::

    out_shape, params, state = layer.init(key, input_shape)      # per-example shape
    y, state = layer.apply(params, state, x, key=None, train=False)

Layers with ``takes_batch=True`` also take ``batch_ndim=`` leading batch dims in ``apply``;
``batched(model)`` runs a model on a batch, vmapping only the layers that cannot take one.

Default initialisers: conv and dense kernels He (Kaiming) normal with fan_in, truncated at two
standard deviations (``jax.nn.initializers.he_normal()``); biases zeros; norm scales ones and
shifts zeros. Override with ``kernel_init=`` / ``bias_init=`` (``(key, shape, dtype) -> array``).
"""

from jcnn.layers.activations import Gelu, Identity, LeakyRelu, LogSoftmax, Relu, Relu6, Sigmoid, Softmax, Tanh
from jcnn.layers.base import (
    GLOBAL,
    ApplyFn,
    BatchApplyFn,
    ComposeFn,
    InfoFn,
    InitFn,
    Layer,
    LayerInfo,
    RFWindow,
    Shape,
    Visit,
    fold,
)
from jcnn.layers.combinators import Add, Concat, apply_child, batched, parallel, residual, serial
from jcnn.layers.conv import Conv, ConvTranspose
from jcnn.layers.dense import Dense, Flatten, default_bias_init, default_kernel_init
from jcnn.layers.dropout import Dropout
from jcnn.layers.norm import BatchNorm, BatchNormState, GroupNorm, LayerNorm
from jcnn.layers.pool import AdaptiveAvgPool, AdaptiveMaxPool, AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool

__all__ = [
    # the type
    "Layer",
    "InitFn",
    "ApplyFn",
    "BatchApplyFn",
    "InfoFn",
    "ComposeFn",
    "Visit",
    "LayerInfo",
    "RFWindow",
    "Shape",
    "GLOBAL",
    "batched",
    "apply_child",
    "fold",
    # layers
    "Conv",
    "ConvTranspose",
    "Dense",
    "Flatten",
    "MaxPool",
    "AvgPool",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "Identity",
    "Relu",
    "Relu6",
    "Gelu",
    "Tanh",
    "Sigmoid",
    "LeakyRelu",
    "LogSoftmax",
    "Softmax",
    "Dropout",
    "BatchNorm",
    "BatchNormState",
    "LayerNorm",
    "GroupNorm",
    # combinators and fan-in
    "serial",
    "parallel",
    "residual",
    "Add",
    "Concat",
    # initialisers
    "default_kernel_init",
    "default_bias_init",
]
