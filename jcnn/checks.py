"""The argument validators every jcnn module uses: ints, bools, choices, divisibility, arrays, dtypes.

Each takes the value, ``where`` (the public function or layer the user called) and ``name``
(the argument, as the user wrote it), and returns the canonical value or raises a TypeError /
ValueError in the house style: ``<where>: `<name>` must be <requirement>, got <value>.``
A value of the right type outside its range is a `ShapeError` (a ValueError): sizes, strides
and counts are what shapes are made of. `ShapeError` lives here so that `jcnn.shapes` and these
validators raise the same class; `jcnn.shapes.ShapeError` is the public name. Pure Python and
numpy: no jax import.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ShapeError",
    "MAX_INT",
    "as_int",
    "as_ints",
    "as_bool",
    "one_of",
    "divisible",
    "as_array",
    "accumulator_dtype",
]

# Sizes, strides and counts beyond int32 cannot reach XLA (its shapes and slice strides are
# int64 internally but lax rejects Python ints that do not fit in int32 in several places), and no
# image dimension is that large: refuse them here with a readable message.
MAX_INT = 2**31 - 1


class ShapeError(ValueError):
    """A shape, size or hyperparameter that does not fit; raised before XLA sees the call."""


def _int(value, where: str, name: str, what: str = "an int") -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: `{name}` must be {what}, got the bool {value!r}.")
    if not hasattr(value, "__index__"):
        raise TypeError(f"{where}: `{name}` must be {what}, got {value!r} of type {type(value).__name__}.")
    return operator.index(value)


def as_int(
    value,
    where: str,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = MAX_INT,
    what: str = "an int",
) -> int:
    """An exact Python int from an int-like (numpy ints too); bools and floats are TypeErrors.

    ``what`` is the requirement the TypeError states, e.g. ``"None or an int"``.

    >>> as_int(np.int64(3), "conv", "groups", minimum=1)
    3
    >>> as_int(0, "conv", "groups", minimum=1)
    Traceback (most recent call last):
    ...
    jcnn.checks.ShapeError: conv: `groups` must be >= 1, got 0.
    """
    v = _int(value, where, name, what)
    if minimum is not None and v < minimum:
        raise ShapeError(f"{where}: `{name}` must be >= {minimum}, got {v}.")
    if maximum is not None and v > maximum:
        raise ShapeError(f"{where}: `{name}` must be <= {maximum}, got {v}.")
    return v


def as_ints(
    value, d: int | None, where: str, name: str, *, minimum: int | None = 1, maximum: int | None = MAX_INT
) -> tuple[int, ...]:
    """An int or a sequence of ints as a tuple of ``d`` ints, each in ``[minimum, maximum]``.

    ``d=None`` takes the length from the value and reads a single int as a square 2-D one
    (kernel and window sizes); a sequence must then have at least one entry.

    >>> as_ints(2, 3, "conv", "strides")
    (2, 2, 2)
    >>> as_ints(3, None, "conv", "kernel_size")
    (3, 3)
    >>> as_ints((1, 2), 3, "conv", "strides")
    Traceback (most recent call last):
    ...
    jcnn.checks.ShapeError: conv: `strides` must be an int or a tuple of 3 ints (one per spatial dim), got (1, 2) of length 2.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        out = (_int(value, where, name),) * (2 if d is None else d)
    else:
        if d is None and len(value) == 0:
            raise ShapeError(f"{where}: `{name}` must have at least one spatial dim, got ().")
        if d is not None and len(value) != d:
            raise ShapeError(
                f"{where}: `{name}` must be an int or a tuple of {d} ints (one per spatial dim),"
                f" got {tuple(value)!r} of length {len(value)}."
            )
        out = tuple(_int(v, where, name) for v in value)
    # A window's int means its square tuple, so show that; a stride's int is shown as given.
    shown = out if d is None or isinstance(value, Sequence) else value
    if minimum is not None and any(v < minimum for v in out):
        raise ShapeError(f"{where}: every entry of `{name}` must be >= {minimum}, got {shown!r}.")
    if maximum is not None and any(v > maximum for v in out):
        raise ShapeError(f"{where}: every entry of `{name}` must be <= {maximum}, got {shown!r}.")
    return out


