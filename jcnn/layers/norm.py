"""Normalisation layers: BatchNorm (batch statistics over the batch axes), LayerNorm, GroupNorm.

All take whole batches (``batch_ndim`` leading batch dims): BatchNorm's training statistics run
over them; LayerNorm and GroupNorm normalise each example on its own, over its axes only.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jcnn import checks
from jcnn.layers.base import (
    Layer,
    LayerInfo,
    create_param,
    describe,
    example_shape,
    initializer,
    input_shape_of,
)
from jcnn.shapes import ShapeError

__all__ = [
    "BatchNorm",
    "BatchNormState",
    "BatchNormSpec",
    "LayerNorm",
    "LayerNormSpec",
    "GroupNorm",
    "GroupNormSpec",
]


class BatchNormState(NamedTuple):
    """BatchNorm's running statistics, one entry per channel."""

    mean: jax.Array
    var: jax.Array  # unbiased (PyTorch's convention)


class BatchNormSpec(NamedTuple):
    momentum: float  # weight of the new batch statistic (PyTorch's convention)
    eps: float
    axis_name: str | None
    scale: bool
    bias: bool
    param_dtype: str


class LayerNormSpec(NamedTuple):
    axes: tuple[int, ...]  # axes of one example, as given (negative count from the end)
    eps: float
    scale: bool
    bias: bool
    param_dtype: str


class GroupNormSpec(NamedTuple):
    num_groups: int
    eps: float
    scale: bool
    bias: bool
    param_dtype: str


def _per_channel(v: jax.Array, like: jax.Array) -> jax.Array:
    """A ``(c,)`` vector broadcast along the last axis of ``like`` (rank-promotion safe)."""
    return lax.broadcast_in_dim(v.astype(like.dtype), like.shape, (like.ndim - 1,))


def _compute_dtype(dtype):
    # Statistics of bfloat16/float16 activations are computed in float32.
    return jnp.promote_types(dtype, jnp.float32)


def _eps(eps, where: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"{where}: `eps` must be a number >= 0, got {eps!r}.")
    return float(eps)


def _affine_params(key, c, scale, bias, scale_init, bias_init, param_dtype):
    if not (scale or bias):
        return ()
    k_scale, k_bias = jax.random.split(key)
    params = {}
    if scale:
        params["scale"] = create_param(scale_init, k_scale, (c,), param_dtype)
    if bias:
        params["bias"] = create_param(bias_init, k_bias, (c,), param_dtype)
    return params


def _affine(y, params, scale: bool, bias: bool):
    if scale:
        y = y * _per_channel(params["scale"], y)
    if bias:
        y = y + _per_channel(params["bias"], y)
    return y


def _check_channels(x, c: int, where: str) -> None:
    if x.ndim < 1 or x.shape[-1] != c:
        raise ShapeError(
            f"{where}: input has {x.shape[-1] if x.ndim else 0} channels (x shape {tuple(x.shape)})"
            f" but the layer was initialised for {c}."
        )


