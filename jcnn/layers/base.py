"""The `Layer` type: two pure functions, the spec they come from, and the summary's metadata.

A layer is a pair of pure functions with per-example semantics that also take leading batch
dims::

    out_shape, params, state = layer.init(key, input_shape)          # input_shape: one example
    y, state = layer.apply(params, state, x, *, key=None, train=False, batch_ndim=0)

``batch_ndim`` says how many leading axes of ``x`` are batch axes; the rest is one example,
whose semantics are unchanged (``batch_ndim=0``, the default, is exactly the per-example call).
The count is passed rather than guessed because some layers cannot tell a batch axis from an
example's axis by looking at ``x``: `Flatten`, `GroupNorm`, and positive ``axis``/``axes`` of
`LogSoftmax`, `Softmax`, `Concat`, `LayerNorm`. The combinators pass it down unchanged and
`jcnn.layers.batched` sets it to 1. A layer written for one example is wrapped once,
``Layer.per_example(init, apply)``, which runs it under ``jax.vmap`` over the batch dims.

Every built-in layer is ``Layer.of(spec)``: `jcnn.layers.spec` explains specs.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import operator
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.checks import ShapeError
from jcnn.layers.info import LayerInfo
from jcnn.layers.spec import CombinatorSpec, LayerSpec, LeafSpec, describe
from jcnn.shapes import Shape

__all__ = [
    "Shape",
    "InitFn",
    "ApplyFn",
    "InfoFn",
    "RouteFn",
    "Visit",
    "Layer",
    "BATCH_AXIS",
    "prng_key",
]

# The axis name of the jax.vmap that runs a per-example layer over a batch: BatchNorm's default
# `axis_name`, so a BatchNorm inside a user's per-example layer still sees the batch.
BATCH_AXIS = "batch"


class InitFn(Protocol):
    """``init(key, input_shape) -> (output_shape, params, state)``; shapes per example."""

    def __call__(self, key: Any, input_shape: Any, /) -> tuple[Any, Any, Any]: ...


class ApplyFn(Protocol):
    """``apply(params, state, x, *, key=None, train=False, batch_ndim=0) -> (y, state)``."""

    def __call__(
        self, params: Any, state: Any, x: Any, /, *, key: Any = None, train: bool = False, batch_ndim: int = 0
    ) -> tuple[Any, Any]: ...


class InfoFn(Protocol):
    """A leaf's ``info(input_shape) -> LayerInfo``: counts from shapes alone, no arrays."""

    def __call__(self, input_shape: Any, /) -> LayerInfo: ...


class Visit(Protocol):
    """``visit(segment, child, flow) -> flow``: run a fold through one child, named ``segment``."""

    def __call__(self, segment: str, child: Layer, flow: Any, /) -> Any: ...


class RouteFn(Protocol):
    """A combinator's ``route(flow, visit) -> flow``: route ``flow`` through its children.

    ``flow`` is opaque (the summary's is a shape with its receptive field; `jcnn.layers.fold`'s
    caller decides): a route only passes flows to ``visit``, groups them into tuples (branches)
    and returns the flow of its output. The layer's ``children`` are what its route visits, found
    by running it once with a recording ``visit``. See `jcnn.layers.serial` for the simplest one.
    """

    def __call__(self, flow: Any, visit: Visit, /) -> Any: ...


def prng_key(key: Any, where: str) -> Any:
    """``key`` as a PRNG key: None, a key (typed or raw ``uint32[2]``), or an int seed (as
    ``jax.random.key(seed)``). Every layer that uses its key goes through this.

    Raises:
      TypeError: anything else.

    >>> prng_key(0, "Dropout").dtype
    key<fry>
    """
    if key is None:
        return None
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", (None,)))
    if not isinstance(key, (bool, np.bool_)):
        if isinstance(key, int) or (dtype is not None and shape == () and jnp.issubdtype(dtype, jnp.integer)):
            return jax.random.key(key)
        if dtype is not None and (
            jnp.issubdtype(dtype, jax.dtypes.prng_key) or (dtype == jnp.uint32 and shape[-1:] == (2,))
        ):
            return key
    raise TypeError(
        f"{where}: `key` must be a PRNG key (jax.random.key(0)) or an int seed, got"
        f" {type(key).__name__} {key!r:.60}."
    )


