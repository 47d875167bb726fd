"""The jitted train and eval steps, their device placement on a ``"data"`` mesh, and `evaluate`.

Devices and data parallelism:
    The steps run on a `jax.sharding.Mesh` with one axis, ``"data"``, over all devices
    (``jax.devices()``, or ``devices=``). Batches are placed with
    ``NamedSharding(mesh, PartitionSpec("data"))``, split along the batch axis; the train state
    is replicated (``PartitionSpec()``). XLA's SPMD partitioner inserts the gradient all-reduce
    (and BatchNorm's cross-device mean), so on one device and on many the code is the same and the
    numbers agree to float rounding. The training batch size must be a multiple of the device
    count; evaluation pads its batches to one.

    On a GPU or TPU host nothing changes: ``jax.devices()`` lists the accelerators. With several
    processes (`jcnn.train.distributed.initialize` first thing in every process), each process
    feeds its own rows of every global batch (`Placement.rows`, `Placement.place_local`, through
    ``jax.make_array_from_process_local_data``; tests/test_distributed.py runs 2 processes). To try the multi-device path on a CPU, set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before jax is imported.

Training recipe (issue 13):
    ``augment`` is a ``(key, images) -> images`` function (`jcnn.augment`) run on the batch
    inside the jitted step, keyed by a key split from the step's key: on-device, and a resumed
    run repeats the augmentations of an uninterrupted one. ``label_smoothing=a`` trains on
    targets ``(1 - a) * one_hot + a / num_classes`` (the reported train loss is that smoothed
    loss; evaluation reports the plain cross-entropy). ``compute_dtype="bfloat16"`` is mixed
    precision: params, optimizer state, BatchNorm statistics and the loss stay float32; the step
    casts params and images to bfloat16, so convolutions and matmuls run in bfloat16 (their
    gradients come back float32 through the casts). Float16 is refused: without loss scaling
    its gradients underflow. Mixed precision is for GPUs and TPUs: XLA's CPU backend has no fast
    bfloat16 convolutions (a small VGG's step took 1.5x the float32 time on a 2-core CPU).

XLA compiler options (issue 10, item 4):
    ``compiler_options=`` (a dict of XLA option names to values) is passed to the step's own
    ``jax.jit``: it changes how that one step compiles, never the process's other programs (no
    ``XLA_FLAGS``). `xla_cpu_ynn_off` gives the one measured to pay: XLA CPU's classic
    convolutions and dots instead of its YNNPACK fusions, 0.73x the LeNet step's time with
    ``impl="xla"`` convs on a 2-core CPU (experiments/RESULTS.md, session 5). Results agree with
    the default compilation to float rounding, not bit for bit: resume a run with the setting it
    started with.

Precision:
    ``precision=None`` leaves matmul and conv precision to JAX (on recent NVIDIA GPUs float32
    matmuls then run in TF32, on TPUs in bfloat16 passes); ``"high"`` or ``"highest"`` traces
    the step under ``jax.default_matmul_precision`` (issue 14).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jcnn import data as jdata
from jcnn.checks import as_int, one_of
from jcnn.layers import Layer, batched
from jcnn.ops.conv import IMPLS as CONV_IMPLS
from jcnn.ops.conv import auto_as
from jcnn.train.distributed import process_rows
from jcnn.train.state import TrainState, check_model, check_optimizer

__all__ = [
    "PRECISIONS",
    "Placement",
    "TrainStep",
    "EvalStep",
    "make_mesh",
    "make_train_step",
    "make_eval_step",
    "evaluate",
    "check_precision",
    "check_compiler_options",
    "xla_cpu_ynn_off",
    "COMPUTE_DTYPES",
]

#: The values ``compute_dtype=`` takes besides None (float32).
COMPUTE_DTYPES = ("float32", "bfloat16")

#: The values ``precision=`` takes besides None (JAX's own default).
PRECISIONS = ("default", "high", "highest")


def check_precision(precision, where: str) -> str | None:
    """``None`` or one of `PRECISIONS`."""
    return None if precision is None else one_of(precision, PRECISIONS, where, "precision")


def check_compiler_options(options, where: str) -> tuple:
    """``compiler_options`` as a sorted tuple of ``(name, value)`` pairs (hashable: steps are cached)."""
    if options is None:
        return ()
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(
            f"{where}: `compiler_options` must be None or a dict of XLA option names to values (e.g."
            f" jcnn.train.xla_cpu_ynn_off()), got {options!r}."
        )
    return tuple(sorted(options.items()))


_YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _ynn_option_known() -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options=_YNN_OFF).lower(np.float32(1)).compile()
    except Exception as exc:  # jaxlib raises its own XlaRuntimeError
        if "No such compile option" in str(exc):
            return False
        raise
    return True


def xla_cpu_ynn_off() -> dict:
    """``compiler_options`` that compile a step with XLA CPU's classic kernels, not YNNPACK's.

    Recent XLA CPU releases route convolutions and dots through YNNPACK fusions; at the
    lecture's sizes its classic (Eigen) convolutions are faster: on a 2-core CPU the LeNet train
    step (batch 128) took 74.5 ms instead of 102.2 with ``impl="xla"`` convs and 84.9 instead of
    103.1 with ``impl="auto"``, ResNet-8's 229.9 instead of 326.7 (``"xla"``; experiments/bench.py
    --suite steps, RESULTS.md session 5). It is not a default:
    XLA's depthwise and 3-D convs were 3-6x slower with it (issue 10), and it is one setting
    of one XLA release. Returns ``{}`` (nothing to change) off CPU and where the installed XLA
    has no YNN fusions (jaxlib 0.6).

    >>> opts = xla_cpu_ynn_off()
    >>> opts in ({}, {"xla_cpu_experimental_ynn_fusion_type": ""})
    True
    """
    if jax.default_backend() != "cpu" or not _ynn_option_known():
        return {}
    return dict(_YNN_OFF)


def check_recipe(augment, label_smoothing, compute_dtype, where: str):
    """The checked ``(augment, label_smoothing, compute_dtype)`` of a step (module docstring).

    ``compute_dtype`` comes back as None for float32 (nothing to cast).
    """
    if augment is not None and not callable(augment):
        raise TypeError(
            f"{where}: `augment` must be None or a function (key, images) -> images (see jcnn.augment), "
            f"got {augment!r}."
        )
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating)):
        raise TypeError(f"{where}: `label_smoothing` must be a number in [0, 1), got {label_smoothing!r}.")
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"{where}: `label_smoothing` must be in [0, 1), got {label_smoothing}.")
    if compute_dtype is not None:
        name = jnp.dtype(compute_dtype).name if not isinstance(compute_dtype, str) else compute_dtype
        if name == "float16":
            raise ValueError(
                f"{where}: `compute_dtype` float16 is not supported: without loss scaling its "
                f"gradients underflow; use 'bfloat16' (same range as float32)."
            )
        compute_dtype = one_of(name, COMPUTE_DTYPES, where, "compute_dtype")
        compute_dtype = None if compute_dtype == "float32" else compute_dtype
    return augment, label_smoothing, compute_dtype


def _cast(tree, dtype):
    """Float leaves of ``tree`` as ``dtype`` (None: unchanged); other leaves as they are."""
    if dtype is None:
        return tree
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def _like(tree, reference):
    """``tree``'s leaves cast back to the dtypes of ``reference``'s (BatchNorm statistics)."""
    return jax.tree_util.tree_map(lambda a, r: a.astype(r.dtype), tree, reference)


def _precision_scope(precision: str | None):
    return contextlib.nullcontext() if precision is None else jax.default_matmul_precision(precision)


def _conv_scope(conv_impl: str | None):
    return contextlib.nullcontext() if conv_impl is None else auto_as(conv_impl)


def check_conv_impl(conv_impl, where: str) -> str | None:
    """``None`` or one of the conv impls (``jcnn.ops.conv``'s ``IMPLS``)."""
    return None if conv_impl is None else one_of(conv_impl, CONV_IMPLS, where, "conv_impl")


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: all of ``jax.devices()``).

    >>> make_mesh().axis_names
    ('data',)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: `devices` must hold at least one device, got none.")
    return Mesh(np.array(devices, dtype=object), ("data",))


