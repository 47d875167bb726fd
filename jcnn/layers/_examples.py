"""Per-example shapes and arrays as the layer modules check them (private to `jcnn.layers`).

``init`` and ``info`` take one example's shape; ``apply`` takes ``x`` with ``batch_ndim``
leading batch dims. These helpers check both, in the house style, from shapes and dtypes only
(free under ``jit``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

from jcnn import checks, shapes
from jcnn.shapes import Shape, ShapeError


def is_shape(value: Any) -> bool:
    """True for a single shape (a sequence of ints), False for a tuple of shapes."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return False
    return all(not isinstance(v, (Sequence, bool)) and hasattr(v, "__index__") for v in value)


def input_shape_of(input_shape: Any, where: str) -> Shape:
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


def shapes_of(input_shape: Any, where: str) -> tuple[Shape, ...]:
    """A tuple of per-example shapes (the input of Add / Concat)."""
    if is_shape(input_shape) or not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        shown = tuple(input_shape) if isinstance(input_shape, Sequence) else input_shape
        raise ShapeError(
            f"{where}: expects a tuple of inputs (e.g. from parallel(...)), got the single shape {shown!r}."
        )
    return tuple(input_shape_of(s, where) for s in input_shape)


def example_shape(x: Any, batch_ndim: int, where: str) -> Shape:
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


def spatial_example(x: Any, d: int, source: str, where: str, batch_ndim: int, dtypes: str) -> Any:
    """Apply-time check of a spatial layer's ``x``: an array of ``dtypes`` (see
    `jcnn.checks.as_array`) with exactly ``batch_ndim`` batch dims before one ``(*spatial, c)``
    example of ``d`` spatial dims."""
    x = checks.as_array(x, where, "x", dtypes)
    shapes.check_input(x.shape, d, source, where, batch_ndim)
    return x


def spatial_input(input_shape: Any, d: int, where: str, source: str) -> Shape:
    """Check ``input_shape`` is ``(*spatial, c)`` with ``d`` spatial dims; ``source`` says why d."""
    shape = input_shape_of(input_shape, where)
    if len(shape) != d + 1:
        hint = ""
        if len(shape) == d + 2:
            hint = f" Shapes are per example: drop the batch dim, i.e. input shape {shape[1:]}."
        elif len(shape) == d:
            hint = " A single-channel input needs a trailing channel dim, e.g. (28, 28, 1)."
        raise ShapeError(
            f"{where}: expects one example of shape (*spatial, channels) with {d} spatial dim(s)"
            f" ({source}), got input shape {shape}.{hint}"
        )
    return shape


def map_shapes(fn: Callable[[Shape], Shape], shape: Any) -> Any:
    """Apply ``fn`` to a shape, or to each shape of a (nested) tuple of shapes."""
    if is_shape(shape):
        return fn(tuple(shape))
    return tuple(map_shapes(fn, s) for s in shape)


def numel(shape: Any) -> int:
    """Elements in a shape or a (nested) tuple of shapes."""
    if is_shape(shape):
        return math.prod(shape)
    return sum(numel(s) for s in shape)
