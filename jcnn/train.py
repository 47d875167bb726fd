"""Training with optax: the train state, the jitted train and eval steps, evaluation, and `fit`
(progress bar, per-epoch metrics, atomic checkpoints, exact resume, a stop on a non-finite loss).

The pieces, from the bottom up:

* `TrainState`: the whole of a run as one pytree (params, model state, optimizer state, step
  counter, random key), built by `init_state`.
* `make_train_step(model, optimizer)`: one jitted XLA computation per step: forward with
  ``train=True``, softmax cross-entropy on integer labels, gradients, the optax update, metrics.
  The incoming state's buffers are donated, so the step updates them in place.
* `make_eval_step(model)` / `evaluate(...)`: summed loss and correct count over a dataset in
  fixed-size batches; the last, partial batch is padded and masked, so there is one compilation
  and the means are exact.
* `fit(...)`: epochs of seeded batches (`jcnn.data.batches`: the order is a pure function of
  ``(seed, epoch)``), a tqdm bar, ``metrics.json`` / ``metrics.csv``, a checkpoint written
  atomically after every epoch, and ``resume=True`` that continues from it bit for bit.

Models are per-example `jcnn.layers.Layer` s mapping one image ``(h, w, c)`` to logits
``(num_classes,)``; the steps batch them with `jcnn.layers.batched` (BatchNorm's axis name
``"batch"`` bound, one dropout key per example).

Devices and data parallelism:
    The steps run on a `jax.sharding.Mesh` with one axis, ``"data"``, over all devices
    (``jax.devices()``, or ``devices=``). Batches are placed with
    ``NamedSharding(mesh, PartitionSpec("data"))``, split along the batch axis; the train state
    is replicated (``PartitionSpec()``). XLA's SPMD partitioner inserts the gradient all-reduce
    (and BatchNorm's cross-device mean), so on one device and on many the code is the same and the
    numbers agree to float rounding. The training batch size must be a multiple of the device
    count; evaluation pads its batches to one.

    On a GPU or TPU host nothing changes: ``jax.devices()`` lists the accelerators and `fit`
    uses all of them. On a multi-host pod (or several GPU hosts) call
    ``jax.distributed.initialize()`` first thing in every process, before any other jax call,
    then run the same script on every host: ``jax.devices()`` then lists every device of the
    job, each process loads the same dataset and seed, feeds its own slice of each global batch
    (`TrainStep.place_batch` does this with ``jax.make_array_from_process_local_data``), and only
    process 0 writes files. To try the multi-device path on a CPU, set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` in the environment before jax is
    imported.

Checkpoints:
    ``<out_dir>/checkpoint.msgpack`` holds ``flax.serialization.to_bytes`` of the full
    `TrainState`, the number of finished epochs, the metric history and the run's seed and batch
    size. It is written to a temporary file in the same folder, flushed, fsync-ed and moved over
    the old one with ``os.replace``, so an interrupt (Ctrl-C, a crash, a full disk) leaves either
    the old checkpoint or the new one, never half of one. A non-finite loss stops `fit` with
    `NonFiniteLossError` before anything is written, so the last checkpoint stays the last good
    one.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jcnn import data as jdata
from jcnn.layers import Layer, batched

__all__ = [
    "TrainState",
    "FitResult",
    "NonFiniteLossError",
    "TrainStep",
    "EvalStep",
    "CHECKPOINT_NAME",
    "init_state",
    "make_mesh",
    "make_train_step",
    "make_eval_step",
    "evaluate",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
]

#: File names `fit` writes into ``out_dir``.
CHECKPOINT_NAME = "checkpoint.msgpack"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"

_CSV_FIELDS = (
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "epoch_time_s",
    "train_time_s",
    "eval_time_s",
    "images_per_s",
)


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


class FitResult(NamedTuple):
    """What `fit` returns.

    Attributes:
        state: the final `TrainState`.
        history: one dict per epoch (keys as in ``metrics.csv``: ``epoch``, ``step``,
            ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
            ``epoch_time_s``, ``train_time_s``, ``eval_time_s``, ``images_per_s``), including
            the epochs of an earlier run continued with ``resume=True``.
        compile_time_s: seconds spent compiling the train step in this call (0.0 if no epoch ran).
    """

    state: TrainState
    history: list
    compile_time_s: float


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; `fit` stopped without writing a checkpoint.

    Attributes:
        step: 1-based number of the update whose loss was not finite (``TrainState.step`` after
            it would have been taken).
        epoch: 1-based epoch it happened in.
        batch: 1-based batch index within that epoch.
        loss: the offending loss value.
        checkpoint: path of the last good checkpoint (unchanged), or None if none was written.
    """

    def __init__(self, message: str, *, step: int, epoch: int, batch: int, loss: float, checkpoint):
        super().__init__(message)
        self.step, self.epoch, self.batch, self.loss, self.checkpoint = step, epoch, batch, loss, checkpoint


