"""Normalisation layers: BatchNorm (batch statistics over the batch axes), LayerNorm, GroupNorm.

All take whole batches (``batch_ndim`` leading batch dims): BatchNorm's training statistics run
over them; LayerNorm and GroupNorm normalise each example on its own, over its axes only. The
three share their affine fields (`_AffineNorm`); LayerNorm and GroupNorm share `_normalise`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn import checks
from jcnn.initializers import ones, zeros
from jcnn.layers._examples import example_shape, input_shape_of
from jcnn.layers.base import Layer
from jcnn.layers.info import ELEMENTWISE, LayerInfo
from jcnn.layers.spec import LeafSpec, as_initializer, as_number, as_param_dtype, create_param
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


def _per_channel(v: jax.Array, like: jax.Array) -> jax.Array:
    """A ``(c,)`` vector broadcast along the last axis of ``like`` (rank-promotion safe)."""
    return lax.broadcast_in_dim(v.astype(like.dtype), like.shape, (like.ndim - 1,))


def _compute_dtype(dtype):
    # Statistics of bfloat16/float16 activations are computed in float32.
    return jnp.promote_types(dtype, jnp.float32)


def _check_channels(x, c: int, where: str) -> None:
    if x.ndim < 1 or x.shape[-1] != c:
        raise ShapeError(
            f"{where}: input has {x.shape[-1] if x.ndim else 0} channels (x shape {tuple(x.shape)})"
            f" but the layer was initialised for {c}."
        )


def _normalise(xf: jax.Array, axes: tuple[int, ...], eps: float) -> jax.Array:
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` (the biased variance, as PyTorch)."""
    mean = jnp.mean(xf, axis=axes, keepdims=True)
    centred = xf - mean
    var = jnp.mean(centred * centred, axis=axes, keepdims=True)
    return centred * lax.rsqrt(var + eps)


@dataclasses.dataclass(frozen=True)
class _AffineNorm(LeafSpec):
    """The fields every normalisation has: ``eps`` and the per-channel scale and shift."""

    _: dataclasses.KW_ONLY
    eps: float = 1e-5
    scale: bool = True
    bias: bool = True
    scale_init: Any = ones
    bias_init: Any = zeros
    param_dtype: Any = "float32"

    def _canonical_affine(self) -> None:
        where = self.name
        self._canonical(
            eps=as_number(self.eps, where, "eps", "a number >= 0", lambda v: v >= 0),
            scale=checks.as_bool(self.scale, where, "scale"),
            bias=checks.as_bool(self.bias, where, "bias"),
            scale_init=as_initializer(self.scale_init, ones, where, "scale_init"),
            bias_init=as_initializer(self.bias_init, zeros, where, "bias_init"),
            param_dtype=as_param_dtype(self.param_dtype, where),
        )

    def _affine_params(self, key: jax.Array, c: int) -> Any:
        if not (self.scale or self.bias):
            return ()
        k_scale, k_bias = jax.random.split(key)
        params = {}
        if self.scale:
            params["scale"] = create_param(self.scale_init, k_scale, (c,), self.param_dtype)
        if self.bias:
            params["bias"] = create_param(self.bias_init, k_bias, (c,), self.param_dtype)
        return params

    def _affine(self, y: jax.Array, params: Any) -> jax.Array:
        if self.scale:
            y = y * _per_channel(params["scale"], y)
        if self.bias:
            y = y + _per_channel(params["bias"], y)
        return y

    def _affine_count(self, channels: int) -> int:
        return channels * (int(self.scale) + int(self.bias))


@dataclasses.dataclass(frozen=True)
class _ExampleNorm(_AffineNorm):
    """A normalisation of each example on its own (LayerNorm, GroupNorm): no state."""

    def _check(self, shape: tuple[int, ...]) -> Any:
        """Check one example's shape against the layer's axes or groups."""
        raise NotImplementedError

    def _plan(self, input_shape) -> tuple[int, ...]:
        shape = input_shape_of(input_shape, self.name)
        self._check(shape)
        return shape

    def init(self, key, input_shape, /):
        shape = self._plan(input_shape)
        return shape, self._affine_params(key, shape[-1]), ()

    def info(self, input_shape, /):
        shape = self._plan(input_shape)
        # mean: 1 add; variance: subtract, square, add; normalise: 1 multiply; affine: 1 + 1.
        flops = math.prod(shape) * (5 + int(self.scale) + int(self.bias))
        return LayerInfo(shape, self._affine_count(shape[-1]), flops, rf=ELEMENTWISE)