def as_bool(value, where: str, name: str) -> bool:
    """``True`` or ``False`` (numpy's bool too); anything else, even 0 or 1, is a TypeError.

    >>> as_bool(np.True_, "avg_pool", "ceil_mode")
    True
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{where}: `{name}` must be True or False, got {value!r}.")


def one_of(value, choices: Sequence[str], where: str, name: str, *, case_insensitive: bool = False) -> str:
    """One of ``choices`` (compared upper-case and returned as listed when case_insensitive).

    >>> one_of("reflect", ("zeros", "reflect"), "conv", "padding_mode")
    'reflect'
    """
    if isinstance(value, str):
        for choice in choices:
            if value == choice or (case_insensitive and value.upper() == choice.upper()):
                return choice
    listed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{where}: `{name}` must be one of {listed}, got {value!r}.")


def divisible(count: int, groups: int, where: str, what: str, detail: str = "") -> None:
    """``count % groups == 0``: channels split into feature groups; ``what`` names the count
    and ``detail`` (e.g. ``", input shape (5, 5, 3)"``) follows it in the parentheses.

    >>> divisible(6, 3, "conv", "input channels")
    >>> divisible(5, 2, "Conv", "`out_channels`")
    Traceback (most recent call last):
    ...
    jcnn.checks.ShapeError: Conv: `out_channels` (5) must be divisible by `groups` (2).
    """
    if count % groups:
        raise ShapeError(f"{where}: {what} ({count}{detail}) must be divisible by `groups` ({groups}).")


# dtype categories by numpy's kind letter. ml_dtypes' bfloat16, float8_* and int4 (which jax
# adds) have kind "V" in numpy, so those are told apart by name.
_KINDS = {"f": "float", "c": "complex", "i": "int", "u": "int", "b": "bool"}

_CATEGORIES = {
    "float": (("float",), "floating-point"),
    "inexact": (("float", "complex"), "floating-point (or complex)"),
    "real": (("float", "int"), "real floating-point or integer"),
}


def _category(dtype) -> str:
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # jax's extended dtypes (PRNG keys) are no numpy dtypes
        return "other"
    if dtype.kind == "V" and dtype.name.startswith(("bfloat", "float")):
        return "float"
    if dtype.kind == "V" and dtype.name.startswith(("int", "uint")):
        return "int"
    return _KINDS.get(dtype.kind, "other")


def as_array(value, where: str, name: str, dtypes: str = "float"):
    """An array operand: ``value`` itself when it is an array (jax arrays and tracers pass
    untouched), else ``np.asarray(value)``; its dtype must be in ``dtypes``: ``"float"``,
    ``"inexact"`` (float or complex) or ``"real"`` (float or integer, not bool).

    None, strings, ragged lists and arrays of strings or objects are TypeErrors naming ``name``.

    >>> as_array([[1.0, 2.0]], "conv", "x").shape
    (1, 2)
    >>> as_array(np.array(["a"]), "avg_pool", "x")
    Traceback (most recent call last):
    ...
    TypeError: avg_pool: `x` must have a floating-point dtype, got <U1; cast it first, e.g. `x.astype(jnp.float32)`.
    """
    allowed, words = _CATEGORIES[dtypes]
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        if value is None or isinstance(value, (str, bytes, dict, set)):
            raise TypeError(f"{where}: `{name}` must be an array, got {type(value).__name__} {value!r:.60}.")
        try:
            value = np.asarray(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"{where}: `{name}` must be an array (or nested lists of numbers of one shape), got"
                f" {type(value).__name__} {value!r:.60}."
            ) from None
    if _category(value.dtype) not in allowed:
        raise TypeError(
            f"{where}: `{name}` must have a {words} dtype, got {value.dtype}; cast it first,"
            f" e.g. `{name}.astype(jnp.float32)`."
        )
    return value


def accumulator_dtype(dtype) -> np.dtype:
    """The dtype sums over windows run in: float32 for the half-precision floats (bfloat16,
    float16 lose digits fast; PyTorch's CPU kernels and XLA accumulate them in float32), else
    ``dtype`` itself; the result is rounded back once at the end.

    >>> accumulator_dtype(np.float16), accumulator_dtype(np.float64)
    (dtype('float32'), dtype('float64'))
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if _category(dtype) == "float" and dtype.itemsize < 4 else dtype
