"""Elementwise activation layers (and LogSoftmax / Softmax over one axis): no params, no state."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jcnn.layers.base import Layer, LayerInfo, describe, input_shape_of
from jcnn.shapes import ShapeError

__all__ = ["Identity", "Relu", "Gelu", "Tanh", "Sigmoid", "LeakyRelu", "LogSoftmax", "Softmax"]


def _elementwise(
    name: str, fn: Callable, flops_per_element: int, description: str, hparams=None, axis=None
) -> Layer:
    """A parameter-free layer applying ``fn`` to one example; shape unchanged."""

    def plan(input_shape):
        shape = input_shape_of(input_shape, name)
        if axis is not None and not -len(shape) <= axis < len(shape):
            raise ShapeError(
                f"{name}: `axis` {axis} is out of range for an input of shape {shape}"
                f" ({len(shape)} dims per example)."
            )
        return shape

    def init(key, input_shape):
        del key
        return plan(input_shape), (), ()

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        return fn(x), state

    def info(input_shape):
        shape = plan(input_shape)
        return LayerInfo(shape, 0, flops_per_element * math.prod(shape))

    return Layer(
        init, apply, name=name, kind="activation", hparams=hparams, info=info, description=description
    )


def Identity() -> Layer:
    """``y = x``. Useful as a placeholder and in receptive-field checks.

    >>> import jax.numpy as jnp
    >>> Identity().apply((), (), jnp.ones(2))[0].tolist()
    [1.0, 1.0]
    """
    return _elementwise("Identity", lambda x: x, 0, "Identity()")


def Relu() -> Layer:
    """``y = max(x, 0)``; 1 FLOP per element.

    >>> import jax.numpy as jnp
    >>> Relu().apply((), (), jnp.array([-1.0, 2.0]))[0].tolist()
    [0.0, 2.0]
    """
    return _elementwise("Relu", jax.nn.relu, 1, "Relu()")


def Gelu(approximate: bool = False) -> Layer:
    """Gaussian error linear unit; exact (erf) by default like ``torch.nn.GELU``.

    Args:
      approximate: use the tanh approximation (``jax.nn.gelu``'s default) instead.

    >>> import jax.numpy as jnp
    >>> float(Gelu().apply((), (), jnp.array(0.0))[0])
    0.0
    """
    if not isinstance(approximate, bool):
        raise TypeError(f"Gelu: `approximate` must be True or False, got {approximate!r}.")
    return _elementwise(
        "Gelu",
        lambda x: jax.nn.gelu(x, approximate=approximate),
        1,
        describe("Gelu", (), {"approximate": approximate}, {"approximate": False}),
        {"approximate": approximate},
    )


def Tanh() -> Layer:
    """``y = tanh(x)``.

    >>> import jax.numpy as jnp
    >>> float(Tanh().apply((), (), jnp.array(0.0))[0])
    0.0
    """
    return _elementwise("Tanh", jnp.tanh, 1, "Tanh()")


def Sigmoid() -> Layer:
    """``y = 1 / (1 + exp(-x))``.

    >>> import jax.numpy as jnp
    >>> float(Sigmoid().apply((), (), jnp.array(0.0))[0])
    0.5
    """
    return _elementwise("Sigmoid", jax.nn.sigmoid, 1, "Sigmoid()")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """``y = x if x >= 0 else negative_slope * x`` (PyTorch's default slope 0.01).

    >>> import jax.numpy as jnp
    >>> [round(v, 6) for v in LeakyRelu(0.1).apply((), (), jnp.array([-1.0, 2.0]))[0].tolist()]
    [-0.1, 2.0]
    """
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"LeakyRelu: `negative_slope` must be a number, got {negative_slope!r}.")
    slope = float(negative_slope)
    return _elementwise(
        "LeakyRelu",
        lambda x: jax.nn.leaky_relu(x, slope),
        1,
        describe("LeakyRelu", (slope,)),
        {"negative_slope": slope},
    )


def _axis(axis, name: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{name}: `axis` must be an int, got {axis!r}.")
    return axis


def LogSoftmax(axis: int = -1) -> Layer:
    """``y = x - logsumexp(x, axis)``: log-probabilities over ``axis`` (default the last).

    Counted as 3 FLOPs per element (subtract the max, exp and sum, subtract the log-sum).

    >>> import jax.numpy as jnp
    >>> y, _ = LogSoftmax().apply((), (), jnp.zeros(4))
    >>> float(jnp.exp(y).sum())
    1.0
    """
    axis = _axis(axis, "LogSoftmax")
    return _elementwise(
        "LogSoftmax",
        lambda x: jax.nn.log_softmax(x, axis=axis),
        3,
        describe("LogSoftmax", (), {"axis": axis}, {"axis": -1}),
        {"axis": axis},
        axis=axis,
    )


def Softmax(axis: int = -1) -> Layer:
    """``y = exp(x) / sum(exp(x), axis)``; 3 FLOPs per element.

    >>> import jax.numpy as jnp
    >>> Softmax().apply((), (), jnp.zeros(2))[0].tolist()
    [0.5, 0.5]
    """
    axis = _axis(axis, "Softmax")
    return _elementwise(
        "Softmax",
        lambda x: jax.nn.softmax(x, axis=axis),
        3,
        describe("Softmax", (), {"axis": axis}, {"axis": -1}),
        {"axis": axis},
        axis=axis,
    )
