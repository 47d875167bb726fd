"""Shape arithmetic for jcnn: padding forms, output sizes, the fit explainer, parameter, FLOP
and memory counts, receptive fields. Owns every shape error message.

Pure Python integers only; this module never imports ``jax.numpy``, so everything in it is free
under ``jit`` and usable without a device.

The output size of a sliding window follows the lecture's formula with floor division, like
every peer (PyTorch, XLA, Keras)::

    out = floor((W + lo + hi - dilation*(F-1) - 1) / S) + 1

For symmetric padding ``P`` and no dilation this is the seed's ``(W - F + 2P)/S + 1``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import NamedTuple, Union

Shape = tuple[int, ...]
Pair = tuple[int, int]
PaddingLike = Union[str, int, Sequence[int], Sequence[Pair]]

PADDING_NAMES = ("VALID", "SAME", "SAME_LOWER", "CAUSAL")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

__all__ = [
    "ShapeError",
    "FitReport",
    "ReceptiveField",
    "PADDING_NAMES",
    "PADDING_MODES",
    "canonicalize_window",
    "canonicalize_ints",
    "canonicalize_padding",
    "canonicalize_padding_mode",
    "resolve_padding",
    "conv_output_size",
    "conv_output_shape",
    "conv_transpose_output_size",
    "conv_transpose_output_shape",
    "pool_output_shape",
    "adaptive_windows",
    "explain_fit",
    "conv_params",
    "dense_params",
    "conv_flops",
    "conv_transpose_flops",
    "dense_flops",
    "pool_flops",
    "activation_bytes",
    "receptive_field_step",
]


class ShapeError(ValueError):
    """A shape, size or hyperparameter that does not fit; raised before XLA sees the call."""


# --------------------------------------------------------------------------------------------
# Canonicalisation
# --------------------------------------------------------------------------------------------


def _as_int(value, where: str, name: str) -> int:
    """Exact Python int from an int-like (numpy ints too); bools and floats are TypeErrors."""
    if isinstance(value, bool):
        raise TypeError(f"{where}: `{name}` must be an int, got the bool {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{where}: `{name}` must be an int, got {value!r} of type {type(value).__name__}."
        ) from None


def canonicalize_window(size, where: str = "conv", name: str = "kernel_size") -> Shape:
    """A kernel or window size as a tuple of positive ints.

    An int means a square 2-D window; a tuple of length d means a d-D one.

    >>> canonicalize_window(3)
    (3, 3)
    >>> canonicalize_window((5,))
    (5,)
    """
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence):
        k = _as_int(size, where, name)
        size = (k, k)
    if len(size) == 0:
        raise ShapeError(f"{where}: `{name}` must have at least one spatial dim, got ().")
    out = tuple(_as_int(k, where, name) for k in size)
    if any(k < 1 for k in out):
        raise ShapeError(f"{where}: every entry of `{name}` must be >= 1, got {tuple(size)}.")
    return out


def canonicalize_ints(value, d: int, where: str, name: str, *, minimum: int = 1) -> Shape:
    """Strides, dilation or output padding as a tuple of ``d`` ints, each ``>= minimum``.

    >>> canonicalize_ints(2, 2, "conv", "strides")
    (2, 2)
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        v = _as_int(value, where, name)
        out = (v,) * d
    else:
        if len(value) != d:
            raise ShapeError(
                f"{where}: `{name}` must be an int or a tuple of {d} ints (one per spatial dim),"
                f" got {tuple(value)!r} of length {len(value)}."
            )
        out = tuple(_as_int(v, where, name) for v in value)
    if any(v < minimum for v in out):
        raise ShapeError(f"{where}: every entry of `{name}` must be >= {minimum}, got {value!r}.")
    return out


