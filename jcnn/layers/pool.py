"""Pooling layers: windowed (max, avg), global and adaptive; no params, no state.

Each is one spec whose fields are checked once at construction into the op's spec
(`jcnn.shapes.pool_spec`, ...); ``init`` and ``info`` take one example's shape, ``apply`` any
number of leading batch dims (``batch_ndim``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jcnn import shapes
from jcnn.layers._examples import spatial_example, spatial_input
from jcnn.layers.base import Layer
from jcnn.layers.info import GLOBAL, LayerInfo, RFWindow, Windows
from jcnn.layers.spec import LeafSpec
from jcnn.ops.pool import (
    adaptive_avg_pool_with_spec,
    adaptive_max_pool_with_spec,
    avg_pool_with_spec,
    global_avg_pool_with_spec,
    global_max_pool_with_spec,
    max_pool_with_spec,
)

__all__ = [
    "MaxPool",
    "AvgPool",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "MaxPoolSpec",
    "AvgPoolSpec",
    "GlobalAvgPoolSpec",
    "GlobalMaxPoolSpec",
    "AdaptiveAvgPoolSpec",
    "AdaptiveMaxPoolSpec",
]


@dataclasses.dataclass(frozen=True)
class _WindowPool(LeafSpec):
    """A windowed pool: the fields both have, and the layer they make alike."""

    window_shape: Any
    strides: Any = None
    padding: Any = 0
    _: dataclasses.KW_ONLY
    ceil_mode: bool = False

    def default_of(self, field: str) -> Any:
        # strides=None means strides = window (PyTorch, Keras): that is not worth showing.
        return self.window_shape if field == "strides" else super().default_of(field)

    def _store(self, op: shapes.PoolSpec) -> None:
        self._canonical(
            window_shape=op.window_shape, strides=op.strides, padding=op.padding, ceil_mode=op.ceil_mode
        )

    @property
    def op(self) -> shapes.PoolSpec:
        """The op's spec, `jcnn.shapes.PoolSpec`, from these fields."""
        raise NotImplementedError

    @property
    def d(self) -> int:
        return len(self.window_shape)

    @property
    def _source(self) -> str:
        return f"`window_shape` {self.window_shape} has {self.d}"

    def _geometry(self, input_shape) -> shapes.PoolGeometry:
        shape = spatial_input(input_shape, self.d, self.name, self._source)
        return shapes.pool_geometry(self.op, shape, where=self.name)

    def init(self, key, input_shape, /):
        del key
        return self._geometry(input_shape).out_shape, (), ()

    def info(self, input_shape, /):
        g = self._geometry(input_shape)
        return LayerInfo(
            g.out_shape,
            0,
            shapes.pool_flops(g.out_spatial, self.window_shape, g.channels),
            padding=g.padding,
            warning=shapes.fit_warning(
                g.in_spatial, self.window_shape, g.strides, g.padding, g.dilation, g.out_spatial
            ),
            rf=Windows(
                tuple(
                    RFWindow(k, s, p[0], r)
                    for k, s, p, r in zip(self.window_shape, g.strides, g.padding, g.dilation)
                )
            ),
        )


@dataclasses.dataclass(frozen=True)
class MaxPoolSpec(_WindowPool):
    """Max pooling layer (`jcnn.ops.max_pool`, PyTorch's ``MaxPoolNd`` numbers).

    ``MaxPool(...)`` builds the `Layer` from this spec.

    Args:
      window_shape: an int (square 2-D) or a tuple of d ints.
      strides: an int or d ints; ``None`` (default) means strides = window (PyTorch, Keras).
      padding: an int, d ints, d ``(lo, hi)`` pairs, or a padding name; numeric padding at
        most half the window. Padding reads as ``-inf``.
      ceil_mode: round the output size up (PyTorch's rule).
      dilation: spacing between window taps.

    Returns:
      ``MaxPool(...)`` returns a `Layer` with params ``()`` and state ``()``; ``apply`` takes
      ``(*batch, *spatial, c)``.

    Raises:
      ShapeError / ValueError / TypeError: bad hyperparameters at construction; an input they
        do not fit at ``init`` or ``apply``.

    >>> import jax
    >>> MaxPool(2).init(jax.random.key(0), (28, 28, 20))[0]
    (14, 14, 20)
    """

    name = "MaxPool"
    _: dataclasses.KW_ONLY
    dilation: Any = 1

    def __post_init__(self):
        op = shapes.pool_spec(
            self.window_shape,
            self.strides,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            where=self.name,
        )
        self._store(op)
        self._canonical(dilation=op.dilation)

    @property
    def op(self) -> shapes.PoolSpec:
        return shapes.PoolSpec(self.window_shape, self.strides, self.padding, self.dilation, self.ceil_mode)

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        x = spatial_example(x, self.d, self._source, self.name, batch_ndim, "real")
        return max_pool_with_spec(self.op, x, where=self.name), state


