"""The train state: the whole of a run as one pytree, and `init_state` that builds it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jcnn.layers import Layer

__all__ = ["TrainState", "init_state", "init_state_and_classes", "check_model", "check_optimizer"]


class TrainState(NamedTuple):
    """Everything a run needs to continue: a pytree, so it jits, donates, shards and serializes.

    Attributes:
        params: the model's parameters (a pytree of float32 arrays).
        model_state: the model's state, e.g. BatchNorm running statistics (``()`` if none).
        opt_state: the optax optimizer state (moments, schedule counts).
        step: int32 scalar, the number of updates taken.
        key: the run's base random key as raw ``uint32`` key data (``jax.random.key_data``;
            raw so it serializes); step ``i`` uses ``jax.random.fold_in(key, i)``.
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


def check_model(model, where: str) -> None:
    """TypeError unless ``model`` is a `jcnn.layers.Layer`."""
    if not isinstance(model, Layer):
        raise TypeError(
            f"{where}: `model` must be a jcnn.layers.Layer (an (init, apply) pair written for one "
            f"example), got {type(model).__name__}."
        )


def check_optimizer(optimizer, where: str) -> None:
    """TypeError unless ``optimizer`` is an optax gradient transformation."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"{where}: `optimizer` must be an optax.GradientTransformation, e.g. optax.adam(1e-3), "
            f"got {type(optimizer).__name__}."
        )


def _as_key_data(key) -> jax.Array:
    """Raw uint32 key data from an int seed, a typed key or raw key data."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key_data(jax.random.key(int(key)))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if key.dtype != jnp.uint32 or key.ndim != 1:
        raise TypeError(
            f"init_state: `key` must be an int seed, a key from jax.random.key, or uint32 key data "
            f"(jax.random.key_data), got {key.dtype} of shape {key.shape}."
        )
    return key


def init_state(model: Layer, optimizer: optax.GradientTransformation, key, input_shape) -> TrainState:
    """A fresh `TrainState`: the model's params and state, the optimizer's state, step 0.

    Args:
        model: a per-example `jcnn.layers.Layer` mapping one input of ``input_shape`` to logits
            ``(num_classes,)``.
        optimizer: any optax gradient transformation (schedules, weight decay, chains).
        key: an int seed, a ``jax.random.key`` or raw key data; split into the init key and the
            run's base key.
        input_shape: shape of ONE example, e.g. ``(28, 28, 1)``.

    Returns:
        The `TrainState`, ``step`` an int32 zero.

    Raises:
        TypeError: if ``model`` is not a Layer or ``optimizer`` not an optax transformation.
        ValueError: if the model's output for one example is not a vector of logits.

    >>> import optax
    >>> from jcnn.layers import Dense, Flatten, serial
    >>> state = init_state(serial(Flatten(), Dense(10)), optax.sgd(0.1), 0, (8, 8, 1))
    >>> state.params[1]["kernel"].shape, int(state.step), state.key.dtype
    ((64, 10), 0, dtype('uint32'))
    """
    return init_state_and_classes(model, optimizer, key, input_shape, "init_state")[0]


def init_state_and_classes(model, optimizer, key, input_shape, where: str) -> tuple[TrainState, int]:
    """`init_state`, and the number of logits the model outputs (what labels index)."""
    check_model(model, where)
    check_optimizer(optimizer, where)
    init_key, run_key = jax.random.split(_as_key_data(key))
    out_shape, params, model_state = model.init(init_key, tuple(input_shape))
    if len(tuple(out_shape)) != 1:
        raise ValueError(
            f"{where}: the model must map one example to a vector of logits (num_classes,), but "
            f"for input shape {tuple(input_shape)} it outputs {tuple(out_shape)}; end it with "
            f"Flatten() and Dense(num_classes), or a global pool."
        )
    state = TrainState(
        params=params,
        model_state=model_state,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        key=run_key,
    )
    return state, int(out_shape[0])
