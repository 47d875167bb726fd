"""Pooling layers: windowed (max, avg), global and adaptive; no params, no state."""

from __future__ import annotations

import math

from jcnn import ops, shapes
from jcnn.layers.base import (
    GLOBAL,
    Layer,
    LayerInfo,
    RFWindow,
    as_bool,
    check_rank,
    describe,
    fit_warning,
    positive_int,
    spatial_input,
)

__all__ = ["MaxPool", "AvgPool", "GlobalAvgPool", "GlobalMaxPool", "AdaptiveAvgPool", "AdaptiveMaxPool"]


def _unread(size: int, k: int, s: int, lo: int, r: int, out: int) -> int:
    """Input pixels no window reads, for ``out`` windows (ceil_mode may add one)."""
    read = {i * s + t * r - lo for i in range(out) for t in range(k)}
    return sum(1 for p in range(size) if p not in read)


def _window_pool(
    name: str, op, window_shape, strides, padding, dilation, ceil_mode, extra: dict, extra_defaults: dict
) -> Layer:
    where = name
    window = shapes.canonicalize_window(window_shape, where, "window_shape")
    d = len(window)
    strides_ = window if strides is None else shapes.canonicalize_ints(strides, d, where, "strides")
    dilation_ = shapes.canonicalize_ints(dilation, d, where, "dilation")
    padding_ = shapes.canonicalize_padding(padding, d, where)
    if not isinstance(padding_, str):
        shapes.check_pool_padding(padding_, window, dilation_, where)
    ceil_mode = as_bool(ceil_mode, where, "ceil_mode")
    source = f"`window_shape` {window} has {d}"

    def geometry(input_shape):
        shape = spatial_input(input_shape, d, where, source)
        return shapes.pool_geometry(
            shape, window, strides_, padding_, dilation_, ceil_mode=ceil_mode, where=where
        )

    def init(key, input_shape):
        del key
        return geometry(input_shape).out_shape, (), ()

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        check_rank(x, d, where, source)
        return op(x, window, strides_, padding_, dilation_, ceil_mode), state

    def info(input_shape):
        g = geometry(input_shape)
        warning = None
        if ceil_mode:
            unread = [
                _unread(w, k, s, p[0], r, o)
                for w, k, s, p, r, o in zip(
                    g.in_spatial, window, strides_, g.padding, dilation_, g.out_spatial
                )
            ]
            if any(unread):
                warning = fit_warning(g.in_spatial, window, strides_, g.padding, dilation_)
        else:
            warning = fit_warning(g.in_spatial, window, strides_, g.padding, dilation_)
        return LayerInfo(
            g.out_shape,
            0,
            shapes.pool_flops(g.out_spatial, window, g.channels),
            padding=g.padding,
            warning=warning,
            rf=tuple(RFWindow(k, s, p[0], r) for k, s, p, r in zip(window, strides_, g.padding, dilation_)),
        )

    given = {"strides": strides, "padding": padding, "dilation": dilation, "ceil_mode": ceil_mode, **extra}
    defaults = {"strides": None, "padding": 0, "dilation": 1, "ceil_mode": False, **extra_defaults}
    hp = dict(
        window_shape=window, strides=strides_, padding=padding_, dilation=dilation_, ceil_mode=ceil_mode
    )
    hp.update(extra)
    return Layer(
        init,
        apply,
        name=name,
        kind="pool",
        hparams=hp,
        info=info,
        description=describe(name, (window_shape,), given, defaults),
    )


def MaxPool(window_shape, strides=None, padding=0, *, dilation=1, ceil_mode: bool = False) -> Layer:
    """Max pooling layer (`jcnn.ops.max_pool`, PyTorch's ``MaxPoolNd`` numbers).

    Args:
      window_shape: an int (square 2-D) or a tuple of d ints.
      strides: an int or d ints; ``None`` (default) means strides = window (PyTorch, Keras).
      padding: an int, d ints, d ``(lo, hi)`` pairs, or a padding name; numeric padding at
        most half the window. Padding reads as ``-inf``.
      dilation: spacing between window taps.
      ceil_mode: round the output size up (PyTorch's rule).

    Returns:
      A `Layer` with params ``()`` and state ``()``.

    >>> import jax
    >>> MaxPool(2).init(jax.random.key(0), (28, 28, 20))[0]
    (14, 14, 20)
    """

    def op(x, window, strides, padding, dilation, ceil_mode):
        return ops.max_pool(x, window, strides, padding, dilation=dilation, ceil_mode=ceil_mode)

    return _window_pool("MaxPool", op, window_shape, strides, padding, dilation, ceil_mode, {}, {})


