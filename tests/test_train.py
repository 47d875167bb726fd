"""Tests for jcnn.train: steps, evaluation, fit, checkpoints, resume, non-finite stops, devices,
precision, lazy imports. The fault-injection tests (kills, flipped bytes, locks) are in test_faults.py."""

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn import data, train
from jcnn.layers import Dense, Dropout, Flatten, Relu, batched, serial, spec_record
from jcnn.train.checkpoint import CheckpointStore
from jcnn.train.rundir import atomic_write

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST, BATCH = 640, 150, 32
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 20


# One model and one optimizer object for most of the file: `make_train_step` hands back the same
# compiled step for the same objects, and every new parameter shape costs a compile of the
# initializer. Dropout puts the per-step key on the tested path; the schedule puts a step count
# in the optimizer state, which resume must restore.
MODEL = serial(Flatten(), Dense(32), Relu(), Dropout(0.2), Dense(10))
OPTIMIZER = optax.adam(optax.cosine_decay_schedule(1e-2, 2 * STEPS_PER_EPOCH))


@pytest.fixture(scope="module")
def digits():
    ds = data.load_digits()
    return ds._replace(
        train=data.Split(ds.train.images[:N_TRAIN], ds.train.labels[:N_TRAIN]),
        test=data.Split(ds.test.images[:N_TEST], ds.test.labels[:N_TEST]),
    )


def tree_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb)
    )


@pytest.fixture(scope="module")
def straight_run(digits, tmp_path_factory):
    """Two epochs in one go, writing files: shared by the metrics, loss and resume tests."""
    out = tmp_path_factory.mktemp("straight")
    result = train.fit(
        MODEL, OPTIMIZER, digits, epochs=2, batch_size=BATCH, seed=3, out_dir=out, progress=False
    )
    return out, result


# ---------------------------------------------------------------------------------------------
# State and steps.


def test_init_state_types():
    state = train.init_state(MODEL, optax.sgd(0.1), 0, (8, 8, 1))
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert state.key.dtype == jnp.uint32
    assert state.params[1]["kernel"].dtype == jnp.float32
    # A typed key and its raw data give the same state.
    typed = train.init_state(MODEL, optax.sgd(0.1), jax.random.key(0), (8, 8, 1))
    assert tree_equal(state, typed)


def test_init_state_rejects_non_vector_output():
    with pytest.raises(ValueError, match=r"vector of logits .* outputs \(8, 8, 3\)"):
        train.init_state(serial(Dense(3)), optax.sgd(0.1), 0, (8, 8, 1))


def test_bad_model_and_optimizer_types():
    with pytest.raises(TypeError, match="jcnn.layers.Layer"):
        train.make_train_step(lambda x: x, optax.sgd(0.1))
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        train.make_train_step(MODEL, "adam")


def test_train_step_loss_falls_and_donates(digits):
    model = MODEL
    opt = optax.adam(1e-2)
    step = train.make_train_step(model, opt)
    state = step.place_state(train.init_state(model, opt, 0, (8, 8, 1)))
    x, y = digits.train.images[:64], digits.train.labels[:64]
    losses = []
    for _ in range(60):  # 30 steps left 4 of 64 wrong on some random streams; 60 memorise the batch
        old = state
        state, metrics = step(state, x, y)
        losses.append(float(metrics["loss"]))
    assert old.params[1]["kernel"].is_deleted()  # the state passed in was donated
    assert int(state.step) == 60
    assert losses[-1] < 0.25 * losses[0], losses
    # Training metrics see dropout; the evaluation (train=False) of the fitted batch is clean.
    assert train.evaluate(model, state, x, y)["accuracy"] > 0.95
    assert step.jitted._cache_size() == 1