def canonicalize_padding(padding: PaddingLike, d: int, where: str = "conv") -> str | tuple[Pair, ...]:
    """Every accepted padding form as either an upper-case name or ``d`` ``(lo, hi)`` pairs.

    Accepted: an int (same on both sides of every dim), a tuple of ``d`` ints, a tuple of ``d``
    ``(lo, hi)`` pairs, or one of ``"VALID"``, ``"SAME"`` (the odd pixel goes high, as in
    TensorFlow), ``"SAME_LOWER"`` (it goes low), ``"CAUSAL"`` (1-D: all padding low).
    Names are case-insensitive.

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
    try:
        if not isinstance(padding, Sequence):
            p = _as_int(padding, where, "padding")
            pairs = ((p, p),) * d
        else:
            if len(padding) != d:
                raise ShapeError(
                    f"{where}: `padding` must be {forms}; got {padding!r} with {len(padding)}"
                    f" entries for {d} spatial dims."
                )
            pairs = []
            for entry in padding:
                if isinstance(entry, Sequence) and not isinstance(entry, str):
                    if len(entry) != 2:
                        raise ShapeError(
                            f"{where}: `padding` must be {forms}; got {padding!r}, whose entry"
                            f" {entry!r} is not a (lo, hi) pair."
                        )
                    pairs.append((_as_int(entry[0], where, "padding"), _as_int(entry[1], where, "padding")))
                else:
                    p = _as_int(entry, where, "padding")
                    pairs.append((p, p))
            pairs = tuple(pairs)
    except TypeError:
        raise TypeError(f"{where}: `padding` must be {forms}; got {padding!r}.") from None
    if any(lo < 0 or hi < 0 for lo, hi in pairs):
        raise ShapeError(f"{where}: padding must be >= 0 on every side, got {padding!r}.")
    return pairs


def canonicalize_padding_mode(mode: str, where: str = "conv") -> str:
    """``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (case-insensitive)."""
    if not isinstance(mode, str) or mode.lower() not in PADDING_MODES:
        raise ValueError(
            f"{where}: `padding_mode` must be one of {', '.join(map(repr, PADDING_MODES))}; got {mode!r}."
        )
    return mode.lower()


def _effective(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) + 1


def _same_pair(size: int, kernel: int, stride: int, dilation: int, lower: bool) -> Pair:
    out = -(-size // stride)
    total = max((out - 1) * stride + _effective(kernel, dilation) - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


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

    >>> resolve_padding("SAME", (7,), (4,), (1,), (1,))
    ((1, 2),)
    """
    d = len(kernel_size)
    canon = canonicalize_padding(padding, d, where)
    if not isinstance(canon, str):
        return canon
    if canon == "VALID":
        return ((0, 0),) * d
    if canon == "CAUSAL":
        return ((_effective(kernel_size[0], dilation[0]) - 1, 0),)
    lower = canon == "SAME_LOWER"
    return tuple(
        _same_pair(w, k, s, r, lower) for w, k, s, r in zip(in_spatial, kernel_size, strides, dilation)
    )


# --------------------------------------------------------------------------------------------
# Output sizes
# --------------------------------------------------------------------------------------------


def _pair(padding, where: str) -> Pair:
    if isinstance(padding, Sequence) and not isinstance(padding, str):
        (pair,) = canonicalize_padding((tuple(padding),), 1, where)
        return pair
    (pair,) = canonicalize_padding(padding, 1, where)
    return pair


def conv_output_size(
    size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | Pair | str = 0,
    dilation: int = 1,
    *,
    ceil_mode: bool = False,
    exact: bool = False,
    where: str = "conv_output_size",
) -> int:
    """Output length of one spatial dim of a convolution or pooling window.

    ``out = floor((W + lo + hi - dilation*(F-1) - 1) / S) + 1``. With ``ceil_mode`` the
    division rounds up, but, as in PyTorch, a last window that would start in the right padding
    is dropped. With ``exact=True`` a stride that leaves input pixels unread raises.

    Args:
      size: input length ``W``.
      kernel_size: window length ``F``.
      stride: ``S``.
      padding: an int (both sides), a ``(lo, hi)`` pair, or a padding name.
      dilation: spacing between kernel taps.
      ceil_mode: round the division up (pooling).
      exact: raise ``ShapeError`` unless the windows end exactly at the padded input's end and
        every input pixel is read (no gaps between windows either).

    Returns:
      The output length, a Python int >= 1.

    Raises:
      ShapeError: the window is larger than the padded input, or ``exact`` and it does not fit.

    >>> conv_output_size(7, 3, stride=2)
    3
    >>> conv_output_size(32, 5)
    28
    """
    w = _as_int(size, where, "size")
    if w < 1:
        raise ShapeError(f"{where}: input size must be >= 1, got {size!r}.")
    (k,) = canonicalize_window((kernel_size,), where)
    (s,) = canonicalize_ints(stride, 1, where, "stride")
    (r,) = canonicalize_ints(dilation, 1, where, "dilation")
    if isinstance(padding, str):
        ((lo, hi),) = resolve_padding(padding, (w,), (k,), (s,), (r,), where)
    else:
        lo, hi = _pair(padding, where)
    keff = _effective(k, r)
    span = w + lo + hi - keff
    # ceil_mode lets windows overhang the right edge, even the first one: PyTorch gives
    # ceil(span / S) + 1 >= 1 outputs whenever span > -S (e.g. a 3x3/3 ceil pool of a 2x2 input).
    if span < 0 and not (ceil_mode and span > -s):
        dil = f" (dilation {r} makes it {keff} wide)" if r > 1 else ""
        what = "window" if "pool" in where else "kernel"
        raise ShapeError(
            f"{where}: the {what} of size {k}{dil} is larger than the padded input of size"
            f" {w + lo + hi} (input {w} + padding {lo} + {hi}); use a smaller {what} or more padding."
        )
    if exact:
        report = explain_fit(w, k, s, (lo, hi), r)
        if not report.fits or report.unused:
            raise ShapeError(f"{where}: exact=True, but {report.message}")
    floor_out = span // s + 1 if span >= 0 else 0
    if ceil_mode:
        out = -(-span // s) + 1
        # PyTorch drops the extra ceil window when it would start in the right padding; the
        # windows the floor rule already counts always stay.
        if out > floor_out and (out - 1) * s >= w + lo:
            out -= 1
        return max(out, floor_out)
    return floor_out


def conv_output_shape(
    in_spatial: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int] | int = 1,
    padding: PaddingLike = 0,
    dilation: Sequence[int] | int = 1,
    *,
    ceil_mode: bool = False,
    exact: bool = False,
    where: str = "conv",
) -> Shape:
    """Output spatial shape of a d-D convolution or pooling (``d = len(kernel_size)``).

    >>> conv_output_shape((32, 32), (5, 5))
    (28, 28)
    """
    kernel_size = canonicalize_window(kernel_size, where)
    d = len(kernel_size)
    if len(in_spatial) != d:
        raise ShapeError(
            f"{where}: the input has {len(in_spatial)} spatial dims {tuple(in_spatial)} but the"
            f" kernel has {d} {kernel_size}."
        )
    strides = canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    pads = resolve_padding(padding, in_spatial, kernel_size, strides, dilation, where)
    return tuple(
        conv_output_size(w, k, s, p, r, ceil_mode=ceil_mode, exact=exact, where=where)
        for w, k, s, p, r in zip(in_spatial, kernel_size, strides, pads, dilation)
    )


