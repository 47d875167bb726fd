"""The `Layer` type: two pure functions plus plain metadata; its Protocols; the summary's info.

A layer is a pair of pure functions with per-example semantics::

    out_shape, params, state = layer.init(key, input_shape)          # input_shape: one example
    y, state = layer.apply(params, state, x, *, key=None, train=False)

`Layer` is a frozen dataclass whose fields are exactly what it is: ``init``, ``apply``, and the
metadata ``name``, ``spec`` (canonical hyperparameters), ``children`` (for combinators),
``info`` (what `jcnn.summary` folds over), ``takes_batch`` and ``description``. It iterates as
its pair, so ``init, apply = layer`` works (optax's ``GradientTransformation`` style).

Leading batch dims. A layer with ``takes_batch=True`` (every built-in layer once merged, every
combinator) also accepts ``batch_ndim`` leading batch dims::

    y, state = layer.apply(params, state, x, *, key=None, train=False, batch_ndim=0)

``batch_ndim`` says how many leading axes of ``x`` are batch axes; the rest is one example,
whose semantics are unchanged (``batch_ndim=0``, the default, is exactly the per-example call).
The count is passed rather than guessed because some layers cannot tell a batch axis from an
example's axis by looking at ``x``: `Flatten`, `GroupNorm`, and positive ``axis``/``axes`` of
`LogSoftmax`, `Softmax`, `Concat`, `LayerNorm`. The count is the same for every layer of a
model, so the combinators pass it down unchanged and `batched` sets it to 1. User layers with
``takes_batch=False`` never see it: the combinators ``jax.vmap`` them over the batch axes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, Union

import jax
import jax.numpy as jnp

from jcnn import checks, shapes
from jcnn.shapes import Pair, ReceptiveField, Shape, ShapeError

__all__ = [
    "Shape",
    "InitFn",
    "ApplyFn",
    "BatchApplyFn",
    "InfoFn",
    "ComposeFn",
    "Visit",
    "RFWindow",
    "LayerInfo",
    "Layer",
    "GLOBAL",
    "child_path",
    "fold",
]

GLOBAL = "global"  # receptive field that covers the whole input (after Flatten, Dense, global pool)


class InitFn(Protocol):
    """``init(key, input_shape) -> (output_shape, params, state)``; shapes per example."""

    def __call__(self, key: jax.Array, input_shape: Shape) -> tuple[Shape, Any, Any]: ...


class ApplyFn(Protocol):
    """``apply(params, state, x, *, key=None, train=False) -> (y, state)`` for one example."""

    def __call__(
        self, params: Any, state: Any, x: jax.Array, *, key: jax.Array | None = None, train: bool = False
    ) -> tuple[jax.Array, Any]: ...


class BatchApplyFn(Protocol):
    """The ``apply`` of a layer with ``takes_batch=True``: ``x`` has ``batch_ndim`` leading batch dims."""

    def __call__(
        self,
        params: Any,
        state: Any,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        train: bool = False,
        batch_ndim: int = 0,
    ) -> tuple[jax.Array, Any]: ...


class RFWindow(NamedTuple):
    """One spatial dim of a sliding window, as the receptive-field arithmetic needs it.

    ``stride`` and ``pad_lo`` may be fractional for adaptive pooling, whose windows are not
    evenly spaced (see `jcnn.layers.AdaptiveAvgPool`).
    """

    kernel_size: int
    stride: float = 1
    pad_lo: float = 0
    dilation: int = 1
    transpose: bool = False


# How a layer changes the receptive field: None = elementwise (unchanged), GLOBAL = every output
# sees the whole input, "merge" = union of the fields of a tuple input (Add, Concat), or one
# RFWindow per spatial dim.
RFRule = Union[None, str, tuple[RFWindow, ...]]


class LayerInfo(NamedTuple):
    """What `jcnn.summary` shows for one leaf layer on one per-example input shape.

    ``flops`` counts a multiply-add as 2 and each bias add as 1 (see `jcnn.summary`).
    """

    output_shape: Any  # a Shape, or a tuple of Shapes
    params: int
    flops: int | None
    padding: tuple[Pair, ...] | None = None  # concrete (lo, hi) per spatial dim
    warning: str | None = None  # explain_fit's words where a stride leaves input unread
    rf: RFRule = None


class InfoFn(Protocol):
    """A leaf's ``info(input_shape) -> LayerInfo``: counts from shapes alone, no arrays."""

    def __call__(self, input_shape: Shape) -> LayerInfo: ...


class Visit(Protocol):
    """``visit(segment, child, flow) -> flow``: run a fold through one child, named ``segment``."""

    def __call__(self, segment: str, child: Layer, flow: Any) -> Any: ...


