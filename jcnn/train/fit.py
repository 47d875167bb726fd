"""`fit`: epochs of seeded batches, evaluation, checkpoints, exact resume, a stop on a non-finite
loss. A short orchestration of the pieces: `jcnn.train.steps` (the jitted steps on a device
mesh), `jcnn.train.output` (the run folder: lock, checkpoints, metric files) and
`jcnn.data.check_split` (the data checked before training).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jcnn import augment as jaugment
from jcnn import data as jdata
from jcnn.checks import as_bool, as_int
from jcnn.layers import Layer
from jcnn.train.identity import data_fingerprint, run_identity
from jcnn.train.metrics import CSV_FIELDS
from jcnn.train.output import NoOutput, RunOutput
from jcnn.train.state import TrainState, init_state_and_classes
from jcnn.train.steps import (
    EvalStep,
    TrainStep,
    check_precision,
    check_recipe,
    evaluate,
    make_eval_step,
    make_train_step,
)

__all__ = ["FitResult", "NonFiniteLossError", "fit"]


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


class _Run(NamedTuple):
    """Everything `fit` derives from its arguments before training (all checked)."""

    train: tuple
    test: tuple | None
    batch_size: int
    seed: int
    epochs: int
    steps_per_epoch: int
    eval_batch_size: int
    train_step: TrainStep
    eval_step: EvalStep | None
    state: TrainState
    identity: dict
    checkpoint_every: int | None


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
    override: Sequence[str] = (),
    hparams: Mapping[str, Any] | None = None,
    keep: int = 2,
    precision: str | None = None,
    eval_batch_size: int = 512,
    devices: Sequence[jax.Device] | None = None,
    checkpoint_every: int | None = None,
    augment=None,
    label_smoothing: float = 0.0,
    compute_dtype=None,
    compiler_options: Mapping[str, Any] | None = None,
    conv_impl: str | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``dataset.train`` for ``epochs`` epochs, evaluating on ``dataset.test``.

    Before anything trains, the data are checked (`jcnn.data.check_split`: integer labels in
    range, finite numeric images of one shape) and the output folder is locked, cleaned of
    stale temporary files and probed (writable, room for the checkpoints).

    Epoch ``e`` (0-based) visits the training images in the order
    ``jcnn.data.batches(..., seed=seed, epoch=e, drop_last=True)``: full batches only, so every
    step has one shape (one compilation) and splits evenly over the devices. After each epoch
    the test set is evaluated (padded and masked, see `evaluate`), a history row is added, and
    with ``out_dir`` a checkpoint is committed (`jcnn.train.checkpoint`: orbax, checksums, the
    run's identity, the history) and ``metrics.json`` / ``metrics.csv`` are rewritten from it.

    The train step is compiled before the first epoch (timed, in ``compile_time_s``), so
    ``images_per_s`` measures training alone.

    Resuming: with ``resume=True`` the newest checkpoint in ``out_dir`` is verified and
    continued from its next epoch, bit for bit as if never interrupted (the data order depends
    only on ``(seed, epoch)``, the step's randomness on the saved key and step). It must come
    from the same run: model, optimizer state structure, ``hparams``, dataset (name and a hash
    of its arrays), batch size, seed, epochs and precision. A differing field is refused,
    naming it and both values, unless it is listed in ``override``. Without ``resume`` a run
    replaces whatever an earlier run left in ``out_dir``. One run at a time per ``out_dir``.

    Args:
        model: a per-example `jcnn.layers.Layer` producing logits ``(num_classes,)``.
        optimizer: any optax gradient transformation. A schedule should be built for the total
            number of steps, ``epochs * (len(train) // batch_size)``.
        dataset: a `jcnn.data.Dataset`, or anything with ``train`` and ``test`` splits that
            unpack as ``(images, labels)`` (``test`` may be None) and optionally a ``name``.
            The images may be a lazy source read only by the rows a step needs: a memmap
            (``np.load(path, mmap_mode="r")``), `jcnn.data.NpyShards`, or any object with
            ``shape``, ``dtype`` and ``__getitem__`` of an integer array or slice of rows.
        epochs: total number of epochs (including those of a resumed run).
        batch_size: training batch size, a multiple of the number of devices.
        seed: seed of the parameter init, the dropout keys and the data order.
        out_dir: folder for the checkpoints and metric files (created); None writes nothing.
        resume: continue from ``out_dir``'s newest checkpoint.
        override: names of run-identity fields a resume may change, e.g. ``("lr", "epochs")``.
        hparams: JSON-able hyperparameters that identify the run beyond what `fit` sees (optax
            cannot report an optimizer's learning rate or schedule), e.g. ``{"lr": 1e-3}``.
        keep: how many of the newest checkpoints to keep.
        precision: None (JAX's default), ``"default"``, ``"high"`` or ``"highest"``: the steps
            are traced under ``jax.default_matmul_precision``.
        eval_batch_size: batch size of the test evaluation.
        devices: devices of the ``"data"`` mesh; default all of ``jax.devices()`` (with several
            processes, every process's devices: each feeds its own rows of every batch).
        checkpoint_every: also checkpoint every this many updates within an epoch (into
            ``checkpoints-mid/<step>``, the position in the epoch included), so that a resume
            continues mid-epoch, bit for bit; None: at the ends of epochs only.
        augment: None or a ``(key, images) -> images`` augmentation (`jcnn.augment`), run on
            each training batch inside the jitted step, keyed from the step's key (a resume
            repeats the same augmentations); the test set is never augmented.
        label_smoothing: in ``[0, 1)``: train on smoothed targets (the train loss reported
            is the smoothed one; the test loss is the plain cross-entropy).
        compute_dtype: None or ``"float32"``, or ``"bfloat16"`` for mixed precision: bfloat16
            convolutions and matmuls, float32 params, optimizer state and loss (train and test).
        compiler_options: None or XLA options for the train and eval steps' ``jax.jit``, e.g.
            `jcnn.train.xla_cpu_ynn_off()` (faster convs on CPU at small sizes; results agree
            to float rounding, so resume with the setting the run started with).
        conv_impl: None, or the impl the model's ``impl="auto"`` convs use in both steps
            (`jcnn.ops.auto_as`; same numbers to float rounding, as for ``compiler_options``).
        progress: show a tqdm progress bar per epoch (loss, accuracy, images/s).
        on_epoch_end: called with each new history row.

    Returns:
        A `FitResult` ``(state, history, compile_time_s)``.

    Raises:
        NonFiniteLossError: if a training loss (or, at the end of an epoch, any value of the
            train state) is NaN or infinite; nothing is written for that epoch.
        TypeError, ValueError: for bad arguments or data (naming the split, index and value).
        jcnn.train.RunMismatchError: for a resume whose configuration differs.
        jcnn.train.CheckpointError: for a checkpoint that fails its integrity check.
        jcnn.train.RunLockedError: if another live run holds ``out_dir``.
        OSError: if ``out_dir`` is not writable or too full (before training), or a write fails.
        FileNotFoundError: for ``resume=True`` without a checkpoint in ``out_dir``.

    >>> from jcnn import data, models
    >>> ds = data.load_digits()
    >>> model = models.lenet(ds.num_classes, ds.image_shape)
    >>> result = fit(model, optax.adam(1e-3), ds, epochs=15, out_dir="runs/digits")  # doctest: +SKIP
    >>> result.history[-1]["test_accuracy"]  # doctest: +SKIP
    0.97...
    """
    run = _prepare(
        model, optimizer, dataset, epochs=epochs, batch_size=batch_size, seed=seed, hparams=hparams,
        precision=precision, eval_batch_size=eval_batch_size, devices=devices,
        checkpoint_every=checkpoint_every, recipe=(augment, label_smoothing, compute_dtype),
        compiler_options=compiler_options, conv_impl=conv_impl,
    )  # fmt: skip
    resume = as_bool(resume, "fit", "resume")
    primary = jax.process_index() == 0  # with several processes, only process 0 shows a bar
    output = NoOutput() if out_dir is None else RunOutput(out_dir, run.identity, keep=keep)
    with output:
        state, history = output.start(run.state, resume=resume, override=tuple(override))
        position = output.position  # where a mid-epoch checkpoint left its epoch, or None
        state = run.train_step.place_state(state)
        compile_time = _compile(run, state) if len(history) < run.epochs and run.steps_per_epoch else 0.0
        extra = {"compile_time_s": compile_time, "num_devices": run.train_step.num_devices}
        for epoch in range(len(history), run.epochs):
            bar = _progress(run.steps_per_epoch, f"epoch {epoch + 1}/{run.epochs}", progress and primary)
            state, row = _train_epoch(run, state, epoch, bar, output, history, position)
            position = None
            history.append(_with_test_metrics(run, state, row))
            output.commit(state, history, extra)
            if on_epoch_end is not None:
                on_epoch_end(history[-1])
    return FitResult(state, history, compile_time)


