"""Elementwise activation layers (and LogSoftmax / Softmax over one axis): no params, no state.

All take whole batches: elementwise layers do not care which axes are batch axes; LogSoftmax and
Softmax count a non-negative ``axis`` after the ``batch_ndim`` leading batch dims.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jcnn import checks
from jcnn.layers.base import Layer, LayerInfo, describe, example_axis, example_shape, input_shape_of
from jcnn.shapes import ShapeError

__all__ = [
    "Identity",
    "Relu",
    "Gelu",
    "Tanh",
    "Sigmoid",
    "LeakyRelu",
    "LogSoftmax",
    "Softmax",
    "GeluSpec",
    "LeakyReluSpec",
    "SoftmaxSpec",
]


class GeluSpec(NamedTuple):
    approximate: bool


class LeakyReluSpec(NamedTuple):
    negative_slope: float


class SoftmaxSpec(NamedTuple):
    """`LogSoftmax`'s and `Softmax`'s hyperparameter: an axis of one example."""

    axis: int


def _check_axis(axis: int | None, shape, name: str, what: str) -> None:
    if axis is not None and not -len(shape) <= axis < len(shape):
        raise ShapeError(
            f"{name}: `axis` {axis} is out of range for {what} of shape {tuple(shape)}"
            f" ({len(shape)} dims per example)."
        )


def _elementwise(
    name: str,
    fn: Callable,
    flops_per_element: int,
    description: str,
    spec=None,
    axis: int | None = None,
) -> Layer:
    """A parameter-free layer applying ``fn(x)`` (or ``fn(x, axis)`` when ``axis`` is given)."""

    def plan(input_shape):
        shape = input_shape_of(input_shape, name)
        _check_axis(axis, shape, name, "an input")
        return shape

    def init(key, input_shape):
        del key
        return plan(input_shape), (), ()

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        if axis is None:  # elementwise: batch dims are just more dims
            return fn(x), state
        shape = example_shape(x, batch_ndim, name)
        _check_axis(axis, shape, name, "one example")
        return fn(x, example_axis(axis, len(shape), batch_ndim)), state

    def info(input_shape):
        shape = plan(input_shape)
        return LayerInfo(shape, 0, flops_per_element * math.prod(shape))

    return Layer(init, apply, name=name, spec=spec, info=info, takes_batch=True, description=description)


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


def Relu6() -> Layer:
    """``y = min(max(x, 0), 6)``: MobileNetV2's activation (``torch.nn.ReLU6``); 2 FLOPs per element.

    >>> import jax.numpy as jnp
    >>> Relu6().apply((), (), jnp.array([-1.0, 3.0, 9.0]))[0].tolist()
    [0.0, 3.0, 6.0]
    """
    return _elementwise("Relu6", jax.nn.relu6, 2, "Relu6()")


def Gelu(approximate: bool = False) -> Layer:
    """Gaussian error linear unit; exact (erf) by default like ``torch.nn.GELU``.

    Args:
      approximate: use the tanh approximation (``jax.nn.gelu``'s default) instead.

    >>> import jax.numpy as jnp
    >>> float(Gelu().apply((), (), jnp.array(0.0))[0])
    0.0
    """
    spec = GeluSpec(checks.as_bool(approximate, "Gelu", "approximate"))
    return _elementwise(
        "Gelu",
        lambda x: jax.nn.gelu(x, approximate=spec.approximate),
        1,
        describe("Gelu", (), {"approximate": spec.approximate}, {"approximate": False}),
        spec,
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
    spec = LeakyReluSpec(float(negative_slope))
    return _elementwise(
        "LeakyRelu",
        lambda x: jax.nn.leaky_relu(x, spec.negative_slope),
        1,
        describe("LeakyRelu", (spec.negative_slope,)),
        spec,
    )


def LogSoftmax(axis: int = -1) -> Layer:
    """``y = x - logsumexp(x, axis)``: log-probabilities over ``axis`` (default the last).

    Counted as 3 FLOPs per element (subtract the max, exp and sum, subtract the log-sum).

    Args:
      axis: an axis of ONE example; negative counts from the end.

    >>> import jax.numpy as jnp
    >>> y, _ = LogSoftmax().apply((), (), jnp.zeros(4))
    >>> float(jnp.exp(y).sum())
    1.0
    """
    spec = SoftmaxSpec(checks.as_int(axis, "LogSoftmax", "axis", minimum=None))
    return _elementwise(
        "LogSoftmax",
        lambda x, a: jax.nn.log_softmax(x, axis=a),
        3,
        describe("LogSoftmax", (), {"axis": spec.axis}, {"axis": -1}),
        spec,
        axis=spec.axis,
    )


def Softmax(axis: int = -1) -> Layer:
    """``y = exp(x) / sum(exp(x), axis)``; 3 FLOPs per element.

    Args:
      axis: an axis of ONE example; negative counts from the end.

    >>> import jax.numpy as jnp
    >>> Softmax().apply((), (), jnp.zeros(2))[0].tolist()
    [0.5, 0.5]
    """
    spec = SoftmaxSpec(checks.as_int(axis, "Softmax", "axis", minimum=None))
    return _elementwise(
        "Softmax",
        lambda x, a: jax.nn.softmax(x, axis=a),
        3,
        describe("Softmax", (), {"axis": spec.axis}, {"axis": -1}),
        spec,
        axis=spec.axis,
    )
