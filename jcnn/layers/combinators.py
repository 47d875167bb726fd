"""Combinators (`serial`, `parallel`, `residual`, `batched`) and the fan-in layers (`Add`, `Concat`).

Every combinator takes whole batches (``takes_batch=True``): ``apply(..., batch_ndim=k)`` hands
``x`` with its ``k`` leading batch dims straight to each child that takes batches too, and runs a
child that does not (a user layer written for one example) under ``jax.vmap`` over those dims
(`apply_child`). Each combinator's ``info`` routes `jcnn.summary`'s fold through its children
(`jcnn.layers.base.fold`), so the summary knows no combinator by name.

Errors raised inside a child name its path, e.g. ``"serial[3] Dense: ..."`` or
``"serial[2].parallel[0] Conv: ..."``, at ``init`` and at ``apply``: every child call below runs
inside `jcnn.layers.base.child_path`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jcnn import checks
from jcnn.layers.base import (
    Layer,
    LayerInfo,
    child_path,
    describe,
    example_shape,
    is_shape,
    map_shapes,
    numel,
    shapes_of,
)
from jcnn.shapes import ShapeError

__all__ = [
    "serial",
    "parallel",
    "residual",
    "batched",
    "apply_child",
    "Add",
    "Concat",
    "ConcatSpec",
    "BATCH_AXIS",
]

# The axis name of the jax.vmap that runs a layer without batch support over a batch: BatchNorm's
# default `axis_name`, so a BatchNorm inside a user's per-example layer still sees the batch.
BATCH_AXIS = "batch"


def apply_child(layer: Layer, params, state, x, *, key=None, train=False, batch_ndim: int = 0):
    """Apply ``layer`` to ``x`` with ``batch_ndim`` leading batch dims, however it is written.

    A layer that takes batches gets ``x`` as is (the ops see the real batch). One written for a
    single example runs under ``jax.vmap(..., axis_name="batch")`` over the batch dims (flattened
    into one), with ``key`` split into one key per example and the new state returned once, as
    `batched` always did for every layer.

    >>> import jax.numpy as jnp
    >>> from jcnn.layers import Layer, Relu
    >>> per_example = Layer(lambda k, s: (s, (), ()), lambda p, s, x, *, key=None, train=False: (x.sum(), s))
    >>> apply_child(per_example, (), (), jnp.ones((4, 3)), batch_ndim=1)[0].tolist()
    [3.0, 3.0, 3.0, 3.0]
    >>> apply_child(Relu(), (), (), -jnp.ones((4, 3)), batch_ndim=1)[0].shape
    (4, 3)
    """
    if layer.children:  # a combinator: its children's paths (`child_path`) name their ops
        return _apply_child(layer, params, state, x, key=key, train=train, batch_ndim=batch_ndim)
    with jax.named_scope(layer.name):  # a leaf: profiles read `serial[3]/Conv/...`
        return _apply_child(layer, params, state, x, key=key, train=train, batch_ndim=batch_ndim)


def _apply_child(layer: Layer, params, state, x, *, key, train, batch_ndim: int):
    if layer.takes_batch:
        return layer.apply(params, state, x, key=key, train=train, batch_ndim=batch_ndim)
    if batch_ndim == 0:
        return layer.apply(params, state, x, key=key, train=train)
    leaves = jax.tree_util.tree_leaves(x)
    batch = tuple(leaves[0].shape[:batch_ndim]) if leaves else ()
    if not leaves or any(
        leaf.ndim < batch_ndim or tuple(leaf.shape[:batch_ndim]) != batch for leaf in leaves
    ):
        raise ShapeError(
            f"{layer!r}: expects {batch_ndim} leading batch dim(s) shared by every input, got shapes"
            f" {[tuple(leaf.shape) for leaf in leaves]}."
        )
    n = math.prod(batch)
    flat = jax.tree_util.tree_map(lambda a: a.reshape((n,) + a.shape[batch_ndim:]), x)
    keys = None if key is None else jax.random.split(key, n)

    def one(xi, ki):
        return layer.apply(params, state, xi, key=ki, train=train)

    # out_axes=None for the state: it must be the same for every example, which holds for
    # stateless layers and for BatchNorm, whose statistics are pmean-ed over the axis.
    y, new_state = jax.vmap(one, in_axes=(0, 0), out_axes=(0, None), axis_name=BATCH_AXIS)(flat, keys)
    return jax.tree_util.tree_map(lambda a: a.reshape(batch + a.shape[1:]), y), new_state


def _check_layers(layers, where: str) -> tuple[Layer, ...]:
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
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
      A `Layer` that takes batches (``batch_ndim=``).

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
    children = tuple((f"serial[{i}]", layer) for i, layer in enumerate(layers))

    def init(key, input_shape):
        params, states = [], []
        shape = input_shape
        for (seg, layer), k in zip(children, _split(key, n)):
            with child_path(seg):
                shape, p, s = layer.init(k, shape)
            params.append(p)
            states.append(s)
        return shape, tuple(params), tuple(states)

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        _check_len(params, n, "params", where)
        _check_len(state, n, "state", where)
        new_states = []
        for (seg, layer), p, s, k in zip(children, params, state, _split(key, n)):
            with child_path(seg):
                x, s = apply_child(layer, p, s, x, key=k, train=train, batch_ndim=batch_ndim)
            new_states.append(s)
        return x, tuple(new_states)

    def info(flow, visit):
        for seg, layer in children:
            flow = visit(seg, layer, flow)
        return flow

    return Layer(
        init,
        apply,
        name="serial",
        children=children,
        info=info,
        takes_batch=True,
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
    children = tuple((f"parallel[{i}]", layer) for i, layer in enumerate(layers))

    def init(key, input_shape):
        outs, params, states = [], [], []
        for (seg, layer), k in zip(children, _split(key, n)):
            with child_path(seg):
                out, p, s = layer.init(k, input_shape)
            outs.append(out)
            params.append(p)
            states.append(s)
        return tuple(outs), tuple(params), tuple(states)

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        _check_len(params, n, "params", where)
        _check_len(state, n, "state", where)
        ys, new_states = [], []
        for (seg, layer), p, s, k in zip(children, params, state, _split(key, n)):
            with child_path(seg):
                y, s = apply_child(layer, p, s, x, key=k, train=train, batch_ndim=batch_ndim)
            ys.append(y)
            new_states.append(s)
        return tuple(ys), tuple(new_states)

    def info(flow, visit):
        return tuple(visit(seg, layer, flow) for seg, layer in children)

    return Layer(
        init,
        apply,
        name="parallel",
        children=children,
        info=info,
        takes_batch=True,
        description=f"parallel({', '.join(map(repr, layers))})",
    )


def residual(layer: Layer, shortcut: Layer | None = None) -> Layer:
    """``y = shortcut(x) + layer(x)`` (He et al., 2016); the shortcut is the identity by default.

    Use ``shortcut=`` for a projection when the body changes the shape, e.g.
    ``residual(body, shortcut=Conv(128, 1, strides=2, bias=False))``. In the summary the
    addition is a row of its own, ``residual.add``.

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
    body = ("residual.body", layer)
    short = None if shortcut is None else ("residual.shortcut", shortcut)
    add = ("residual.add", dataclasses.replace(Add(), description="Add (residual)"))

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

    def init(key, input_shape):
        k_body, k_short = jax.random.split(key)
        with child_path(body[0]):
            body_shape, body_params, body_state = layer.init(k_body, input_shape)
        if short is None:
            short_shape, short_params, short_state = input_shape, (), ()
        else:
            with child_path(short[0]):
                short_shape, short_params, short_state = shortcut.init(k_short, input_shape)
        check(body_shape, short_shape, input_shape)
        return body_shape, (body_params, short_params), (body_state, short_state)

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        _check_len(params, 2, "params", where)
        _check_len(state, 2, "state", where)
        k_body, k_short = _split(key, 2)
        with child_path(body[0]):
            y, body_state = apply_child(
                layer, params[0], state[0], x, key=k_body, train=train, batch_ndim=batch_ndim
            )
        if short is None:
            s, short_state = x, state[1]
        else:
            with child_path(short[0]):
                s, short_state = apply_child(
                    shortcut, params[1], state[1], x, key=k_short, train=train, batch_ndim=batch_ndim
                )
        check(y.shape, s.shape, x.shape)
        return s + y, (body_state, short_state)

    def info(flow, visit):
        body_flow = visit(*body, flow)
        short_flow = flow if short is None else visit(*short, flow)
        return visit(*add, (body_flow, short_flow))

    desc = f"residual({layer!r}" + ("" if shortcut is None else f", shortcut={shortcut!r}") + ")"
    children = (body,) if short is None else (body, short)
    return Layer(
        init, apply, name="residual", children=children, info=info, takes_batch=True, description=desc
    )