def test_train_step_matches_hand_written_step(digits):
    """The step is plain softmax cross-entropy + optax: check it against one written out here."""
    model = serial(Flatten(), Dense(10))
    opt = optax.sgd(0.5)
    state = train.init_state(model, opt, 1, (8, 8, 1))
    x, y = digits.train.images[:16], digits.train.labels[:16]

    def loss(params):
        logits = jax.vmap(lambda xi: model.apply(params, state.model_state, xi)[0])(x)
        return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    want_loss, grads = jax.value_and_grad(loss)(state.params)
    want = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, state.params, grads)
    new, metrics = train.make_train_step(model, opt, donate=False)(state, x, y)
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_evaluate_pads_and_masks_the_last_batch(straight_run, digits):
    _, result = straight_run
    model, state = MODEL, result.state
    x, y = digits.test
    logits, _ = batched(model).apply(state.params, state.model_state, jnp.asarray(x))
    want_loss = float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)))
    want_acc = int(np.sum(np.asarray(jnp.argmax(logits, -1)) == y)) / N_TEST
    step = train.make_eval_step(model)
    for batch_size in (7, 64, 1000):  # 150 = 21 * 7 + 3, 2 * 64 + 22, one padded batch
        got = train.evaluate(step, state, x, y, batch_size=batch_size)
        np.testing.assert_allclose(got["loss"], want_loss, rtol=1e-5)
        assert got["accuracy"] == want_acc and got["count"] == N_TEST
    # Odd dataset sizes at one batch size reuse one compilation.
    compiled = step.jitted._cache_size()
    for n in (5, 13, 149):
        got = train.evaluate(step, state, x[:n], y[:n], batch_size=7)
        assert got["count"] == n
    assert step.jitted._cache_size() == compiled


@pytest.mark.parametrize("precision", [None, "highest"])
def test_precision_is_traced_into_the_step(precision):
    """`precision=` reaches every dot of the step (issue 14); None leaves JAX's default."""
    model, opt = serial(Flatten(), Dense(10)), optax.sgd(0.1)
    step = train.make_train_step(model, opt, precision=precision, donate=False)
    state = train.init_state(model, opt, 0, (8, 8, 1))
    x, y = np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, np.int32)
    text = step.lower(state, x, y).as_text()
    assert ("HIGHEST" in text) == (precision == "highest") and step.precision == precision
    assert train.make_train_step(model, opt, precision=precision, donate=False) is step
    ev = train.make_eval_step(model, precision=precision)
    assert ("HIGHEST" in ev.lower(state, x, y, batch_size=4).as_text()) == (precision == "highest")


def test_conv_impl_and_compiler_options_reach_the_step():
    """`conv_impl=` is traced into both steps (jcnn.ops.auto_as); `compiler_options=` goes to
    their jax.jit (issue 10, item 4); both are part of the step cache's key."""
    from jcnn.layers import Conv

    model, opt = serial(Conv(4, 3, padding=1), Relu(), Flatten(), Dense(10)), optax.sgd(0.1)
    state = train.init_state(model, opt, 0, (8, 8, 1))
    x, y = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32), np.arange(4, dtype=np.int32)
    auto = train.make_train_step(model, opt, donate=False)  # a small call: auto picks im2col
    xla = train.make_train_step(model, opt, donate=False, conv_impl="xla")
    assert "convolution" not in auto.lower(state, x, y).as_text()
    assert "convolution" in xla.lower(state, x, y).as_text() and xla is not auto
    ev = train.make_eval_step(model, conv_impl="xla")
    assert "convolution" in ev.lower(state, x, y, batch_size=4).as_text()
    (s1, m1), (s2, m2) = auto(state, x, y), xla(state, x, y)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s2.params
    )

    opts = train.xla_cpu_ynn_off()
    assert opts in ({}, {"xla_cpu_experimental_ynn_fusion_type": ""})  # {}: this XLA has no YNN
    off = train.make_train_step(model, opt, donate=False, compiler_options=opts)
    assert train.make_train_step(model, opt, donate=False, compiler_options=dict(opts)) is off
    np.testing.assert_allclose(off(state, x, y)[1]["loss"], m1["loss"], rtol=1e-5)
    with pytest.raises(TypeError, match=r"make_train_step: `compiler_options` must be None or a dict"):
        train.make_train_step(model, opt, compiler_options=["xla_cpu_experimental_ynn_fusion_type"])
    with pytest.raises(ValueError, match=r"make_eval_step: `conv_impl`"):
        train.make_eval_step(model, conv_impl="cudnn")


