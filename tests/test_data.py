"""Tests for jcnn.data: the loaders (real Fashion-MNIST, synthetic IDX and CIFAR files), the IDX
reader and its errors, the digits split, and the seeded batch iterator."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from jcnn import data

FASHION_DIR = Path(data.FASHION_MNIST_DIR)
APT = "apt-get install dataset-fashion-mnist"

# ---------------------------------------------------------------------------------------------
# Helpers: an IDX writer independent of the reader, and a tiny synthetic dataset.

_IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C}
_IDX_CODES |= {np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of `array`, written by hand: magic, big-endian sizes, big-endian values."""
    array = np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, _IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(file: Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    payload = idx_bytes(array)
    compress = file.suffix == ".gz" if compress is None else compress
    file.write_bytes(gzip.compress(payload) if compress else payload)
    return file


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range present
    return images, rng.integers(0, 10, size=n, dtype=np.uint8)


def write_idx_dataset(folder: Path, *, n_train=6, n_test=4, gz=True) -> dict[str, np.ndarray]:
    """Four IDX files in `folder` (created); returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {}
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_split(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = images, labels
    return arrays


def check_matches(ds: data.Dataset, arrays: dict[str, np.ndarray]) -> None:
    for split, prefix in ((ds.train, "train"), (ds.test, "t10k")):
        assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
        assert split.images.shape == (*arrays[f"{prefix}_images"].shape, 1)
        np.testing.assert_array_equal(split.images[..., 0] * 255, arrays[f"{prefix}_images"])
        np.testing.assert_array_equal(split.labels, arrays[f"{prefix}_labels"])


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("JCNN_DATA_DIR", raising=False)


# ---------------------------------------------------------------------------------------------
# Digits.


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def test_digits_shapes_dtypes_ranges(digits):
    assert digits.name == "digits" and digits.num_classes == 10 and len(digits.class_names) == 10
    assert digits.image_shape == (8, 8, 1)
    assert digits.train.images.shape == (1438, 8, 8, 1) and digits.test.images.shape == (359, 8, 8, 1)
    assert digits.train.labels.shape == (1438,) and digits.test.labels.shape == (359,)
    for images, labels in (digits.train, digits.test):
        assert images.dtype == np.float32 and labels.dtype == np.int32
        assert images.min() == 0.0 and images.max() == 1.0
        np.testing.assert_array_equal(images * 16, np.round(images * 16))  # sklearn's 0..16 / 16
        assert set(np.unique(labels)) == set(range(10))


def test_digits_split_is_a_partition_of_sklearn_digits(digits):
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    original = sorted(zip(map(bytes, raw.images.astype(np.uint8).reshape(len(raw.target), -1)), raw.target))
    ours = [
        (bytes(np.round(img * 16).astype(np.uint8).reshape(-1)), lab)
        for split in (digits.train, digits.test)
        for img, lab in zip(*split)
    ]
    assert sorted(ours) == original


@pytest.mark.parametrize("test_fraction", [0.1, 0.2, 0.25, 0.5, 0.9])
def test_digits_split_is_stratified(test_fraction):
    ds = data.load_digits(test_fraction=test_fraction, seed=3)
    full = np.bincount(np.concatenate([ds.train.labels, ds.test.labels]), minlength=10)
    n = full.sum()
    n_train, n_test = len(ds.train.labels), len(ds.test.labels)
    assert n_test == round(n * test_fraction)
    train, test = np.bincount(ds.train.labels, minlength=10), np.bincount(ds.test.labels, minlength=10)
    # Each split's class count is within one example of its exact share of the full set ...
    assert np.all(np.abs(test - n_test * full / n) < 1)
    assert np.all(np.abs(train - n_train * full / n) < 1)
    # ... so train and test proportions differ by less than one example of each split.
    assert np.all(np.abs(test / n_test - train / n_train) < 1 / n_test + 1 / n_train)


def test_digits_split_is_deterministic_per_seed():
    a, b, c = data.load_digits(seed=7), data.load_digits(seed=7), data.load_digits(seed=8)
    for x, y in zip(a.train + a.test, b.train + b.test):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.test.images, c.test.images)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"test_fraction": 0.0}, ValueError, "strictly between 0 and 1, got 0.0"),
        ({"test_fraction": 1.0}, ValueError, "strictly between 0 and 1"),
        ({"test_fraction": -0.2}, ValueError, "strictly between 0 and 1"),
        ({"test_fraction": 1e-4}, ValueError, "gives 0 test examples out of 1797"),
        ({"test_fraction": "0.2"}, TypeError, "`test_fraction` must be a number"),
        ({"seed": -1}, ValueError, "`seed` must be >= 0, got -1"),
    ],
)
def test_digits_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.load_digits(**kwargs)


# ---------------------------------------------------------------------------------------------
# Real Fashion-MNIST, as Debian's dataset-fashion-mnist installs it.


@pytest.fixture(scope="module")
def fashion():
    if not FASHION_DIR.is_dir():
        pytest.skip(f"{FASHION_DIR} is absent: `{APT}` installs Fashion-MNIST there")
    saved = os.environ.pop("JCNN_DATA_DIR", None)  # read the packaged files, not an override
    try:
        return data.load_fashion_mnist()
    finally:
        if saved is not None:
            os.environ["JCNN_DATA_DIR"] = saved


def test_fashion_mnist_real_files(fashion):
    assert fashion.name == "fashion-mnist" and fashion.num_classes == 10
    assert fashion.class_names == data.FASHION_MNIST_CLASSES and fashion.class_names[9] == "Ankle boot"
    assert fashion.image_shape == (28, 28, 1)
    assert fashion.train.images.shape == (60000, 28, 28, 1) and fashion.train.labels.shape == (60000,)
    assert fashion.test.images.shape == (10000, 28, 28, 1) and fashion.test.labels.shape == (10000,)
    for images, labels in (fashion.train, fashion.test):
        assert images.dtype == np.float32 and labels.dtype == np.int32
        assert images.flags.c_contiguous
        assert images.min() == 0.0 and images.max() == 1.0
        assert labels.min() == 0 and labels.max() == 9
    np.testing.assert_array_equal(np.bincount(fashion.train.labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(fashion.test.labels), [1000] * 10)
    # Published facts about the release: the first labels, and the train pixel mean 0.2860.
    np.testing.assert_array_equal(fashion.train.labels[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
    np.testing.assert_array_equal(fashion.test.labels[:5], [9, 2, 1, 1, 6])
    assert abs(float(fashion.train.images.mean(dtype=np.float64)) - 0.2860) < 1e-4
    sample = fashion.train.images[:100] * 255
    np.testing.assert_array_equal(sample, np.round(sample))  # k / 255, nothing else


# ---------------------------------------------------------------------------------------------
# Folder resolution: path, $JCNN_DATA_DIR, default.


def test_fashion_mnist_env_var_parent_folder(tmp_path, monkeypatch):
    arrays = write_idx_dataset(tmp_path / "fashion-mnist")
    monkeypatch.setenv("JCNN_DATA_DIR", str(tmp_path))
    ds = data.load_fashion_mnist()
    check_matches(ds, arrays)
    assert ds.train.images.shape == (6, 28, 28, 1) and ds.test.images.shape == (4, 28, 28, 1)


def test_fashion_mnist_env_var_folder_itself_uncompressed(tmp_path, monkeypatch):
    arrays = write_idx_dataset(tmp_path, gz=False)
    monkeypatch.setenv("JCNN_DATA_DIR", str(tmp_path))
    check_matches(data.load_fashion_mnist(), arrays)


def test_fashion_mnist_path_beats_env_var(tmp_path, monkeypatch):
    arrays = write_idx_dataset(tmp_path / "good")
    monkeypatch.setenv("JCNN_DATA_DIR", str(tmp_path / "nowhere"))
    check_matches(data.load_fashion_mnist(tmp_path / "good"), arrays)
    check_matches(data.load_fashion_mnist(str(tmp_path / "good")), arrays)


def test_fashion_mnist_env_var_without_files_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("JCNN_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist()
    message = str(info.value)
    assert "$JCNN_DATA_DIR" in message and str(tmp_path) in message and APT in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message


def test_fashion_mnist_missing_default_dir(tmp_path, monkeypatch, no_env):
    missing = tmp_path / "not-installed"
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(missing))
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist()
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert APT in message and "JCNN_DATA_DIR" in message and "path=" in message


def test_fashion_mnist_missing_one_file(tmp_path, no_env):
    write_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]\. Install") as info:
        data.load_fashion_mnist(tmp_path)
    assert APT in str(info.value) and "train-images" not in str(info.value).split("lacks")[1]


def test_mnist_loader_and_dotted_names(tmp_path):
    arrays = write_idx_dataset(tmp_path / "mnist")
    # some mirrors name the files train-images.idx3-ubyte: found as well.
    folder = tmp_path / "mnist"
    (folder / "train-images-idx3-ubyte.gz").rename(folder / "train-images.idx3-ubyte.gz")
    ds = data.load_mnist(tmp_path)
    check_matches(ds, arrays)
    assert ds.name == "mnist" and ds.class_names == tuple("0123456789")


def test_mnist_missing(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="does not exist. Download MNIST's train-images-idx3-ubyte.gz"
    ):
        data.load_mnist(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="lacks train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)


# ---------------------------------------------------------------------------------------------
# read_idx: round trip and every error.


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([0, 255, 7], dtype=np.uint8),
        np.array([-128, 5, 127], dtype=np.int8),
        np.array([[-(2**15), 1], [2, 2**15 - 1]], dtype=np.int16),
        np.array([[-(2**31), 1, 2**31 - 1]], dtype=np.int32),
        np.array([1.5, -2.25, np.pi], dtype=np.float32),
        np.array([[1e300, -0.0, np.pi]], dtype=np.float64),
        np.zeros((0, 28, 28), dtype=np.uint8),
    ],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
def test_read_idx_round_trip(tmp_path, array, compress):
    out = data.read_idx(write_idx(tmp_path / "a-idx", array, compress=compress))
    assert out.dtype == array.dtype.newbyteorder("=") and out.dtype.isnative
    assert out.shape == array.shape and out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_read_idx_known_bytes(tmp_path):
    # Hand-written bytes, not via idx_bytes: a (2, 3) int32 array, big-endian.
    raw = bytes([0, 0, 0x0C, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + b"".join(
        struct.pack(">i", v) for v in range(-1, 5)
    )
    (tmp_path / "f").write_bytes(raw)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "f"), [[-1, 0, 1], [2, 3, 4]])


def idx_error(tmp_path, payload: bytes, match: str, name="bad-idx3-ubyte"):
    file = tmp_path / name
    file.write_bytes(payload)
    with pytest.raises(ValueError, match=match) as info:
        data.read_idx(file)
    assert str(file) in str(info.value)


def test_read_idx_bad_magic(tmp_path):
    good = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    idx_error(tmp_path, b"\x01" + good[1:], r"bad IDX magic number 0x01000803; expected 0x0000")
    idx_error(tmp_path, good[:2] + b"\x0a" + good[3:], r"bad IDX magic number 0x00000a03")
    idx_error(tmp_path, b"PK\x03\x04" + good[4:], r"bad IDX magic number .*Is this an IDX file\?")
    idx_error(tmp_path, b"\x00\x00", r"only 2 bytes")
    idx_error(tmp_path, bytes([0, 0, 8, 0]), r"0 dimensions")


def test_read_idx_truncated_header(tmp_path):
    good = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    idx_error(
        tmp_path, good[:10], r"header is truncated: expected 12 bytes of sizes for 3 dimensions, found 6"
    )


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_wrong_payload_length(tmp_path, compress):
    good = idx_bytes(np.zeros((60, 28, 28), np.uint8))  # 47040 bytes of pixels
    for payload, found in ((good[:-1000], 46040), (good + b"\x00" * 3, 47043), (good[:16], 0)):
        file = tmp_path / "x-idx3-ubyte"
        file.write_bytes(gzip.compress(payload) if compress else payload)
        with pytest.raises(
            ValueError,
            match=rf"expected 47040 bytes of uint8 data after the header \(shape \(60, 28, 28\)\), found {found}",
        ):
            data.read_idx(file)


def test_read_idx_bad_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(4000, dtype=np.uint8).reshape(5, 8, 100)))
    idx_error(tmp_path, b"not gzip at all", r"named \.gz but is not gzip data", name="x.gz")
    idx_error(tmp_path, good[: len(good) // 2], r"is not valid gzip data", name="cut.gz")
    corrupt = bytearray(good)
    corrupt[-8] ^= 0xFF  # CRC of the uncompressed data
    idx_error(tmp_path, bytes(corrupt), r"is not valid gzip data .*CRC", name="crc.gz")
    idx_error(tmp_path, good[:10] + b"\xff" * 30, r"is not valid gzip data", name="garbled.gz")


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-file"):
        data.read_idx(tmp_path / "no-such-file")


# ---------------------------------------------------------------------------------------------
# Dataset-level errors for IDX files.


def test_count_mismatch_between_images_and_labels(tmp_path):
    write_idx_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(
        ValueError,
        match=r"train-images-idx3-ubyte.gz has 6 images but .*train-labels-idx1-ubyte.gz has 5 labels",
    ):
        data.load_fashion_mnist(tmp_path)


def test_truncated_dataset_file_is_named(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    file = tmp_path / "t10k-images-idx3-ubyte"
    file.write_bytes(file.read_bytes()[:1016])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: expected 3136 bytes .*found 1000"):
        data.load_fashion_mnist(tmp_path)


@pytest.mark.parametrize(
    ("file", "array", "match"),
    [
        (
            "train-images-idx3-ubyte.gz",
            np.zeros((6, 32, 32), np.uint8),
            r"uint8 images of shape \(n, 28, 28\), got uint8 of shape \(6, 32, 32\)",
        ),
        ("train-images-idx3-ubyte.gz", np.zeros((6, 28, 28), np.int32), r"got int32 of shape"),
        (
            "train-labels-idx1-ubyte.gz",
            np.zeros((6, 28, 28), np.uint8),
            r"labels of shape \(n,\), got uint8 of shape \(6, 28, 28\)",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            np.array([0, 1, 10, 2], np.uint8),
            r"labels in .*t10k-labels.* must lie in \[0, 10\), got values from 0 to 10",
        ),
    ],
)
def test_wrong_contents(tmp_path, file, array, match):
    write_idx_dataset(tmp_path)
    write_idx(tmp_path / file, array)
    with pytest.raises(ValueError, match=match):
        data.load_fashion_mnist(tmp_path)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 pickles.


def write_cifar(folder: Path, *, per_batch=3, protocol=pickle.HIGHEST_PROTOCOL) -> dict[str, np.ndarray]:
    """Six tiny batch pickles shaped like the real ones (bytes keys, (m, 3072) rows, channel-first)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for k, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        rows = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [(k * per_batch + j) % 10 for j in range(per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"data": rows,
            b"labels": labels,
            b"filenames": [b"x.png"] * per_batch,
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = rows
        written[name + "_labels"] = np.array(labels)
    return written


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_loader(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = data.load_cifar10(tmp_path)
    assert ds.name == "cifar10" and ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    assert ds.image_shape == (32, 32, 3)
    assert ds.train.images.shape == (15, 32, 32, 3) and ds.test.images.shape == (3, 32, 32, 3)
    assert ds.train.images.dtype == np.float32 and ds.train.labels.dtype == np.int32
    assert ds.train.images.flags.c_contiguous
    assert 0.0 <= ds.train.images.min() and ds.train.images.max() <= 1.0
    # data_batch_1..5 concatenated in order.
    np.testing.assert_array_equal(ds.train.labels, np.arange(15) % 10)
    np.testing.assert_array_equal(ds.test.labels, written["test_batch_labels"])
    # Channel order: a row is 1024 red, 1024 green, 1024 blue, each row-major (32, 32).
    rows = written["data_batch_2"]
    for r, c in ((0, 0), (2, 5), (31, 30)):
        rgb = [rows[1, ch * 1024 + r * 32 + c] for ch in range(3)]
        np.testing.assert_array_equal(ds.train.images[3 + 1, r, c] * 255, rgb)
    # The folder itself works too.
    np.testing.assert_array_equal(
        data.load_cifar10(tmp_path / "cifar-10-batches-py").test.images, ds.test.images
    )


def test_cifar10_pixel_lands_in_the_right_channel(tmp_path):
    write_cifar(tmp_path, per_batch=1)
    row = np.zeros(3072, np.uint8)
    row[0 * 1024 + 2 * 32 + 5], row[1 * 1024 + 2 * 32 + 5], row[2 * 1024 + 2 * 32 + 5] = 10, 20, 30
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": row[None], b"labels": [3]}))
    image = data.load_cifar10(tmp_path).test.images[0]
    np.testing.assert_array_equal(image[2, 5] * 255, [10, 20, 30])
    assert np.count_nonzero(image) == 3


def test_cifar10_missing(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"does not exist\. Download the CIFAR-10 python version, cifar-10-python\.tar\.gz",
    ):
        data.load_cifar10(tmp_path / "nope")
    write_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"lacks data_batch_4, test_batch\. .*https://www\.cs\.toronto\.edu/~kriz/cifar\.html",
    ):
        data.load_cifar10(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (b"this is not a pickle", r"not a readable CIFAR-10 batch pickle"),
        (pickle.dumps({b"labels": [0]}), r"lacks the key\(s\) data; it has \['labels'\]"),
        (pickle.dumps({"data": np.zeros((1, 3072), np.uint8)}), r"lacks the key\(s\) labels"),
        (pickle.dumps([1, 2]), r"expected a pickled dict, got list"),
        (
            pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}),
            r"uint8 of shape \(m, 3072\), got uint8 of shape \(2, 1024\)",
        ),
        (pickle.dumps({b"data": np.zeros((2, 3072)), b"labels": [0, 1]}), r"got float64 of shape"),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
            r"expected 2 integer `labels`",
        ),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}), r"must lie in \[0, 10\)"),
        (
            pickle.dumps({b"data": _Evil(), b"labels": [0]}),
            r"refusing to load the global (posix|nt|os)\.system",
        ),
    ],
    ids=[
        "not-pickle",
        "no-data",
        "no-labels",
        "list",
        "wrong-width",
        "float",
        "label-count",
        "label-range",
        "evil",
    ],
)
def test_cifar10_bad_batch(tmp_path, batch, match):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(batch)
    with pytest.raises(ValueError, match=match) as info:
        data.load_cifar10(tmp_path)
    assert "data_batch_3" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Batching.


