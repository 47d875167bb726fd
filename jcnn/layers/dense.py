"""Dense (fully-connected) layer and Flatten: the classifier head of a CNN.

Both take whole batches: Dense maps the last axis whatever precedes it; Flatten flattens the
example, the axes after the ``batch_ndim`` leading batch dims.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jcnn import checks, shapes
from jcnn.layers.base import (
    GLOBAL,
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
    "Dense",
    "DenseSpec",
    "Flatten",
    "default_kernel_init",
    "default_bias_init",
    "canonicalize_precision",
]

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


def canonicalize_precision(precision, where: str):
    """``None``, a `jax.lax.Precision`, its name (``"highest"``) or a pair of them, for ``lax``.

    ``None`` is JAX's default: on recent NVIDIA GPUs float32 matmuls and convolutions run in
    TF32 (about 3 decimal digits, like PyTorch's ``allow_tf32=True``), on TPUs in bfloat16
    passes; ``"highest"`` asks for full float32 everywhere (issue 14).

    >>> canonicalize_precision("highest", "Dense")
    Precision.HIGHEST
    """
    if precision is None or isinstance(precision, lax.Precision):
        return precision
    presets = getattr(lax, "DotAlgorithmPreset", None)
    if presets is not None and isinstance(precision, presets):
        return precision
    if isinstance(precision, str):
        try:
            return lax.Precision(precision.lower())
        except ValueError:
            pass
    elif isinstance(precision, (tuple, list)) and len(precision) == 2:
        return tuple(canonicalize_precision(p, where) for p in precision)
    names = ", ".join(repr(p.name.lower()) for p in lax.Precision)
    raise ValueError(
        f"{where}: `precision` must be None, a jax.lax.Precision, one of {names}, or a pair of"
        f" them, got {precision!r}."
    )


class DenseSpec(NamedTuple):
    """`Dense`'s hyperparameters, canonical."""

    out_features: int
    bias: bool
    param_dtype: str
    precision: Any  # None, a lax.Precision or a pair: passed to lax.dot_general


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
    every pixel into every output. Leading batch dims pass through.

    Args:
      out_features: output features.
      bias: add a learned bias.
      kernel_init: ``(key, shape, dtype) -> array`` for the ``(in, out)`` kernel; default He
        normal (fan_in, truncated at 2 std), `default_kernel_init`.
      bias_init: for the ``(out,)`` bias; default zeros.
      param_dtype: dtype of the parameters.
      precision: passed to ``lax.dot_general``: ``None`` (JAX's default: TF32 for float32 on
        recent NVIDIA GPUs, bfloat16 passes on TPU), ``"highest"`` for full float32, a
        `jax.lax.Precision` or a pair; see `canonicalize_precision`.

    Returns:
      A `Layer`; params ``{"kernel": (in, out), "bias": (out,)}``, state ``()``.

    >>> import jax
    >>> out_shape, params, state = Dense(10).init(jax.random.key(0), (500,))
    >>> out_shape, params["kernel"].shape
    ((10,), (500, 10))
    """
    where = "Dense"
    spec = DenseSpec(
        checks.as_int(out_features, where, "out_features", minimum=1),
        checks.as_bool(bias, where, "bias"),
        jnp.dtype(param_dtype).name,
        canonicalize_precision(precision, where),
    )
    kernel_init = initializer(kernel_init, default_kernel_init, where, "kernel_init")
    bias_init = initializer(bias_init, default_bias_init, where, "bias_init")

    def plan(input_shape):
        shape = input_shape_of(input_shape, where)
        if len(shape) < 1:
            raise ShapeError(f"{where}: needs an input with a feature axis, got input shape ().")
        return shape, shape[:-1] + (spec.out_features,)

    def init(key, input_shape):
        shape, out_shape = plan(input_shape)
        k_kernel, k_bias = jax.random.split(key)
        params = {"kernel": create_param(kernel_init, k_kernel, (shape[-1], spec.out_features), param_dtype)}
        if spec.bias:
            params["bias"] = create_param(bias_init, k_bias, (spec.out_features,), param_dtype)
        return out_shape, params, ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del key, train  # deterministic layer
        kernel = params["kernel"]
        if x.ndim <= batch_ndim or x.shape[-1] != kernel.shape[0]:
            raise ShapeError(
                f"{where}: input has {x.shape[-1] if x.ndim > batch_ndim else 0} features (shape"
                f" {tuple(x.shape)}) but the kernel expects {kernel.shape[0]} (kernel shape"
                f" {tuple(kernel.shape)})."
            )
        dtype = jnp.result_type(x, kernel)
        y = lax.dot_general(
            x.astype(dtype), kernel.astype(dtype), (((x.ndim - 1,), (0,)), ((), ())), precision=spec.precision
        )
        if spec.bias:
            y = _add_bias(y, params["bias"].astype(dtype))
        return y, state

    def info(input_shape):
        shape, out_shape = plan(input_shape)
        positions = math.prod(shape[:-1])
        return LayerInfo(
            out_shape,
            shapes.dense_params(shape[-1], spec.out_features, bias=spec.bias),
            positions * shapes.dense_flops(shape[-1], spec.out_features, bias=spec.bias),
            # On a vector every output sees every input; on (h, w, c) it is per pixel.
            rf=GLOBAL if len(shape) == 1 else None,
        )

    return Layer(
        init,
        apply,
        name="Dense",
        spec=spec,
        info=info,
        takes_batch=True,
        description=describe(
            "Dense",
            (spec.out_features,),
            {"bias": spec.bias, "precision": precision},
            {"bias": True, "precision": None},
        ),
    )


def Flatten() -> Layer:
    """Flatten one example to a vector, row-major: ``(h, w, c) -> (h*w*c,)``.

    With ``batch_ndim`` leading batch dims those stay: ``(n, h, w, c) -> (n, h*w*c)``. The
    order is channels-last (``index = (i*w + j)*c + k``), not PyTorch's NCHW order; see
    `jcnn.convert.dense_from_torch` for loading a torch Linear that follows a torch Flatten.

    >>> import jax, jax.numpy as jnp
    >>> Flatten().init(jax.random.key(0), (7, 7, 50))[0]
    (2450,)
    >>> Flatten().apply((), (), jnp.ones((8, 7, 7, 50)), batch_ndim=1)[0].shape
    (8, 2450)
    """
    where = "Flatten"

    def plan(input_shape):
        shape = input_shape_of(input_shape, where)
        return (math.prod(shape),)

    def init(key, input_shape):
        del key
        return plan(input_shape), (), ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        example = example_shape(x, batch_ndim, where)
        return x.reshape(tuple(x.shape[:batch_ndim]) + (math.prod(example),)), state

    def info(input_shape):
        shape = input_shape_of(input_shape, where)
        return LayerInfo(plan(shape), 0, 0, rf=GLOBAL if len(shape) > 1 else None)

    return Layer(init, apply, name="Flatten", info=info, takes_batch=True, description="Flatten()")