# ---------------------------------------------------------------------------------------------
# State.


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


def _check_int(where: str, name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: `{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{where}: `{name}` must be an integer >= {minimum}, got {value}.")
    return int(value)


def _check_model(model, where: str) -> None:
    if not isinstance(model, Layer):
        raise TypeError(
            f"{where}: `model` must be a jcnn.layers.Layer (an (init, apply) pair written for one "
            f"example), got {type(model).__name__}."
        )


def _check_optimizer(optimizer, where: str) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"{where}: `optimizer` must be an optax.GradientTransformation, e.g. optax.adam(1e-3), "
            f"got {type(optimizer).__name__}."
        )


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
    where = "init_state"
    _check_model(model, where)
    _check_optimizer(optimizer, where)
    init_key, run_key = jax.random.split(_as_key_data(key))
    out_shape, params, model_state = model.init(init_key, tuple(input_shape))
    if len(tuple(out_shape)) != 1:
        raise ValueError(
            f"{where}: the model must map one example to a vector of logits (num_classes,), but "
            f"for input shape {tuple(input_shape)} it outputs {tuple(out_shape)}; end it with "
            f"Flatten() and Dense(num_classes), or a global pool."
        )
    return TrainState(
        params=params,
        model_state=model_state,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        key=run_key,
    )


# ---------------------------------------------------------------------------------------------
# Devices.


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: all of ``jax.devices()``).

    >>> make_mesh().axis_names
    ('data',)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: `devices` must hold at least one device, got none.")
    return Mesh(np.array(devices, dtype=object), ("data",))


class _Placement:
    """Data-parallel placement on a ``"data"`` mesh: batches split, everything else replicated."""

    def __init__(self, devices):
        self.mesh = make_mesh(devices)
        self.num_devices = self.mesh.size
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def check_batch(self, n: int, where: str) -> None:
        if n % self.num_devices:
            k = self.num_devices
            raise ValueError(
                f"{where}: a batch of {n} examples does not split evenly over {k} devices; use a "
                f"batch size that is a multiple of {k}, e.g. {max(k, n - n % k)} or {n + k - n % k}."
            )

    def place_batch(self, *arrays):
        """Put host arrays (the global batch) on the mesh, split along axis 0."""
        if jax.process_count() == 1:
            return tuple(jax.device_put(a, self.batch_sharding) for a in arrays)
        # Multi-host: every process holds the same global batch and feeds only its own rows,
        # block `i` of `p`: the mesh follows jax.devices(), which lists each process's devices
        # together. (Only the single-process path is exercised by the tests.)
        out = []
        p, i = jax.process_count(), jax.process_index()
        for a in arrays:
            a = np.asarray(a)
            rows = a.shape[0] // p
            local = a[i * rows : (i + 1) * rows]
            out.append(jax.make_array_from_process_local_data(self.batch_sharding, local, a.shape))
        return tuple(out)

    def place_replicated(self, tree):
        return jax.device_put(tree, self.replicated)


# ---------------------------------------------------------------------------------------------
# Steps.

# The steps built for a (model, optimizer, devices, ...) are kept, so that fitting or evaluating
# the same model objects again reuses their compilations (jit caches by function identity, and
# each build makes new functions). Layers and optax transformations are tuples of functions:
# hashable, compared by identity.
_STEP_CACHE: collections.OrderedDict = collections.OrderedDict()
_STEP_CACHE_SIZE = 16


def _cached(build, *args):
    try:
        hash(args)
    except TypeError:  # e.g. a hand-made Layer holding a list: build it afresh
        return build(*args)
    key = (build, *args)
    if key in _STEP_CACHE:
        _STEP_CACHE.move_to_end(key)
        return _STEP_CACHE[key]
    step = _STEP_CACHE[key] = build(*args)
    if len(_STEP_CACHE) > _STEP_CACHE_SIZE:
        _STEP_CACHE.popitem(last=False)
    return step


def _device_tuple(devices) -> tuple:
    return tuple(jax.devices() if devices is None else devices)


def _float32_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x.astype(jnp.float32))


class TrainStep:
    """The jitted train step `make_train_step` builds; call it as ``step(state, x, y)``.

    ``__call__`` checks the batch, places ``x`` and ``y`` on the ``"data"`` mesh (split along the
    batch axis) and runs the one compiled computation. It returns ``(new_state, metrics)`` with
    ``metrics`` a dict of float32 scalars ``loss``, ``accuracy`` and ``grad_norm`` (on device,
    not yet fetched). The state passed in is donated: do not use it afterwards.

    Attributes:
        mesh: the ``jax.sharding.Mesh`` (axis ``"data"``) the step runs on.
        num_devices: number of devices in the mesh.
        jitted: the underlying ``jax.jit`` function ``(state, x, y) -> (state, metrics)``, for
            ``.lower(...)`` and ``.compile()``.
    """

    def __init__(self, jitted, placement: _Placement):
        self.jitted = jitted
        self._placement = placement
        self.mesh = placement.mesh
        self.num_devices = placement.num_devices

    def place_state(self, state: TrainState) -> TrainState:
        """``state`` replicated on every device of the mesh (what the step returns, too)."""
        return self._placement.place_replicated(state)

    def place_batch(self, x, y):
        """``(x, y)`` on the mesh, split along the batch axis (``PartitionSpec("data")``)."""
        self._placement.check_batch(np.shape(x)[0], "train step")
        return self._placement.place_batch(x, y)

    def lower(self, state: TrainState, x, y):
        """``jitted.lower`` on placed arguments: ``.compile()`` it to time the compilation."""
        return self.jitted.lower(state, *self.place_batch(x, y))

    def __call__(self, state: TrainState, x, y):
        return self.jitted(state, *self.place_batch(x, y))


def make_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    *,
    devices: Sequence[jax.Device] | None = None,
    donate: bool = True,
) -> TrainStep:
    """Build the jitted train step: forward, softmax cross-entropy, gradients, optax update.

    The step's loss is the mean over the batch of
    ``optax.softmax_cross_entropy_with_integer_labels(logits, y)``. The model runs batched
    (`jcnn.layers.batched`) with ``train=True`` and the key ``fold_in(state.key, state.step)``,
    split into one key per example. The optimizer gets the params too, so weight decay
    (``optax.adamw``) and schedules work as they do anywhere. The model's new state (BatchNorm
    running statistics) is kept.

    Args:
        model: a per-example `jcnn.layers.Layer` producing logits ``(num_classes,)``.
        optimizer: any optax gradient transformation.
        devices: devices of the ``"data"`` mesh; default all of ``jax.devices()``.
        donate: donate the incoming state's buffers to the step (``donate_argnums=0``).

    Returns:
        A `TrainStep` ``step(state, x (n, h, w, c) float32, y (n,) int32) -> (state, metrics)``.
        The same model, optimizer, devices and ``donate`` give back the same step (the last 16
        built are kept), so a second `fit` of the same objects reuses the compilation.

    Raises:
        TypeError: for a non-Layer model or a non-optax optimizer.
        ValueError: when called with a batch whose size is not a multiple of the device count.

    >>> import optax
    >>> from jcnn.layers import Dense, Flatten, serial
    >>> model, opt = serial(Flatten(), Dense(10)), optax.sgd(0.1)
    >>> step = make_train_step(model, opt)
    >>> state = init_state(model, opt, 0, (8, 8, 1))
    >>> x, y = np.zeros((4, 8, 8, 1), np.float32), np.arange(4, dtype=np.int32)
    >>> state, metrics = step(state, x, y)
    >>> int(state.step), sorted(metrics), round(float(metrics["loss"]), 4)
    (1, ['accuracy', 'grad_norm', 'loss'], 2.3026)
    """
    where = "make_train_step"
    _check_model(model, where)
    _check_optimizer(optimizer, where)
    return _cached(_build_train_step, model, optimizer, _device_tuple(devices), bool(donate))


def _build_train_step(model, optimizer, devices, donate) -> TrainStep:
    apply = batched(model).apply
    placement = _Placement(devices)

    def train_step(state: TrainState, x: jax.Array, y: jax.Array):
        key = jax.random.fold_in(state.key, state.step)

        def loss_fn(params):
            logits, model_state = apply(params, state.model_state, x, key=key, train=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return _float32_mean(loss), (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": _float32_mean(jnp.argmax(logits, axis=-1) == y),
            "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
        }
        new_state = TrainState(params, model_state, opt_state, state.step + 1, state.key)
        return new_state, metrics

    jitted = jax.jit(
        train_step,
        in_shardings=(placement.replicated, placement.batch_sharding, placement.batch_sharding),
        out_shardings=(placement.replicated, placement.replicated),
        donate_argnums=(0,) if donate else (),
    )
    return TrainStep(jitted, placement)


class EvalStep:
    """The jitted evaluation step `make_eval_step` builds.

    ``step(params, model_state, x, y, mask)`` returns a dict of on-device sums over the examples
    where ``mask`` is true: ``loss`` (float32, summed cross-entropy) and ``correct`` (int32).

    Attributes:
        mesh, num_devices, jitted: as for `TrainStep`.
    """

    def __init__(self, jitted, placement: _Placement):
        self.jitted = jitted
        self._placement = placement
        self.mesh = placement.mesh
        self.num_devices = placement.num_devices

    def __call__(self, params, model_state, x, y, mask):
        self._placement.check_batch(np.shape(x)[0], "eval step")
        return self.jitted(params, model_state, *self._placement.place_batch(x, y, mask))

    def lower(self, state: TrainState, x, y, *, batch_size: int):
        """``jitted.lower`` for batches of ``batch_size`` rows shaped like ``x`` / ``y``'s rows."""
        size = _round_up(batch_size, self.num_devices)
        x = np.zeros((size, *np.shape(x)[1:]), np.asarray(x).dtype)
        y = np.zeros((size, *np.shape(y)[1:]), np.asarray(y).dtype)
        placed = self._placement.place_batch(x, y, np.ones(size, bool))
        return self.jitted.lower(state.params, state.model_state, *placed)


def make_eval_step(model: Layer, *, devices: Sequence[jax.Device] | None = None) -> EvalStep:
    """Build the jitted evaluation step: forward with ``train=False``, masked sums of loss and hits.

    Args:
        model: a per-example `jcnn.layers.Layer` producing logits ``(num_classes,)``.
        devices: devices of the ``"data"`` mesh; default all of ``jax.devices()``.

    Returns:
        An `EvalStep`; `evaluate` drives it over a whole dataset. As with `make_train_step`, the
        same model and devices give back the same step.
    """
    _check_model(model, "make_eval_step")
    return _cached(_build_eval_step, model, _device_tuple(devices))


def _build_eval_step(model, devices) -> EvalStep:
    apply = batched(model).apply
    placement = _Placement(devices)

    def eval_step(params, model_state, x, y, mask):
        logits, _ = apply(params, model_state, x, key=None, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        hit = jnp.argmax(logits, axis=-1) == y
        return {
            # `where`, not `mask *`: a padded row's loss may be anything, NaN included.
            "loss": jnp.sum(jnp.where(mask, loss, 0.0).astype(jnp.float32)),
            "correct": jnp.sum(jnp.logical_and(mask, hit).astype(jnp.int32)),
        }

    b, r = placement.batch_sharding, placement.replicated
    jitted = jax.jit(eval_step, in_shardings=(r, r, b, b, b), out_shardings=r)
    return EvalStep(jitted, placement)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def evaluate(
    eval_step: EvalStep | Layer,
    state: TrainState,
    images,
    labels,
    *,
    batch_size: int = 512,
) -> dict:
    """Mean loss and accuracy of ``state``'s model over ``(images, labels)``, in fixed batches.

    Every batch has ``batch_size`` rows (rounded up to a multiple of the device count): the
    last one is padded with zeros and masked out of the sums, so there is one compilation
    whatever the dataset size and the means are exact. Sums are fetched once, at the end.

    Args:
        eval_step: an `EvalStep` from `make_eval_step`, or the model itself (its step is
            built once and reused, see `make_eval_step`).
        state: a `TrainState` (its ``params`` and ``model_state`` are used).
        images: ``(n, h, w, c)`` float32.
        labels: ``(n,)`` integer labels.
        batch_size: rows per evaluation batch.

    Returns:
        ``{"loss": float, "accuracy": float, "count": int}``; loss and accuracy are NaN when
        ``n == 0``.

    >>> import optax
    >>> from jcnn.layers import Dense, Flatten, serial
    >>> model = serial(Flatten(), Dense(10))
    >>> state = init_state(model, optax.sgd(0.1), 0, (8, 8, 1))
    >>> x, y = np.zeros((5, 8, 8, 1), np.float32), np.zeros(5, np.int32)
    >>> result = evaluate(make_eval_step(model), state, x, y, batch_size=2)
    >>> round(result["loss"], 4), result["count"]
    (2.3026, 5)
    """
    if isinstance(eval_step, Layer):
        eval_step = make_eval_step(eval_step)
    if not isinstance(eval_step, EvalStep):
        raise TypeError(
            f"evaluate: `eval_step` must be an EvalStep or a Layer, got {type(eval_step).__name__}."
        )
    images, labels = np.asarray(images), np.asarray(labels)
    if images.shape[:1] != labels.shape[:1]:
        raise ValueError(
            f"evaluate: `images` and `labels` must have the same length along axis 0, got shapes "
            f"{images.shape} and {labels.shape}."
        )
    size = _round_up(_check_int("evaluate", "batch_size", batch_size, minimum=1), eval_step.num_devices)
    n = images.shape[0]
    sums = []
    for x, y in jdata.batches(images, labels, size, shuffle=False):
        b = x.shape[0]
        mask = np.arange(size) < b
        if b < size:
            x = np.concatenate([x, np.zeros((size - b, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((size - b, *y.shape[1:]), y.dtype)])
        sums.append(eval_step(state.params, state.model_state, x, y, mask))
    sums = jax.device_get(sums)
    loss = math.fsum(float(s["loss"]) for s in sums)
    correct = sum(int(s["correct"]) for s in sums)
    nan = float("nan")
    return {"loss": loss / n if n else nan, "accuracy": correct / n if n else nan, "count": n}


# ---------------------------------------------------------------------------------------------
# Checkpoints and metric files.


def _atomic_write(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that it holds either the old bytes or all the new ones.

    A temporary file in the same folder (``os.replace`` is atomic only within one file system)
    is written, flushed and fsync-ed, then renamed over ``path``; the folder is fsync-ed so the
    rename itself survives a power cut. On any exception, KeyboardInterrupt included, the
    temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, state: TrainState, *, epoch: int, history: list, meta: dict | None = None) -> None:
    """Atomically write ``state`` + ``epoch`` + ``history`` (+ ``meta``) to ``path``.

    The file is ``flax.serialization.to_bytes`` of ``{"state", "epoch", "history", "meta"}``
    (history and meta as JSON text). See the module docstring for the atomic write.

    Args:
        path: the checkpoint file.
        state: the `TrainState` (device arrays are fetched).
        epoch: number of finished epochs.
        history: per-epoch metric dicts.
        meta: JSON-able facts of the run (`fit` stores the seed and batch size).
    """
    payload = serialization.to_bytes(
        {
            "state": jax.device_get(state),
            "epoch": int(epoch),
            "history": json.dumps(history),
            "meta": json.dumps(meta or {}),
        }
    )
    _atomic_write(path, payload)


def load_checkpoint(path, target: TrainState) -> tuple[TrainState, int, list, dict]:
    """Read a checkpoint written by `save_checkpoint` into the structure of ``target``.

    Args:
        path: the checkpoint file.
        target: a `TrainState` of the same model and optimizer (e.g. from `init_state`), whose
            pytree structure the saved arrays are restored into.

    Returns:
        ``(state, epoch, history, meta)``; the state's leaves are NumPy arrays.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, if it is not a checkpoint or its arrays do not fit ``target``
            (a different model or optimizer).
    """
    with open(path, "rb") as f:
        payload = f.read()
    try:
        raw = serialization.msgpack_restore(payload)
        missing = {"state", "epoch", "history"} - set(raw)
        if missing:
            raise ValueError(f"it lacks {sorted(missing)}")
        state = serialization.from_state_dict(target, raw["state"])
        _check_same_shapes(target, state)
    except Exception as e:
        raise ValueError(
            f"load_checkpoint: {os.fspath(path)} is not a checkpoint of this model and optimizer "
            f"({type(e).__name__}: {e})."
        ) from e
    return state, int(raw["epoch"]), json.loads(raw["history"]), json.loads(raw.get("meta", "{}"))


def _check_same_shapes(target, state) -> None:
    for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(target), jax.tree_util.tree_leaves(state)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"{jax.tree_util.keystr(p)} is {b.dtype}{list(b.shape)} in the file but "
                f"{a.dtype}{list(a.shape)} in the model"
            )


def _write_metrics(out_dir: str, history: list, extra: dict) -> None:
    _atomic_write(
        os.path.join(out_dir, METRICS_JSON),
        json.dumps({**extra, "history": history}, indent=2).encode(),
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _atomic_write(os.path.join(out_dir, METRICS_CSV), buf.getvalue().encode())


# ---------------------------------------------------------------------------------------------
# fit.


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the `experiments` extra; train without a bar
        return None
    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=True)


def fit(
    model: Layer,
    optimizer: optax.GradientTransformation,
    dataset,
    *,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    eval_batch_size: int = 512,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``dataset.train`` for ``epochs`` epochs, evaluating on ``dataset.test``.

    Epoch ``e`` (0-based) visits the training images in the order
    ``jcnn.data.batches(..., seed=seed, epoch=e, drop_last=True)``: full batches only, so every
    step has one shape (one compilation) and splits evenly over the devices; the few examples
    left over differ from epoch to epoch. After each epoch: the test set is evaluated (padded
    and masked, see `evaluate`), a history row is added, and if ``out_dir`` is given the
    checkpoint, ``metrics.json`` and ``metrics.csv`` are written there (atomically).

    The train step is compiled before the first epoch (timed, in ``compile_time_s``), so
    ``images_per_s`` measures training alone: training images per second of the epoch's
    training loop, evaluation excluded.

    Resuming: with ``resume=True`` the state, finished epochs and history are read from
    ``out_dir/checkpoint.msgpack`` and training continues with the next epoch. Since the data
    order depends only on ``(seed, epoch)`` and the step's randomness only on the saved key and
    step, an interrupted run resumed gives bit-identical parameters to an uninterrupted one on
    the same machine. A run interrupted mid-epoch restarts that epoch from its beginning.

    Args:
        model: a per-example `jcnn.layers.Layer` producing logits ``(num_classes,)``.
        optimizer: any optax gradient transformation. A schedule should be built for the total
            number of steps, ``epochs * (len(train) // batch_size)``.
        dataset: a `jcnn.data.Dataset`, or anything with ``train`` and ``test`` splits that
            unpack as ``(images, labels)`` (``test`` may be None).
        epochs: total number of epochs (including those of a resumed run).
        batch_size: training batch size, a multiple of the number of devices.
        seed: seed of the parameter init, the dropout keys and the data order.
        out_dir: folder for the checkpoint and metric files (created); None writes nothing.
        resume: continue from ``out_dir``'s checkpoint, which must exist and come from a run
            with the same seed and batch size.
        eval_batch_size: batch size of the test evaluation.
        devices: devices of the ``"data"`` mesh; default all of ``jax.devices()``.
        progress: show a tqdm progress bar per epoch (loss, accuracy, images/s).
        on_epoch_end: called with each new history row.

    Returns:
        A `FitResult` ``(state, history, compile_time_s)``.

    Raises:
        NonFiniteLossError: if a training loss (or, at the end of an epoch, any value of the
            train state) is NaN or infinite; nothing is written for that epoch.
        ValueError: for a batch size that does not split over the devices or exceeds the
            training set, or a checkpoint from a different run.
        FileNotFoundError: for ``resume=True`` without a checkpoint in ``out_dir``.

    >>> from jcnn import data, models
    >>> ds = data.load_digits()
    >>> model = models.lenet(ds.num_classes, ds.image_shape)
    >>> result = fit(model, optax.adam(1e-3), ds, epochs=15, out_dir="runs/digits")  # doctest: +SKIP
    >>> result.history[-1]["test_accuracy"]  # doctest: +SKIP
    0.97...
    """
    where = "fit"
    _check_model(model, where)
    _check_optimizer(optimizer, where)
    epochs = _check_int(where, "epochs", epochs, minimum=0)
    batch_size = _check_int(where, "batch_size", batch_size, minimum=1)
    seed = _check_int(where, "seed", seed, minimum=0)
    train_images, train_labels = (np.asarray(a) for a in dataset.train)
    test = getattr(dataset, "test", None)
    n_train = train_images.shape[0]
    if batch_size > n_train:
        raise ValueError(
            f"{where}: `batch_size` must be at most the {n_train} training examples, got {batch_size}."
        )
    steps_per_epoch = n_train // batch_size

    train_step = make_train_step(model, optimizer, devices=devices)
    train_step._placement.check_batch(batch_size, where)
    eval_step = make_eval_step(model, devices=devices) if test is not None else None
    writer = out_dir is not None and jax.process_index() == 0
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        if writer:
            os.makedirs(out_dir, exist_ok=True)
    ckpt_path = None if out_dir is None else os.path.join(out_dir, CHECKPOINT_NAME)
    meta = {"seed": seed, "batch_size": batch_size}

    state = init_state(model, optimizer, seed, tuple(train_images.shape[1:]))
    start_epoch, history = 0, []
    if resume:
        if ckpt_path is None or not os.path.exists(ckpt_path):
            raise FileNotFoundError(
                f"{where}: `resume=True` but there is no checkpoint {ckpt_path or '(out_dir is None)'}; "
                f"run without resume to start fresh."
            )
        state, start_epoch, history, saved = load_checkpoint(ckpt_path, state)
        diff = {k: (saved.get(k), v) for k, v in meta.items() if saved.get(k, v) != v}
        if diff:
            said = ", ".join(f"`{k}` {old} (now {new})" for k, (old, new) in diff.items())
            raise ValueError(
                f"{where}: the checkpoint {ckpt_path} was written by a run with {said}; resume with "
                f"the same values, or start a fresh run in another `out_dir`."
            )
    state = train_step.place_state(state)
    # (path, finished epochs) of the newest checkpoint this run stands on, for error messages.
    last_good = (ckpt_path, start_epoch) if resume else None

    compile_time = 0.0
    if start_epoch < epochs and steps_per_epoch:
        # Compile up front (jit reuses these executables), so that epoch times and images/s
        # measure training alone; the train step's compile time is reported.
        x0, y0 = train_images[:batch_size], train_labels[:batch_size]
        t0 = time.perf_counter()
        train_step.lower(state, x0, y0).compile()
        compile_time = time.perf_counter() - t0
        _all_finite.lower(state).compile()
        if eval_step is not None:
            eval_step.lower(state, test[0][:1], test[1][:1], batch_size=eval_batch_size).compile()

    for epoch in range(start_epoch, epochs):
        batches = jdata.batches(
            train_images, train_labels, batch_size, seed=seed, epoch=epoch, drop_last=True
        )
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{epochs}", progress)
        state, row = _run_epoch(train_step, state, batches, epoch, steps_per_epoch, bar, last_good)
        eval_time = 0.0
        row["test_loss"] = row["test_accuracy"] = None
        if eval_step is not None:
            t0 = time.perf_counter()
            result = evaluate(eval_step, state, *test, batch_size=eval_batch_size)
            eval_time = time.perf_counter() - t0
            row["test_loss"], row["test_accuracy"] = result["loss"], result["accuracy"]
        row["eval_time_s"] = eval_time
        row["epoch_time_s"] = row["train_time_s"] + eval_time
        row = {k: row[k] for k in _CSV_FIELDS}
        history.append(row)
        if writer:
            save_checkpoint(ckpt_path, state, epoch=epoch + 1, history=history, meta=meta)
            last_good = (ckpt_path, epoch + 1)
            extra = {"compile_time_s": compile_time, "num_devices": train_step.num_devices, **meta}
            _write_metrics(out_dir, history, extra)
        if on_epoch_end is not None:
            on_epoch_end(row)
    return FitResult(state, history, compile_time)


def _run_epoch(train_step, state, batches, epoch, steps_per_epoch, bar, last_good):
    """One epoch of training; returns the state and the epoch's training half of a history row."""
    first_step = int(state.step)
    loss_sum = acc_sum = 0.0
    seen = images = 0

    def consume(i: int, n: int, metrics) -> None:
        # Fetching step i's metrics while step i + 1 is already queued keeps the device busy.
        nonlocal loss_sum, acc_sum, seen, images
        loss, acc = (float(v) for v in jax.device_get((metrics["loss"], metrics["accuracy"])))
        if not math.isfinite(loss):
            if bar is not None:
                bar.close()
            _raise_non_finite(loss, first_step + i + 1, epoch, i + 1, steps_per_epoch, last_good)
        loss_sum += loss
        acc_sum += acc
        seen += 1
        images += n
        if bar is not None:
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}",
                acc=f"{acc_sum / seen:.4f}",
                img_s=f"{images / max(elapsed, 1e-9):.0f}",
                refresh=False,
            )

    t0 = time.perf_counter()
    pending = None
    try:
        for i, (x, y) in enumerate(batches):
            state, metrics = train_step(state, x, y)
            if pending is not None:
                consume(*pending)
            pending = (i, len(y), metrics)
        if pending is not None:
            consume(*pending)
        train_time = time.perf_counter() - t0
        if not bool(_all_finite(state)):
            step = int(state.step)
            _raise_non_finite(
                float("nan"), step, epoch, steps_per_epoch, steps_per_epoch, last_good, what="the train state"
            )
    finally:
        if bar is not None:
            bar.close()
    return state, {
        "epoch": epoch + 1,
        "step": int(state.step),
        "train_loss": loss_sum / seen if seen else float("nan"),
        "train_accuracy": acc_sum / seen if seen else float("nan"),
        "train_time_s": train_time,
        "images_per_s": images / train_time if train_time > 0 else float("nan"),
    }


def _raise_non_finite(loss, step, epoch, batch, nb, last_good, what="the training loss"):
    if last_good is not None:
        path, done = last_good
        kept = f"the last good checkpoint, {path} (after epoch {done}), is unchanged"
    else:
        kept = "no checkpoint of this run was written"
    value = (
        f" ({loss})" if what == "the training loss" else " (a NaN or inf in the params or optimizer state)"
    )
    raise NonFiniteLossError(
        f"fit: {what} became non-finite{value} at step {step} (epoch {epoch + 1}, batch {batch} of "
        f"{nb}); training stopped and {kept}. Lower the learning rate, clip gradients "
        f"(optax.clip_by_global_norm) or check the inputs for NaN.",
        step=step,
        epoch=epoch + 1,
        batch=batch,
        loss=loss,
        checkpoint=None if last_good is None else last_good[0],
    )
