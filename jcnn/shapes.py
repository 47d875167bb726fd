"""Shape arithmetic for jcnn: padding forms, output sizes, the fit explainer, parameter, FLOP
and memory counts, receptive fields, and the frozen hyperparameter specs (`ConvSpec`,
`ConvTransposeSpec`, `PoolSpec`, `AdaptivePoolSpec`) with the geometry they give an input shape.
Owns every shape error message.

Pure Python integers only; this module never imports ``jax.numpy``, so everything in it is free
under ``jit`` and usable without a device.

The output size of a sliding window follows the lecture's formula with floor division, like
every peer (PyTorch, XLA, Keras)::

    out = floor((W + lo + hi - dilation*(F-1) - 1) / S) + 1

For symmetric padding ``P`` and no dilation this is the seed's ``(W - F + 2P)/S + 1``.

Hyperparameters are parsed once: a ``*_spec`` builder checks every hyperparameter and returns a
frozen, canonical spec (layers build theirs in the constructor, the public ops on each call);
the ``*_geometry`` functions take a spec and the arrays' shapes, check the shapes only, and
never re-canonicalise. The public size helpers (`conv_output_size`, `pool_output_shape`, ...)
canonicalise their loose arguments and run the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Union

from jcnn import checks
from jcnn.checks import ShapeError

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
    "adaptive_output_shape",
    "explain_fit",
    "fit_warning",
    "conv_params",
    "dense_params",
    "conv_flops",
    "conv_transpose_flops",
    "dense_flops",
    "pool_flops",
    "activation_bytes",
    "receptive_field_step",
    "ConvSpec",
    "ConvTransposeSpec",
    "PoolSpec",
    "AdaptivePoolSpec",
    "ConvGeometry",
    "ConvTransposeGeometry",
    "PoolGeometry",
    "AdaptivePoolGeometry",
    "conv_spec",
    "conv_transpose_spec",
    "pool_spec",
    "adaptive_pool_spec",
    "global_pool_spec",
    "conv_geometry",
    "conv_transpose_geometry",
    "pool_geometry",
    "adaptive_pool_geometry",
    "check_input",
]


# --------------------------------------------------------------------------------------------
# Canonicalisation of loose hyperparameters
# --------------------------------------------------------------------------------------------


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


def canonicalize_padding(padding: PaddingLike, d: int, where: str = "conv") -> str | tuple[Pair, ...]:
    """Every accepted padding form as either an upper-case name or ``d`` ``(lo, hi)`` pairs.

    Accepted: an int (same on both sides of every dim), a tuple of ``d`` ints, a tuple of ``d``
    ``(lo, hi)`` pairs, or one of ``"VALID"``, ``"SAME"`` (the odd pixel goes high, as in
    TensorFlow), ``"SAME_LOWER"`` (it goes low), ``"CAUSAL"`` (1-D: all padding low).
    Names are case-insensitive. The specs call this once per construction; nothing else in
    jcnn canonicalises padding again.

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
            pairs = []
            for entry in padding:
                if isinstance(entry, Sequence) and not isinstance(entry, str):
                    if len(entry) != 2:
                        raise ShapeError(
                            f"{where}: `padding` must be {forms}; got {padding!r}, whose entry"
                            f" {entry!r} is not a (lo, hi) pair."
                        )
                    pairs.append((side(entry[0]), side(entry[1])))
                else:
                    p = side(entry)
                    pairs.append((p, p))
            pairs = tuple(pairs)
    except TypeError:
        raise TypeError(f"{where}: `padding` must be {forms}; got {padding!r}.") from None
    if any(lo < 0 or hi < 0 for lo, hi in pairs):
        raise ShapeError(f"{where}: padding must be >= 0 on every side, got {padding!r}.")
    return pairs


def canonicalize_padding_mode(mode: str, where: str = "conv") -> str:
    """``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (case-insensitive).

    >>> canonicalize_padding_mode("Reflect")
    'reflect'
    """
    return checks.one_of(mode, PADDING_MODES, where, "padding_mode", case_insensitive=True)


def _effective(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) + 1


