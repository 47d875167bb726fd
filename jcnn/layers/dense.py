"""Dense (fully-connected) layer and Flatten: the classifier head of a CNN."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jcnn import shapes
from jcnn.layers.base import (
    GLOBAL,
    Layer,
    LayerInfo,
    as_bool,
    create_param,
    describe,
    initializer,
    input_shape_of,
    positive_int,
)
from jcnn.shapes import ShapeError

__all__ = ["Dense", "Flatten", "default_kernel_init", "default_bias_init"]

# jax.random's truncated-normal constant: the std of a unit normal truncated to [-2, 2].
_TRUNCATED_STD = 0.87962566103423978


def default_kernel_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """He (Kaiming) normal with fan_in, truncated at two standard deviations (He et al., 2015).

    The same distribution as ``jax.nn.initializers.he_normal()``: std ``sqrt(2 / fan_in)``
    after truncation, which keeps the activation variance constant through ReLU layers.
    ``fan_in`` is every axis but the last (the outputs): ``prod(k) * c_in // groups`` for an HWIO
    conv kernel ``(*k, c_in // groups, c_out)``, ``in`` for a Dense kernel ``(in, out)``.

    The samples are drawn as a flat vector and reshaped: XLA compiles jax.random's multi-axis
    sampling several times slower on CPU, and initialisation should not dominate start-up.

    >>> import jax
    >>> default_kernel_init(jax.random.key(0), (3, 3, 16, 32)).shape
    (3, 3, 16, 32)
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"default_kernel_init: needs a kernel shape (..., in, out), got {shape}.")
    std = math.sqrt(2.0 / math.prod(shape[:-1])) / _TRUNCATED_STD
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype)
    return (flat * jnp.asarray(std, dtype)).reshape(shape)


default_bias_init = jax.nn.initializers.zeros


def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    # Explicit broadcast along the last axis: rank-promotion safe for any rank of y.
    return y + lax.broadcast_in_dim(bias, y.shape, (y.ndim - 1,))


def Dense(
    out_features: int,
    *,
    bias: bool = True,
    kernel_init=None,
    bias_init=None,
    param_dtype=jnp.float32,
    precision=None,
) -> Layer:
    """Fully-connected layer on the last axis: ``y = x @ kernel + bias``.

    Like ``torch.nn.Linear`` and ``flax.linen.Dense`` it maps the last axis only, so on an
    ``(h, w, c)`` input it acts on every pixel (a 1x1 convolution); put `Flatten` first to mix
    every pixel into every output.

    Args:
      out_features: output features.
      bias: add a learned bias.
      kernel_init: ``(key, shape, dtype) -> array`` for the ``(in, out)`` kernel; default He
        normal (fan_in, truncated at 2 std), `default_kernel_init`.
      bias_init: for the ``(out,)`` bias; default zeros.
      param_dtype: dtype of the parameters.
      precision: passed to ``lax.dot_general``.

    Returns:
      A `Layer`; params ``{"kernel": (in, out), "bias": (out,)}``, state ``()``.

    >>> import jax
    >>> out_shape, params, state = Dense(10).init(jax.random.key(0), (500,))
    >>> out_shape, params["kernel"].shape
    ((10,), (500, 10))
    """
    where = "Dense"
    out_features = positive_int(out_features, where, "out_features")
    bias = as_bool(bias, where, "bias")
    kernel_init = initializer(kernel_init, default_kernel_init, where, "kernel_init")
    bias_init = initializer(bias_init, default_bias_init, where, "bias_init")

    def plan(input_shape):
        shape = input_shape_of(input_shape, where)
        if len(shape) < 1:
            raise ShapeError(f"{where}: needs an input with a feature axis, got input shape ().")
        return shape, shape[:-1] + (out_features,)

    def init(key, input_shape):
        shape, out_shape = plan(input_shape)
        k_kernel, k_bias = jax.random.split(key)
        params = {"kernel": create_param(kernel_init, k_kernel, (shape[-1], out_features), param_dtype)}
        if bias:
            params["bias"] = create_param(bias_init, k_bias, (out_features,), param_dtype)
        return out_shape, params, ()

    def apply(params, state, x, *, key=None, train=False):
        del key, train  # deterministic layer
        kernel = params["kernel"]
        if x.ndim < 1 or x.shape[-1] != kernel.shape[0]:
            raise ShapeError(
                f"{where}: input has {x.shape[-1] if x.ndim else 0} features (shape"
                f" {tuple(x.shape)}) but the kernel expects {kernel.shape[0]} (kernel shape"
                f" {tuple(kernel.shape)})."
            )
        dtype = jnp.result_type(x, kernel)
        y = lax.dot_general(
            x.astype(dtype), kernel.astype(dtype), (((x.ndim - 1,), (0,)), ((), ())), precision=precision
        )
        if bias:
            y = _add_bias(y, params["bias"].astype(dtype))
        return y, state

    def info(input_shape):
        shape, out_shape = plan(input_shape)
        positions = math.prod(shape[:-1])
        return LayerInfo(
            out_shape,
            shapes.dense_params(shape[-1], out_features, bias=bias),
            positions * shapes.dense_flops(shape[-1], out_features, bias=bias),
            # On a vector every output sees every input; on (h, w, c) it is per pixel.
            rf=GLOBAL if len(shape) == 1 else None,
        )

    hp = {"out_features": out_features, "bias": bias, "param_dtype": jnp.dtype(param_dtype).name}
    return Layer(
        init,
        apply,
        name="Dense",
        kind="dense",
        hparams=hp,
        info=info,
        description=describe("Dense", (out_features,), {"bias": bias}, {"bias": True}),
    )


def Flatten() -> Layer:
    """Flatten one example to a vector, row-major: ``(h, w, c) -> (h*w*c,)``.

    The order is channels-last (``index = (i*w + j)*c + k``), not PyTorch's NCHW order; see
    `jcnn.convert.dense_from_torch` for loading a torch Linear that follows a torch Flatten.

    >>> import jax
    >>> Flatten().init(jax.random.key(0), (7, 7, 50))[0]
    (2450,)
    """
    where = "Flatten"

    def plan(input_shape):
        shape = input_shape_of(input_shape, where)
        return (math.prod(shape),)

    def init(key, input_shape):
        del key
        return plan(input_shape), (), ()

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        return x.reshape((math.prod(x.shape),)), state

    def info(input_shape):
        shape = input_shape_of(input_shape, where)
        return LayerInfo(plan(shape), 0, 0, rf=GLOBAL if len(shape) > 1 else None)

    return Layer(init, apply, name="Flatten", kind="reshape", info=info, description="Flatten()")
