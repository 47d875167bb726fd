"""Specs: a layer's or op's hyperparameters checked and canonicalised once, as frozen records.

A ``*_spec`` builder checks every hyperparameter and returns a frozen, canonical, hashable spec
(`ConvSpec`, `ConvTransposeSpec`, `PoolSpec`, `AdaptivePoolSpec`); layers build theirs in the
constructor, the public ops on each call. The geometry functions (`jcnn.shapes.geometry`) take a
spec and the arrays' shapes and never canonicalise again. `canonicalize_window` and
`canonicalize_ints` are the size canonicalisers every spec uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from jcnn import checks
from jcnn.checks import ShapeError
from jcnn.shapes import padding as _padding
from jcnn.shapes._arith import CanonicalPadding, Pair, Shape
from jcnn.shapes.padding import PaddingLike

__all__ = [
    "canonicalize_window",
    "canonicalize_ints",
    "ConvSpec",
    "ConvTransposeSpec",
    "PoolSpec",
    "AdaptivePoolSpec",
    "conv_spec",
    "conv_transpose_spec",
    "pool_spec",
    "check_pool_padding",
    "adaptive_pool_spec",
    "global_pool_spec",
]


def canonicalize_window(size, where: str = "conv", name: str = "kernel_size") -> Shape:
    """A kernel or window size as a tuple of positive ints.

    An int means a square 2-D window; a tuple of length d means a d-D one.

    >>> canonicalize_window(3)
    (3, 3)
    >>> canonicalize_window((5,))
    (5,)
    """
    return checks.as_ints(size, None, where, name, minimum=1)


def canonicalize_ints(value, d: int, where: str, name: str, *, minimum: int = 1) -> Shape:
    """Strides, dilation or output padding as a tuple of ``d`` ints, each ``>= minimum``.

    >>> canonicalize_ints(2, 2, "conv", "strides")
    (2, 2)
    """
    return checks.as_ints(value, d, where, name, minimum=minimum)


class ConvSpec(NamedTuple):
    """A convolution's canonical hyperparameters (build with `conv_spec`)."""

    kernel_size: Shape
    strides: Shape
    padding: CanonicalPadding  # an upper-case name (resolved per input) or d (lo, hi) pairs
    dilation: Shape
    groups: int
    padding_mode: str  # "zeros", "reflect", "replicate" or "circular"
    exact: bool  # refuse inputs that the windows do not tile exactly

    @property
    def d(self) -> int:
        return len(self.kernel_size)


def conv_spec(
    kernel_size,
    *,
    strides=1,
    padding: PaddingLike = 0,
    dilation=1,
    groups: int = 1,
    padding_mode: str = "zeros",
    exact: bool = False,
    where: str = "conv",
) -> ConvSpec:
    """Check a convolution's hyperparameters once and return them canonical.

    Args:
      kernel_size: an int (square 2-D) or d ints.
      strides, padding, dilation, groups, padding_mode, exact: as in `jcnn.ops.conv` and
        `jcnn.layers.Conv`.
      where: the public function or layer, for messages.

    Returns:
      A `ConvSpec`.

    Raises:
      ShapeError / ValueError / TypeError: a hyperparameter of the wrong type or range, named.

    >>> conv_spec(5, padding=2)
    ConvSpec(kernel_size=(5, 5), strides=(1, 1), padding=((2, 2), (2, 2)), dilation=(1, 1), groups=1, padding_mode='zeros', exact=False)
    """
    ks = canonicalize_window(kernel_size, where)
    d = len(ks)
    return ConvSpec(
        ks,
        canonicalize_ints(strides, d, where, "strides"),
        _padding.canonicalize_padding(padding, d, where),
        canonicalize_ints(dilation, d, where, "dilation"),
        checks.as_int(groups, where, "groups", minimum=1),
        _padding.canonicalize_padding_mode(padding_mode, where),
        checks.as_bool(exact, where, "exact"),
    )


class ConvTransposeSpec(NamedTuple):
    """A transposed convolution's canonical hyperparameters (build with `conv_transpose_spec`)."""

    kernel_size: Shape
    strides: Shape
    crop: tuple[Pair, ...]  # PyTorch's `padding`: (lo, hi) rows cropped from the full output
    output_padding: Shape  # extra rows on the high side
    dilation: Shape
    groups: int

    @property
    def d(self) -> int:
        return len(self.kernel_size)


def conv_transpose_spec(
    kernel_size,
    strides: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    where: str = "conv_transpose",
) -> ConvTransposeSpec:
    """Check a transposed convolution's hyperparameters once (PyTorch's ConvTranspose rules).

    Args:
      kernel_size: an int (square 2-D) or d ints.
      strides, dilation, groups: as in `jcnn.ops.conv_transpose`.
      padding: PyTorch's crop: an int, d ints, d ``(lo, hi)`` pairs or ``"VALID"`` (= 0).
      output_padding: extra high rows, each smaller than the stride or the dilation.
      where: the public function or layer, for messages.

    Returns:
      A `ConvTransposeSpec`.

    Raises:
      ShapeError / ValueError / TypeError: a hyperparameter of the wrong type or range, named.

    >>> conv_transpose_spec(3, 2, 1, 1).crop
    ((1, 1), (1, 1))
    """
    ks = canonicalize_window(kernel_size, where)
    d = len(ks)
    strides = canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    output_padding = canonicalize_ints(output_padding, d, where, "output_padding", minimum=0)
    crop = _padding.canonicalize_padding(padding, d, where)
    if isinstance(crop, str):
        if crop != "VALID":
            raise ValueError(
                f"{where}: `padding` must be an int, a tuple of {d} ints or (lo, hi) pairs, or"
                f" 'VALID'; got {padding!r} (transposed convs take PyTorch's numeric padding)."
            )
        crop = ((0, 0),) * d
    for op, s, r in zip(output_padding, strides, dilation):
        if op >= max(s, r):
            raise ShapeError(
                f"{where}: `output_padding` must be smaller than the stride or the dilation,"
                f" got output_padding={output_padding} with strides={strides} and"
                f" dilation={dilation}."
            )
    groups = checks.as_int(groups, where, "groups", minimum=1)
    return ConvTransposeSpec(ks, strides, crop, output_padding, dilation, groups)


