"""Combinators (`serial`, `parallel`, `residual`, `batched`) and the fan-in layers (`Add`, `Concat`).

Each combinator is a spec whose fields hold its children (so `jcnn.layers.map_layers` can
rebuild it) and whose ``route`` sends `jcnn.layers.fold` through them (so `jcnn.summary`
knows no combinator by name). Every child runs through `jcnn.layers.init_child` /
`jcnn.layers.apply_child`: errors raised inside a child name its path, e.g.
``"serial[3] Dense: ..."`` or ``"serial[2].parallel[0] Conv: ..."``, at ``init`` and at
``apply``, and ``batch_ndim`` is handed to every child unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jcnn import checks
from jcnn.layers._examples import example_shape, is_shape, map_shapes, numel, shapes_of
from jcnn.layers.base import Layer, prng_key
from jcnn.layers.info import MERGE, LayerInfo
from jcnn.layers.spec import CombinatorSpec, LeafSpec
from jcnn.layers.tree import apply_child, init_child
from jcnn.shapes import ShapeError

__all__ = [
    "serial",
    "parallel",
    "residual",
    "batched",
    "Add",
    "Concat",
    "SerialSpec",
    "ParallelSpec",
    "ResidualSpec",
    "BatchedSpec",
    "AddSpec",
    "ConcatSpec",
]


def _check_layers(layers: Any, where: str) -> tuple[Layer, ...]:
    if isinstance(layers, Layer):
        layers = (layers,)
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Layer):
            out.append(layer)
            continue
        hint = ""
        if callable(layer) and getattr(layer, "__module__", "").startswith("jcnn.layers"):
            hint = f" Did you forget to call it? Write {getattr(layer, '__name__', 'it')}()."
        raise TypeError(f"{where}: argument {i} must be a Layer, got {layer!r}.{hint}")
    return tuple(out)


def _split(key: Any, n: int, where: str) -> tuple:
    key = prng_key(key, where)
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


def _check_len(tree: Any, n: int, what: str, where: str) -> None:
    if not isinstance(tree, (tuple, list)) or len(tree) != n:
        got = f"{len(tree)} entries" if isinstance(tree, (tuple, list)) else f"a {type(tree).__name__}"
        raise ValueError(f"{where}: `{what}` must be a tuple with one entry per layer ({n}), got {got}.")


@dataclasses.dataclass(frozen=True)
class _Branches(CombinatorSpec):
    """A combinator over a tuple of layers, child ``i`` named ``<name>[i]``."""

    layers: tuple[Layer, ...]
    varargs = "layers"

    def __post_init__(self):
        self._canonical(layers=_check_layers(self.layers, self.name))

    @property
    def _children(self) -> tuple[tuple[str, Layer], ...]:
        return tuple((f"{self.name}[{i}]", layer) for i, layer in enumerate(self.layers))


@dataclasses.dataclass(frozen=True)
class SerialSpec(_Branches):
    """Layers in sequence: the output of each is the input of the next.

    Params and state are tuples with one entry per layer (``()`` for stateless ones); ``key``
    is split into one key per layer. ``serial(*layers)`` builds the `Layer`.

    >>> import jax
    >>> from jcnn.layers import Conv, Dense, Flatten, MaxPool, Relu
    >>> model = serial(Conv(20, 5, padding=2), Relu(), MaxPool(2), Flatten(), Dense(10))
    >>> model.init(jax.random.key(0), (28, 28, 1))[0]
    (10,)
    """

    name = "serial"

    def init(self, key, input_shape, /):
        params, states = [], []
        shape = input_shape
        for (seg, layer), k in zip(self._children, _split(key, len(self.layers), self.name)):
            shape, p, s = init_child(seg, layer, k, shape)
            params.append(p)
            states.append(s)
        return shape, tuple(params), tuple(states)

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        n = len(self.layers)
        _check_len(params, n, "params", self.name)
        _check_len(state, n, "state", self.name)
        new_states = []
        for (seg, layer), p, s, k in zip(self._children, params, state, _split(key, n, self.name)):
            x, s = apply_child(seg, layer, p, s, x, key=k, train=train, batch_ndim=batch_ndim)
            new_states.append(s)
        return x, tuple(new_states)

    def route(self, flow, visit, /):
        for seg, layer in self._children:
            flow = visit(seg, layer, flow)
        return flow


@dataclasses.dataclass(frozen=True)
class ParallelSpec(_Branches):
    """The same input to every layer; the output is the tuple of their outputs.

    Follow it with `Add` or `Concat` to merge the branches (Inception, ResNet).
    ``parallel(*layers)`` builds the `Layer`; its output shape is a tuple of shapes.

    >>> import jax
    >>> from jcnn.layers import Conv
    >>> parallel(Conv(4, 1), Conv(8, 3, padding=1)).init(jax.random.key(0), (5, 5, 3))[0]
    ((5, 5, 4), (5, 5, 8))
    """

    name = "parallel"

    def __post_init__(self):
        super().__post_init__()
        if not self.layers:
            raise ValueError(f"{self.name}: needs at least one layer, got none.")

    def init(self, key, input_shape, /):
        outs, params, states = [], [], []
        for (seg, layer), k in zip(self._children, _split(key, len(self.layers), self.name)):
            out, p, s = init_child(seg, layer, k, input_shape)
            outs.append(out)
            params.append(p)
            states.append(s)
        return tuple(outs), tuple(params), tuple(states)

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        n = len(self.layers)
        _check_len(params, n, "params", self.name)
        _check_len(state, n, "state", self.name)
        ys, new_states = [], []
        for (seg, layer), p, s, k in zip(self._children, params, state, _split(key, n, self.name)):
            y, s = apply_child(seg, layer, p, s, x, key=k, train=train, batch_ndim=batch_ndim)
            ys.append(y)
            new_states.append(s)
        return tuple(ys), tuple(new_states)

    def route(self, flow, visit, /):
        return tuple(visit(seg, layer, flow) for seg, layer in self._children)


def serial(*layers: Layer) -> Layer:
    """Layers in sequence (a single list of layers also works); see `SerialSpec`.

    Raises:
      TypeError: an argument is not a Layer (e.g. ``Relu`` instead of ``Relu()``).

    >>> from jcnn.layers import Dense, Relu
    >>> serial(Dense(3), Relu())
    serial(Dense(3), Relu())
    """
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
        layers = tuple(layers[0])
    return Layer.of(SerialSpec(layers))


def parallel(*layers: Layer) -> Layer:
    """The same input to every layer, their outputs as a tuple; see `ParallelSpec`.

    Raises:
      TypeError: an argument is not a Layer. ValueError: no layers.

    >>> from jcnn.layers import Dense, Identity
    >>> parallel(Identity(), Dense(3))
    parallel(Identity(), Dense(3))
    """
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
        layers = tuple(layers[0])
    return Layer.of(ParallelSpec(layers))


@dataclasses.dataclass(frozen=True)
class AddSpec(LeafSpec):
    """Sum a tuple of same-shaped inputs (the fan-in of a ResNet block after `parallel`); ``Add()``.

    >>> import jax
    >>> Add().init(jax.random.key(0), ((4, 4, 8), (4, 4, 8)))[0]
    (4, 4, 8)
    """

    name = "Add"

    def _plan(self, input_shape):
        shapes = shapes_of(input_shape, self.name)
        if len(set(shapes)) != 1:
            raise ShapeError(
                f"{self.name}: all inputs must have the same shape, got shapes {', '.join(map(str, shapes))}."
            )
        return shapes

    def init(self, key, input_shape, /):
        del key
        return self._plan(input_shape)[0], (), ()

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train, batch_ndim  # elementwise: batch dims are just more dims
        if not isinstance(x, (tuple, list)):
            raise ShapeError(
                f"{self.name}: expects a tuple of arrays (e.g. from parallel(...)), got one array."
            )
        self._plan(tuple(xi.shape for xi in x))
        y = x[0]
        for xi in x[1:]:
            y = y + xi
        return y, state

    def info(self, input_shape, /):
        shapes = self._plan(input_shape)
        return LayerInfo(shapes[0], 0, (len(shapes) - 1) * numel(shapes[0]), rf=MERGE)


@dataclasses.dataclass(frozen=True)
class ConcatSpec(LeafSpec):
    """Concatenate a tuple of inputs along ``axis`` of one example (default: channels); ``Concat(axis)``.

    Args:
      axis: an axis of ONE example (no batch dim); negative counts from the end. With
        ``batch_ndim`` leading batch dims, a non-negative axis is counted after them.

    >>> import jax
    >>> Concat().init(jax.random.key(0), ((4, 4, 8), (4, 4, 2)))[0]
    (4, 4, 10)
    """

    name = "Concat"
    axis: int = -1

    def __post_init__(self):
        self._canonical(axis=checks.as_int(self.axis, self.name, "axis", minimum=None))

    def _plan(self, input_shape):
        shapes = shapes_of(input_shape, self.name)
        ranks = {len(s) for s in shapes}
        listed = ", ".join(map(str, shapes))
        if len(ranks) != 1:
            raise ShapeError(f"{self.name}: all inputs must have the same rank, got shapes {listed}.")
        (rank,) = ranks
        if not -rank <= self.axis < rank:
            raise ShapeError(
                f"{self.name}: `axis` {self.axis} is out of range for inputs of rank {rank} ({listed})."
            )
        a = self.axis % rank
        if len({s[:a] + s[a + 1 :] for s in shapes}) != 1:
            raise ShapeError(
                f"{self.name}: inputs must agree on every axis but axis {self.axis}, got shapes {listed}."
            )
        out = list(shapes[0])
        out[a] = sum(s[a] for s in shapes)
        return a, tuple(out)

    def init(self, key, input_shape, /):
        del key
        return self._plan(input_shape)[1], (), ()

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        if not isinstance(x, (tuple, list)):
            raise ShapeError(
                f"{self.name}: expects a tuple of arrays (e.g. from parallel(...)), got one array."
            )
        batch = {tuple(xi.shape[:batch_ndim]) for xi in x}
        if len(batch) != 1:
            raise ShapeError(
                f"{self.name}: inputs must share their {batch_ndim} leading batch dim(s), got shapes"
                f" {', '.join(str(tuple(xi.shape)) for xi in x)}."
            )
        a, _ = self._plan(tuple(example_shape(xi, batch_ndim, self.name) for xi in x))
        return jnp.concatenate(x, axis=batch_ndim + a), state

    def info(self, input_shape, /):
        return LayerInfo(self._plan(input_shape)[1], 0, 0, rf=MERGE)


Add = Layer.constructor(AddSpec)
Concat = Layer.constructor(ConcatSpec)
_RESIDUAL_ADD = Add()


@dataclasses.dataclass(frozen=True)
class ResidualSpec(CombinatorSpec):
    """``y = shortcut(x) + layer(x)`` (He et al., 2016); the shortcut is the identity by default.

    ``residual(layer, shortcut=None)`` builds the `Layer`. Use ``shortcut=`` for a projection
    when the body changes the shape, e.g. ``residual(body, shortcut=Conv(128, 1, strides=2,
    bias=False))``. The addition is a child of its own, ``residual.add`` (a row in the summary).
    Params and state are ``(body, shortcut)`` (``()`` for the identity shortcut).

    Raises:
      ShapeError: at ``init``, when the body's and the shortcut's output shapes differ.

    >>> import jax
    >>> from jcnn.layers import Conv, Relu
    >>> block = residual(serial(Conv(8, 3, padding=1), Relu(), Conv(8, 3, padding=1)))
    >>> block.init(jax.random.key(0), (6, 6, 8))[0]
    (6, 6, 8)
    """

    name = "residual"
    layer: Layer
    shortcut: Layer | None = None

    def __post_init__(self):
        (layer,) = _check_layers((self.layer,), self.name)
        if self.shortcut is not None:
            _check_layers((self.shortcut,), self.name + " shortcut")
        self._canonical(layer=layer)

    def _check(self, body_shape, short_shape, input_shape) -> None:
        if tuple(body_shape) != tuple(short_shape):
            what = "the shortcut's" if self.shortcut is not None else "the input's (identity shortcut)"
            fix = (
                "; give residual a shortcut= projection that produces the body's shape, e.g. a 1x1"
                " Conv with the body's strides and out_channels"
                if self.shortcut is None
                else "; change the shortcut so it produces the body's shape"
            )
            raise ShapeError(
                f"{self.name}: the body's output shape {tuple(body_shape)} differs from {what}"
                f" {tuple(short_shape)} (input shape {tuple(input_shape)}){fix}."
            )

    def init(self, key, input_shape, /):
        k_body, k_short = _split(key, 2, self.name)
        body_shape, body_params, body_state = init_child("residual.body", self.layer, k_body, input_shape)
        short_shape, short_params, short_state = input_shape, (), ()
        if self.shortcut is not None:
            short_shape, short_params, short_state = init_child(
                "residual.shortcut", self.shortcut, k_short, input_shape
            )
        self._check(body_shape, short_shape, input_shape)
        init_child("residual.add", _RESIDUAL_ADD, k_short, (short_shape, body_shape))
        return body_shape, (body_params, short_params), (body_state, short_state)

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        _check_len(params, 2, "params", self.name)
        _check_len(state, 2, "state", self.name)
        k_body, k_short = _split(key, 2, self.name)

        def run(segment, child, p, s, inputs, k):
            return apply_child(segment, child, p, s, inputs, key=k, train=train, batch_ndim=batch_ndim)

        y, body_state = run("residual.body", self.layer, params[0], state[0], x, k_body)
        short, short_state = x, state[1]
        if self.shortcut is not None:
            short, short_state = run("residual.shortcut", self.shortcut, params[1], state[1], x, k_short)
        self._check(y.shape, short.shape, x.shape)
        out, _ = run("residual.add", _RESIDUAL_ADD, (), (), (short, y), None)
        return out, (body_state, short_state)

    def route(self, flow, visit, /):
        body_flow = visit("residual.body", self.layer, flow)
        short_flow = flow if self.shortcut is None else visit("residual.shortcut", self.shortcut, flow)
        return visit("residual.add", _RESIDUAL_ADD, (short_flow, body_flow))


def residual(layer: Layer, shortcut: Layer | None = None) -> Layer:
    """``y = shortcut(x) + layer(x)``; see `ResidualSpec`.

    >>> from jcnn.layers import Relu
    >>> residual(Relu())
    residual(Relu())
    """
    return Layer.of(ResidualSpec(layer, shortcut))


@dataclasses.dataclass(frozen=True)
class BatchedSpec(LeafSpec):
    """The batched form of a layer: shapes and arrays with one more leading batch axis.

    ``batched(layer)`` builds the `Layer`. ``init(key, (n, *shape))`` calls the layer's
    ``init`` on ``shape`` and puts ``n`` back in front of the output shape (``n`` is passed
    through untouched: use the real batch size). ``apply(params, state, x, *, key=None,
    train=False)`` hands the whole batch to the layer as ``batch_ndim=1`` (every built-in layer
    and combinator takes it: the ops see the real batch; a `Layer.per_example` layer runs under
    ``jax.vmap(..., axis_name="batch")``). Per-example semantics are unchanged, with two
    documented differences from vmapping the whole model: BatchNorm in training normalises over
    the batch axis directly (the same statistics), and Dropout draws one mask for the whole batch
    from its key, so its masks differ from the vmapped version's (which split the key per example).

    Args:
      layer: a `Layer`.

    >>> import jax, jax.numpy as jnp
    >>> from jcnn.layers import Dense
    >>> init, apply = batched(Dense(3))
    >>> out_shape, params, state = init(jax.random.key(0), (8, 5))
    >>> out_shape, apply(params, state, jnp.ones((8, 5)))[0].shape
    ((8, 3), (8, 3))
    """

    name = "batched"
    layer: Layer

    def __post_init__(self):
        if not isinstance(self.layer, Layer):
            raise TypeError(f"batched: expects a Layer, got {self.layer!r}.")

    def init(self, key, input_shape, /):
        if not is_shape(input_shape) or len(input_shape) < 1:
            raise ShapeError(
                f"{self.name}: `input_shape` must be (batch, *per_example_shape), got {input_shape!r}."
            )
        n = input_shape[0]
        out_shape, params, state = self.layer.init(key, tuple(input_shape[1:]))
        return map_shapes(lambda s: (n, *s), out_shape), params, state

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        leaves = jax.tree_util.tree_leaves(x)
        if not leaves or any(leaf.ndim < batch_ndim + 1 for leaf in leaves):
            raise ShapeError(f"{self.name}: `x` must have a leading batch axis, got {x!r}.")
        return self.layer.apply(params, state, x, key=key, train=train, batch_ndim=batch_ndim + 1)

    def info(self, input_shape, /):
        del input_shape
        raise TypeError(
            "summary: pass the per-example model, not batched(model); `input_shape` is the"
            " shape of one example, e.g. (28, 28, 1)."
        )


def batched(layer: Layer) -> Layer:
    """The batched form of a layer; see `BatchedSpec`.

    >>> from jcnn.layers import Relu
    >>> batched(Relu())
    batched(Relu())
    """
    return Layer.of(BatchedSpec(layer))