@dataclasses.dataclass(frozen=True)
class BatchNormSpec(_AffineNorm):
    """Batch normalisation (Ioffe and Szegedy, 2015) over the channel (last) axis; ``BatchNorm(...)``.

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
      eps: added to the variance.
      scale: learn a per-channel scale (init ones).
      bias: learn a per-channel shift (init zeros).
      scale_init: override the scale's initializer.
      bias_init: override the bias' initializer.
      param_dtype: dtype of params and state.
      momentum: weight of the new batch statistic in the running average, in ``[0, 1]``.
      axis_name: the name of a vmapped batch axis to average across when it is bound;
        ``None`` never looks for one (statistics over the leading axes of ``x`` only).

    Returns:
      ``BatchNorm(...)`` returns a `Layer`; params ``{"scale": (c,), "bias": (c,)}``, state
      ``BatchNormState(mean, var)`` starting at zeros and ones.

    Raises:
      ValueError: ``train=True`` on one example (no batch dims) outside a vmap binding
        ``axis_name``, or with one value per channel; bad hyperparameters at construction.

    >>> import jax, jax.numpy as jnp
    >>> from jcnn.layers import batched
    >>> init, apply = batched(BatchNorm())
    >>> _, params, state = init(jax.random.key(0), (4, 3))
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> y, state = apply(params, state, x, train=True)
    >>> [round(v, 4) for v in y.mean(0).tolist()], [round(v, 4) for v in state.mean.tolist()]
    ([0.0, 0.0, 0.0], [0.45, 0.55, 0.65])
    """

    name = "BatchNorm"
    _: dataclasses.KW_ONLY
    momentum: float = 0.1
    axis_name: str | None = "batch"

    def __post_init__(self):
        where = self.name
        m = self.momentum
        if isinstance(m, (bool, np.bool_)) or not isinstance(m, numbers.Real) or not 0 <= m <= 1:
            raise ValueError(
                f"{where}: `momentum` is the weight of the new batch statistic (PyTorch's convention)"
                f" and must be in [0, 1], got {m!r}."
            )
        momentum = float(m)
        if self.axis_name is not None and not isinstance(self.axis_name, str):
            raise TypeError(f"{where}: `axis_name` must be a str or None, got {self.axis_name!r}.")
        self._canonical(momentum=momentum)
        self._canonical_affine()

    def _plan(self, input_shape):
        shape = input_shape_of(input_shape, self.name)
        if len(shape) < 1:
            raise ShapeError(f"{self.name}: needs an input with a channel axis, got input shape ().")
        return shape

    def init(self, key, input_shape, /):
        shape = self._plan(input_shape)
        c = shape[-1]
        state = BatchNormState(jnp.zeros((c,), self.param_dtype), jnp.ones((c,), self.param_dtype))
        return shape, self._affine_params(key, c), state

    def _bound(self, batch_ndim: int) -> bool:
        """Whether ``axis_name`` is a bound vmap axis; an error where no batch is in sight."""
        if self.axis_name is None:
            return False
        try:
            lax.psum(1, self.axis_name)
            return True
        except NameError:
            if batch_ndim > 0:
                return False
            raise ValueError(
                f"{self.name}: `train=True` needs batch statistics across the vmapped axis"
                f" {self.axis_name!r}, which is not bound here, and x has no batch dims; apply the"
                f" model through jcnn.layers.batched(model) (or apply(..., batch_ndim=1) on a"
                f" batch) or jax.vmap(..., axis_name={self.axis_name!r}), or build"
                f" BatchNorm(axis_name=None) to normalise over x's own leading axes."
            ) from None

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del key
        example_shape(x, batch_ndim, self.name)
        _check_channels(x, state.mean.shape[0], self.name)
        dtype = _compute_dtype(x.dtype)
        xf = x.astype(dtype)
        if not train:
            centred = xf - _per_channel(state.mean, xf)
            y = centred * _per_channel(lax.rsqrt(state.var.astype(dtype) + self.eps), xf)
            return self._affine(y, params).astype(x.dtype), state
        axes = tuple(range(x.ndim - 1))  # the batch axes and the spatial axes
        count = math.prod(x.shape[:-1])
        across = self._bound(batch_ndim)
        if across:
            count *= lax.psum(1, self.axis_name)
        if count < 2:
            raise ValueError(
                f"{self.name}: training needs more than one value per channel, got {count} (x shape"
                f" {tuple(x.shape)}); use a batch of at least 2."
            )
        mean = jnp.mean(xf, axis=axes)
        if across:
            mean = lax.pmean(mean, self.axis_name)
        centred = xf - _per_channel(mean, xf)
        var = jnp.mean(centred * centred, axis=axes)
        if across:
            var = lax.pmean(var, self.axis_name)
        y = centred * _per_channel(lax.rsqrt(var + self.eps), xf)
        m, sdtype = self.momentum, state.mean.dtype
        new_state = BatchNormState(
            ((1 - m) * state.mean + m * mean).astype(sdtype),
            ((1 - m) * state.var + m * var * (count / (count - 1))).astype(sdtype),
        )
        return self._affine(y, params).astype(x.dtype), new_state

    def info(self, input_shape, /):
        shape = self._plan(input_shape)
        # Eval mode: the running statistics fold into one scale and shift, 2 FLOPs per element.
        return LayerInfo(shape, self._affine_count(shape[-1]), 2 * math.prod(shape), rf=ELEMENTWISE)


