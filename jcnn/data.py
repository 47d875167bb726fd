"""Datasets and batching for jcnn: the loaders (digits, Fashion-MNIST, MNIST, CIFAR-10), the IDX
reader, and a seeded, resumable batch iterator.

NumPy only; nothing here imports jax. Every loader returns a :class:`Dataset` whose images are
``(n, h, w, c)`` float32 in ``[0, 1]``, channels last, and whose labels are ``(n,)`` int32.
Layout changes (CIFAR's channel-first rows) happen here, once, at load time, so no op or layer
ever shuffles axes.

Where the files are looked for:

* ``load_digits()`` needs no files: scikit-learn ships the 8x8 digits.
* ``load_fashion_mnist(path=None)`` reads ``path``, else ``$JCNN_DATA_DIR``, else
  ``/usr/share/datasets/fashion-mnist`` (what Debian's ``dataset-fashion-mnist`` installs).
* ``load_mnist(path)`` and ``load_cifar10(path)`` read ``path``.

One rule for every folder given (``path=`` or ``$JCNN_DATA_DIR``): if it holds the dataset's
own subfolder (``fashion-mnist/``, ``mnist/``, ``cifar-10-batches-py/``), that subfolder is read;
otherwise the files are read from the folder itself. So ``JCNN_DATA_DIR=~/data`` with
``~/data/fashion-mnist/*.gz`` works, and so does ``JCNN_DATA_DIR=~/data/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np

from jcnn.checks import as_int

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "Split",
    "Dataset",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_cifar10",
    "read_idx",
    "batches",
    "num_batches",
    "epoch_order",
    "check_split",
    "NpyShards",
    "rows_of",
    "row_chunks",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the four IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_DIGIT_CLASSES = tuple(str(i) for i in range(10))


class Split(NamedTuple):
    """One split of a dataset; unpacks as ``images, labels = split``.

    Attributes:
        images: ``(n, h, w, c)`` float32 in ``[0, 1]``, channels last.
        labels: ``(n,)`` int32 in ``[0, num_classes)``.
    """

    images: np.ndarray
    labels: np.ndarray


class Dataset(NamedTuple):
    """A dataset as loaded: train and test splits plus what a model needs to know about them.

    Attributes:
        train: the training :class:`Split`.
        test: the test :class:`Split`.
        num_classes: number of classes; labels lie in ``[0, num_classes)``.
        class_names: one name per class, indexed by label.
        name: the dataset's name, e.g. ``"fashion-mnist"``.
    """

    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    name: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one image, ``(h, w, c)``: the ``input_shape`` a layer's ``init`` takes."""
        return tuple(int(d) for d in self.train.images.shape[1:])


def _to_unit_float(pixels: np.ndarray, scale: float) -> np.ndarray:
    """``pixels / scale`` as C-contiguous float32, in one allocation (exact at 0 and ``scale``)."""
    return np.divide(pixels, np.float32(scale), dtype=np.float32, order="C")


def _dataset_dir(root: PathLike, subdir: str) -> Path:
    """The module docstring's rule: ``root/subdir`` if that is a folder, else ``root``."""
    root = Path(root).expanduser()
    return root / subdir if (root / subdir).is_dir() else root


def _check_labels(where: str, file: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: labels in {file} must lie in [0, {num_classes}), "
            f"got values from {labels.min()} to {labels.max()}."
        )


