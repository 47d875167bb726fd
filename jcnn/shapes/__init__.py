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
from jcnn.shapes import counts, fit, geometry, padding, receptive, sizes, specs
from jcnn.shapes._arith import Pair, Shape
from jcnn.shapes.counts import *  # noqa: F403
from jcnn.shapes.fit import *  # noqa: F403
from jcnn.shapes.geometry import *  # noqa: F403
from jcnn.shapes.padding import *  # noqa: F403
from jcnn.shapes.receptive import *  # noqa: F403
from jcnn.shapes.sizes import *  # noqa: F403
from jcnn.shapes.specs import *  # noqa: F403

__all__ = ["ShapeError", "Shape", "Pair"]
__all__ += padding.__all__
__all__ += specs.__all__
__all__ += sizes.__all__
__all__ += fit.__all__
__all__ += counts.__all__
__all__ += receptive.__all__
__all__ += geometry.__all__
