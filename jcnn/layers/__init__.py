"""jcnn layers: `(init, apply)` pairs with per-example semantics, their combinators, and `batched`.

Every layer is a `Layer` (a frozen dataclass that unpacks as ``init, apply = layer``) made by
calling its constructor: ``Relu()``, ``Conv(20, 5, padding=2)``::

    out_shape, params, state = layer.init(key, input_shape)      # per-example shape
    y, state = layer.apply(params, state, x, key=None, train=False, batch_ndim=0)

``apply`` takes ``batch_ndim`` leading batch dims; ``batched(model)`` runs a model on a batch.
A built-in layer is derived from one frozen spec (``layer.spec``): ``layer.replace(impl="xla")``
changes a hyperparameter, `map_layers` changes many, `spec_record` records them all.
`features` takes a model's activations at summary paths.

Default initialisers (`jcnn.initializers`): conv and dense kernels He (Kaiming) normal with
fan_in, truncated at two standard deviations; biases zeros; norm scales ones and shifts zeros.
Override with ``kernel_init=`` / ``bias_init=`` (``(key, shape, dtype) -> array``).
"""

from jcnn.initializers import default_bias_init, default_kernel_init
from jcnn.layers import (
    activations,
    base,
    combinators,
    conv,
    dense,
    dropout,
    info,
    intermediate,
    norm,
    pool,
    tree,
)
from jcnn.layers.activations import *  # noqa: F403
from jcnn.layers.base import *  # noqa: F403
from jcnn.layers.combinators import *  # noqa: F403
from jcnn.layers.conv import *  # noqa: F403
from jcnn.layers.dense import *  # noqa: F403
from jcnn.layers.dropout import *  # noqa: F403
from jcnn.layers.info import *  # noqa: F403
from jcnn.layers.intermediate import *  # noqa: F403
from jcnn.layers.norm import *  # noqa: F403
from jcnn.layers.pool import *  # noqa: F403
from jcnn.layers.spec import CombinatorSpec, LayerSpec, LeafSpec
from jcnn.layers.tree import *  # noqa: F403

# Every module's public names, and the spec bases and default initializers.
__all__ = ["LayerSpec", "LeafSpec", "CombinatorSpec", "default_kernel_init", "default_bias_init"]
__all__ += base.__all__
__all__ += info.__all__
__all__ += tree.__all__
__all__ += intermediate.__all__
__all__ += combinators.__all__
__all__ += conv.__all__
__all__ += dense.__all__
__all__ += pool.__all__
__all__ += norm.__all__
__all__ += activations.__all__
__all__ += dropout.__all__