def _same_pair(size: int, kernel: int, stride: int, dilation: int, lower: bool) -> Pair:
    out = -(-size // stride)
    total = max((out - 1) * stride + _effective(kernel, dilation) - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def _resolve(canon, in_spatial, kernel_size, strides, dilation) -> tuple[Pair, ...]:
    """Concrete pairs from canonical padding (a name or pairs): the arithmetic, no checks."""
    if not isinstance(canon, str):
        return canon
    d = len(kernel_size)
    if canon == "VALID":
        return ((0, 0),) * d
    if canon == "CAUSAL":
        return ((_effective(kernel_size[0], dilation[0]) - 1, 0),)
    lower = canon == "SAME_LOWER"
    return tuple(
        _same_pair(w, k, s, r, lower) for w, k, s, r in zip(in_spatial, kernel_size, strides, dilation)
    )


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
    return _resolve(
        canonicalize_padding(padding, len(kernel_size), where), in_spatial, kernel_size, strides, dilation
    )


# --------------------------------------------------------------------------------------------
# Output sizes
# --------------------------------------------------------------------------------------------


def _pair(padding, where: str) -> Pair:
    """One dim's padding (an int or a ``(lo, hi)`` pair) as a checked pair."""
    if isinstance(padding, Sequence) and not isinstance(padding, str):
        (pair,) = canonicalize_padding((tuple(padding),), 1, where)
        return pair
    (pair,) = canonicalize_padding(padding, 1, where)
    return pair


def _output_size(
    w: int,
    k: int,
    s: int,
    lo: int,
    hi: int,
    r: int,
    *,
    ceil_mode: bool = False,
    exact: bool = False,
    where: str,
    what: str = "kernel",
    label: str = "",
) -> int:
    """The output length of one dim from canonical ints: the arithmetic and its shape errors.

    ``what`` names the sliding thing in messages (``"kernel"`` or ``"window"``); ``label``
    says which dim of which input, for ``exact``'s message.
    """
    keff = _effective(k, r)
    span = w + lo + hi - keff
    # ceil_mode lets windows overhang the right edge, even the first one: PyTorch gives
    # ceil(span / S) + 1 >= 1 outputs whenever span > -S (e.g. a 3x3/3 ceil pool of a 2x2 input).
    if span < 0 and not (ceil_mode and span > -s):
        dil = f" (dilation {r} makes it {keff} wide)" if r > 1 else ""
        raise ShapeError(
            f"{where}: the {what} of size {k}{dil} is larger than the padded input of size"
            f" {w + lo + hi} (input {w} + padding {lo} + {hi}); use a smaller {what} or more padding."
        )
    if exact:
        report = _explain(w, k, s, lo, hi, r)
        if not report.fits or report.unused:
            raise ShapeError(f"{where}: {label + ': ' if label else ''}exact=True, but {report.message}")
    floor_out = span // s + 1 if span >= 0 else 0
    if ceil_mode:
        out = -(-span // s) + 1
        # PyTorch drops the extra ceil window when it would start in the right padding; the
        # windows the floor rule already counts always stay.
        if out > floor_out and (out - 1) * s >= w + lo:
            out -= 1
        return max(out, floor_out)
    return floor_out


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
    w = checks.as_int(size, where, "size")
    if w < 1:
        raise ShapeError(f"{where}: input size must be >= 1, got {size!r}.")
    (k,) = canonicalize_window((kernel_size,), where)
    (s,) = canonicalize_ints(stride, 1, where, "stride")
    (r,) = canonicalize_ints(dilation, 1, where, "dilation")
    if isinstance(padding, str):
        ((lo, hi),) = resolve_padding(padding, (w,), (k,), (s,), (r,), where)
    else:
        lo, hi = _pair(padding, where)
    ceil_mode = checks.as_bool(ceil_mode, where, "ceil_mode")
    exact = checks.as_bool(exact, where, "exact")
    return _output_size(w, k, s, lo, hi, r, ceil_mode=ceil_mode, exact=exact, where=where)


def _check_spatial_rank(in_spatial, d: int, what: str, where: str) -> Shape:
    in_spatial = checks.as_ints(tuple(in_spatial), len(in_spatial), where, "in_spatial")
    if len(in_spatial) != d:
        raise ShapeError(f"{where}: the input has {len(in_spatial)} spatial dims {in_spatial} but {what}.")
    return in_spatial


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
    """Output spatial shape of a d-D convolution (``d = len(kernel_size)``).

    >>> conv_output_shape((32, 32), (5, 5))
    (28, 28)
    """
    kernel_size = canonicalize_window(kernel_size, where)
    d = len(kernel_size)
    in_spatial = _check_spatial_rank(in_spatial, d, f"the kernel has {d} {kernel_size}", where)
    strides = canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    pads = resolve_padding(padding, in_spatial, kernel_size, strides, dilation, where)
    ceil_mode = checks.as_bool(ceil_mode, where, "ceil_mode")
    exact = checks.as_bool(exact, where, "exact")
    return tuple(
        _output_size(w, k, s, lo, hi, r, ceil_mode=ceil_mode, exact=exact, where=where)
        for w, k, s, (lo, hi), r in zip(in_spatial, kernel_size, strides, pads, dilation)
    )


def _transpose_size(w: int, k: int, s: int, lo: int, hi: int, op: int, r: int, where: str) -> int:
    out = (w - 1) * s - (lo + hi) + r * (k - 1) + op + 1
    if out < 1:
        raise ShapeError(
            f"{where}: padding ({lo}, {hi}) is too large for an input of size {w} with kernel"
            f" size {k} and stride {s}: the output would have size {out}."
        )
    return out


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
    w = checks.as_int(size, where, "size", minimum=1)
    one_dim = padding if isinstance(padding, str) else (padding,)  # an int or one (lo, hi) pair
    spec = conv_transpose_spec((kernel_size,), stride, one_dim, output_padding, dilation, where=where)
    ((lo, hi),) = spec.crop
    return _transpose_size(
        w, spec.kernel_size[0], spec.strides[0], lo, hi, spec.output_padding[0], spec.dilation[0], where
    )


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

    >>> conv_transpose_output_shape((3, 3), 3, 2, 1, 1)
    (6, 6)
    """
    spec = conv_transpose_spec(kernel_size, strides, padding, output_padding, dilation, where=where)
    in_spatial = _check_spatial_rank(in_spatial, spec.d, f"the kernel has {spec.d} {spec.kernel_size}", where)
    return _transpose_out(spec, in_spatial, where)


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
    spec = pool_spec(window_shape, strides, padding, dilation, ceil_mode=ceil_mode, where=where)
    d = len(spec.window_shape)
    in_spatial = _check_spatial_rank(in_spatial, d, f"the window has {d} {spec.window_shape}", where)
    return _pool_out(spec, in_spatial, where)[1]


def check_pool_padding(pads, window_shape, where: str = "pool") -> None:
    """PyTorch's rule: pooling padding at most ``window_shape // 2`` on each side (the window
    before dilation, as PyTorch checks it), so no window reads padding alone."""
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


def adaptive_output_shape(in_spatial: Sequence[int], output_size, where: str = "adaptive_pool") -> Shape:
    """Output spatial shape of an adaptive pool; ``None`` entries keep the input's size.

    Outputs larger than the input are allowed (PyTorch: windows of one or two pixels repeat).

    >>> adaptive_output_shape((5, 7), (None, 3))
    (5, 3)
    """
    spec = adaptive_pool_spec(output_size, where)
    d = len(spec.output_size)
    in_spatial = _check_spatial_rank(in_spatial, d, f"`output_size` has {d} {spec.output_size}", where)
    return _adaptive_out(spec, in_spatial)


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


def _explain(w: int, k: int, s: int, lo: int, hi: int, r: int) -> FitReport:
    """`explain_fit` on canonical ints (the geometry's ``exact`` rule uses it too)."""
    keff = _effective(k, r)
    out = _output_size(w, k, s, lo, hi, r, where="explain_fit")
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


def explain_fit(size: int, kernel_size: int, stride: int = 1, padding=0, dilation: int = 1) -> FitReport:
    """Explain, with the seed's arithmetic, whether a stride fits an input.

    >>> r = explain_fit(7, 3, 3)
    >>> r.fits, r.output_size, r.unused
    (False, 2, 1)
    >>> "(7 - 3 + 2*0)/3 + 1 = 2.33" in r.message
    True
    """
    where = "explain_fit"
    w = checks.as_int(size, where, "size", minimum=1)
    (k,) = canonicalize_window((kernel_size,), where)
    (s,) = canonicalize_ints(stride, 1, where, "stride")
    (r,) = canonicalize_ints(dilation, 1, where, "dilation")
    if isinstance(padding, str):
        ((lo, hi),) = resolve_padding(padding, (w,), (k,), (s,), (r,), where)
    else:
        lo, hi = _pair(padding, where)
    return _explain(w, k, s, lo, hi, r)


def fit_warning(in_spatial, kernel_size, strides, pads, dilation) -> str | None:
    """`explain_fit`'s words for the spatial dims where a stride leaves input unread, or None.

    Takes a geometry's canonical values (concrete ``(lo, hi)`` pairs); the summary shows it.

    >>> fit_warning((7, 9), (3, 3), (3, 3), ((0, 0), (0, 0)), (1, 1))[:40]
    'spatial dim 0: stride 3 does not fit a 7'
    """
    by_message: dict[str, list[int]] = {}
    for i, (w, k, s, (lo, hi), r) in enumerate(zip(in_spatial, kernel_size, strides, pads, dilation)):
        report = _explain(w, k, s, lo, hi, r)
        if report.unused:
            by_message.setdefault(report.message, []).append(i)
    notes = [
        f"spatial dim{'s' if len(dims) > 1 else ''} {', '.join(map(str, dims))}: {message}"
        for message, dims in by_message.items()
    ]
    return " ".join(notes) if notes else None


# --------------------------------------------------------------------------------------------
# Parameter, FLOP and memory counts
# --------------------------------------------------------------------------------------------


def _conv_params(kernel_size: Shape, in_channels: int, out_channels: int, groups: int, bias: bool) -> int:
    return math.prod(kernel_size) * (in_channels // groups) * out_channels + (out_channels if bias else 0)


def _conv_flops(
    out_spatial, kernel_size: Shape, in_channels: int, out_channels: int, groups: int, bias: bool
) -> int:
    outputs = math.prod(out_spatial) * out_channels
    return outputs * (2 * math.prod(kernel_size) * (in_channels // groups) + (1 if bias else 0))


def conv_params(
    kernel_size, in_channels: int, out_channels: int, *, groups: int = 1, bias: bool = True
) -> int:
    """Learnable parameters of a convolution: ``prod(F) * C_in/groups * K (+ K biases)``.

    The seed's example, ten 5x5x3 filters with biases:

    >>> conv_params(5, 3, 10)
    760
    """
    where = "conv_params"
    ks = canonicalize_window(kernel_size, where)
    g = checks.as_int(groups, where, "groups", minimum=1)
    checks.divisible(in_channels, g, where, "input channels")
    checks.divisible(out_channels, g, where, "out_channels")
    return _conv_params(ks, in_channels, out_channels, g, bias)


def dense_params(in_features: int, out_features: int, *, bias: bool = True) -> int:
    """Learnable parameters of a fully-connected layer.

    >>> dense_params(32 * 32 * 3, 32 * 32 * 10)
    31467520
    """
    return in_features * out_features + (out_features if bias else 0)


def conv_flops(
    out_spatial, kernel_size, in_channels: int, out_channels: int, *, groups: int = 1, bias: bool = True
) -> int:
    """FLOPs of one example's convolution. A multiply-add is 2 FLOPs; each bias add is 1.

    >>> conv_flops((28, 28), 5, 3, 10, bias=False) // 2   # the seed's 10 filters: multiply-adds
    588000
    """
    ks = canonicalize_window(kernel_size, "conv_flops")
    return _conv_flops(out_spatial, ks, in_channels, out_channels, groups, bias)


def _conv_transpose_flops(
    in_spatial, kernel_size, in_channels, out_channels, groups, bias, out_spatial
) -> int:
    macs = math.prod(in_spatial) * in_channels * math.prod(kernel_size) * (out_channels // groups)
    adds = math.prod(out_spatial) * out_channels if (bias and out_spatial is not None) else 0
    return 2 * macs + adds


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
    """FLOPs of a transposed convolution: every input pixel scatters one kernel (2 per MAC).

    >>> conv_transpose_flops((3, 3), 3, 4, 2, bias=False)
    1296
    """
    ks = canonicalize_window(kernel_size, "conv_transpose_flops")
    return _conv_transpose_flops(in_spatial, ks, in_channels, out_channels, groups, bias, out_spatial)


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
# Specs: hyperparameters checked and canonicalised once
# --------------------------------------------------------------------------------------------


class ConvSpec(NamedTuple):
    """A convolution's canonical hyperparameters (build with `conv_spec`)."""

    kernel_size: Shape
    strides: Shape
    padding: str | tuple[Pair, ...]  # an upper-case name (resolved per input) or d (lo, hi) pairs
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

    ``kernel_size``: an int (square 2-D) or d ints; the rest as in `jcnn.ops.conv`.

    >>> conv_spec(5, padding=2)
    ConvSpec(kernel_size=(5, 5), strides=(1, 1), padding=((2, 2), (2, 2)), dilation=(1, 1), groups=1, padding_mode='zeros', exact=False)
    """
    ks = canonicalize_window(kernel_size, where)
    d = len(ks)
    return ConvSpec(
        ks,
        canonicalize_ints(strides, d, where, "strides"),
        canonicalize_padding(padding, d, where),
        canonicalize_ints(dilation, d, where, "dilation"),
        checks.as_int(groups, where, "groups", minimum=1),
        canonicalize_padding_mode(padding_mode, where),
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
    strides=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups: int = 1,
    *,
    where: str = "conv_transpose",
) -> ConvTransposeSpec:
    """Check a transposed convolution's hyperparameters once (PyTorch's ConvTranspose rules).

    ``padding`` is PyTorch's crop: an int, d ints, d ``(lo, hi)`` pairs or ``"VALID"`` (= 0);
    ``output_padding`` must be smaller than the stride or the dilation.

    >>> conv_transpose_spec(3, 2, 1, 1).crop
    ((1, 1), (1, 1))
    """
    ks = canonicalize_window(kernel_size, where)
    d = len(ks)
    strides = canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    output_padding = canonicalize_ints(output_padding, d, where, "output_padding", minimum=0)
    crop = canonicalize_padding(padding, d, where)
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
    padding: str | tuple[Pair, ...]  # an upper-case name or d (lo, hi) pairs, at most half the window
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

    >>> pool_spec(2)
    PoolSpec(window_shape=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)), dilation=(1, 1), ceil_mode=False, count_include_pad=True, divisor_override=None)
    """
    window = canonicalize_window(window_shape, where, "window_shape")
    d = len(window)
    strides = window if strides is None else canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    padding = canonicalize_padding(padding, d, where)
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


# --------------------------------------------------------------------------------------------
# Geometry: a spec and the arrays' shapes -> concrete sizes. Shapes are checked, never the spec.
# --------------------------------------------------------------------------------------------


def check_input(x_shape, d: int, source: str, where: str, batch_ndim: int | None = None) -> Shape:
    """``x`` must be ``(*batch, *spatial, c)`` with ``d`` spatial dims, every one of them >= 1.

    The one rank check of the ops and the layers' ``apply``. The ops take any number of leading
    batch dims (``batch_ndim=None``); a layer's ``apply`` is told how many it gets
    (``batch_ndim``, see `jcnn.layers.Layer`) and needs exactly that many.
    ``source`` says where ``d`` came from, e.g. ``"`window_shape` (2, 2) has 2"``.

    >>> check_input((4, 28, 28, 1), 2, "`window_shape` (2, 2) has 2", "max_pool")
    (4, 28, 28, 1)
    """
    x_shape = tuple(x_shape)
    if batch_ndim is not None and len(x_shape) != batch_ndim + d + 1:
        batch = "one example" if batch_ndim == 0 else f"{batch_ndim} leading batch dim(s) and one example"
        hint = ""
        if len(x_shape) > batch_ndim + d + 1:
            hint = (
                f" For a batch pass `batch_ndim={len(x_shape) - d - 1}` to `apply`, or use"
                " jcnn.layers.batched(model)."
            )
        raise ShapeError(
            f"{where}: `apply` expects {batch} of shape (*spatial, channels) with {d} spatial dim(s)"
            f" ({source}), got x of shape {x_shape}.{hint}"
        )
    if len(x_shape) < d + 1:
        hint = (
            " A single-channel input needs a trailing channel dim: x[..., None]." if len(x_shape) == d else ""
        )
        raise ShapeError(
            f"{where}: `x` must have shape (*batch, *spatial, channels) with {d} spatial dim(s)"
            f" ({source}), got shape {x_shape}.{hint}"
        )
    if any(s < 1 for s in x_shape[-(d + 1) :]):
        raise ShapeError(f"{where}: every spatial and channel dim of `x` must be >= 1, got shape {x_shape}.")
    return x_shape


class ConvGeometry(NamedTuple):
    """Everything a conv op needs for one input shape, checked and made concrete."""

    batch_shape: Shape  # leading batch dims of x (possibly ())
    in_spatial: Shape
    in_channels: int
    out_channels: int
    kernel_size: Shape
    strides: Shape
    dilation: Shape
    padding: tuple[Pair, ...]  # concrete (lo, hi) per spatial dim
    padding_mode: str
    out_spatial: Shape
    groups: int

    @property
    def out_shape(self) -> Shape:
        return self.batch_shape + self.out_spatial + (self.out_channels,)

    def params(self, bias: bool) -> int:
        """Learnable parameters: ``prod(F) * c_in/groups * c_out (+ c_out)``."""
        return _conv_params(self.kernel_size, self.in_channels, self.out_channels, self.groups, bias)

    def flops(self, bias: bool) -> int:
        """FLOPs of one example (a multiply-add is 2, a bias add 1)."""
        return _conv_flops(
            self.out_spatial, self.kernel_size, self.in_channels, self.out_channels, self.groups, bias
        )


def _check_kernel(kernel_shape, kernel_size: Shape, where: str, layout: str) -> Shape:
    kernel_shape = tuple(kernel_shape)
    d = len(kernel_size)
    if len(kernel_shape) != d + 2 or kernel_shape[:d] != kernel_size:
        raise ShapeError(
            f"{where}: `kernel` must have shape {layout} with kernel_size {kernel_size}, got shape {kernel_shape}."
        )
    return kernel_shape


def kernel_size_of(kernel_shape, where: str, layout: str) -> Shape:
    """The spatial part of an op's kernel shape (an op's spatial rank comes from its kernel)."""
    kernel_shape = tuple(kernel_shape)
    if len(kernel_shape) < 3:
        raise ShapeError(
            f"{where}: `kernel` must have shape {layout} with at least one spatial dim, got"
            f" shape {kernel_shape}."
        )
    return kernel_shape[:-2]


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


CONV_KERNEL_LAYOUT = "(*kernel_size, c_in // groups, c_out)"
CONV_TRANSPOSE_KERNEL_LAYOUT = "(*kernel_size, c_in, c_out // groups)"


def conv_geometry(
    spec: ConvSpec, x_shape, kernel_shape, bias_shape=None, *, where: str = "conv"
) -> ConvGeometry:
    """A convolution's concrete geometry for these shapes: checks the shapes, not the spec.

    ``x``: ``(*batch, *spatial, c_in)``; ``kernel``: ``(*kernel_size, c_in // groups, c_out)``.

    >>> g = conv_geometry(conv_spec(5), (32, 32, 3), (5, 5, 3, 10))
    >>> g.out_shape
    (28, 28, 10)
    """
    d = spec.d
    kernel_shape = _check_kernel(kernel_shape, spec.kernel_size, where, CONV_KERNEL_LAYOUT)
    x_shape = check_input(x_shape, d, f"the kernel's shape {kernel_shape} has {d}", where)
    in_spatial = x_shape[-(d + 1) : -1]
    c_in, c_out, g = x_shape[-1], kernel_shape[-1], spec.groups
    if kernel_shape[-2] < 1 or c_out < 1:
        raise ShapeError(
            f"{where}: the kernel must have >= 1 input and output channel, got shape {kernel_shape}."
        )
    checks.divisible(c_in, g, where, "input channels")
    checks.divisible(c_out, g, where, "the kernel's out-channels")
    if kernel_shape[-2] * g != c_in:
        per = f"{kernel_shape[-2]} per group x {g} groups; " if g > 1 else ""
        raise ShapeError(
            f"{where}: input has {c_in} channels but the kernel expects {kernel_shape[-2] * g}"
            f" ({per}kernel shape {kernel_shape}, x shape {x_shape})."
        )
    _check_bias(bias_shape, c_out, where)
    pads = _resolve(spec.padding, in_spatial, spec.kernel_size, spec.strides, spec.dilation)
    _check_padding_mode(spec.padding_mode, pads, in_spatial, where)
    out_spatial = tuple(
        _output_size(
            w,
            k,
            s,
            lo,
            hi,
            r,
            exact=spec.exact,
            where=where,
            label=f"spatial dim {i} of input shape {x_shape}",
        )
        for i, (w, k, s, (lo, hi), r) in enumerate(
            zip(in_spatial, spec.kernel_size, spec.strides, pads, spec.dilation)
        )
    )
    return ConvGeometry(
        x_shape[: -(d + 1)],
        in_spatial,
        c_in,
        c_out,
        spec.kernel_size,
        spec.strides,
        spec.dilation,
        pads,
        spec.padding_mode,
        out_spatial,
        g,
    )


class ConvTransposeGeometry(NamedTuple):
    """Everything a transposed conv op needs for one input shape, checked and made concrete."""

    batch_shape: Shape
    in_spatial: Shape
    in_channels: int
    out_channels: int
    kernel_size: Shape
    strides: Shape
    dilation: Shape
    crop: tuple[Pair, ...]  # PyTorch's padding: (lo, hi) cropped from the full output
    output_padding: Shape
    out_spatial: Shape
    groups: int

    @property
    def out_shape(self) -> Shape:
        return self.batch_shape + self.out_spatial + (self.out_channels,)

    def params(self, bias: bool) -> int:
        """Learnable parameters: ``prod(F) * c_in * c_out/groups (+ c_out)``."""
        return _conv_params(self.kernel_size, self.in_channels, self.out_channels, self.groups, bias)

    def flops(self, bias: bool) -> int:
        """FLOPs of one example: every input pixel scatters one kernel (2 per MAC)."""
        return _conv_transpose_flops(
            self.in_spatial,
            self.kernel_size,
            self.in_channels,
            self.out_channels,
            self.groups,
            bias,
            self.out_spatial,
        )


def _transpose_out(spec: ConvTransposeSpec, in_spatial, where: str) -> Shape:
    return tuple(
        _transpose_size(w, k, s, lo, hi, op, r, where)
        for w, k, s, (lo, hi), op, r in zip(
            in_spatial, spec.kernel_size, spec.strides, spec.crop, spec.output_padding, spec.dilation
        )
    )


def conv_transpose_geometry(
    spec: ConvTransposeSpec, x_shape, kernel_shape, bias_shape=None, *, where: str = "conv_transpose"
) -> ConvTransposeGeometry:
    """A transposed convolution's concrete geometry (kernel ``(*k, c_in, c_out // groups)``).

    >>> conv_transpose_geometry(conv_transpose_spec(3, 2), (3, 3, 4), (3, 3, 4, 2)).out_shape
    (7, 7, 2)
    """
    d = spec.d
    kernel_shape = _check_kernel(kernel_shape, spec.kernel_size, where, CONV_TRANSPOSE_KERNEL_LAYOUT)
    x_shape = check_input(x_shape, d, f"the kernel's shape {kernel_shape} has {d}", where)
    c_in, g = x_shape[-1], spec.groups
    if kernel_shape[-2] != c_in:
        raise ShapeError(
            f"{where}: input has {c_in} channels but the kernel expects {kernel_shape[-2]}"
            f" (kernel shape {kernel_shape}, laid out {CONV_TRANSPOSE_KERNEL_LAYOUT}, x shape {x_shape})."
        )
    checks.divisible(c_in, g, where, "input channels")
    if kernel_shape[-1] < 1:
        raise ShapeError(f"{where}: the kernel must have >= 1 output channel, got shape {kernel_shape}.")
    c_out = kernel_shape[-1] * g
    _check_bias(bias_shape, c_out, where)
    in_spatial = x_shape[-(d + 1) : -1]
    return ConvTransposeGeometry(
        x_shape[: -(d + 1)],
        in_spatial,
        c_in,
        c_out,
        spec.kernel_size,
        spec.strides,
        spec.dilation,
        spec.crop,
        spec.output_padding,
        _transpose_out(spec, in_spatial, where),
        g,
    )


class PoolGeometry(NamedTuple):
    """Everything a windowed pooling op needs for one input shape, checked and made concrete."""

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


def _pool_out(spec: PoolSpec, in_spatial, where: str) -> tuple[tuple[Pair, ...], Shape]:
    pads = _resolve(spec.padding, in_spatial, spec.window_shape, spec.strides, spec.dilation)
    out = tuple(
        _output_size(w, k, s, lo, hi, r, ceil_mode=spec.ceil_mode, where=where, what="window")
        for w, k, s, (lo, hi), r in zip(in_spatial, spec.window_shape, spec.strides, pads, spec.dilation)
    )
    return pads, out


def pool_geometry(spec: PoolSpec, x_shape, *, where: str = "pool") -> PoolGeometry:
    """A windowed pool's concrete geometry for ``x``'s shape ``(*batch, *spatial, c)``.

    With ``ceil_mode`` the output size is PyTorch's, and the windows that overhang the right
    edge read ``lax_padding``'s extra high padding.

    >>> g = pool_geometry(pool_spec(2, ceil_mode=True), (8, 5, 5, 3))
    >>> g.out_shape, g.lax_padding
    ((8, 3, 3, 3), ((0, 1), (0, 1)))
    """
    d = spec.d
    x_shape = check_input(x_shape, d, f"`window_shape` {spec.window_shape} has {d}", where)
    in_spatial = x_shape[-(d + 1) : -1]
    pads, out_spatial = _pool_out(spec, in_spatial, where)
    lax_pads = tuple(
        (lo, max(hi, (o - 1) * s + _effective(k, r) - w - lo))
        for (lo, hi), o, s, k, r, w in zip(
            pads, out_spatial, spec.strides, spec.window_shape, spec.dilation, in_spatial
        )
    )
    return PoolGeometry(
        x_shape[: -(d + 1)],
        in_spatial,
        x_shape[-1],
        spec.window_shape,
        spec.strides,
        spec.dilation,
        pads,
        lax_pads,
        out_spatial,
    )


class AdaptivePoolGeometry(NamedTuple):
    """An adaptive pool's concrete sizes for one input shape."""

    batch_shape: Shape
    in_spatial: Shape
    channels: int
    out_spatial: Shape
    windows: tuple[tuple[Pair, ...], ...]  # per dim, `adaptive_windows`: [start, end) of each output

    @property
    def out_shape(self) -> Shape:
        return self.batch_shape + self.out_spatial + (self.channels,)


def _adaptive_out(spec: AdaptivePoolSpec, in_spatial) -> Shape:
    return tuple(w if o is None else o for w, o in zip(in_spatial, spec.output_size))


def adaptive_pool_geometry(
    spec: AdaptivePoolSpec, x_shape, *, where: str = "adaptive_pool"
) -> AdaptivePoolGeometry:
    """An adaptive pool's output size and windows for ``x``'s shape ``(*batch, *spatial, c)``.

    >>> adaptive_pool_geometry(adaptive_pool_spec((None, 2)), (5, 4, 3)).windows
    (((0, 1), (1, 2), (2, 3), (3, 4), (4, 5)), ((0, 2), (2, 4)))
    """
    d = spec.d
    x_shape = check_input(x_shape, d, f"`output_size` {spec.output_size} has {d}", where)
    in_spatial = x_shape[-(d + 1) : -1]
    out_spatial = _adaptive_out(spec, in_spatial)
    windows = tuple(adaptive_windows(w, o) for w, o in zip(in_spatial, out_spatial))
    return AdaptivePoolGeometry(x_shape[: -(d + 1)], in_spatial, x_shape[-1], out_spatial, windows)