def batched(layer: Layer) -> Layer:
    """The batched form of a layer: shapes and arrays with one leading batch axis.

    ``init(key, (n, *shape))`` calls the layer's ``init`` on ``shape`` and puts ``n`` back in
    front of the output shape (``n`` is passed through untouched: use the real batch size).
    ``apply(params, state, x, *, key=None, train=False)`` hands the whole batch to a layer that
    takes batches (every built-in layer and combinator: the ops see the real batch), and runs
    one that does not under ``jax.vmap(..., axis_name="batch")``; inside a combinator, only
    such a child is vmapped (`apply_child`). Per-example semantics are unchanged, with two
    documented differences from vmapping the whole model: BatchNorm in training normalises over
    the batch axis directly (the same statistics), and Dropout draws one mask for the whole batch
    from its key, so its masks differ from the vmapped version's (which split the key per example).

    Args:
      layer: a `Layer`.

    Returns:
      A `Layer` on batches.

    >>> import jax, jax.numpy as jnp
    >>> from jcnn.layers import Dense
    >>> init, apply = batched(Dense(3))
    >>> out_shape, params, state = init(jax.random.key(0), (8, 5))
    >>> out_shape, apply(params, state, jnp.ones((8, 5)))[0].shape
    ((8, 3), (8, 3))
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"batched: expects a Layer, got {layer!r}.")
    where = "batched"

    def init(key, input_shape):
        if not is_shape(input_shape) or len(input_shape) < 1:
            raise ShapeError(
                f"{where}: `input_shape` must be (batch, *per_example_shape), got {input_shape!r}."
            )
        n = input_shape[0]
        out_shape, params, state = layer.init(key, tuple(input_shape[1:]))
        return map_shapes(lambda s: (n, *s), out_shape), params, state

    def apply(params, state, x, *, key=None, train=False):
        leaves = jax.tree_util.tree_leaves(x)
        if not leaves or any(leaf.ndim < 1 for leaf in leaves):
            raise ShapeError(f"{where}: `x` must have a leading batch axis, got {x!r}.")
        return apply_child(layer, params, state, x, key=key, train=train, batch_ndim=1)

    def info(flow, visit):
        del flow, visit
        raise TypeError(
            "summary: pass the per-example model, not batched(model); `input_shape` is the"
            " shape of one example, e.g. (28, 28, 1)."
        )

    return Layer(
        init,
        apply,
        name="batched",
        children=(("batched", layer),),
        info=info,
        description=f"batched({layer!r})",
    )


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

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del params, key, train, batch_ndim  # elementwise: batch dims are just more dims
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

    return Layer(init, apply, name="Add", info=info, takes_batch=True, description="Add()")


class ConcatSpec(NamedTuple):
    """`Concat`'s hyperparameters."""

    axis: int  # of one example; negative counts from the end