def test_import_jcnn_ops_does_not_import_the_training_stack():
    """`import jcnn.ops` / `jcnn.shapes` must not pay for optax, flax and orbax (issue 9)."""
    code = (
        "import sys, jcnn.ops, jcnn.shapes; "
        "print('flax' in sys.modules, 'optax' in sys.modules, 'orbax' in sys.modules); "
        "import jcnn; from jcnn.summary import summary; "
        "print(jcnn.summary is summary, callable(jcnn.train.fit), jcnn.ShapeError is jcnn.shapes.ShapeError)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "False", "False", "True", "True", "True"], proc.stdout


# ---------------------------------------------------------------------------------------------
# fit: metrics, resume.


def test_fit_loss_falls_and_learns(straight_run, digits):
    _, result = straight_run
    h = result.history
    assert [row["epoch"] for row in h] == [1, 2]
    # Against the untrained model's loss on the same images (ln 10 = 2.30 at chance), not against
    # epoch 1's mean, which already includes 20 steps of learning. (The old bound, 0.7 x epoch 1,
    # was calibrated on a float64 session: in float32 it gives 0.710, on main and here alike.)
    untrained = train.evaluate(MODEL, train.init_state(MODEL, OPTIMIZER, 3, (8, 8, 1)), *digits.train)
    assert h[1]["train_loss"] < h[0]["train_loss"] < untrained["loss"]
    assert h[1]["train_loss"] < 0.7 * untrained["loss"]
    assert h[1]["test_loss"] < h[0]["test_loss"]
    assert h[1]["test_accuracy"] > 0.7  # chance is 0.1; 40 steps of a 32-unit MLP
    assert int(result.state.step) == 2 * STEPS_PER_EPOCH
    assert result.compile_time_s > 0


def test_metrics_files(straight_run):
    out, result = straight_run
    assert sorted(os.listdir(out)) == ["checkpoints", "metrics.csv", "metrics.json"]
    assert sorted(os.listdir(out / "checkpoints")) == ["1", "2"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["history"] == result.history
    assert saved["num_devices"] == 1 and saved["seed"] == 3 and saved["batch_size"] == BATCH
    assert saved["epochs"] == 2 and saved["overrides"] == []
    assert saved["compile_time_s"] == result.compile_time_s
    for i, row in enumerate(saved["history"]):
        assert row["epoch"] == i + 1 and row["step"] == (i + 1) * STEPS_PER_EPOCH
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
        assert row["images_per_s"] > 0
        assert row["epoch_time_s"] == pytest.approx(row["train_time_s"] + row["eval_time_s"])
    with open(out / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == train.CSV_FIELDS
    assert len(rows) == 2
    for row, want in zip(rows, saved["history"]):
        assert int(row["epoch"]) == want["epoch"] and int(row["step"]) == want["step"]
        for key in train.CSV_FIELDS[2:]:
            assert float(row[key]) == want[key]  # repr of a float round-trips exactly


def test_checkpoint_roundtrip(straight_run):
    out, result = straight_run
    template = train.init_state(MODEL, OPTIMIZER, 0, (8, 8, 1))
    state, epoch, history, identity, overrides = train.load_checkpoint(out, template)
    assert epoch == 2 and history == result.history and overrides == []
    assert (identity["seed"], identity["batch_size"], identity["epochs"]) == (3, BATCH, 2)
    assert identity["model"] == spec_record(MODEL) and identity["dataset"] == "digits"
    assert identity["optimizer_state"] == "ScaleByAdamState, ScaleByScheduleState"
    assert tree_equal(state, jax.device_get(result.state))
    # An older checkpoint is kept too (keep=2) and is the first epoch's.
    assert train.load_checkpoint(out, template, epoch=1).history == result.history[:1]


def test_resume_is_bit_identical(straight_run, digits, tmp_path):
    _, straight = straight_run

    def interrupt(row):  # Ctrl-C right after epoch 1's checkpoint
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.fit(
            MODEL, OPTIMIZER, digits, epochs=2, batch_size=BATCH, seed=3, out_dir=tmp_path,
            progress=False, on_epoch_end=interrupt,
        )  # fmt: skip
    template = train.init_state(MODEL, OPTIMIZER, 0, (8, 8, 1))
    assert int(train.load_checkpoint(tmp_path, template).state.step) == STEPS_PER_EPOCH
    resumed = train.fit(
        MODEL,
        OPTIMIZER,
        digits,
        epochs=2,
        batch_size=BATCH,
        seed=3,
        out_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert tree_equal(resumed.state, straight.state)  # params, optimizer state, step and key
    keys = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in straight.history]
    assert [r["epoch"] for r in json.loads((tmp_path / "metrics.json").read_text())["history"]] == [1, 2]
    # Resuming a finished run trains nothing and returns the saved state.
    again = train.fit(
        MODEL,
        OPTIMIZER,
        digits,
        epochs=2,
        batch_size=BATCH,
        seed=3,
        out_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert tree_equal(again.state, straight.state) and again.compile_time_s == 0.0


def test_mid_epoch_resume_is_bit_identical(straight_run, digits, tmp_path):
    # checkpoint_every=7 over 20 steps per epoch: mid-epoch checkpoints at steps 7, 14 (epoch 1)
    # and 21, 28, 35 (epoch 2), the newest 2 kept. Checkpointing does not change training.
    _, straight = straight_run
    kw = dict(epochs=2, batch_size=BATCH, seed=3, out_dir=tmp_path, progress=False)
    full = train.fit(MODEL, OPTIMIZER, digits, checkpoint_every=7, **kw)
    assert tree_equal(full.state, straight.state)
    mid = tmp_path / "checkpoints-mid"
    assert sorted(int(p.name) for p in mid.iterdir() if p.name.isdigit()) == [28, 35]
    # As if killed at step 38: the epoch-2 checkpoint never written, the newest is mid-epoch 2,
    # batch 15 of 20. The resume continues there and ends with the same bytes and metrics.
    shutil.rmtree(tmp_path / "checkpoints" / "2")
    meta = CheckpointStore(mid, create=False).read_meta(35)
    assert (meta["epoch"], meta["position"]["batch"], meta["position"]["step"]) == (1, 15, 35)
    resumed = train.fit(MODEL, OPTIMIZER, digits, resume=True, checkpoint_every=7, **kw)
    assert tree_equal(resumed.state, straight.state)
    keys = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in straight.history]
    # Within the first epoch (no epoch checkpoint at all), and without checkpoint_every now.
    shutil.rmtree(tmp_path / "checkpoints")
    shutil.rmtree(mid)
    first = tmp_path / "first"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C at the end of epoch 1, before its checkpoint
        train.fit(MODEL, OPTIMIZER, digits, checkpoint_every=7, **{**kw, "out_dir": first},
                  on_epoch_end=_interrupt)  # fmt: skip
    shutil.rmtree(first / "checkpoints" / "1")
    assert sorted(int(p.name) for p in (first / "checkpoints-mid").iterdir() if p.name.isdigit()) == [7, 14]
    resumed = train.fit(MODEL, OPTIMIZER, digits, resume=True, **{**kw, "out_dir": first})
    assert tree_equal(resumed.state, straight.state)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_fit_reads_a_lazy_source_of_npy_shards(straight_run, digits, tmp_path):
    # A split larger than memory: images as memory-mapped .npy shards (uneven sizes), indexed
    # row by row. The same bytes as the in-memory run, and the same data fingerprint (a run may
    # move between the two forms and resume).
    out, straight = straight_run
    images, labels = digits.train
    for i, (lo, hi) in enumerate([(0, 100), (100, 333), (333, len(labels))]):
        np.save(tmp_path / f"part{i}.npy", images[lo:hi])
    shards = data.NpyShards(sorted(tmp_path.glob("part*.npy")))
    assert shards.shape == images.shape and np.array_equal(
        shards[np.array([5, 400, 101])], images[[5, 400, 101]]
    )
    lazy = digits._replace(train=(shards, labels))
    result = train.fit(MODEL, OPTIMIZER, lazy, epochs=2, batch_size=BATCH, seed=3, out_dir=tmp_path / "run",
                       progress=False)  # fmt: skip
    assert tree_equal(result.state, straight.state)
    ident = [
        CheckpointStore(d / "checkpoints", create=False).read_meta()["identity"]
        for d in (out, tmp_path / "run")
    ]
    assert ident[0]["data_sha256"] == ident[1]["data_sha256"]
    np.save(tmp_path / "odd.npy", labels)
    with pytest.raises(ValueError, match=r"NpyShards: every shard must hold rows of shape \(8, 8, 1\)"):
        data.NpyShards([tmp_path / "part0.npy", tmp_path / "odd.npy"])
    bad = np.array(images[:64])
    bad[37, 2, 2, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"fit: train image at index 37 holds a non-finite value \(nan\)"):
        train.fit(MODEL, OPTIMIZER, digits._replace(train=(data.NpyShards([tmp_path / "bad.npy"]), labels[:64])),
                  epochs=1, batch_size=BATCH)  # fmt: skip


def _interrupt(row):
    raise KeyboardInterrupt


def test_resume_errors(straight_run, digits, tmp_path):
    out, _ = straight_run
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.fit(MODEL, OPTIMIZER, digits, epochs=2, batch_size=BATCH, out_dir=tmp_path, resume=True)
    with pytest.raises(train.RunMismatchError, match=r"`epochs` 2 \(now 3\), `seed` 3 \(now 4\)") as info:
        train.fit(MODEL, OPTIMIZER, digits, epochs=3, batch_size=BATCH, seed=4, out_dir=out, resume=True)
    assert info.value.differences == {"epochs": (2, 3), "seed": (3, 4)}
    with pytest.raises(
        ValueError, match=r"`override` names 'learning_rate', which the run identity does not"
    ):
        train.fit(MODEL, OPTIMIZER, digits, epochs=2, batch_size=BATCH, seed=3, out_dir=out, resume=True,
                  override=("learning_rate",))  # fmt: skip
    with pytest.raises(ValueError, match=r"not a checkpoint of this model and optimizer: it holds"):
        other = serial(Flatten(), Dense(10))
        train.load_checkpoint(out, train.init_state(other, OPTIMIZER, 0, (8, 8, 1)))


def test_fit_argument_errors(digits):
    with pytest.raises(ValueError, match=f"at most the {N_TRAIN} training examples"):
        train.fit(MODEL, OPTIMIZER, digits, epochs=1, batch_size=N_TRAIN + 1)
    with pytest.raises(ValueError, match="`epochs` must be >= 0"):
        train.fit(MODEL, OPTIMIZER, digits, epochs=-1)
    with pytest.raises(
        ValueError, match="`precision` must be one of 'default', 'high', 'highest', got 'fp32'"
    ):
        train.fit(MODEL, OPTIMIZER, digits, epochs=1, precision="fp32")
    with pytest.raises(ValueError, match="`hparams` keys must be strings other than the built-in fields"):
        train.fit(MODEL, OPTIMIZER, digits, epochs=1, hparams={"seed": 1})


# ---------------------------------------------------------------------------------------------
# Non-finite losses and interrupted writes.


def nan_from_update(k: int, lr: float = 0.1):
    """SGD whose updates turn NaN from the (k+1)-th on (optax counts updates from 0)."""
    return optax.chain(
        optax.sgd(lr),
        optax.scale_by_schedule(lambda count: jnp.where(count >= k, jnp.float32(jnp.nan), jnp.float32(1))),
    )


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    # Update 23 (epoch 2, batch 3) makes the params NaN, so update 24's loss is NaN.
    opt = nan_from_update(22)
    with pytest.raises(train.NonFiniteLossError, match=r"step 24 \(epoch 2, batch 4 of 20\)") as info:
        train.fit(MODEL, opt, digits, epochs=3, batch_size=BATCH, out_dir=tmp_path, progress=False)
    err = info.value
    assert (err.step, err.epoch, err.batch) == (24, 2, 4) and np.isnan(err.loss)
    assert err.checkpoint == os.path.join(tmp_path, train.CHECKPOINT_NAME, "1")
    assert "after epoch 1" in str(err) and "is unchanged" in str(err)
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "metrics.csv", "metrics.json"]  # lock released
    template = train.init_state(MODEL, opt, 0, (8, 8, 1))
    state, epoch, history, _, _ = train.load_checkpoint(tmp_path, template)
    assert epoch == 1 and len(history) == 1 and int(state.step) == STEPS_PER_EPOCH
    assert json.loads((tmp_path / "metrics.json").read_text())["history"] == history
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state.params))


