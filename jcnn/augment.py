"""On-device data augmentation of image batches: pure, jit-able ``(key, images) -> images`` functions.

Every augmentation takes a PRNG key and a batch ``(n, h, w, c)`` (channels last, any dtype) and
returns a batch of the same shape and dtype, drawing one independent choice per image from the
key. Nothing leaves the device and no Python ``if`` looks at array values, so the functions run
inside a jitted train step; keyed by the step's key (e.g. ``jax.random.fold_in(key, step)``),
a resumed run repeats exactly the augmentations of an uninterrupted one.

``compose(random_crop, random_flip, cutout)`` chains them; ``functools.partial`` sets their
options (``partial(random_crop, padding=2)``). The deterministic pieces (`flip_horizontal`,
`translate`) are public too, for tests and test-time augmentation.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jcnn.checks import as_int
from jcnn.shapes import ShapeError

__all__ = [
    "Augment",
    "flip_horizontal",
    "translate",
    "random_flip",
    "random_crop",
    "cutout",
    "compose",
    "describe",
]

#: ``(key, images) -> images`` on ``(n, h, w, c)``.
Augment = Callable[[jax.Array, jax.Array], jax.Array]


def _images(images, where: str) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ShapeError(
            f"{where}: `images` must be a batch (n, h, w, c), got shape {tuple(images.shape)}; for"
            f" one image use images[None]."
        )
    return images


def _per_image(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """``a`` where ``mask`` (one bool per image), else ``b``."""
    return jnp.where(mask[:, None, None, None], a, b)


def flip_horizontal(images: jax.Array) -> jax.Array:
    """Mirror every image left-right (the width axis).

    Args:
      images: ``(n, h, w, c)``.

    Returns:
      ``(n, h, w, c)``, same dtype.

    >>> import jax.numpy as jnp
    >>> flip_horizontal(jnp.arange(3.0).reshape(1, 1, 3, 1))[0, 0, :, 0].tolist()
    [2.0, 1.0, 0.0]
    """
    return _images(images, "flip_horizontal")[:, :, ::-1, :]


def translate(images: jax.Array, shifts: jax.Array) -> jax.Array:
    """Shift each image by whole pixels, filling the uncovered border with zeros.

    ``out[i, y, x] = images[i, y - dy_i, x - dx_i]`` where that pixel exists, else 0: a
    positive ``dy`` moves the content down, a positive ``dx`` right. Shifting by ``p - oy`` is
    the same as zero-padding by ``p`` and cropping ``h x w`` at offset ``oy``.

    Args:
      images: ``(n, h, w, c)``.
      shifts: ``(n, 2)`` integers ``(dy, dx)`` per image (traced values are fine).

    Returns:
      ``(n, h, w, c)``, same dtype.

    Raises:
      ShapeError: ``shifts`` is not ``(n, 2)``.
      TypeError: ``shifts`` is not an integer array.

    >>> import jax.numpy as jnp
    >>> x = jnp.arange(1.0, 4.0).reshape(1, 1, 3, 1)
    >>> translate(x, jnp.array([[0, 1]]))[0, 0, :, 0].tolist()
    [0.0, 1.0, 2.0]
    """
    where = "translate"
    images = _images(images, where)
    shifts = jnp.asarray(shifts)
    n, h, w, _ = images.shape
    if shifts.shape != (n, 2):
        raise ShapeError(f"{where}: `shifts` must have shape (n, 2) = ({n}, 2), got {tuple(shifts.shape)}.")
    if not jnp.issubdtype(shifts.dtype, jnp.integer):
        raise TypeError(f"{where}: `shifts` must be integers (whole pixels), got dtype {shifts.dtype}.")
    return _translate(images, shifts)


# The public functions check their arguments, then call one compiled computation: an eager call
# is then one dispatch instead of a dozen separately compiled primitives.
@jax.jit
def _translate(images, shifts):
    _, h, w, _ = images.shape

    def one(image, shift):
        dy, dx = shift[0], shift[1]
        moved = jnp.roll(image, (dy, dx), axis=(0, 1))
        # roll wraps around; the rows and columns that came from the other side become zeros.
        rows = jnp.arange(h) - dy
        cols = jnp.arange(w) - dx
        keep = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        return jnp.where(keep[:, :, None], moved, jnp.zeros((), image.dtype))

    return jax.vmap(one)(images, shifts)


def random_flip(key: jax.Array, images: jax.Array, *, prob: float = 0.5) -> jax.Array:
    """Mirror each image left-right with probability ``prob``, independently.

    Args:
      key: a PRNG key.
      images: ``(n, h, w, c)``.
      prob: the probability of flipping one image, in ``[0, 1]``.

    Returns:
      ``(n, h, w, c)``, same dtype.

    >>> import jax, jax.numpy as jnp
    >>> x = jnp.arange(2.0).reshape(1, 1, 2, 1)
    >>> random_flip(jax.random.key(0), x, prob=1.0)[0, 0, :, 0].tolist()
    [1.0, 0.0]
    """
    where = "random_flip"
    images = _images(images, where)
    if isinstance(prob, bool) or not isinstance(prob, numbers.Real) or not 0 <= prob <= 1:
        raise ValueError(f"{where}: `prob` must be a number in [0, 1], got {prob!r}.")
    return _random_flip(key, images, float(prob))


@functools.partial(jax.jit, static_argnums=2)
def _random_flip(key, images, prob):
    flip = jax.random.bernoulli(key, prob, (images.shape[0],))
    return _per_image(flip, images[:, :, ::-1, :], images)


def random_crop(key: jax.Array, images: jax.Array, *, padding: int = 4) -> jax.Array:
    """Zero-pad each image by ``padding`` on every side and crop back to ``h x w`` at random.

    The standard CIFAR augmentation (He et al. 2016: pad 4, random 32x32 crop). The crop offset
    is uniform over the ``(2 * padding + 1)^2`` positions, independently per image; done as a
    `translate` by ``(dy, dx)`` uniform in ``[-padding, padding]``, without materialising the
    padded batch.

    Args:
      key: a PRNG key.
      images: ``(n, h, w, c)``.
      padding: pixels of zeros on each side, ``>= 0`` (0 returns the images unchanged).

    Returns:
      ``(n, h, w, c)``, same dtype.

    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones((2, 8, 8, 3))
    >>> y = random_crop(jax.random.key(0), x, padding=2)
    >>> y.shape, bool((y.sum((1, 2, 3)) >= 6 * 6 * 3).all())
    ((2, 8, 8, 3), True)
    """
    where = "random_crop"
    images = _images(images, where)
    padding = as_int(padding, where, "padding", minimum=0)
    return _random_crop(key, images, padding)


@functools.partial(jax.jit, static_argnums=2)
def _random_crop(key, images, padding):
    shifts = jax.random.randint(key, (images.shape[0], 2), -padding, padding + 1)
    return _translate(images, shifts)


def cutout(key: jax.Array, images: jax.Array, *, size: int = 8) -> jax.Array:
    """Zero a ``size x size`` square at a random place in each image (DeVries and Taylor 2017).

    The square's centre is uniform over the image's pixels and the square is clipped at the
    border, as in the paper (so near an edge fewer than ``size^2`` pixels are erased). The
    square spans rows ``[cy - size // 2, cy - size // 2 + size)``, likewise for columns.

    Args:
      key: a PRNG key.
      images: ``(n, h, w, c)``.
      size: the square's side in pixels, ``>= 1`` (16 for CIFAR-10 in the paper).

    Returns:
      ``(n, h, w, c)``, same dtype.

    >>> import jax, jax.numpy as jnp
    >>> y = cutout(jax.random.key(0), jnp.ones((1, 32, 32, 1)), size=8)
    >>> 16 <= int((y == 0).sum()) <= 64
    True
    """
    where = "cutout"
    images = _images(images, where)
    size = as_int(size, where, "size", minimum=1)
    return _cutout(key, images, size)


@functools.partial(jax.jit, static_argnums=2)
def _cutout(key, images, size):
    n, h, w, _ = images.shape
    ky, kx = jax.random.split(key)
    top = jax.random.randint(ky, (n,), 0, h) - size // 2
    left = jax.random.randint(kx, (n,), 0, w) - size // 2
    rows = jnp.arange(h)[None, :] - top[:, None]  # (n, h): row index inside the square
    cols = jnp.arange(w)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    return jnp.where(inside[:, :, :, None], jnp.zeros((), images.dtype), images)


def compose(*augments: Augment) -> Augment:
    """Apply augmentations in order, each with its own key split from the one given.

    ``compose(a, b)(key, x) == b(k2, a(k1, x))`` with ``k1, k2 = jax.random.split(key)``.

    Args:
      *augments: ``(key, images) -> images`` functions (use ``functools.partial`` for options).

    Returns:
      An ``(key, images) -> images`` function.

    Raises:
      TypeError: an argument is not callable.

    >>> import functools, jax, jax.numpy as jnp
    >>> augment = compose(functools.partial(random_crop, padding=4), random_flip)
    >>> augment(jax.random.key(0), jnp.zeros((8, 32, 32, 3))).shape
    (8, 32, 32, 3)
    """
    for i, fn in enumerate(augments):
        if not callable(fn):
            raise TypeError(f"compose: argument {i} must be a callable (key, images) -> images, got {fn!r}.")

    def augment(key: jax.Array, images: jax.Array) -> jax.Array:
        if not augments:
            return images
        for k, fn in zip(jax.random.split(key, len(augments)), augments):
            images = fn(k, images)
        return images

    augment.description = f"compose({', '.join(describe(fn) for fn in augments)})"
    return augment


def describe(augment: Augment) -> str:
    """A stable text name of an augmentation, for a run's identity and logs.

    ``functools.partial`` shows its options, `compose` its parts; any other function its
    qualified name (no memory addresses, so the same pipeline reads the same in every process
    and every run).

    >>> import functools
    >>> describe(compose(functools.partial(random_crop, padding=2), random_flip))
    'compose(random_crop(padding=2), random_flip)'
    """
    if isinstance(augment, functools.partial):
        args = [describe(a) if callable(a) else repr(a) for a in augment.args]
        args += [f"{k}={v!r}" for k, v in augment.keywords.items()]
        return f"{describe(augment.func)}({', '.join(args)})"
    text = getattr(augment, "description", None)
    if isinstance(text, str):
        return text
    return getattr(augment, "__qualname__", None) or type(augment).__qualname__
