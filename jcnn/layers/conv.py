"""Convolution layers: `Conv` and `ConvTranspose`, channels last, any spatial rank.

Both are one spec each (`ConvLayerSpec`, `ConvTransposeLayerSpec`) sharing the fields and the
parameter creation of `_ConvFields`; the op's own spec (`jcnn.shapes.ConvSpec`) is derived from
the layer's fields, never stored beside them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jcnn import checks, shapes
from jcnn.initializers import default_bias_init, default_kernel_init
from jcnn.layers._examples import spatial_example, spatial_input
from jcnn.layers.base import Layer
from jcnn.layers.info import LayerInfo, RFWindow, Windows
from jcnn.layers.spec import LeafSpec, as_initializer, as_param_dtype, as_precision, create_param
from jcnn.ops.conv import CHOICES, conv_transpose_with_spec, conv_with_spec

__all__ = ["Conv", "ConvTranspose", "ConvLayerSpec", "ConvTransposeLayerSpec"]


@dataclasses.dataclass(frozen=True)
class _ConvFields(LeafSpec):
    """The fields both convolutions have, and what they do with them alike."""

    out_channels: int
    kernel_size: Any
    _: dataclasses.KW_ONLY
    strides: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True
    kernel_init: Any = default_kernel_init
    bias_init: Any = default_bias_init
    param_dtype: Any = "float32"
    precision: Any = None

    def _canonical_common(self, op: shapes.ConvSpec | shapes.ConvTransposeSpec, padding: Any) -> None:
        """Store the fields `_ConvFields` owns, canonical; ``op`` has checked the geometry's."""
        where = self.name
        out_channels = checks.as_int(self.out_channels, where, "out_channels", minimum=1)
        checks.divisible(out_channels, op.groups, where, "`out_channels`")
        self._canonical(
            out_channels=out_channels,
            kernel_size=op.kernel_size,
            strides=op.strides,
            padding=padding,
            dilation=op.dilation,
            groups=op.groups,
            bias=checks.as_bool(self.bias, where, "bias"),
            kernel_init=as_initializer(self.kernel_init, default_kernel_init, where, "kernel_init"),
            bias_init=as_initializer(self.bias_init, default_bias_init, where, "bias_init"),
            param_dtype=as_param_dtype(self.param_dtype, where),
            precision=as_precision(self.precision, where),
        )

    @property
    def d(self) -> int:
        """The spatial rank (the kernel's)."""
        return len(self.kernel_size)

    @property
    def _source(self) -> str:
        return f"`kernel_size` {self.kernel_size} has {self.d}"

    def _params(self, key: jax.Array, kernel_shape: tuple[int, ...]) -> dict[str, jax.Array]:
        """``{"kernel": kernel_init(...), "bias": bias_init(...)}``, no bias when ``bias`` is False."""
        k_kernel, k_bias = jax.random.split(key)
        params = {"kernel": create_param(self.kernel_init, k_kernel, kernel_shape, self.param_dtype)}
        if self.bias:
            params["bias"] = create_param(self.bias_init, k_bias, (self.out_channels,), self.param_dtype)
        return params

    def _geometry(self, input_shape: Any) -> Any:
        raise NotImplementedError

    def init(self, key, input_shape, /):
        kernel_shape, geo = self._geometry(input_shape)
        return geo.out_shape, self._params(key, kernel_shape), ()

    def info(self, input_shape, /):
        _, geo = self._geometry(input_shape)
        transpose = isinstance(geo, shapes.ConvTransposeGeometry)
        # A transposed conv reads every input pixel (each scatters a kernel): nothing to warn of.
        warning = (
            None
            if transpose
            else shapes.fit_warning(geo.in_spatial, self.kernel_size, geo.strides, geo.padding, geo.dilation)
        )
        windows = tuple(
            RFWindow(k, s, p[0], r, transpose)
            for k, s, p, r in zip(self.kernel_size, geo.strides, geo.padding, geo.dilation)
        )
        return LayerInfo(
            geo.out_shape,
            geo.params(self.bias),
            geo.flops(self.bias),
            padding=geo.padding,
            warning=warning,
            rf=Windows(windows),
        )


