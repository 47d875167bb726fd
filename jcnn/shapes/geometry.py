"""Geometry: a spec and the arrays' shapes made concrete for one call (shapes checked, never the spec).

`check_input` is the one rank check of the ops and the layers' ``apply``. `conv_geometry` and
`conv_transpose_geometry` give one record type, `ConvGeometry` (the transposed one a subclass
with its own FLOP count and PyTorch's name for its padding, ``crop``); `pool_geometry` and
`adaptive_pool_geometry` give the pools'. Everything an op needs to call ``lax`` once is in them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from jcnn import checks
from jcnn.checks import ShapeError
from jcnn.shapes._arith import Pair, Shape, effective, output_size, resolve
from jcnn.shapes.counts import _conv_flops, _conv_params, _conv_transpose_flops
from jcnn.shapes.fit import _check_exact
from jcnn.shapes.sizes import _adaptive_out, _pool_out, _transpose_out, adaptive_windows
from jcnn.shapes.specs import AdaptivePoolSpec, ConvSpec, ConvTransposeSpec, PoolSpec

__all__ = [
    "CONV_KERNEL_LAYOUT",
    "CONV_TRANSPOSE_KERNEL_LAYOUT",
    "check_input",
    "kernel_size_of",
    "ConvGeometry",
    "ConvTransposeGeometry",
    "PoolGeometry",
    "AdaptivePoolGeometry",
    "conv_geometry",
    "conv_transpose_geometry",
    "pool_geometry",
    "adaptive_pool_geometry",
]

#: How a conv's kernel is laid out (HWIO), for messages.
CONV_KERNEL_LAYOUT = "(*kernel_size, c_in // groups, c_out)"
#: How a transposed conv's kernel is laid out (PyTorch's moved to channels last), for messages.
CONV_TRANSPOSE_KERNEL_LAYOUT = "(*kernel_size, c_in, c_out // groups)"


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


def kernel_size_of(kernel_shape: Sequence[int], where: str, layout: str) -> Shape:
    """The spatial part of an op's kernel shape (an op's spatial rank comes from its kernel).

    Raises:
      ShapeError: a kernel with fewer than three dims.

    >>> kernel_size_of((5, 5, 3, 10), "conv", CONV_KERNEL_LAYOUT)
    (5, 5)
    """
    kernel_shape = tuple(kernel_shape)
    if len(kernel_shape) < 3:
        raise ShapeError(
            f"{where}: `kernel` must have shape {layout} with at least one spatial dim, got"
            f" shape {kernel_shape}."
        )
    return kernel_shape[:-2]


class ConvGeometry(NamedTuple):
    """Everything a conv op needs for one input shape, checked and made concrete.

    The same fields describe a transposed conv (`ConvTransposeGeometry`): there ``padding`` is
    PyTorch's crop and ``output_padding`` its extra high rows; a conv's ``output_padding`` is
    zeros and a transposed conv's ``padding_mode`` ``"zeros"``.
    """

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
    output_padding: Shape = ()

    @property
    def out_shape(self) -> Shape:
        """``(*batch, *out_spatial, out_channels)``."""
        return self.batch_shape + self.out_spatial + (self.out_channels,)

    def params(self, bias: bool) -> int:
        """Learnable parameters: ``prod(F) * c_in/groups * c_out (+ c_out)`` (the same count
        for a transposed conv: ``prod(F) * c_in * c_out/groups``)."""
        return _conv_params(self.kernel_size, self.in_channels, self.out_channels, self.groups, bias)

    def flops(self, bias: bool) -> int:
        """FLOPs of one example (a multiply-add is 2, a bias add 1)."""
        return _conv_flops(
            self.out_spatial, self.kernel_size, self.in_channels, self.out_channels, self.groups, bias
        )


class ConvTransposeGeometry(ConvGeometry):
    """A transposed conv's `ConvGeometry`: its ``padding`` is PyTorch's crop (also ``crop``)."""

    __slots__ = ()

    @property
    def crop(self) -> tuple[Pair, ...]:
        """PyTorch's ``padding`` of a transposed conv: ``(lo, hi)`` cropped from the full output."""
        return self.padding

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