def BatchNorm(
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    axis_name: str | None = "batch",
    scale: bool = True,
    bias: bool = True,
    scale_init=None,
    bias_init=None,
    param_dtype=jnp.float32,
) -> Layer:
    """Batch normalisation (Ioffe and Szegedy, 2015) over the channel (last) axis.

    In training (``train=True``) each channel is normalised by the mean and biased variance over
    the batch AND the spatial dims: over every leading axis of the ``x`` given to ``apply`` (the
    ``batch_ndim`` batch axes that `jcnn.layers.batched` and the combinators pass, and the
    spatial axes), and, when ``x`` is inside a ``jax.vmap`` (or ``pmap``) that binds
    ``axis_name``, also across that axis by ``jax.lax.pmean``. So ``batched(model)`` and
    ``jax.vmap(model.apply, axis_name="batch")`` give the same statistics. The running statistics
    in the state follow PyTorch's conventions exactly::

        running = (1 - momentum) * running + momentum * batch_statistic
        running_var uses the UNBIASED batch variance (times n / (n - 1), n = batch * pixels)

    so ``momentum=0.1`` means what it means in ``torch.nn.BatchNorm2d`` (Flax's ``momentum`` is
    ``1 - `` this). In evaluation (``train=False``) the running statistics normalise and the
    state comes back unchanged.

    Args:
      momentum: weight of the new batch statistic in the running average, in ``[0, 1]``.
      eps: added to the variance.
      axis_name: the name of a vmapped batch axis to average across when it is bound;
        ``None`` never looks for one (statistics over the leading axes of ``x`` only).
      scale: learn a per-channel scale (init ones).
      bias: learn a per-channel shift (init zeros).
      scale_init: override the scale's initializer.
      bias_init: override the bias' initializer.
      param_dtype: dtype of params and state.

    Returns:
      A `Layer`; params ``{"scale": (c,), "bias": (c,)}``, state ``BatchNormState(mean, var)``
      starting at zeros and ones.

    Raises:
      ValueError: ``train=True`` on one example (no batch dims) outside a vmap binding
        ``axis_name``, or with one value per channel.

    >>> import jax, jax.numpy as jnp
    >>> from jcnn.layers import batched
    >>> init, apply = batched(BatchNorm())
    >>> _, params, state = init(jax.random.key(0), (4, 3))
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> y, state = apply(params, state, x, train=True)
    >>> [round(v, 4) for v in y.mean(0).tolist()], [round(v, 4) for v in state.mean.tolist()]
    ([0.0, 0.0, 0.0], [0.45, 0.55, 0.65])
    """
    where = "BatchNorm"
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise ValueError(
            f"{where}: `momentum` is the weight of the new batch statistic (PyTorch's convention)"
            f" and must be in [0, 1], got {momentum!r}."
        )
    if axis_name is not None and not isinstance(axis_name, str):
        raise TypeError(f"{where}: `axis_name` must be a str or None, got {axis_name!r}.")
    spec = BatchNormSpec(
        float(momentum),
        _eps(eps, where),
        axis_name,
        checks.as_bool(scale, where, "scale"),
        checks.as_bool(bias, where, "bias"),
        jnp.dtype(param_dtype).name,
    )
    momentum, eps, scale, bias = spec.momentum, spec.eps, spec.scale, spec.bias
    scale_init = initializer(scale_init, jax.nn.initializers.ones, where, "scale_init")
    bias_init = initializer(bias_init, jax.nn.initializers.zeros, where, "bias_init")

    def plan(input_shape):
        shape = input_shape_of(input_shape, where)
        if len(shape) < 1:
            raise ShapeError(f"{where}: needs an input with a channel axis, got input shape ().")
        return shape

    def init(key, input_shape):
        shape = plan(input_shape)
        c = shape[-1]
        params = _affine_params(key, c, scale, bias, scale_init, bias_init, param_dtype)
        state = BatchNormState(jnp.zeros((c,), param_dtype), jnp.ones((c,), param_dtype))
        return shape, params, state

    def bound(batch_ndim: int) -> bool:
        """Whether ``axis_name`` is a bound vmap axis; an error where no batch is in sight."""
        if axis_name is None:
            return False
        try:
            lax.psum(1, axis_name)
            return True
        except NameError:
            if batch_ndim > 0:
                return False
            raise ValueError(
                f"{where}: `train=True` needs batch statistics across the vmapped axis"
                f" {axis_name!r}, which is not bound here, and x has no batch dims; apply the"
                f" model through jcnn.layers.batched(model) (or apply(..., batch_ndim=1) on a"
                f" batch) or jax.vmap(..., axis_name={axis_name!r}), or build"
                f" BatchNorm(axis_name=None) to normalise over x's own leading axes."
            ) from None

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del key
        example_shape(x, batch_ndim, where)
        _check_channels(x, state.mean.shape[0], where)
        dtype = _compute_dtype(x.dtype)
        xf = x.astype(dtype)
        if not train:
            centred = xf - _per_channel(state.mean, xf)
            y = centred * _per_channel(lax.rsqrt(state.var.astype(dtype) + eps), xf)
            return _affine(y, params, scale, bias).astype(x.dtype), state
        axes = tuple(range(x.ndim - 1))  # the batch axes and the spatial axes
        count = math.prod(x.shape[:-1])
        across = bound(batch_ndim)
        if across:
            count *= lax.psum(1, axis_name)
        if count < 2:
            raise ValueError(
                f"{where}: training needs more than one value per channel, got {count} (x shape"
                f" {tuple(x.shape)}); use a batch of at least 2."
            )
        mean = jnp.mean(xf, axis=axes)
        if across:
            mean = lax.pmean(mean, axis_name)
        centred = xf - _per_channel(mean, xf)
        var = jnp.mean(centred * centred, axis=axes)
        if across:
            var = lax.pmean(var, axis_name)
        y = centred * _per_channel(lax.rsqrt(var + eps), xf)
        sdtype = state.mean.dtype
        new_state = BatchNormState(
            ((1 - momentum) * state.mean + momentum * mean).astype(sdtype),
            ((1 - momentum) * state.var + momentum * var * (count / (count - 1))).astype(sdtype),
        )
        return _affine(y, params, scale, bias).astype(x.dtype), new_state

    def info(input_shape):
        shape = plan(input_shape)
        c = shape[-1]
        # Eval mode: the running statistics fold into one scale and shift, 2 FLOPs per element.
        return LayerInfo(shape, c * (int(scale) + int(bias)), 2 * math.prod(shape))

    defaults = dict(momentum=0.1, eps=1e-5, axis_name="batch", scale=True, bias=True)
    given = dict(momentum=momentum, eps=eps, axis_name=axis_name, scale=scale, bias=bias)
    return Layer(
        init,
        apply,
        name="BatchNorm",
        spec=spec,
        info=info,
        takes_batch=True,
        description=describe("BatchNorm", (), given, defaults),
    )


