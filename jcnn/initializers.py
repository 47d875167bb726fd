"""Parameter initializers: ``(key, shape, dtype) -> array`` functions, as in ``jax.nn.initializers``.

The layers' defaults live here: conv and dense kernels `default_kernel_init` (He normal with
fan_in, truncated at two standard deviations), biases `default_bias_init` (zeros), norm scales
`ones` and shifts `zeros`. Any ``jax.nn.initializers`` function works wherever a layer takes
``kernel_init=`` / ``bias_init=`` / ``scale_init=``. An initializer is shown in a layer's repr
and recorded in the run identity by its qualified name, so give your own a ``def`` with a name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["default_kernel_init", "default_bias_init", "zeros", "ones"]

# jax.random's truncated-normal constant: the std of a unit normal truncated to [-2, 2].
_TRUNCATED_STD = 0.87962566103423978


def default_kernel_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """He (Kaiming) normal with fan_in, truncated at two standard deviations (He et al., 2015).

    The same distribution as ``jax.nn.initializers.he_normal()``: std ``sqrt(2 / fan_in)``
    after truncation, which keeps the activation variance constant through ReLU layers.
    ``fan_in`` is every axis but the last (the outputs): ``prod(k) * c_in // groups`` for an HWIO
    conv kernel ``(*k, c_in // groups, c_out)``, ``in`` for a Dense kernel ``(in, out)``.

    The samples are drawn as a flat vector and reshaped: XLA compiles jax.random's multi-axis
    sampling several times slower on CPU, and initialisation should not dominate start-up.

    Args:
      key: a PRNG key.
      shape: the kernel's shape ``(..., in, out)``, at least two dims.
      dtype: the kernel's dtype.

    Returns:
      The kernel.

    Raises:
      ValueError: a shape with fewer than two dims.

    >>> import jax
    >>> default_kernel_init(jax.random.key(0), (3, 3, 16, 32)).shape
    (3, 3, 16, 32)
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"default_kernel_init: needs a kernel shape (..., in, out), got {shape}.")
    std = math.sqrt(2.0 / math.prod(shape[:-1])) / _TRUNCATED_STD
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype)
    return (flat * jnp.asarray(std, dtype)).reshape(shape)


#: Zeros, ``jax.nn.initializers.zeros``: the default for biases and norm shifts.
zeros = jax.nn.initializers.zeros
#: Ones, ``jax.nn.initializers.ones``: the default for norm scales.
ones = jax.nn.initializers.ones
#: The default bias initializer: `zeros`.
default_bias_init = zeros