def epoch_labels(n, batch_size, **kwargs):
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * 2
    out = []
    for x, y in data.batches(images, np.arange(n), batch_size, **kwargs):
        np.testing.assert_array_equal(x[:, 0, 0, 0], 2 * y)  # x and y stay aligned
        out.append(y)
    return out


@pytest.mark.parametrize("n", [1, 7, 32, 100])
@pytest.mark.parametrize("batch_size", [1, 3, 32, 200])
def test_batches_cover_every_example_once(n, batch_size):
    for epoch in range(3):
        ys = epoch_labels(n, batch_size, seed=5, epoch=epoch)
        np.testing.assert_array_equal(np.sort(np.concatenate(ys)), np.arange(n))
        assert len(ys) == data.num_batches(n, batch_size) == -(-n // batch_size)


def test_batches_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        return np.concatenate(epoch_labels(100, 16, seed=seed, epoch=epoch))

    np.testing.assert_array_equal(order(0, 3), order(0, 3))
    orders = [order(seed, epoch) for seed in range(3) for epoch in range(4)]
    assert len({o.tobytes() for o in orders}) == len(orders)
    assert not np.array_equal(order(0, 0), np.arange(100))


def test_batches_without_shuffle_keep_order():
    ys = epoch_labels(10, 4, shuffle=False, seed=9, epoch=4)
    np.testing.assert_array_equal(np.concatenate(ys), np.arange(10))


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "sizes"),
    [
        (10, 4, False, [4, 4, 2]),
        (10, 4, True, [4, 4]),
        (12, 4, False, [4, 4, 4]),
        (12, 4, True, [4, 4, 4]),
        (3, 4, False, [3]),
        (3, 4, True, []),
        (0, 4, False, []),
    ],
)
def test_batches_last_partial_batch(n, batch_size, drop_last, sizes):
    ys = epoch_labels(n, batch_size, drop_last=drop_last)
    assert [len(y) for y in ys] == sizes
    assert data.num_batches(n, batch_size, drop_last) == len(sizes)
    seen = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    assert len(np.unique(seen)) == len(seen) == sum(sizes)  # no example twice, none invented