def _norm_flops(n: int, scale: bool, bias: bool) -> int:
    # mean: 1 add; variance: subtract, square, add; normalise: 1 multiply; affine: 1 + 1.
    return n * (5 + int(scale) + int(bias))


def LayerNorm(
    *,
    axes=-1,
    eps: float = 1e-5,
    scale: bool = True,
    bias: bool = True,
    scale_init=None,
    bias_init=None,
    param_dtype=jnp.float32,
) -> Layer:
    """Layer normalisation (Ba et al., 2016) of one example over ``axes``.

    The default normalises each pixel over its channels (the last axis), as ``flax.linen``'s
    LayerNorm and ConvNeXt do; ``axes=(0, 1, 2)`` on an ``(h, w, c)`` input normalises over the
    whole example like ``torch.nn.LayerNorm([c, h, w])``. Scale and shift are per channel
    ``(c,)``. Uses the biased variance; ``eps`` as in PyTorch. On a batch, ``axes`` are still
    the example's: non-negative ones are counted after the ``batch_ndim`` batch dims.

    Args:
      axes: an int or a tuple of ints, axes of ONE example (negative counts from the end).
      eps: added to the variance.
      scale: learn a per-channel scale (init ones).
      bias: learn a per-channel shift (init zeros).
      scale_init: override the scale's initializer.
      bias_init: override the bias' initializer.
      param_dtype: parameter dtype.

    Returns:
      A `Layer`; params ``{"scale": (c,), "bias": (c,)}``, state ``()``.

    >>> import jax, jax.numpy as jnp
    >>> layer = LayerNorm()
    >>> _, params, _ = layer.init(jax.random.key(0), (2, 4))
    >>> y, _ = layer.apply(params, (), jnp.arange(8.0).reshape(2, 4))
    >>> [round(v, 5) for v in y.mean(-1).tolist()]
    [0.0, 0.0]
    """
    where = "LayerNorm"
    raw_axes = (axes,) if not isinstance(axes, (tuple, list)) else tuple(axes)
    if not raw_axes or any(isinstance(a, bool) or not hasattr(a, "__index__") for a in raw_axes):
        raise TypeError(f"{where}: `axes` must be an int or a non-empty tuple of ints, got {axes!r}.")
    spec = LayerNormSpec(
        tuple(operator.index(a) for a in raw_axes),
        _eps(eps, where),
        checks.as_bool(scale, where, "scale"),
        checks.as_bool(bias, where, "bias"),
        jnp.dtype(param_dtype).name,
    )
    eps, scale, bias = spec.eps, spec.scale, spec.bias
    scale_init = initializer(scale_init, jax.nn.initializers.ones, where, "scale_init")
    bias_init = initializer(bias_init, jax.nn.initializers.zeros, where, "bias_init")

    def canonical_axes(shape) -> tuple[int, ...]:
        """``axes`` as sorted non-negative axes of one example of ``shape``."""
        ndim = len(shape)
        out = []
        for a in spec.axes:
            if not -ndim <= a < ndim:
                raise ShapeError(
                    f"{where}: `axes` {axes!r} is out of range for one example of shape"
                    f" {tuple(shape)} ({ndim} dims; shapes are per example, without the batch dim)."
                )
            out.append(a % ndim)
        if len(set(out)) != len(out):
            raise ValueError(f"{where}: `axes` {axes!r} names the same axis twice.")
        return tuple(sorted(out))

    def plan(input_shape):
        shape = input_shape_of(input_shape, where)
        canonical_axes(shape)
        return shape

    def init(key, input_shape):
        shape = plan(input_shape)
        return shape, _affine_params(key, shape[-1], scale, bias, scale_init, bias_init, param_dtype), ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del key, train
        ax = tuple(batch_ndim + a for a in canonical_axes(example_shape(x, batch_ndim, where)))
        if scale or bias:
            _check_channels(x, (params.get("scale") if scale else params["bias"]).shape[0], where)
        xf = x.astype(_compute_dtype(x.dtype))
        mean = jnp.mean(xf, axis=ax, keepdims=True)
        centred = xf - mean
        var = jnp.mean(centred * centred, axis=ax, keepdims=True)
        y = centred * lax.rsqrt(var + eps)
        return _affine(y, params, scale, bias).astype(x.dtype), state

    def info(input_shape):
        shape = plan(input_shape)
        return LayerInfo(
            shape, shape[-1] * (int(scale) + int(bias)), _norm_flops(math.prod(shape), scale, bias)
        )

    given = dict(axes=axes, eps=eps, scale=scale, bias=bias)
    return Layer(
        init,
        apply,
        name="LayerNorm",
        spec=spec,
        info=info,
        takes_batch=True,
        description=describe("LayerNorm", (), given, dict(axes=-1, eps=1e-5, scale=True, bias=True)),
    )


