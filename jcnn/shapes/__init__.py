"""Shape arithmetic for jcnn, pure Python integers: owns every shape error message.

Where to look:

- `jcnn.shapes.padding`: the padding forms (`canonicalize_padding`, `resolve_padding`, modes).
- `jcnn.shapes.specs`: hyperparameters checked once into frozen specs (`conv_spec`, `pool_spec`, ...).
- `jcnn.shapes.sizes`: output sizes (`conv_output_size`, `pool_output_shape`, ...).
- `jcnn.shapes.fit`: the fit explainer (`explain_fit`) and the summary's `fit_warning`.
- `jcnn.shapes.counts`: parameter, FLOP and memory counts.
- `jcnn.shapes.receptive`: receptive fields.
- `jcnn.shapes.geometry`: a spec and the arrays' shapes made concrete for one call.

Every public name is importable from here as ``jcnn.shapes.<name>``. Nothing in this package
imports ``jax.numpy``, so all of it is free under ``jit`` and usable without a device.

The output size of a sliding window follows the lecture's formula with floor division, like
every peer (PyTorch, XLA, Keras)::

    out = floor((W + lo + hi - dilation*(F-1) - 1) / S) + 1

For symmetric padding ``P`` and no dilation this is the seed's ``(W - F + 2P)/S + 1``.

>>> from jcnn import shapes
>>> shapes.conv_output_size(32, 5), shapes.conv_params(5, 3, 10)
(28, 760)
"""

from jcnn.checks import ShapeError
from jcnn.shapes._arith import Pair, Shape
from jcnn.shapes.counts import (
    activation_bytes,
    conv_flops,
    conv_params,
    conv_transpose_flops,
    dense_flops,
    dense_params,
    pool_flops,
)
from jcnn.shapes.fit import FitReport, explain_fit, fit_warning
from jcnn.shapes.geometry import (
    CONV_KERNEL_LAYOUT,
    CONV_TRANSPOSE_KERNEL_LAYOUT,
    AdaptivePoolGeometry,
    ConvGeometry,
    ConvTransposeGeometry,
    PoolGeometry,
    adaptive_pool_geometry,
    check_input,
    conv_geometry,
    conv_transpose_geometry,
    kernel_size_of,
    pool_geometry,
)
from jcnn.shapes.padding import (
    PADDING_MODES,
    PADDING_NAMES,
    PaddingLike,
    canonicalize_padding,
    canonicalize_padding_mode,
    resolve_padding,
)
from jcnn.shapes.receptive import ReceptiveField, receptive_field_step
from jcnn.shapes.sizes import (
    adaptive_output_shape,
    adaptive_windows,
    conv_output_shape,
    conv_output_size,
    conv_transpose_output_shape,
    conv_transpose_output_size,
    pool_output_shape,
)
from jcnn.shapes.specs import (
    AdaptivePoolSpec,
    ConvSpec,
    ConvTransposeSpec,
    PoolSpec,
    adaptive_pool_spec,
    canonicalize_ints,
    canonicalize_window,
    check_pool_padding,
    conv_spec,
    conv_transpose_spec,
    global_pool_spec,
    pool_spec,
)

__all__ = [
    "ShapeError",
    "Shape",
    "Pair",
    "PaddingLike",
    # padding forms
    "PADDING_NAMES",
    "PADDING_MODES",
    "canonicalize_padding",
    "canonicalize_padding_mode",
    "resolve_padding",
    # specs
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
    # output sizes
    "conv_output_size",
    "conv_output_shape",
    "conv_transpose_output_size",
    "conv_transpose_output_shape",
    "pool_output_shape",
    "adaptive_windows",
    "adaptive_output_shape",
    # the fit explainer
    "FitReport",
    "explain_fit",
    "fit_warning",
    # counts
    "conv_params",
    "dense_params",
    "conv_flops",
    "conv_transpose_flops",
    "dense_flops",
    "pool_flops",
    "activation_bytes",
    # receptive fields
    "ReceptiveField",
    "receptive_field_step",
    # geometry
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