def _prepare(
    model, optimizer, dataset, *, epochs, batch_size, seed, hparams, precision, eval_batch_size, devices,
    checkpoint_every, recipe, compiler_options, conv_impl,
) -> _Run:  # fmt: skip
    """Check every argument and the data, build the steps, the initial state and the run's identity."""
    where = "fit"
    epochs = as_int(epochs, where, "epochs", minimum=0)
    batch_size = as_int(batch_size, where, "batch_size", minimum=1)
    seed = as_int(seed, where, "seed", minimum=0)
    eval_batch_size = as_int(eval_batch_size, where, "eval_batch_size", minimum=1)
    if checkpoint_every is not None:
        checkpoint_every = as_int(checkpoint_every, where, "checkpoint_every", minimum=1)
    precision = check_precision(precision, where)
    augment, label_smoothing, compute_dtype = check_recipe(*recipe, where)
    images, labels = dataset.train
    images, labels = jdata.rows_of(images), np.asarray(labels)  # a lazy source stays unread
    if images.ndim < 2:
        raise ValueError(f"{where}: train images must have shape (n, *image_shape), got {images.shape}.")
    state, num_classes = init_state_and_classes(model, optimizer, seed, images.shape[1:], where)
    train = jdata.check_split(images, labels, split="train", num_classes=num_classes, where=where)
    test = getattr(dataset, "test", None)
    if test is not None:
        test = jdata.check_split(
            *test, split="test", num_classes=num_classes, image_shape=images.shape[1:], where=where
        )
    if batch_size > len(labels):
        raise ValueError(
            f"{where}: `batch_size` must be at most the {len(labels)} training examples, got {batch_size}."
        )
    train_step = make_train_step(
        model, optimizer, devices=devices, precision=precision, augment=augment,
        label_smoothing=label_smoothing, compute_dtype=compute_dtype, compiler_options=compiler_options,
        conv_impl=conv_impl,
    )  # fmt: skip
    train_step.check_batch(batch_size, where)
    eval_step = (
        make_eval_step(
            model,
            devices=devices,
            precision=precision,
            compute_dtype=compute_dtype,
            compiler_options=compiler_options,
            conv_impl=conv_impl,
        )  # fmt: skip
        if test is not None
        else None
    )
    identity = run_identity(
        model, state.opt_state, input_shape=images.shape[1:], dataset_name=getattr(dataset, "name", None),
        data_sha256=data_fingerprint(*train, *(test or ())), batch_size=batch_size, seed=seed,
        epochs=epochs, precision=precision, hparams=hparams, where=where,
        recipe={
            "augment": None if augment is None else jaugment.describe(augment),
            "label_smoothing": label_smoothing or None,
            "compute_dtype": compute_dtype,
        },
    )  # fmt: skip
    return _Run(
        train, test, batch_size, seed, epochs, len(labels) // batch_size, eval_batch_size,
        train_step, eval_step, state, identity, checkpoint_every,
    )  # fmt: skip


