"""Receptive fields: how many input pixels one output unit sees, and how far apart units are.

The arithmetic of Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks"
(Distill, 2019), one layer at a time; `jcnn.summary` folds it through a model.
"""

from __future__ import annotations

from typing import NamedTuple

from jcnn.shapes._arith import effective

__all__ = ["ReceptiveField", "receptive_field_step"]


class ReceptiveField(NamedTuple):
    """Receptive field along one spatial dim, in input pixels.

    ``size``: input pixels one output unit sees; ``jump``: input pixels between neighbouring
    output units; ``start``: input coordinate of the centre of the first unit's field (the
    centre of input pixel 0 is 0.0; negative means it is centred in the padding).
    """

    size: float
    jump: float
    start: float


def receptive_field_step(
    rf: ReceptiveField,
    kernel_size: int,
    stride: float = 1,
    pad_lo: float = 0,
    dilation: int = 1,
    *,
    transpose: bool = False,
) -> ReceptiveField:
    """Receptive field after one conv or pooling layer (Araujo et al., Distill 2019).

    ``size += (dilation*(F-1)) * jump``, ``jump *= S``, ``start += ((dilation*(F-1))/2 - lo) * jump``.
    For a transposed conv the stride divides the jump and each output sees
    ``ceil(keff / S)`` inputs.

    >>> rf = ReceptiveField(1, 1, 0.0)
    >>> rf = receptive_field_step(rf, 5, 1, 2); rf = receptive_field_step(rf, 2, 2)
    >>> rf
    ReceptiveField(size=6, jump=2, start=0.5)
    """
    keff = effective(kernel_size, dilation)
    if transpose:
        taps = -(-keff // stride)
        jump = rf.jump / stride
        start = rf.start - ((keff - 1) / 2 - pad_lo) * jump
        return ReceptiveField(rf.size + (taps - 1) * rf.jump, jump, start)
    return ReceptiveField(
        rf.size + (keff - 1) * rf.jump,
        rf.jump * stride,
        rf.start + ((keff - 1) / 2 - pad_lo) * rf.jump,
    )
