"""Output sizes: how long each spatial dim of a convolution, transposed convolution or pooling
window's output is, from loose arguments (these canonicalise and then run the same arithmetic
the geometry uses).

The output size of a sliding window follows the lecture's formula with floor division, like
every peer (PyTorch, XLA, Keras)::

    out = floor((W + lo + hi - dilation*(F-1) - 1) / S) + 1

For symmetric padding ``P`` and no dilation this is the seed's ``(W - F + 2P)/S + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

from jcnn import checks
from jcnn.checks import ShapeError
from jcnn.shapes._arith import Pair, Shape, output_size, resolve, transpose_size
from jcnn.shapes.fit import _check_exact
from jcnn.shapes.padding import PaddingLike, _one_dim, resolve_padding
from jcnn.shapes.specs import (
    AdaptivePoolSpec,
    ConvTransposeSpec,
    PoolSpec,
    adaptive_pool_spec,
    canonicalize_ints,
    canonicalize_window,
    conv_transpose_spec,
    pool_spec,
)

__all__ = [
    "conv_output_size",
    "conv_output_shape",
    "conv_transpose_output_size",
    "conv_transpose_output_shape",
    "pool_output_shape",
    "adaptive_windows",
    "adaptive_output_shape",
]


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
      where: the public function or layer, for messages.

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
    lo, hi = _one_dim(padding, w, k, s, r, where)
    ceil_mode = checks.as_bool(ceil_mode, where, "ceil_mode")
    out = output_size(w, k, s, lo, hi, r, ceil_mode=ceil_mode, where=where)
    if checks.as_bool(exact, where, "exact"):
        _check_exact(w, k, s, lo, hi, r, where)
    return out


def _check_spatial_rank(in_spatial, d: int, what: str, where: str) -> Shape:
    in_spatial = checks.as_ints(tuple(in_spatial), len(in_spatial), where, "in_spatial")
    if len(in_spatial) != d:
        raise ShapeError(f"{where}: the input has {len(in_spatial)} spatial dims {in_spatial} but {what}.")
    return in_spatial


def conv_output_shape(
    in_spatial: Sequence[int],
    kernel_size: Sequence[int] | int,
    strides: Sequence[int] | int = 1,
    padding: PaddingLike = 0,
    dilation: Sequence[int] | int = 1,
    *,
    ceil_mode: bool = False,
    exact: bool = False,
    where: str = "conv",
) -> Shape:
    """Output spatial shape of a d-D convolution (``d = len(kernel_size)``).

    Args:
      in_spatial: the input's spatial sizes, d of them.
      kernel_size, strides, padding, dilation, ceil_mode, exact: as in `conv_output_size`,
        each an int or one entry per spatial dim (padding: any form of
        `jcnn.shapes.canonicalize_padding`).
      where: the public function or layer, for messages.

    Returns:
      The output's spatial shape.

    Raises:
      ShapeError: a rank mismatch, or a window that does not fit (see `conv_output_size`).

    >>> conv_output_shape((32, 32), (5, 5))
    (28, 28)
    """
    ks = canonicalize_window(kernel_size, where)
    d = len(ks)
    in_spatial = _check_spatial_rank(in_spatial, d, f"the kernel has {d} {ks}", where)
    strides = canonicalize_ints(strides, d, where, "strides")
    dilation = canonicalize_ints(dilation, d, where, "dilation")
    pads = resolve_padding(padding, in_spatial, ks, strides, dilation, where)
    ceil_mode = checks.as_bool(ceil_mode, where, "ceil_mode")
    exact = checks.as_bool(exact, where, "exact")
    out = []
    for w, k, s, (lo, hi), r in zip(in_spatial, ks, strides, pads, dilation):
        out.append(output_size(w, k, s, lo, hi, r, ceil_mode=ceil_mode, where=where))
        if exact:
            _check_exact(w, k, s, lo, hi, r, where)
    return tuple(out)


def _transpose_out(spec: ConvTransposeSpec, in_spatial: Sequence[int], where: str) -> Shape:
    return tuple(
        transpose_size(w, k, s, lo, hi, op, r, where)
        for w, k, s, (lo, hi), op, r in zip(
            in_spatial, spec.kernel_size, spec.strides, spec.crop, spec.output_padding, spec.dilation
        )
    )


def conv_transpose_output_size(
    size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | Pair | str = 0,
    output_padding: int = 0,
    dilation: int = 1,
    *,
    where: str = "conv_transpose",
) -> int:
    """Output length of one dim of a transposed convolution (PyTorch's ConvTranspose rule).

    ``out = (W - 1)*S - (lo + hi) + dilation*(F - 1) + output_padding + 1``.

    Args:
      size: input length ``W``.
      kernel_size: ``F``.
      stride: ``S``, the upsampling factor.
      padding: PyTorch's crop: an int, a ``(lo, hi)`` pair or ``"VALID"``.
      output_padding: extra rows on the high side, smaller than the stride or the dilation.
      dilation: spacing between kernel taps.
      where: the public function or layer, for messages.

    Returns:
      The output length.

    Raises:
      ShapeError: the crop leaves no output, or ``output_padding`` is too large.

    >>> conv_transpose_output_size(3, 3, stride=2)
    7
    """
    w = checks.as_int(size, where, "size", minimum=1)
    one_dim = padding if isinstance(padding, str) else (padding,)  # an int or one (lo, hi) pair
    spec = conv_transpose_spec((kernel_size,), stride, one_dim, output_padding, dilation, where=where)
    return _transpose_out(spec, (w,), where)[0]


def conv_transpose_output_shape(
    in_spatial: Sequence[int],
    kernel_size,
    strides=1,
    padding=0,
    output_padding=0,
    dilation=1,
    *,
    where: str = "conv_transpose",
) -> Shape:
    """Output spatial shape of a d-D transposed convolution; see `conv_transpose_output_size`.

    ``output_padding`` must be smaller than the stride or the dilation (PyTorch's rule).

    Args:
      in_spatial: the input's spatial sizes.
      kernel_size, strides, padding, output_padding, dilation: ints or one entry per dim.
      where: the public function or layer, for messages.

    Returns:
      The output's spatial shape.

    >>> conv_transpose_output_shape((3, 3), 3, 2, 1, 1)
    (6, 6)
    """
    spec = conv_transpose_spec(kernel_size, strides, padding, output_padding, dilation, where=where)
    in_spatial = _check_spatial_rank(in_spatial, spec.d, f"the kernel has {spec.d} {spec.kernel_size}", where)
    return _transpose_out(spec, in_spatial, where)


def _pool_out(spec: PoolSpec, in_spatial: Sequence[int], where: str) -> tuple[tuple[Pair, ...], Shape]:
    pads = resolve(spec.padding, in_spatial, spec.window_shape, spec.strides, spec.dilation)
    out = tuple(
        output_size(w, k, s, lo, hi, r, ceil_mode=spec.ceil_mode, where=where, what="window")
        for w, k, s, (lo, hi), r in zip(in_spatial, spec.window_shape, spec.strides, pads, spec.dilation)
    )
    return pads, out


def pool_output_shape(
    in_spatial: Sequence[int],
    window_shape,
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

    Args:
      in_spatial: the input's spatial sizes.
      window_shape, strides, padding, dilation, ceil_mode: as in `jcnn.ops.max_pool`.
      where: the public function or layer, for messages.

    Returns:
      The output's spatial shape.

    >>> pool_output_shape((28, 28), (2, 2))
    (14, 14)
    """
    spec = pool_spec(window_shape, strides, padding, dilation, ceil_mode=ceil_mode, where=where)
    d = len(spec.window_shape)
    in_spatial = _check_spatial_rank(in_spatial, d, f"the window has {d} {spec.window_shape}", where)
    return _pool_out(spec, in_spatial, where)[1]


def adaptive_windows(size: int, output_size: int) -> tuple[Pair, ...]:
    """PyTorch's adaptive pooling windows: output ``i`` pools ``[floor(i*W/O), ceil((i+1)*W/O))``.

    Args:
      size: the input length ``W``.
      output_size: the output length ``O`` (may exceed ``W``: windows then repeat).

    Returns:
      ``O`` ``(start, end)`` pairs.

    >>> adaptive_windows(5, 3)
    ((0, 2), (1, 4), (3, 5))
    """
    return tuple(((i * size) // output_size, -(-((i + 1) * size) // output_size)) for i in range(output_size))


def _adaptive_out(spec: AdaptivePoolSpec, in_spatial: Sequence[int]) -> Shape:
    return tuple(w if o is None else o for w, o in zip(in_spatial, spec.output_size))


def adaptive_output_shape(in_spatial: Sequence[int], output_size, where: str = "adaptive_pool") -> Shape:
    """Output spatial shape of an adaptive pool; ``None`` entries keep the input's size.

    Outputs larger than the input are allowed (PyTorch: windows of one or two pixels repeat).

    Args:
      in_spatial: the input's spatial sizes.
      output_size: an int (square 2-D) or one entry per dim, each an int or None.
      where: the public function or layer, for messages.

    Returns:
      The output's spatial shape.

    >>> adaptive_output_shape((5, 7), (None, 3))
    (5, 3)
    """
    spec = adaptive_pool_spec(output_size, where)
    d = len(spec.output_size)
    in_spatial = _check_spatial_rank(in_spatial, d, f"`output_size` has {d} {spec.output_size}", where)
    return _adaptive_out(spec, in_spatial)