def _compile(run: _Run, state: TrainState) -> float:
    """Compile the steps up front (jit reuses the executables); returns the train step's time.

    Done before the first epoch so that epoch times and images/s measure training alone.
    """
    x, y = run.train
    t0 = time.perf_counter()
    run.train_step.lower(state, x[: run.batch_size], y[: run.batch_size]).compile()
    compile_time = time.perf_counter() - t0
    _all_finite.lower(state).compile()
    if run.eval_step is not None:
        run.eval_step.lower(state, run.test[0][:1], run.test[1][:1], batch_size=run.eval_batch_size).compile()
    return compile_time


def _with_test_metrics(run: _Run, state: TrainState, row: dict) -> dict:
    """The epoch's history row: its training half, the test metrics and the timings."""
    row["test_loss"] = row["test_accuracy"] = None
    eval_time = 0.0
    if run.eval_step is not None:
        t0 = time.perf_counter()
        result = evaluate(run.eval_step, state, *run.test, batch_size=run.eval_batch_size)
        eval_time = time.perf_counter() - t0
        row["test_loss"], row["test_accuracy"] = result["loss"], result["accuracy"]
    row["eval_time_s"] = eval_time
    row["epoch_time_s"] = row["train_time_s"] + eval_time
    return {k: row[k] for k in CSV_FIELDS}


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