def AvgPool(
    window_shape,
    strides=None,
    padding=0,
    *,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Layer:
    """Average pooling layer (`jcnn.ops.avg_pool`, PyTorch's ``AvgPoolNd`` divisors).

    Args:
      window_shape: an int (square 2-D) or a tuple of d ints.
      strides: an int or d ints; ``None`` (default) means strides = window.
      padding: an int, d ints, d ``(lo, hi)`` pairs, or a padding name.
      ceil_mode: round the output size up (PyTorch's rule).
      count_include_pad: whether padded pixels count in the divisor at borders (PyTorch's
        default True).
      divisor_override: a fixed divisor instead.

    Returns:
      A `Layer` with params ``()`` and state ``()``.

    >>> import jax
    >>> AvgPool(3, strides=2, padding=1).init(jax.random.key(0), (8, 8, 4))[0]
    (4, 4, 4)
    """
    where = "AvgPool"
    count_include_pad = as_bool(count_include_pad, where, "count_include_pad")
    if divisor_override is not None:
        divisor_override = positive_int(divisor_override, where, "divisor_override")

    def op(x, window, strides, padding, dilation, ceil_mode):
        del dilation  # always 1: PyTorch's AvgPool has none
        return ops.avg_pool(
            x,
            window,
            strides,
            padding,
            ceil_mode=ceil_mode,
            count_include_pad=count_include_pad,
            divisor_override=divisor_override,
        )

    extra = {"count_include_pad": count_include_pad, "divisor_override": divisor_override}
    return _window_pool(
        where,
        op,
        window_shape,
        strides,
        padding,
        1,
        ceil_mode,
        extra,
        {"count_include_pad": True, "divisor_override": None},
    )


def _global_pool(name: str, op, spatial_dims: int, flops_per_element: int) -> Layer:
    where = name
    d = positive_int(spatial_dims, where, "spatial_dims")
    source = f"`spatial_dims`={d}"

    def plan(input_shape):
        shape = spatial_input(input_shape, d, where, source)
        return shape, (shape[-1],)

    def init(key, input_shape):
        del key
        return plan(input_shape)[1], (), ()

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        check_rank(x, d, where, source)
        return op(x, spatial_dims=d), state

    def info(input_shape):
        shape, out = plan(input_shape)
        return LayerInfo(out, 0, flops_per_element * math.prod(shape), rf=GLOBAL)

    return Layer(
        init,
        apply,
        name=name,
        kind="pool",
        hparams={"spatial_dims": d},
        info=info,
        description=describe(name, (), {"spatial_dims": d}, {"spatial_dims": 2}),
    )


def GlobalAvgPool(spatial_dims: int = 2) -> Layer:
    """Mean over all spatial positions: ``(*spatial, c) -> (c,)``.

    Args:
      spatial_dims: the input's spatial rank (default 2: ``(h, w, c)``); checked at ``init``
        and ``apply``, so a batch passed by mistake is an error rather than a silent average
        over examples.

    >>> import jax
    >>> GlobalAvgPool().init(jax.random.key(0), (7, 7, 512))[0]
    (512,)
    """
    return _global_pool("GlobalAvgPool", ops.global_avg_pool, spatial_dims, 1)


def GlobalMaxPool(spatial_dims: int = 2) -> Layer:
    """Max over all spatial positions: ``(*spatial, c) -> (c,)``; see `GlobalAvgPool`.

    >>> import jax
    >>> GlobalMaxPool(1).init(jax.random.key(0), (100, 8))[0]
    (8,)
    """
    return _global_pool("GlobalMaxPool", ops.global_max_pool, spatial_dims, 1)


def _adaptive_pool(name: str, op, output_size) -> Layer:
    where = name
    requested = shapes.canonicalize_output_size(output_size, where)
    d = len(requested)
    source = f"`output_size` {requested} has {d}"

    def geometry(input_shape):
        shape = spatial_input(input_shape, d, where, source)
        out = shapes.adaptive_output_shape(shape[:-1], requested, where)
        return shape, out + (shape[-1],)

    def init(key, input_shape):
        del key
        return geometry(input_shape)[1], (), ()

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        check_rank(x, d, where, source)
        return op(x, requested), state

    def info(input_shape):
        shape, out_shape = geometry(input_shape)
        windows = [shapes.adaptive_windows(w, o) for w, o in zip(shape[:-1], out_shape[:-1])]
        flops = shape[-1] * math.prod(sum(b - a for a, b in win) for win in windows)
        if all(o == 1 for o in out_shape[:-1]):
            return LayerInfo(out_shape, 0, flops, rf=GLOBAL)
        rf = []
        for w, o, win in zip(shape[:-1], out_shape[:-1], windows):
            # Evenly spaced when o divides w; otherwise windows start at floor(i*w/o): the
            # field is the longest window, spaced w/o apart on average, first one centred on
            # the first window (an approximation the summary states).
            longest = max(b - a for a, b in win)
            first = win[0][1] - win[0][0]
            rf.append(RFWindow(longest, w / o, (longest - first) / 2))
        return LayerInfo(out_shape, 0, flops, rf=tuple(rf))

    return Layer(
        init,
        apply,
        name=name,
        kind="pool",
        hparams={"output_size": requested},
        info=info,
        description=describe(name, (output_size,)),
    )


def AdaptiveAvgPool(output_size) -> Layer:
    """Average pooling to a fixed output size (PyTorch's ``AdaptiveAvgPoolNd``).

    Output ``i`` of a dim of size ``W`` averages ``[floor(i*W/O), ceil((i+1)*W/O))``. In the
    summary its receptive-field step is exact when ``O`` divides ``W``; otherwise it is the
    longest window at the average spacing ``W/O``.

    Args:
      output_size: an int (square 2-D) or d entries, each an int or ``None`` (keep that dim).

    >>> import jax
    >>> AdaptiveAvgPool((1, 1)).init(jax.random.key(0), (7, 5, 3))[0]
    (1, 1, 3)
    """
    return _adaptive_pool("AdaptiveAvgPool", ops.adaptive_avg_pool, output_size)


def AdaptiveMaxPool(output_size) -> Layer:
    """Max pooling to a fixed output size (PyTorch's ``AdaptiveMaxPoolNd``); see `AdaptiveAvgPool`.

    >>> import jax
    >>> AdaptiveMaxPool(2).init(jax.random.key(0), (5, 5, 3))[0]
    (2, 2, 3)
    """
    return _adaptive_pool("AdaptiveMaxPool", ops.adaptive_max_pool, output_size)
