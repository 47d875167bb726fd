"""Pooling ops: max, min, average, Lp, global and adaptive pooling, with PyTorch's numbers.

Every op takes channels-last input ``(*batch, *spatial, c)`` with zero or more leading batch
dims; the spatial rank ``d`` comes from ``window_shape`` (an int means square 2-D),
``output_size`` or ``spatial_dims``, never from ``x.ndim``. A windowed pool is one
``lax.reduce_window`` over the array as given, with windows of 1 on the batch and channel dims:
no transposes, no host round-trips, and every check looks at shapes and dtypes only, so it is
free under ``jit``. Shape arithmetic and its error messages live in `jcnn.shapes`: each public
op builds its spec (`jcnn.shapes.pool_spec`, ...) and calls its ``*_with_spec`` twin, which the
pooling layers call with the spec they built once.

Semantics that differ between frameworks, fixed here to PyTorch's:

- ``strides=None`` means strides = window.
- ``ceil_mode`` rounds the output size up, but a last window must start inside the input or its
  low padding. The overhanging windows read extra high padding that never counts as input.
- The average-pool divisor at borders (``avg_pool``): with ``count_include_pad=True`` it is the
  window clipped to the padded input (explicit padding counts, ceil-mode overhang does not);
  with ``count_include_pad=False`` it is the number of real input pixels in the window;
  ``divisor_override`` replaces both. Padding names (``"SAME"``...) resolve to explicit
  ``(lo, hi)`` pairs first, so ``"SAME"`` with ``count_include_pad=False`` gives TensorFlow's
  SAME average pool.
- Padding is at most half the window on each side (`jcnn.shapes.pool_spec`, PyTorch's rule),
  so a window cannot start or end in padding alone.
- Adaptive windows: output ``i`` of a dim of size ``W`` pools ``[floor(i*W/O), ceil((i+1)*W/O))``.
- Max/min pooling propagates NaN, and its gradient goes to the first extreme tap in row-major
  window order, or to the last NaN (`jcnn.ops.extremum`).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn import checks, shapes
from jcnn.ops import extremum
from jcnn.shapes import AdaptivePoolSpec, PaddingLike, PoolSpec

__all__ = [
    "max_pool",
    "min_pool",
    "avg_pool",
    "lp_pool",
    "global_avg_pool",
    "global_max_pool",
    "adaptive_avg_pool",
    "adaptive_max_pool",
]


# --------------------------------------------------------------------------------------------
# Helpers: dtype checks, reduce_window over the spatial dims, static divisors
# --------------------------------------------------------------------------------------------


def _operand(x, where: str, dtypes: str) -> jax.Array:
    """``x`` as a jax array of an accepted dtype: ``"real"`` (max/min: floats or integers) or
    ``"float"`` (averages of integers are not integers: ask for a cast rather than pick a
    rounding)."""
    return jnp.asarray(checks.as_array(x, where, "x", dtypes))


def _identity(op, dtype) -> np.ndarray:
    """The init value lax recognises as the monoid identity (so reduce_window is differentiable)."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        value = {lax.max: -np.inf, lax.min: np.inf, lax.add: 0}[op]
    else:
        value = {lax.max: np.iinfo(dtype).min, lax.min: np.iinfo(dtype).max, lax.add: 0}[op]
    return np.array(value, dtype)


def _full(shape_spatial, nbatch: int, ones_after: int = 1) -> tuple[int, ...]:
    """A spatial tuple widened to the array's rank with 1s for batch and channel dims."""
    return (1,) * nbatch + tuple(shape_spatial) + (1,) * ones_after


def _reduce_window(x: jax.Array, op, g: shapes.PoolGeometry) -> jax.Array:
    """One ``lax.reduce_window`` over the spatial dims of ``(*batch, *spatial, c)``."""
    nb = len(g.batch_shape)
    return lax.reduce_window(
        x,
        _identity(op, x.dtype),
        op,
        window_dimensions=_full(g.window_shape, nb),
        window_strides=_full(g.strides, nb),
        padding=((0, 0),) * nb + g.lax_padding + ((0, 0),),
        window_dilation=_full(g.dilation, nb),
    )