class PoolSpec(NamedTuple):
    """A windowed pool's canonical hyperparameters (build with `pool_spec`)."""

    window_shape: Shape
    strides: Shape  # the window's shape when the user gave None
    padding: CanonicalPadding  # an upper-case name or d (lo, hi) pairs, at most half the window
    dilation: Shape
    ceil_mode: bool
    count_include_pad: bool = True  # average pooling's divisor at borders
    divisor_override: int | None = None  # average pooling's fixed divisor (nonzero)

    @property
    def d(self) -> int:
        return len(self.window_shape)


def pool_spec(
    window_shape,
    strides=None,
    padding: PaddingLike = 0,
    dilation=1,
    *,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    where: str = "pool",
) -> PoolSpec:
    """Check a pooling op's hyperparameters once (PyTorch's rules); ``strides=None`` means
    strides = window, numeric padding is at most half the window on each side.

    Args:
      window_shape, strides, padding, dilation, ceil_mode, count_include_pad, divisor_override:
        as in `jcnn.ops.max_pool` and `jcnn.ops.avg_pool`.
      where: the public function or layer, for messages.

    Returns:
      A `PoolSpec`.

    Raises:
      ShapeError / ValueError / TypeError: a hyperparameter of the wrong type or range, named.

    >>> pool_spec(2)
    PoolSpec(window_shape=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)), dilation=(1, 1), ceil_mode=False, count_include_pad=True, divisor_override=None)
    """
    window = canonicalize_window(window_shape, where, "window_shape")
    d = len(window)
    strides = window if strides is None else canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    padding = _padding.canonicalize_padding(padding, d, where)
    if not isinstance(padding, str):  # names (SAME...) never make a window of padding alone
        check_pool_padding(padding, window, where)
    ceil_mode = checks.as_bool(ceil_mode, where, "ceil_mode")
    count_include_pad = checks.as_bool(count_include_pad, where, "count_include_pad")
    if divisor_override is not None:
        # Any nonzero int, as in PyTorch (a negative one flips the sign).
        divisor_override = checks.as_int(
            divisor_override, where, "divisor_override", minimum=-checks.MAX_INT, what="None or an int"
        )
        if divisor_override == 0:
            raise ValueError(f"{where}: `divisor_override` must be nonzero (or None), got 0.")
    return PoolSpec(window, strides, padding, dilation, ceil_mode, count_include_pad, divisor_override)


def check_pool_padding(pads, window_shape, where: str = "pool") -> None:
    """PyTorch's rule: pooling padding at most ``window_shape // 2`` on each side (the window
    before dilation, as PyTorch checks it), so no window reads padding alone.

    Raises:
      ShapeError: a side with more padding.

    >>> check_pool_padding(((1, 1),), (3,))
    >>> check_pool_padding(((2, 0),), (3,))
    Traceback (most recent call last):
    ...
    jcnn.checks.ShapeError: pool: padding must be at most half the window on each side, got padding (2, 0) for a window of size 3; use padding <= 1.
    """
    for (lo, hi), k in zip(pads, window_shape):
        half = k // 2
        if lo > half or hi > half:
            raise ShapeError(
                f"{where}: padding must be at most half the window on each side, got padding"
                f" ({lo}, {hi}) for a window of size {k}; use padding <= {half}."
            )


class AdaptivePoolSpec(NamedTuple):
    """An adaptive pool's output size: per dim an int >= 1, or None to keep the input's size."""

    output_size: tuple[int | None, ...]

    @property
    def d(self) -> int:
        return len(self.output_size)


def adaptive_pool_spec(output_size, where: str = "adaptive_pool") -> AdaptivePoolSpec:
    """An adaptive pool's ``output_size``: an int (square 2-D) or d entries, each an int >= 1
    or ``None`` (keep that dim's input size, as in PyTorch).

    >>> adaptive_pool_spec(7)
    AdaptivePoolSpec(output_size=(7, 7))
    >>> adaptive_pool_spec((None, 3)).output_size
    (None, 3)
    """
    if isinstance(output_size, (str, bytes)) or not isinstance(output_size, Sequence):
        return AdaptivePoolSpec(checks.as_ints(output_size, None, where, "output_size"))
    if len(output_size) == 0:
        raise ShapeError(f"{where}: `output_size` must have at least one spatial dim, got ().")
    kept = [i for i, o in enumerate(output_size) if o is not None]
    sizes = checks.as_ints(tuple(output_size[i] for i in kept), len(kept), where, "output_size", minimum=None)
    if any(o < 1 for o in sizes):
        raise ShapeError(
            f"{where}: every entry of `output_size` must be >= 1 (or None to keep that dim),"
            f" got {tuple(output_size)!r}."
        )
    out: list[int | None] = [None] * len(output_size)
    for i, o in zip(kept, sizes):
        out[i] = o
    return AdaptivePoolSpec(tuple(out))


def global_pool_spec(spatial_dims, where: str = "global_pool") -> int:
    """A global pool's only hyperparameter: how many dims before the channel dim are spatial.

    >>> global_pool_spec(2)
    2
    """
    return checks.as_int(
        spatial_dims, where, "spatial_dims", minimum=1, what="an int (the number of spatial dims)"
    )
