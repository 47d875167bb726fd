"""Layer specs: the one frozen record of a layer's hyperparameters, from which the layer is derived.

A built-in layer is ``Layer.of(spec)``: its ``init``, ``apply`` and summary ``info`` (or, for a
combinator, ``route``) are the spec's methods, so they read the same fields; its repr
(`describe`), its run-identity record (`record`, through `jcnn.layers.spec_record`) and its
``replace`` come from the spec's dataclass fields. A field added to a spec is therefore
validated, used, shown, recorded and replaceable in one place.

A spec is a frozen dataclass subclassing `LeafSpec` (with ``info``), `CombinatorSpec` (with
``route``) or `LayerSpec` (neither: the summary shows one row from an abstract ``init``). Its
``__post_init__`` validates and canonicalises every field with the validators below (and
`jcnn.checks`, `jcnn.shapes`), so ``Conv(8, 3, precision="bogus")`` raises at construction and
``layer.replace(...)`` re-validates. See CONTRIBUTING.md, "How to add a layer".
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

if TYPE_CHECKING:
    from jcnn.layers.base import Visit
    from jcnn.layers.info import LayerInfo

__all__ = [
    "LayerSpec",
    "LeafSpec",
    "CombinatorSpec",
    "describe",
    "record",
    "as_precision",
    "as_param_dtype",
    "as_initializer",
    "as_number",
    "create_param",
]


class LayerSpec:
    """The base of every layer spec: a frozen dataclass whose fields are the hyperparameters.

    Subclasses are ``@dataclasses.dataclass(frozen=True)`` and define ``name`` (the layer's
    display name), ``__post_init__`` (validate and canonicalise each field with `_canonical`),
    ``init`` and ``apply``. Set ``varargs`` to the name of a tuple field that the repr shows
    splatted (``serial(a, b)``).
    """

    __slots__ = ()
    name: ClassVar[str] = "layer"
    varargs: ClassVar[str | None] = None

    def _canonical(self, **values: Any) -> None:
        """Store canonical field values (the dataclass is frozen: this is its one way in)."""
        for field, value in values.items():
            object.__setattr__(self, field, value)

    def init(self, key: Any, input_shape: Any, /) -> tuple[Any, Any, Any]:
        """``(output_shape, params, state)`` for one example of ``input_shape``."""
        raise NotImplementedError(f"{type(self).__name__} must define init(self, key, input_shape).")

    def apply(
        self, params: Any, state: Any, x: Any, /, *, key: Any = None, train: bool = False, batch_ndim: int = 0
    ) -> tuple[Any, Any]:
        """``(y, state)`` for ``x`` with ``batch_ndim`` leading batch dims."""
        raise NotImplementedError(f"{type(self).__name__} must define apply(self, params, state, x, ...).")

    def default_of(self, field: str) -> Any:
        """The default of ``field`` as the repr compares it: the dataclass default, unless a
        spec overrides this for a default that depends on other fields."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == field:
                return f.default
        raise KeyError(field)

    def replace(self, **changes: Any) -> LayerSpec:
        """A copy with ``changes``, validated again (``__post_init__`` runs on the new values).

        Raises:
          TypeError: a name that is not a field of the spec.
        """
        names = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise TypeError(
                f"{self.name}.replace: {', '.join(f'`{k}`' for k in unknown)} is not a field of"
                f" {self.name}; its fields are {', '.join(names) or 'none'}."
            )
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


class LeafSpec(LayerSpec):
    """A spec of a leaf layer: ``info(input_shape) -> LayerInfo`` gives its summary row."""

    __slots__ = ()

    def info(self, input_shape: Any, /) -> LayerInfo:
        """The summary's row for one example of ``input_shape``, from shapes alone."""
        raise NotImplementedError(f"{type(self).__name__} must define info(self, input_shape).")


class CombinatorSpec(LayerSpec):
    """A spec of a combinator: ``route(flow, visit)`` routes a fold through its children."""

    __slots__ = ()

    def route(self, flow: Any, visit: Visit, /) -> Any:
        """Pass ``flow`` through each child with ``visit(segment, child, flow)``; return the output's."""
        raise NotImplementedError(f"{type(self).__name__} must define route(self, flow, visit).")


