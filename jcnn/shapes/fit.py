"""The fit explainer: whether a stride tiles an input, in the lecture's arithmetic and in words.

The lecture asks that ``(W - F + 2P)/S + 1`` be a whole number; `explain_fit` says whether it is,
which input pixels no window reads, and which nearby paddings fit. `fit_warning` is the
summary's warning: it speaks only of input that goes unread by accident, the pixels at the end
that the next window would have read. Pixels that a stride larger than the window skips between
windows (a 1x1 stride-2 shortcut conv) are skipped on purpose and never warned about.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from jcnn import checks
from jcnn.checks import ShapeError
from jcnn.shapes._arith import Pair, effective, output_size, read_pixels
from jcnn.shapes.padding import _one_dim
from jcnn.shapes.specs import canonicalize_ints, canonicalize_window

__all__ = ["FitReport", "explain_fit", "fit_warning"]


class FitReport(NamedTuple):
    """Whether a window and stride tile a padded input exactly, in numbers and in words.

    Attributes:
      fits: the last window ends exactly at the padded input's end.
      output_size: the floor rule's output length, what every framework gives.
      exact_output: the seed's ``(W - F + lo + hi)/S + 1`` before rounding.
      unused: input pixels (not padding) that no window reads.
      paddings: nearby paddings that fit, each with its output length.
      message: all of it in plain words.
    """

    fits: bool
    output_size: int
    exact_output: float
    unused: int
    paddings: tuple[tuple[int | Pair, int], ...]
    message: str


def _arith(w: int, keff: int, lo: int, hi: int, s: int) -> str:
    pad = f"2*{lo}" if lo == hi else f"{lo} + {hi}"
    return f"({w} - {keff} + {pad})/{s} + 1"


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x == int(x) else f"{x:.2f}"


def _explain(w: int, k: int, s: int, lo: int, hi: int, r: int, unread: str | None = None) -> FitReport:
    """`explain_fit` on canonical ints; ``unread`` replaces the words for the unread pixels."""
    keff = effective(k, r)
    out = output_size(w, k, s, lo, hi, r, where="explain_fit")
    exact_out = (w - keff + lo + hi) / s + 1
    unused = w - len(read_pixels(w, k, s, lo, r, range(out)))
    tail = (w + lo + hi - keff) % s
    fits = tail == 0

    suggestions: list[tuple[int | Pair, int]] = []
    for p in range(0, keff):  # padding >= the window would add windows that read only padding
        if (w + 2 * p - keff) % s == 0 and w + 2 * p >= keff and (p, p) != (lo, hi):
            suggestions.append((p, (w + 2 * p - keff) // s + 1))
        if len(suggestions) == 2:
            break
    if not suggestions:  # no symmetric padding fits: offer the smallest one-sided extra
        extra = (s - tail) % s
        suggestions.append(((lo, hi + extra), (w + lo + hi + extra - keff) // s + 1))

    kname = f"{k}-wide kernel" + (f" (dilation {r}: {keff} wide)" if r > 1 else "")
    pad_words = f"padding {lo}" if lo == hi else f"padding ({lo}, {hi})"
    arith = f"{_arith(w, keff, lo, hi, s)} = {_fmt(exact_out)}"
    if fits:
        msg = f"stride {s} fits a {w}-wide input with a {kname} and {pad_words}: {arith}, so {out} outputs"
        msg += f"; {unused} input pixel(s) fall between windows and are never read." if unused else "."
    else:
        sug = []
        for p, o in suggestions:
            plo, phi = (p, p) if isinstance(p, int) else p
            sug.append(f"padding {p} gives {_arith(w, keff, plo, phi, s)} = {o} outputs")
        msg = (
            f"stride {s} does not fit a {w}-wide input with a {kname} and {pad_words}:"
            f" {arith} is not a whole number, so frameworks round down to {out} outputs and"
            f" {unread or f'{unused} input pixel(s) are'} never read. Fix: " + "; or ".join(sug) + "."
        )
    return FitReport(fits, out, exact_out, unused, tuple(suggestions), msg)


def _check_exact(w: int, k: int, s: int, lo: int, hi: int, r: int, where: str, label: str = "") -> None:
    """``exact=True``'s rule: the windows end at the padded input's end and read every pixel."""
    report = _explain(w, k, s, lo, hi, r)
    if not report.fits or report.unused:
        raise ShapeError(f"{where}: {label + ': ' if label else ''}exact=True, but {report.message}")


def explain_fit(size: int, kernel_size: int, stride: int = 1, padding=0, dilation: int = 1) -> FitReport:
    """Explain, with the seed's arithmetic, whether a stride fits an input.

    Args:
      size: the input length ``W``.
      kernel_size: the window length ``F``.
      stride: ``S``.
      padding: an int (both sides), a ``(lo, hi)`` pair, or a padding name.
      dilation: spacing between window taps.

    Returns:
      A `FitReport`; its ``message`` shows the arithmetic, e.g. ``(7 - 3 + 2*0)/3 + 1 = 2.33``.

    Raises:
      ShapeError: the window is larger than the padded input, or a size is not >= 1.

    >>> r = explain_fit(7, 3, 3)
    >>> r.fits, r.output_size, r.unused
    (False, 2, 1)
    >>> "(7 - 3 + 2*0)/3 + 1 = 2.33" in r.message
    True
    """
    where = "explain_fit"
    w = checks.as_int(size, where, "size", minimum=1)
    (k,) = canonicalize_window((kernel_size,), where)
    (s,) = canonicalize_ints(stride, 1, where, "stride")
    (r,) = canonicalize_ints(dilation, 1, where, "dilation")
    lo, hi = _one_dim(padding, w, k, s, r, where)
    return _explain(w, k, s, lo, hi, r)


def _unread_at_end(w: int, k: int, s: int, lo: int, r: int, out: int) -> int:
    """Input pixels the ``out`` windows leave unread although the stride's pattern would read them.

    The pattern is the windows continued past the last one; a pixel it skips (between windows
    when the stride exceeds the window, or between the taps of a dilated one) is skipped on
    purpose. What is left is the input the windows stop short of at the end.
    """
    read = read_pixels(w, k, s, lo, r, range(out))
    pattern = read_pixels(w, k, s, lo, r, range(out + -(-w // s) + 1))
    return len(pattern - read)


def fit_warning(
    in_spatial: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[Pair],
    dilation: Sequence[int],
    out_spatial: Sequence[int] | None = None,
) -> str | None:
    """The summary's warning for the spatial dims whose last input pixels no window reads, or None.

    Only input that goes unread by accident is reported: the pixels at the end that the next
    window would have read, had the stride fit. A stride larger than the window skips pixels
    between windows on purpose (a 1x1 stride-2 shortcut reads every pixel it covers), so that
    alone is never a warning. The words are `explain_fit`'s, with its fix.

    Args:
      in_spatial, kernel_size, strides, dilation: a geometry's canonical values per spatial dim.
      pads: concrete ``(lo, hi)`` pairs.
      out_spatial: the output lengths when they are not the floor rule's (``ceil_mode``).

    Returns:
      One sentence per group of dims with the same words, or None when nothing goes unread.

    >>> fit_warning((7, 9), (3, 3), (3, 3), ((0, 0), (0, 0)), (1, 1))[:40]
    'spatial dim 0: stride 3 does not fit a 7'
    >>> fit_warning((56, 56), (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)) is None   # ResNet's shortcut
    True
    """
    by_message: dict[str, list[int]] = {}
    for i, (w, k, s, (lo, hi), r) in enumerate(zip(in_spatial, kernel_size, strides, pads, dilation)):
        out = output_size(w, k, s, lo, hi, r, where="fit_warning") if out_spatial is None else out_spatial[i]
        missed = _unread_at_end(w, k, s, lo, r, out)
        if missed:
            report = _explain(w, k, s, lo, hi, r, unread=f"the last {missed} input pixel(s) are")
            by_message.setdefault(report.message, []).append(i)
    notes = [
        f"spatial dim{'s' if len(dims) > 1 else ''} {', '.join(map(str, dims))}: {message}"
        for message, dims in by_message.items()
    ]
    return " ".join(notes) if notes else None