def _train_epoch(run: _Run, state: TrainState, epoch: int, bar, output, history: list, position):
    """One epoch of training (from ``position``'s batch when resuming mid-epoch); returns the
    state and the epoch's training half of a history row. With ``run.checkpoint_every``, every
    that many updates a mid-epoch checkpoint records the state, the batch reached and the running
    sums of the epoch's metrics, so that a resume from it ends with the same row.
    """
    train_step, steps_per_epoch, every = run.train_step, run.steps_per_epoch, run.checkpoint_every
    start = 0 if position is None else int(position["batch"])
    batches = _process_batches(run, epoch, start)
    first_step = int(state.step) - start  # the step count at the epoch's beginning
    loss_sum = 0.0 if position is None else float(position["loss_sum"])
    acc_sum = 0.0 if position is None else float(position["acc_sum"])
    seen = 0 if position is None else int(position["seen"])
    images = 0  # this call's images only: images/s measures this call's training
    if bar is not None:
        bar.update(start)

    def consume(i: int, n: int, metrics) -> None:
        # Fetching step i's metrics while step i + 1 is already queued keeps the device busy.
        nonlocal loss_sum, acc_sum, seen, images
        loss, acc = (float(v) for v in jax.device_get((metrics["loss"], metrics["accuracy"])))
        if not math.isfinite(loss):
            if bar is not None:
                bar.close()
            _raise_non_finite(loss, first_step + i + 1, epoch, i + 1, steps_per_epoch, output.last_good)
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
        for i, (x, y) in enumerate(batches, start):
            state, metrics = train_step.call_local(state, run.batch_size, x, y)
            if pending is not None:
                consume(*pending)
            pending = (i, run.batch_size, metrics)
            step = first_step + i + 1
            if every is not None and step % every == 0 and i + 1 < steps_per_epoch:
                consume(*pending)  # the sums saved must include this step
                pending = None
                where = {"step": step, "batch": i + 1, "loss_sum": loss_sum, "acc_sum": acc_sum, "seen": seen}
                output.commit_mid(state, history, where)
        if pending is not None:
            consume(*pending)
        train_time = time.perf_counter() - t0
        if not bool(_all_finite(state)):
            step = int(state.step)
            _raise_non_finite(
                float("nan"), step, epoch, steps_per_epoch, steps_per_epoch, output.last_good,
                what="the train state",
            )  # fmt: skip
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


def _process_batches(run: _Run, epoch: int, start_batch: int = 0):
    """This process's rows of each global batch of the epoch, read from the training split.

    The global order is `jcnn.data.epoch_order` (seed, epoch), the same in every process and
    for any process count; each process reads only rows ``placement.rows(batch_size)`` of each
    batch, so a split that reads lazily (a memory-mapped array) loads nothing else.
    """
    images, labels = run.train
    order = jdata.epoch_order(len(labels), seed=run.seed, epoch=epoch)
    rows = run.train_step.placement.rows(run.batch_size)
    for i in range(start_batch, run.steps_per_epoch):
        idx = order[i * run.batch_size : (i + 1) * run.batch_size][rows]
        yield images[idx], labels[idx]


def _raise_non_finite(loss, step, epoch, batch, nb, last_good, what="the training loss"):
    if last_good is not None:
        path, when = last_good
        kept = f"the last good checkpoint, {path} ({when}), is unchanged"
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
