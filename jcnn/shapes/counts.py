"""Parameter, FLOP and memory counts from shapes alone (the summary's columns).

The convention: a multiply-add is 2 FLOPs and each bias add 1; pooling is one compare or add
per window element per output; bytes are elements times the item size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jcnn import checks
from jcnn.shapes._arith import Shape
from jcnn.shapes.specs import canonicalize_window

__all__ = [
    "conv_params",
    "dense_params",
    "conv_flops",
    "conv_transpose_flops",
    "dense_flops",
    "pool_flops",
    "activation_bytes",
]


def _conv_params(kernel_size: Shape, in_channels: int, out_channels: int, groups: int, bias: bool) -> int:
    return math.prod(kernel_size) * (in_channels // groups) * out_channels + (out_channels if bias else 0)


def _conv_flops(
    out_spatial, kernel_size: Shape, in_channels: int, out_channels: int, groups: int, bias: bool
) -> int:
    outputs = math.prod(out_spatial) * out_channels
    return outputs * (2 * math.prod(kernel_size) * (in_channels // groups) + (1 if bias else 0))


def conv_params(
    kernel_size, in_channels: int, out_channels: int, *, groups: int = 1, bias: bool = True
) -> int:
    """Learnable parameters of a convolution: ``prod(F) * C_in/groups * K (+ K biases)``.

    The seed's example, ten 5x5x3 filters with biases:

    >>> conv_params(5, 3, 10)
    760
    """
    where = "conv_params"
    ks = canonicalize_window(kernel_size, where)
    g = checks.as_int(groups, where, "groups", minimum=1)
    checks.divisible(in_channels, g, where, "input channels")
    checks.divisible(out_channels, g, where, "out_channels")
    return _conv_params(ks, in_channels, out_channels, g, bias)


def dense_params(in_features: int, out_features: int, *, bias: bool = True) -> int:
    """Learnable parameters of a fully-connected layer.

    >>> dense_params(32 * 32 * 3, 32 * 32 * 10)
    31467520
    """
    return in_features * out_features + (out_features if bias else 0)


def conv_flops(
    out_spatial, kernel_size, in_channels: int, out_channels: int, *, groups: int = 1, bias: bool = True
) -> int:
    """FLOPs of one example's convolution. A multiply-add is 2 FLOPs; each bias add is 1.

    >>> conv_flops((28, 28), 5, 3, 10, bias=False) // 2   # the seed's 10 filters: multiply-adds
    588000
    """
    ks = canonicalize_window(kernel_size, "conv_flops")
    return _conv_flops(out_spatial, ks, in_channels, out_channels, groups, bias)


def _conv_transpose_flops(
    in_spatial, kernel_size, in_channels, out_channels, groups, bias, out_spatial
) -> int:
    macs = math.prod(in_spatial) * in_channels * math.prod(kernel_size) * (out_channels // groups)
    adds = math.prod(out_spatial) * out_channels if (bias and out_spatial is not None) else 0
    return 2 * macs + adds


def conv_transpose_flops(
    in_spatial,
    kernel_size,
    in_channels: int,
    out_channels: int,
    *,
    groups: int = 1,
    bias: bool = True,
    out_spatial=None,
) -> int:
    """FLOPs of a transposed convolution: every input pixel scatters one kernel (2 per MAC).

    >>> conv_transpose_flops((3, 3), 3, 4, 2, bias=False)
    1296
    """
    ks = canonicalize_window(kernel_size, "conv_transpose_flops")
    return _conv_transpose_flops(in_spatial, ks, in_channels, out_channels, groups, bias, out_spatial)


def dense_flops(in_features: int, out_features: int, *, bias: bool = True) -> int:
    """FLOPs of one example through a dense layer: ``2*in*out (+ out)``.

    >>> dense_flops(2450, 500)
    2450500
    """
    return 2 * in_features * out_features + (out_features if bias else 0)


def pool_flops(out_spatial, window_shape, channels: int) -> int:
    """FLOPs of pooling: one compare or add per window element per output.

    >>> pool_flops((14, 14), (2, 2), 20)
    15680
    """
    return math.prod(out_spatial) * channels * math.prod(window_shape)


def activation_bytes(shape: Sequence[int], itemsize: int = 4) -> int:
    """Bytes held by one activation of ``shape`` (float32 by default).

    >>> activation_bytes((28, 28, 20))
    62720
    """
    return math.prod(shape) * itemsize
