"""Convolution layers: `Conv` and `ConvTranspose`, channels last, any spatial rank."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jcnn import checks, shapes
from jcnn.layers.base import (
    Layer,
    LayerInfo,
    RFWindow,
    create_param,
    describe,
    initializer,
    spatial_example,
    spatial_input,
)
from jcnn.layers.dense import default_bias_init, default_kernel_init
from jcnn.ops.conv import CHOICES, conv_transpose_with_spec, conv_with_spec

__all__ = ["Conv", "ConvTranspose", "ConvLayerSpec", "ConvTransposeLayerSpec"]


class ConvLayerSpec(NamedTuple):
    """`Conv`'s hyperparameters, canonical: the op's `jcnn.shapes.ConvSpec` plus the layer's own."""

    out_channels: int
    conv: shapes.ConvSpec
    bias: bool
    impl: str
    param_dtype: str
    precision: Any


class ConvTransposeLayerSpec(NamedTuple):
    """`ConvTranspose`'s hyperparameters, canonical (`jcnn.shapes.ConvTransposeSpec` plus the layer's)."""

    out_channels: int
    conv: shapes.ConvTransposeSpec
    bias: bool
    param_dtype: str
    precision: Any


def _kernel_and_bias(key, kernel_shape, out_channels: int, bias: bool, kernel_init, bias_init, param_dtype):
    """``{"kernel": kernel_init(...), "bias": bias_init(...)}``, no bias when ``bias`` is False."""
    k_kernel, k_bias = jax.random.split(key)
    params = {"kernel": create_param(kernel_init, k_kernel, kernel_shape, param_dtype)}
    if bias:
        params["bias"] = create_param(bias_init, k_bias, (out_channels,), param_dtype)
    return params