@dataclasses.dataclass(frozen=True)
class AvgPoolSpec(_WindowPool):
    """Average pooling layer (`jcnn.ops.avg_pool`, PyTorch's ``AvgPoolNd`` divisors).

    ``AvgPool(...)`` builds the `Layer` from this spec.

    Args:
      window_shape: an int (square 2-D) or a tuple of d ints.
      strides: an int or d ints; ``None`` (default) means strides = window.
      padding: an int, d ints, d ``(lo, hi)`` pairs, or a padding name.
      ceil_mode: round the output size up (PyTorch's rule).
      count_include_pad: whether padded pixels count in the divisor at borders (PyTorch's
        default True).
      divisor_override: a fixed nonzero divisor instead (as in PyTorch).

    Returns:
      ``AvgPool(...)`` returns a `Layer` with params ``()`` and state ``()``.

    Raises:
      ShapeError / ValueError / TypeError: bad hyperparameters at construction; an input they
        do not fit at ``init`` or ``apply``.

    >>> import jax
    >>> AvgPool(3, strides=2, padding=1).init(jax.random.key(0), (8, 8, 4))[0]
    (4, 4, 4)
    """

    name = "AvgPool"
    _: dataclasses.KW_ONLY
    count_include_pad: bool = True
    divisor_override: int | None = None

    def __post_init__(self):
        op = shapes.pool_spec(
            self.window_shape,
            self.strides,
            self.padding,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
            divisor_override=self.divisor_override,
            where=self.name,
        )
        self._store(op)
        self._canonical(count_include_pad=op.count_include_pad, divisor_override=op.divisor_override)

    @property
    def op(self) -> shapes.PoolSpec:
        return shapes.PoolSpec(
            self.window_shape,
            self.strides,
            self.padding,
            (1,) * self.d,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        x = spatial_example(x, self.d, self._source, self.name, batch_ndim, "float")
        return avg_pool_with_spec(self.op, x, where=self.name), state


@dataclasses.dataclass(frozen=True)
class _GlobalPool(LeafSpec):
    """A pool over all spatial positions: ``(*spatial, c) -> (c,)``."""

    spatial_dims: int = 2

    def __post_init__(self):
        self._canonical(spatial_dims=shapes.global_pool_spec(self.spatial_dims, self.name))

    @property
    def _source(self) -> str:
        return f"`spatial_dims`={self.spatial_dims}"

    def _plan(self, input_shape):
        shape = spatial_input(input_shape, self.spatial_dims, self.name, self._source)
        return shape, (shape[-1],)

    def init(self, key, input_shape, /):
        del key
        return self._plan(input_shape)[1], (), ()

    def _pool(self, x):
        raise NotImplementedError

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        x = spatial_example(x, self.spatial_dims, self._source, self.name, batch_ndim, self._dtypes)
        return self._pool(x), state

    _dtypes = "float"

    def info(self, input_shape, /):
        shape, out = self._plan(input_shape)
        return LayerInfo(out, 0, math.prod(shape), rf=GLOBAL)  # one add or compare per element


@dataclasses.dataclass(frozen=True)
class GlobalAvgPoolSpec(_GlobalPool):
    """Mean over all spatial positions: ``(*spatial, c) -> (c,)``; ``GlobalAvgPool()`` builds it.

    Args:
      spatial_dims: the input's spatial rank (default 2: one example is ``(h, w, c)``).
        ``init`` takes one example's shape; ``apply`` reads the ``spatial_dims + 1`` trailing
        dims of ``x`` as one example and the ``batch_ndim`` dims before them as batch dims, so
        a batch is pooled per example, never across examples.

    >>> import jax
    >>> GlobalAvgPool().init(jax.random.key(0), (7, 7, 512))[0]
    (512,)
    """

    name = "GlobalAvgPool"

    def _pool(self, x):
        return global_avg_pool_with_spec(self.spatial_dims, x, where=self.name)


@dataclasses.dataclass(frozen=True)
class GlobalMaxPoolSpec(_GlobalPool):
    """Max over all spatial positions: ``(*spatial, c) -> (c,)``; see `GlobalAvgPoolSpec`.

    >>> import jax
    >>> GlobalMaxPool(1).init(jax.random.key(0), (100, 8))[0]
    (8,)
    """

    name = "GlobalMaxPool"
    _dtypes = "real"

    def _pool(self, x):
        return global_max_pool_with_spec(self.spatial_dims, x, where=self.name)


@dataclasses.dataclass(frozen=True)
class _AdaptivePool(LeafSpec):
    """A pool to a fixed output size (PyTorch's ``AdaptiveAvgPoolNd`` / ``AdaptiveMaxPoolNd``)."""

    output_size: Any

    def __post_init__(self):
        self._canonical(output_size=shapes.adaptive_pool_spec(self.output_size, self.name).output_size)

    @property
    def op(self) -> shapes.AdaptivePoolSpec:
        return shapes.AdaptivePoolSpec(self.output_size)

    @property
    def _source(self) -> str:
        return f"`output_size` {self.output_size} has {len(self.output_size)}"

    def _geometry(self, input_shape) -> shapes.AdaptivePoolGeometry:
        shape = spatial_input(input_shape, len(self.output_size), self.name, self._source)
        return shapes.adaptive_pool_geometry(self.op, shape, where=self.name)

    def init(self, key, input_shape, /):
        del key
        return self._geometry(input_shape).out_shape, (), ()

    _dtypes = "float"

    def _pool(self, x):
        raise NotImplementedError

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        x = spatial_example(x, len(self.output_size), self._source, self.name, batch_ndim, self._dtypes)
        return self._pool(x), state

    def info(self, input_shape, /):
        g = self._geometry(input_shape)
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
        return LayerInfo(g.out_shape, 0, flops, rf=Windows(tuple(rf)))


@dataclasses.dataclass(frozen=True)
class AdaptiveAvgPoolSpec(_AdaptivePool):
    """Average pooling to a fixed output size (PyTorch's ``AdaptiveAvgPoolNd``); ``AdaptiveAvgPool(...)``.

    Output ``i`` of a dim of size ``W`` averages ``[floor(i*W/O), ceil((i+1)*W/O))``. In the
    summary its receptive-field step is exact when ``O`` divides ``W``; otherwise it is the
    longest window at the average spacing ``W/O``.

    Args:
      output_size: an int (square 2-D) or d entries, each an int or ``None`` (keep that dim).

    >>> import jax
    >>> AdaptiveAvgPool((1, 1)).init(jax.random.key(0), (7, 5, 3))[0]
    (1, 1, 3)
    """

    name = "AdaptiveAvgPool"

    def _pool(self, x):
        return adaptive_avg_pool_with_spec(self.op, x, where=self.name)


@dataclasses.dataclass(frozen=True)
class AdaptiveMaxPoolSpec(_AdaptivePool):
    """Max pooling to a fixed output size (PyTorch's ``AdaptiveMaxPoolNd``); see `AdaptiveAvgPoolSpec`.

    >>> import jax
    >>> AdaptiveMaxPool(2).init(jax.random.key(0), (5, 5, 3))[0]
    (2, 2, 3)
    """

    name = "AdaptiveMaxPool"
    _dtypes = "real"

    def _pool(self, x):
        return adaptive_max_pool_with_spec(self.op, x, where=self.name)


#: ``MaxPool(window_shape, strides=None, padding=0, *, ceil_mode=False, dilation=1)``.
MaxPool = Layer.constructor(MaxPoolSpec)
#: ``AvgPool(window_shape, strides=None, padding=0, *, ceil_mode=False, count_include_pad=True, divisor_override=None)``.
AvgPool = Layer.constructor(AvgPoolSpec)
#: ``GlobalAvgPool(spatial_dims=2)``.
GlobalAvgPool = Layer.constructor(GlobalAvgPoolSpec)
#: ``GlobalMaxPool(spatial_dims=2)``.
GlobalMaxPool = Layer.constructor(GlobalMaxPoolSpec)
#: ``AdaptiveAvgPool(output_size)``.
AdaptiveAvgPool = Layer.constructor(AdaptiveAvgPoolSpec)
#: ``AdaptiveMaxPool(output_size)``.
AdaptiveMaxPool = Layer.constructor(AdaptiveMaxPoolSpec)
