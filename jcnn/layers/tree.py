"""Layer trees: calling children (with their paths), folding, mapping and recording a model.

A combinator calls each child through `init_child` / `apply_child`, which name the child's path
in every error (``"serial[3] Dense: ..."``) and in the ops it traces (``serial[3]/Dense/...``),
and let `jcnn.layers.features` tap its output. `fold` walks a model in data-flow order through
the combinators' routes (`jcnn.summary` is a fold); `map_layers` rebuilds a model with some layers
changed; `spec_record` is a model's hyperparameters as plain data (the run identity's model).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax

from jcnn.layers.base import Layer
from jcnn.layers.spec import record

__all__ = [
    "child_path",
    "init_child",
    "apply_child",
    "fold",
    "output_shape",
    "map_layers",
    "spec_record",
    "layer_paths",
]

# The path of the child being run, as its segments; and the taps listening for child outputs.
_PATH: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("jcnn_path", default=())
_TAPS: contextvars.ContextVar[tuple[_Taps, ...]] = contextvars.ContextVar("jcnn_taps", default=())


@contextlib.contextmanager
def child_path(segment: str) -> Iterator[None]:
    """Errors raised inside the block get ``segment`` prefixed to their path.

    The one mechanism behind every path in an error: `init_child`, `apply_child` and `fold`'s
    visits run in it. ``"Dense: ..."`` raised by child 3 of a serial reads
    ``"serial[3] Dense: ..."``; nested, ``"serial[2].parallel[0] Conv: ..."``. The leaf's message
    is kept whole and the path kept apart (``exc.jcnn_path``), so nothing is parsed back out of a
    message. Only ``ValueError`` / ``TypeError`` (jcnn's errors) are rewritten, into the same
    class; anything else passes through unchanged.

    The block is also a ``jax.named_scope``: the operations traced inside it carry the path in
    their names (``serial[3]/Dense/dot_general`` in a jaxpr's name stack, the compiled HLO's
    ``op_name`` metadata, and profiler traces).

    >>> with child_path("serial[3]"):
    ...     raise ValueError("Dense: input has 4 features.")
    Traceback (most recent call last):
    ...
    ValueError: serial[3] Dense: input has 4 features.
    """
    token = _PATH.set(_PATH.get() + (segment,))
    try:
        with jax.named_scope(segment):
            yield
    except (ValueError, TypeError) as exc:
        path = (segment, *getattr(exc, "jcnn_path", ()))
        message = getattr(exc, "jcnn_message", None)
        if message is None:
            message = str(exc)
        try:
            new: Any = type(exc)(f"{'.'.join(path)} {message}")
        except Exception:  # an exception class with another constructor (jax's): leave it be
            raise exc from None
        new.jcnn_path = path
        new.jcnn_message = message
        raise new.with_traceback(exc.__traceback__) from None
    finally:
        _PATH.reset(token)


class _Taps:
    """Child outputs recorded by path (relative to where tapping began), for `features`."""

    def __init__(self, base: tuple[str, ...], paths: frozenset[str]):
        self.base, self.paths, self.got = base, paths, {}


@contextlib.contextmanager
def _tapping(paths) -> Iterator[dict[str, Any]]:
    """Record, by path, what each listed child outputs inside the block (an array, a shape or a
    fold's flow). Paths are relative to the caller's, as `jcnn.summary` names them."""
    taps = _Taps(_PATH.get(), frozenset(paths))
    token = _TAPS.set(_TAPS.get() + (taps,))
    try:
        yield taps.got
    finally:
        _TAPS.reset(token)


def _tap(value: Any) -> Any:
    """Hand a child's output to the taps listening for the current path; returns ``value``."""
    active = _TAPS.get()
    if active:
        path = _PATH.get()
        for taps in active:
            if path[: len(taps.base)] == taps.base:
                relative = ".".join(path[len(taps.base) :])
                if relative in taps.paths:
                    taps.got[relative] = value
    return value


def init_child(segment: str, child: Layer, key: Any, input_shape: Any) -> tuple[Any, Any, Any]:
    """A combinator's call of ``child.init``, under the child's path (`child_path`).

    >>> import jax
    >>> from jcnn.layers import Dense
    >>> init_child("serial[0]", Dense(3), jax.random.key(0), (4,))[0]
    (3,)
    """
    with child_path(segment):
        out, params, state = child.init(key, input_shape)
        _tap(out)
    return out, params, state


def apply_child(
    segment: str,
    child: Layer,
    params: Any,
    state: Any,
    x: Any,
    *,
    key: Any = None,
    train: bool = False,
    batch_ndim: int = 0,
) -> tuple[Any, Any]:
    """A combinator's call of ``child.apply``, under the child's path (`child_path`).

    Errors carry the path, the traced ops are named ``segment/<leaf name>/...``, and
    `jcnn.layers.features` can take the output. A user-written combinator calls its children
    through this to get the same.

    >>> import jax.numpy as jnp
    >>> from jcnn.layers import Relu
    >>> apply_child("serial[0]", Relu(), (), (), -jnp.ones((4, 3)), batch_ndim=1)[0].shape
    (4, 3)
    """
    with child_path(segment):
        if child.route is not None:  # a combinator: its children's paths name their ops
            y, new_state = child.apply(params, state, x, key=key, train=train, batch_ndim=batch_ndim)
        else:
            with jax.named_scope(child.name):  # a leaf: profiles read `serial[3]/Conv/...`
                y, new_state = child.apply(params, state, x, key=key, train=train, batch_ndim=batch_ndim)
        _tap(y)
    return y, new_state


def fold(
    layer: Layer,
    flow: Any,
    leaf: Callable[[tuple[str, ...], Layer, Any], Any],
    path: tuple[str, ...] = (),
) -> Any:
    """Fold over a layer tree in data-flow order: ``leaf(path, layer, flow) -> flow`` per leaf.

    A layer with a ``route`` is a combinator: its ``route(flow, visit)`` routes the flow through
    its children (`jcnn.layers.RouteFn`). Every other layer is a leaf. Errors carry their path
    (`child_path`). `jcnn.summary` is this fold with a flow of (shape, receptive field).

    >>> from jcnn.layers import Dense, Flatten, Relu, serial
    >>> names = []
    >>> _ = fold(serial(Flatten(), Dense(3), Relu()), None, lambda p, l, f: names.append((p, l.name)))
    >>> names
    [(('serial[0]',), 'Flatten'), (('serial[1]',), 'Dense'), (('serial[2]',), 'Relu')]
    """
    if layer.route is None:
        return leaf(path, layer, flow)

    def visit(segment: str, child: Layer, child_flow: Any, /) -> Any:
        with child_path(segment):
            return _tap(fold(child, child_flow, leaf, path + (segment,)))

    return layer.route(flow, visit)


def _abstract_init(layer: Layer, input_shape: Any) -> tuple[Any, int]:
    """``(output_shape, param_count)`` from ``init`` traced abstractly (nothing allocated)."""
    box = {}

    def run(key):
        out, params, _ = layer.init(key, input_shape)
        box["out"] = out
        return params

    params = jax.eval_shape(run, jax.random.key(0))
    count = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
    return box["out"], count


def output_shape(layer: Layer, input_shape: Any) -> Any:
    """A layer's per-example output shape, by `fold`: leaves' ``info``, or an abstract ``init``.

    >>> from jcnn.layers import Conv, MaxPool, serial
    >>> output_shape(serial(Conv(8, 3), MaxPool(2)), (28, 28, 1))
    (13, 13, 8)
    """

    def leaf(path, layer, shape):
        del path
        if layer.info is not None:
            return layer.info(shape).output_shape
        return _abstract_init(layer, shape)[0]

    return fold(layer, input_shape, leaf)


def map_layers(model: Layer, fn: Callable[[Layer], Layer]) -> Layer:
    """``model`` with ``fn(layer)`` in place of every layer, bottom-up; combinators rebuilt.

    Every layer held in a spec field (a combinator's children, a wrapper's layer) is mapped
    first, then ``fn`` gets the layer rebuilt from them (so ``fn`` sees every leaf and every
    combinator, the model last). Layers that ``fn`` returns unchanged stay the same objects.
    A hand-written combinator (no spec) cannot be rebuilt: if ``fn`` would change a child of
    one, it raises.

    Args:
      model: a `Layer`.
      fn: ``layer -> layer``, e.g. ``lambda l: l.replace(impl="xla") if l.name == "Conv" else l``.

    Returns:
      The mapped model (its ``input_shape`` kept).

    Raises:
      TypeError: ``fn`` returns something other than a Layer, or would change a child of a
        combinator that has no spec.

    >>> from jcnn.layers import Conv, Relu, serial
    >>> model = serial(Conv(8, 3), Relu(), Conv(4, 3))
    >>> map_layers(model, lambda l: l.replace(impl="xla") if l.name == "Conv" else l)
    serial(Conv(8, 3, impl='xla'), Relu(), Conv(4, 3, impl='xla'))
    """
    if not isinstance(model, Layer):
        raise TypeError(f"map_layers: `model` must be a Layer, got {model!r}.")
    if not callable(fn):
        raise TypeError(f"map_layers: `fn` must be a callable layer -> layer, got {fn!r}.")
    return _map(model, fn)


def _map_value(value: Any, fn: Callable[[Layer], Layer]) -> Any:
    if isinstance(value, Layer):
        return _map(value, fn)
    if isinstance(value, tuple):
        return tuple(_map_value(v, fn) for v in value)
    return value


def _map(layer: Layer, fn: Callable[[Layer], Layer]) -> Layer:
    if layer.spec is not None:
        changes = {}
        for f in dataclasses.fields(layer.spec):  # type: ignore[arg-type]
            value = getattr(layer.spec, f.name)
            mapped = _map_value(value, fn)
            if mapped is not value and mapped != value:
                changes[f.name] = mapped
        if changes:
            layer = layer.replace(**changes)
    else:
        for segment, child in layer.children:
            if _map(child, fn) != child:
                raise TypeError(
                    f"map_layers: {layer.name} is a hand-written combinator (no spec), so it cannot be"
                    f" rebuilt with its child {segment} changed; build it from a"
                    " jcnn.layers.CombinatorSpec (CONTRIBUTING.md)."
                )
    out = fn(layer)
    if not isinstance(out, Layer):
        raise TypeError(f"map_layers: `fn` must return a Layer, got {out!r} for {layer!r}.")
    return out


def spec_record(layer: Layer) -> dict[str, Any]:
    """A model's hyperparameters as a JSON-able nested record: every field of every layer's spec.

    ``{"layer": name, field: value, ...}``, child layers as records of their own. A hand-written
    layer records its name (and a hand-written combinator its children by path). The run
    identity stores this as its ``model``, so a resume with any changed hyperparameter (a
    layer's precision, param_dtype, impl, initializer, ...) is refused.

    >>> from jcnn.layers import Dense, Flatten, serial
    >>> spec_record(serial(Flatten(), Dense(10)))["layers"][1]["out_features"]
    10
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"spec_record: `layer` must be a Layer, got {layer!r}.")
    if layer.spec is None:
        out: dict[str, Any] = {"layer": layer.name}
        children = layer.children
        if children:
            out["children"] = {segment: spec_record(child) for segment, child in children}
        return out
    out = {"layer": layer.spec.name}
    for f in dataclasses.fields(layer.spec):  # type: ignore[arg-type]
        out[f.name] = record(getattr(layer.spec, f.name))
    return out


def layer_paths(model: Layer) -> tuple[str, ...]:
    """Every path in ``model``, combinators and leaves, in data-flow order, as `jcnn.summary` names them.

    >>> from jcnn.layers import Dense, Relu, residual, serial
    >>> layer_paths(serial(Dense(3), residual(Relu())))
    ('serial[0]', 'serial[1]', 'serial[1].residual.body', 'serial[1].residual.add')
    """
    out: list[str] = []

    def walk(layer: Layer, prefix: str) -> None:
        for segment, child in layer.children:
            path = f"{prefix}.{segment}" if prefix else segment
            out.append(path)
            walk(child, path)

    walk(model, "")
    return tuple(out)