_P = ParamSpec("_P")
_OPAQUE = object()  # the flow a route is given while its children are recorded


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Layer:
    """A layer: ``init`` and ``apply``, the spec they come from, and the summary's metadata.

    ``init(key, input_shape) -> (output_shape, params, state)`` computes the output shape with
    `jcnn.shapes` arithmetic (plain ints, per example) and creates the parameters;
    ``apply(params, state, x, *, key=None, train=False, batch_ndim=0) -> (y, state)`` runs ``x``
    with ``batch_ndim`` leading batch dims. Stateless layers have ``state == ()``;
    parameter-free ones ``params == ()``. ``key`` may be an int seed.

    It iterates as its pair: ``init, apply = layer``. Build one from a spec with `Layer.of` (every
    built-in layer), from two functions that take batches with ``Layer(init, apply)``, or from a
    per-example pair with `Layer.per_example`.

    Args:
      init: the init function (`InitFn`).
      apply: the apply function (`ApplyFn`); it must accept ``batch_ndim=``.
      name: a display name, the constructor's (``"Conv"``, ``"serial"``); default ``"layer"``.
      spec: the `jcnn.layers.LayerSpec` that ``init``, ``apply``, ``info``, ``route`` and the
        repr come from; None for a hand-written layer.
      info: a leaf's ``info(input_shape) -> LayerInfo`` (`InfoFn`) for `jcnn.summary`. Without
        one (and without a route) the summary shows one row from an abstract ``init``.
      route: a combinator's ``route(flow, visit) -> flow`` (`RouteFn`), which routes the summary
        (and every `jcnn.layers.fold`) through its children; ``children`` are derived from it.
      input_shape: the per-example input shape the layer was built for (the zoo's models
        declare theirs), or None.

    Raises:
      TypeError: a field of the wrong type, both ``info`` and ``route``, an ``apply`` without
        ``batch_ndim`` (use `Layer.per_example`), or functions that are not the spec's.

    >>> import jax, jax.numpy as jnp
    >>> def init(key, input_shape):
    ...     return input_shape, (), ()
    >>> def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
    ...     return 2 * x, state
    >>> double = Layer(init, apply, name="Double")
    >>> init_fn, apply_fn = double
    >>> apply_fn((), (), jnp.ones(3))[0].tolist()
    [2.0, 2.0, 2.0]
    >>> double
    Double
    """

    init: InitFn
    apply: ApplyFn
    _: dataclasses.KW_ONLY
    name: str = "layer"
    spec: LayerSpec | None = None
    info: InfoFn | None = None
    route: RouteFn | None = None
    input_shape: Shape | None = None

    def __post_init__(self):
        if not callable(self.init) or not callable(self.apply):
            raise TypeError(
                f"Layer: `init` and `apply` must be callables, got {type(self.init).__name__} and"
                f" {type(self.apply).__name__}."
            )
        if not isinstance(self.name, str):
            raise TypeError(f"Layer: `name` must be a str, got {self.name!r}.")
        for role in ("info", "route"):
            if getattr(self, role) is not None and not callable(getattr(self, role)):
                raise TypeError(f"Layer: `{role}` must be a callable or None, got {getattr(self, role)!r}.")
        if self.info is not None and self.route is not None:
            raise TypeError(
                f"Layer: {self.name} has both `info` (a leaf's summary row) and `route` (a"
                " combinator's routing through its children); give the one it is."
            )
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", _declared_shape(self.input_shape, self.name))
        if self.spec is None:
            _check_batch_apply(self.apply, self.name)
            return
        if not isinstance(self.spec, LayerSpec):
            raise TypeError(f"Layer: `spec` must be a jcnn.layers.LayerSpec or None, got {self.spec!r}.")
        if (self.init, self.apply, self.name, self.info, self.route) != _derived(self.spec):
            raise TypeError(
                f"Layer: {self.name}'s init, apply, name, info and route come from its spec; build"
                " it with Layer.of(spec) and change it with layer.replace(field=value)."
            )

    @classmethod
    def of(cls, spec: LayerSpec, *, input_shape: Shape | None = None) -> Layer:
        """The layer a spec defines: its ``init``, ``apply`` and ``info`` / ``route`` methods.

        >>> from jcnn.layers.dense import DenseSpec
        >>> Layer.of(DenseSpec(10))
        Dense(10)
        """
        if not isinstance(spec, LayerSpec):
            raise TypeError(f"Layer.of: `spec` must be a jcnn.layers.LayerSpec, got {spec!r}.")
        init, apply, name, info, route = _derived(spec)
        return cls(init, apply, name=name, spec=spec, info=info, route=route, input_shape=input_shape)

    @classmethod
    def per_example(
        cls,
        init: InitFn,
        apply: Callable[..., tuple[Any, Any]],
        *,
        name: str = "layer",
        info: InfoFn | None = None,
    ) -> Layer:
        """A layer from an ``apply(params, state, x, *, key=None, train=False)`` written for one example.

        On ``batch_ndim`` leading batch dims it runs under ``jax.vmap(..., axis_name="batch")``
        over them (flattened into one), with ``key`` split into one key per example and the new
        state returned once (the same for every example: stateless layers, or BatchNorm's
        statistics, which are averaged over the axis).

        >>> import jax.numpy as jnp
        >>> total = Layer.per_example(lambda k, s: ((), (), ()), lambda p, s, x, *, key=None, train=False: (x.sum(), s))
        >>> total.apply((), (), jnp.ones((4, 3)), batch_ndim=1)[0].tolist()
        [3.0, 3.0, 3.0, 3.0]
        """
        if not callable(apply):
            raise TypeError(f"Layer.per_example: `apply` must be a callable, got {apply!r}.")

        def batch_apply(params, state, x, /, *, key=None, train=False, batch_ndim=0):
            key = prng_key(key, name)
            if batch_ndim == 0:
                return apply(params, state, x, key=key, train=train)
            leaves = jax.tree_util.tree_leaves(x)
            batch = tuple(leaves[0].shape[:batch_ndim]) if leaves else ()
            if not leaves or any(
                leaf.ndim < batch_ndim or tuple(leaf.shape[:batch_ndim]) != batch for leaf in leaves
            ):
                raise ShapeError(
                    f"{name}: expects {batch_ndim} leading batch dim(s) shared by every input, got"
                    f" shapes {[tuple(leaf.shape) for leaf in leaves]}."
                )
            n = math.prod(batch)
            flat = jax.tree_util.tree_map(lambda a: a.reshape((n,) + a.shape[batch_ndim:]), x)
            keys = None if key is None else jax.random.split(key, n)

            def one(xi, ki):
                return apply(params, state, xi, key=ki, train=train)

            # out_axes=None for the state: it must be the same for every example.
            y, new_state = jax.vmap(one, in_axes=(0, 0), out_axes=(0, None), axis_name=BATCH_AXIS)(flat, keys)
            return jax.tree_util.tree_map(lambda a: a.reshape(batch + a.shape[1:]), y), new_state

        return cls(init, batch_apply, name=name, info=info)

    @staticmethod
    def constructor(spec_class: Callable[_P, LayerSpec]) -> Callable[_P, Layer]:
        """The layer constructor of a spec class: ``Conv = Layer.constructor(ConvLayerSpec)``.

        ``Conv(8, 3, strides=2)`` is ``Layer.of(ConvLayerSpec(8, 3, strides=2))``: the same
        parameters (the spec's fields, with their defaults and types), the spec's docstring, and
        the spec's ``name``. Adding a field to the spec adds it to the constructor.

        >>> from jcnn.layers.dense import DenseSpec
        >>> Dense = Layer.constructor(DenseSpec)
        >>> Dense(10, bias=False)
        Dense(10, bias=False)
        """
        if not (isinstance(spec_class, type) and issubclass(spec_class, LayerSpec)):
            raise TypeError(f"Layer.constructor: expects a LayerSpec subclass, got {spec_class!r}.")

        def make(*args: _P.args, **kwargs: _P.kwargs) -> Layer:
            return Layer.of(spec_class(*args, **kwargs))

        make.__name__ = make.__qualname__ = spec_class.name
        make.__module__ = spec_class.__module__
        make.__doc__ = spec_class.__doc__
        signature = inspect.signature(spec_class)
        make.__signature__ = signature.replace(return_annotation="Layer")
        make.spec_class = spec_class
        return make

    @property
    def children(self) -> tuple[tuple[str, Layer], ...]:
        """``((path_segment, child), ...)``: what the route visits, in data-flow order; ``()`` for leaves."""
        if self.route is None:
            return ()
        found: list[tuple[str, Layer]] = []

        def visit(segment: str, child: Layer, flow: Any, /) -> Any:
            if not isinstance(segment, str) or not isinstance(child, Layer):
                raise TypeError(
                    f"{self.name}: its route must call visit(segment: str, child: Layer, flow), got"
                    f" visit({segment!r}, {child!r}, ...)."
                )
            found.append((segment, child))
            return flow

        self.route(_OPAQUE, visit)
        return tuple(found)

    def replace(self, **changes: Any) -> Layer:
        """The same layer with some hyperparameters changed, validated again: ``conv.replace(impl="xla")``.

        Raises:
          TypeError: a hand-written layer (no spec), or a name that is not one of its fields.

        >>> from jcnn.layers import Conv
        >>> Conv(8, 3).replace(strides=2, precision="highest")
        Conv(8, 3, strides=2, precision='highest')
        """
        if self.spec is None:
            raise TypeError(
                f"{self.name}.replace: a layer made from functions has no spec to change; build a"
                " new Layer, or define a jcnn.layers.LeafSpec for it (CONTRIBUTING.md)."
            )
        return Layer.of(self.spec.replace(**changes), input_shape=self.input_shape)

    def __iter__(self) -> Iterator[Callable]:
        return iter((self.init, self.apply))

    def __repr__(self) -> str:
        return self.name if self.spec is None else describe(self.spec)

    def _identity(self) -> tuple:
        if self.spec is not None:
            return (type(self.spec), self.spec, self.input_shape)
        return (self.init, self.apply, self.name, self.info, self.route, self.input_shape)

    def __eq__(self, other: object) -> bool:
        """Layers with equal specs are equal (same behaviour); hand-written ones by their functions."""
        return isinstance(other, Layer) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