@pytest.mark.parametrize("start_batch", [0, 1, 2, 3])
def test_batches_resume_mid_epoch(start_batch):
    full = epoch_labels(10, 4, seed=1, epoch=2)
    resumed = epoch_labels(10, 4, seed=1, epoch=2, start_batch=start_batch)
    assert len(resumed) == len(full) - start_batch
    for a, b in zip(full[start_batch:], resumed):
        np.testing.assert_array_equal(a, b)


def test_batches_accept_a_split():
    split = data.Split(np.zeros((5, 2, 2, 1), np.float32), np.arange(5, dtype=np.int32))
    assert [(x.shape, y.shape) for x, y in data.batches(*split, 2, shuffle=False)] == [
        ((2, 2, 2, 1), (2,)),
        ((2, 2, 2, 1), (2,)),
        ((1, 2, 2, 1), (1,)),
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, r"batches: `batch_size` must be >= 1, got 0\."),
        ({"batch_size": -3}, ValueError, r"`batch_size` must be >= 1, got -3"),
        ({"batch_size": 2.0}, TypeError, r"`batch_size` must be an int, got 2\.0 of type float"),
        ({"batch_size": True}, TypeError, r"`batch_size` must be an int"),
        ({"seed": -1}, ValueError, r"`seed` must be >= 0"),
        ({"epoch": -1}, ValueError, r"`epoch` must be >= 0"),
        ({"start_batch": 4}, ValueError, r"`start_batch` must be at most the 3 batches"),
        ({"labels": np.arange(9)}, ValueError, r"same length along axis 0, got shapes \(10, 1\) and \(9,\)"),
    ],
)
def test_batches_errors_raised_at_call_time(kwargs, error, match):
    args = {"images": np.zeros((10, 1)), "labels": np.arange(10), "batch_size": 4} | kwargs
    with pytest.raises(error, match=match):
        data.batches(**args)  # not iterated: the check must not wait for the first next()