class ComposeFn(Protocol):
    """A combinator's ``info(flow, visit) -> flow``: route ``flow`` through its children.

    ``flow`` is opaque (the summary's is a shape with its receptive field; `fold`'s caller
    decides); a combinator only passes it to ``visit``, groups flows into tuples (branches) and
    returns the flow of its output. See `serial` for the simplest one.
    """

    def __call__(self, flow: Any, visit: Visit) -> Any: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Layer:
    """A layer: ``init`` and ``apply``, and its metadata as plain fields.

    ``init(key, input_shape) -> (output_shape, params, state)`` computes the output shape with
    `jcnn.shapes` arithmetic (plain ints, per example) and creates the parameters;
    ``apply(params, state, x, *, key=None, train=False) -> (y, state)`` runs one example.
    Stateless layers have ``state == ()``; parameter-free ones ``params == ()``. Batch with
    `jcnn.layers.batched`.

    It iterates as its pair: ``init, apply = layer``.

    Args:
      init: the init function.
      apply: the apply function.
      name: a display name, the constructor's (``"Conv"``, ``"serial"``); default ``"layer"``.
      spec: the canonical hyperparameters, any frozen (hashable) value; ``None`` for none.
      children: ``((path_segment, child_layer), ...)`` for combinators, ``()`` for leaves.
      info: for a leaf, ``info(input_shape) -> LayerInfo`` (`InfoFn`); for a layer with
        ``children``, ``info(flow, visit) -> flow`` (`ComposeFn`), which routes the summary
        through its children. Without one the summary shows a single row from an abstract
        ``init`` (no FLOPs, no receptive field).
      takes_batch: ``apply`` accepts ``batch_ndim=`` and that many leading batch dims
        (`BatchApplyFn`). ``False`` (the default, for layers written for one example): the
        combinators and `jcnn.layers.batched` run it under ``jax.vmap`` instead.
      description: what ``repr`` shows, e.g. ``"Conv(20, 5, padding=2)"``; default ``name``.

    >>> import jax, jax.numpy as jnp
    >>> def init(key, input_shape):
    ...     return input_shape, (), ()
    >>> def apply(params, state, x, *, key=None, train=False):
    ...     return 2 * x, state
    >>> double = Layer(init, apply, name="Double")
    >>> init_fn, apply_fn = double
    >>> apply_fn((), (), jnp.ones(3))[0].tolist()
    [2.0, 2.0, 2.0]
    >>> double
    Double
    """

    init: InitFn
    apply: ApplyFn | BatchApplyFn
    _: dataclasses.KW_ONLY
    name: str = "layer"
    spec: Any = None
    children: tuple[tuple[str, Layer], ...] = ()
    info: InfoFn | ComposeFn | None = None
    takes_batch: bool = False
    description: str | None = None

    def __post_init__(self):
        if not callable(self.init) or not callable(self.apply):
            raise TypeError(
                f"Layer: `init` and `apply` must be callables, got {type(self.init).__name__} and"
                f" {type(self.apply).__name__}."
            )
        if not isinstance(self.name, str):
            raise TypeError(f"Layer: `name` must be a str, got {self.name!r}.")
        if not isinstance(self.children, tuple) or not all(
            isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str) and isinstance(c[1], Layer)
            for c in self.children
        ):
            raise TypeError(
                f"Layer: `children` must be a tuple of (path_segment, Layer) pairs, got {self.children!r}."
            )
        if self.info is not None and not callable(self.info):
            raise TypeError(f"Layer: `info` must be a callable or None, got {self.info!r}.")
        checks.as_bool(self.takes_batch, "Layer", "takes_batch")
        if self.description is not None and not isinstance(self.description, str):
            raise TypeError(f"Layer: `description` must be a str or None, got {self.description!r}.")

    def __iter__(self) -> Iterator[Callable]:
        return iter((self.init, self.apply))

    def __repr__(self) -> str:
        return self.name if self.description is None else self.description