def _derived(spec: LayerSpec) -> tuple[InitFn, ApplyFn, str, InfoFn | None, RouteFn | None]:
    """``(init, apply, name, info, route)`` of the layer ``spec`` defines."""
    info = spec.info if isinstance(spec, LeafSpec) else None
    route = spec.route if isinstance(spec, CombinatorSpec) else None
    return spec.init, spec.apply, spec.name, info, route


def _declared_shape(shape: Any, name: str) -> Shape:
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"Layer: {name}'s `input_shape` must be a tuple of ints or None, got {shape!r}.")
    try:
        dims = tuple(operator.index(s) for s in shape if not isinstance(s, bool))
    except TypeError:
        dims = ()
    if len(dims) != len(tuple(shape)) or not dims or any(s < 1 for s in dims):
        raise ShapeError(f"Layer: {name}'s `input_shape` must be positive ints (one example), got {shape!r}.")
    return dims


def _check_batch_apply(apply: Callable, name: str) -> None:
    """An ``apply`` that cannot take ``batch_ndim=`` was written for one example: say what to do."""
    try:
        params = inspect.signature(apply).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): trust it
        return
    if any(p.name == "batch_ndim" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    raise TypeError(
        f"Layer: {name}'s `apply` takes no `batch_ndim=`, so it was written for one example; wrap it"
        " with Layer.per_example(init, apply) (it runs under jax.vmap on a batch), or add"
        " `batch_ndim=0` (the number of leading batch dims of x) to its keyword arguments."
    )