# --------------------------------------------------------------------------------------------
# Field validators: each returns the canonical value or raises in the house style
# --------------------------------------------------------------------------------------------


def as_precision(precision: Any, where: str) -> Any:
    """``None``, a `jax.lax.Precision`, its name (``"highest"``) or a pair of them, for ``lax``.

    ``None`` is JAX's default: on recent NVIDIA GPUs float32 matmuls and convolutions run in
    TF32 (about 3 decimal digits, like PyTorch's ``allow_tf32=True``), on TPUs in bfloat16
    passes; ``"highest"`` asks for full float32 everywhere. A ``jax.lax.DotAlgorithmPreset``
    passes through where the running jax has them.

    Raises:
      ValueError: anything else, naming the accepted values.

    >>> as_precision("highest", "Dense").name
    'HIGHEST'
    """
    if precision is None or isinstance(precision, lax.Precision):
        return precision
    presets = getattr(lax, "DotAlgorithmPreset", None)
    if presets is not None and isinstance(precision, presets):
        return precision
    if isinstance(precision, str):
        try:
            return lax.Precision(precision.lower())
        except ValueError:
            pass
    elif isinstance(precision, (tuple, list)) and len(precision) == 2:
        return tuple(as_precision(p, where) for p in precision)
    names = ", ".join(repr(p.name.lower()) for p in lax.Precision)
    raise ValueError(
        f"{where}: `precision` must be None, a jax.lax.Precision, one of {names}, or a pair of"
        f" them, got {precision!r}."
    )


def as_param_dtype(dtype: Any, where: str, name: str = "param_dtype") -> str:
    """A floating-point dtype (``jnp.float32``, ``"bfloat16"``, ...) as its canonical name.

    Raises:
      TypeError: not a dtype, or not a floating-point one.

    >>> as_param_dtype(jnp.bfloat16, "Conv")
    'bfloat16'
    """
    try:
        canonical = None if dtype is None else jnp.dtype(dtype)
    except TypeError:
        canonical = None
    if canonical is None or isinstance(dtype, bool) or not jnp.issubdtype(canonical, jnp.floating):
        raise TypeError(
            f"{where}: `{name}` must be a floating-point dtype, e.g. jnp.float32 or 'bfloat16', got {dtype!r}."
        )
    return canonical.name


def as_initializer(fn: Any, default: Callable, where: str, name: str) -> Callable:
    """``fn`` if given (``(key, shape, dtype) -> array``), else ``default``.

    Raises:
      TypeError: ``fn`` is neither None nor callable.

    >>> as_initializer(None, jax.nn.initializers.zeros, "Dense", "bias_init") is jax.nn.initializers.zeros
    True
    """
    if fn is None:
        return default
    if not callable(fn):
        raise TypeError(
            f"{where}: `{name}` must be an initializer `(key, shape, dtype) -> array`, e.g."
            f" jax.nn.initializers.zeros, got {fn!r}."
        )
    return fn


