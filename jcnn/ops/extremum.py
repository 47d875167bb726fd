"""The max and min of sliding windows, with PyTorch's NaN rule and exact derivatives.

Private kernels behind `jcnn.ops.pool`'s ``max_pool``, ``min_pool``, ``global_max_pool``,
``adaptive_max_pool`` and ``lp_pool(p=inf)``. Three things lax's own max reductions get wrong:

1. **NaN** (issue 11). XLA's ``maximum`` propagates NaN, but XLA CPU (jaxlib 0.10.2) hands
   large max/min reductions and reduce-windows to YNNPACK fusions (``__ynn_fusion`` in the
   compiled HLO) whose max drops NaN: under ``jit``, ``jnp.max`` of 10,000 zeros holding one
   NaN is ``0.0``, and ``nan`` with ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=``.
   Which calls are fused depends on their size, hence results that changed with the batch
   size. Here every float max/min is a select whose NaN test is explicit
   (``t > m or t != t``), a computation that no backend can lower to a NaN-dropping max.
2. **Derivatives** (issues 10 and 14). JAX differentiates a reduce-window max through
   ``select_and_gather_add`` (pair reductions, which XLA lacks: reduced precision for second
   derivatives on GPU) and ``select_and_scatter_add`` (on XLA CPU a scatter of one-element
   updates: 18.7 ms for the backward of a 2x2 pool of 128x28x28x20). Here each op has a
   ``custom_jvp`` whose tangent is the input's tangent at one chosen tap, picked by boolean
   masks of ``x``. It is linear in the tangent, so reverse mode is its transpose (selects,
   pads, reshapes) and every higher derivative is exact.
3. **Which tap gets the gradient**: PyTorch's, aten's ``if (val > maxval || isnan(val))`` scan
   in row-major window order: the first maximum, or, in a window holding NaN, the last NaN.
   Taps in padding are never chosen; a window whose real taps are all ``-inf`` sends its
   gradient to its first real tap, as PyTorch does.

Integer inputs take the plain lax reductions: they hold no NaN and have no derivatives.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn import shapes

__all__ = ["window_extremum", "axes_extremum", "adaptive_extremum", "abs_sgn"]


# --------------------------------------------------------------------------------------------
# Elementwise building blocks
# --------------------------------------------------------------------------------------------


def _identity(op, dtype) -> np.ndarray:
    """The value padding reads as: never chosen by ``op`` (the dtype's extreme for integers)."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return np.array(-np.inf if op is lax.max else np.inf, dtype)
    info = np.iinfo(dtype)
    return np.array(info.min if op is lax.max else info.max, dtype)


def _beats(op, t, m):
    """Whether tap ``t`` replaces the running extremum ``m``: aten's ``val > maxval || isnan(val)``."""
    better = lax.gt(t, m) if op is lax.max else lax.lt(t, m)
    return better | lax.ne(t, t)


def _nan_extremum(op):
    """``op`` as a NaN-propagating select, whatever order a reduction applies it in."""

    def combine(a, b):
        return lax.select(_beats(op, b, a), b, a)

    return combine


def _is_float(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def _chain_value(op, taps):
    """The extremum of same-shaped taps, scanned in order (PyTorch's scan, NaN kept)."""
    m = taps[0]
    for t in taps[1:]:
        m = lax.select(_beats(op, t, m), t, m)
    return m


def _choices(taps, y, valid=None):
    """One boolean mask per tap, exactly one true per output: the tap that gets the tangent.

    The last NaN tap when the window holds NaN (then ``y`` is NaN and no tap equals it), else
    the first tap equal to ``y``. ``valid`` (static, per tap, or None) masks out padding taps.
    """
    hits = [t == y if v is None else (t == y) & v for t, v in zip(taps, valid or [None] * len(taps))]
    nans = [t != t for t in taps]
    takes, found = [], None
    for hit in hits:
        takes.append(hit if found is None else hit & ~found)
        found = hit if found is None else found | hit
    later_nan = None
    for i in reversed(range(len(taps))):
        nan_here = nans[i] if later_nan is None else nans[i] & ~later_nan
        takes[i] = takes[i] | nan_here
        later_nan = nans[i] if later_nan is None else later_nan | nans[i]
    return takes


def _select_tangent(takes, tap_dots, dtype):
    """The tangent at the chosen tap: a chain of selects, linear in ``tap_dots``."""
    y_dot = jnp.zeros(tap_dots[0].shape, dtype)
    for take, t_dot in zip(takes, tap_dots):
        y_dot = jnp.where(take, t_dot, y_dot)
    return y_dot


# --------------------------------------------------------------------------------------------
# abs with PyTorch's derivative (lp_pool with p = inf)
# --------------------------------------------------------------------------------------------


@jax.custom_jvp
def abs_sgn(x: jax.Array) -> jax.Array:
    """``|x|`` whose derivative is PyTorch's ``sgn(x)``: 0 at 0 and at NaN (JAX's is +1 and -1).

    >>> [float(jax.grad(abs_sgn)(v)) for v in (0.0, -2.0, 3.0)]
    [0.0, -1.0, 1.0]
    """
    return jnp.abs(x)


@abs_sgn.defjvp
def _abs_sgn_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    zero = jnp.zeros((), x_dot.dtype)
    return jnp.abs(x), jnp.where(x > 0, x_dot, jnp.where(x < 0, -x_dot, zero))


# --------------------------------------------------------------------------------------------
# Windowed max/min: a tiled fast path and a strided general path
# --------------------------------------------------------------------------------------------


def _is_tiled(g: shapes.PoolGeometry) -> bool:
    """Windows that tile the input: window == stride, no dilation, no padding or overhang."""
    return (
        tuple(g.strides) == tuple(g.window_shape)
        and all(r == 1 for r in g.dilation)
        and all(lo == 0 and hi == 0 for lo, hi in g.lax_padding)
    )


def _tiles(x: jax.Array, g: shapes.PoolGeometry) -> jax.Array:
    """``(*batch, *spatial, c) -> (*batch, o1, k1, o2, k2, ..., c)``: a crop (the floor-mode
    tail no window reads) and a reshape, no data movement."""
    nb = len(g.batch_shape)
    used = tuple(o * k for o, k in zip(g.out_spatial, g.window_shape))
    if used != tuple(g.in_spatial):
        x = lax.slice(x, (0,) * x.ndim, g.batch_shape + used + (x.shape[-1],))
    split = tuple(itertools.chain.from_iterable(zip(g.out_spatial, g.window_shape)))
    return x.reshape(x.shape[:nb] + split + x.shape[-1:])


def _tile_taps(xt: jax.Array, g: shapes.PoolGeometry) -> list[jax.Array]:
    """Every window offset of a tiled array, in row-major window order, each output-shaped."""
    nb = len(g.batch_shape)
    out_shape = xt.shape[:nb] + tuple(g.out_spatial) + xt.shape[-1:]
    taps = []
    for offset in itertools.product(*(range(k) for k in g.window_shape)):
        start, limit = [0] * xt.ndim, list(xt.shape)
        for j, e in enumerate(offset):
            start[nb + 2 * j + 1], limit[nb + 2 * j + 1] = e, e + 1
        taps.append(lax.slice(xt, start, limit).reshape(out_shape))  # a reshape, not a squeeze
    return taps


def _tiled_value(x, op, g):
    return _chain_value(op, _tile_taps(_tiles(x, g), g))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _tiled(x, op, g):
    return _tiled_value(x, op, g)


@_tiled.defjvp
def _tiled_jvp(op, g, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return _tiled_rule(x, x_dot, op, g)


def _tiled_rule(x, x_dot, op, g):
    # Not wrapped in jit (unlike the other rules): a nested jit made the tiled backward 2x
    # slower under an outer jit on XLA CPU.
    nb = len(g.batch_shape)
    taps = _tile_taps(_tiles(x, g), g)
    y = _chain_value(op, taps)
    # The choices stacked back into the tiled layout: the tangent is one masked sum over the
    # window axes, whose transpose (broadcast, select, reshape) is a single elementwise pass.
    masks = _choices(taps, y)
    for j in reversed(range(len(g.window_shape))):
        k = g.window_shape[j]
        masks = [jnp.stack(masks[i : i + k], axis=nb + j + 1) for i in range(0, len(masks), k)]
    window_axes = tuple(nb + 2 * j + 1 for j in range(len(g.window_shape)))
    tiles_dot = _tiles(x_dot, g)
    y_dot = jnp.sum(jnp.where(masks[0], tiles_dot, jnp.zeros((), x_dot.dtype)), axis=window_axes)
    return y, y_dot


def _full(spatial, nbatch: int) -> tuple[int, ...]:
    return (1,) * nbatch + tuple(spatial) + (1,)


def _strided_value(x, op, g):
    """One reduce_window; for floats with a NaN-propagating select as its computation."""
    nb = len(g.batch_shape)
    return lax.reduce_window(
        x,
        _identity(op, x.dtype),
        _nan_extremum(op) if _is_float(x) else op,
        window_dimensions=_full(g.window_shape, nb),
        window_strides=_full(g.strides, nb),
        padding=((0, 0),) * nb + tuple(g.lax_padding) + ((0, 0),),
        window_dilation=_full(g.dilation, nb),
    )


def _strided_taps(x: jax.Array, fill, g: shapes.PoolGeometry) -> list[jax.Array]:
    """Every window tap, each shaped like the output, as a contiguous slice of one stride phase.

    Tap offset ``e`` of a dim with stride ``s`` reads padded positions ``o*s + e``: block
    ``o + e // s``, phase ``e % s`` of the padded input reshaped to ``(blocks, s)``. Contiguous
    slices transpose to plain pads that XLA fuses into one pass; strided slices would
    transpose to interior-padded pads, an order of magnitude slower on XLA CPU.
    """
    nb = len(g.batch_shape)
    offsets = [[t * r for t in range(k)] for k, r in zip(g.window_shape, g.dilation)]
    blocks = [
        max(-(-(w + lo + hi) // s), o + max(e) // s)
        for w, (lo, hi), s, o, e in zip(g.in_spatial, g.lax_padding, g.strides, g.out_spatial, offsets)
    ]
    config = [(0, 0, 0)] * nb
    config += [
        (lo, b * s - w - lo, 0) for w, (lo, _), s, b in zip(g.in_spatial, g.lax_padding, g.strides, blocks)
    ]
    xp = lax.pad(x, np.array(fill, x.dtype), config + [(0, 0, 0)])
    split = tuple(itertools.chain.from_iterable(zip(blocks, g.strides)))
    xp = xp.reshape(xp.shape[:nb] + split + xp.shape[-1:])
    taps = []
    for offset in itertools.product(*offsets):
        start = [0] * xp.ndim
        limit = list(xp.shape)
        for j, (e, s, o) in enumerate(zip(offset, g.strides, g.out_spatial)):
            start[nb + 2 * j], limit[nb + 2 * j] = e // s, e // s + o
            start[nb + 2 * j + 1], limit[nb + 2 * j + 1] = e % s, e % s + 1
        tap = lax.slice(xp, start, limit)
        taps.append(tap.reshape(tuple(g.batch_shape) + tuple(g.out_spatial) + (x.shape[-1],)))
    return taps


def _strided_valid(g: shapes.PoolGeometry) -> list[np.ndarray | None]:
    """Per tap, a static mask of the outputs where the tap reads input, not padding."""
    if all(lo == 0 and hi == 0 for lo, hi in g.lax_padding):
        return [None] * math.prod(g.window_shape)
    nb = len(g.batch_shape)
    real = np.pad(np.ones(g.in_spatial, bool), g.lax_padding)
    valid = []
    for offset in itertools.product(*(range(k) for k in g.window_shape)):
        index = tuple(
            slice(t * r, t * r + s * (o - 1) + 1, s)
            for t, r, s, o in zip(offset, g.dilation, g.strides, g.out_spatial)
        )
        tap = real[index]
        valid.append(None if tap.all() else tap.reshape(_full(tap.shape, nb)))
    return valid


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _strided(x, op, g):
    return _strided_value(x, op, g)


@_strided.defjvp
def _strided_jvp(op, g, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return _strided_rule(x, x_dot, op, g)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _strided_rule(x, x_dot, op, g):
    # Overlapping windows: each input pixel's cotangent gathers from several outputs, and XLA
    # CPU would fuse a chain of per-tap choices into every one of those reads (9 windows x 9
    # taps for a 3x3 stride-2 pool: 3x slower than JAX's select_and_scatter). So the choice is
    # computed without a chain and materialised once: y by the reduce_window (differentiable
    # again through this rule), one small-int key per tap (the last NaN > the first tap equal
    # to y > the rest, the same order as `_choices`), and their max by a reduce_window over the
    # stacked keys, which XLA keeps as its own loop.
    y = _strided(x, op, g)
    taps = _strided_taps(x, _identity(op, x.dtype), g)
    count = len(taps)
    key_dtype = np.int8 if 2 * count <= 127 else np.int16 if 2 * count <= 32767 else np.int32
    keys = []
    for t, (tap, valid) in enumerate(zip(taps, _strided_valid(g))):
        hit = tap == y if valid is None else (tap == y) & valid
        code = jnp.where(hit, key_dtype(count - 1 - t), key_dtype(-1))
        keys.append(jnp.where(tap != tap, key_dtype(count + t), code))
    window = (count,) + (1,) * y.ndim
    best = lax.reduce_window(
        jnp.stack(keys),
        np.array(-1, key_dtype),
        lambda a, b: lax.select(a > b, a, b),
        window,
        window,
        "VALID",
    ).reshape(y.shape)
    takes = [(best == count + t) | (best == count - 1 - t) for t in range(count)]
    return y, _select_tangent(takes, _strided_taps(x_dot, 0, g), x_dot.dtype)


def window_extremum(x: jax.Array, op, g: shapes.PoolGeometry) -> jax.Array:
    """Max (``op=lax.max``) or min (``lax.min``) pooling of ``(*batch, *spatial, c)``.

    Windows that tile the input (window == stride, no dilation, padding or ceil-mode
    overhang: the common 2x2 pool) are a reshape and a scan over the window offsets; every
    other geometry is one ``lax.reduce_window``. Padding reads as ``-inf`` (max) or ``+inf``
    (min), the dtype's extremes for integers. NaN propagates and gradients go to PyTorch's
    tap (module docstring).

    Args:
      x: ``(*batch, *spatial, c)``, float or integer.
      op: ``lax.max`` or ``lax.min``.
      g: the checked geometry, `jcnn.shapes.pool_geometry`.

    Returns:
      ``g.out_shape``, ``x``'s dtype.

    >>> g = shapes.pool_geometry(shapes.pool_spec(2), (4, 4, 1))
    >>> window_extremum(jnp.arange(16.0).reshape(4, 4, 1), lax.max, g)[..., 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """
    tiled = _is_tiled(g)
    if not _is_float(x):
        return _tiled_value(x, op, g) if tiled else _strided_value(x, op, g)
    return _tiled(x, op, g) if tiled else _strided(x, op, g)


# --------------------------------------------------------------------------------------------
# Max/min over whole axes (global pooling)
# --------------------------------------------------------------------------------------------


def _axes_value(x, op, axes):
    if not _is_float(x):
        return (jnp.max if op is lax.max else jnp.min)(x, axis=axes)
    return lax.reduce(x, _identity(op, x.dtype), _nan_extremum(op), axes)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _axes(x, op, axes):
    return _axes_value(x, op, axes)


@_axes.defjvp
def _axes_jvp(op, axes, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return _axes_rule(x, x_dot, op, axes)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _axes_rule(x, x_dot, op, axes):
    y = _axes_value(x, op, axes)
    # PyTorch's choice over the row-major positions p < P of the reduced axes, found by one
    # integer max: NaN taps key P + p (the last NaN wins), ties with y key P - 1 - p (the first
    # wins), the rest -1. Keys are distinct, so exactly one position matches the maximum.
    sizes = [x.shape[a] for a in axes]
    count = math.prod(sizes)
    shape = [1] * x.ndim
    for a, n in zip(axes, sizes):
        shape[a] = n
    pos = np.arange(count, dtype=np.int32).reshape(shape)
    key = jnp.where(x != x, count + pos, jnp.where(x == lax.expand_dims(y, axes), count - 1 - pos, -1))
    chosen = key == lax.expand_dims(jnp.max(key, axis=axes), axes)
    return y, jnp.sum(jnp.where(chosen, x_dot, jnp.zeros((), x_dot.dtype)), axis=axes)


def axes_extremum(x: jax.Array, op, axes: tuple[int, ...]) -> jax.Array:
    """Max or min of ``x`` over ``axes`` (sorted, non-negative), NaN-propagating, with
    PyTorch's derivative (the first extremum in row-major order, or the last NaN).

    >>> axes_extremum(jnp.array([[1.0, jnp.nan], [3.0, 2.0]]), lax.max, (1,)).tolist()
    [nan, 3.0]
    """
    axes = tuple(sorted(axes))
    return _axes(x, op, axes) if _is_float(x) else _axes_value(x, op, axes)


# --------------------------------------------------------------------------------------------
# Adaptive max/min
# --------------------------------------------------------------------------------------------


def _adaptive_value(x, op, nb, windows, plans):
    """Dims with evenly strided windows of one length share one reduce_window; each other dim
    gathers a static ``(O, L)`` index table (shorter windows repeat their last index, which
    an extremum ignores) and reduces over ``L``."""
    y = x
    d = len(windows)
    if any(plan is not None and plan[0] > 1 for plan in plans):
        window = tuple(1 if plan is None else plan[0] for plan in plans)
        stride = tuple(1 if plan is None else plan[1] for plan in plans)
        y = lax.reduce_window(
            y,
            _identity(op, y.dtype),
            _nan_extremum(op) if _is_float(y) else op,
            window_dimensions=_full(window, nb),
            window_strides=_full(stride, nb),
            padding=((0, 0),) * (nb + d + 1),
        )
    for i, (win, plan) in enumerate(zip(windows, plans)):
        if plan is None:
            y = _axes_value(jnp.take(y, _index_table(win), axis=nb + i, mode="clip"), op, (nb + i + 1,))
    return y


def _index_table(win) -> np.ndarray:
    starts = np.array([a for a, _ in win])
    ends = np.array([b for _, b in win])
    taps = np.arange((ends - starts).max())
    return np.minimum(starts[:, None] + taps, ends[:, None] - 1)  # (O, L), in bounds


def _axis_taps(z, axis, win, plan):
    """The ``L`` taps of one dim's adaptive windows, each ``(..., O, ...)``: strided slices when
    the windows are evenly strided, static gathers otherwise."""
    if plan is not None:
        length, stride = plan
        o = len(win)
        return [lax.slice_in_dim(z, t, t + stride * (o - 1) + 1, stride, axis) for t in range(length)]
    table = _index_table(win)
    return [jnp.take(z, table[:, t], axis=axis, mode="clip") for t in range(table.shape[1])]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _adaptive(x, op, nb, windows, plans):
    return _adaptive_value(x, op, nb, windows, plans)


@_adaptive.defjvp
def _adaptive_jvp(op, nb, windows, plans, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return _adaptive_rule(x, x_dot, op, nb, windows, plans)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _adaptive_rule(x, x_dot, op, nb, windows, plans):
    # Separable, last spatial dim first: choosing the first extremum (or the last NaN) along
    # the last dim, then along the one before, ... picks the row-major first extremum (or last
    # NaN) of the whole box, PyTorch's tap. (First dim first would prefer earlier columns.)
    z, z_dot = x, x_dot
    for i in reversed(range(len(windows))):
        if len(windows[i]) == z.shape[nb + i] and all(b - a == 1 for a, b in windows[i]):
            continue  # identity windows (output_size None or equal to the input's)
        taps = _axis_taps(z, nb + i, windows[i], plans[i])
        z_new = _chain_value(op, taps)
        z_dot = _select_tangent(
            _choices(taps, z_new), _axis_taps(z_dot, nb + i, windows[i], plans[i]), x_dot.dtype
        )
        z = z_new
    return z, z_dot


def adaptive_extremum(x: jax.Array, op, windows, plans) -> jax.Array:
    """Adaptive max or min pooling of ``(*batch, *spatial, c)``.

    Args:
      x: float or integer.
      op: ``lax.max`` or ``lax.min``.
      windows: per spatial dim, the ``(start, end)`` windows (`jcnn.shapes.adaptive_windows`).
      plans: per spatial dim, ``(window, stride)`` when that dim's windows are one evenly
        strided reduce_window, else ``None``.

    Returns:
      ``(*batch, *(len(w) for w in windows), c)``, ``x``'s dtype.

    >>> x = jnp.arange(5.0).reshape(5, 1)
    >>> adaptive_extremum(x, lax.max, (((0, 2), (1, 4), (3, 5)),), (None,))[:, 0].tolist()
    [1.0, 3.0, 4.0]
    """
    windows = tuple(tuple(tuple(w) for w in win) for win in windows)
    plans = tuple(None if p is None else tuple(p) for p in plans)
    nb = x.ndim - len(windows) - 1
    if not _is_float(x):
        return _adaptive_value(x, op, nb, windows, plans)
    return _adaptive(x, op, nb, windows, plans)