def _check_kernel(kernel_shape, kernel_size: Shape, where: str, layout: str) -> Shape:
    kernel_shape = tuple(kernel_shape)
    d = len(kernel_size)
    if len(kernel_shape) != d + 2 or kernel_shape[:d] != kernel_size:
        raise ShapeError(
            f"{where}: `kernel` must have shape {layout} with kernel_size {kernel_size}, got shape {kernel_shape}."
        )
    return kernel_shape


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


def _operands(spec: ConvSpec | ConvTransposeSpec, x_shape, kernel_shape, where: str, layout: str):
    """The shared checks of both convs: the kernel against the spec, x's rank, c_in by groups."""
    d = spec.d
    kernel_shape = _check_kernel(kernel_shape, spec.kernel_size, where, layout)
    x_shape = check_input(x_shape, d, f"the kernel's shape {kernel_shape} has {d}", where)
    checks.divisible(x_shape[-1], spec.groups, where, "input channels")
    return x_shape, kernel_shape, x_shape[: -(d + 1)], x_shape[-(d + 1) : -1]


def conv_geometry(
    spec: ConvSpec, x_shape, kernel_shape, bias_shape=None, *, where: str = "conv"
) -> ConvGeometry:
    """A convolution's concrete geometry for these shapes: checks the shapes, not the spec.

    Args:
      spec: the conv's `ConvSpec`.
      x_shape: ``(*batch, *spatial, c_in)``.
      kernel_shape: ``(*kernel_size, c_in // groups, c_out)``.
      bias_shape: ``(c_out,)`` or None.
      where: the public function or layer, for messages.

    Returns:
      A `ConvGeometry`.

    Raises:
      ShapeError: shapes that do not fit each other or the spec, with the fix where one exists.

    >>> from jcnn.shapes import conv_spec
    >>> g = conv_geometry(conv_spec(5), (32, 32, 3), (5, 5, 3, 10))
    >>> g.out_shape
    (28, 28, 10)
    """
    x_shape, kernel_shape, batch, in_spatial = _operands(
        spec, x_shape, kernel_shape, where, CONV_KERNEL_LAYOUT
    )
    c_in, c_out, g = x_shape[-1], kernel_shape[-1], spec.groups
    if kernel_shape[-2] < 1 or c_out < 1:
        raise ShapeError(
            f"{where}: the kernel must have >= 1 input and output channel, got shape {kernel_shape}."
        )
    checks.divisible(c_out, g, where, "the kernel's out-channels")
    if kernel_shape[-2] * g != c_in:
        per = f"{kernel_shape[-2]} per group x {g} groups; " if g > 1 else ""
        raise ShapeError(
            f"{where}: input has {c_in} channels but the kernel expects {kernel_shape[-2] * g}"
            f" ({per}kernel shape {kernel_shape}, x shape {x_shape})."
        )
    _check_bias(bias_shape, c_out, where)
    pads = resolve(spec.padding, in_spatial, spec.kernel_size, spec.strides, spec.dilation)
    _check_padding_mode(spec.padding_mode, pads, in_spatial, where)
    out_spatial = []
    for i, (w, k, s, (lo, hi), r) in enumerate(
        zip(in_spatial, spec.kernel_size, spec.strides, pads, spec.dilation)
    ):
        out_spatial.append(output_size(w, k, s, lo, hi, r, where=where))
        if spec.exact:
            _check_exact(w, k, s, lo, hi, r, where, f"spatial dim {i} of input shape {x_shape}")
    return ConvGeometry(
        batch, in_spatial, c_in, c_out, spec.kernel_size, spec.strides, spec.dilation, pads,
        spec.padding_mode, tuple(out_spatial), g, (0,) * spec.d,
    )  # fmt: skip


