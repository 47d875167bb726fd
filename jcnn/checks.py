"""The argument validators every jcnn module uses: ints, bools, choices, callables, ranks.

Each takes the value, ``where`` (the public function or layer the user called) and ``name``
(the argument, as the user wrote it), and returns the canonical value or raises a TypeError /
ValueError in the house style: ``<where>: `<name>` must be <requirement>, got <value>.``
`ShapeError` lives here so that `jcnn.shapes` and these validators raise the same class;
`jcnn.shapes.ShapeError` is the public name. Pure Python and numpy: no jax import.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ShapeError",
    "MAX_INT",
    "as_int",
    "as_ints",
    "as_bool",
    "one_of",
    "as_callable",
    "check_ndim",
]

# Sizes, strides and counts beyond int32 cannot reach XLA (its shapes and slice strides are
# int64 internally but lax rejects Python ints that do not fit in int32 in several places), and no
# image dimension is that large: refuse them here with a readable message.
MAX_INT = 2**31 - 1


class ShapeError(ValueError):
    """A shape, size or hyperparameter that does not fit; raised before XLA sees the call."""


def as_int(value, where: str, name: str, *, minimum: int | None = None, maximum: int | None = MAX_INT) -> int:
    """An exact Python int from an int-like (numpy ints too); bools and floats are TypeErrors.

    >>> as_int(np.int64(3), "conv", "groups", minimum=1)
    3
    >>> as_int(0, "conv", "groups", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: conv: `groups` must be an int >= 1, got 0.
    """
    if isinstance(value, (bool, np.bool_)) or not hasattr(value, "__index__"):
        raise TypeError(f"{where}: `{name}` must be an int, got {value!r} of type {type(value).__name__}.")
    v = operator.index(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{where}: `{name}` must be an int >= {minimum}, got {v}.")
    if maximum is not None and v > maximum:
        raise ValueError(f"{where}: `{name}` must be an int <= {maximum}, got {v}.")
    return v


def as_ints(value, d: int, where: str, name: str, *, minimum: int | None = 1) -> tuple[int, ...]:
    """An int or a sequence of ``d`` ints as a tuple of ``d`` ints, each ``>= minimum``.

    >>> as_ints(2, 3, "conv", "strides")
    (2, 2, 2)
    >>> as_ints((1, 2), 3, "conv", "strides")
    Traceback (most recent call last):
    ...
    jcnn.checks.ShapeError: conv: `strides` must be an int or a tuple of 3 ints (one per spatial dim), got (1, 2) of length 2.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return (as_int(value, where, name, minimum=minimum),) * d
    if len(value) != d:
        raise ShapeError(
            f"{where}: `{name}` must be an int or a tuple of {d} ints (one per spatial dim),"
            f" got {tuple(value)!r} of length {len(value)}."
        )
    return tuple(as_int(v, where, name, minimum=minimum) for v in value)


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


def as_callable(fn, where: str, name: str, signature: str) -> Callable:
    """``fn`` if it is callable; ``signature`` says what it is called with, e.g. "(key, shape, dtype)".

    >>> as_callable(print, "Conv", "kernel_init", "(key, shape, dtype) -> array") is print
    True
    """
    if not callable(fn):
        raise TypeError(f"{where}: `{name}` must be a callable {signature}, got {fn!r}.")
    return fn


def check_ndim(shape: Sequence[int], minimum: int, where: str, what: str, layout: str, hint: str = "") -> None:
    """``len(shape) >= minimum``, else a ShapeError naming the expected ``layout``.

    >>> check_ndim((28, 28), 3, "conv", "x", "(*batch, h, w, channels)")
    Traceback (most recent call last):
    ...
    jcnn.checks.ShapeError: conv: `x` must have shape (*batch, h, w, channels), at least 3 dims, got shape (28, 28).
    """
    if len(shape) < minimum:
        raise ShapeError(
            f"{where}: `{what}` must have shape {layout}, at least {minimum} dims, got shape {tuple(shape)}."
            + (f" {hint}" if hint else "")
        )