def GroupNorm(
    num_groups: int = 32,
    *,
    eps: float = 1e-5,
    scale: bool = True,
    bias: bool = True,
    scale_init=None,
    bias_init=None,
    param_dtype=jnp.float32,
) -> Layer:
    """Group normalisation (Wu and He, 2018): channels split into ``num_groups`` groups, each
    normalised over its channels and all spatial positions of one example.

    Matches ``torch.nn.GroupNorm(num_groups, c)`` (biased variance, ``eps=1e-5``, per-channel
    scale and shift); channel ``k`` belongs to group ``k // (c // num_groups)``. On a batch the
    ``batch_ndim`` leading batch dims are not reduced over: each example keeps its statistics.

    Args:
      num_groups: number of groups; must divide the channels (default 32, as in Flax).
      eps: added to the variance.
      scale: learn a per-channel scale (init ones).
      bias: learn a per-channel shift (init zeros).
      scale_init: override the scale's initializer.
      bias_init: override the bias' initializer.
      param_dtype: parameter dtype.

    Returns:
      A `Layer`; params ``{"scale": (c,), "bias": (c,)}``, state ``()``.

    >>> import jax
    >>> GroupNorm(2).init(jax.random.key(0), (8, 8, 6))[0]
    (8, 8, 6)
    """
    where = "GroupNorm"
    spec = GroupNormSpec(
        checks.as_int(num_groups, where, "num_groups", minimum=1),
        _eps(eps, where),
        checks.as_bool(scale, where, "scale"),
        checks.as_bool(bias, where, "bias"),
        jnp.dtype(param_dtype).name,
    )
    num_groups, eps, scale, bias = spec.num_groups, spec.eps, spec.scale, spec.bias
    scale_init = initializer(scale_init, jax.nn.initializers.ones, where, "scale_init")
    bias_init = initializer(bias_init, jax.nn.initializers.zeros, where, "bias_init")

    def check(shape):
        if len(shape) < 1 or shape[-1] % num_groups:
            raise ShapeError(
                f"{where}: channels ({shape[-1] if shape else 0}, input shape {tuple(shape)}) must be"
                f" divisible by `num_groups` ({num_groups})."
            )

    def plan(input_shape):
        shape = input_shape_of(input_shape, where)
        check(shape)
        return shape

    def init(key, input_shape):
        shape = plan(input_shape)
        return shape, _affine_params(key, shape[-1], scale, bias, scale_init, bias_init, param_dtype), ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del key, train
        check(example_shape(x, batch_ndim, where))
        c = x.shape[-1]
        xf = x.astype(_compute_dtype(x.dtype))
        xg = xf.reshape(x.shape[:-1] + (num_groups, c // num_groups))
        # The example's spatial dims and the channels within a group; never the batch dims.
        ax = tuple(range(batch_ndim, x.ndim - 1)) + (x.ndim,)
        mean = jnp.mean(xg, axis=ax, keepdims=True)
        centred = xg - mean
        var = jnp.mean(centred * centred, axis=ax, keepdims=True)
        y = (centred * lax.rsqrt(var + eps)).reshape(x.shape)
        return _affine(y, params, scale, bias).astype(x.dtype), state

    def info(input_shape):
        shape = plan(input_shape)
        return LayerInfo(
            shape, shape[-1] * (int(scale) + int(bias)), _norm_flops(math.prod(shape), scale, bias)
        )

    given = dict(eps=eps, scale=scale, bias=bias)
    return Layer(
        init,
        apply,
        name="GroupNorm",
        spec=spec,
        info=info,
        takes_batch=True,
        description=describe("GroupNorm", (num_groups,), given, dict(eps=1e-5, scale=True, bias=True)),
    )