# --------------------------------------------------------------------------------------------
# Errors inside children name their path; folds over the layer tree
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def child_path(segment: str):
    """Errors raised inside the block get ``segment`` prefixed to their path.

    The one mechanism behind every path in an error: the combinators wrap each child's
    ``init`` and ``apply`` in it, `fold` each visit. ``"Dense: ..."`` raised by child 3 of a
    serial reads ``"serial[3] Dense: ..."``; nested, ``"serial[2].parallel[0] Conv: ..."``.
    The leaf's message is kept whole and the path kept apart (``exc.jcnn_path``), so nothing is
    parsed back out of a message. Only ``ValueError`` / ``TypeError`` (jcnn's errors) are
    rewritten, into the same class; anything else passes through unchanged.

    The block is also a ``jax.named_scope``: the operations traced inside it carry the path in
    their names (``serial[3]/Dense/dot_general`` in a jaxpr's name stack, the compiled HLO's
    ``op_name`` metadata, and profiler traces; ``experiments/profile_step.py`` reads it).

    >>> with child_path("serial[3]"):
    ...     raise ValueError("Dense: input has 4 features.")
    Traceback (most recent call last):
    ...
    ValueError: serial[3] Dense: input has 4 features.
    """
    try:
        with jax.named_scope(segment):
            yield
    except (ValueError, TypeError) as exc:
        path = (segment, *getattr(exc, "jcnn_path", ()))
        message = getattr(exc, "jcnn_message", None)
        if message is None:
            message = str(exc)
        try:
            new = type(exc)(f"{'.'.join(path)} {message}")
        except Exception:  # an exception class with another constructor (jax's): leave it be
            raise exc from None
        new.jcnn_path, new.jcnn_message = path, message
        raise new.with_traceback(exc.__traceback__) from None


def fold(layer: Layer, flow, leaf: Callable[[tuple[str, ...], Layer, Any], Any], path: tuple[str, ...] = ()):
    """Fold over a layer tree in data-flow order: ``leaf(path, layer, flow) -> flow`` per leaf.

    A layer with ``children`` and an ``info`` is a combinator: its ``info(flow, visit)``
    routes the flow through its children (`ComposeFn`). Anything else, a layer without
    children or a combinator without ``info``, is a leaf. Errors carry their path
    (`child_path`). `jcnn.summary` is this fold with a flow of (shape, receptive field).

    >>> from jcnn.layers import Dense, Flatten, Relu, serial
    >>> names = []
    >>> _ = fold(serial(Flatten(), Dense(3), Relu()), None, lambda p, l, f: names.append((p, l.name)))
    >>> names
    [(('serial[0]',), 'Flatten'), (('serial[1]',), 'Dense'), (('serial[2]',), 'Relu')]
    """
    if layer.children and layer.info is not None:

        def visit(segment: str, child: Layer, child_flow):
            with child_path(segment):
                return fold(child, child_flow, leaf, path + (segment,))

        return layer.info(flow, visit)
    return leaf(path, layer, flow)


def abstract_init(layer: Layer, input_shape):
    """``(output_shape, param_count)`` from ``init`` traced abstractly (nothing allocated)."""
    box = {}

    def run(key):
        out, params, _ = layer.init(key, input_shape)
        box["out"] = out
        return params

    params = jax.eval_shape(run, jax.random.key(0))
    count = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
    return box["out"], count


def output_shape(layer: Layer, input_shape):
    """A layer's per-example output shape, by `fold`: leaves' ``info``, or an abstract ``init``."""

    def leaf(path, layer, shape):
        del path
        if layer.info is not None:
            return layer.info(shape).output_shape
        return abstract_init(layer, shape)[0]

    return fold(layer, input_shape, leaf)


# --------------------------------------------------------------------------------------------
# Helpers shared by the layer modules
# --------------------------------------------------------------------------------------------


