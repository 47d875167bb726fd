"""Convolution layers: `Conv` and `ConvTranspose`, channels last, any spatial rank."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jcnn import ops, shapes
from jcnn.layers.base import (
    Layer,
    LayerInfo,
    RFWindow,
    as_bool,
    check_rank,
    create_param,
    describe,
    fit_warning,
    initializer,
    positive_int,
    spatial_input,
)
from jcnn.layers.dense import default_bias_init, default_kernel_init
from jcnn.ops.conv import CHOICES as IMPLS
from jcnn.shapes import ShapeError

__all__ = ["Conv", "ConvTranspose"]


def _check_channels(x, kernel, groups: int, where: str, layout: str) -> None:
    expected = kernel.shape[-2] * groups if layout == "conv" else kernel.shape[-2]
    if x.shape[-1] != expected:
        per = f" ({kernel.shape[-2]} per group x {groups} groups)" if layout == "conv" and groups > 1 else ""
        raise ShapeError(
            f"{where}: input has {x.shape[-1]} channels but the kernel expects {expected}{per}"
            f" (kernel shape {tuple(kernel.shape)}, x shape {tuple(x.shape)})."
        )


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
    """Convolution layer over one ``(*spatial, c_in)`` example; calls `jcnn.ops.conv`.

    The output size per spatial dim is ``floor((W + lo + hi - dilation*(F-1) - 1)/S) + 1``.

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
      impl: ``"xla"``, ``"direct"``, ``"im2col"`` (same numbers) or ``"auto"``; see
        `jcnn.ops.conv`.
      exact: raise at ``init`` when the windows do not tile the padded input exactly or leave
        input pixels unread (the message is `jcnn.shapes.explain_fit`'s, with a fix).
      kernel_init: ``(key, shape, dtype) -> array`` for the ``(*k, c_in // groups, K)`` kernel;
        default He normal (fan_in ``= prod(k) * c_in // groups``), `default_kernel_init`.
      bias_init: for the ``(K,)`` bias; default zeros.
      param_dtype: parameter dtype.
      precision: passed to ``lax``.

    Returns:
      A `Layer`; params ``{"kernel": (*k, c_in // groups, K), "bias": (K,)}``, state ``()``.

    Raises:
      ShapeError: at construction for bad hyperparameters; at ``init`` for an input they do not
        fit; at ``apply`` for an input whose rank or channels differ from the kernel's.

    The lecture's example, ten 5x5 filters on a 32x32x3 image:

    >>> import jax
    >>> out_shape, params, state = Conv(10, 5).init(jax.random.key(0), (32, 32, 3))
    >>> out_shape, params["kernel"].shape
    ((28, 28, 10), (5, 5, 3, 10))
    """
    where = "Conv"
    out_channels = positive_int(out_channels, where, "out_channels")
    ks = shapes.canonicalize_window(kernel_size, where)
    d = len(ks)
    strides_ = shapes.canonicalize_ints(strides, d, where, "strides")
    dilation_ = shapes.canonicalize_ints(dilation, d, where, "dilation")
    padding_ = shapes.canonicalize_padding(padding, d, where)
    mode = shapes.canonicalize_padding_mode(padding_mode, where)
    groups = positive_int(groups, where, "groups")
    if out_channels % groups:
        raise ShapeError(
            f"{where}: `out_channels` ({out_channels}) must be divisible by `groups` ({groups})."
        )
    if impl not in IMPLS:
        raise ValueError(f"{where}: `impl` must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}.")
    bias = as_bool(bias, where, "bias")
    exact = as_bool(exact, where, "exact")
    kernel_init = initializer(kernel_init, default_kernel_init, where, "kernel_init")
    bias_init = initializer(bias_init, default_bias_init, where, "bias_init")
    source = f"`kernel_size` {ks} has {d}"

    def geometry(input_shape):
        shape = spatial_input(input_shape, d, where, source)
        if shape[-1] % groups:
            raise ShapeError(
                f"{where}: input channels ({shape[-1]}, input shape {shape}) must be divisible by"
                f" `groups` ({groups})."
            )
        kernel_shape = ks + (shape[-1] // groups, out_channels)
        geo = shapes.conv_geometry(
            shape,
            kernel_shape,
            strides=strides_,
            padding=padding_,
            dilation=dilation_,
            groups=groups,
            padding_mode=mode,
            where=where,
        )
        if exact:
            for i, (w, p) in enumerate(zip(geo.in_spatial, geo.padding)):
                report = shapes.explain_fit(w, ks[i], strides_[i], p, dilation_[i])
                if not report.fits or report.unused:
                    raise ShapeError(f"{where}: spatial dim {i} of input shape {shape}: {report.message}")
        return shape, kernel_shape, geo

    def init(key, input_shape):
        _, kernel_shape, geo = geometry(input_shape)
        k_kernel, k_bias = jax.random.split(key)
        params = {"kernel": create_param(kernel_init, k_kernel, kernel_shape, param_dtype)}
        if bias:
            params["bias"] = create_param(bias_init, k_bias, (out_channels,), param_dtype)
        return geo.out_shape, params, ()

    def apply(params, state, x, *, key=None, train=False):
        del key, train  # deterministic layer
        kernel = params["kernel"]
        check_rank(x, d, where, source)
        _check_channels(x, kernel, groups, where, "conv")
        y = ops.conv(
            x,
            kernel,
            params["bias"] if bias else None,
            strides=strides_,
            padding=padding_,
            dilation=dilation_,
            groups=groups,
            padding_mode=mode,
            impl=impl,
            precision=precision,
        )
        return y, state

    def info(input_shape):
        shape, _, geo = geometry(input_shape)
        return LayerInfo(
            geo.out_shape,
            shapes.conv_params(ks, shape[-1], out_channels, groups=groups, bias=bias),
            shapes.conv_flops(geo.out_spatial, ks, shape[-1], out_channels, groups=groups, bias=bias),
            padding=geo.padding,
            warning=fit_warning(geo.in_spatial, ks, strides_, geo.padding, dilation_),
            rf=tuple(RFWindow(k, s, p[0], r) for k, s, p, r in zip(ks, strides_, geo.padding, dilation_)),
        )

    hp = dict(
        out_channels=out_channels,
        kernel_size=ks,
        strides=strides_,
        padding=padding_,
        dilation=dilation_,
        groups=groups,
        bias=bias,
        padding_mode=mode,
        impl=impl,
        exact=exact,
        param_dtype=jnp.dtype(param_dtype).name,
    )
    given = dict(
        strides=strides,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        padding_mode=padding_mode,
    )
    given.update(impl=impl, exact=exact)
    defaults = dict(
        strides=1, padding=0, dilation=1, groups=1, bias=True, padding_mode="zeros", impl="auto", exact=False
    )
    return Layer(
        init,
        apply,
        name="Conv",
        kind="conv",
        hparams=hp,
        info=info,
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
      precision: passed to ``lax``.

    Returns:
      A `Layer`; params ``{"kernel": (*k, c_in, K // groups), "bias": (K,)}``, state ``()``.

    >>> import jax
    >>> ConvTranspose(2, 3, strides=2).init(jax.random.key(0), (3, 3, 4))[0]
    (7, 7, 2)
    """
    where = "ConvTranspose"
    out_channels = positive_int(out_channels, where, "out_channels")
    ks = shapes.canonicalize_window(kernel_size, where)
    d = len(ks)
    strides_ = shapes.canonicalize_ints(strides, d, where, "strides")
    dilation_ = shapes.canonicalize_ints(dilation, d, where, "dilation")
    output_padding_ = shapes.canonicalize_ints(output_padding, d, where, "output_padding", minimum=0)
    padding_ = shapes.canonicalize_padding(padding, d, where)
    if isinstance(padding_, str):
        if padding_ != "VALID":
            raise ValueError(
                f"{where}: `padding` must be an int, a tuple of {d} ints or (lo, hi) pairs, or"
                f" 'VALID'; got {padding!r} (transposed convs take PyTorch's numeric padding)."
            )
        padding_ = ((0, 0),) * d
    groups = positive_int(groups, where, "groups")
    if out_channels % groups:
        raise ShapeError(
            f"{where}: `out_channels` ({out_channels}) must be divisible by `groups` ({groups})."
        )
    bias = as_bool(bias, where, "bias")
    kernel_init = initializer(kernel_init, default_kernel_init, where, "kernel_init")
    bias_init = initializer(bias_init, default_bias_init, where, "bias_init")
    source = f"`kernel_size` {ks} has {d}"

    def geometry(input_shape):
        shape = spatial_input(input_shape, d, where, source)
        kernel_shape = ks + (shape[-1], out_channels // groups)
        geo = shapes.conv_transpose_geometry(
            shape,
            kernel_shape,
            strides=strides_,
            padding=padding_,
            output_padding=output_padding_,
            dilation=dilation_,
            groups=groups,
            where=where,
        )
        return shape, kernel_shape, geo

    def init(key, input_shape):
        _, kernel_shape, geo = geometry(input_shape)
        k_kernel, k_bias = jax.random.split(key)
        params = {"kernel": create_param(kernel_init, k_kernel, kernel_shape, param_dtype)}
        if bias:
            params["bias"] = create_param(bias_init, k_bias, (out_channels,), param_dtype)
        return geo.out_shape, params, ()

    def apply(params, state, x, *, key=None, train=False):
        del key, train  # deterministic layer
        kernel = params["kernel"]
        check_rank(x, d, where, source)
        _check_channels(x, kernel, groups, where, "transpose")
        y = ops.conv_transpose(
            x,
            kernel,
            params["bias"] if bias else None,
            strides=strides_,
            padding=padding_,
            output_padding=output_padding_,
            dilation=dilation_,
            groups=groups,
            precision=precision,
        )
        return y, state

    def info(input_shape):
        shape, _, geo = geometry(input_shape)
        return LayerInfo(
            geo.out_shape,
            shapes.conv_params(ks, shape[-1], out_channels, groups=groups, bias=bias),
            shapes.conv_transpose_flops(
                geo.in_spatial,
                ks,
                shape[-1],
                out_channels,
                groups=groups,
                bias=bias,
                out_spatial=geo.out_spatial,
            ),
            padding=geo.padding,
            rf=tuple(
                RFWindow(k, s, p[0], r, transpose=True)
                for k, s, p, r in zip(ks, strides_, geo.padding, dilation_)
            ),
        )

    hp = dict(
        out_channels=out_channels,
        kernel_size=ks,
        strides=strides_,
        padding=padding_,
        output_padding=output_padding_,
        dilation=dilation_,
        groups=groups,
        bias=bias,
        param_dtype=jnp.dtype(param_dtype).name,
    )
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
        kind="conv_transpose",
        hparams=hp,
        info=info,
        description=describe("ConvTranspose", (out_channels, kernel_size), given, defaults),
    )
