"""Padding forms: every accepted way to write ``padding`` and ``padding_mode``, canonicalised.

Padding, everywhere jcnn accepts it: an int (same on both sides of every dim), a tuple of d
ints, a tuple of d ``(lo, hi)`` pairs, or a name: ``"VALID"``, ``"SAME"`` (TensorFlow's rule:
the odd pixel goes high), ``"SAME_LOWER"``, ``"CAUSAL"`` (1-D). Names are case-insensitive.
`canonicalize_padding` owns all of them and lists them all in its one error message (after
flax's ``canonicalize_padding``); `resolve_padding` makes a name concrete for an input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from jcnn import checks
from jcnn.checks import ShapeError
from jcnn.shapes._arith import CanonicalPadding, Pair, resolve

__all__ = [
    "PADDING_NAMES",
    "PADDING_MODES",
    "PaddingLike",
    "canonicalize_padding",
    "canonicalize_padding_mode",
    "resolve_padding",
]

PADDING_NAMES = ("VALID", "SAME", "SAME_LOWER", "CAUSAL")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: What a user may pass as ``padding``.
PaddingLike = Union[str, int, Sequence[int], Sequence[Pair]]


def canonicalize_padding(padding: PaddingLike, d: int, where: str = "conv") -> CanonicalPadding:
    """Every accepted padding form as either an upper-case name or ``d`` ``(lo, hi)`` pairs.

    Accepted: an int (same on both sides of every dim), a tuple of ``d`` ints, a tuple of ``d``
    ``(lo, hi)`` pairs, or one of ``"VALID"``, ``"SAME"`` (the odd pixel goes high, as in
    TensorFlow), ``"SAME_LOWER"`` (it goes low), ``"CAUSAL"`` (1-D: all padding low).
    Names are case-insensitive. The specs call this once per construction; nothing else in
    jcnn canonicalises padding again.

    Args:
      padding: the padding as the user wrote it.
      d: the number of spatial dims.
      where: the public function or layer, for messages.

    Returns:
      An upper-case name, or a tuple of ``d`` ``(lo, hi)`` pairs of ints >= 0.

    Raises:
      ValueError: an unknown name, or ``"CAUSAL"`` for ``d != 1``.
      ShapeError: the wrong number of entries, or a negative side.
      TypeError: anything that is not one of the forms.

    >>> canonicalize_padding(1, 2)
    ((1, 1), (1, 1))
    >>> canonicalize_padding("same", 2)
    'SAME'
    """
    forms = f"an int, a tuple of {d} ints, a tuple of {d} (lo, hi) pairs, or one of " + ", ".join(
        repr(n) for n in PADDING_NAMES
    )
    if isinstance(padding, str):
        name = padding.upper()
        if name not in PADDING_NAMES:
            raise ValueError(f"{where}: `padding` must be {forms}; got the unknown name {padding!r}.")
        if name == "CAUSAL" and d != 1:
            raise ValueError(
                f"{where}: padding 'CAUSAL' is for 1-D inputs, got {d} spatial dims;"
                f" pass explicit (lo, hi) pairs instead."
            )
        return name

    def side(v) -> int:
        return checks.as_int(v, where, "padding", maximum=checks.MAX_INT)

    try:
        if not isinstance(padding, Sequence):
            p = side(padding)
            pairs = ((p, p),) * d
        else:
            if len(padding) != d:
                raise ShapeError(
                    f"{where}: `padding` must be {forms}; got {padding!r} with {len(padding)}"
                    f" entries for {d} spatial dims."
                )
            listed = []
            for entry in padding:
                if isinstance(entry, Sequence) and not isinstance(entry, str):
                    if len(entry) != 2:
                        raise ShapeError(
                            f"{where}: `padding` must be {forms}; got {padding!r}, whose entry"
                            f" {entry!r} is not a (lo, hi) pair."
                        )
                    listed.append((side(entry[0]), side(entry[1])))
                else:
                    p = side(entry)
                    listed.append((p, p))
            pairs = tuple(listed)
    except TypeError:
        raise TypeError(f"{where}: `padding` must be {forms}; got {padding!r}.") from None
    if any(lo < 0 or hi < 0 for lo, hi in pairs):
        raise ShapeError(f"{where}: padding must be >= 0 on every side, got {padding!r}.")
    return pairs


def canonicalize_padding_mode(mode: str, where: str = "conv") -> str:
    """``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (case-insensitive).

    Raises:
      ValueError: any other value.

    >>> canonicalize_padding_mode("Reflect")
    'reflect'
    """
    return checks.one_of(mode, PADDING_MODES, where, "padding_mode", case_insensitive=True)


def resolve_padding(
    padding: PaddingLike,
    in_spatial: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    where: str = "conv",
) -> tuple[Pair, ...]:
    """Concrete ``(lo, hi)`` pairs for any padding form, given the input's spatial sizes.

    ``"SAME"`` gives ``ceil(W / S)`` outputs with the odd padding pixel high (TensorFlow's
    rule); ``"SAME_LOWER"`` puts it low; ``"CAUSAL"`` puts all ``dilation*(F-1)`` low.

    Args:
      padding: any padding form (see `canonicalize_padding`).
      in_spatial: the input's spatial sizes.
      kernel_size, strides, dilation: canonical tuples, one entry per spatial dim.
      where: the public function or layer, for messages.

    Returns:
      One ``(lo, hi)`` pair per spatial dim.

    >>> resolve_padding("SAME", (7,), (4,), (1,), (1,))
    ((1, 2),)
    """
    return resolve(
        canonicalize_padding(padding, len(kernel_size), where), in_spatial, kernel_size, strides, dilation
    )


def _one_dim(padding, size: int, kernel: int, stride: int, dilation: int, where: str) -> Pair:
    """One dim's padding (an int, a ``(lo, hi)`` pair or a name) as a concrete, checked pair."""
    if isinstance(padding, Sequence) and not isinstance(padding, str):
        padding = (tuple(padding),)
    ((lo, hi),) = resolve_padding(padding, (size,), (kernel,), (stride,), (dilation,), where)
    return lo, hi