# ---------------------------------------------------------------------------------------------
# scikit-learn digits.


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Scikit-learn's bundled 8x8 handwritten digits (1797 images), split train/test by class.

    The zero-set-up default dataset: nothing to download. Pixel values (0..16 in scikit-learn)
    are divided by 16. The split is stratified: the test split gets ``round(n * test_fraction)``
    examples, shared out between the classes by largest remainder, so every class's count in
    each split is within one example of its exact share. Which examples go where, and the order
    of each split, depend only on ``seed``.

    Args:
        test_fraction: fraction of the examples held out for testing, in ``(0, 1)``.
        seed: non-negative integer seed of the split.

    Returns:
        A :class:`Dataset`: images ``(n, 8, 8, 1)`` float32 in ``[0, 1]``, labels ``(n,)`` int32
        in ``[0, 10)``; 1438 train and 359 test examples at the default ``test_fraction``.

    Raises:
        ValueError: if ``test_fraction`` is not in ``(0, 1)`` or leaves a split empty.
        ImportError: if scikit-learn is not installed.

    >>> ds = load_digits()
    >>> ds.train.images.shape, ds.test.images.shape, ds.train.images.dtype
    ((1438, 8, 8, 1), (359, 8, 8, 1), dtype('float32'))
    >>> ds.image_shape, ds.num_classes
    ((8, 8, 1), 10)
    """
    where = "load_digits"
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)):
        raise TypeError(f"{where}: `test_fraction` must be a number in (0, 1), got {test_fraction!r}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{where}: `test_fraction` must lie strictly between 0 and 1, got {test_fraction}.")
    seed = as_int(seed, where, "seed", minimum=0)
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is in the experiments extra
        raise ImportError(
            f"{where}: needs scikit-learn; install it with `pip install 'jcnn[experiments]'`."
        ) from e

    raw = _sk_load_digits()
    images = _to_unit_float(raw.images, 16.0)[..., None]  # (n, 8, 8, 1)
    labels = raw.target.astype(np.int32)
    n = labels.shape[0]
    n_test = round(n * test_fraction)
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"{where}: `test_fraction`={test_fraction} gives {n_test} test examples out of {n}; "
            f"both splits need at least one."
        )
    train_idx, test_idx = _stratified_split(labels, n_test, np.random.default_rng(seed))
    return Dataset(
        train=Split(images[train_idx], labels[train_idx]),
        test=Split(images[test_idx], labels[test_idx]),
        num_classes=10,
        class_names=_DIGIT_CLASSES,
        name="digits",
    )


def _stratified_split(
    labels: np.ndarray, n_test: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``, each in shuffled order, with ``n_test`` test indices.

    Each class's test count is its exact share ``n_c * n_test / n`` rounded by largest remainder
    (Hamilton's method), so it is within one of the share and the total is exactly ``n_test``.
    """
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n_test / labels.shape[0]
    per_class = np.floor(share).astype(np.int64)
    leftover = n_test - int(per_class.sum())
    per_class[np.argsort(-(share - per_class), kind="stable")[:leftover]] += 1
    train, test = [], []
    for c, k in zip(classes, per_class):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST).

# IDX type codes (third magic byte); multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_TYPE_NAMES = "0x08 (ubyte), 0x09 (byte), 0x0B (short), 0x0C (int), 0x0D (float), 0x0E (double)"
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22