def Conv(
    out_channels: int,
    kernel_size,
    *,
    strides=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    bias: bool = True,
    padding_mode: str = "zeros",
    impl: str = "auto",
    exact: bool = False,
    kernel_init=None,
    bias_init=None,
    param_dtype=jnp.float32,
    precision=None,
) -> Layer:
    """Convolution layer over ``(*spatial, c_in)`` examples; calls `jcnn.ops.conv`.

    The output size per spatial dim is ``floor((W + lo + hi - dilation*(F-1) - 1)/S) + 1``.
    The hyperparameters are checked once, here, into a `jcnn.shapes.ConvSpec`; ``init`` takes
    one example's shape, ``apply`` takes ``x`` of shape ``(*batch, *spatial, c_in)`` with any
    number of leading batch dims (each example gives what it gives alone).

    Args:
      out_channels: number of filters ``K``.
      kernel_size: ``F``: an int (square 2-D) or a tuple of d ints (d-D).
      strides: ``S``, an int or d ints.
      padding: an int, d ints, d ``(lo, hi)`` pairs, or ``"VALID"``, ``"SAME"``,
        ``"SAME_LOWER"``, ``"CAUSAL"`` (1-D).
      dilation: kernel dilation, an int or d ints.
      groups: feature groups (``groups == c_in``: depthwise).
      bias: add a learned per-channel bias.
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
      impl: ``"xla"``, ``"direct"``, ``"im2col"``, ``"hybrid"`` (same numbers) or ``"auto"``;
        see `jcnn.ops.conv`.
      exact: raise at ``init`` when the windows do not tile the padded input exactly or leave
        input pixels unread (the message is `jcnn.shapes.explain_fit`'s, with a fix).
      kernel_init: ``(key, shape, dtype) -> array`` for the ``(*k, c_in // groups, K)`` kernel;
        default He normal (fan_in ``= prod(k) * c_in // groups``), `default_kernel_init`.
      bias_init: for the ``(K,)`` bias; default zeros.
      param_dtype: parameter dtype.
      precision: the contraction's internal precision, as in `jcnn.ops.conv` (``None``: JAX's
        default, TF32 for float32 on recent NVIDIA GPUs; ``"highest"``: true float32).

    Returns:
      A `Layer`; params ``{"kernel": (*k, c_in // groups, K), "bias": (K,)}``, state ``()``.

    Raises:
      ShapeError: at construction for bad hyperparameters; at ``init`` for an input they do not
        fit; at ``apply`` for an input with too few dims or channels that differ from the kernel's.

    The lecture's example, ten 5x5 filters on a 32x32x3 image:

    >>> import jax
    >>> out_shape, params, state = Conv(10, 5).init(jax.random.key(0), (32, 32, 3))
    >>> out_shape, params["kernel"].shape
    ((28, 28, 10), (5, 5, 3, 10))
    """
    where = "Conv"
    out_channels = checks.as_int(out_channels, where, "out_channels", minimum=1)
    spec = shapes.conv_spec(
        kernel_size,
        strides=strides,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
        exact=exact,
        where=where,
    )
    checks.divisible(out_channels, spec.groups, where, "`out_channels`")
    impl = checks.one_of(impl, CHOICES, where, "impl")
    bias = checks.as_bool(bias, where, "bias")
    kernel_init = initializer(kernel_init, default_kernel_init, where, "kernel_init")
    bias_init = initializer(bias_init, default_bias_init, where, "bias_init")
    ks, d = spec.kernel_size, spec.d
    source = f"`kernel_size` {ks} has {d}"

    def geometry(input_shape):
        shape = spatial_input(input_shape, d, where, source)
        checks.divisible(shape[-1], spec.groups, where, "input channels", f", input shape {shape}")
        kernel_shape = ks + (shape[-1] // spec.groups, out_channels)
        return kernel_shape, shapes.conv_geometry(spec, shape, kernel_shape, where=where)

    def init(key, input_shape):
        kernel_shape, geo = geometry(input_shape)
        params = _kernel_and_bias(key, kernel_shape, out_channels, bias, kernel_init, bias_init, param_dtype)
        return geo.out_shape, params, ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del key, train  # deterministic layer
        x = spatial_example(x, d, source, where, batch_ndim, "inexact")
        b = params["bias"] if bias else None
        return conv_with_spec(
            spec, x, params["kernel"], b, impl=impl, precision=precision, where=where
        ), state

    def info(input_shape):
        _, geo = geometry(input_shape)
        return LayerInfo(
            geo.out_shape,
            geo.params(bias),
            geo.flops(bias),
            padding=geo.padding,
            warning=shapes.fit_warning(geo.in_spatial, ks, geo.strides, geo.padding, geo.dilation),
            rf=tuple(
                RFWindow(k, s, p[0], r) for k, s, p, r in zip(ks, geo.strides, geo.padding, geo.dilation)
            ),
        )

    layer_spec = ConvLayerSpec(out_channels, spec, bias, impl, jnp.dtype(param_dtype).name, precision)
    given = dict(
        strides=strides,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        padding_mode=padding_mode,
    )
    given.update(impl=impl, exact=spec.exact)
    defaults = dict(
        strides=1, padding=0, dilation=1, groups=1, bias=True, padding_mode="zeros", impl="auto", exact=False
    )
    return Layer(
        init,
        apply,
        name="Conv",
        spec=layer_spec,
        info=info,
        takes_batch=True,
        description=describe("Conv", (out_channels, kernel_size), given, defaults),
    )


def ConvTranspose(
    out_channels: int,
    kernel_size,
    *,
    strides=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups: int = 1,
    bias: bool = True,
    kernel_init=None,
    bias_init=None,
    param_dtype=jnp.float32,
    precision=None,
) -> Layer:
    """Transposed convolution (PyTorch's ``ConvTranspose{1,2,3}d``); calls `jcnn.ops.conv_transpose`.

    ``out = (W - 1)*S - (lo + hi) + dilation*(F - 1) + output_padding + 1`` per spatial dim.
    Hyperparameters are checked once into a `jcnn.shapes.ConvTransposeSpec`; ``apply`` takes
    any number of leading batch dims.

    Args:
      out_channels: output channels.
      kernel_size: an int (square 2-D) or a tuple of d ints.
      strides: an int or d ints: the upsampling factor.
      padding: PyTorch's crop: an int, d ints, d ``(lo, hi)`` pairs, or ``"VALID"`` (= 0).
      output_padding: extra rows on the high side, each smaller than the stride or dilation.
      dilation: kernel dilation.
      groups: feature groups.
      bias: add a learned per-channel bias.
      kernel_init: for the ``(*k, c_in, out_channels // groups)`` kernel (PyTorch's layout moved
        to channels last); default He normal with fan_in ``= prod(k) * c_in``.
      bias_init: for the bias; default zeros.
      param_dtype: parameter dtype.
      precision: the contraction's internal precision, as in `jcnn.ops.conv` (``None``: JAX's
        default, TF32 for float32 on recent NVIDIA GPUs; ``"highest"``: true float32).

    Returns:
      A `Layer`; params ``{"kernel": (*k, c_in, K // groups), "bias": (K,)}``, state ``()``.

    >>> import jax
    >>> ConvTranspose(2, 3, strides=2).init(jax.random.key(0), (3, 3, 4))[0]
    (7, 7, 2)
    """
    where = "ConvTranspose"
    out_channels = checks.as_int(out_channels, where, "out_channels", minimum=1)
    spec = shapes.conv_transpose_spec(
        kernel_size, strides, padding, output_padding, dilation, groups, where=where
    )
    checks.divisible(out_channels, spec.groups, where, "`out_channels`")
    bias = checks.as_bool(bias, where, "bias")
    kernel_init = initializer(kernel_init, default_kernel_init, where, "kernel_init")
    bias_init = initializer(bias_init, default_bias_init, where, "bias_init")
    ks, d = spec.kernel_size, spec.d
    source = f"`kernel_size` {ks} has {d}"

    def geometry(input_shape):
        shape = spatial_input(input_shape, d, where, source)
        kernel_shape = ks + (shape[-1], out_channels // spec.groups)
        return kernel_shape, shapes.conv_transpose_geometry(spec, shape, kernel_shape, where=where)

    def init(key, input_shape):
        kernel_shape, geo = geometry(input_shape)
        params = _kernel_and_bias(key, kernel_shape, out_channels, bias, kernel_init, bias_init, param_dtype)
        return geo.out_shape, params, ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del key, train  # deterministic layer
        x = spatial_example(x, d, source, where, batch_ndim, "inexact")
        b = params["bias"] if bias else None
        return conv_transpose_with_spec(spec, x, params["kernel"], b, precision=precision, where=where), state

    def info(input_shape):
        _, geo = geometry(input_shape)
        return LayerInfo(
            geo.out_shape,
            geo.params(bias),
            geo.flops(bias),
            padding=geo.crop,
            rf=tuple(
                RFWindow(k, s, p[0], r, transpose=True)
                for k, s, p, r in zip(ks, geo.strides, geo.crop, geo.dilation)
            ),
        )

    layer_spec = ConvTransposeLayerSpec(out_channels, spec, bias, jnp.dtype(param_dtype).name, precision)
    given = dict(
        strides=strides,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
    )
    defaults = dict(strides=1, padding=0, output_padding=0, dilation=1, groups=1, bias=True)
    return Layer(
        init,
        apply,
        name="ConvTranspose",
        spec=layer_spec,
        info=info,
        takes_batch=True,
        description=describe("ConvTranspose", (out_channels, kernel_size), given, defaults),
    )