def conv_transpose_output_size(
    size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | Pair = 0,
    output_padding: int = 0,
    dilation: int = 1,
    *,
    where: str = "conv_transpose",
) -> int:
    """Output length of one dim of a transposed convolution (PyTorch's ConvTranspose rule).

    ``out = (W - 1)*S - (lo + hi) + dilation*(F - 1) + output_padding + 1``.

    >>> conv_transpose_output_size(3, 3, stride=2)
    7
    """
    lo, hi = _pair(padding, where)
    out = (size - 1) * stride - (lo + hi) + dilation * (kernel_size - 1) + output_padding + 1
    if out < 1:
        raise ShapeError(
            f"{where}: padding ({lo}, {hi}) is too large for an input of size {size} with kernel"
            f" size {kernel_size} and stride {stride}: the output would have size {out}."
        )
    return out


def conv_transpose_output_shape(
    in_spatial: Sequence[int],
    kernel_size: Sequence[int],
    strides=1,
    padding=0,
    output_padding=0,
    dilation=1,
    *,
    where: str = "conv_transpose",
) -> Shape:
    """Output spatial shape of a d-D transposed convolution; see `conv_transpose_output_size`.

    ``output_padding`` must be smaller than the stride or the dilation (PyTorch's rule).
    """
    kernel_size = canonicalize_window(kernel_size, where)
    d = len(kernel_size)
    if len(in_spatial) != d:
        raise ShapeError(
            f"{where}: the input has {len(in_spatial)} spatial dims {tuple(in_spatial)} but the"
            f" kernel has {d} {kernel_size}."
        )
    strides = canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    output_padding = canonicalize_ints(output_padding, d, where, "output_padding", minimum=0)
    if isinstance(padding, str):
        if padding.upper() != "VALID":
            raise ValueError(
                f"{where}: `padding` must be an int, a tuple of {d} ints or (lo, hi) pairs, or"
                f" 'VALID'; got {padding!r} (transposed convs take PyTorch's numeric padding)."
            )
        padding = 0
    pads = canonicalize_padding(padding, d, where)
    for op, s, r in zip(output_padding, strides, dilation):
        if op >= max(s, r):
            raise ShapeError(
                f"{where}: `output_padding` must be smaller than the stride or the dilation,"
                f" got output_padding={output_padding} with strides={strides} and"
                f" dilation={dilation}."
            )
    return tuple(
        conv_transpose_output_size(w, k, s, p, op, r, where=where)
        for w, k, s, p, op, r in zip(in_spatial, kernel_size, strides, pads, output_padding, dilation)
    )


def pool_output_shape(
    in_spatial: Sequence[int],
    window_shape: Sequence[int],
    strides=None,
    padding: PaddingLike = 0,
    dilation=1,
    *,
    ceil_mode: bool = False,
    where: str = "pool",
) -> Shape:
    """Output spatial shape of a pooling window; ``strides=None`` means strides = window.

    Numeric padding may be at most half the (undilated) window on each side, PyTorch's rule: a
    window made only of padding would pool nothing. Padding names resolve to at most that much.

    >>> pool_output_shape((28, 28), (2, 2))
    (14, 14)
    """
    window_shape = canonicalize_window(window_shape, where, "window_shape")
    d = len(window_shape)
    strides = window_shape if strides is None else canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    pads = resolve_padding(padding, in_spatial, window_shape, strides, dilation, where)
    if not isinstance(padding, str):  # names (SAME...) never make a window of padding alone
        check_pool_padding(pads, window_shape, dilation, where)
    return conv_output_shape(
        in_spatial, window_shape, strides, pads, dilation, ceil_mode=ceil_mode, where=where
    )


