"""Combinators (`serial`, `parallel`, `residual`) and the fan-in layers (`Add`, `Concat`).

Errors raised inside a child name its path, e.g. ``"serial[3] Dense: ..."`` or
``"serial[2].parallel[0] Conv: ..."``, at ``init`` and at ``apply``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jcnn.layers.base import (
    Layer,
    LayerInfo,
    describe,
    numel,
    shapes_of,
    wrap_child_error,
)
from jcnn.shapes import ShapeError

__all__ = ["serial", "parallel", "residual", "Add", "Concat"]


def _check_layers(layers, where: str) -> tuple[Layer, ...]:
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)) and not isinstance(layers[0], Layer):
        layers = tuple(layers[0])  # serial([a, b]) as well as serial(a, b)
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Layer):
            out.append(layer)
            continue
        hint = ""
        if callable(layer) and getattr(layer, "__module__", "").startswith("jcnn.layers"):
            hint = f" Did you forget to call it? Write {layer.__name__}()."
        raise TypeError(f"{where}: argument {i} must be a Layer, got {layer!r}.{hint}")
    return tuple(out)


def _split(key, n: int):
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


def _check_len(tree, n: int, what: str, where: str) -> None:
    if not isinstance(tree, (tuple, list)) or len(tree) != n:
        got = f"{len(tree)} entries" if isinstance(tree, (tuple, list)) else f"a {type(tree).__name__}"
        raise ValueError(f"{where}: `{what}` must be a tuple with one entry per layer ({n}), got {got}.")


def serial(*layers: Layer) -> Layer:
    """Layers in sequence: the output of each is the input of the next.

    Params and state are tuples with one entry per layer (``()`` for stateless ones); ``key``
    is split into one key per layer.

    Args:
      *layers: the layers, in order (a single list of layers also works).

    Returns:
      A `Layer`.

    Raises:
      TypeError: an argument is not a Layer (e.g. ``Relu`` instead of ``Relu()``).

    >>> import jax
    >>> from jcnn.layers import Conv, Dense, Flatten, MaxPool, Relu
    >>> model = serial(Conv(20, 5, padding=2), Relu(), MaxPool(2), Flatten(), Dense(10))
    >>> model.init(jax.random.key(0), (28, 28, 1))[0]
    (10,)
    """
    where = "serial"
    layers = _check_layers(layers, where)
    n = len(layers)
    segments = tuple(f"serial[{i}]" for i in range(n))

    def init(key, input_shape):
        params, states = [], []
        shape = input_shape
        for seg, layer, k in zip(segments, layers, _split(key, n)):
            try:
                shape, p, s = layer.init(k, shape)
            except (ValueError, TypeError) as exc:
                wrap_child_error(exc, seg, layer)
            params.append(p)
            states.append(s)
        return shape, tuple(params), tuple(states)

    def apply(params, state, x, *, key=None, train=False):
        _check_len(params, n, "params", where)
        _check_len(state, n, "state", where)
        new_states = []
        for seg, layer, p, s, k in zip(segments, layers, params, state, _split(key, n)):
            try:
                x, s = layer.apply(p, s, x, key=k, train=train)
            except (ValueError, TypeError) as exc:
                wrap_child_error(exc, seg, layer)
            new_states.append(s)
        return x, tuple(new_states)

    return Layer(
        init,
        apply,
        name="serial",
        kind="serial",
        children=tuple(zip(segments, layers)),
        description=f"serial({', '.join(map(repr, layers))})",
    )


def parallel(*layers: Layer) -> Layer:
    """The same input to every layer; the output is the tuple of their outputs.

    Follow it with `Add` or `Concat` to merge the branches (Inception, ResNet).

    Args:
      *layers: the branches.

    Returns:
      A `Layer` whose output shape is a tuple of shapes.

    >>> import jax
    >>> from jcnn.layers import Conv
    >>> parallel(Conv(4, 1), Conv(8, 3, padding=1)).init(jax.random.key(0), (5, 5, 3))[0]
    ((5, 5, 4), (5, 5, 8))
    """
    where = "parallel"
    layers = _check_layers(layers, where)
    n = len(layers)
    if n == 0:
        raise ValueError(f"{where}: needs at least one layer, got none.")
    segments = tuple(f"parallel[{i}]" for i in range(n))

    def init(key, input_shape):
        outs, params, states = [], [], []
        for seg, layer, k in zip(segments, layers, _split(key, n)):
            try:
                out, p, s = layer.init(k, input_shape)
            except (ValueError, TypeError) as exc:
                wrap_child_error(exc, seg, layer)
            outs.append(out)
            params.append(p)
            states.append(s)
        return tuple(outs), tuple(params), tuple(states)

    def apply(params, state, x, *, key=None, train=False):
        _check_len(params, n, "params", where)
        _check_len(state, n, "state", where)
        ys, new_states = [], []
        for seg, layer, p, s, k in zip(segments, layers, params, state, _split(key, n)):
            try:
                y, s = layer.apply(p, s, x, key=k, train=train)
            except (ValueError, TypeError) as exc:
                wrap_child_error(exc, seg, layer)
            ys.append(y)
            new_states.append(s)
        return tuple(ys), tuple(new_states)

    return Layer(
        init,
        apply,
        name="parallel",
        kind="parallel",
        children=tuple(zip(segments, layers)),
        description=f"parallel({', '.join(map(repr, layers))})",
    )


def residual(layer: Layer, shortcut: Layer | None = None) -> Layer:
    """``y = shortcut(x) + layer(x)`` (He et al., 2016); the shortcut is the identity by default.

    Use ``shortcut=`` for a projection when the body changes the shape, e.g.
    ``residual(body, shortcut=Conv(128, 1, strides=2, bias=False))``.

    Args:
      layer: the body.
      shortcut: an optional projection layer.

    Returns:
      A `Layer`; params and state ``(body, shortcut)`` (``()`` for the identity shortcut).

    Raises:
      ShapeError: at ``init``, when the body's and the shortcut's output shapes differ.

    >>> import jax
    >>> from jcnn.layers import Conv, Relu
    >>> block = residual(serial(Conv(8, 3, padding=1), Relu(), Conv(8, 3, padding=1)))
    >>> block.init(jax.random.key(0), (6, 6, 8))[0]
    (6, 6, 8)
    """
    where = "residual"
    (layer,) = _check_layers((layer,), where)
    if shortcut is not None:
        (shortcut,) = _check_layers((shortcut,), where + " shortcut")
    seg_body, seg_short = "residual.body", "residual.shortcut"

    def init(key, input_shape):
        k_body, k_short = jax.random.split(key)
        try:
            body_shape, body_params, body_state = layer.init(k_body, input_shape)
        except (ValueError, TypeError) as exc:
            wrap_child_error(exc, seg_body, layer)
        if shortcut is None:
            short_shape, short_params, short_state = input_shape, (), ()
        else:
            try:
                short_shape, short_params, short_state = shortcut.init(k_short, input_shape)
            except (ValueError, TypeError) as exc:
                wrap_child_error(exc, seg_short, shortcut)
        check(body_shape, short_shape, input_shape)
        return body_shape, (body_params, short_params), (body_state, short_state)

    def check(body_shape, short_shape, input_shape):
        if tuple(body_shape) != tuple(short_shape):
            what = "the shortcut's" if shortcut is not None else "the input's (identity shortcut)"
            fix = (
                "; give residual a shortcut= projection that produces the body's shape, e.g. a 1x1"
                " Conv with the body's strides and out_channels"
                if shortcut is None
                else "; change the shortcut so it produces the body's shape"
            )
            raise ShapeError(
                f"{where}: the body's output shape {tuple(body_shape)} differs from {what}"
                f" {tuple(short_shape)} (input shape {tuple(input_shape)}){fix}."
            )

    def apply(params, state, x, *, key=None, train=False):
        _check_len(params, 2, "params", where)
        _check_len(state, 2, "state", where)
        k_body, k_short = _split(key, 2)
        try:
            y, body_state = layer.apply(params[0], state[0], x, key=k_body, train=train)
        except (ValueError, TypeError) as exc:
            wrap_child_error(exc, seg_body, layer)
        if shortcut is None:
            short, short_state = x, state[1]
        else:
            try:
                short, short_state = shortcut.apply(params[1], state[1], x, key=k_short, train=train)
            except (ValueError, TypeError) as exc:
                wrap_child_error(exc, seg_short, shortcut)
        check(y.shape, short.shape, x.shape)
        return short + y, (body_state, short_state)

    children = ((seg_body, layer),) if shortcut is None else ((seg_body, layer), (seg_short, shortcut))
    desc = f"residual({layer!r}" + ("" if shortcut is None else f", shortcut={shortcut!r}") + ")"
    return Layer(init, apply, name="residual", kind="residual", children=children, description=desc)


def Add() -> Layer:
    """Sum a tuple of same-shaped inputs (the fan-in of a ResNet block after `parallel`).

    >>> import jax
    >>> Add().init(jax.random.key(0), ((4, 4, 8), (4, 4, 8)))[0]
    (4, 4, 8)
    """
    where = "Add"

    def plan(input_shape):
        shapes = shapes_of(input_shape, where)
        if len(set(shapes)) != 1:
            raise ShapeError(
                f"{where}: all inputs must have the same shape, got shapes {', '.join(map(str, shapes))}."
            )
        return shapes

    def init(key, input_shape):
        del key
        return plan(input_shape)[0], (), ()

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        if not isinstance(x, (tuple, list)):
            raise ShapeError(f"{where}: expects a tuple of arrays (e.g. from parallel(...)), got one array.")
        plan(tuple(xi.shape for xi in x))
        y = x[0]
        for xi in x[1:]:
            y = y + xi
        return y, state

    def info(input_shape):
        shapes = plan(input_shape)
        return LayerInfo(shapes[0], 0, (len(shapes) - 1) * numel(shapes[0]), rf="merge")

    return Layer(init, apply, name="Add", kind="merge", info=info, description="Add()")


def Concat(axis: int = -1) -> Layer:
    """Concatenate a tuple of inputs along ``axis`` of one example (default: channels).

    Args:
      axis: an axis of ONE example (no batch dim); negative counts from the end.

    >>> import jax
    >>> Concat().init(jax.random.key(0), ((4, 4, 8), (4, 4, 2)))[0]
    (4, 4, 10)
    """
    where = "Concat"
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{where}: `axis` must be an int, got {axis!r}.")

    def plan(input_shape):
        shapes = shapes_of(input_shape, where)
        ranks = {len(s) for s in shapes}
        listed = ", ".join(map(str, shapes))
        if len(ranks) != 1:
            raise ShapeError(f"{where}: all inputs must have the same rank, got shapes {listed}.")
        (rank,) = ranks
        if not -rank <= axis < rank:
            raise ShapeError(f"{where}: `axis` {axis} is out of range for inputs of rank {rank} ({listed}).")
        a = axis % rank
        if len({s[:a] + s[a + 1 :] for s in shapes}) != 1:
            raise ShapeError(
                f"{where}: inputs must agree on every axis but axis {axis}, got shapes {listed}."
            )
        out = list(shapes[0])
        out[a] = sum(s[a] for s in shapes)
        return a, tuple(out)

    def init(key, input_shape):
        del key
        return plan(input_shape)[1], (), ()

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        if not isinstance(x, (tuple, list)):
            raise ShapeError(f"{where}: expects a tuple of arrays (e.g. from parallel(...)), got one array.")
        a, _ = plan(tuple(xi.shape for xi in x))
        return jnp.concatenate(x, axis=a), state

    def info(input_shape):
        return LayerInfo(plan(input_shape)[1], 0, 0, rf="merge")

    return Layer(
        init,
        apply,
        name="Concat",
        kind="merge",
        hparams={"axis": axis},
        info=info,
        description=describe("Concat", (), {"axis": axis}, {"axis": -1}),
    )