def test_non_finite_loss_after_a_mid_epoch_checkpoint_names_its_step(digits, tmp_path):
    # checkpoint_every=7: the newest good checkpoint before update 24's NaN loss is step 21, in epoch 2.
    with pytest.raises(train.NonFiniteLossError) as info:
        train.fit(MODEL, nan_from_update(22), digits, epochs=3, batch_size=BATCH, out_dir=tmp_path,
                  progress=False, checkpoint_every=7)  # fmt: skip
    assert info.value.checkpoint == os.path.join(tmp_path, "checkpoints-mid", "21")
    assert "(at step 21, within epoch 2), is unchanged" in str(info.value)


def test_non_finite_params_at_epoch_end_write_nothing(digits, tmp_path):
    # The last update of epoch 1 makes the params NaN: every loss of the epoch was finite, but
    # the checkpoint must not be written.
    with pytest.raises(
        train.NonFiniteLossError,
        match=r"the train state became non-finite .* at step 20 \(epoch 1, batch 20 of 20\)",
    ):
        train.fit(
            MODEL,
            nan_from_update(STEPS_PER_EPOCH - 1),
            digits,
            epochs=2,
            batch_size=BATCH,
            out_dir=tmp_path,
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train.load_checkpoint(tmp_path, train.init_state(MODEL, OPTIMIZER, 0, (8, 8, 1)))
    assert json.loads((tmp_path / "metrics.json").read_text())["history"] == []


def test_huge_learning_rate_raises_non_finite(digits):
    with pytest.raises(train.NonFiniteLossError, match="no checkpoint of this run was written"):
        train.fit(MODEL, optax.sgd(1e30), digits, epochs=2, batch_size=BATCH, progress=False)


@pytest.mark.parametrize(
    "target, exc",
    [("fsync", KeyboardInterrupt), ("replace", OSError)],
    ids=["ctrl-c-before-rename", "rename-fails"],
)
def test_interrupted_atomic_write_keeps_the_old_file(tmp_path, monkeypatch, target, exc):
    path = tmp_path / "metrics.json"
    atomic_write(path, b"old")

    def fail(*args, **kwargs):
        raise exc("simulated failure mid-write")

    monkeypatch.setattr(os, target, fail)
    with pytest.raises(exc, match="simulated"):
        atomic_write(path, b"new")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temp file left behind
    assert path.read_bytes() == b"old"


def test_write_error_is_reported_as_itself_not_as_the_cleanup_error(tmp_path, monkeypatch):
    """Issue 11: a failed write's real error was masked by the error of removing its temp file."""

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    def cannot_remove(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "fsync", no_room)
    monkeypatch.setattr(os, "remove", cannot_remove)
    with pytest.raises(OSError, match="No space left on device") as info:
        atomic_write(tmp_path / "metrics.json", b"new")
    assert info.value.errno == 28


def test_ctrl_c_during_a_checkpoint_save_leaves_the_folder_consistent(digits, tmp_path, monkeypatch):
    train.fit(MODEL, OPTIMIZER, digits, epochs=1, batch_size=BATCH, seed=3, out_dir=tmp_path, progress=False)
    history_before = json.loads((tmp_path / "metrics.json").read_text())["history"]

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointStore, "save", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train.fit(
            MODEL, OPTIMIZER, digits, epochs=2, batch_size=BATCH, seed=3, out_dir=tmp_path,
            resume=True, override=("epochs",), progress=False,
        )  # fmt: skip
    monkeypatch.undo()
    # The metric files still say epoch 1, like the checkpoint.
    assert json.loads((tmp_path / "metrics.json").read_text())["history"] == history_before
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "metrics.csv", "metrics.json"]  # lock released
    template = train.init_state(MODEL, OPTIMIZER, 0, (8, 8, 1))
    assert train.load_checkpoint(tmp_path, template).epoch == 1


