"""What a leaf layer tells `jcnn.summary` about one input shape: `LayerInfo` and its receptive-field rule.

A leaf's ``info(input_shape) -> LayerInfo`` gives its output shape, parameter and FLOP counts,
concrete padding and stride warning, and how it changes the receptive field, as one of:

- `Elementwise()`: each output unit sees what the input unit at its position saw (activations,
  normalisation, Dropout, a Dense on ``(h, w, c)``);
- `Global()`: every output unit sees the whole input (Flatten, a Dense on a vector, global pools);
- `Merge()`: the union of the fields of a tuple input (Add, Concat);
- `Windows(...)`: a sliding window per spatial dim (convs, pools), one `RFWindow` each;
- `Unknown()`: not derivable (the default: a layer that does not say).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Union

from jcnn.shapes import Pair

__all__ = [
    "LayerInfo",
    "RFWindow",
    "RFRule",
    "Elementwise",
    "Global",
    "Merge",
    "Windows",
    "Unknown",
    "ELEMENTWISE",
    "GLOBAL",
    "MERGE",
    "UNKNOWN",
]


class RFWindow(NamedTuple):
    """One spatial dim of a sliding window, as the receptive-field arithmetic needs it.

    ``stride`` and ``pad_lo`` may be fractional for adaptive pooling, whose windows are not
    evenly spaced (see `jcnn.layers.AdaptiveAvgPool`).
    """

    kernel_size: int
    stride: float = 1
    pad_lo: float = 0
    dilation: int = 1
    transpose: bool = False


@dataclasses.dataclass(frozen=True)
class Elementwise:
    """The receptive field is unchanged: each output unit sees what its input unit saw."""


@dataclasses.dataclass(frozen=True)
class Global:
    """Every output unit sees the whole input."""


@dataclasses.dataclass(frozen=True)
class Merge:
    """The input is a tuple of branches; the output sees the union of their fields."""


@dataclasses.dataclass(frozen=True)
class Unknown:
    """The receptive field cannot be derived (shown as ``?``)."""


@dataclasses.dataclass(frozen=True)
class Windows:
    """A sliding window per spatial dim.

    >>> Windows((RFWindow(3, 2, 1), RFWindow(3, 2, 1))).windows[0].stride
    2
    """

    windows: tuple[RFWindow, ...]


#: How a layer changes the receptive field.
RFRule = Union[Elementwise, Global, Merge, Windows, Unknown]
ELEMENTWISE, GLOBAL, MERGE, UNKNOWN = Elementwise(), Global(), Merge(), Unknown()


class LayerInfo(NamedTuple):
    """What `jcnn.summary` shows for one leaf layer on one per-example input shape.

    ``flops`` counts a multiply-add as 2 and each bias add as 1 (see `jcnn.summary`); None
    where unknown.

    >>> LayerInfo((4,), 20, 44, rf=GLOBAL).rf
    Global()
    """

    output_shape: Any  # a Shape, or a tuple of Shapes
    params: int
    flops: int | None
    padding: tuple[Pair, ...] | None = None  # concrete (lo, hi) per spatial dim
    warning: str | None = None  # jcnn.shapes.fit_warning's words where input goes unread
    rf: RFRule = UNKNOWN