@dataclasses.dataclass(frozen=True)
class LayerNormSpec(_ExampleNorm):
    """Layer normalisation (Ba et al., 2016) of one example over ``axes``; ``LayerNorm(...)``.

    The default normalises each pixel over its channels (the last axis), as ``flax.linen``'s
    LayerNorm and ConvNeXt do; ``axes=(0, 1, 2)`` on an ``(h, w, c)`` input normalises over the
    whole example like ``torch.nn.LayerNorm([c, h, w])``. Scale and shift are per channel
    ``(c,)``. Uses the biased variance; ``eps`` as in PyTorch. On a batch, ``axes`` are still
    the example's: non-negative ones are counted after the ``batch_ndim`` batch dims.

    Args:
      eps: added to the variance.
      scale: learn a per-channel scale (init ones).
      bias: learn a per-channel shift (init zeros).
      scale_init: override the scale's initializer.
      bias_init: override the bias' initializer.
      param_dtype: parameter dtype.
      axes: an int or a tuple of ints, axes of ONE example (negative counts from the end).

    Returns:
      ``LayerNorm(...)`` returns a `Layer`; params ``{"scale": (c,), "bias": (c,)}``, state ``()``.

    Raises:
      TypeError / ValueError / ShapeError: bad hyperparameters, or axes out of range for the input.

    >>> import jax, jax.numpy as jnp
    >>> layer = LayerNorm()
    >>> _, params, _ = layer.init(jax.random.key(0), (2, 4))
    >>> y, _ = layer.apply(params, (), jnp.arange(8.0).reshape(2, 4))
    >>> [round(v, 5) for v in y.mean(-1).tolist()]
    [0.0, 0.0]
    """

    name = "LayerNorm"
    _: dataclasses.KW_ONLY
    axes: Any = (-1,)

    def __post_init__(self):
        raw = (self.axes,) if not isinstance(self.axes, (tuple, list)) else tuple(self.axes)
        if not raw or any(isinstance(a, bool) or not hasattr(a, "__index__") for a in raw):
            raise TypeError(
                f"{self.name}: `axes` must be an int or a non-empty tuple of ints, got {self.axes!r}."
            )
        self._canonical(axes=tuple(operator.index(a) for a in raw))
        self._canonical_affine()

    def _check(self, shape) -> tuple[int, ...]:
        """``axes`` as sorted non-negative axes of one example of ``shape``."""
        ndim = len(shape)
        shown = self.axes[0] if len(self.axes) == 1 else self.axes
        out = []
        for a in self.axes:
            if not -ndim <= a < ndim:
                raise ShapeError(
                    f"{self.name}: `axes` {shown!r} is out of range for one example of shape"
                    f" {tuple(shape)} ({ndim} dims; shapes are per example, without the batch dim)."
                )
            out.append(a % ndim)
        if len(set(out)) != len(out):
            raise ValueError(f"{self.name}: `axes` {shown!r} names the same axis twice.")
        return tuple(sorted(out))

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del key, train
        axes = tuple(batch_ndim + a for a in self._check(example_shape(x, batch_ndim, self.name)))
        if self.scale or self.bias:
            _check_channels(x, params["scale" if self.scale else "bias"].shape[0], self.name)
        y = _normalise(x.astype(_compute_dtype(x.dtype)), axes, self.eps)
        return self._affine(y, params).astype(x.dtype), state