def _window_counts(w: int, k: int, s: int, lo: int, hi: int, out: int, include_pad: bool) -> np.ndarray:
    """Per-output divisors along one dim, PyTorch's rule (aten AvgPool kernels).

    A window starts at ``i*s - lo``; with ``include_pad`` it is clipped to the padded input
    ``[-lo, w + hi)`` (ceil-mode overhang does not count), otherwise to the input ``[0, w)``.
    """
    starts = np.arange(out) * s - lo
    ends = starts + k
    if include_pad:
        return np.minimum(ends, w + hi) - starts
    return np.minimum(ends, w) - np.maximum(starts, 0)


def _divisor(g: shapes.PoolGeometry, include_pad: bool) -> np.ndarray:
    """The avg-pool divisor as a static array: separable, so an outer product of 1-D counts."""
    counts = np.ones((), np.int64)
    for w, k, s, (lo, hi), o in zip(g.in_spatial, g.window_shape, g.strides, g.padding, g.out_spatial):
        counts = np.multiply.outer(counts, _window_counts(w, k, s, lo, hi, o, include_pad))
    return counts


def _broadcast_static(values: np.ndarray, nbatch: int, dtype) -> jax.Array | np.ndarray:
    """A static per-output-pixel array, shaped to broadcast without rank promotion."""
    flat = values.reshape(-1)
    if np.all(flat == flat[0]):
        return np.asarray(flat[0], dtype)
    return np.asarray(values, dtype).reshape(_full(values.shape, nbatch))


# --------------------------------------------------------------------------------------------
# Windowed pooling
# --------------------------------------------------------------------------------------------


def max_pool(
    x: jax.Array,
    window_shape,
    strides=None,
    padding: PaddingLike = 0,
    *,
    dilation=1,
    ceil_mode: bool = False,
) -> jax.Array:
    """Max pooling over ``d`` spatial dims (PyTorch's ``MaxPoolNd``, channels last).

    Padding reads as ``-inf`` (the dtype's minimum for integers), so it never wins. NaN
    propagates, and gradients (every order, both modes) follow PyTorch: each output's goes to
    the first window tap that attains the max, or to the last NaN (`jcnn.ops.extremum`).
    Windows that tile the input (window == stride, no padding or dilation) take a
    reshape-and-compare fast path.

    Args:
      x: ``(*batch, *spatial, c)``, float or integer.
      window_shape: an int (square 2-D window) or a tuple of ``d`` ints.
      strides: an int or ``d`` ints; ``None`` (default) means strides = window.
      padding: an int, ``d`` ints, ``d`` ``(lo, hi)`` pairs, or ``"VALID"``, ``"SAME"``,
        ``"SAME_LOWER"``, ``"CAUSAL"``; at most half the window on each side.
      dilation: spacing between window taps, an int or ``d`` ints.
      ceil_mode: round the output size up (PyTorch's rule: a last window starts inside the
        input or its low padding).

    Returns:
      ``(*batch, *out_spatial, c)``, same dtype as ``x``; ``out_spatial`` is
      `jcnn.shapes.pool_output_shape`.

    Raises:
      ShapeError: ``x`` has too few dims, a window does not fit, or the padding is too large.
      TypeError: a non-int hyperparameter or a non-numeric ``x``.

    >>> x = jnp.arange(16.0).reshape(4, 4, 1)
    >>> max_pool(x, 2)[..., 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """
    where = "max_pool"
    spec = shapes.pool_spec(window_shape, strides, padding, dilation, ceil_mode=ceil_mode, where=where)
    return max_pool_with_spec(spec, x, where=where)


def max_pool_with_spec(spec: PoolSpec, x, *, where: str = "max_pool") -> jax.Array:
    """`max_pool` with its hyperparameters already checked (a `MaxPool` layer's ``apply``):
    checks ``x``'s type and shape only.

    >>> max_pool_with_spec(shapes.pool_spec(2), jnp.ones((8, 4, 4, 3))).shape
    (8, 2, 2, 3)
    """
    x = _operand(x, where, "real")
    g = shapes.pool_geometry(spec, x.shape, where=where)
    return extremum.window_extremum(x, lax.max, g)


