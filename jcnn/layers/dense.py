"""Dense (fully-connected) layer and Flatten: the classifier head of a CNN.

Both take whole batches: Dense maps the last axis whatever precedes it; Flatten flattens the
example, the axes after the ``batch_ndim`` leading batch dims.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jcnn import checks, shapes
from jcnn.initializers import default_bias_init, default_kernel_init
from jcnn.layers._examples import example_shape, input_shape_of
from jcnn.layers.base import Layer
from jcnn.layers.info import ELEMENTWISE, GLOBAL, LayerInfo
from jcnn.layers.spec import LeafSpec, as_initializer, as_param_dtype, as_precision, create_param
from jcnn.shapes import ShapeError

__all__ = ["Dense", "DenseSpec", "Flatten", "FlattenSpec"]


def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    # Explicit broadcast along the last axis: rank-promotion safe for any rank of y.
    return y + lax.broadcast_in_dim(bias, y.shape, (y.ndim - 1,))


@dataclasses.dataclass(frozen=True)
class DenseSpec(LeafSpec):
    """Fully-connected layer on the last axis: ``y = x @ kernel + bias``.

    ``Dense(...)`` builds the `Layer` from this spec. Like ``torch.nn.Linear`` and
    ``flax.linen.Dense`` it maps the last axis only, so on an ``(h, w, c)`` input it acts on
    every pixel (a 1x1 convolution); put `Flatten` first to mix every pixel into every output.
    Leading batch dims pass through.

    Args:
      out_features: output features.
      bias: add a learned bias.
      kernel_init: ``(key, shape, dtype) -> array`` for the ``(in, out)`` kernel; default He
        normal (fan_in, truncated at 2 std), `jcnn.initializers.default_kernel_init`.
      bias_init: for the ``(out,)`` bias; default zeros.
      param_dtype: the parameters' floating-point dtype.
      precision: passed to ``lax.dot_general``: ``None`` (JAX's default: TF32 for float32 on
        recent NVIDIA GPUs, bfloat16 passes on TPU), ``"highest"`` for full float32, a
        `jax.lax.Precision` or a pair; see `jcnn.layers.spec.as_precision`.

    Returns:
      ``Dense(...)`` returns a `Layer`; params ``{"kernel": (in, out), "bias": (out,)}``, state ``()``.

    Raises:
      ShapeError / ValueError / TypeError: bad hyperparameters at construction; an input with
        another number of features than the kernel's at ``apply``.

    >>> import jax
    >>> out_shape, params, state = Dense(10).init(jax.random.key(0), (500,))
    >>> out_shape, params["kernel"].shape
    ((10,), (500, 10))
    """

    name = "Dense"
    out_features: int
    _: dataclasses.KW_ONLY
    bias: bool = True
    kernel_init: Any = default_kernel_init
    bias_init: Any = default_bias_init
    param_dtype: Any = "float32"
    precision: Any = None

    def __post_init__(self):
        where = self.name
        self._canonical(
            out_features=checks.as_int(self.out_features, where, "out_features", minimum=1),
            bias=checks.as_bool(self.bias, where, "bias"),
            kernel_init=as_initializer(self.kernel_init, default_kernel_init, where, "kernel_init"),
            bias_init=as_initializer(self.bias_init, default_bias_init, where, "bias_init"),
            param_dtype=as_param_dtype(self.param_dtype, where),
            precision=as_precision(self.precision, where),
        )

    def _plan(self, input_shape):
        shape = input_shape_of(input_shape, self.name)
        if len(shape) < 1:
            raise ShapeError(f"{self.name}: needs an input with a feature axis, got input shape ().")
        return shape, shape[:-1] + (self.out_features,)

    def init(self, key, input_shape, /):
        shape, out_shape = self._plan(input_shape)
        k_kernel, k_bias = jax.random.split(key)
        kernel_shape = (shape[-1], self.out_features)
        params = {"kernel": create_param(self.kernel_init, k_kernel, kernel_shape, self.param_dtype)}
        if self.bias:
            params["bias"] = create_param(self.bias_init, k_bias, (self.out_features,), self.param_dtype)
        return out_shape, params, ()

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del key, train  # deterministic layer
        kernel = params["kernel"]
        if x.ndim <= batch_ndim or x.shape[-1] != kernel.shape[0]:
            raise ShapeError(
                f"{self.name}: input has {x.shape[-1] if x.ndim > batch_ndim else 0} features (shape"
                f" {tuple(x.shape)}) but the kernel expects {kernel.shape[0]} (kernel shape"
                f" {tuple(kernel.shape)})."
            )
        dtype = jnp.result_type(x, kernel)
        y = lax.dot_general(
            x.astype(dtype), kernel.astype(dtype), (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision
        )
        if self.bias:
            y = _add_bias(y, params["bias"].astype(dtype))
        return y, state

    def info(self, input_shape, /):
        shape, out_shape = self._plan(input_shape)
        positions = math.prod(shape[:-1])
        return LayerInfo(
            out_shape,
            shapes.dense_params(shape[-1], self.out_features, bias=self.bias),
            positions * shapes.dense_flops(shape[-1], self.out_features, bias=self.bias),
            # On a vector every output sees every input; on (h, w, c) it is per pixel.
            rf=GLOBAL if len(shape) == 1 else ELEMENTWISE,
        )


@dataclasses.dataclass(frozen=True)
class FlattenSpec(LeafSpec):
    """Flatten one example to a vector, row-major: ``(h, w, c) -> (h*w*c,)``.

    ``Flatten()`` builds the `Layer`. With ``batch_ndim`` leading batch dims those stay:
    ``(n, h, w, c) -> (n, h*w*c)``. The order is channels-last (``index = (i*w + j)*c + k``),
    not PyTorch's NCHW order; see `jcnn.convert.dense_from_torch` for loading a torch Linear
    that follows a torch Flatten.

    >>> import jax, jax.numpy as jnp
    >>> Flatten().init(jax.random.key(0), (7, 7, 50))[0]
    (2450,)
    >>> Flatten().apply((), (), jnp.ones((8, 7, 7, 50)), batch_ndim=1)[0].shape
    (8, 2450)
    """

    name = "Flatten"

    def init(self, key, input_shape, /):
        del key
        return (math.prod(input_shape_of(input_shape, self.name)),), (), ()

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        example = example_shape(x, batch_ndim, self.name)
        return x.reshape(tuple(x.shape[:batch_ndim]) + (math.prod(example),)), state

    def info(self, input_shape, /):
        shape = input_shape_of(input_shape, self.name)
        return LayerInfo((math.prod(shape),), 0, 0, rf=GLOBAL if len(shape) > 1 else ELEMENTWISE)


#: ``Dense(out_features, *, bias=True, ...)``: the `Layer` of a `DenseSpec`.
Dense = Layer.constructor(DenseSpec)
#: ``Flatten()``: the `Layer` of a `FlattenSpec`.
Flatten = Layer.constructor(FlattenSpec)