@dataclasses.dataclass(frozen=True)
class GroupNormSpec(_ExampleNorm):
    """Group normalisation (Wu and He, 2018); ``GroupNorm(num_groups, ...)``.

    Channels are split into ``num_groups`` groups, each normalised over its channels and all
    spatial positions of one example. Matches ``torch.nn.GroupNorm(num_groups, c)`` (biased
    variance, ``eps=1e-5``, per-channel scale and shift); channel ``k`` belongs to group
    ``k // (c // num_groups)``. On a batch the ``batch_ndim`` leading batch dims are not reduced
    over: each example keeps its statistics.

    Args:
      num_groups: number of groups; must divide the channels (default 32, as in Flax).
      eps: added to the variance.
      scale: learn a per-channel scale (init ones).
      bias: learn a per-channel shift (init zeros).
      scale_init: override the scale's initializer.
      bias_init: override the bias' initializer.
      param_dtype: parameter dtype.

    Returns:
      ``GroupNorm(...)`` returns a `Layer`; params ``{"scale": (c,), "bias": (c,)}``, state ``()``.

    Raises:
      ShapeError: channels not divisible by ``num_groups`` (at ``init`` or ``apply``).

    >>> import jax
    >>> GroupNorm(2).init(jax.random.key(0), (8, 8, 6))[0]
    (8, 8, 6)
    """

    name = "GroupNorm"
    num_groups: int = 32

    def __post_init__(self):
        self._canonical(num_groups=checks.as_int(self.num_groups, self.name, "num_groups", minimum=1))
        self._canonical_affine()

    def _check(self, shape) -> None:
        if len(shape) < 1 or shape[-1] % self.num_groups:
            raise ShapeError(
                f"{self.name}: channels ({shape[-1] if shape else 0}, input shape {tuple(shape)}) must"
                f" be divisible by `num_groups` ({self.num_groups})."
            )

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del key, train
        self._check(example_shape(x, batch_ndim, self.name))
        c, g = x.shape[-1], self.num_groups
        xg = x.astype(_compute_dtype(x.dtype)).reshape(x.shape[:-1] + (g, c // g))
        # The example's spatial dims and the channels within a group; never the batch dims.
        axes = tuple(range(batch_ndim, x.ndim - 1)) + (x.ndim,)
        y = _normalise(xg, axes, self.eps).reshape(x.shape)
        return self._affine(y, params).astype(x.dtype), state


#: ``BatchNorm(*, eps=1e-5, scale=True, bias=True, ..., momentum=0.1, axis_name="batch")``.
BatchNorm = Layer.constructor(BatchNormSpec)
#: ``LayerNorm(*, eps=1e-5, ..., axes=(-1,))``.
LayerNorm = Layer.constructor(LayerNormSpec)
#: ``GroupNorm(num_groups=32, *, eps=1e-5, ...)``.
GroupNorm = Layer.constructor(GroupNormSpec)