def read_idx(file: PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not, into a NumPy array.

    The format: two zero bytes, a type code (``0x08`` unsigned byte, ... ``0x0E`` double), the
    number of dimensions ``d``, then ``d`` big-endian uint32 sizes, then the values, row-major,
    big-endian. The file is gzip-decompressed when it starts with gzip's magic bytes.

    Args:
        file: path of the IDX file (``.gz`` or uncompressed).

    Returns:
        A writable array of the header's shape, in the header's type (native byte order):
        ``uint8`` for MNIST images ``(n, 28, 28)`` and labels ``(n,)``.

    Raises:
        FileNotFoundError: if ``file`` does not exist.
        ValueError: naming the file, if it is not valid gzip, has a bad magic number or type
            code, a truncated header, or a payload longer or shorter than the header says.

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     f = pathlib.Path(folder) / "tiny-idx2-ubyte"  # ubyte, 2 dims: 2 x 3
    ...     _ = f.write_bytes(bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    ...     read_idx(f)
    array([[1, 2, 3],
           [4, 5, 6]], dtype=uint8)
    """
    file = Path(file)
    with open(file, "rb") as raw:
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not is_gzip:
            if file.suffix == ".gz":
                raise ValueError(
                    f"read_idx: {file} is named .gz but is not gzip data "
                    f"(a gzip file starts with bytes 1f 8b); re-download it."
                )
            return _parse_idx(file, raw)
        try:
            with gzip.GzipFile(fileobj=raw) as f:
                return _parse_idx(file, f)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise ValueError(f"read_idx: {file} is not valid gzip data ({e}); re-download it.") from e


def _read_upto(f, n: int) -> bytearray:
    """Up to ``n`` bytes from ``f``, fewer only at end of file; never allocates more than read."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _parse_idx(file: Path, f) -> np.ndarray:
    where = f"read_idx: {file}"
    head = _read_upto(f, 4)
    if len(head) < 4:
        raise ValueError(
            f"{where}: expected a 4-byte IDX magic number, but the file has only {len(head)} bytes."
        )
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{where}: bad IDX magic number 0x{bytes(head).hex()}; expected 0x0000, a type code "
            f"({_IDX_TYPE_NAMES}) and the number of dimensions. Is this an IDX file?"
        )
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    if ndim == 0:
        raise ValueError(f"{where}: the IDX header says 0 dimensions; expected at least 1.")
    dims_raw = _read_upto(f, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise ValueError(
            f"{where}: the IDX header is truncated: expected {4 * ndim} bytes of sizes for "
            f"{ndim} dimensions, found {len(dims_raw)}."
        )
    shape = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
    expected = math.prod(shape) * dtype.itemsize
    payload = _read_upto(f, expected)
    found = len(payload)
    extra = len(_read_upto(f, 1))
    while extra and (chunk := f.read(_CHUNK)):
        extra += len(chunk)
    if found != expected or extra:
        raise ValueError(
            f"{where}: expected {expected} bytes of {dtype.name} data after the header "
            f"(shape {shape}), found {found + extra}; the file is truncated or not what it claims."
        )
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


# File stems of the four IDX files. Besides the official names, each may end in .gz, and
# `train-images.idx3-ubyte` (a dot for the second dash, as some MNIST mirrors name them) is found too.
_IDX_STEMS = {
    "train images": "train-images-idx3-ubyte",
    "train labels": "train-labels-idx1-ubyte",
    "test images": "t10k-images-idx3-ubyte",
    "test labels": "t10k-labels-idx1-ubyte",
}


def _find_idx(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_dataset(
    where: str, folder: Path, origin: str, how_to_get: str, name: str, class_names: tuple[str, ...]
) -> Dataset:
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: {origin}folder {folder} does not exist. {how_to_get}")
    files = {key: _find_idx(folder, stem) for key, stem in _IDX_STEMS.items()}
    missing = [_IDX_STEMS[key] + "[.gz]" for key, file in files.items() if file is None]
    if missing:
        raise FileNotFoundError(f"{where}: {origin}folder {folder} lacks {', '.join(missing)}. {how_to_get}")
    splits = {}
    for split in ("train", "test"):
        image_file, label_file = files[f"{split} images"], files[f"{split} labels"]
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(
                f"{where}: expected {image_file} to hold uint8 images of shape (n, 28, 28), "
                f"got {images.dtype} of shape {images.shape}."
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(
                f"{where}: expected {label_file} to hold uint8 labels of shape (n,), "
                f"got {labels.dtype} of shape {labels.shape}."
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{where}: {image_file} has {images.shape[0]} images but {label_file} has "
                f"{labels.shape[0]} labels; the two files must come from the same release."
            )
        _check_labels(where, label_file, labels, len(class_names))
        splits[split] = Split(_to_unit_float(images, 255.0)[..., None], labels.astype(np.int32))
    return Dataset(splits["train"], splits["test"], len(class_names), class_names, name)


def load_fashion_mnist(path: PathLike | None = None) -> Dataset:
    """Zalando's Fashion-MNIST: 28x28 grey clothing images in 10 classes, official split.

    The four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped ``.gz`` or not) are
    read from the first of:

    1. ``path``, when given;
    2. ``$JCNN_DATA_DIR``, when set and non-empty;
    3. ``/usr/share/datasets/fashion-mnist``, where ``apt-get install dataset-fashion-mnist``
       puts them (Debian, Ubuntu).

    A folder from 1 or 2 that holds a ``fashion-mnist/`` subfolder is read through it; see the
    module docstring. A folder that does not have the files is an error, never a silent
    fall-through to the next choice. Loading takes about a second (mostly gunzip).

    Args:
        path: folder holding the four IDX files, or its parent holding ``fashion-mnist/``.

    Returns:
        A :class:`Dataset` named ``"fashion-mnist"``: images ``(n, 28, 28, 1)`` float32 in
        ``[0, 1]``, labels ``(n,)`` int32 in ``[0, 10)``; 60000 train and 10000 test examples,
        6000 and 1000 per class. ``class_names`` runs ``"T-shirt/top"`` ... ``"Ankle boot"``.

    Raises:
        FileNotFoundError: naming the folder searched, if it or any of the files is missing,
            with how to get them.
        ValueError: naming the file, if a file is corrupt, truncated or of the wrong shape, or
            images and labels counts disagree.

    >>> ds = load_fashion_mnist()  # doctest: +SKIP
    >>> ds.train.images.shape, ds.test.labels.shape, ds.class_names[9]  # doctest: +SKIP
    ((60000, 28, 28, 1), (10000,), 'Ankle boot')
    """
    if path is not None:
        root, origin = path, "`path` "
    elif os.environ.get("JCNN_DATA_DIR", "").strip():
        root, origin = os.environ["JCNN_DATA_DIR"].strip(), "$JCNN_DATA_DIR "
    else:
        root, origin = FASHION_MNIST_DIR, "the default "
    folder = _dataset_dir(root, "fashion-mnist")
    how_to_get = (
        f"Install the files with `apt-get install dataset-fashion-mnist` (they go to "
        f"{FASHION_MNIST_DIR}), or pass `path=` or set JCNN_DATA_DIR to a folder holding "
        f"the four IDX files (or to its parent, holding fashion-mnist/)."
    )
    return _load_idx_dataset(
        "load_fashion_mnist", folder, origin, how_to_get, "fashion-mnist", FASHION_MNIST_CLASSES
    )


def load_mnist(path: PathLike) -> Dataset:
    """LeCun's MNIST handwritten digits from the four IDX files in ``path``.

    MNIST is not packaged by Debian; download the four files into a folder and pass it. The
    files are the same as Fashion-MNIST's (``train-images-idx3-ubyte``, ...,
    ``t10k-labels-idx1-ubyte``, each ``.gz`` or not; ``train-images.idx3-ubyte`` also found).
    ``path`` may also be a parent folder holding ``mnist/``.

    Args:
        path: folder holding the four IDX files, or its parent holding ``mnist/``.

    Returns:
        A :class:`Dataset` named ``"mnist"``: images ``(n, 28, 28, 1)`` float32 in ``[0, 1]``,
        labels ``(n,)`` int32 in ``[0, 10)``; 60000 train and 10000 test examples.

    Raises:
        FileNotFoundError: naming the folder, if it or any of the four files is missing.
        ValueError: naming the file, if a file is corrupt, truncated or of the wrong shape, or
            images and labels counts disagree.

    >>> ds = load_mnist("~/data/mnist")  # doctest: +SKIP
    >>> ds.train.images.shape  # doctest: +SKIP
    (60000, 28, 28, 1)
    """
    how_to_get = (
        "Download MNIST's train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from a mirror of "
        "yann.lecun.com/exdb/mnist) into that folder, or into an mnist/ subfolder of it."
    )
    folder = _dataset_dir(path, "mnist")
    return _load_idx_dataset("load_mnist", folder, "", how_to_get, "mnist", _DIGIT_CLASSES)


# ---------------------------------------------------------------------------------------------
# CIFAR-10, python version.

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
# Everything a CIFAR batch pickle (Python 2 cPickle or Python 3, any numpy) refers to. A pickle
# can run any callable it names, so nothing else is loaded.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and NumPy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data (m, 3072) uint8, labels (m,) int64)`` from one CIFAR-10 batch pickle."""
    where = f"load_cifar10: {file}"
    try:
        with open(file, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{where}: not a readable CIFAR-10 batch pickle ({e}).") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(batch).__name__}.")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise ValueError(
            f"{where}: the batch dict lacks the key(s) {', '.join(missing)}; "
            f"it has {sorted(map(str, batch))}."
        )
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{where}: expected `data` to be uint8 of shape (m, 3072), got {got}.")
    labels = np.asarray(batch["labels"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"{where}: expected {data.shape[0]} integer `labels`, one per row of `data`, "
            f"got {labels.dtype} of shape {labels.shape}."
        )
    _check_labels("load_cifar10", file, labels, 10)
    return data, labels


def load_cifar10(path: PathLike) -> Dataset:
    """CIFAR-10 (32x32 colour images, 10 classes) from the python-pickle batches in ``path``.

    Reads ``data_batch_1`` ... ``data_batch_5`` (train, in that order) and ``test_batch`` from
    ``path/cifar-10-batches-py/`` when that folder exists, else from ``path`` itself. Each row
    of a batch is stored channel-first (1024 red, then green, then blue, each row-major); they
    are moved to channels last here, at load time. The pickles are read with an unpickler that
    accepts only plain containers and NumPy arrays, so a tampered file cannot run code.

    Args:
        path: folder holding the batch files, or its parent holding ``cifar-10-batches-py/``.

    Returns:
        A :class:`Dataset` named ``"cifar10"``: images ``(n, 32, 32, 3)`` float32 in
        ``[0, 1]`` (RGB in the last axis), labels ``(n,)`` int32 in ``[0, 10)``; 50000 train
        and 10000 test examples. ``class_names`` runs ``"airplane"`` ... ``"truck"``.

    Raises:
        FileNotFoundError: naming the folder, if it or any batch file is missing.
        ValueError: naming the file, if a batch is not a readable pickle, lacks the ``data`` or
            ``labels`` key, or has the wrong shape.

    >>> ds = load_cifar10("~/data")  # doctest: +SKIP
    >>> ds.train.images.shape, ds.class_names[0]  # doctest: +SKIP
    ((50000, 32, 32, 3), 'airplane')
    """
    where = "load_cifar10"
    folder = _dataset_dir(path, "cifar-10-batches-py")
    how_to_get = (
        "Download the CIFAR-10 python version, cifar-10-python.tar.gz, from "
        "https://www.cs.toronto.edu/~kriz/cifar.html and extract it there (`tar xzf` makes "
        "cifar-10-batches-py/), or pass the cifar-10-batches-py folder itself."
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: folder {folder} does not exist. {how_to_get}")
    missing = [name for name in (*_CIFAR_TRAIN, _CIFAR_TEST) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{where}: folder {folder} lacks {', '.join(missing)}. {how_to_get}")

    def split(names: tuple[str, ...]) -> Split:
        parts = [_read_cifar_batch(folder / name) for name in names]
        data = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
        # (m, 3072) rows are (c, h, w) row-major: make them (m, h, w, c) once, here.
        images = _to_unit_float(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), 255.0)
        return Split(images, labels)

    return Dataset(split(_CIFAR_TRAIN), split((_CIFAR_TEST,)), 10, CIFAR10_CLASSES, "cifar10")


# ---------------------------------------------------------------------------------------------
# Sources larger than memory (issue 12): read only the rows asked for.


class NpyShards:
    """Rows stored as a sequence of ``.npy`` shards, memory-mapped, indexed as one array.

    What `jcnn.train.fit` needs of a split's images (or labels) is ``len``, ``shape``,
    ``dtype`` and indexing by an integer array or a slice of rows, returning a NumPy array of
    just those rows; a plain array, a ``np.load(..., mmap_mode="r")`` memmap and this class all
    give that. Each shard is opened with ``np.load(path, mmap_mode="r")``, so only the rows
    indexed are read from disk: a dataset larger than memory trains without changing `fit`
    (which, with several processes, reads only each process's rows of every batch).

    Args:
        paths: the shards' ``.npy`` files in order, each ``(n_i, *row_shape)`` of one dtype.

    Raises:
        ValueError: for no shards, or shards whose row shape or dtype differ.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     np.save(folder / f"part{i}.npy", np.arange(4 * i, 4 * i + 4).reshape(4, 1))
    >>> rows = NpyShards(sorted(folder.glob("*.npy")))
    >>> len(rows), rows.shape, rows[np.array([9, 0, 5])].ravel().tolist()
    (12, (12, 1), [9, 0, 5])
    """

    def __init__(self, paths):
        paths = [Path(p) for p in paths]
        if not paths:
            raise ValueError("NpyShards: `paths` must name at least one .npy file, got none.")
        self._shards = [np.load(p, mmap_mode="r") for p in paths]
        first = self._shards[0]
        for path, shard in zip(paths, self._shards):
            if shard.ndim < 1 or shard.shape[1:] != first.shape[1:] or shard.dtype != first.dtype:
                raise ValueError(
                    f"NpyShards: every shard must hold rows of shape {first.shape[1:]} and dtype "
                    f"{first.dtype} like {paths[0]}, got {shard.shape} {shard.dtype} in {path}."
                )
        self._starts = np.cumsum([0] + [len(a) for a in self._shards])
        self.paths = tuple(paths)
        self.shape = (int(self._starts[-1]), *first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise TypeError(
                f"NpyShards: index with a 1-D integer array or a slice of rows, got {index.dtype} "
                f"of shape {index.shape}."
            )
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(
                f"NpyShards: row indices must lie in [0, {len(self)}), got {index.min()}..{index.max()}."
            )
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        shard = np.searchsorted(self._starts, index, side="right") - 1
        for k in np.unique(shard):  # one fancy-indexed read per shard touched
            at = shard == k
            out[at] = self._shards[k][index[at] - self._starts[k]]
        return out

    def __repr__(self) -> str:
        return f"NpyShards({len(self.paths)} shards, shape={self.shape}, dtype={self.dtype})"


def rows_of(a):
    """``a`` as something `fit` can index by rows: arrays as NumPy arrays, lazy sources as they are.

    A NumPy memmap stays memory-mapped (``np.asarray`` reads nothing); an object with ``shape``,
    ``dtype`` and ``__getitem__`` but no ``__array__`` (e.g. `NpyShards`) is kept unread; anything
    else (lists, jax or torch arrays) becomes a NumPy array.
    """
    lazy = not hasattr(a, "__array__") and all(hasattr(a, k) for k in ("shape", "dtype", "__getitem__"))
    return a if lazy else np.asarray(a)


def row_chunks(a, rows: int = 4096):
    """``a[lo:lo + rows]`` for ``lo = 0, rows, ...``: a pass over a (lazy) array in bounded memory."""
    for lo in range(0, len(a), rows):
        yield np.asarray(a[lo : lo + rows])


# ---------------------------------------------------------------------------------------------
# Validation of a split before training (issue 11 item 4).


def check_split(
    images,
    labels,
    *,
    split: str,
    num_classes: int,
    image_shape: tuple[int, ...] | None = None,
    where: str = "check_split",
) -> tuple[np.ndarray, np.ndarray]:
    """Check one split for training: numeric finite images of one shape, integer class labels.

    Every check runs on the host, before any training step, so that a bad label cannot train as
    another class (-1 indexes the last logit) and a NaN pixel cannot surface later as a
    "non-finite loss". Each error names the split, the index of the first bad example and its
    value.

    Args:
        images: ``(n, *image_shape)`` numeric array (any real dtype; bool and object refused).
        labels: ``(n,)`` integer class indices in ``[0, num_classes)``.
        split: the split's name for messages, e.g. ``"train"``.
        num_classes: the number of classes (the model's logits).
        image_shape: the shape one example must have; None accepts any.
        where: the public function to name in messages.

    Returns:
        ``(images, labels)`` as NumPy arrays (not copied when they already are); images that
        are a lazy source (`NpyShards`, see `rows_of`) are returned as they are, checked by
        streaming them in chunks.

    Raises:
        TypeError: for non-numeric images or non-integer labels.
        ValueError: for a wrong rank or shape, a length mismatch, a non-finite pixel, or a
            label outside ``[0, num_classes)``.

    >>> x, y = np.zeros((3, 2, 2, 1), np.float32), np.array([0, 4, 1])
    >>> check_split(x, y, split="train", num_classes=3)
    Traceback (most recent call last):
    ...
    ValueError: check_split: train label at index 1 is 4; labels must be integers in [0, 3).
    """
    num_classes = as_int(num_classes, where, "num_classes", minimum=1)
    images, labels = rows_of(images), np.asarray(labels)
    if np.dtype(images.dtype).kind not in "iuf":
        raise TypeError(
            f"{where}: {split} images must be a numeric (integer or float) array, got dtype {images.dtype}."
        )
    if labels.dtype.kind not in "iu":
        hint = " (one-hot? pass the class indices, labels.argmax(-1))" if labels.ndim == 2 else ""
        raise TypeError(
            f"{where}: {split} labels must be integer class indices, got dtype {labels.dtype}{hint}."
        )
    if labels.ndim != 1:
        raise ValueError(
            f"{where}: {split} labels must be 1-D, one class index per example, got shape {labels.shape}."
        )
    if images.ndim < 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{where}: {split} images and labels must have the same length, got shapes "
            f"{images.shape} and {labels.shape}."
        )
    if image_shape is not None and images.shape[1:] != tuple(image_shape):
        raise ValueError(
            f"{where}: {split} images must have shape (n, {', '.join(map(str, image_shape))}) like "
            f"the model's input, got {images.shape}."
        )
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{where}: {split} label at index {i} is {labels[i]}; labels must be integers in "
            f"[0, {num_classes})."
        )
    if np.dtype(images.dtype).kind == "f":
        # In chunks of rows: a memory-mapped split is streamed, never held whole.
        for lo, chunk in zip(range(0, len(images), 4096), row_chunks(images, 4096)):
            finite = np.isfinite(chunk.reshape(chunk.shape[0], -1)).all(axis=1)
            if not finite.all():
                i = int(np.argmin(finite))
                value = chunk[i].reshape(-1)[np.argmin(np.isfinite(chunk[i].reshape(-1)))]
                raise ValueError(
                    f"{where}: {split} image at index {lo + i} holds a non-finite value ({value})."
                )
    return images, labels


# ---------------------------------------------------------------------------------------------
# Batching.


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for ``n`` examples.

    Args:
        n: number of examples, ``>= 0``.
        batch_size: examples per batch, ``>= 1``.
        drop_last: whether a last, partial batch is dropped (``n // batch_size``) or kept
            (``ceil(n / batch_size)``).

    Returns:
        The number of batches per epoch.

    Raises:
        TypeError / ValueError: if ``n`` or ``batch_size`` is not an integer in range.

    >>> num_batches(10, 4), num_batches(10, 4, drop_last=True), num_batches(8, 4)
    (3, 2, 2)
    """
    n = as_int(n, "num_batches", "n", minimum=0)
    batch_size = as_int(batch_size, "num_batches", "batch_size", minimum=1)
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    images,
    labels,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    start_batch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over one epoch of ``(x, y)`` batches, in a seeded order.

    The order is a permutation drawn from ``numpy.random.default_rng((seed, epoch))``: a pure
    function of ``(seed, epoch)``, different for every epoch, independent of anything run
    before (and reproducible for a given NumPy version: NumPy does not promise that
    ``Generator`` streams stay the same across versions). Every example appears exactly once per epoch (once at most with ``drop_last``). To
    resume a run mid-epoch exactly, call again with the same ``seed`` and ``epoch`` and
    ``start_batch`` set to the number of batches already taken.

    Arguments are checked when ``batches`` is called, not when iteration starts.

    Args:
        images: ``(n, ...)`` array, e.g. ``(n, h, w, c)``.
        labels: ``(n, ...)`` array, e.g. ``(n,)``.
        batch_size: examples per batch, ``>= 1``.
        shuffle: draw the seeded order; ``False`` keeps the stored order (``seed`` and
            ``epoch`` then unused).
        seed: non-negative integer seed of the run.
        epoch: non-negative epoch index; each epoch has its own order.
        drop_last: drop the last batch when it has fewer than ``batch_size`` examples
            (``n % batch_size`` of them); by default it is yielded.
        start_batch: index of the first batch to yield, in ``[0, num_batches(...)]``.

    Returns:
        An iterator over ``num_batches(n, batch_size, drop_last) - start_batch`` pairs of NumPy
        arrays ``(x (b, ...), y (b, ...))``, ``b == batch_size`` except perhaps the last.
        Unshuffled batches may be views of the inputs.

    Raises:
        TypeError / ValueError: if ``batch_size``, ``seed``, ``epoch`` or ``start_batch`` is
            not an integer in range, or ``images`` and ``labels`` differ in length.

    >>> x, y = np.arange(10).reshape(10, 1) * 10, np.arange(10)
    >>> [yb.tolist() for _, yb in batches(x, y, 4, shuffle=False)]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    >>> order = [yb.tolist() for _, yb in batches(x, y, 4, seed=0, epoch=1)]
    >>> order == [yb.tolist() for _, yb in batches(x, y, 4, seed=0, epoch=1)]
    True
    >>> [len(yb) for yb in order], sorted(sum(order, [])) == list(range(10))
    ([4, 4, 2], True)
    """
    where = "batches"
    images, labels = np.asarray(images), np.asarray(labels)
    batch_size = as_int(batch_size, where, "batch_size", minimum=1)
    seed = as_int(seed, where, "seed", minimum=0)
    epoch = as_int(epoch, where, "epoch", minimum=0)
    start_batch = as_int(start_batch, where, "start_batch", minimum=0)
    if images.ndim == 0 or labels.ndim == 0 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{where}: `images` and `labels` must have the same length along axis 0, "
            f"got shapes {images.shape} and {labels.shape}."
        )
    n = images.shape[0]
    total = num_batches(n, batch_size, drop_last)
    if start_batch > total:
        raise ValueError(
            f"{where}: `start_batch` must be at most the {total} batches of an epoch "
            f"({n} examples, batch_size {batch_size}), got {start_batch}."
        )
    order = epoch_order(n, seed=seed, epoch=epoch) if shuffle else None
    return _iterate(images, labels, order, batch_size, range(start_batch, total), n)


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` of a run seeded ``seed`` visits ``n`` examples.

    A permutation of ``range(n)`` drawn from ``numpy.random.default_rng((seed, epoch))``: a
    pure function of its arguments, so every process of a multi-process run computes the same
    global order and reads only its rows of each batch, and a resume at batch ``k`` of the epoch
    continues with ``order[k * batch_size:]``. `batches` visits examples in this order.

    >>> epoch_order(5, seed=0, epoch=0).tolist() == epoch_order(5, seed=0, epoch=0).tolist()
    True
    >>> sorted(epoch_order(5, seed=0, epoch=1).tolist())
    [0, 1, 2, 3, 4]
    """
    n = as_int(n, "epoch_order", "n", minimum=0)
    seed = as_int(seed, "epoch_order", "seed", minimum=0)
    epoch = as_int(epoch, "epoch_order", "epoch", minimum=0)
    return np.random.default_rng((seed, epoch)).permutation(n)


def _iterate(images, labels, order, batch_size, batch_indices, n):
    for i in batch_indices:
        lo, hi = i * batch_size, min((i + 1) * batch_size, n)
        if order is None:
            yield images[lo:hi], labels[lo:hi]
        else:
            idx = order[lo:hi]
            yield images[idx], labels[idx]
