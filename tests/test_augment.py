"""Tests for jcnn.augment: deterministic per key, shapes and dtypes kept, the laws (flip twice,
zero shift), a numpy reference for translations and crops, statistics, jit == eager, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn import augment
from jcnn.shapes import ShapeError

KEY = jax.random.key(0)


def batch(n=6, h=9, w=7, c=2, dtype=jnp.float32, seed=0):
    x = np.random.default_rng(seed).uniform(1, 255, (n, h, w, c))  # no zeros: erased pixels show
    return jnp.asarray(x.astype(np.dtype(dtype)) if dtype != jnp.bfloat16 else x, dtype)


AUGMENTS = {
    "random_flip": augment.random_flip,
    "random_crop": augment.random_crop,
    "cutout": functools.partial(augment.cutout, size=4),
    "compose": augment.compose(
        augment.random_crop, augment.random_flip, functools.partial(augment.cutout, size=4)
    ),
}


def np_translate(x, dy, dx):
    """Reference: zero-pad by the shift's size and crop, in numpy."""
    p = max(abs(dy), abs(dx), 1)
    padded = np.pad(x, ((p, p), (p, p), (0, 0)))
    h, w = x.shape[:2]
    return padded[p - dy : p - dy + h, p - dx : p - dx + w]


CASES = [(name, jnp.float32) for name in sorted(AUGMENTS)] + [
    ("compose", jnp.uint8),
    ("compose", jnp.bfloat16),
]


@pytest.mark.parametrize("name, dtype", CASES, ids=[f"{n}-{jnp.dtype(d).name}" for n, d in CASES])
def test_shape_dtype_and_determinism(name, dtype):
    fn = AUGMENTS[name]
    x = batch(n=16, dtype=dtype)
    y = fn(KEY, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(fn(KEY, x), y)  # same key, same images
    others = [fn(jax.random.key(s), x) for s in range(1, 4)]
    assert any(not np.array_equal(o, y) for o in others)  # other keys, other choices


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_jit_equals_eager(name):
    fn = AUGMENTS[name]
    x = batch()
    np.testing.assert_array_equal(jax.jit(fn)(KEY, x), fn(KEY, x))


def test_no_host_round_trip_under_jit():
    # Traced keys and images go through: a Python `if` on values or a host copy would fail here.
    fn = jax.jit(lambda seed, x: AUGMENTS["compose"](jax.random.key(seed), x))
    assert fn(3, batch()).shape == batch().shape


def test_flip_twice_is_identity_and_matches_numpy():
    x = batch()
    np.testing.assert_array_equal(augment.flip_horizontal(augment.flip_horizontal(x)), x)
    np.testing.assert_array_equal(augment.flip_horizontal(x), np.flip(np.asarray(x), axis=2))
    np.testing.assert_array_equal(augment.random_flip(KEY, x, prob=1.0), augment.flip_horizontal(x))
    np.testing.assert_array_equal(augment.random_flip(KEY, x, prob=0.0), x)


def test_about_half_flipped():
    x = batch(n=400, h=3, w=4, c=1)
    y = augment.random_flip(KEY, x)
    flipped = np.all(np.asarray(y) == np.flip(np.asarray(x), axis=2), axis=(1, 2, 3))
    kept = np.all(np.asarray(y) == np.asarray(x), axis=(1, 2, 3))
    assert np.all(flipped ^ kept)  # each image is one or the other (random images are not symmetric)
    assert 150 < flipped.sum() < 250  # Binomial(400, 0.5): mean 200, sd 10


def test_zero_shift_and_zero_padding_are_identity():
    x = batch()
    np.testing.assert_array_equal(augment.translate(x, jnp.zeros((6, 2), jnp.int32)), x)
    np.testing.assert_array_equal(augment.random_crop(KEY, x, padding=0), x)


def test_translate_matches_pad_and_crop():
    x = batch()
    shifts = np.array([[0, 1], [-2, 3], [4, -4], [-1, 0], [9, 0], [3, -8]])  # the last two leave nothing
    y = np.asarray(augment.translate(x, jnp.asarray(shifts)))
    for i, (dy, dx) in enumerate(shifts):
        np.testing.assert_array_equal(y[i], np_translate(np.asarray(x[i]), dy, dx))


def test_random_crop_is_a_pad_and_crop_with_uniform_offsets():
    p = 2
    x = batch(n=200, h=6, w=6, c=1)
    y = np.asarray(augment.random_crop(KEY, x, padding=p))
    seen = np.zeros((2 * p + 1, 2 * p + 1), int)
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(-p, p + 1)
            for dx in range(-p, p + 1)
            if np.array_equal(y[i], np_translate(np.asarray(x[i]), dy, dx))
        ]
        assert len(matches) == 1, matches  # exactly one of the 25 crops
        seen[matches[0][0] + p, matches[0][1] + p] += 1
    assert seen.min() >= 1  # every offset drawn (200 draws over 25 cells, 8 expected per cell)


def test_cutout_erases_one_clipped_square():
    size = 4
    x = batch(n=64, h=10, w=10, c=3)
    y = np.asarray(augment.cutout(KEY, x, size=size))
    zero = np.all(y == 0, axis=-1)
    assert np.all(y[~zero] == np.asarray(x)[~zero])  # nothing else changed
    full = 0
    for m in zero:
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        assert 1 <= len(rows) <= size and 1 <= len(cols) <= size
        assert m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all() and m.sum() == len(rows) * len(cols)
        assert len(rows) >= size // 2 and len(cols) >= size // 2  # the centre is inside the image
        full += m.sum() == size * size
    assert 10 < full < 64  # most squares inside, some clipped at the border


def test_compose_splits_the_key_in_order():
    x = batch()
    a = functools.partial(augment.random_crop, padding=2)
    b = augment.random_flip
    k1, k2 = jax.random.split(KEY)
    np.testing.assert_array_equal(augment.compose(a, b)(KEY, x), b(k2, a(k1, x)))
    np.testing.assert_array_equal(augment.compose()(KEY, x), x)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: augment.random_flip(KEY, jnp.zeros((8, 8, 3))),
            ShapeError,
            r"`images` must be a batch \(n, h, w, c\), got shape \(8, 8, 3\)",
        ),
        (
            lambda: augment.random_flip(KEY, batch(), prob=1.5),
            ValueError,
            r"`prob` must be a number in \[0, 1\], got 1.5",
        ),
        (
            lambda: augment.random_crop(KEY, batch(), padding=-1),
            ValueError,
            r"random_crop: `padding` must be >= 0, got -1",
        ),
        (lambda: augment.random_crop(KEY, batch(), padding=2.0), TypeError, r"`padding` must be an int"),
        (
            lambda: augment.cutout(KEY, batch(), size=0),
            ValueError,
            r"cutout: `size` must be >= 1, got 0",
        ),
        (
            lambda: augment.translate(batch(), jnp.zeros((6, 3), jnp.int32)),
            ShapeError,
            r"`shifts` must have shape \(n, 2\) = \(6, 2\)",
        ),
        (lambda: augment.translate(batch(), jnp.zeros((6, 2))), TypeError, r"`shifts` must be integers"),
        (
            lambda: augment.compose(augment.random_flip, 3),
            TypeError,
            r"compose: argument 1 must be a callable",
        ),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
