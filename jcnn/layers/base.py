"""The `Layer` type, its function Protocols, the summary metadata, and `batched`.

A layer is a pair of pure functions written for ONE example (no batch dim)::

    out_shape, params, state = layer.init(key, input_shape)
    y, state = layer.apply(params, state, x, *, key=None, train=False)

`Layer` is a ``NamedTuple`` of exactly those two fields, so ``init, apply = layer`` unpacks it
like any pair (optax's ``GradientTransformation`` style). The summary metadata (name, kind,
hyperparameters, children, the per-layer ``info`` function) lives beside the two fields, in the
instance's ``__dict__`` of a subclass, never in the tuple: adding it as NamedTuple fields would
make ``init, apply = layer`` fail with "too many values to unpack".
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, Union

import jax
import jax.numpy as jnp

from jcnn import shapes
from jcnn.shapes import Pair, ReceptiveField, Shape, ShapeError

__all__ = [
    "Shape",
    "InitFn",
    "ApplyFn",
    "InfoFn",
    "RFWindow",
    "LayerInfo",
    "LayerMeta",
    "Layer",
    "batched",
    "GLOBAL",
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
    flops: int
    padding: tuple[Pair, ...] | None = None  # concrete (lo, hi) per spatial dim
    warning: str | None = None  # explain_fit's words where a stride leaves input unread
    rf: RFRule = None


class InfoFn(Protocol):
    """``info(input_shape) -> LayerInfo``: counts from shapes alone, no arrays."""

    def __call__(self, input_shape: Shape) -> LayerInfo: ...


class LayerMeta(NamedTuple):
    """A layer's description for `jcnn.summary` and for error paths."""

    name: str  # constructor name, e.g. "Conv", "serial"
    kind: str  # "conv", "pool", "dense", ..., or "serial" / "parallel" / "residual" / "custom"
    hparams: dict  # canonical hyperparameters
    children: tuple  # ((path segment, Layer), ...) for combinators, () for leaves
    info: InfoFn | None  # None for combinators (the summary walks their children) and custom layers
    description: str  # what repr() shows, e.g. "Conv(20, 5, padding=2)"


class _InitApply(NamedTuple):
    init: InitFn
    apply: ApplyFn


class Layer(_InitApply):
    """A layer as two pure functions, written for one example.

    ``init(key, input_shape) -> (output_shape, params, state)`` computes the output shape with
    `jcnn.shapes` arithmetic (plain ints, per example) and creates the parameters;
    ``apply(params, state, x, *, key=None, train=False) -> (y, state)`` runs one example.
    Stateless layers have ``state == ()``; parameter-free ones ``params == ()``. Batch with
    `batched` or ``jax.vmap``.

    It is a ``NamedTuple`` of exactly ``(init, apply)``: ``init, apply = layer`` works,
    ``layer[0] is layer.init``. The metadata (``name``, ``kind``, ``hparams``, ``children``,
    ``info``) sits outside the tuple, so it never disturbs unpacking, equality or ``len``.

    Args:
      init: the init function.
      apply: the apply function.
      name: a display name (defaults to ``"layer"``).
      kind: a category; combinators use ``"serial"``, ``"parallel"``, ``"residual"``.
      hparams: hyperparameters to show.
      children: ``((path_segment, child_layer), ...)`` for combinators.
      info: ``info(input_shape) -> LayerInfo`` for `jcnn.summary`; without one the summary
        falls back to ``jax.eval_shape(init)`` and shows no FLOPs or receptive field.
      description: the ``repr``; defaults to ``name``.

    >>> import jax, jax.numpy as jnp
    >>> def init(key, input_shape):
    ...     return input_shape, (), ()
    >>> def apply(params, state, x, *, key=None, train=False):
    ...     return 2 * x, state
    >>> double = Layer(init, apply, name="Double")
    >>> init_fn, apply_fn = double
    >>> apply_fn((), (), jnp.ones(3))[0].tolist()
    [2.0, 2.0, 2.0]
    """

    def __new__(
        cls,
        init: InitFn,
        apply: ApplyFn,
        *,
        name: str = "layer",
        kind: str = "custom",
        hparams: dict | None = None,
        children: tuple = (),
        info: InfoFn | None = None,
        description: str | None = None,
    ):
        if not callable(init) or not callable(apply):
            raise TypeError(
                f"Layer: `init` and `apply` must be callables, got {type(init).__name__} and"
                f" {type(apply).__name__}."
            )
        self = super().__new__(cls, init, apply)
        meta = LayerMeta(name, kind, dict(hparams or {}), tuple(children), info, description or name)
        self.__dict__["meta"] = meta
        return self

    def __setattr__(self, name, value):
        raise AttributeError(f"Layer is immutable; cannot set `{name}`.")

    def __getattr__(self, name):
        # Only reached when normal lookup fails: a Layer made by tuple.__new__ (jax tree_unflatten,
        # NamedTuple._make) has no metadata yet; give it the defaults.
        if name == "meta":
            meta = LayerMeta("layer", "custom", {}, (), None, "layer")
            self.__dict__["meta"] = meta
            return meta
        raise AttributeError(f"'Layer' object has no attribute {name!r}")

    def _replace(self, **kwargs) -> Layer:
        m = self.meta
        return Layer(
            kwargs.pop("init", self.init),
            kwargs.pop("apply", self.apply),
            name=m.name,
            kind=m.kind,
            hparams=m.hparams,
            children=m.children,
            info=m.info,
            description=m.description,
            **kwargs,
        )

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def hparams(self) -> dict:
        return dict(self.meta.hparams)

    @property
    def children(self) -> tuple:
        return self.meta.children

    @property
    def info(self) -> InfoFn | None:
        return self.meta.info

    def __repr__(self) -> str:
        return self.meta.description


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