def Concat(axis: int = -1) -> Layer:
    """Concatenate a tuple of inputs along ``axis`` of one example (default: channels).

    Args:
      axis: an axis of ONE example (no batch dim); negative counts from the end. With
        ``batch_ndim`` leading batch dims, a non-negative axis is counted after them.

    >>> import jax
    >>> Concat().init(jax.random.key(0), ((4, 4, 8), (4, 4, 2)))[0]
    (4, 4, 10)
    """
    where = "Concat"
    axis = checks.as_int(axis, where, "axis", minimum=None)

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

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        del params, key, train
        if not isinstance(x, (tuple, list)):
            raise ShapeError(f"{where}: expects a tuple of arrays (e.g. from parallel(...)), got one array.")
        batch = {tuple(xi.shape[:batch_ndim]) for xi in x}
        if len(batch) != 1:
            raise ShapeError(
                f"{where}: inputs must share their {batch_ndim} leading batch dim(s), got shapes"
                f" {', '.join(str(tuple(xi.shape)) for xi in x)}."
            )
        a, _ = plan(tuple(example_shape(xi, batch_ndim, where) for xi in x))
        return jnp.concatenate(x, axis=batch_ndim + a), state

    def info(input_shape):
        return LayerInfo(plan(input_shape)[1], 0, 0, rf="merge")

    return Layer(
        init,
        apply,
        name="Concat",
        spec=ConcatSpec(axis),
        info=info,
        takes_batch=True,
        description=describe("Concat", (), {"axis": axis}, {"axis": -1}),
    )
