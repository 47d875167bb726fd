"""Dropout: zero each activation with probability `drop_rate` in training (inverted scaling)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.layers._examples import input_shape_of
from jcnn.layers.base import Layer, prng_key
from jcnn.layers.info import ELEMENTWISE, LayerInfo
from jcnn.layers.spec import LeafSpec, as_number

__all__ = ["Dropout", "DropoutSpec"]


@dataclasses.dataclass(frozen=True)
class DropoutSpec(LeafSpec):
    """Dropout (Srivastava et al., 2014) with inverted scaling; ``Dropout(drop_rate)``.

    With ``train=True`` each element is zeroed with probability ``drop_rate`` (the probability
    of DROPPING, as in PyTorch and Flax; stax's ``Dropout(rate)`` meant keeping) and the
    survivors are divided by ``1 - drop_rate``, so the expected output equals the input and
    evaluation (``train=False``) is the identity.

    On a batch (``batch_ndim`` leading batch dims, as `batched` and the combinators pass it) one
    mask is drawn for the whole batch from ``key``: every element is still dropped
    independently, but the masks differ from those of ``jax.vmap`` over examples, which splits
    the key per example.

    Args:
      drop_rate: probability of dropping, ``0 <= drop_rate <= 1`` (``1`` outputs zeros).

    Returns:
      ``Dropout(...)`` returns a `Layer` with params ``()`` and state ``()``. ``apply`` needs
      ``key`` (a PRNG key or an int seed) when ``train=True``.

    Raises:
      TypeError: ``drop_rate`` not a number, or a ``key`` that is not a key or an int.
      ValueError: ``drop_rate`` outside ``[0, 1]``; ``apply(..., train=True)`` without a key.

    >>> import jax, jax.numpy as jnp
    >>> layer = Dropout(0.5)
    >>> y, _ = layer.apply((), (), jnp.ones(4), key=jax.random.key(0), train=True)
    >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    >>> layer.apply((), (), jnp.ones(2))[0].tolist()
    [1.0, 1.0]
    """

    name = "Dropout"
    drop_rate: float

    def __post_init__(self):
        rate = as_number(self.drop_rate, self.name, "drop_rate", "a number in [0, 1]", lambda v: True)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(
                f"{self.name}: `drop_rate` is the probability of dropping and must be in [0, 1], got"
                f" {self.drop_rate!r}."
            )
        self._canonical(drop_rate=rate)

    def init(self, key, input_shape, /):
        del key
        return input_shape_of(input_shape, self.name), (), ()

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, batch_ndim  # the mask is drawn over every element, batch dims included
        rate = self.drop_rate
        if not train or rate == 0.0:
            return x, state
        key = prng_key(key, self.name)
        if key is None:
            raise ValueError(
                f"{self.name}: `train=True` needs a random `key` to draw the mask; call"
                f" apply(params, state, x, key=key, train=True), or train=False to evaluate."
            )
        if rate == 1.0:
            return jnp.zeros_like(x), state
        # Drawn flat and reshaped: XLA compiles jax.random's multi-axis sampling several times
        # slower on CPU, for the same i.i.d. mask.
        keep = jax.random.bernoulli(key, 1.0 - rate, (math.prod(x.shape),)).reshape(x.shape)
        scaled = x / jnp.asarray(1.0 - rate, x.dtype)
        return lax.select(keep, scaled, jnp.zeros_like(x)), state

    def info(self, input_shape, /):
        return LayerInfo(input_shape_of(input_shape, self.name), 0, 0, rf=ELEMENTWISE)


Dropout = Layer.constructor(DropoutSpec)
