"""The sliding-window arithmetic every other module of `jcnn.shapes` builds on (private).

Canonical ints in, ints out: the effective window, ``"SAME"`` padding, output lengths of a
window and of a transposed convolution, and the input pixels a set of windows reads. Only the
"larger than the padded input" and "crop too large" shape errors are raised here; every
argument is already canonical (see `jcnn.shapes.padding` and `jcnn.shapes.specs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from jcnn.checks import ShapeError

Shape = tuple[int, ...]
Pair = tuple[int, int]
#: Canonical padding: an upper-case name (resolved per input) or d ``(lo, hi)`` pairs.
CanonicalPadding = Union[str, tuple[Pair, ...]]


def effective(kernel: int, dilation: int) -> int:
    """The span of a dilated window: ``dilation*(F-1) + 1``."""
    return dilation * (kernel - 1) + 1


def same_pair(size: int, kernel: int, stride: int, dilation: int, lower: bool) -> Pair:
    """``"SAME"`` padding of one dim: ``ceil(W / S)`` outputs, the odd pixel high (low if ``lower``)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + effective(kernel, dilation) - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def resolve(
    canon: CanonicalPadding,
    in_spatial: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> tuple[Pair, ...]:
    """Concrete pairs from canonical padding (a name or pairs): the arithmetic, no checks."""
    if not isinstance(canon, str):
        return canon
    d = len(kernel_size)
    if canon == "VALID":
        return ((0, 0),) * d
    if canon == "CAUSAL":
        return ((effective(kernel_size[0], dilation[0]) - 1, 0),)
    lower = canon == "SAME_LOWER"
    return tuple(
        same_pair(w, k, s, r, lower) for w, k, s, r in zip(in_spatial, kernel_size, strides, dilation)
    )


def output_size(
    w: int,
    k: int,
    s: int,
    lo: int,
    hi: int,
    r: int,
    *,
    ceil_mode: bool = False,
    where: str,
    what: str = "kernel",
) -> int:
    """The output length of one dim: ``floor((W + lo + hi - dilation*(F-1) - 1) / S) + 1``.

    With ``ceil_mode`` the division rounds up, and, as in PyTorch, a last window that would
    start in the right padding is dropped. ``what`` names the sliding thing in the error
    (``"kernel"`` or ``"window"``).
    """
    keff = effective(k, r)
    span = w + lo + hi - keff
    # ceil_mode lets windows overhang the right edge, even the first one: PyTorch gives
    # ceil(span / S) + 1 >= 1 outputs whenever span > -S (e.g. a 3x3/3 ceil pool of a 2x2 input).
    if span < 0 and not (ceil_mode and span > -s):
        dil = f" (dilation {r} makes it {keff} wide)" if r > 1 else ""
        raise ShapeError(
            f"{where}: the {what} of size {k}{dil} is larger than the padded input of size"
            f" {w + lo + hi} (input {w} + padding {lo} + {hi}); use a smaller {what} or more padding."
        )
    floor_out = span // s + 1 if span >= 0 else 0
    if ceil_mode:
        out = -(-span // s) + 1
        # PyTorch drops the extra ceil window when it would start in the right padding; the
        # windows the floor rule already counts always stay.
        if out > floor_out and (out - 1) * s >= w + lo:
            out -= 1
        return max(out, floor_out)
    return floor_out


def transpose_size(w: int, k: int, s: int, lo: int, hi: int, op: int, r: int, where: str) -> int:
    """One dim of a transposed conv: ``(W - 1)*S - (lo + hi) + dilation*(F - 1) + output_padding + 1``."""
    out = (w - 1) * s - (lo + hi) + r * (k - 1) + op + 1
    if out < 1:
        raise ShapeError(
            f"{where}: padding ({lo}, {hi}) is too large for an input of size {w} with kernel"
            f" size {k} and stride {s}: the output would have size {out}."
        )
    return out


def read_pixels(w: int, k: int, s: int, lo: int, r: int, windows: range) -> set[int]:
    """The input pixels in ``[0, w)`` that the windows numbered ``windows`` read.

    Window ``i`` starts at ``i*S - lo`` and reads every ``r``-th pixel from there, ``k`` of them.
    """
    taps = range(0, k * r, r)
    return {p for i in windows for t in taps if 0 <= (p := i * s - lo + t) < w}