def check_rank(x, d: int, where: str, source: str) -> None:
    """Apply-time check: ``x`` is one example with ``d`` spatial dims (shapes only: free in jit)."""
    if x.ndim != d + 1:
        hint = ""
        if x.ndim == d + 2:
            hint = " `apply` takes one example; for a batch use jcnn.layers.batched(layer) or jax.vmap."
        raise ShapeError(
            f"{where}: expects one example of shape (*spatial, channels) with {d} spatial dim(s)"
            f" ({source}), got x of shape {tuple(x.shape)}.{hint}"
        )


def positive_int(value, where: str, name: str) -> int:
    """A Python int >= 1 (numpy ints accepted; bools and floats are TypeErrors)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{where}: `{name}` must be an int, got {value!r} of type {type(value).__name__}.")
    v = operator.index(value)
    if v < 1:
        raise ValueError(f"{where}: `{name}` must be >= 1, got {v}.")
    return v


def as_bool(value, where: str, name: str) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{where}: `{name}` must be True or False, got {value!r}.")


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


def wrap_child_error(exc: BaseException, segment: str, child: Layer):
    """Re-raise ``exc``, raised inside ``child`` at ``segment``, with the path prefixed.

    ``"Dense: ..."`` raised by child 3 of a serial becomes ``"serial[3] Dense: ..."``; an error
    that already carries a path (from a nested combinator) gets ``segment`` prepended:
    ``"serial[2].parallel[0] Conv: ..."``. Only ``ValueError`` / ``TypeError`` (our errors) are
    rewritten; anything else propagates unchanged.
    """
    if not isinstance(exc, (ValueError, TypeError)):
        raise exc
    where = getattr(exc, "_jcnn_where", None)
    if where is None:
        leaf, msg = child.name, str(exc)
        if msg.startswith(f"{leaf}: "):
            msg = msg[len(leaf) + 2 :]
        path = (segment,)
    else:
        path, leaf, msg = where
        path = (segment, *path)
    try:
        new = type(exc)(f"{'.'.join(path)} {leaf}: {msg}")
    except Exception:
        raise exc from None
    new._jcnn_where = (path, leaf, msg)
    raise new.with_traceback(exc.__traceback__) from None


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


def output_shape(layer: Layer, input_shape):
    """A layer's per-example output shape, from its ``info`` or an abstract ``init``."""
    if layer.info is not None:
        return layer.info(input_shape).output_shape
    box = {}

    def run(key):
        box["out"] = layer.init(key, input_shape)[0]
        return ()

    jax.eval_shape(run, jax.random.key(0))
    return box["out"]


def initial_rf(input_shape) -> tuple[ReceptiveField, ...]:
    """The receptive field of the input itself: one pixel per spatial dim (all dims but the last)."""
    return tuple(ReceptiveField(1, 1, 0.0) for _ in range(max(len(input_shape) - 1, 0)))


def fit_warning(in_spatial, kernel_size, strides, pads, dilation) -> str | None:
    """`shapes.explain_fit`'s words for the spatial dims where a stride leaves input unread."""
    by_message: dict[str, list[int]] = {}
    for i, (w, k, s, p, r) in enumerate(zip(in_spatial, kernel_size, strides, pads, dilation)):
        report = shapes.explain_fit(w, k, s, p, r)
        if report.unused:
            by_message.setdefault(report.message, []).append(i)
    notes = [
        f"spatial dim{'s' if len(dims) > 1 else ''} {', '.join(map(str, dims))}: {message}"
        for message, dims in by_message.items()
    ]
    return " ".join(notes) if notes else None


# --------------------------------------------------------------------------------------------
# batched
# --------------------------------------------------------------------------------------------


def batched(layer: Layer, axis_name: str | None = "batch") -> Layer:
    """The vmapped form of a per-example layer: batched shapes and arrays, state returned once.

    ``init(key, (n, *shape))`` calls the layer's ``init`` on ``shape`` and puts ``n`` back in
    front of the output shape (``n`` is passed through untouched: use the real batch size).
    ``apply(params, state, x, *, key=None, train=False)`` maps over the leading axis of ``x``
    with ``jax.vmap(..., axis_name=axis_name)``: ``params`` and ``state`` are shared, ``key`` is
    split into one key per example (so Dropout masks differ between examples), and the new
    state comes out once (``out_axes=None``), which holds because BatchNorm's running
    statistics are ``pmean``-ed over ``axis_name`` and so equal for every example.

    Args:
      layer: a per-example `Layer`.
      axis_name: the vmapped axis' name; BatchNorm reads batch statistics over it.

    Returns:
      A `Layer` on batches.

    >>> import jax, jax.numpy as jnp
    >>> from jcnn.layers import Dense, batched
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
        n = leaves[0].shape[0]
        keys = None if key is None else jax.random.split(key, n)

        def one(xi, ki):
            return layer.apply(params, state, xi, key=ki, train=train)

        return jax.vmap(one, in_axes=(0, 0), out_axes=(0, None), axis_name=axis_name)(x, keys)

    return Layer(
        init,
        apply,
        name="batched",
        kind="batched",
        hparams={"axis_name": axis_name},
        children=(("batched", layer),),
        description=f"batched({layer!r})",
    )
