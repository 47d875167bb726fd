"""Reference classifiers built from `jcnn.layers`: the lecture's LeNet, an all-convolutional net
(Springenberg et al. 2015) and a multilayer perceptron.

Each constructor takes ``(num_classes, input_shape)`` with ``input_shape`` the shape of ONE
image ``(h, w, c)``, checks that the architecture fits that size, and returns a per-example
`jcnn.layers.Layer` whose output is ``(num_classes,)`` logits (no softmax: the loss takes
logits). Parameters are float32. `MODELS` maps the names the experiment scripts accept to the
constructors.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from jcnn.layers import Conv, Dense, Dropout, Flatten, GlobalAvgPool, Layer, MaxPool, Relu, serial

__all__ = ["lenet", "allconv", "mlp", "MODELS"]


def _check(where: str, num_classes, input_shape) -> tuple[int, tuple[int, ...]]:
    if isinstance(num_classes, bool) or not hasattr(num_classes, "__index__"):
        raise TypeError(f"{where}: `num_classes` must be an int, got {num_classes!r}.")
    num_classes = operator.index(num_classes)
    if num_classes < 2:
        raise ValueError(f"{where}: `num_classes` must be >= 2, got {num_classes}.")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        hasattr(s, "__index__") and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(
            f"{where}: `input_shape` must be one image (h, w, c) of positive ints, e.g. (28, 28, 1), "
            f"got {input_shape!r}."
        )
    return num_classes, tuple(operator.index(s) for s in shape)


def _check_rate(where: str, drop_rate) -> float:
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
        raise ValueError(f"{where}: `drop_rate` must be a number in [0, 1), got {drop_rate!r}.")
    return float(drop_rate)


def lenet(num_classes: int = 10, input_shape=(28, 28, 1), *, drop_rate: float = 0.0) -> Layer:
    """The lecture's LeNet: two conv/ReLU/max-pool stages, then two dense layers.

    ``Conv(20, 5, padding=2) → Relu → MaxPool(2) → Conv(50, 5, padding=2) → Relu → MaxPool(2)
    → Flatten → Dense(500) → Relu → [Dropout] → Dense(num_classes)``. The padding of 2 keeps a
    5x5 conv size-preserving, so only the pools shrink the image (``h → h//2 → h//4``) and the
    net fits any image of at least 4x4: 28x28 gives 7x7x50 before Flatten, the 8x8 digits give
    2x2x50, CIFAR's 32x32 gives 8x8x50.

    Args:
        num_classes: number of logits.
        input_shape: one image ``(h, w, c)``, h and w at least 4.
        drop_rate: dropout probability before the last Dense (0 = no Dropout layer).

    Returns:
        A per-example `Layer`: ``(h, w, c) → (num_classes,)``.

    Raises:
        ValueError: for an image smaller than 4x4, or bad ``num_classes`` / ``drop_rate``.

    >>> lenet(10, (8, 8, 1))
    serial(Conv(20, 5, padding=2), Relu(), MaxPool(2), Conv(50, 5, padding=2), Relu(), MaxPool(2), Flatten(), Dense(500), Relu(), Dense(10))
    """
    where = "lenet"
    num_classes, (h, w, _) = _check(where, num_classes, input_shape)
    drop_rate = _check_rate(where, drop_rate)
    if min(h, w) < 4:
        raise ValueError(
            f"{where}: two 2x2 max-pools need an image of at least 4x4, got {h}x{w}; use mlp() "
            f"for smaller inputs."
        )
    head = [Dense(500), Relu()]
    if drop_rate:
        head.append(Dropout(drop_rate))
    return serial(
        Conv(20, 5, padding=2),
        Relu(),
        MaxPool(2),
        Conv(50, 5, padding=2),
        Relu(),
        MaxPool(2),
        Flatten(),
        *head,
        Dense(num_classes),
    )


def allconv(
    num_classes: int = 10,
    input_shape=(28, 28, 1),
    *,
    widths: Sequence[int] = (32, 64),
    drop_rate: float = 0.0,
) -> Layer:
    """An all-convolutional net: strided convolutions instead of pooling, no dense layers.

    After Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional Net"
    (All-CNN-C), scaled down for a CPU: per width ``k`` a stage ``Conv(k, 3, padding=1) →
    Relu → Conv(k, 3, strides=2, padding="SAME") → Relu`` (the strided conv does the max-pool's
    job, learned), then ``Conv(k_last, 3, padding=1) → Relu → Conv(k_last, 1) → Relu →
    Conv(num_classes, 1) → GlobalAvgPool``: one score map per class, averaged. The paper's
    widths are ``(96, 192)`` with dropout 0.5; the default ``(32, 64)`` trains in minutes on
    a CPU. "SAME" padding makes each strided conv halve the size rounding up (28 → 14 → 7,
    8 → 4 → 2) and read every pixel.

    Args:
        num_classes: number of logits.
        input_shape: one image ``(h, w, c)``.
        widths: channels of each downsampling stage; one stride-2 conv per entry.
        drop_rate: dropout probability after each strided conv (0 = none).

    Returns:
        A per-example `Layer`: ``(h, w, c) → (num_classes,)``.

    Raises:
        ValueError: for empty or non-positive ``widths``, or bad ``num_classes`` / ``drop_rate``.

    >>> from jcnn.summary import summary
    >>> [row["output_shape"] for row in summary(allconv(10, (8, 8, 1)), (8, 8, 1)) if row["params"]]
    [(8, 8, 32), (4, 4, 32), (4, 4, 64), (2, 2, 64), (2, 2, 64), (2, 2, 64), (2, 2, 10)]
    """
    where = "allconv"
    num_classes, _ = _check(where, num_classes, input_shape)
    drop_rate = _check_rate(where, drop_rate)
    widths = tuple(widths)
    if not widths or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in widths):
        raise ValueError(f"{where}: `widths` must be a non-empty sequence of positive ints, got {widths!r}.")
    layers = []
    for k in widths:
        layers += [Conv(k, 3, padding=1), Relu(), Conv(k, 3, strides=2, padding="SAME"), Relu()]
        if drop_rate:
            layers.append(Dropout(drop_rate))
    k = widths[-1]
    layers += [Conv(k, 3, padding=1), Relu(), Conv(k, 1), Relu(), Conv(num_classes, 1), GlobalAvgPool()]
    return serial(*layers)


def mlp(num_classes: int = 10, input_shape=(28, 28, 1), *, hidden: int | Sequence[int] = 256) -> Layer:
    """A multilayer perceptron: ``Flatten → (Dense(h) → Relu) per hidden width → Dense(num_classes)``.

    Args:
        num_classes: number of logits.
        input_shape: one image ``(h, w, c)`` (any size).
        hidden: width of the hidden layer, or a sequence of widths.

    Returns:
        A per-example `Layer`: ``(h, w, c) → (num_classes,)``.

    >>> mlp(10, (8, 8, 1), hidden=(128, 64))
    serial(Flatten(), Dense(128), Relu(), Dense(64), Relu(), Dense(10))
    """
    where = "mlp"
    num_classes, _ = _check(where, num_classes, input_shape)
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in widths):
        raise ValueError(f"{where}: `hidden` must be a positive int or a sequence of them, got {hidden!r}.")
    layers = [Flatten()]
    for k in widths:
        layers += [Dense(k), Relu()]
    return serial(*layers, Dense(num_classes))


#: The names `experiments/train.py --model` accepts.
MODELS = {"lenet": lenet, "allconv": allconv, "mlp": mlp}