def check_pool_padding(pads, window_shape, dilation, where: str = "pool") -> None:
    """PyTorch's rule: pooling padding at most ``window_shape // 2`` on each side (the window
    before dilation, as PyTorch checks it), so no window reads padding alone."""
    del dilation  # PyTorch bounds the padding by the undilated window
    for (lo, hi), k in zip(pads, window_shape):
        half = k // 2
        if lo > half or hi > half:
            raise ShapeError(
                f"{where}: padding must be at most half the window on each side, got padding"
                f" ({lo}, {hi}) for a window of size {k}; use padding <= {half}."
            )


def adaptive_windows(size: int, output_size: int) -> tuple[Pair, ...]:
    """PyTorch's adaptive pooling windows: output ``i`` pools ``[floor(i*W/O), ceil((i+1)*W/O))``.

    >>> adaptive_windows(5, 3)
    ((0, 2), (1, 4), (3, 5))
    """
    return tuple(((i * size) // output_size, -(-((i + 1) * size) // output_size)) for i in range(output_size))


# --------------------------------------------------------------------------------------------
# The fit explainer
# --------------------------------------------------------------------------------------------


class FitReport(NamedTuple):
    """Whether a window and stride tile a padded input exactly, in numbers and in words."""

    fits: bool  # the last window ends exactly at the padded input's end
    output_size: int  # floor rule, what every framework gives
    exact_output: float  # the seed's (W - F + lo + hi)/S + 1 before rounding
    unused: int  # input pixels (not padding) that no window reads
    paddings: tuple[tuple[int | Pair, int], ...]  # nearby paddings that fit, with their output size
    message: str


def _arith(w: int, keff: int, lo: int, hi: int, s: int) -> str:
    pad = f"2*{lo}" if lo == hi else f"{lo} + {hi}"
    return f"({w} - {keff} + {pad})/{s} + 1"


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x == int(x) else f"{x:.2f}"


def explain_fit(size: int, kernel_size: int, stride: int = 1, padding=0, dilation: int = 1) -> FitReport:
    """Explain, with the seed's arithmetic, whether a stride fits an input.

    >>> r = explain_fit(7, 3, 3)
    >>> r.fits, r.output_size, r.unused
    (False, 2, 1)
    >>> "(7 - 3 + 2*0)/3 + 1 = 2.33" in r.message
    True
    """
    where = "explain_fit"
    w = _as_int(size, where, "size")
    (k,) = canonicalize_window((kernel_size,), where)
    (s,) = canonicalize_ints(stride, 1, where, "stride")
    (r,) = canonicalize_ints(dilation, 1, where, "dilation")
    if isinstance(padding, str):
        ((lo, hi),) = resolve_padding(padding, (w,), (k,), (s,), (r,), where)
    else:
        lo, hi = _pair(padding, where)
    keff = _effective(k, r)
    out = conv_output_size(w, k, s, (lo, hi), r, where=where)
    exact_out = (w - keff + lo + hi) / s + 1
    read = set()
    for i in range(out):
        read.update(i * s + t * r - lo for t in range(k))
    unused = sum(1 for p in range(w) if p not in read)
    tail = (w + lo + hi - keff) % s
    fits = tail == 0

    suggestions: list[tuple[int | Pair, int]] = []
    for p in range(0, keff):  # padding >= the window would add windows that read only padding
        if (w + 2 * p - keff) % s == 0 and w + 2 * p >= keff and (p, p) != (lo, hi):
            suggestions.append((p, (w + 2 * p - keff) // s + 1))
        if len(suggestions) == 2:
            break
    if not suggestions:  # no symmetric padding fits: offer the smallest one-sided extra
        extra = (s - tail) % s
        suggestions.append(((lo, hi + extra), (w + lo + hi + extra - keff) // s + 1))

    kname = f"{k}-wide kernel" + (f" (dilation {r}: {keff} wide)" if r > 1 else "")
    pad_words = f"padding {lo}" if lo == hi else f"padding ({lo}, {hi})"
    arith = f"{_arith(w, keff, lo, hi, s)} = {_fmt(exact_out)}"
    if fits:
        msg = f"stride {s} fits a {w}-wide input with a {kname} and {pad_words}: {arith}, so {out} outputs"
        msg += f"; {unused} input pixel(s) fall between windows and are never read." if unused else "."
    else:
        sug = []
        for p, o in suggestions:
            plo, phi = (p, p) if isinstance(p, int) else p
            sug.append(f"padding {p} gives {_arith(w, keff, plo, phi, s)} = {o} outputs")
        msg = (
            f"stride {s} does not fit a {w}-wide input with a {kname} and {pad_words}:"
            f" {arith} is not a whole number, so frameworks round down to {out} outputs and"
            f" {unused} input pixel(s) are never read. Fix: " + "; or ".join(sug) + "."
        )
    return FitReport(fits, out, exact_out, unused, tuple(suggestions), msg)


# --------------------------------------------------------------------------------------------
# Parameter, FLOP and memory counts
# --------------------------------------------------------------------------------------------


def conv_params(
    kernel_size, in_channels: int, out_channels: int, *, groups: int = 1, bias: bool = True
) -> int:
    """Learnable parameters of a convolution: ``prod(F) * C_in/groups * K (+ K biases)``.

    The seed's example, ten 5x5x3 filters with biases:

    >>> conv_params(5, 3, 10)
    760
    """
    ks = canonicalize_window(kernel_size, "conv_params")
    check_groups(in_channels, out_channels, groups, "conv_params")
    return math.prod(ks) * (in_channels // groups) * out_channels + (out_channels if bias else 0)


def dense_params(in_features: int, out_features: int, *, bias: bool = True) -> int:
    """Learnable parameters of a fully-connected layer.

    >>> dense_params(32 * 32 * 3, 32 * 32 * 10)
    31467520
    """
    return in_features * out_features + (out_features if bias else 0)


def check_groups(in_channels: int, out_channels: int, groups: int, where: str) -> None:
    """Both channel counts must be divisible by ``groups``."""
    g = _as_int(groups, where, "groups")
    if g < 1:
        raise ShapeError(f"{where}: `groups` must be >= 1, got {groups}.")
    if in_channels % g:
        raise ShapeError(f"{where}: input channels ({in_channels}) must be divisible by groups ({g}).")
    if out_channels % g:
        raise ShapeError(f"{where}: out_channels ({out_channels}) must be divisible by groups ({g}).")


def conv_flops(
    out_spatial, kernel_size, in_channels: int, out_channels: int, *, groups: int = 1, bias: bool = True
) -> int:
    """FLOPs of one example's convolution. A multiply-add is 2 FLOPs; each bias add is 1.

    >>> conv_flops((28, 28), 5, 3, 10, bias=False) // 2   # the seed's 10 filters: multiply-adds
    588000
    """
    ks = canonicalize_window(kernel_size, "conv_flops")
    outputs = math.prod(out_spatial) * out_channels
    return outputs * (2 * math.prod(ks) * (in_channels // groups) + (1 if bias else 0))


def conv_transpose_flops(
    in_spatial,
    kernel_size,
    in_channels: int,
    out_channels: int,
    *,
    groups: int = 1,
    bias: bool = True,
    out_spatial=None,
) -> int:
    """FLOPs of a transposed convolution: every input pixel scatters one kernel (2 per MAC)."""
    ks = canonicalize_window(kernel_size, "conv_transpose_flops")
    macs = math.prod(in_spatial) * in_channels * math.prod(ks) * (out_channels // groups)
    adds = math.prod(out_spatial) * out_channels if (bias and out_spatial is not None) else 0
    return 2 * macs + adds


def dense_flops(in_features: int, out_features: int, *, bias: bool = True) -> int:
    """FLOPs of one example through a dense layer: ``2*in*out (+ out)``."""
    return 2 * in_features * out_features + (out_features if bias else 0)


def pool_flops(out_spatial, window_shape, channels: int) -> int:
    """FLOPs of pooling: one compare or add per window element per output."""
    return math.prod(out_spatial) * channels * math.prod(window_shape)


def activation_bytes(shape: Sequence[int], itemsize: int = 4) -> int:
    """Bytes held by one activation of ``shape`` (float32 by default)."""
    return math.prod(shape) * itemsize


# --------------------------------------------------------------------------------------------
# Receptive fields
# --------------------------------------------------------------------------------------------


class ReceptiveField(NamedTuple):
    """Receptive field along one spatial dim, in input pixels.

    ``size``: input pixels one output unit sees; ``jump``: input pixels between neighbouring
    output units; ``start``: input coordinate of the centre of the first unit's field (the
    centre of input pixel 0 is 0.0; negative means it is centred in the padding).
    """

    size: float
    jump: float
    start: float


def receptive_field_step(
    rf: ReceptiveField,
    kernel_size: int,
    stride: int = 1,
    pad_lo: int = 0,
    dilation: int = 1,
    *,
    transpose: bool = False,
) -> ReceptiveField:
    """Receptive field after one conv or pooling layer (Araujo et al., Distill 2019).

    ``size += (dilation*(F-1)) * jump``, ``jump *= S``, ``start += ((dilation*(F-1))/2 - lo) * jump``.
    For a transposed conv the stride divides the jump and each output sees
    ``ceil(keff / S)`` inputs.

    >>> rf = ReceptiveField(1, 1, 0.0)
    >>> rf = receptive_field_step(rf, 5, 1, 2); rf = receptive_field_step(rf, 2, 2)
    >>> rf
    ReceptiveField(size=6, jump=2, start=0.5)
    """
    keff = _effective(kernel_size, dilation)
    if transpose:
        taps = -(-keff // stride)
        jump = rf.jump / stride
        start = rf.start - ((keff - 1) / 2 - pad_lo) * jump
        return ReceptiveField(rf.size + (taps - 1) * rf.jump, jump, start)
    return ReceptiveField(
        rf.size + (keff - 1) * rf.jump,
        rf.jump * stride,
        rf.start + ((keff - 1) / 2 - pad_lo) * rf.jump,
    )


# --------------------------------------------------------------------------------------------
# Whole-op geometry: validates array shapes against hyperparameters, in the user's words
# --------------------------------------------------------------------------------------------


class ConvGeometry(NamedTuple):
    """Everything a conv op needs, checked and made concrete from shapes alone."""

    batch_shape: Shape  # leading batch dims of x (possibly ())
    in_spatial: Shape
    in_channels: int
    out_channels: int
    kernel_size: Shape
    strides: Shape
    dilation: Shape
    padding: tuple[Pair, ...]  # concrete (lo, hi) per spatial dim
    out_spatial: Shape
    groups: int

    @property
    def out_shape(self) -> Shape:
        return self.batch_shape + self.out_spatial + (self.out_channels,)


def _check_kernel_rank(kernel_shape, where: str, layout: str) -> int:
    if len(kernel_shape) < 3:
        raise ShapeError(
            f"{where}: `kernel` must have shape {layout} with at least one spatial dim, got"
            f" shape {tuple(kernel_shape)}."
        )
    return len(kernel_shape) - 2


def _check_input_rank(x_shape, d: int, kernel_shape, where: str) -> None:
    if len(x_shape) < d + 1:
        hint = (
            " A single-channel image needs a trailing channel dim: x[..., None]." if len(x_shape) == d else ""
        )
        raise ShapeError(
            f"{where}: `x` must have shape (*batch, *spatial, channels) with {d} spatial dim(s)"
            f" (the kernel's shape {tuple(kernel_shape)} has {d}), got shape {tuple(x_shape)}.{hint}"
        )
    if any(s < 1 for s in x_shape[-(d + 1) :]):
        raise ShapeError(
            f"{where}: every spatial and channel dim of `x` must be >= 1, got shape {tuple(x_shape)}."
        )


def _check_bias(bias_shape, out_channels: int, where: str) -> None:
    if bias_shape is not None and tuple(bias_shape) != (out_channels,):
        raise ShapeError(
            f"{where}: `bias` must have shape ({out_channels},), one per output channel, got"
            f" shape {tuple(bias_shape)}."
        )


def _check_padding_mode(mode: str, pads, in_spatial, where: str) -> None:
    if mode == "reflect":
        for (lo, hi), w in zip(pads, in_spatial):
            if lo >= w or hi >= w:
                raise ShapeError(
                    f"{where}: reflect padding must be smaller than the input, got padding"
                    f" ({lo}, {hi}) for a spatial size of {w}; use less padding or"
                    f" padding_mode='replicate'."
                )
    elif mode == "circular":
        for (lo, hi), w in zip(pads, in_spatial):
            if lo > w or hi > w:
                raise ShapeError(
                    f"{where}: circular padding can wrap at most once, got padding ({lo}, {hi})"
                    f" for a spatial size of {w}."
                )


def conv_geometry(
    x_shape,
    kernel_shape,
    bias_shape=None,
    *,
    strides=1,
    padding: PaddingLike = 0,
    dilation=1,
    groups: int = 1,
    padding_mode: str = "zeros",
    exact: bool = False,
    where: str = "conv",
) -> ConvGeometry:
    """Check a convolution's arguments and compute its concrete geometry.

    ``x``: ``(*batch, *spatial, c_in)``; ``kernel``: ``(*kernel_size, c_in // groups, c_out)``.

    >>> g = conv_geometry((32, 32, 3), (5, 5, 3, 10))
    >>> g.out_shape
    (28, 28, 10)
    """
    d = _check_kernel_rank(kernel_shape, where, "(*kernel_size, c_in // groups, c_out)")
    _check_input_rank(x_shape, d, kernel_shape, where)
    kernel_size = canonicalize_window(tuple(kernel_shape[:d]), where)
    in_spatial = tuple(x_shape[-(d + 1) : -1])
    c_in, c_out = x_shape[-1], kernel_shape[-1]
    if kernel_shape[-2] < 1 or c_out < 1:
        raise ShapeError(
            f"{where}: the kernel must have >= 1 input and output channel, got shape {tuple(kernel_shape)}."
        )
    g = _as_int(groups, where, "groups")
    if g < 1:
        raise ShapeError(f"{where}: `groups` must be >= 1, got {groups!r}.")
    if c_in % g:
        raise ShapeError(f"{where}: input channels ({c_in}) must be divisible by `groups` ({g}).")
    if c_out % g:
        raise ShapeError(
            f"{where}: out-channels ({c_out}, the kernel's last dim) must be divisible by `groups` ({g})."
        )
    if kernel_shape[-2] * g != c_in:
        per = f"{kernel_shape[-2]} per group x {g} groups; " if g > 1 else ""
        raise ShapeError(
            f"{where}: input has {c_in} channels but the kernel expects"
            f" {kernel_shape[-2] * g} ({per}kernel shape {tuple(kernel_shape)})."
        )
    _check_bias(bias_shape, c_out, where)
    strides = canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    mode = canonicalize_padding_mode(padding_mode, where)
    pads = resolve_padding(padding, in_spatial, kernel_size, strides, dilation, where)
    _check_padding_mode(mode, pads, in_spatial, where)
    out_spatial = conv_output_shape(
        in_spatial, kernel_size, strides, pads, dilation, exact=exact, where=where
    )
    return ConvGeometry(
        tuple(x_shape[: -(d + 1)]),
        in_spatial,
        c_in,
        c_out,
        kernel_size,
        strides,
        dilation,
        pads,
        out_spatial,
        g,
    )


def conv_transpose_geometry(
    x_shape,
    kernel_shape,
    bias_shape=None,
    *,
    strides=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups: int = 1,
    where: str = "conv_transpose",
) -> ConvGeometry:
    """Check a transposed convolution's arguments (kernel ``(*k, c_in, c_out // groups)``).

    ``padding`` in the result holds PyTorch's ``(lo, hi)`` crop of the full output.

    >>> conv_transpose_geometry((3, 3, 4), (3, 3, 4, 2), strides=2).out_shape
    (7, 7, 2)
    """
    d = _check_kernel_rank(kernel_shape, where, "(*kernel_size, c_in, c_out // groups)")
    _check_input_rank(x_shape, d, kernel_shape, where)
    kernel_size = canonicalize_window(tuple(kernel_shape[:d]), where)
    in_spatial = tuple(x_shape[-(d + 1) : -1])
    g = _as_int(groups, where, "groups")
    if g < 1:
        raise ShapeError(f"{where}: `groups` must be >= 1, got {groups!r}.")
    c_in = x_shape[-1]
    if kernel_shape[-2] != c_in:
        raise ShapeError(
            f"{where}: input has {c_in} channels but the kernel expects {kernel_shape[-2]}"
            f" (kernel shape {tuple(kernel_shape)}, laid out (*kernel_size, c_in, c_out // groups))."
        )
    if c_in % g:
        raise ShapeError(f"{where}: input channels ({c_in}) must be divisible by `groups` ({g}).")
    if kernel_shape[-1] < 1:
        raise ShapeError(
            f"{where}: the kernel must have >= 1 output channel, got shape {tuple(kernel_shape)}."
        )
    c_out = kernel_shape[-1] * g
    _check_bias(bias_shape, c_out, where)
    strides = canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    out_spatial = conv_transpose_output_shape(
        in_spatial, kernel_size, strides, padding, output_padding, dilation, where=where
    )
    pads = canonicalize_padding(0 if isinstance(padding, str) else padding, d, where)
    return ConvGeometry(
        tuple(x_shape[: -(d + 1)]),
        in_spatial,
        c_in,
        c_out,
        kernel_size,
        strides,
        dilation,
        pads,
        out_spatial,
        g,
    )


# --------------------------------------------------------------------------------------------
# Pooling geometry (used by jcnn.ops.pool and the pooling layers)
# --------------------------------------------------------------------------------------------


class PoolGeometry(NamedTuple):
    """Everything a windowed pooling op needs, checked and made concrete from shapes alone."""

    batch_shape: Shape  # leading batch dims of x (possibly ())
    in_spatial: Shape
    channels: int
    window_shape: Shape
    strides: Shape
    dilation: Shape
    padding: tuple[Pair, ...]  # the user's padding as concrete (lo, hi) pairs
    lax_padding: tuple[Pair, ...]  # `padding` plus ceil_mode's right overhang: what reduce_window gets
    out_spatial: Shape

    @property
    def out_shape(self) -> Shape:
        return self.batch_shape + self.out_spatial + (self.channels,)


def _as_bool(value, where: str, name: str) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's bool too
        return bool(value)
    raise TypeError(f"{where}: `{name}` must be True or False, got {value!r}.")


def check_pool_input(x_shape, d: int, source: str, where: str = "pool") -> None:
    """``x`` must be ``(*batch, *spatial, c)`` with ``d`` spatial dims, every one of them >= 1.

    ``source`` says where ``d`` came from, e.g. ``"`window_shape` (2, 2) has 2"``.
    """
    x_shape = tuple(x_shape)
    if len(x_shape) < d + 1:
        hint = " A single-channel input needs a trailing channel dim: x[..., None]."
        hint = hint if len(x_shape) == d else ""
        raise ShapeError(
            f"{where}: `x` must have shape (*batch, *spatial, channels) with {d} spatial dim(s)"
            f" ({source}), got shape {x_shape}.{hint}"
        )
    if any(s < 1 for s in x_shape[-(d + 1) :]):
        raise ShapeError(f"{where}: every spatial and channel dim of `x` must be >= 1, got shape {x_shape}.")


def pool_geometry(
    x_shape,
    window_shape,
    strides=None,
    padding: PaddingLike = 0,
    dilation=1,
    *,
    ceil_mode: bool = False,
    where: str = "pool",
) -> PoolGeometry:
    """Check a pooling op's arguments against ``x``'s shape and compute its concrete geometry.

    ``x``: ``(*batch, *spatial, c)``, ``d = len(window_shape)`` spatial dims (an int window is
    square 2-D). ``strides=None`` means strides = window. With ``ceil_mode`` the output size is
    PyTorch's, and the windows that overhang the right edge read ``lax_padding``'s extra high
    padding.

    >>> g = pool_geometry((8, 5, 5, 3), 2, ceil_mode=True)
    >>> g.out_shape, g.lax_padding
    ((8, 3, 3, 3), ((0, 1), (0, 1)))
    """
    window_shape = canonicalize_window(window_shape, where, "window_shape")
    d = len(window_shape)
    x_shape = tuple(x_shape)
    check_pool_input(x_shape, d, f"`window_shape` {window_shape} has {d}", where)
    strides = window_shape if strides is None else canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    ceil_mode = _as_bool(ceil_mode, where, "ceil_mode")
    in_spatial = x_shape[-(d + 1) : -1]
    pads = resolve_padding(padding, in_spatial, window_shape, strides, dilation, where)
    out_spatial = pool_output_shape(
        in_spatial,
        window_shape,
        strides,
        padding if isinstance(padding, str) else pads,
        dilation,
        ceil_mode=ceil_mode,
        where=where,
    )
    lax_pads = tuple(
        (lo, max(hi, (o - 1) * s + _effective(k, r) - w - lo))
        for (lo, hi), o, s, k, r, w in zip(pads, out_spatial, strides, window_shape, dilation, in_spatial)
    )
    batch_shape, channels = x_shape[: -(d + 1)], x_shape[-1]
    return PoolGeometry(
        batch_shape, in_spatial, channels, window_shape, strides, dilation, pads, lax_pads, out_spatial
    )


def canonicalize_output_size(output_size, where: str = "adaptive_pool") -> tuple[int | None, ...]:
    """An adaptive pool's ``output_size``: an int (square 2-D) or d entries, each an int >= 1
    or ``None`` (keep that dim's input size, as in PyTorch).

    >>> canonicalize_output_size(7)
    (7, 7)
    >>> canonicalize_output_size((None, 3))
    (None, 3)
    """
    if isinstance(output_size, (str, bytes)) or not isinstance(output_size, Sequence):
        o = _as_int(output_size, where, "output_size")
        output_size = (o, o)
    if len(output_size) == 0:
        raise ShapeError(f"{where}: `output_size` must have at least one spatial dim, got ().")
    out = tuple(None if o is None else _as_int(o, where, "output_size") for o in output_size)
    if any(o is not None and o < 1 for o in out):
        raise ShapeError(
            f"{where}: every entry of `output_size` must be >= 1 (or None to keep that dim),"
            f" got {tuple(output_size)!r}."
        )
    return out


def adaptive_output_shape(in_spatial: Sequence[int], output_size, where: str = "adaptive_pool") -> Shape:
    """Output spatial shape of an adaptive pool; ``None`` entries keep the input's size.

    Outputs larger than the input are allowed (PyTorch: windows of one or two pixels repeat).

    >>> adaptive_output_shape((5, 7), (None, 3))
    (5, 3)
    """
    out = canonicalize_output_size(output_size, where)
    if len(in_spatial) != len(out):
        raise ShapeError(
            f"{where}: the input has {len(in_spatial)} spatial dims {tuple(in_spatial)} but"
            f" `output_size` has {len(out)} {out}."
        )
    return tuple(w if o is None else o for w, o in zip(in_spatial, out))