def min_pool(
    x: jax.Array,
    window_shape,
    strides=None,
    padding: PaddingLike = 0,
    *,
    dilation=1,
    ceil_mode: bool = False,
) -> jax.Array:
    """Min pooling: `max_pool`'s mirror image, ``min_pool(x) == -max_pool(-x)`` for floats.

    Padding reads as ``+inf`` (the dtype's maximum for integers). Arguments, returns and
    errors as in `max_pool`.

    >>> x = jnp.arange(16.0).reshape(4, 4, 1)
    >>> min_pool(x, 2)[..., 0].tolist()
    [[0.0, 2.0], [8.0, 10.0]]
    """
    where = "min_pool"
    spec = shapes.pool_spec(window_shape, strides, padding, dilation, ceil_mode=ceil_mode, where=where)
    x = _operand(x, where, "real")
    g = shapes.pool_geometry(spec, x.shape, where=where)
    return extremum.window_extremum(x, lax.min, g)


def avg_pool(
    x: jax.Array,
    window_shape,
    strides=None,
    padding: PaddingLike = 0,
    *,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> jax.Array:
    """Average pooling over ``d`` spatial dims, with PyTorch's ``AvgPoolNd`` divisors.

    Each output is a window's sum (padding reads as 0) divided by:

    - ``divisor_override`` if given (any nonzero int, as in PyTorch);
    - else, with ``count_include_pad=True`` (default), the window's size clipped to the padded
      input: explicit padding counts, the overhang of a ``ceil_mode`` window does not;
    - else the number of real input pixels in the window.

    The divisor is a static array computed when tracing, so it costs one division at run time.
    bfloat16 and float16 inputs are summed in float32 and rounded once.

    Args:
      x: ``(*batch, *spatial, c)``, floating point.
      window_shape: an int (square 2-D window) or a tuple of ``d`` ints.
      strides: an int or ``d`` ints; ``None`` (default) means strides = window.
      padding: an int, ``d`` ints, ``d`` ``(lo, hi)`` pairs, or a padding name (resolved to
        pairs first, so ``count_include_pad`` governs them too); at most half the window.
      ceil_mode: round the output size up (see `max_pool`).
      count_include_pad: whether padded pixels count in the divisor.
      divisor_override: a fixed divisor instead.

    Returns:
      ``(*batch, *out_spatial, c)``, same dtype as ``x``.

    Raises:
      ShapeError: ``x`` has too few dims, a window does not fit, or the padding is too large.
      TypeError: an integer ``x`` (cast to float first) or a non-int hyperparameter.
      ValueError: ``divisor_override=0``.

    >>> x = jnp.arange(16.0).reshape(4, 4, 1)
    >>> avg_pool(x, 2)[..., 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    >>> x = jnp.array([3.0, 6.0, 9.0, 12.0]).reshape(4, 1)
    >>> avg_pool(x, (3,), 1, padding=1)[:, 0].tolist()
    [3.0, 6.0, 9.0, 7.0]
    >>> avg_pool(x, (3,), 1, padding=1, count_include_pad=False)[:, 0].tolist()
    [4.5, 6.0, 9.0, 10.5]
    """
    where = "avg_pool"
    spec = shapes.pool_spec(
        window_shape,
        strides,
        padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        divisor_override=divisor_override,
        where=where,
    )
    return avg_pool_with_spec(spec, x, where=where)


def avg_pool_with_spec(spec: PoolSpec, x, *, where: str = "avg_pool") -> jax.Array:
    """`avg_pool` with its hyperparameters already checked (an `AvgPool` layer's ``apply``):
    checks ``x``'s type and shape only. ``spec.dilation`` must be all 1s (`avg_pool` has none).

    >>> avg_pool_with_spec(shapes.pool_spec(2), jnp.ones((8, 4, 4, 3))).shape
    (8, 2, 2, 3)
    """
    x = _operand(x, where, "float")
    g = shapes.pool_geometry(spec, x.shape, where=where)
    dtype = checks.accumulator_dtype(x.dtype)
    total = _reduce_window(x.astype(dtype), lax.add, g)
    if spec.divisor_override is not None:
        divisor = np.asarray(spec.divisor_override, dtype)
    else:
        divisor = _broadcast_static(_divisor(g, spec.count_include_pad), len(g.batch_shape), dtype)
    return (total / divisor).astype(x.dtype)


def _check_p(p, where: str) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(
            f"{where}: `p` must be a Python or NumPy real number, got {p!r} of type {type(p).__name__}."
        )
    if not p > 0:  # also refuses nan
        raise ValueError(f"{where}: `p` must be > 0 (or inf for max pooling of |x|), got {p!r}.")
    return float(p)


def _power(x: jax.Array, p: float) -> jax.Array:
    # An integral exponent as an int: lax.integer_pow, exact for negative bases and cheap to
    # differentiate (PyTorch's pow agrees: (-2)**3 = -8, while (-2)**(1/3) is nan in both).
    return x ** int(p) if p == int(p) else x**p


def lp_pool(
    x: jax.Array,
    p: float,
    window_shape,
    strides=None,
    padding: PaddingLike = 0,
    *,
    ceil_mode: bool = False,
) -> jax.Array:
    """Power-average pooling, PyTorch's ``LPPoolNd``: ``(sum over the window of x**p)**(1/p)``.

    ``p=1`` is sum pooling; ``p=2`` the window's Euclidean norm; ``p=inf`` is max pooling of
    ``|x|`` with no ``pow`` (NaN propagates; the gradient is ``sgn(x)``, 0 at 0 and at NaN, at
    the first max), as in PyTorch 2.13, whose ``lp_pool{1,2,3}d`` special-case ``inf`` as
    ``max_pool(x.abs())`` (pytorch/pytorch#183997; earlier versions ran the finite-``p``
    formula, which collapses to ones). Like PyTorch, negative sums (odd ``p``) give ``nan`` unless ``1/p``
    is an integer, and the value is computed as
    ``(avg_pool(x**p) * prod(window_shape))**(1/p)``: a ``ceil_mode`` window that overhangs the
    input is scaled up by ``prod(window_shape) / (pixels it covers)``, not left as a plain sum.
    ``padding`` (PyTorch has none) adds zeros, which contribute nothing.

    Args:
      x: ``(*batch, *spatial, c)``, floating point.
      p: the power, a real number > 0, or ``inf``.
      window_shape: an int (square 2-D window) or a tuple of ``d`` ints.
      strides: an int or ``d`` ints; ``None`` (default) means strides = window.
      padding: as in `avg_pool`.
      ceil_mode: round the output size up (see `max_pool`).

    Returns:
      ``(*batch, *out_spatial, c)``, same dtype as ``x``.

    Raises:
      ShapeError: as in `avg_pool`.
      TypeError: an integer ``x`` or a non-real ``p``.
      ValueError: ``p <= 0`` or nan.

    >>> x = jnp.array([3.0, 4.0, 6.0, 8.0]).reshape(4, 1)
    >>> lp_pool(x, 2, (2,))[:, 0].tolist()
    [5.0, 10.0]
    """
    where = "lp_pool"
    p = _check_p(p, where)
    spec = shapes.pool_spec(window_shape, strides, padding, ceil_mode=ceil_mode, where=where)
    x = _operand(x, where, "float")
    g = shapes.pool_geometry(spec, x.shape, where=where)
    if p == math.inf:
        return extremum.window_extremum(extremum.abs_sgn(x), lax.max, g)
    dtype = checks.accumulator_dtype(x.dtype)
    total = _reduce_window(_power(x.astype(dtype), p), lax.add, g)
    # PyTorch: avg_pool2d(x**p, count_include_pad=True) * kw*kh. Outside ceil-mode overhangs the
    # divisor is the full window and the factor is exactly 1.
    scale = math.prod(g.window_shape) / _divisor(g, include_pad=True)
    if np.any(scale != 1):
        total = total * _broadcast_static(scale, len(g.batch_shape), dtype)
    return _power(total, 1 / p).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Global pooling
# --------------------------------------------------------------------------------------------


def _spatial_axes(x: jax.Array, d: int, where: str) -> tuple[int, ...]:
    """The ``d`` axes before the channel axis, after checking ``x`` has them."""
    shapes.check_input(x.shape, d, f"`spatial_dims`={d}", where)
    return tuple(range(x.ndim - d - 1, x.ndim - 1))


def global_avg_pool(x: jax.Array, spatial_dims: int = 2) -> jax.Array:
    """Mean over all spatial positions: ``(*batch, *spatial, c) -> (*batch, c)``.

    The spatial dims are dropped (PyTorch's ``AdaptiveAvgPool2d(1)`` keeps them as 1s; flatten
    it to compare). bfloat16/float16 accumulate in float32.

    Args:
      x: ``(*batch, *spatial, c)``, floating point.
      spatial_dims: how many dims before the channel dim are spatial (default 2).

    Returns:
      ``(*batch, c)``, same dtype as ``x``.

    Raises:
      ShapeError: ``x`` has fewer than ``spatial_dims + 1`` dims, or an empty spatial dim.
      TypeError: an integer ``x``.

    >>> x = jnp.arange(8.0).reshape(2, 2, 2)
    >>> global_avg_pool(x).tolist()
    [3.0, 4.0]
    """
    where = "global_avg_pool"
    return global_avg_pool_with_spec(shapes.global_pool_spec(spatial_dims, where), x, where=where)


def global_avg_pool_with_spec(spatial_dims: int, x, *, where: str = "global_avg_pool") -> jax.Array:
    """`global_avg_pool` with ``spatial_dims`` already checked (`jcnn.shapes.global_pool_spec`).

    >>> global_avg_pool_with_spec(2, jnp.ones((8, 4, 4, 3))).shape
    (8, 3)
    """
    x = _operand(x, where, "float")
    axes = _spatial_axes(x, spatial_dims, where)
    return jnp.mean(x, axis=axes)


def global_max_pool(x: jax.Array, spatial_dims: int = 2) -> jax.Array:
    """Max over all spatial positions: ``(*batch, *spatial, c) -> (*batch, c)``.

    Args:
      x: ``(*batch, *spatial, c)``, float or integer.
      spatial_dims: how many dims before the channel dim are spatial (default 2).

    Returns:
      ``(*batch, c)``, same dtype as ``x``.

    Raises:
      ShapeError: ``x`` has fewer than ``spatial_dims + 1`` dims, or an empty spatial dim.
      TypeError: a non-numeric ``x``.

    >>> x = jnp.arange(8.0).reshape(2, 2, 2)
    >>> global_max_pool(x).tolist()
    [6.0, 7.0]
    """
    where = "global_max_pool"
    return global_max_pool_with_spec(shapes.global_pool_spec(spatial_dims, where), x, where=where)


def global_max_pool_with_spec(spatial_dims: int, x, *, where: str = "global_max_pool") -> jax.Array:
    """`global_max_pool` with ``spatial_dims`` already checked (`jcnn.shapes.global_pool_spec`).

    >>> global_max_pool_with_spec(1, jnp.ones((8, 4, 3))).shape
    (8, 3)
    """
    x = _operand(x, where, "real")
    axes = _spatial_axes(x, spatial_dims, where)
    return extremum.axes_extremum(x, lax.max, axes)


# --------------------------------------------------------------------------------------------
# Adaptive pooling
# --------------------------------------------------------------------------------------------


def _uniform(windows) -> tuple[int, int] | None:
    """``(window, stride)`` when adaptive windows are one evenly strided reduce_window."""
    starts = [a for a, _ in windows]
    lengths = {b - a for a, b in windows}
    if len(lengths) != 1:
        return None
    (length,) = lengths
    if len(windows) == 1:
        return length, 1
    steps = {b - a for a, b in zip(starts, starts[1:])}
    if len(steps) != 1 or min(steps) < 1:
        return None
    return length, steps.pop()


def _adaptive(x: jax.Array, geo: shapes.AdaptivePoolGeometry, op) -> jax.Array:
    """Adaptive pooling, separable per spatial dim.

    Dims whose windows are evenly strided with one length (always when ``W % O == 0``, and
    e.g. ``W=7, O=3``) share one ``reduce_window``. Each remaining dim gathers a static
    ``(O, L)`` index table (``L`` the longest window; shorter windows repeat their last index)
    and reduces over ``L``: a max ignores the repeats, a mean masks them out. Max and mean over
    a box are both separable, so the order of the dims does not matter.
    """
    d, nb, windows = len(geo.in_spatial), len(geo.batch_shape), geo.windows
    plans = [_uniform(win) for win in windows]
    if op is not lax.add:
        return extremum.adaptive_extremum(x, op, windows, plans)

    y = x.astype(checks.accumulator_dtype(x.dtype)) if op is lax.add else x
    if any(plan is not None and plan[0] > 1 for plan in plans):
        window = tuple(1 if plan is None else plan[0] for plan in plans)
        stride = tuple(1 if plan is None else plan[1] for plan in plans)
        y = lax.reduce_window(
            y,
            _identity(op, y.dtype),
            op,
            window_dimensions=_full(window, nb),
            window_strides=_full(stride, nb),
            padding=((0, 0),) * (nb + d + 1),
        )
        if op is lax.add:
            y = y / np.asarray(math.prod(window), y.dtype)
    for i, (win, plan) in enumerate(zip(windows, plans)):
        if plan is not None:
            continue
        axis = nb + i
        starts = np.array([a for a, _ in win])
        ends = np.array([b for _, b in win])
        lengths = ends - starts
        taps = np.arange(lengths.max())
        index = np.minimum(starts[:, None] + taps, ends[:, None] - 1)  # (O, L), in bounds
        g = jnp.take(y, index, axis=axis, mode="clip")  # (..., O, L, ...)
        trailing = (1,) * (y.ndim - axis - 1)
        valid = (taps < lengths[:, None]).reshape((1,) * axis + index.shape + trailing)
        total = jnp.sum(jnp.where(valid, g, jnp.zeros((), g.dtype)), axis=axis + 1)
        y = total / lengths.astype(y.dtype).reshape((1,) * axis + lengths.shape + trailing)
    return y.astype(x.dtype)


def adaptive_avg_pool(x: jax.Array, output_size) -> jax.Array:
    """Average pooling to a fixed output size (PyTorch's ``AdaptiveAvgPoolNd``).

    Output ``i`` of a dim of size ``W`` averages input ``[floor(i*W/O), ceil((i+1)*W/O))``
    (`jcnn.shapes.adaptive_windows`). ``O`` may exceed ``W``: windows then repeat.

    Args:
      x: ``(*batch, *spatial, c)``, floating point.
      output_size: an int (square 2-D) or ``d`` entries, each an int >= 1 or ``None`` (keep
        that dim's size).

    Returns:
      ``(*batch, *output_size, c)``, same dtype as ``x``.

    Raises:
      ShapeError: ``x`` has too few dims or an empty spatial dim, or an ``output_size`` < 1.
      TypeError: an integer ``x`` or a non-int ``output_size``.

    >>> x = jnp.arange(5.0).reshape(5, 1)
    >>> adaptive_avg_pool(x, (3,))[:, 0].tolist()
    [0.5, 2.0, 3.5]
    """
    where = "adaptive_avg_pool"
    return adaptive_avg_pool_with_spec(shapes.adaptive_pool_spec(output_size, where), x, where=where)


def adaptive_avg_pool_with_spec(spec: AdaptivePoolSpec, x, *, where: str = "adaptive_avg_pool") -> jax.Array:
    """`adaptive_avg_pool` with ``output_size`` already checked (an `AdaptiveAvgPool` layer).

    >>> adaptive_avg_pool_with_spec(shapes.adaptive_pool_spec(1), jnp.ones((8, 5, 5, 3))).shape
    (8, 1, 1, 3)
    """
    x = _operand(x, where, "float")
    return _adaptive(x, shapes.adaptive_pool_geometry(spec, x.shape, where=where), lax.add)


def adaptive_max_pool(x: jax.Array, output_size) -> jax.Array:
    """Max pooling to a fixed output size (PyTorch's ``AdaptiveMaxPoolNd``).

    Windows as in `adaptive_avg_pool`.

    Args:
      x: ``(*batch, *spatial, c)``, float or integer.
      output_size: an int (square 2-D) or ``d`` entries, each an int >= 1 or ``None``.

    Returns:
      ``(*batch, *output_size, c)``, same dtype as ``x``.

    Raises:
      ShapeError: ``x`` has too few dims or an empty spatial dim, or an ``output_size`` < 1.
      TypeError: a non-numeric ``x`` or a non-int ``output_size``.

    >>> x = jnp.arange(5.0).reshape(5, 1)
    >>> adaptive_max_pool(x, (3,))[:, 0].tolist()
    [1.0, 3.0, 4.0]
    """
    where = "adaptive_max_pool"
    return adaptive_max_pool_with_spec(shapes.adaptive_pool_spec(output_size, where), x, where=where)


def adaptive_max_pool_with_spec(spec: AdaptivePoolSpec, x, *, where: str = "adaptive_max_pool") -> jax.Array:
    """`adaptive_max_pool` with ``output_size`` already checked (an `AdaptiveMaxPool` layer).

    >>> adaptive_max_pool_with_spec(shapes.adaptive_pool_spec((2,)), jnp.ones((5, 3))).shape
    (2, 3)
    """
    x = _operand(x, where, "real")
    return _adaptive(x, shapes.adaptive_pool_geometry(spec, x.shape, where=where), lax.max)