def test_num_batches_errors():
    with pytest.raises(ValueError, match=r"num_batches: `batch_size` must be >= 1, got 0"):
        data.num_batches(10, 0)
    with pytest.raises(ValueError, match=r"num_batches: `n` must be >= 0, got -1"):
        data.num_batches(-1, 4)


# ---------------------------------------------------------------------------------------------
# check_split: the data checked before training (issue 11 item 4).


def test_check_split_accepts_a_good_split_without_copying(digits):
    images, labels = data.check_split(*digits.train, split="train", num_classes=10, image_shape=(8, 8, 1))
    assert images is digits.train.images and labels is digits.train.labels
    uint8 = (digits.test.images * 16).astype(np.uint8)  # integer images are numeric too
    data.check_split(uint8, digits.test.labels.astype(np.uint8), split="test", num_classes=10)


@pytest.mark.parametrize(
    ("images", "labels", "error", "match"),
    [
        (
            np.zeros((3, 2)),
            np.array([0, 1, 3]),
            ValueError,
            r"x label at index 2 is 3; labels must be integers in \[0, 3\)",
        ),
        (np.zeros((3, 2)), np.array([0, -2, -1]), ValueError, r"x label at index 1 is -2"),
        (
            np.zeros((3, 2)),
            np.array([0.0, 1.0, 2.0]),
            TypeError,
            r"x labels must be integer class indices, got dtype float64\.",
        ),
        (
            np.zeros((3, 2)),
            np.eye(3)[[0, 1, 2]],
            TypeError,
            r"got dtype float64 \(one-hot\? pass the class indices",
        ),
        (
            np.zeros((3, 2)),
            np.array([[0], [1], [2]]),
            ValueError,
            r"x labels must be 1-D, .* got shape \(3, 1\)",
        ),
        (
            np.zeros((3, 2)),
            np.array([0, 1]),
            ValueError,
            r"x images and labels must have the same length, got shapes \(3, 2\) and \(2,\)",
        ),
        (
            np.array([[0.0, 1.0], [np.nan, 0.0], [0.0, 0.0]]),
            np.array([0, 1, 2]),
            ValueError,
            r"x image at index 1 holds a non-finite value \(nan\)",
        ),
        (
            np.array([["a", "b"]] * 3),
            np.array([0, 1, 2]),
            TypeError,
            r"x images must be a numeric .* got dtype <U1",
        ),
        (np.zeros((3, 2), bool), np.array([0, 1, 2]), TypeError, r"got dtype bool"),
        (
            np.zeros((3, 3)),
            np.array([0, 1, 2]),
            ValueError,
            r"x images must have shape \(n, 2\) like the model's input, got \(3, 3\)",
        ),
    ],
)
def test_check_split_errors_name_the_split_index_and_value(images, labels, error, match):
    with pytest.raises(error, match=match):
        data.check_split(images, labels, split="x", num_classes=3, image_shape=(2,))