@dataclasses.dataclass(frozen=True)
class ConvLayerSpec(_ConvFields):
    """Convolution layer over ``(*spatial, c_in)`` examples; calls `jcnn.ops.conv`.

    ``Conv(...)`` builds the `Layer` from this spec. The output size per spatial dim is
    ``floor((W + lo + hi - dilation*(F-1) - 1)/S) + 1``. Every field is checked here, once;
    ``init`` takes one example's shape, ``apply`` takes ``x`` of shape ``(*batch, *spatial,
    c_in)`` with ``batch_ndim`` leading batch dims (each example gives what it gives alone).

    Args:
      out_channels: number of filters ``K``.
      kernel_size: ``F``: an int (square 2-D) or a tuple of d ints (d-D).
      strides: ``S``, an int or d ints.
      padding: an int, d ints, d ``(lo, hi)`` pairs, or ``"VALID"``, ``"SAME"``,
        ``"SAME_LOWER"``, ``"CAUSAL"`` (1-D).
      dilation: kernel dilation, an int or d ints.
      groups: feature groups (``groups == c_in``: depthwise).
      bias: add a learned per-channel bias.
      kernel_init: ``(key, shape, dtype) -> array`` for the ``(*k, c_in // groups, K)`` kernel;
        default He normal (fan_in ``= prod(k) * c_in // groups``), `jcnn.initializers.default_kernel_init`.
      bias_init: for the ``(K,)`` bias; default zeros.
      param_dtype: the parameters' floating-point dtype.
      precision: the contraction's internal precision, as in `jcnn.ops.conv` (``None``: JAX's
        default, TF32 for float32 on recent NVIDIA GPUs; ``"highest"``: true float32).
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
      impl: one of `jcnn.ops.conv`'s implementations (the same numbers) or ``"auto"``.
      exact: raise at ``init`` when the windows do not tile the padded input exactly or leave
        input pixels unread (the message is `jcnn.shapes.explain_fit`'s, with a fix).

    Returns:
      ``Conv(...)`` returns a `Layer`; params ``{"kernel": (*k, c_in // groups, K), "bias":
      (K,)}``, state ``()``.

    Raises:
      ShapeError / ValueError / TypeError: at construction for bad hyperparameters (every
        field); at ``init`` for an input they do not fit; at ``apply`` for an input with other
        dims or channels than the kernel's.

    The lecture's example, ten 5x5 filters on a 32x32x3 image:

    >>> import jax
    >>> out_shape, params, state = Conv(10, 5).init(jax.random.key(0), (32, 32, 3))
    >>> out_shape, params["kernel"].shape
    ((28, 28, 10), (5, 5, 3, 10))
    >>> Conv(10, 5, precision="bogus")
    Traceback (most recent call last):
    ...
    ValueError: Conv: `precision` must be None, a jax.lax.Precision, one of 'default', 'high', 'highest', or a pair of them, got 'bogus'.
    """

    name = "Conv"
    _: dataclasses.KW_ONLY
    padding_mode: str = "zeros"
    impl: str = "auto"
    exact: bool = False

    def __post_init__(self):
        where = self.name
        checks.as_int(self.out_channels, where, "out_channels", minimum=1)
        op = shapes.conv_spec(
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            exact=self.exact,
            where=where,
        )
        self._canonical_common(op, op.padding)
        self._canonical(
            padding_mode=op.padding_mode,
            exact=op.exact,
            impl=checks.one_of(self.impl, CHOICES, where, "impl"),
        )

    @property
    def op(self) -> shapes.ConvSpec:
        """The op's spec, `jcnn.shapes.ConvSpec`, from these fields."""
        return shapes.ConvSpec(
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation,
            self.groups,
            self.padding_mode,
            self.exact,
        )

    def _geometry(self, input_shape):
        shape = spatial_input(input_shape, self.d, self.name, self._source)
        checks.divisible(shape[-1], self.groups, self.name, "input channels", f", input shape {shape}")
        kernel_shape = self.kernel_size + (shape[-1] // self.groups, self.out_channels)
        return kernel_shape, shapes.conv_geometry(self.op, shape, kernel_shape, where=self.name)

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del key, train  # deterministic layer
        x = spatial_example(x, self.d, self._source, self.name, batch_ndim, "inexact")
        bias = params["bias"] if self.bias else None
        y = conv_with_spec(
            self.op, x, params["kernel"], bias, impl=self.impl, precision=self.precision, where=self.name
        )
        return y, state


@dataclasses.dataclass(frozen=True)
class ConvTransposeLayerSpec(_ConvFields):
    """Transposed convolution (PyTorch's ``ConvTranspose{1,2,3}d``); calls `jcnn.ops.conv_transpose`.

    ``ConvTranspose(...)`` builds the `Layer` from this spec.
    ``out = (W - 1)*S - (lo + hi) + dilation*(F - 1) + output_padding + 1`` per spatial dim.

    Args:
      out_channels: output channels.
      kernel_size: an int (square 2-D) or a tuple of d ints.
      strides: an int or d ints: the upsampling factor.
      padding: PyTorch's crop: an int, d ints, d ``(lo, hi)`` pairs, or ``"VALID"`` (= 0).
      dilation: kernel dilation.
      groups: feature groups.
      bias: add a learned per-channel bias.
      kernel_init: for the ``(*k, c_in, out_channels // groups)`` kernel (PyTorch's layout moved
        to channels last); default He normal with fan_in ``= prod(k) * c_in``.
      bias_init: for the bias; default zeros.
      param_dtype: the parameters' floating-point dtype.
      precision: the contraction's internal precision, as in `jcnn.ops.conv`.
      output_padding: extra rows on the high side, each smaller than the stride or dilation.

    Returns:
      ``ConvTranspose(...)`` returns a `Layer`; params ``{"kernel": (*k, c_in, K // groups),
      "bias": (K,)}``, state ``()``.

    Raises:
      ShapeError / ValueError / TypeError: at construction for bad hyperparameters; at
        ``init`` / ``apply`` for inputs they do not fit.

    >>> import jax
    >>> ConvTranspose(2, 3, strides=2).init(jax.random.key(0), (3, 3, 4))[0]
    (7, 7, 2)
    """

    name = "ConvTranspose"
    _: dataclasses.KW_ONLY
    output_padding: Any = 0

    def __post_init__(self):
        where = self.name
        checks.as_int(self.out_channels, where, "out_channels", minimum=1)
        op = shapes.conv_transpose_spec(
            self.kernel_size,
            self.strides,
            self.padding,
            self.output_padding,
            self.dilation,
            self.groups,
            where=where,
        )
        self._canonical_common(op, op.crop)
        self._canonical(output_padding=op.output_padding)

    @property
    def op(self) -> shapes.ConvTransposeSpec:
        """The op's spec, `jcnn.shapes.ConvTransposeSpec`, from these fields."""
        return shapes.ConvTransposeSpec(
            self.kernel_size, self.strides, self.padding, self.output_padding, self.dilation, self.groups
        )

    def _geometry(self, input_shape):
        shape = spatial_input(input_shape, self.d, self.name, self._source)
        kernel_shape = self.kernel_size + (shape[-1], self.out_channels // self.groups)
        return kernel_shape, shapes.conv_transpose_geometry(self.op, shape, kernel_shape, where=self.name)

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del key, train  # deterministic layer
        x = spatial_example(x, self.d, self._source, self.name, batch_ndim, "inexact")
        bias = params["bias"] if self.bias else None
        return conv_transpose_with_spec(
            self.op, x, params["kernel"], bias, precision=self.precision, where=self.name
        ), state


#: ``Conv(out_channels, kernel_size, *, strides=1, ...)``: the `Layer` of a `ConvLayerSpec`.
Conv = Layer.constructor(ConvLayerSpec)
#: ``ConvTranspose(out_channels, kernel_size, *, strides=1, ...)``: the `Layer` of a `ConvTransposeLayerSpec`.
ConvTranspose = Layer.constructor(ConvTransposeLayerSpec)