# ---------------------------------------------------------------------------------------------
# Several devices (a subprocess: the device count is fixed when jax starts).

SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, os, tempfile
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import PartitionSpec
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from jcnn import data, train
    from jcnn.layers import BatchNorm, Dense, Dropout, Flatten, Relu, serial

    assert jax.device_count() == 4, jax.devices()
    # BatchNorm: its batch statistics must span all four devices' rows to match one device.
    model = serial(Flatten(), Dense(16), BatchNorm(), Relu(), Dropout(0.2), Dense(10))
    # Plain SGD: Adam divides by sqrt(v), which blows rounding noise in a near-zero gradient
    # (the bias before BatchNorm) up to a full step, and equal-to-rounding is the claim here.
    opt = optax.sgd(0.1, momentum=0.9)
    ds = data.load_digits()
    x, y = ds.train.images[:32], ds.train.labels[:32]
    out = {}

    step4 = train.make_train_step(model, opt)
    step1 = train.make_train_step(model, opt, devices=jax.devices()[:1])
    xs, ys = step4.place_batch(x, y)
    out["x_spec_is_data"] = xs.sharding.spec == PartitionSpec("data")
    out["x_shards"] = sorted((s.device.id, s.index[0].start, s.data.shape[0]) for s in xs.addressable_shards)
    s4 = step4.place_state(train.init_state(model, opt, 0, (8, 8, 1)))
    s1 = step1.place_state(train.init_state(model, opt, 0, (8, 8, 1)))
    out["loss4"], out["loss1"] = [], []
    for i in range(3):
        xb, yb = ds.train.images[32 * i : 32 * i + 32], ds.train.labels[32 * i : 32 * i + 32]
        s4, m4 = step4(s4, xb, yb)
        s1, m1 = step1(s1, xb, yb)
        out["loss4"].append(float(m4["loss"]))
        out["loss1"].append(float(m1["loss"]))
    leaves = jax.tree_util.tree_leaves(s4)
    out["state_replicated"] = all(l.sharding.is_fully_replicated for l in leaves)
    out["state_devices"] = sorted({len(l.sharding.device_set) for l in leaves})
    out["max_param_diff"] = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree_util.tree_leaves(s4), jax.tree_util.tree_leaves(s1))
        if np.issubdtype(np.asarray(a).dtype, np.floating)
    )
    # On-device augmentation draws the same per-image choices however the batch is split.
    import functools
    from jcnn import augment
    aug = augment.compose(functools.partial(augment.random_crop, padding=1), augment.random_flip)
    a4 = train.make_train_step(model, opt, augment=aug, donate=False)
    a1 = train.make_train_step(model, opt, augment=aug, donate=False, devices=jax.devices()[:1])
    _, ma4 = a4(s4, x, y)
    _, ma1 = a1(s1, x, y)
    out["aug_loss4"], out["aug_loss1"] = float(ma4["loss"]), float(ma1["loss"])
    try:
        step4(s4, x[:30], y[:30])
    except ValueError as e:
        out["indivisible"] = str(e)
    small = ds._replace(train=data.Split(ds.train.images[:256], ds.train.labels[:256]),
                        test=data.Split(ds.test.images[:37], ds.test.labels[:37]))
    out_dir = tempfile.mkdtemp()
    result = train.fit(model, opt, small, epochs=1, batch_size=32, out_dir=out_dir, progress=False)
    out["fit_test_count_ok"] = result.history[0]["test_accuracy"] * 37 % 1 < 1e-9
    out["fit_loss"] = result.history[0]["train_loss"]
    template = train.init_state(model, opt, 0, (8, 8, 1))
    saved = train.load_checkpoint(out_dir, template).state
    out["checkpoint_matches"] = all(
        np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(result.state))
    )
    print("RESULT", json.dumps(out))
    """
)


def test_four_device_data_parallelism():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out["x_spec_is_data"]
    # Four devices, eight rows each, covering the batch.
    assert [(start, rows) for _, start, rows in out["x_shards"]] == [(0, 8), (8, 8), (16, 8), (24, 8)]
    assert sorted(d for d, _, _ in out["x_shards"]) == [0, 1, 2, 3]
    assert out["state_replicated"] and out["state_devices"] == [4]
    np.testing.assert_allclose(out["loss4"], out["loss1"], rtol=1e-5)
    assert out["max_param_diff"] < 1e-5
    np.testing.assert_allclose(out["aug_loss4"], out["aug_loss1"], rtol=1e-5)
    assert "30 examples does not split evenly over 4 devices" in out["indivisible"]
    assert out["fit_test_count_ok"] and np.isfinite(out["fit_loss"]) and out["checkpoint_matches"]


# ---------------------------------------------------------------------------------------------
# The experiment script.


def test_experiment_script_smoke(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "experiments/train.py", "--model", "mlp", "--epochs", "1", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Dense(256)" in proc.stdout.split("training 1 epochs")[0]  # the summary came first
    assert "epoch 1/1" in proc.stderr  # the progress bar
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("test accuracy: 0.") and len(last.split(": ")[1]) == 6, last
    assert sorted(os.listdir(out)) == [
        "checkpoints",
        "learning_curves.png",
        "metrics.csv",
        "metrics.json",
    ]
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == 1 and f"{history[0]['test_accuracy']:.4f}" == last.split(": ")[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--coordinator", "127.0.0.1:1234"], "--coordinator, --num-processes and --process-id go together"),
        (
            ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id must be below --num-processes 2, got 2",
        ),
        (["--num-processes", "0", "--coordinator", "h:1", "--process-id", "0"], "must be >= 1, got 0"),
        (
            ["--distributed", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "0"],
            "exclude each other",
        ),
        (["--checkpoint-every", "0"], "must be >= 1, got 0"),
    ],
)
def test_cli_multi_process_options_are_validated(train_script, argv, message, capsys):
    with pytest.raises(SystemExit):
        train_script.parse_args(argv)
    assert message in capsys.readouterr().err
    args = train_script.parse_args(["--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"])
    assert (args.coordinator, args.num_processes, args.process_id, args.distributed) == ("h:1", 2, 1, False)
