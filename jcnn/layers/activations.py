"""Elementwise activation layers (and LogSoftmax / Softmax over one axis): no params, no state.

One spec family: `ElementwiseSpec` is the layer, each activation a subclass that says its
``fn``, its name and its FLOPs per element (stax's ``elementwise(fn)``, with a spec). All take
whole batches: elementwise layers do not care which axes are batch axes; LogSoftmax and Softmax
count a non-negative ``axis`` after the ``batch_ndim`` leading batch dims.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from jcnn import checks
from jcnn.layers._examples import example_axis, example_shape, input_shape_of
from jcnn.layers.base import Layer
from jcnn.layers.info import ELEMENTWISE, LayerInfo
from jcnn.layers.spec import LeafSpec, as_number
from jcnn.shapes import ShapeError

__all__ = [
    "Identity",
    "Relu",
    "Relu6",
    "Gelu",
    "Tanh",
    "Sigmoid",
    "LeakyRelu",
    "LogSoftmax",
    "Softmax",
    "ElementwiseSpec",
    "GeluSpec",
    "LeakyReluSpec",
    "SoftmaxSpec",
    "LogSoftmaxSpec",
]


@dataclasses.dataclass(frozen=True)
class ElementwiseSpec(LeafSpec):
    """A parameter-free layer ``y = fn(x)``; subclasses set ``name``, ``flops`` and ``fn``.

    >>> import jax.numpy as jnp
    >>> Layer.of(ReluSpec()).apply((), (), jnp.array([-1.0, 2.0]))[0].tolist()
    [0.0, 2.0]
    """

    flops: ClassVar[int] = 1  # per element

    def fn(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def init(self, key, input_shape, /):
        del key
        return input_shape_of(input_shape, self.name), (), ()

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train, batch_ndim  # elementwise: batch dims are just more dims
        return self.fn(x), state

    def info(self, input_shape, /):
        shape = input_shape_of(input_shape, self.name)
        return LayerInfo(shape, 0, self.flops * math.prod(shape), rf=ELEMENTWISE)


def _elementwise(name: str, fn, flops: int, doc: str) -> type[ElementwiseSpec]:
    """One activation's spec class: ``name``, ``fn(x)``, ``flops`` per element."""
    spec = type(
        f"{name}Spec",
        (ElementwiseSpec,),
        {"name": name, "flops": flops, "fn": lambda self, x: fn(x), "__doc__": doc, "__module__": __name__},
    )
    return dataclasses.dataclass(frozen=True)(spec)


IdentitySpec = _elementwise(
    "Identity",
    lambda x: x,
    0,
    """``y = x``; ``Identity()``. Useful as a placeholder and in receptive-field checks.

    >>> import jax.numpy as jnp
    >>> Identity().apply((), (), jnp.ones(2))[0].tolist()
    [1.0, 1.0]
    """,
)
ReluSpec = _elementwise(
    "Relu",
    jax.nn.relu,
    1,
    """``y = max(x, 0)``; ``Relu()``; 1 FLOP per element.

    >>> import jax.numpy as jnp
    >>> Relu().apply((), (), jnp.array([-1.0, 2.0]))[0].tolist()
    [0.0, 2.0]
    """,
)
Relu6Spec = _elementwise(
    "Relu6",
    jax.nn.relu6,
    2,
    """``y = min(max(x, 0), 6)``: MobileNetV2's activation (``torch.nn.ReLU6``); ``Relu6()``; 2 FLOPs.

    >>> import jax.numpy as jnp
    >>> Relu6().apply((), (), jnp.array([-1.0, 3.0, 9.0]))[0].tolist()
    [0.0, 3.0, 6.0]
    """,
)
TanhSpec = _elementwise(
    "Tanh",
    jnp.tanh,
    1,
    """``y = tanh(x)``; ``Tanh()``.

    >>> import jax.numpy as jnp
    >>> float(Tanh().apply((), (), jnp.array(0.0))[0])
    0.0
    """,
)
SigmoidSpec = _elementwise(
    "Sigmoid",
    jax.nn.sigmoid,
    1,
    """``y = 1 / (1 + exp(-x))``; ``Sigmoid()``.

    >>> import jax.numpy as jnp
    >>> float(Sigmoid().apply((), (), jnp.array(0.0))[0])
    0.5
    """,
)