class Placement:
    """Data-parallel placement on a ``"data"`` mesh: batches split, everything else replicated.

    Attributes:
        mesh: the one-axis ``"data"`` mesh.
        num_devices: its size.
        batch_sharding: ``NamedSharding(mesh, PartitionSpec("data"))``.
        replicated: ``NamedSharding(mesh, PartitionSpec())``.
    """

    def __init__(self, devices):
        self.mesh = make_mesh(devices)
        self.num_devices = self.mesh.size
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def check_batch(self, n: int, where: str) -> None:
        """ValueError unless a batch of ``n`` rows splits evenly over the devices."""
        if n % self.num_devices:
            k = self.num_devices
            raise ValueError(
                f"{where}: a batch of {n} examples does not split evenly over {k} devices; use a "
                f"batch size that is a multiple of {k}, e.g. {max(k, n - n % k)} or {n + k - n % k}."
            )

    def rows(self, n: int) -> slice:
        """The rows of a global batch of ``n`` that this process feeds (all of them on one process)."""
        return process_rows(self.batch_sharding, (n,))

    def place_batch(self, *arrays):
        """Put host arrays (the global batch) on the mesh, split along axis 0.

        With several processes every process passes the same global batch and feeds only its
        own rows (`rows`); `place_local` is the form for a process that read only those.
        """
        if jax.process_count() == 1:
            return tuple(jax.device_put(a, self.batch_sharding) for a in arrays)
        n = np.shape(arrays[0])[0]
        rows = self.rows(n)
        return self.place_local(n, *(np.asarray(a)[rows] for a in arrays))

    def place_local(self, n: int, *arrays):
        """This process's rows (`rows` of a global batch of ``n``) assembled into global arrays.

        ``jax.make_array_from_process_local_data`` stitches every process's rows into one
        array sharded over the whole mesh; on one process the rows are the whole batch.
        """
        if jax.process_count() == 1:
            return tuple(jax.device_put(a, self.batch_sharding) for a in arrays)
        return tuple(
            jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(a), (n, *np.shape(a)[1:]))
            for a in arrays
        )

    def place_replicated(self, tree):
        """``tree`` on every device of the mesh."""
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
        placement: the `Placement` (mesh and shardings) the step runs with.
        mesh: the ``jax.sharding.Mesh`` (axis ``"data"``) the step runs on.
        num_devices: number of devices in the mesh.
        precision: the matmul precision the step was traced under (None: JAX's default).
        jitted: the underlying ``jax.jit`` function ``(state, x, y) -> (state, metrics)``, for
            ``.lower(...)`` and ``.compile()``.
    """

    def __init__(self, jitted, placement: Placement, precision: str | None):
        self.jitted = jitted
        self.placement = placement
        self.mesh = placement.mesh
        self.num_devices = placement.num_devices
        self.precision = precision

    def check_batch(self, n: int, where: str) -> None:
        """ValueError unless a batch of ``n`` examples splits evenly over the mesh's devices."""
        self.placement.check_batch(n, where)

    def place_state(self, state: TrainState) -> TrainState:
        """``state`` replicated on every device of the mesh (what the step returns, too)."""
        return self.placement.place_replicated(state)

    def place_batch(self, x, y):
        """``(x, y)`` on the mesh, split along the batch axis (``PartitionSpec("data")``)."""
        self.placement.check_batch(np.shape(x)[0], "train step")
        return self.placement.place_batch(x, y)

    def lower(self, state: TrainState, x, y):
        """``jitted.lower`` on placed arguments: ``.compile()`` it to time the compilation."""
        return self.jitted.lower(state, *self.place_batch(x, y))

    def __call__(self, state: TrainState, x, y):
        return self.jitted(state, *self.place_batch(x, y))

    def call_local(self, state: TrainState, n: int, x, y):
        """The step on a global batch of ``n`` of which this process passes only its rows.

        ``x`` and ``y`` are rows ``placement.rows(n)`` of the global batch: what a process
        reads of its share (`jcnn.train.fit` reads nothing else). On one process, the batch.
        """
        return self.jitted(state, *self.placement.place_local(n, x, y))


def make_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    *,
    devices: Sequence[jax.Device] | None = None,
    donate: bool = True,
    precision: str | None = None,
    augment=None,
    label_smoothing: float = 0.0,
    compute_dtype=None,
    compiler_options: Mapping | None = None,
    conv_impl: str | None = None,
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
        precision: None (JAX's default) or one of ``"default"``, ``"high"``, ``"highest"``: the
            step is traced under ``jax.default_matmul_precision(precision)``.
        augment: None or a ``(key, images) -> images`` augmentation (`jcnn.augment`), run on
            the batch inside the step with a key split from the step's key.
        label_smoothing: in ``[0, 1)``; 0 trains on the integer labels as they are.
        compute_dtype: None or ``"float32"`` (everything float32), or ``"bfloat16"``: mixed
            precision (module docstring).
        compiler_options: None or XLA options for this step's ``jax.jit`` (module docstring;
            `xla_cpu_ynn_off`).
        conv_impl: None, or the impl every ``impl="auto"`` conv of the model uses in this step
            (`jcnn.ops.auto_as`), e.g. ``"xla"`` with `xla_cpu_ynn_off` on CPU.

    Returns:
        A `TrainStep` ``step(state, x (n, h, w, c) float32, y (n,) int32) -> (state, metrics)``.
        The same model, optimizer, devices, ``donate`` and precision give back the same
        step (the last 16 built are kept), so a second `fit` of the same objects reuses the compilation.

    Raises:
        TypeError: for a non-Layer model or a non-optax optimizer.
        ValueError: when called with a batch whose size is not a multiple of the device count.

    >>> import jcnn, optax
    >>> from jcnn.layers import Dense, Flatten, serial
    >>> model, opt = serial(Flatten(), Dense(10)), optax.sgd(0.1)
    >>> step = make_train_step(model, opt)
    >>> state = jcnn.train.init_state(model, opt, 0, (8, 8, 1))
    >>> x, y = np.zeros((4, 8, 8, 1), np.float32), np.arange(4, dtype=np.int32)
    >>> state, metrics = step(state, x, y)
    >>> int(state.step), sorted(metrics), round(float(metrics["loss"]), 4)
    (1, ['accuracy', 'grad_norm', 'loss'], 2.3026)
    """
    where = "make_train_step"
    check_model(model, where)
    check_optimizer(optimizer, where)
    precision = check_precision(precision, where)
    recipe = check_recipe(augment, label_smoothing, compute_dtype, where)
    options = check_compiler_options(compiler_options, where)
    conv_impl = check_conv_impl(conv_impl, where)
    return _cached(
        _build_train_step, model, optimizer, _device_tuple(devices), bool(donate), precision, *recipe, options,
        conv_impl,
    )  # fmt: skip


def _build_train_step(
    model, optimizer, devices, donate, precision, augment, label_smoothing, compute_dtype, options, conv_impl
) -> TrainStep:
    apply = batched(model).apply
    placement = Placement(devices)

    def train_step(state: TrainState, x: jax.Array, y: jax.Array):
        with _precision_scope(precision), _conv_scope(conv_impl):  # read by every dot/conv traced below
            return _train_step(state, x, y)

    def _train_step(state: TrainState, x: jax.Array, y: jax.Array):
        key = jax.random.fold_in(state.key, state.step)
        if augment is not None:  # without it the model's key stays what it always was
            key, augment_key = jax.random.split(key)
            x = augment(augment_key, x)
        x = _cast(x, compute_dtype)

        def loss_fn(params):
            logits, model_state = apply(
                _cast(params, compute_dtype), state.model_state, x, key=key, train=True
            )
            logits = logits.astype(jnp.float32)
            if label_smoothing:
                targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), label_smoothing)
                loss = optax.softmax_cross_entropy(logits, targets)
            else:
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return _float32_mean(loss), (logits, _like(model_state, state.model_state))

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
        compiler_options=dict(options) or None,
    )
    return TrainStep(jitted, placement, precision)


class EvalStep:
    """The jitted evaluation step `make_eval_step` builds.

    ``step(params, model_state, x, y, mask)`` returns a dict of on-device sums over the examples
    where ``mask`` is true: ``loss`` (float32, summed cross-entropy) and ``correct`` (int32).

    Attributes:
        placement, mesh, num_devices, precision, jitted: as for `TrainStep`.
    """

    def __init__(self, jitted, placement: Placement, precision: str | None):
        self.jitted = jitted
        self.placement = placement
        self.mesh = placement.mesh
        self.num_devices = placement.num_devices
        self.precision = precision

    def __call__(self, params, model_state, x, y, mask):
        self.placement.check_batch(np.shape(x)[0], "eval step")
        return self.jitted(params, model_state, *self.placement.place_batch(x, y, mask))

    def call_local(self, params, model_state, n: int, x, y, mask):
        """As `TrainStep.call_local`: ``x``, ``y``, ``mask`` are this process's rows of ``n``."""
        return self.jitted(params, model_state, *self.placement.place_local(n, x, y, mask))

    def lower(self, state: TrainState, x, y, *, batch_size: int):
        """``jitted.lower`` for batches of ``batch_size`` rows shaped like ``x`` / ``y``'s rows."""
        size = _round_up(batch_size, self.num_devices)
        x = np.zeros((size, *np.shape(x)[1:]), np.asarray(x).dtype)
        y = np.zeros((size, *np.shape(y)[1:]), np.asarray(y).dtype)
        placed = self.placement.place_batch(x, y, np.ones(size, bool))
        return self.jitted.lower(state.params, state.model_state, *placed)


def make_eval_step(
    model: Layer,
    *,
    devices: Sequence[jax.Device] | None = None,
    precision: str | None = None,
    compute_dtype=None,
    views: Sequence | None = None,
    compiler_options: Mapping | None = None,
    conv_impl: str | None = None,
) -> EvalStep:
    """Build the jitted evaluation step: forward with ``train=False``, masked sums of loss and hits.

    Args:
        model: a per-example `jcnn.layers.Layer` producing logits ``(num_classes,)``.
        devices: devices of the ``"data"`` mesh; default all of ``jax.devices()``.
        precision, compute_dtype: as for `make_train_step` (the forward pass runs in
            ``compute_dtype``; the loss is computed in float32).
        views: None, or test-time augmentation: deterministic functions ``images -> images``
            on the batch ``(n, h, w, c)`` (e.g. ``(lambda x: x, jcnn.augment.flip_horizontal)``);
            the prediction is the mean of the softmax probabilities over the views, and the
            loss its negative log at the label.
        compiler_options, conv_impl: as for `make_train_step`.

    Returns:
        An `EvalStep`; `evaluate` drives it over a whole dataset. As with `make_train_step`, the
        same model and devices give back the same step.
    """
    check_model(model, "make_eval_step")
    precision = check_precision(precision, "make_eval_step")
    _, _, compute_dtype = check_recipe(None, 0.0, compute_dtype, "make_eval_step")
    if views is not None:
        views = tuple(views)
        bad = [v for v in views if not callable(v)]
        if not views or bad:
            raise TypeError(
                f"make_eval_step: `views` must be None or a non-empty sequence of functions images -> "
                f"images, got {views!r}."
            )
    options = check_compiler_options(compiler_options, "make_eval_step")
    conv_impl = check_conv_impl(conv_impl, "make_eval_step")
    return _cached(
        _build_eval_step, model, _device_tuple(devices), precision, compute_dtype, views, options, conv_impl
    )


def _build_eval_step(model, devices, precision, compute_dtype, views, options, conv_impl) -> EvalStep:
    apply = batched(model).apply
    placement = Placement(devices)

    def eval_step(params, model_state, x, y, mask):
        with _precision_scope(precision), _conv_scope(conv_impl):
            params, x = _cast((params, x), compute_dtype)
            if views is None:
                logits = apply(params, model_state, x, key=None, train=False)[0].astype(jnp.float32)
            else:  # log of the mean probability over the views: a log-softmax, so the loss below holds
                logps = [
                    jax.nn.log_softmax(
                        apply(params, model_state, view(x), key=None, train=False)[0].astype(jnp.float32)
                    )
                    for view in views
                ]
                logits = jax.nn.logsumexp(jnp.stack(logps), axis=0) - jnp.log(jnp.float32(len(views)))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        hit = jnp.argmax(logits, axis=-1) == y
        return {
            # `where`, not `mask *`: a padded row's loss may be anything, NaN included.
            "loss": jnp.sum(jnp.where(mask, loss, 0.0).astype(jnp.float32)),
            "correct": jnp.sum(jnp.logical_and(mask, hit).astype(jnp.int32)),
        }

    b, r = placement.batch_sharding, placement.replicated
    jitted = jax.jit(
        eval_step, in_shardings=(r, r, b, b, b), out_shardings=r, compiler_options=dict(options) or None
    )
    return EvalStep(jitted, placement, precision)


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

    >>> import jcnn, optax
    >>> from jcnn.layers import Dense, Flatten, serial
    >>> model = serial(Flatten(), Dense(10))
    >>> state = jcnn.train.init_state(model, optax.sgd(0.1), 0, (8, 8, 1))
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
    images, labels = jdata.rows_of(images), np.asarray(labels)  # a lazy source stays unread
    if tuple(images.shape[:1]) != labels.shape[:1]:
        raise ValueError(
            f"evaluate: `images` and `labels` must have the same length along axis 0, got shapes "
            f"{images.shape} and {labels.shape}."
        )
    size = _round_up(as_int(batch_size, "evaluate", "batch_size", minimum=1), eval_step.num_devices)
    n = images.shape[0]
    # Each process reads only its rows of every batch (all of them on one process); rows past
    # the end are zero padding, masked out of the sums.
    rows = eval_step.placement.rows(size)
    width = rows.stop - rows.start
    sums = []
    for lo in range(0, n, size):
        start, stop = min(lo + rows.start, n), min(lo + rows.stop, n)
        x, y = images[start:stop], labels[start:stop]
        b = stop - start
        if b < width:
            x = np.concatenate([x, np.zeros((width - b, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((width - b, *y.shape[1:]), y.dtype)])
        mask = np.arange(width) < b
        sums.append(eval_step.call_local(state.params, state.model_state, size, x, y, mask))
    sums = jax.device_get(sums)
    loss = math.fsum(float(s["loss"]) for s in sums)
    correct = sum(int(s["correct"]) for s in sums)
    nan = float("nan")
    return {"loss": loss / n if n else nan, "accuracy": correct / n if n else nan, "count": n}