def is_shape(value) -> bool:
    """True for a single shape (a sequence of ints), False for a tuple of shapes."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return False
    return all(not isinstance(v, (Sequence, bool)) and hasattr(v, "__index__") for v in value)


def input_shape_of(input_shape, where: str) -> Shape:
    """A per-example input shape as a tuple of Python ints >= 1, or a TypeError/ShapeError."""
    if not is_shape(input_shape):
        if isinstance(input_shape, Sequence) and not isinstance(input_shape, (str, bytes)):
            raise TypeError(
                f"{where}: `input_shape` must be one shape (a tuple of ints, per example), got"
                f" {tuple(input_shape)!r}; a tuple of shapes goes to Add or Concat."
            )
        raise TypeError(
            f"{where}: `input_shape` must be a tuple of ints (the shape of one example), got {input_shape!r}."
        )
    shape = tuple(operator.index(s) for s in input_shape)
    if any(s < 1 for s in shape):
        raise ShapeError(f"{where}: every dim of `input_shape` must be >= 1, got {shape}.")
    return shape


def shapes_of(input_shape, where: str) -> tuple[Shape, ...]:
    """A tuple of per-example shapes (the input of Add / Concat)."""
    if is_shape(input_shape) or not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise ShapeError(
            f"{where}: expects a tuple of inputs (e.g. from parallel(...)), got the single shape"
            f" {tuple(input_shape) if isinstance(input_shape, Sequence) else input_shape!r}."
        )
    return tuple(input_shape_of(s, where) for s in input_shape)


def example_shape(x, batch_ndim: int, where: str) -> Shape:
    """The per-example part of ``x.shape`` under ``batch_ndim`` leading batch dims (apply time)."""
    if batch_ndim < 0 or x.ndim < batch_ndim:
        raise ShapeError(
            f"{where}: `batch_ndim` must be between 0 and x's rank, got {batch_ndim} for x of shape"
            f" {tuple(x.shape)}."
        )
    return tuple(x.shape[batch_ndim:])


def example_axis(axis: int, rank: int, batch_ndim: int) -> int:
    """The axis of the batched array that is ``axis`` of one example of ``rank`` dims.

    Negative axes count from the end, so they name the same axis with or without batch dims;
    a non-negative one is shifted past the ``batch_ndim`` leading batch axes.
    """
    return batch_ndim + axis % rank


def spatial_example(x, d: int, source: str, where: str, batch_ndim: int, dtypes: str):
    """Apply-time check of a spatial layer's ``x``: an array of ``dtypes`` (see
    `jcnn.checks.as_array`) with exactly ``batch_ndim`` batch dims before one ``(*spatial, c)``
    example of ``d`` spatial dims. Shapes and dtypes only, so free under ``jit``."""
    x = checks.as_array(x, where, "x", dtypes)
    shapes.check_input(x.shape, d, source, where, batch_ndim)
    return x


def spatial_input(input_shape, d: int, where: str, source: str) -> Shape:
    """Check ``input_shape`` is ``(*spatial, c)`` with ``d`` spatial dims; ``source`` says why d."""
    shape = input_shape_of(input_shape, where)
    if len(shape) != d + 1:
        hint = ""
        if len(shape) == d + 2:
            hint = " Shapes are per example: drop the batch dim, or use jcnn.layers.batched(layer)."
        elif len(shape) == d:
            hint = " A single-channel input needs a trailing channel dim, e.g. (28, 28, 1)."
        raise ShapeError(
            f"{where}: expects one example of shape (*spatial, channels) with {d} spatial dim(s)"
            f" ({source}), got input shape {shape}.{hint}"
        )
    return shape


def initializer(fn, default, where: str, name: str):
    """``fn`` if given (``(key, shape, dtype) -> array``), else ``default``."""
    if fn is None:
        return default
    if not callable(fn):
        raise TypeError(
            f"{where}: `{name}` must be an initializer `(key, shape, dtype) -> array`, e.g."
            f" jax.nn.initializers.zeros, got {fn!r}."
        )
    return fn


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _create_jit(init, key, shape, dtype):
    return init(key, shape, dtype)


def create_param(init, key, shape: Shape, dtype) -> jax.Array:
    """``init(key, shape, dtype)`` compiled as one computation per (initializer, shape, dtype).

    Eager initializers dispatch (and compile) every primitive separately: a truncated normal is
    about twenty of them. One jitted call is one compilation, cached across layers.
    """
    dtype = jnp.dtype(dtype)
    try:
        hash(init)
    except TypeError:  # an unhashable callable cannot be a static argument: run it as is
        return init(key, shape, dtype)
    return _create_jit(init, key, tuple(shape), dtype)


def describe(name: str, args: tuple = (), kwargs: dict | None = None, defaults: dict | None = None) -> str:
    """``Conv(20, 5, padding=2)``: positional args, then keyword args that differ from defaults."""
    defaults = defaults or {}
    parts = [_short(a) for a in args]
    for k, v in (kwargs or {}).items():
        if k in defaults and _same(v, defaults[k]):
            continue
        parts.append(f"{k}={_short(v)}")
    return f"{name}({', '.join(parts)})"


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return a is b


def _short(v) -> str:
    if callable(v) and not isinstance(v, Layer):
        return getattr(v, "__name__", type(v).__name__)
    return repr(v)


def map_shapes(fn: Callable[[Shape], Shape], shape):
    """Apply ``fn`` to a shape, or to each shape of a (nested) tuple of shapes."""
    if is_shape(shape):
        return fn(tuple(shape))
    return tuple(map_shapes(fn, s) for s in shape)


def numel(shape) -> int:
    """Elements in a shape or a (nested) tuple of shapes."""
    if is_shape(shape):
        return math.prod(shape)
    return sum(numel(s) for s in shape)


def initial_rf(input_shape) -> tuple[ReceptiveField, ...]:
    """The receptive field of the input itself: one pixel per spatial dim (all dims but the last)."""
    return tuple(ReceptiveField(1, 1, 0.0) for _ in range(max(len(input_shape) - 1, 0)))
