"""Tests for the training recipe of jcnn.train (issue 13): on-device augmentation keyed by the
step, label smoothing and bfloat16 mixed precision, in the step, in `fit` and in train.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn import augment, data, train
from jcnn.layers import BatchNorm, Conv, Dense, Flatten, Relu, batched, serial

N_TRAIN, N_TEST, BATCH = 320, 100, 32

LINEAR = serial(Flatten(), Dense(10))
# A conv and a BatchNorm: the layers whose dtypes mixed precision must get right.
CONV_BN = serial(Conv(4, 3, padding=1), BatchNorm(), Relu(), Flatten(), Dense(10))
FLIP_CROP = augment.compose(functools.partial(augment.random_crop, padding=1), augment.random_flip)


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


def hand_loss(model, state, x, y, smoothing=0.0):
    logits = batched(model).apply(state.params, state.model_state, x, train=True)[0]
    targets = jax.nn.one_hot(y, 10) * (1 - smoothing) + smoothing / 10
    return float(jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)))


# ---------------------------------------------------------------------------------------------
# The step.


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_loss_is_cross_entropy_on_smoothed_targets(digits, smoothing):
    state = train.init_state(LINEAR, optax.sgd(0.0), 0, (8, 8, 1))
    x, y = digits.train.images[:16], digits.train.labels[:16]
    step = train.make_train_step(LINEAR, optax.sgd(0.0), donate=False, label_smoothing=smoothing)
    _, metrics = step(state, x, y)
    np.testing.assert_allclose(float(metrics["loss"]), hand_loss(LINEAR, state, x, y, smoothing), rtol=1e-5)


def test_augment_runs_in_the_step_with_a_key_split_from_the_steps_key(digits):
    opt = optax.sgd(0.0)  # no update: the loss shows which images the model saw
    state = train.init_state(LINEAR, opt, 0, (8, 8, 1))
    state = state._replace(step=jnp.asarray(5, state.step.dtype))
    x, y = digits.train.images[:16], digits.train.labels[:16]
    step = train.make_train_step(LINEAR, opt, donate=False, augment=FLIP_CROP)
    _, metrics = step(state, x, y)
    _, augment_key = jax.random.split(jax.random.fold_in(state.key, state.step))
    seen = FLIP_CROP(augment_key, jnp.asarray(x))
    assert not np.array_equal(seen, x)  # the pipeline changed something on this key
    np.testing.assert_allclose(float(metrics["loss"]), hand_loss(LINEAR, state, seen, y), rtol=1e-5)
    # A later step draws other augmentations.
    _, later = step(state._replace(step=state.step + 1), x, y)
    assert float(later["loss"]) != float(metrics["loss"])


def test_mixed_precision_keeps_float32_state_and_computes_in_bfloat16(digits):
    opt = optax.adam(1e-2)
    x, y = digits.train.images[:32], digits.train.labels[:32]
    state = train.init_state(CONV_BN, opt, 0, (8, 8, 1))
    mixed = train.make_train_step(CONV_BN, opt, donate=False, compute_dtype="bfloat16")
    full = train.make_train_step(CONV_BN, opt, donate=False)
    new, metrics = mixed(state, x, y)
    _, want = full(state, x, y)
    # Params, optimizer state and BatchNorm statistics stay float32; the loss is float32.
    for leaf in jax.tree_util.tree_leaves((new.params, new.opt_state, new.model_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert metrics["loss"].dtype == jnp.float32
    # bfloat16 keeps ~3 significant digits: the loss agrees to that, not to float32's.
    np.testing.assert_allclose(float(metrics["loss"]), float(want["loss"]), rtol=2e-2)
    assert float(metrics["loss"]) != float(want["loss"])
    hlo = mixed.lower(state, x, y).as_text()
    # XLA's convolution, or on CPU jcnn's oneDNN custom calls (`auto` picks them for bf16 there)
    assert "bf16" in hlo and ("convolution" in hlo or "jcnn_onednn_conv" in hlo)
    assert "bf16" not in full.lower(state, x, y).as_text()
    # Training still works: the loss on this batch falls.
    state = mixed.place_state(state)
    first = None
    for _ in range(30):
        state, metrics = mixed(state, x, y)
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < 0.5 * first
    # Evaluation in the same dtype.
    ev = train.make_eval_step(CONV_BN, compute_dtype="bfloat16")
    assert train.evaluate(ev, state, x, y)["accuracy"] > 0.8


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(label_smoothing=1.0), ValueError, r"`label_smoothing` must be in \[0, 1\), got 1.0"),
        (dict(label_smoothing=-0.1), ValueError, r"`label_smoothing` must be in \[0, 1\)"),
        (dict(label_smoothing="0.1"), TypeError, r"`label_smoothing` must be a number"),
        (dict(compute_dtype="float16"), ValueError, "float16 is not supported: without loss scaling"),
        (dict(compute_dtype=jnp.float16), ValueError, "float16 is not supported"),
        (dict(compute_dtype="int8"), ValueError, "`compute_dtype` must be one of 'float32', 'bfloat16'"),
        (dict(augment="flip"), TypeError, r"`augment` must be None or a function \(key, images\)"),
    ],
)
def test_recipe_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        train.make_train_step(LINEAR, optax.sgd(0.1), **kwargs)


# ---------------------------------------------------------------------------------------------
# fit: exact resume with augmentation, and the recipe in the run's identity.


def _interrupt(row):
    raise KeyboardInterrupt


def test_fit_with_augmentation_resumes_bit_for_bit(digits, tmp_path):
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, 2 * (N_TRAIN // BATCH)))
    kw = dict(epochs=2, batch_size=BATCH, seed=1, progress=False, augment=FLIP_CROP, label_smoothing=0.1)
    straight = train.fit(LINEAR, opt, digits, out_dir=tmp_path / "a", **kw)
    plain = train.fit(LINEAR, opt, digits, epochs=2, batch_size=BATCH, seed=1, progress=False)
    assert not tree_equal(straight.state.params, plain.state.params)  # the recipe did something
    with pytest.raises(KeyboardInterrupt):
        train.fit(LINEAR, opt, digits, out_dir=tmp_path / "b", on_epoch_end=_interrupt, **kw)
    resumed = train.fit(LINEAR, opt, digits, out_dir=tmp_path / "b", resume=True, **kw)
    assert tree_equal(resumed.state, straight.state)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    # The recipe is part of the run: another augmentation, smoothing or dtype is refused by name.
    with pytest.raises(train.RunMismatchError) as info:
        train.fit(LINEAR, opt, digits, out_dir=tmp_path / "b", resume=True,
                  **{**kw, "augment": augment.random_flip, "label_smoothing": 0.0})  # fmt: skip
    assert info.value.differences == {
        "augment": ("compose(random_crop(padding=1), random_flip)", "random_flip"),
        "label_smoothing": (0.1, None),
    }
    with pytest.raises(train.RunMismatchError, match="`compute_dtype` None"):
        train.fit(LINEAR, opt, digits, out_dir=tmp_path / "b", resume=True, compute_dtype="bfloat16", **kw)


def test_fit_mixed_precision_learns(digits):
    result = train.fit(CONV_BN, optax.adam(1e-2), digits, epochs=3, batch_size=BATCH, progress=False,
                       compute_dtype="bfloat16")  # fmt: skip
    assert result.history[-1]["test_accuracy"] > 0.8
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(result.state.params))


# ---------------------------------------------------------------------------------------------
# train.py's flags.


def test_cli_recipe_flags(train_script):
    args = train_script.parse_args(["--augment", "crop:2,flip,cutout", "--label-smoothing", "0.1",
                              "--compute-dtype", "bfloat16", "--model", "small_vgg"])  # fmt: skip
    assert args.augment == [("crop", 2), ("flip", None), ("cutout", 8)]
    fn = train_script.build_augment(args.augment)
    assert augment.describe(fn) == "compose(random_crop(padding=2), random_flip, cutout(size=8))"
    x = jnp.ones((4, 8, 8, 1))
    assert fn(jax.random.key(0), x).shape == x.shape
    assert (args.label_smoothing, args.compute_dtype, args.model) == (0.1, "bfloat16", "small_vgg")
    assert train_script.build_augment(None) is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--augment", "rotate"], "unknown augmentation 'rotate'; choose from crop, flip, cutout"),
        (["--augment", "flip:2"], "flip takes no value"),
        (["--augment", "crop:x"], "crop:x: expected an integer"),
        (["--augment", "cutout:0"], "cutout:0: must be >= 1"),
        (["--label-smoothing", "1"], "--label-smoothing must be below 1, got 1.0"),
        (["--compute-dtype", "float16"], "invalid choice: 'float16'"),
    ],
)
def test_cli_recipe_flag_errors(train_script, argv, message, capsys):
    with pytest.raises(SystemExit):
        train_script.parse_args(argv)
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Test-time augmentation in the eval step.


def test_eval_views_average_the_probabilities(digits):
    state = train.init_state(CONV_BN, optax.sgd(0.1), 3, (8, 8, 1))
    x, y = digits.test.images[:50], digits.test.labels[:50]
    plain = train.evaluate(train.make_eval_step(CONV_BN), state, x, y)
    one = train.evaluate(train.make_eval_step(CONV_BN, views=[lambda a: a]), state, x, y)
    np.testing.assert_allclose(one["loss"], plain["loss"], rtol=1e-5)
    assert one["accuracy"] == plain["accuracy"]
    both = train.evaluate(
        train.make_eval_step(CONV_BN, views=(lambda a: a, augment.flip_horizontal)), state, x, y
    )
    apply = batched(CONV_BN).apply
    probs = [jax.nn.softmax(apply(state.params, state.model_state, v)[0]) for v in (x, x[:, :, ::-1, :])]
    mean = (probs[0] + probs[1]) / 2
    np.testing.assert_allclose(both["loss"], float(-jnp.mean(jnp.log(mean[jnp.arange(50), y]))), rtol=1e-5)
    assert round(both["accuracy"] * 50) == int(jnp.sum(jnp.argmax(mean, -1) == y))
    with pytest.raises(TypeError, match="`views` must be None or a non-empty sequence"):
        train.make_eval_step(CONV_BN, views=())
    with pytest.raises(TypeError, match="`views` must be None or a non-empty sequence"):
        train.make_eval_step(CONV_BN, views=["flip"])


def test_cli_tta_flag(train_script):
    assert train_script.parse_args(["--tta", "flip"]).tta == "flip"
    assert train_script.parse_args([]).tta is None