def conv_transpose_geometry(
    spec: ConvTransposeSpec, x_shape, kernel_shape, bias_shape=None, *, where: str = "conv_transpose"
) -> ConvTransposeGeometry:
    """A transposed convolution's concrete geometry (kernel ``(*k, c_in, c_out // groups)``).

    Args:
      spec: the transposed conv's `ConvTransposeSpec`.
      x_shape: ``(*batch, *spatial, c_in)``.
      kernel_shape: ``(*kernel_size, c_in, c_out // groups)``.
      bias_shape: ``(c_out,)`` or None.
      where: the public function or layer, for messages.

    Returns:
      A `ConvTransposeGeometry`.

    Raises:
      ShapeError: shapes that do not fit each other or the spec, or a crop that leaves nothing.

    >>> from jcnn.shapes import conv_transpose_spec
    >>> conv_transpose_geometry(conv_transpose_spec(3, 2), (3, 3, 4), (3, 3, 4, 2)).out_shape
    (7, 7, 2)
    """
    x_shape, kernel_shape, batch, in_spatial = _operands(
        spec, x_shape, kernel_shape, where, CONV_TRANSPOSE_KERNEL_LAYOUT
    )
    c_in, g = x_shape[-1], spec.groups
    if kernel_shape[-2] != c_in:
        raise ShapeError(
            f"{where}: input has {c_in} channels but the kernel expects {kernel_shape[-2]}"
            f" (kernel shape {kernel_shape}, laid out {CONV_TRANSPOSE_KERNEL_LAYOUT}, x shape {x_shape})."
        )
    if kernel_shape[-1] < 1:
        raise ShapeError(f"{where}: the kernel must have >= 1 output channel, got shape {kernel_shape}.")
    c_out = kernel_shape[-1] * g
    _check_bias(bias_shape, c_out, where)
    out_spatial = _transpose_out(spec, in_spatial, where)
    return ConvTransposeGeometry(
        batch, in_spatial, c_in, c_out, spec.kernel_size, spec.strides, spec.dilation, spec.crop,
        "zeros", out_spatial, g, spec.output_padding,
    )  # fmt: skip


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


def pool_geometry(spec: PoolSpec, x_shape, *, where: str = "pool") -> PoolGeometry:
    """A windowed pool's concrete geometry for ``x``'s shape ``(*batch, *spatial, c)``.

    With ``ceil_mode`` the output size is PyTorch's, and the windows that overhang the right
    edge read ``lax_padding``'s extra high padding.

    >>> from jcnn.shapes import pool_spec
    >>> g = pool_geometry(pool_spec(2, ceil_mode=True), (8, 5, 5, 3))
    >>> g.out_shape, g.lax_padding
    ((8, 3, 3, 3), ((0, 1), (0, 1)))
    """
    d = spec.d
    x_shape = check_input(x_shape, d, f"`window_shape` {spec.window_shape} has {d}", where)
    in_spatial = x_shape[-(d + 1) : -1]
    pads, out_spatial = _pool_out(spec, in_spatial, where)
    lax_pads = tuple(
        (lo, max(hi, (o - 1) * s + effective(k, r) - w - lo))
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


def adaptive_pool_geometry(
    spec: AdaptivePoolSpec, x_shape, *, where: str = "adaptive_pool"
) -> AdaptivePoolGeometry:
    """An adaptive pool's output size and windows for ``x``'s shape ``(*batch, *spatial, c)``.

    >>> from jcnn.shapes import adaptive_pool_spec
    >>> adaptive_pool_geometry(adaptive_pool_spec((None, 2)), (5, 4, 3)).windows
    (((0, 1), (1, 2), (2, 3), (3, 4), (4, 5)), ((0, 2), (2, 4)))
    """
    d = spec.d
    x_shape = check_input(x_shape, d, f"`output_size` {spec.output_size} has {d}", where)
    in_spatial = x_shape[-(d + 1) : -1]
    out_spatial = _adaptive_out(spec, in_spatial)
    windows = tuple(adaptive_windows(w, o) for w, o in zip(in_spatial, out_spatial))
    return AdaptivePoolGeometry(x_shape[: -(d + 1)], in_spatial, x_shape[-1], out_spatial, windows)
