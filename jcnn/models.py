"""Reference classifiers built from `jcnn.layers`: the lecture's LeNet, an all-convolutional net
(Springenberg et al. 2015), a multilayer perceptron, and the classic ImageNet / CIFAR
architectures exactly as torchvision defines them (AlexNet, VGG, ResNet, MobileNetV2) plus the
CIFAR ResNets of He et al. 2016.

Each constructor takes ``(num_classes, input_shape)`` with ``input_shape`` the shape of ONE
image ``(h, w, c)``, checks that the architecture fits that size, and returns a per-example
`jcnn.layers.Layer` whose output is ``(num_classes,)`` logits (no softmax: the loss takes
logits) and remembers ``input_shape`` (``model.input_shape``, which `jcnn.train.fit` checks the
data against). Parameters are float32. `MODELS` maps the names the experiment scripts accept to the
constructors. The classic architectures' params load from a PyTorch ``state_dict`` with
`jcnn.convert.from_torch_state_dict`; their layers are ordered as torchvision registers its
modules, which that loader relies on.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence

import jax.numpy as jnp

from jcnn.checks import as_bool, as_int
from jcnn.layers import (
    AdaptiveAvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Layer,
    LayerInfo,
    LeafSpec,
    MaxPool,
    Relu,
    Relu6,
    RFWindow,
    Windows,
    residual,
    serial,
)

__all__ = [
    "lenet",
    "allconv",
    "mlp",
    "small_vgg",
    "DOWNSAMPLES",
    "alexnet",
    "vgg",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet20",
    "resnet56",
    "mobilenet_v2",
    "RESNET_DEPTHS",
    "CIFAR_RESNET_DEPTHS",
    "VGG_CONFIGS",
    "MOBILENET_V2_SETTINGS",
    "MODELS",
]


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


def _check_widths(where: str, widths) -> tuple[int, ...]:
    """A non-empty tuple of positive ints (channels per stage)."""
    widths = tuple(widths)
    if not widths or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in widths):
        raise ValueError(f"{where}: `widths` must be a non-empty sequence of positive ints, got {widths!r}.")
    return widths


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
    num_classes, shape = _check(where, num_classes, input_shape)
    h, w, _ = shape
    drop_rate = _check_rate(where, drop_rate)
    if min(h, w) < 4:
        raise ValueError(
            f"{where}: two 2x2 max-pools need an image of at least 4x4, got {h}x{w}; use mlp() "
            f"for smaller inputs."
        )
    head = [Dense(500), Relu()]
    if drop_rate:
        head.append(Dropout(drop_rate))
    return _declared(
        shape,
        serial(
            Conv(20, 5, padding=2),
            Relu(),
            MaxPool(2),
            Conv(50, 5, padding=2),
            Relu(),
            MaxPool(2),
            Flatten(),
            *head,
            Dense(num_classes),
        ),
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
    num_classes, shape = _check(where, num_classes, input_shape)
    drop_rate = _check_rate(where, drop_rate)
    widths = _check_widths(where, widths)
    layers = []
    for k in widths:
        layers += [Conv(k, 3, padding=1), Relu(), Conv(k, 3, strides=2, padding="SAME"), Relu()]
        if drop_rate:
            layers.append(Dropout(drop_rate))
    k = widths[-1]
    layers += [Conv(k, 3, padding=1), Relu(), Conv(k, 1), Relu(), Conv(num_classes, 1), GlobalAvgPool()]
    return _declared(shape, serial(*layers))


#: How `small_vgg` halves the image after each stage.
DOWNSAMPLES = ("max", "strided", "conv", "none")


def small_vgg(
    num_classes: int = 10,
    input_shape=(28, 28, 1),
    *,
    widths: Sequence[int] = (32, 64, 128),
    downsample: str = "max",
    batch_norm: bool = True,
    hidden: int = 256,
    drop_rate: float = 0.3,
) -> Layer:
    """A VGG-style net for small images (Fashion-MNIST, CIFAR) that a CPU trains in minutes.

    Per width ``k`` a stage of two ``Conv(k, 3, padding=1) → [BatchNorm] → Relu``, then the
    stage halves the image (rounding up) as ``downsample`` says: ``"max"`` a ``MaxPool(2,
    ceil_mode=True)`` after the stage; ``"strided"`` the stage's second conv takes stride 2,
    no pooling (Springenberg et al. 2015's "Strided-CNN"); ``"conv"`` an extra ``Conv(k, 3,
    strides=2, padding=1) → [BatchNorm] → Relu`` in the pool's place (their "All-CNN": a
    learned pooling); ``"none"`` neither (the image keeps its size; the head gets
    ``4**stages`` times as many features). Then ``Flatten → Dense(hidden) → Relu →
    [Dropout] → Dense(num_classes)``. ``"max"``, ``"strided"`` and ``"none"`` have the same
    convolutions, so they isolate what the downsampling does (``experiments/claims_at_scale.py``); ``"max"`` with the defaults is the zoo's
    Fashion-MNIST record model (its accuracy and command: ``experiments/RESULTS.md``).

    Args:
        num_classes: number of logits.
        input_shape: one image ``(h, w, c)``.
        widths: channels of each stage.
        downsample: one of `DOWNSAMPLES`.
        batch_norm: a BatchNorm after every conv (the convs then have no bias).
        hidden: width of the hidden dense layer.
        drop_rate: dropout probability before the last dense layer (0 = none).

    Returns:
        A per-example `Layer`: ``(h, w, c) → (num_classes,)``.

    Raises:
        ValueError: for empty or non-positive ``widths``, another ``downsample``, or bad
            ``num_classes`` / ``hidden`` / ``drop_rate``.

    >>> from jcnn.summary import summary
    >>> table = summary(small_vgg(10, (28, 28, 1)), (28, 28, 1))
    >>> table.rows[-1]["output_shape"], table.totals["params"]
    ((10,), 813994)
    >>> [summary(small_vgg(10, (28, 28, 1), downsample=d), (28, 28, 1)).rows[-6]["output_shape"]
    ...  for d in DOWNSAMPLES]
    [(4, 4, 128), (4, 4, 128), (4, 4, 128), (28, 28, 128)]
    """
    where = "small_vgg"
    num_classes, shape = _check(where, num_classes, input_shape)
    drop_rate = _check_rate(where, drop_rate)
    widths = _check_widths(where, widths)
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"{where}: `downsample` must be one of {DOWNSAMPLES}, got {downsample!r}.")
    batch_norm = as_bool(batch_norm, where, "batch_norm")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"{where}: `hidden` must be a positive int, got {hidden!r}.")

    def conv(k: int, strides: int = 1) -> list[Layer]:
        if batch_norm:
            return [*_conv_bn(k, 3, strides), Relu()]
        return [Conv(k, 3, strides=strides, padding=1), Relu()]

    layers = []
    for k in widths:
        layers += conv(k) + conv(k, 2 if downsample == "strided" else 1)
        if downsample == "max":
            layers.append(MaxPool(2, ceil_mode=True))
        elif downsample == "conv":
            layers += conv(k, 2)
    drop = [Dropout(drop_rate)] if drop_rate else []
    return _declared(shape, serial(*layers, Flatten(), Dense(hidden), Relu(), *drop, Dense(num_classes)))


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
    num_classes, shape = _check(where, num_classes, input_shape)
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in widths):
        raise ValueError(f"{where}: `hidden` must be a positive int or a sequence of them, got {hidden!r}.")
    layers = [Flatten()]
    for k in widths:
        layers += [Dense(k), Relu()]
    return _declared(shape, serial(*layers, Dense(num_classes)))


# ---------------------------------------------------------------------------------------------
# The classic architectures, as torchvision defines them
# ---------------------------------------------------------------------------------------------


def _min_size(where: str, h: int, w: int, windows: Sequence[tuple[int, int, int]]) -> None:
    """Refuse an image too small for a chain of ``(kernel, stride, padding)`` windows."""

    def fits(n: int) -> bool:
        for k, s, p in windows:
            if n + 2 * p < k:
                return False
            n = (n + 2 * p - k) // s + 1
        return True

    if not (fits(h) and fits(w)):
        smallest = next(n for n in range(1, 4096) if fits(n))
        raise ValueError(
            f"{where}: its downsampling needs an image of at least {smallest}x{smallest}, got {h}x{w};"
            f" upsample the images or pick a resnet / mobilenet_v2, which fit any size."
        )


def _check_choice(where: str, name: str, value, choices) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__") or operator.index(value) not in choices:
        listed = ", ".join(map(str, sorted(choices)))
        raise ValueError(f"{where}: `{name}` must be one of {listed}, got {value!r}.")
    return operator.index(value)


@dataclasses.dataclass(frozen=True)
class ZeroPadShortcutSpec(LeafSpec):
    """He et al. 2016's option A shortcut: subsample by ``strides``, zero-pad channels at the end.

    Parameter-free: ``x[::s, ::s]`` then ``extra_channels`` zero channels, split evenly before
    and after as the common CIFAR implementations do (``lo = extra // 2``).

    >>> import jax
    >>> Layer.of(ZeroPadShortcutSpec(2, 16)).init(jax.random.key(0), (32, 32, 16))[0]
    (16, 16, 32)
    """

    name = "ZeroPadShortcut"
    strides: int
    extra_channels: int

    def __post_init__(self):
        self._canonical(
            strides=as_int(self.strides, self.name, "strides", minimum=1),
            extra_channels=as_int(self.extra_channels, self.name, "extra_channels", minimum=0),
        )

    def _out_shape(self, input_shape):
        h, w, c = input_shape
        s = self.strides
        return (-(-h // s), -(-w // s), c + self.extra_channels)

    def init(self, key, input_shape, /):
        del key
        return self._out_shape(tuple(input_shape)), (), ()

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        del params, key, train, batch_ndim
        lo = self.extra_channels // 2
        # Indexing from the end keeps any leading batch dims untouched.
        y = x[..., :: self.strides, :: self.strides, :]
        return jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(lo, self.extra_channels - lo)]), state

    def info(self, input_shape, /):
        return LayerInfo(
            self._out_shape(tuple(input_shape)), 0, 0, rf=Windows((RFWindow(1, self.strides),) * 2)
        )


def _declared(input_shape: tuple[int, ...], model: Layer) -> Layer:
    """``model`` remembering the input shape it was built and checked for (``model.input_shape``)."""
    return dataclasses.replace(model, input_shape=input_shape)


def alexnet(num_classes: int = 1000, input_shape=(224, 224, 3), *, drop_rate: float = 0.5) -> Layer:
    """AlexNet as torchvision defines it (Krizhevsky 2014's "one weird trick" single-tower form).

    ``Conv(64, 11, strides=4, padding=2) → Relu → MaxPool(3, 2) → Conv(192, 5, padding=2) → Relu
    → MaxPool(3, 2) → Conv(384, 3, padding=1) → Relu → Conv(256, 3, padding=1) → Relu →
    Conv(256, 3, padding=1) → Relu → MaxPool(3, 2) → AdaptiveAvgPool(6) → Flatten →
    [Dropout] → Dense(4096) → Relu → [Dropout] → Dense(4096) → Relu → Dense(num_classes)``.
    61,100,840 params for 1000 classes. The adaptive pool makes the head independent of the
    image size (at least 63x63).

    Args:
        num_classes: number of logits.
        input_shape: one image ``(h, w, c)``, h and w at least 63.
        drop_rate: dropout probability before the first two Dense layers (0 = none).

    Returns:
        A per-example `Layer`: ``(h, w, c) → (num_classes,)``.

    Raises:
        ValueError: for an image smaller than 63x63, or bad ``num_classes`` / ``drop_rate``.

    >>> from jcnn.summary import summary
    >>> summary(alexnet(), (224, 224, 3)).totals["params"]
    61100840
    """
    where = "alexnet"
    num_classes, shape = _check(where, num_classes, input_shape)
    h, w, _ = shape
    drop_rate = _check_rate(where, drop_rate)
    _min_size(where, h, w, [(11, 4, 2), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 2, 0)])
    drop = [Dropout(drop_rate)] if drop_rate else []
    return _declared(
        shape,
        serial(
            Conv(64, 11, strides=4, padding=2),
            Relu(),
            MaxPool(3, strides=2),
            Conv(192, 5, padding=2),
            Relu(),
            MaxPool(3, strides=2),
            Conv(384, 3, padding=1),
            Relu(),
            Conv(256, 3, padding=1),
            Relu(),
            Conv(256, 3, padding=1),
            Relu(),
            MaxPool(3, strides=2),
            AdaptiveAvgPool(6),
            Flatten(),
            *drop,
            Dense(4096),
            Relu(),
            *drop,
            Dense(4096),
            Relu(),
            Dense(num_classes),
        ),
    )


#: torchvision's VGG configurations: conv widths per stage, "M" a 2x2 max pool.
VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ),
}


def vgg(
    depth: int,
    num_classes: int = 1000,
    input_shape=(224, 224, 3),
    *,
    batch_norm: bool = False,
    drop_rate: float = 0.5,
) -> Layer:
    """VGG (Simonyan and Zisserman 2015) as torchvision defines it: configurations A, B, D, E.

    Per `VGG_CONFIGS` entry a ``Conv(k, 3, padding=1) → [BatchNorm] → Relu`` (the conv keeps
    its bias even with BatchNorm, as torchvision's ``vgg*_bn``), ``"M"`` a ``MaxPool(2)``; then
    ``AdaptiveAvgPool(7) → Flatten → Dense(4096) → Relu → [Dropout] → Dense(4096) → Relu →
    [Dropout] → Dense(num_classes)``. VGG-16: 138,357,544 params for 1000 classes.

    Args:
        depth: 11, 13, 16 or 19 weight layers.
        num_classes: number of logits.
        input_shape: one image ``(h, w, c)``, h and w at least 32 (five 2x2 pools).
        batch_norm: a BatchNorm after every conv (torchvision's ``vgg16_bn``).
        drop_rate: dropout probability after the first two Dense layers (0 = none).

    Returns:
        A per-example `Layer`: ``(h, w, c) → (num_classes,)``.

    Raises:
        ValueError: for another depth, an image smaller than 32x32, or bad ``num_classes`` /
            ``drop_rate``.

    >>> from jcnn.summary import summary
    >>> summary(vgg(11, 10, (32, 32, 3), batch_norm=True), (32, 32, 3)).totals["params"]
    128812810
    """
    where = "vgg"
    depth = _check_choice(where, "depth", depth, VGG_CONFIGS)
    num_classes, shape = _check(where, num_classes, input_shape)
    h, w, _ = shape
    drop_rate = _check_rate(where, drop_rate)
    batch_norm = as_bool(batch_norm, where, "batch_norm")
    _min_size(where, h, w, [(2, 2, 0)] * 5)
    layers = []
    for v in VGG_CONFIGS[depth]:
        if v == "M":
            layers.append(MaxPool(2))
        else:
            layers += [Conv(v, 3, padding=1), *([BatchNorm()] if batch_norm else []), Relu()]
    drop = [Dropout(drop_rate)] if drop_rate else []
    return _declared(
        shape,
        serial(
            *layers,
            AdaptiveAvgPool(7),
            Flatten(),
            Dense(4096),
            Relu(),
            *drop,
            Dense(4096),
            Relu(),
            *drop,
            Dense(num_classes),
        ),
    )


def vgg11(num_classes: int = 1000, input_shape=(224, 224, 3), **kwargs) -> Layer:
    """``vgg(11, ...)``; see `vgg`.

    >>> from jcnn.summary import summary
    >>> summary(vgg11(), (224, 224, 3)).totals["params"]
    132863336
    """
    return vgg(11, num_classes, input_shape, **kwargs)


def vgg13(num_classes: int = 1000, input_shape=(224, 224, 3), **kwargs) -> Layer:
    """``vgg(13, ...)``; see `vgg`.

    >>> from jcnn.summary import summary
    >>> summary(vgg13(), (224, 224, 3)).totals["params"]
    133047848
    """
    return vgg(13, num_classes, input_shape, **kwargs)


def vgg16(num_classes: int = 1000, input_shape=(224, 224, 3), **kwargs) -> Layer:
    """``vgg(16, ...)``; see `vgg`.

    >>> from jcnn.summary import summary
    >>> summary(vgg16(), (224, 224, 3)).totals["params"]
    138357544
    """
    return vgg(16, num_classes, input_shape, **kwargs)


def vgg19(num_classes: int = 1000, input_shape=(224, 224, 3), **kwargs) -> Layer:
    """``vgg(19, ...)``; see `vgg`.

    >>> from jcnn.summary import summary
    >>> summary(vgg19(), (224, 224, 3)).totals["params"]
    143667240
    """
    return vgg(19, num_classes, input_shape, **kwargs)


#: ImageNet ResNets (torchvision): blocks per stage, and whether the blocks are bottlenecks.
RESNET_DEPTHS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
#: CIFAR ResNets (He et al. 2016, section 4.2): depth 6n + 2, n basic blocks per stage.
CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)


def _conv_bn(out_channels: int, kernel_size: int, strides: int = 1, groups: int = 1) -> list[Layer]:
    # torchvision's conv before a BatchNorm: no bias, padding (k - 1) // 2 on both sides.
    pad = (kernel_size - 1) // 2
    return [
        Conv(out_channels, kernel_size, strides=strides, padding=pad, groups=groups, bias=False),
        BatchNorm(),
    ]


def _basic_block(in_channels: int, planes: int, strides: int, shortcut: str) -> Layer:
    body = serial(*_conv_bn(planes, 3, strides), Relu(), *_conv_bn(planes, 3))
    proj = None
    if strides != 1 or in_channels != planes:
        if shortcut == "A":
            proj = Layer.of(ZeroPadShortcutSpec(strides, planes - in_channels))
        else:
            proj = serial(*_conv_bn(planes, 1, strides))
    return serial(residual(body, proj), Relu())


def _bottleneck(in_channels: int, planes: int, strides: int) -> Layer:
    # torchvision's "ResNet v1.5": the stride sits on the 3x3 conv, not the first 1x1.
    out = 4 * planes
    body = serial(*_conv_bn(planes, 1), Relu(), *_conv_bn(planes, 3, strides), Relu(), *_conv_bn(out, 1))
    proj = serial(*_conv_bn(out, 1, strides)) if strides != 1 or in_channels != out else None
    return serial(residual(body, proj), Relu())


def resnet(depth: int, num_classes: int = 1000, input_shape=(224, 224, 3), *, shortcut: str = "A") -> Layer:
    """ResNet (He et al. 2016): torchvision's ImageNet nets, or the paper's CIFAR nets.

    ImageNet depths 18, 34 (basic blocks) and 50, 101, 152 (bottlenecks, torchvision's v1.5
    with the stride on the 3x3 conv): ``Conv(64, 7, strides=2, padding=3) → BatchNorm → Relu →
    MaxPool(3, 2, padding=1)``, four stages of 64/128/256/512 planes (strides 1, 2, 2, 2), a
    1x1 conv + BatchNorm projection where a block changes the shape, ``GlobalAvgPool →
    Dense(num_classes)``. ResNet-18: 11,689,512 params, ResNet-50: 25,557,032 (1000 classes).

    CIFAR depths 20, 32, 44, 56, 110 (``6n + 2``, section 4.2 of the paper): ``Conv(16, 3,
    padding=1) → BatchNorm → Relu``, three stages of ``n`` basic blocks with 16/32/64 channels
    (strides 1, 2, 2), ``GlobalAvgPool → Dense(num_classes)``. ``shortcut`` picks the paper's
    shortcut where a stage changes the shape: ``"A"`` (default, the paper's choice for CIFAR:
    subsample and zero-pad the channels, parameter-free; ResNet-20 has 269,722 params for 10
    classes, the paper's "0.27M") or ``"B"`` (a 1x1 conv + BatchNorm projection, as in the ImageNet nets).

    Every conv is followed by BatchNorm and has no bias; every block ends ``add → Relu``.

    Args:
        depth: one of `RESNET_DEPTHS` or `CIFAR_RESNET_DEPTHS`.
        num_classes: number of logits.
        input_shape: one image ``(h, w, c)``; any size (the global pool fixes the head).
        shortcut: ``"A"`` or ``"B"``, for the CIFAR depths only (ImageNet nets use projections).

    Returns:
        A per-example `Layer`: ``(h, w, c) → (num_classes,)``.

    Raises:
        ValueError: for another depth or shortcut, or a bad ``num_classes``.

    >>> from jcnn.summary import summary
    >>> summary(resnet(18), (224, 224, 3)).totals["params"]
    11689512
    >>> summary(resnet(20, 10, (32, 32, 3)), (32, 32, 3)).totals["params"]
    269722
    """
    where = "resnet"
    depth = _check_choice(where, "depth", depth, set(RESNET_DEPTHS) | set(CIFAR_RESNET_DEPTHS))
    num_classes, shape = _check(where, num_classes, input_shape)
    if shortcut not in ("A", "B"):
        raise ValueError(f"{where}: `shortcut` must be 'A' or 'B', got {shortcut!r}.")
    if depth in CIFAR_RESNET_DEPTHS:
        n = (depth - 2) // 6
        layers = [*_conv_bn(16, 3), Relu()]
        in_channels = 16
        for stage, planes in enumerate((16, 32, 64)):
            for b in range(n):
                strides = 2 if stage > 0 and b == 0 else 1
                layers.append(_basic_block(in_channels, planes, strides, shortcut))
                in_channels = planes
        return _declared(shape, serial(*layers, GlobalAvgPool(), Dense(num_classes)))
    if shortcut != "A":
        raise ValueError(
            f"{where}: `shortcut` applies to the CIFAR depths {CIFAR_RESNET_DEPTHS} only (the"
            f" ImageNet nets always project), got shortcut={shortcut!r} with depth {depth}."
        )
    blocks, bottleneck = RESNET_DEPTHS[depth]
    layers = [*_conv_bn(64, 7, 2), Relu(), MaxPool(3, strides=2, padding=1)]
    in_channels = 64
    for stage, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for b in range(n):
            strides = 2 if stage > 0 and b == 0 else 1
            if bottleneck:
                layers.append(_bottleneck(in_channels, planes, strides))
                in_channels = 4 * planes
            else:
                layers.append(_basic_block(in_channels, planes, strides, "B"))
                in_channels = planes
    return _declared(shape, serial(*layers, GlobalAvgPool(), Dense(num_classes)))


def resnet18(num_classes: int = 1000, input_shape=(224, 224, 3)) -> Layer:
    """``resnet(18, ...)``; see `resnet`.

    >>> from jcnn.summary import summary
    >>> summary(resnet18(10, (32, 32, 3)), (32, 32, 3)).rows[-1]["output_shape"]
    (10,)
    """
    return resnet(18, num_classes, input_shape)


def resnet34(num_classes: int = 1000, input_shape=(224, 224, 3)) -> Layer:
    """``resnet(34, ...)``; see `resnet`.

    >>> from jcnn.summary import summary
    >>> summary(resnet34(), (224, 224, 3)).totals["params"]
    21797672
    """
    return resnet(34, num_classes, input_shape)


def resnet50(num_classes: int = 1000, input_shape=(224, 224, 3)) -> Layer:
    """``resnet(50, ...)``; see `resnet`.

    >>> from jcnn.summary import summary
    >>> summary(resnet50(), (224, 224, 3)).totals["params"]
    25557032
    """
    return resnet(50, num_classes, input_shape)


def resnet20(num_classes: int = 10, input_shape=(32, 32, 3), *, shortcut: str = "A") -> Layer:
    """``resnet(20, ...)``, the CIFAR net; see `resnet`.

    >>> from jcnn.summary import summary
    >>> summary(resnet20(), (32, 32, 3)).totals["params"]
    269722
    >>> summary(resnet20(shortcut="B"), (32, 32, 3)).totals["params"]
    272474
    """
    return resnet(20, num_classes, input_shape, shortcut=shortcut)


def resnet56(num_classes: int = 10, input_shape=(32, 32, 3), *, shortcut: str = "A") -> Layer:
    """``resnet(56, ...)``, the CIFAR net; see `resnet`.

    >>> from jcnn.summary import summary
    >>> summary(resnet56(), (32, 32, 3)).totals["params"]
    853018
    """
    return resnet(56, num_classes, input_shape, shortcut=shortcut)


def _make_divisible(v: float, divisor: int = 8) -> int:
    # torchvision's rounding of channel counts (from the TF MobileNet code): nearest multiple of
    # `divisor`, never more than 10% below v.
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(out_channels: int, kernel_size: int, strides: int = 1, groups: int = 1) -> Layer:
    # torchvision's Conv2dNormActivation: one Sequential (conv, bn, act) per entry.
    return serial(*_conv_bn(out_channels, kernel_size, strides, groups), Relu6())


def _inverted_residual(in_channels: int, out_channels: int, strides: int, expand_ratio: int) -> Layer:
    hidden = int(round(in_channels * expand_ratio))
    layers = [_conv_bn_relu6(hidden, 1)] if expand_ratio != 1 else []
    layers += [
        _conv_bn_relu6(hidden, 3, strides, groups=hidden),  # depthwise
        *_conv_bn(out_channels, 1),  # linear bottleneck: no activation
    ]
    body = serial(*layers)
    return residual(body) if strides == 1 and in_channels == out_channels else body


#: MobileNetV2's inverted-residual stages: (expansion t, channels c, blocks n, first stride s).
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenet_v2(
    num_classes: int = 1000,
    input_shape=(224, 224, 3),
    *,
    width_mult: float = 1.0,
    drop_rate: float = 0.2,
) -> Layer:
    """MobileNetV2 (Sandler et al. 2018) as torchvision defines it.

    ``Conv(32, 3, strides=2, padding=1) → BatchNorm → Relu6``, the inverted residuals of
    `MOBILENET_V2_SETTINGS` (a 1x1 expansion conv + BatchNorm + Relu6 when ``t > 1``, a 3x3
    depthwise conv (``groups`` = channels) + BatchNorm + Relu6, a linear 1x1 projection +
    BatchNorm; an identity shortcut when the stride is 1 and the channels are kept), then
    ``Conv(1280, 1) → BatchNorm → Relu6 → GlobalAvgPool → [Dropout] → Dense(num_classes)``.
    Convs have no bias. 3,504,872 params for 1000 classes.

    Args:
        num_classes: number of logits.
        input_shape: one image ``(h, w, c)``; any size.
        width_mult: channel multiplier (channels rounded to multiples of 8 as torchvision does).
        drop_rate: dropout probability before the classifier (0 = none).

    Returns:
        A per-example `Layer`: ``(h, w, c) → (num_classes,)``.

    Raises:
        ValueError: for a non-positive ``width_mult`` or bad ``num_classes`` / ``drop_rate``.

    >>> from jcnn.summary import summary
    >>> summary(mobilenet_v2(), (224, 224, 3)).totals["params"]
    3504872
    """
    where = "mobilenet_v2"
    num_classes, shape = _check(where, num_classes, input_shape)
    drop_rate = _check_rate(where, drop_rate)
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
        raise ValueError(f"{where}: `width_mult` must be a number > 0, got {width_mult!r}.")
    in_channels = _make_divisible(32 * width_mult)
    last_channels = _make_divisible(1280 * max(1.0, width_mult))
    layers = [_conv_bn_relu6(in_channels, 3, 2)]
    for t, c, n, s in MOBILENET_V2_SETTINGS:
        out_channels = _make_divisible(c * width_mult)
        for i in range(n):
            layers.append(_inverted_residual(in_channels, out_channels, s if i == 0 else 1, t))
            in_channels = out_channels
    layers.append(_conv_bn_relu6(last_channels, 1))
    drop = [Dropout(drop_rate)] if drop_rate else []
    return _declared(shape, serial(*layers, GlobalAvgPool(), *drop, Dense(num_classes)))


#: The names `experiments/train.py --model` accepts.
MODELS = {
    "lenet": lenet,
    "allconv": allconv,
    "mlp": mlp,
    "small_vgg": small_vgg,
    "alexnet": alexnet,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenet_v2": mobilenet_v2,
}