@dataclasses.dataclass(frozen=True)
class GeluSpec(ElementwiseSpec):
    """Gaussian error linear unit; exact (erf) by default like ``torch.nn.GELU``; ``Gelu(...)``.

    Args:
      approximate: use the tanh approximation (``jax.nn.gelu``'s default) instead.

    >>> import jax.numpy as jnp
    >>> float(Gelu().apply((), (), jnp.array(0.0))[0])
    0.0
    """

    name = "Gelu"
    approximate: bool = False

    def __post_init__(self):
        self._canonical(approximate=checks.as_bool(self.approximate, self.name, "approximate"))

    def fn(self, x):
        return jax.nn.gelu(x, approximate=self.approximate)


@dataclasses.dataclass(frozen=True)
class LeakyReluSpec(ElementwiseSpec):
    """``y = x if x >= 0 else negative_slope * x`` (PyTorch's default slope 0.01); ``LeakyRelu(...)``.

    Args:
      negative_slope: the slope for negative inputs.

    >>> import jax.numpy as jnp
    >>> [round(v, 6) for v in LeakyRelu(0.1).apply((), (), jnp.array([-1.0, 2.0]))[0].tolist()]
    [-0.1, 2.0]
    """

    name = "LeakyRelu"
    negative_slope: float = 0.01

    def __post_init__(self):
        slope = as_number(self.negative_slope, self.name, "negative_slope", "a number", lambda v: True)
        self._canonical(negative_slope=slope)

    def fn(self, x):
        return jax.nn.leaky_relu(x, self.negative_slope)


@dataclasses.dataclass(frozen=True)
class SoftmaxSpec(LeafSpec):
    """``y = exp(x) / sum(exp(x), axis)``; 3 FLOPs per element; ``Softmax(axis=-1)``.

    Args:
      axis: an axis of ONE example; negative counts from the end.

    >>> import jax.numpy as jnp
    >>> Softmax().apply((), (), jnp.zeros(2))[0].tolist()
    [0.5, 0.5]
    """

    name = "Softmax"
    axis: int = -1

    def __post_init__(self):
        self._canonical(axis=checks.as_int(self.axis, self.name, "axis", minimum=None))

    def fn(self, x, axis):
        return jax.nn.softmax(x, axis=axis)

    def _check(self, shape, what: str) -> None:
        if not -len(shape) <= self.axis < len(shape):
            raise ShapeError(
                f"{self.name}: `axis` {self.axis} is out of range for {what} of shape {tuple(shape)}"
                f" ({len(shape)} dims per example)."
            )

    def init(self, key, input_shape, /):
        del key
        shape = input_shape_of(input_shape, self.name)
        self._check(shape, "an input")
        return shape, (), ()

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        shape = example_shape(x, batch_ndim, self.name)
        self._check(shape, "one example")
        return self.fn(x, example_axis(self.axis, len(shape), batch_ndim)), state

    def info(self, input_shape, /):
        shape = self.init(None, input_shape)[0]
        # Subtract the max, exp and sum, divide (or subtract the log-sum).
        return LayerInfo(shape, 0, 3 * math.prod(shape), rf=ELEMENTWISE)


@dataclasses.dataclass(frozen=True)
class LogSoftmaxSpec(SoftmaxSpec):
    """``y = x - logsumexp(x, axis)``: log-probabilities over ``axis``; ``LogSoftmax(axis=-1)``.

    Counted as 3 FLOPs per element (subtract the max, exp and sum, subtract the log-sum).

    Args:
      axis: an axis of ONE example; negative counts from the end.

    >>> import jax.numpy as jnp
    >>> y, _ = LogSoftmax().apply((), (), jnp.zeros(4))
    >>> float(jnp.exp(y).sum())
    1.0
    """

    name = "LogSoftmax"

    def fn(self, x, axis):
        return jax.nn.log_softmax(x, axis=axis)


Identity = Layer.constructor(IdentitySpec)
Relu = Layer.constructor(ReluSpec)
Relu6 = Layer.constructor(Relu6Spec)
Tanh = Layer.constructor(TanhSpec)
Sigmoid = Layer.constructor(SigmoidSpec)
Gelu = Layer.constructor(GeluSpec)
LeakyRelu = Layer.constructor(LeakyReluSpec)
Softmax = Layer.constructor(SoftmaxSpec)
LogSoftmax = Layer.constructor(LogSoftmaxSpec)
