"""Pooling layers: windowed (max, avg), global and adaptive; no params, no state.

Each constructor checks its hyperparameters once into a spec (`jcnn.shapes.pool_spec`, ...);
``init`` and ``info`` take one example's shape, ``apply`` any number of leading batch dims.
"""

from __future__ import annotations

import math

from jcnn import shapes
from jcnn.layers.base import GLOBAL, Layer, LayerInfo, RFWindow, describe, spatial_example, spatial_input
from jcnn.ops.pool import (
    adaptive_avg_pool_with_spec,
    adaptive_max_pool_with_spec,
    avg_pool_with_spec,
    global_avg_pool_with_spec,
    global_max_pool_with_spec,
    max_pool_with_spec,
)

__all__ = ["MaxPool", "AvgPool", "GlobalAvgPool", "GlobalMaxPool", "AdaptiveAvgPool", "AdaptiveMaxPool"]


def _unread(size: int, k: int, s: int, lo: int, r: int, out: int) -> int:
    """Input pixels no window reads, for ``out`` windows (ceil_mode may add one)."""
    read = {i * s + t * r - lo for i in range(out) for t in range(k)}
    return sum(1 for p in range(size) if p not in read)


def _window_pool(
    name: str,
    pool_with_spec,
    dtypes: str,
    spec: shapes.PoolSpec,
    args: tuple,
    given: dict,
    defaults: dict,
) -> Layer:
    """A windowed pooling layer on ``spec``, shown in ``repr`` as ``name(*args, **given)``."""
    where = name
    d, window = spec.d, spec.window_shape
    source = f"`window_shape` {window} has {d}"

    def geometry(input_shape):
        shape = spatial_input(input_shape, d, where, source)
        return shapes.pool_geometry(spec, shape, where=where)

    def init(key, input_shape):
        del key
        return geometry(input_shape).out_shape, (), ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        x = spatial_example(x, d, source, where, batch_ndim, dtypes)
        return pool_with_spec(spec, x, where=where), state

    def info(input_shape):
        g = geometry(input_shape)
        # A ceil_mode window may read the pixels the floor rule leaves: warn only when some
        # input pixel is still never read.
        unread = not spec.ceil_mode or any(
            _unread(w, k, s, p[0], r, o)
            for w, k, s, p, r, o in zip(g.in_spatial, window, g.strides, g.padding, g.dilation, g.out_spatial)
        )
        warning = (
            shapes.fit_warning(g.in_spatial, window, g.strides, g.padding, g.dilation) if unread else None
        )
        return LayerInfo(
            g.out_shape,
            0,
            shapes.pool_flops(g.out_spatial, window, g.channels),
            padding=g.padding,
            warning=warning,
            rf=tuple(RFWindow(k, s, p[0], r) for k, s, p, r in zip(window, g.strides, g.padding, g.dilation)),
        )

    return Layer(
        init,
        apply,
        name=name,
        spec=spec,
        info=info,
        takes_batch=True,
        description=describe(name, args, given, defaults),
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
      A `Layer` with params ``()`` and state ``()``; ``apply`` takes ``(*batch, *spatial, c)``.

    >>> import jax
    >>> MaxPool(2).init(jax.random.key(0), (28, 28, 20))[0]
    (14, 14, 20)
    """
    where = "MaxPool"
    spec = shapes.pool_spec(window_shape, strides, padding, dilation, ceil_mode=ceil_mode, where=where)
    given = {"strides": strides, "padding": padding, "dilation": dilation, "ceil_mode": spec.ceil_mode}
    defaults = {"strides": None, "padding": 0, "dilation": 1, "ceil_mode": False}
    return _window_pool(where, max_pool_with_spec, "real", spec, (window_shape,), given, defaults)


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
      divisor_override: a fixed nonzero divisor instead (as in PyTorch).

    Returns:
      A `Layer` with params ``()`` and state ``()``; ``apply`` takes ``(*batch, *spatial, c)``.

    >>> import jax
    >>> AvgPool(3, strides=2, padding=1).init(jax.random.key(0), (8, 8, 4))[0]
    (4, 4, 4)
    """
    where = "AvgPool"
    spec = shapes.pool_spec(
        window_shape,
        strides,
        padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        divisor_override=divisor_override,
        where=where,
    )
    given = {
        "strides": strides,
        "padding": padding,
        "dilation": 1,
        "ceil_mode": spec.ceil_mode,
        "count_include_pad": spec.count_include_pad,
        "divisor_override": spec.divisor_override,
    }
    defaults = {
        "strides": None,
        "padding": 0,
        "dilation": 1,
        "ceil_mode": False,
        "count_include_pad": True,
        "divisor_override": None,
    }
    return _window_pool(where, avg_pool_with_spec, "float", spec, (window_shape,), given, defaults)


def _global_pool(name: str, pool_with_spec, dtypes: str, spatial_dims, flops_per_element: int) -> Layer:
    where = name
    spec = shapes.global_pool_spec(spatial_dims, where)  # the spatial rank d
    d = spec
    source = f"`spatial_dims`={spec}"

    def plan(input_shape):
        shape = spatial_input(input_shape, spec, where, source)
        return shape, (shape[-1],)

    def init(key, input_shape):
        del key
        return plan(input_shape)[1], (), ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        x = spatial_example(x, d, source, where, batch_ndim, dtypes)
        return pool_with_spec(spec, x, where=where), state

    def info(input_shape):
        shape, out = plan(input_shape)
        return LayerInfo(out, 0, flops_per_element * math.prod(shape), rf=GLOBAL)

    return Layer(
        init,
        apply,
        name=name,
        spec=spec,
        info=info,
        takes_batch=True,
        description=describe(name, (), {"spatial_dims": spec}, {"spatial_dims": 2}),
    )


def GlobalAvgPool(spatial_dims: int = 2) -> Layer:
    """Mean over all spatial positions: ``(*spatial, c) -> (c,)``.

    Args:
      spatial_dims: the input's spatial rank (default 2: one example is ``(h, w, c)``).
        ``init`` takes one example's shape; ``apply`` reads the ``spatial_dims + 1`` trailing
        dims of ``x`` as one example and any dims before them as batch dims, so a batch is
        pooled per example, never across examples.

    >>> import jax
    >>> GlobalAvgPool().init(jax.random.key(0), (7, 7, 512))[0]
    (512,)
    """
    return _global_pool("GlobalAvgPool", global_avg_pool_with_spec, "float", spatial_dims, 1)


def GlobalMaxPool(spatial_dims: int = 2) -> Layer:
    """Max over all spatial positions: ``(*spatial, c) -> (c,)``; see `GlobalAvgPool`.

    >>> import jax
    >>> GlobalMaxPool(1).init(jax.random.key(0), (100, 8))[0]
    (8,)
    """
    return _global_pool("GlobalMaxPool", global_max_pool_with_spec, "real", spatial_dims, 1)


def _adaptive_pool(name: str, pool_with_spec, dtypes: str, output_size) -> Layer:
    where = name
    spec = shapes.adaptive_pool_spec(output_size, where)
    d = spec.d
    source = f"`output_size` {spec.output_size} has {d}"

    def geometry(input_shape):
        shape = spatial_input(input_shape, spec.d, where, source)
        return shapes.adaptive_pool_geometry(spec, shape, where=where)

    def init(key, input_shape):
        del key
        return geometry(input_shape).out_shape, (), ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        x = spatial_example(x, d, source, where, batch_ndim, dtypes)
        return pool_with_spec(spec, x, where=where), state

    def info(input_shape):
        g = geometry(input_shape)
        flops = g.channels * math.prod(sum(b - a for a, b in win) for win in g.windows)
        if all(o == 1 for o in g.out_spatial):
            return LayerInfo(g.out_shape, 0, flops, rf=GLOBAL)
        rf = []
        for w, o, win in zip(g.in_spatial, g.out_spatial, g.windows):
            # Evenly spaced when o divides w; otherwise windows start at floor(i*w/o): the
            # field is the longest window, spaced w/o apart on average, first one centred on
            # the first window (an approximation the summary states).
            longest = max(b - a for a, b in win)
            first = win[0][1] - win[0][0]
            rf.append(RFWindow(longest, w / o, (longest - first) / 2))
        return LayerInfo(g.out_shape, 0, flops, rf=tuple(rf))

    return Layer(
        init,
        apply,
        name=name,
        spec=spec,
        info=info,
        takes_batch=True,
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
    return _adaptive_pool("AdaptiveAvgPool", adaptive_avg_pool_with_spec, "float", output_size)


def AdaptiveMaxPool(output_size) -> Layer:
    """Max pooling to a fixed output size (PyTorch's ``AdaptiveMaxPoolNd``); see `AdaptiveAvgPool`.

    >>> import jax
    >>> AdaptiveMaxPool(2).init(jax.random.key(0), (5, 5, 3))[0]
    (2, 2, 3)
    """
    return _adaptive_pool("AdaptiveMaxPool", adaptive_max_pool_with_spec, "real", output_size)