def as_number(value: Any, where: str, name: str, what: str, ok: Callable[[float], bool]) -> float:
    """A real number (not a bool) for which ``ok`` holds, as a float; ``what`` states the rule.

    Raises:
      TypeError: not a real number.
      ValueError: ``ok`` fails.

    >>> as_number(1e-5, "BatchNorm", "eps", "a number >= 0", lambda v: v >= 0)
    1e-05
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: `{name}` must be {what}, got {value!r}.")
    number = float(value)
    if not ok(number):
        raise ValueError(f"{where}: `{name}` must be {what}, got {value!r}.")
    return number


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _create_jit(init, key, shape, dtype):
    return init(key, shape, dtype)


def create_param(init: Callable, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """``init(key, shape, dtype)`` compiled as one computation per (initializer, shape, dtype).

    Eager initializers dispatch (and compile) every primitive separately: a truncated normal is
    about twenty of them. One jitted call is one compilation, cached across layers.

    >>> create_param(jax.nn.initializers.ones, jax.random.key(0), (2,), "float32").tolist()
    [1.0, 1.0]
    """
    dtype = jnp.dtype(dtype)
    try:
        hash(init)
    except TypeError:  # an unhashable callable cannot be a static argument: run it as is
        return init(key, shape, dtype)
    return _create_jit(init, key, tuple(shape), dtype)


# --------------------------------------------------------------------------------------------
# The repr and the record, from the fields
# --------------------------------------------------------------------------------------------

_WINDOWS = ("kernel_size", "window_shape", "output_size")  # an int means a square 2-D one
_PER_DIM = ("strides", "dilation", "output_padding")  # an int means the same in every dim


def _short_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({_short_name(fn.func)})"
    return getattr(fn, "__name__", None) or type(fn).__name__


def _show(field: str, value: Any) -> str:
    """A canonical field value in the shortest form the layer's constructor accepts."""
    from jcnn.layers.base import Layer

    if isinstance(value, Layer):
        return repr(value)
    if callable(value) and not isinstance(value, type):
        return _short_name(value)
    if isinstance(value, lax.Precision):
        return repr(value.name.lower())
    if isinstance(value, tuple) and value and all(isinstance(v, lax.Precision) for v in value):
        return repr(tuple(v.name.lower() for v in value))
    if not isinstance(value, tuple) or not value:
        return repr(value)
    if all(isinstance(v, int) for v in value):
        if field in _WINDOWS and len(value) == 2 and value[0] == value[1]:
            return repr(value[0])
        if field in _PER_DIM and len(set(value)) == 1:
            return repr(value[0])
    if field == "padding" and all(isinstance(p, tuple) and len(p) == 2 and p[0] == p[1] for p in value):
        sides = tuple(p[0] for p in value)
        return repr(sides[0]) if len(set(sides)) == 1 else repr(sides)
    return repr(value)


def describe(spec: LayerSpec) -> str:
    """The layer's repr: its name, its required fields, then every field that is not the default.

    A field is shown when its canonical value reads differently from its default (both in the
    shortest form the constructor accepts); `LayerSpec.default_of` gives a default that depends
    on other fields (a pool's strides default to its window).

    >>> from jcnn.layers import Conv
    >>> describe(Conv(20, 5, padding=2, precision="highest").spec)
    "Conv(20, 5, padding=2, precision='highest')"
    """
    parts = []
    for f in dataclasses.fields(spec):  # type: ignore[arg-type]
        value = getattr(spec, f.name)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name == spec.varargs:
            parts.extend(_show(f.name, v) for v in value)
        elif required and not f.kw_only:
            parts.append(_show(f.name, value))
        elif required or _show(f.name, value) != _show(f.name, spec.default_of(f.name)):
            parts.append(f"{f.name}={_show(f.name, value)}")
    return f"{spec.name}({', '.join(parts)})"


def _qualified_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        args = [record(a) for a in fn.args] + [f"{k}={record(v)!r}" for k, v in fn.keywords.items()]
        return f"functools.partial({_qualified_name(fn.func)}, {', '.join(map(str, args))})"
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None:  # a callable object: its type names it
        qualname = type(fn).__qualname__
        return f"{type(fn).__module__}.{qualname}"
    return f"{getattr(fn, '__module__', None) or ''}.{qualname}".lstrip(".")


def record(value: Any) -> Any:
    """A field value as JSON would give it back: the run identity compares saved and new records.

    Layers become their `jcnn.layers.spec_record`; tuples lists; precisions and enums their
    names; dtypes their names; callables (initializers) their qualified names, e.g.
    ``"jcnn.initializers.default_kernel_init"``; anything else its repr.

    >>> record(((1, 1), (2, 2)))
    [[1, 1], [2, 2]]
    >>> record(lax.Precision.HIGHEST)
    'highest'
    """
    from jcnn.layers.base import Layer
    from jcnn.layers.tree import spec_record

    if isinstance(value, Layer):
        return spec_record(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (tuple, list)):
        return [record(v) for v in value]
    if isinstance(value, dict):
        return {str(k): record(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, np.dtype):
        return value.name
    if callable(value):
        return _qualified_name(value)
    return repr(value)
