"""Tests for jcnn.shapes: the seed's numbers, every padding form, laws checked by brute force,
and PyTorch's ceil_mode rule."""

import functools
import math

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jcnn import shapes
from jcnn.shapes import ShapeError

# --------------------------------------------------------------------------------------------
# Brute-force references: count windows and pixels one by one, no formula.
# --------------------------------------------------------------------------------------------


def brute_window_starts(size, kernel, stride, lo, hi, dilation):
    """Starts (in padded coordinates) of every window that lies entirely in the padded input."""
    padded = size + lo + hi
    starts = []
    start = 0
    while start + dilation * (kernel - 1) < padded:
        starts.append(start)
        start += stride
    return starts


def brute_unused(size, kernel, stride, lo, hi, dilation):
    """Input pixels (not padding) that no tap of any window reads."""
    read = [False] * (size + lo + hi)
    for start in brute_window_starts(size, kernel, stride, lo, hi, dilation):
        for t in range(kernel):
            read[start + t * dilation] = True
    return sum(1 for p in range(lo, lo + size) if not read[p])


def brute_receptive_field(layers):
    """(size, jump, start) of a stack of (kernel, stride, pad_lo, dilation) layers, by tracking the
    first and last input coordinate each of the top layer's first two units depends on."""

    def span(unit):
        lo_idx, hi_idx = unit, unit
        for k, s, p, r in reversed(layers):
            lo_idx = lo_idx * s - p
            hi_idx = hi_idx * s - p + r * (k - 1)
        return lo_idx, hi_idx

    (a0, b0), (a1, _) = span(0), span(1)
    return b0 - a0 + 1, a1 - a0, (a0 + b0) / 2


# --------------------------------------------------------------------------------------------
# The seed's numbers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, kernel, stride, padding, expected",
    [
        (32, 5, 1, 0, 28),  # 32x32x3 image, 5x5x3 filter -> 28x28
        (28, 5, 1, 0, 24),  # ten 5x5x4 filters on 28x28x4 -> 24x24
        (7, 3, 1, 0, 5),
        (7, 3, 2, 0, 3),
        (7, 3, 3, 1, 3),  # zero padding makes stride 3 fit
        (32, 5, 1, 2, 32),  # padding (F-1)/2 keeps the size
        (7, 3, 3, 0, 2),  # frameworks round down
    ],
)
def test_conv_output_size_seed(size, kernel, stride, padding, expected):
    assert shapes.conv_output_size(size, kernel, stride, padding) == expected
    # The seed's formula, where it is a whole number.
    if (size - kernel + 2 * padding) % stride == 0:
        assert expected == (size - kernel + 2 * padding) // stride + 1


def test_seed_conv_output_shape():
    assert shapes.conv_output_shape((32, 32), (5, 5)) == (28, 28)
    assert shapes.conv_output_shape((28, 28), (5, 5)) == (24, 24)
    assert shapes.conv_output_shape((7, 7), (3, 3), 2) == (3, 3)
    assert shapes.conv_output_shape((7, 7), (3, 3), 3, 1) == (3, 3)


def test_explain_fit_stride_3_does_not_fit():
    r = shapes.explain_fit(7, 3, 3)
    assert not r.fits
    assert r.output_size == 2
    assert r.exact_output == pytest.approx(7 / 3)
    assert r.unused == 1  # pixel 6 is never read: windows cover 0-2 and 3-5
    assert "(7 - 3 + 2*0)/3 + 1 = 2.33" in r.message
    assert "not" in r.message
    # The first suggestion is the seed's fix: padding 1 gives 3 outputs.
    assert r.paddings[0] == (1, 3)
    assert "padding 1" in r.message
    assert "(7 - 3 + 2*1)/3 + 1 = 3" in r.message


@pytest.mark.parametrize("stride, out", [(1, 5), (2, 3)])
def test_explain_fit_strides_that_fit(stride, out):
    r = shapes.explain_fit(7, 3, stride)
    assert r.fits and r.output_size == out and r.unused == 0
    assert r.exact_output == out
    assert f"(7 - 3 + 2*0)/{stride} + 1 = {out}" in r.message


def test_explain_fit_padding_1_stride_3_fits():
    r = shapes.explain_fit(7, 3, 3, 1)
    assert r.fits and r.output_size == 3 and r.unused == 0
    assert "(7 - 3 + 2*1)/3 + 1 = 3" in r.message
    assert shapes.conv_output_size(7, 3, 3, 1, exact=True) == 3


def test_exact_raises_with_the_fit_message():
    with pytest.raises(ShapeError) as e:
        shapes.conv_output_size(7, 3, 3, exact=True)
    assert "(7 - 3 + 2*0)/3 + 1 = 2.33" in str(e.value)
    assert str(e.value).endswith(shapes.explain_fit(7, 3, 3).message)
    with pytest.raises(ShapeError, match=r"2\.33"):
        shapes.conv_output_shape((7, 7), (3, 3), 3, exact=True)
    assert shapes.conv_output_shape((7, 7), (3, 3), 2, exact=True) == (3, 3)


def test_seed_parameter_counts():
    assert shapes.conv_params(5, 3, 10) == 760  # ten 5x5x3 filters + 10 biases
    assert shapes.conv_params(5, 3, 10, bias=False) == 750
    assert shapes.conv_params((5, 5), 3, 10) == 760
    assert shapes.conv_params(1, 64, 32) == 64 * 32 + 32  # 1x1 conv: a per-pixel dense layer
    assert shapes.conv_params((3, 3), 8, 4, groups=2) == 9 * 4 * 4 + 4
    assert shapes.conv_params((3, 3), 8, 8, groups=8, bias=False) == 72  # depthwise
    assert shapes.dense_params(32 * 32 * 3, 32 * 32 * 10) == 31_467_520  # "about 31 million"
    assert shapes.dense_params(3, 2, bias=False) == 6


def test_seed_flops():
    # Ten 5x5x3 filters, no padding: 28*28 outputs x 10 filters x 75 multiply-adds.
    assert shapes.conv_flops((28, 28), 5, 3, 10, bias=False) // 2 == 588_000 == 28 * 28 * 10 * 75
    # The same filters with padding 2 keep 32x32 outputs: 768,000 multiply-adds.
    out = shapes.conv_output_shape((32, 32), (5, 5), 1, 2)
    assert out == (32, 32)
    assert shapes.conv_flops(out, 5, 3, 10, bias=False) // 2 == 768_000 == 32 * 32 * 10 * 75
    # Bias adds are 1 FLOP per output; a multiply-add is 2.
    assert shapes.conv_flops((28, 28), 5, 3, 10) == 2 * 588_000 + 28 * 28 * 10
    assert shapes.conv_flops((4, 4), 3, 8, 8, groups=8, bias=False) == 16 * 8 * 2 * 9
    assert shapes.dense_flops(10, 3) == 2 * 30 + 3
    assert shapes.dense_flops(10, 3, bias=False) == 60
    assert shapes.pool_flops((14, 14), (2, 2), 6) == 14 * 14 * 6 * 4


@pytest.mark.parametrize(
    "kernel, cin, cout, groups, match",
    [
        (3, 3, 4, 2, r"input channels \(3\).*`groups` \(2\)"),
        (3, 4, 3, 2, r"out_channels \(3\).*`groups` \(2\)"),
        (3, 4, 4, 0, r"`groups` must be >= 1, got 0"),
        (0, 4, 4, 1, r"kernel_size"),
    ],
)
def test_conv_params_errors(kernel, cin, cout, groups, match):
    with pytest.raises(ShapeError, match=match):
        shapes.conv_params(kernel, cin, cout, groups=groups)


def test_lenet_receptive_field():
    # Conv5 pad2, Pool2, Conv5 pad2, Pool2 (the lecture's LeNet-style stack).
    rf = shapes.ReceptiveField(1, 1, 0.0)
    rf = shapes.receptive_field_step(rf, 5, 1, 2)
    assert (rf.size, rf.jump, rf.start) == (5, 1, 0.0)
    rf = shapes.receptive_field_step(rf, 2, 2)
    assert (rf.size, rf.jump, rf.start) == (6, 2, 0.5)
    rf = shapes.receptive_field_step(rf, 5, 1, 2)
    rf = shapes.receptive_field_step(rf, 2, 2)
    assert (rf.size, rf.jump) == (16, 4)
    assert rf.start == 1.5
    assert brute_receptive_field([(5, 1, 2, 1), (2, 2, 0, 1), (5, 1, 2, 1), (2, 2, 0, 1)]) == (16, 4, 1.5)


# --------------------------------------------------------------------------------------------
# Padding forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "padding, d, expected",
    [
        (0, 2, ((0, 0), (0, 0))),
        (2, 3, ((2, 2),) * 3),
        ((1, 2), 2, ((1, 1), (2, 2))),
        ([1, 2], 2, ((1, 1), (2, 2))),
        (((1, 2), (3, 4)), 2, ((1, 2), (3, 4))),
        ([[1, 2], [3, 4]], 2, ((1, 2), (3, 4))),
        (((0, 5),), 1, ((0, 5),)),
        ((3,), 1, ((3, 3),)),
        ((1, (2, 3)), 2, ((1, 1), (2, 3))),  # ints and pairs mixed
        ("valid", 2, "VALID"),
        ("VALID", 2, "VALID"),
        ("Same", 3, "SAME"),
        ("same_lower", 2, "SAME_LOWER"),
        ("causal", 1, "CAUSAL"),
    ],
)
def test_canonicalize_padding_forms(padding, d, expected):
    assert shapes.canonicalize_padding(padding, d) == expected


def test_canonicalize_padding_numpy_ints():
    np = pytest.importorskip("numpy")
    assert shapes.canonicalize_padding(np.int64(2), 1) == ((2, 2),)
    assert shapes.canonicalize_padding((np.int32(1), (np.int64(0), 2)), 2) == ((1, 1), (0, 2))
    out = shapes.canonicalize_padding(np.int64(2), 1)
    assert type(out[0][0]) is int


ALL_FORMS = r"an int, a tuple of 2 ints, a tuple of 2 \(lo, hi\) pairs, or one of 'VALID', 'SAME', 'SAME_LOWER', 'CAUSAL'"


@pytest.mark.parametrize(
    "padding, error",
    [
        ("full", ValueError),
        ("", ValueError),
        ((1, 2, 3), ShapeError),
        ((1,), ShapeError),
        (((1, 2, 3), (1, 1)), ShapeError),
        (((1,), (1, 1)), ShapeError),
        (1.5, TypeError),
        (None, TypeError),
        (True, TypeError),
        ((1.0, 2), TypeError),
        (((1, 2), ("a", 1)), TypeError),
        ({"lo": 1}, TypeError),
    ],
)
def test_canonicalize_padding_errors_list_every_form(padding, error):
    with pytest.raises(error, match=ALL_FORMS) as e:
        shapes.canonicalize_padding(padding, 2)
    assert "padding" in str(e.value)


@pytest.mark.parametrize("padding", [-1, (1, -2), ((0, -1), (1, 1))])
def test_negative_padding(padding):
    with pytest.raises(ShapeError, match=r"padding must be >= 0.*got"):
        shapes.canonicalize_padding(padding, 2)


def test_causal_needs_1d():
    with pytest.raises(ValueError, match=r"'CAUSAL' is for 1-D.*got 2 spatial dims"):
        shapes.canonicalize_padding("causal", 2)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular", "Reflect", "ZEROS"])
def test_padding_mode(mode):
    assert shapes.canonicalize_padding_mode(mode) == mode.lower()


@pytest.mark.parametrize("mode", ["mirror", "edge", "constant", "", None, 0])
def test_padding_mode_errors(mode):
    with pytest.raises(
        ValueError, match=r"`padding_mode` must be one of 'zeros', 'reflect', 'replicate', 'circular'"
    ):
        shapes.canonicalize_padding_mode(mode)


@pytest.mark.parametrize(
    "padding, size, kernel, stride, dilation, expected",
    [
        ("SAME", 7, 4, 1, 1, (1, 2)),  # total 3: the odd pixel goes high
        ("SAME_LOWER", 7, 4, 1, 1, (2, 1)),
        ("SAME", 7, 3, 1, 1, (1, 1)),
        ("SAME", 7, 3, 2, 1, (1, 1)),  # ceil(7/2) = 4 outputs: (4-1)*2 + 3 - 7 = 2
        ("SAME", 8, 3, 2, 1, (0, 1)),  # 4 outputs: (4-1)*2 + 3 - 8 = 1
        ("SAME_LOWER", 8, 3, 2, 1, (1, 0)),
        ("SAME", 5, 1, 3, 1, (0, 0)),
        ("SAME", 7, 3, 1, 2, (2, 2)),  # effective kernel 5
        ("SAME", 2, 5, 1, 1, (2, 2)),
        ("SAME", 4, 2, 4, 1, (0, 0)),  # total would be negative: clamped to 0
        ("CAUSAL", 7, 3, 1, 1, (2, 0)),
        ("CAUSAL", 7, 3, 1, 3, (6, 0)),
        ("CAUSAL", 7, 4, 2, 1, (3, 0)),
        ("VALID", 7, 3, 2, 2, (0, 0)),
        ("valid", 7, 3, 2, 2, (0, 0)),
    ],
)
def test_resolve_padding_by_hand(padding, size, kernel, stride, dilation, expected):
    assert shapes.resolve_padding(padding, (size,), (kernel,), (stride,), (dilation,)) == (expected,)


@given(
    st.lists(st.integers(1, 20), min_size=1, max_size=3),
    st.data(),
    st.sampled_from(["SAME", "SAME_LOWER", "VALID", "same"]),
)
def test_resolve_padding_matches_lax(sizes, data, name):
    d = len(sizes)
    kernel = data.draw(st.tuples(*[st.integers(1, 7)] * d))
    strides = data.draw(st.tuples(*[st.integers(1, 4)] * d))
    dilation = data.draw(st.tuples(*[st.integers(1, 3)] * d))
    effective = [r * (k - 1) + 1 for k, r in zip(kernel, dilation)]
    expected = jax.lax.padtype_to_pads(sizes, effective, strides, name.upper())
    got = shapes.resolve_padding(name, sizes, kernel, strides, dilation)
    assert got == tuple(tuple(p) for p in expected)
    if name.upper() != "VALID":  # SAME gives ceil(W / S) outputs
        out = shapes.conv_output_shape(sizes, kernel, strides, name, dilation)
        assert out == tuple(-(-w // s) for w, s in zip(sizes, strides))


@given(st.integers(1, 30), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3))
def test_causal_output_keeps_length(size, kernel, stride, dilation):
    # CAUSAL: output t sees only inputs <= t*S; with stride 1 the length is kept.
    ((lo, hi),) = shapes.resolve_padding("CAUSAL", (size,), (kernel,), (stride,), (dilation,))
    assert (lo, hi) == (dilation * (kernel - 1), 0)
    assert shapes.conv_output_size(size, kernel, stride, "causal", dilation) == -(-size // stride)


# --------------------------------------------------------------------------------------------
# Output size laws
# --------------------------------------------------------------------------------------------

sizes = st.integers(1, 30)
kernels = st.integers(1, 7)
strides_ = st.integers(1, 5)
dilations = st.integers(1, 3)
pads = st.integers(0, 6)


@given(sizes, kernels, strides_, pads, pads, dilations)
def test_output_size_is_the_number_of_windows(size, kernel, stride, lo, hi, dilation):
    starts = brute_window_starts(size, kernel, stride, lo, hi, dilation)
    if not starts:
        with pytest.raises(ShapeError, match="larger than the padded input"):
            shapes.conv_output_size(size, kernel, stride, (lo, hi), dilation)
        return
    out = shapes.conv_output_size(size, kernel, stride, (lo, hi), dilation)
    assert out == len(starts)
    assert type(out) is int
    if lo == hi:
        assert shapes.conv_output_size(size, kernel, stride, lo, dilation) == out
        # The seed's formula with dilation folded into the kernel, rounded down.
        keff = dilation * (kernel - 1) + 1
        assert out == math.floor((size - keff + 2 * lo) / stride + 1)


@given(sizes, kernels, strides_, pads, pads, dilations)
def test_explain_fit_laws(size, kernel, stride, lo, hi, dilation):
    starts = brute_window_starts(size, kernel, stride, lo, hi, dilation)
    if not starts:
        with pytest.raises(ShapeError):
            shapes.explain_fit(size, kernel, stride, (lo, hi), dilation)
        return
    r = shapes.explain_fit(size, kernel, stride, (lo, hi), dilation)
    keff = dilation * (kernel - 1) + 1
    assert r.output_size == len(starts)
    assert r.unused == brute_unused(size, kernel, stride, lo, hi, dilation)
    # Fits: the last window ends exactly at the end of the padded input.
    assert r.fits == (starts[-1] + keff == size + lo + hi)
    assert r.exact_output == pytest.approx((size - keff + lo + hi) / stride + 1)
    shown = f"{r.exact_output:.0f}" if r.fits else f"{r.exact_output:.2f}"
    pad_text = f"2*{lo}" if lo == hi else f"{lo} + {hi}"
    assert f"({size} - {keff} + {pad_text})/{stride} + 1 = {shown}" in r.message
    # exact=True: every input pixel read and the last window flush with the end, else the report.
    if r.fits and not r.unused:
        assert shapes.conv_output_size(size, kernel, stride, (lo, hi), dilation, exact=True) == r.output_size
    else:
        with pytest.raises(ShapeError) as e:
            shapes.conv_output_size(size, kernel, stride, (lo, hi), dilation, exact=True)
        assert str(e.value).endswith(r.message)
    if not r.fits:
        assert r.paddings, "a padding that does not fit must come with a suggested fix"
    for padding, out in r.paddings:
        plo, phi = (padding, padding) if isinstance(padding, int) else padding
        fixed = shapes.explain_fit(size, kernel, stride, padding, dilation)
        assert fixed.fits, (padding, fixed.message)
        assert fixed.output_size == out == len(brute_window_starts(size, kernel, stride, plo, phi, dilation))
        if not fixed.unused:
            assert shapes.conv_output_size(size, kernel, stride, padding, dilation, exact=True) == out
        if not r.fits:
            assert f"padding {padding}" in r.message


@given(sizes, kernels, strides_, pads, pads, dilations)
def test_ceil_mode_laws(size, kernel, stride, lo, hi, dilation):
    starts = brute_window_starts(size, kernel, stride, lo, hi, dilation)
    if not starts:
        return
    floor_out = shapes.conv_output_size(size, kernel, stride, (lo, hi), dilation)
    ceil_out = shapes.conv_output_size(size, kernel, stride, (lo, hi), dilation, ceil_mode=True)
    # Rounding up never gives fewer windows than rounding down, and at most one more.
    assert ceil_out - floor_out in (0, 1)
    if ceil_out > floor_out:
        # The extra window starts inside the input or the low padding (PyTorch's rule).
        assert (ceil_out - 1) * stride < size + lo
    fits = shapes.explain_fit(size, kernel, stride, (lo, hi), dilation).fits
    if fits:
        assert ceil_out == floor_out


def torch_pool_size(torch, spatial, kernel, stride, padding, dilation, ceil_mode):
    """PyTorch's max-pool output shape, or the reason it refuses ("padding" or "size")."""
    pool = {1: torch.nn.functional.max_pool1d, 2: torch.nn.functional.max_pool2d}[len(spatial)]
    try:
        x = torch.zeros((1, 1) + tuple(spatial))
        return tuple(pool(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode).shape[2:]), None
    except RuntimeError as e:
        return None, "padding" if "half" in str(e) else "size"


@pytest.mark.parametrize(
    "size, kernel, stride, padding, floor_out",
    [
        (1, 1, 1, (0, 1), 2),  # floor: windows at 0 and 1 (the second reads only padding)
        (5, 2, 2, (0, 3), 4),  # floor: windows at 0, 2, 4, 6
    ],
)
def test_ceil_mode_never_gives_fewer_windows_than_floor(size, kernel, stride, padding, floor_out):
    # ceil_mode may add the one window that the floor division drops, never remove one.
    assert shapes.conv_output_size(size, kernel, stride, padding) == floor_out
    assert shapes.conv_output_size(size, kernel, stride, padding, ceil_mode=True) in (
        floor_out,
        floor_out + 1,
    )


@given(sizes, st.integers(1, 6), strides_, st.integers(0, 4), dilations, st.booleans())
def test_ceil_mode_matches_torch_max_pool1d(size, kernel, stride, padding, dilation, ceil_mode):
    torch = pytest.importorskip("torch")
    expected, refused = torch_pool_size(torch, (size,), kernel, stride, padding, dilation, ceil_mode)
    if refused == "padding":
        return  # PyTorch's padding rule is checked in test_pool_padding_rule_matches_torch
    if refused == "size":
        # torch finds no window: jcnn must refuse too, never return an empty shape.
        with pytest.raises(ShapeError):
            shapes.pool_output_shape((size,), (kernel,), (stride,), padding, dilation, ceil_mode=ceil_mode)
        return
    assert (
        shapes.conv_output_size(size, kernel, stride, padding, dilation, ceil_mode=ceil_mode) == expected[0]
    )
    assert (
        shapes.pool_output_shape((size,), (kernel,), (stride,), padding, dilation, ceil_mode=ceil_mode)
        == expected
    )


@pytest.mark.parametrize(
    "size, kernel, stride, padding, dilation, expected",
    [
        (7, 3, 2, 0, 1, 3),
        (8, 3, 2, 0, 1, 4),  # the last window hangs over the end by one pixel
        (5, 2, 2, 0, 1, 3),
        (5, 2, 2, 1, 1, 3),  # a window that would start in the right padding is dropped
        (6, 3, 3, 1, 1, 3),
        (2, 3, 2, 0, 1, 1),  # one window, hanging over the end: torch pools the 2 pixels
        (2, 4, 3, 0, 1, 1),
        (2, 2, 2, 0, 2, 1),
    ],
)
def test_ceil_mode_by_hand(size, kernel, stride, padding, dilation, expected):
    assert shapes.conv_output_size(size, kernel, stride, padding, dilation, ceil_mode=True) == expected
    torch = pytest.importorskip("torch")
    assert torch_pool_size(torch, (size,), kernel, stride, padding, dilation, True) == ((expected,), None)


@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(0, 2),
    st.booleans(),
)
def test_pool_output_shape_matches_torch_max_pool2d(h, w, kernel, stride, padding, ceil_mode):
    torch = pytest.importorskip("torch")
    expected, refused = torch_pool_size(torch, (h, w), kernel, stride, padding, 1, ceil_mode)
    if refused:
        with pytest.raises(ShapeError):
            shapes.pool_output_shape((h, w), (kernel, kernel), stride, padding, ceil_mode=ceil_mode)
        return
    assert (
        shapes.pool_output_shape((h, w), (kernel, kernel), stride, padding, ceil_mode=ceil_mode) == expected
    )


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("kernel, dilation", [(2, 3), (3, 2), (2, 2), (3, 1), (4, 1)])
def test_pool_padding_rule_matches_torch(dims, kernel, dilation):
    # pool_output_shape documents PyTorch's rule: accept a padding exactly when torch does.
    torch = pytest.importorskip("torch")
    for padding in range(0, kernel * dilation):
        spatial = (16,) * dims
        _, refused = torch_pool_size(torch, spatial, kernel, 1, padding, dilation, False)
        assert refused in (None, "padding")
        if refused:
            with pytest.raises(ShapeError, match="at most half the window"):
                shapes.pool_output_shape(spatial, (kernel,) * dims, 1, padding, dilation)
        else:
            shapes.pool_output_shape(spatial, (kernel,) * dims, 1, padding, dilation)


def test_pool_defaults_strides_to_window():
    assert shapes.pool_output_shape((28, 28), (2, 2)) == (14, 14)
    assert shapes.pool_output_shape((7, 7), (3, 3)) == (2, 2)
    assert shapes.pool_output_shape((7, 7), (3, 3), ceil_mode=True) == (3, 3)
    assert shapes.pool_output_shape((7, 7), (3, 3), 1) == (5, 5)
    with pytest.raises(ShapeError, match="at most half the window"):
        shapes.pool_output_shape((7, 7), (3, 3), 1, 2)


@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 3), st.integers(0, 3), st.integers(1, 3)),
        min_size=1,
        max_size=5,
    )
)
def test_receptive_field_matches_brute_force(layers):
    rf = shapes.ReceptiveField(1, 1, 0.0)
    for k, s, p, r in layers:
        rf = shapes.receptive_field_step(rf, k, s, p, r)
    size, jump, start = brute_receptive_field(layers)
    assert (rf.size, rf.jump) == (size, jump)
    assert rf.start == pytest.approx(start)


# --------------------------------------------------------------------------------------------
# Transposed convolution sizes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, kernel, stride, padding, output_padding, dilation, expected",
    [
        (3, 3, 2, 0, 0, 1, 7),
        (3, 3, 2, 1, 0, 1, 5),
        (3, 3, 2, 1, 1, 1, 6),
        (4, 4, 2, 1, 0, 1, 8),  # the DCGAN upsampling block doubles the size
        (5, 3, 1, 1, 0, 1, 5),
        (5, 3, 1, 0, 0, 2, 9),
        (5, 3, 1, (0, 2), 0, 1, 5),
    ],
)
def test_conv_transpose_output_size(size, kernel, stride, padding, output_padding, dilation, expected):
    assert (
        shapes.conv_transpose_output_size(size, kernel, stride, padding, output_padding, dilation) == expected
    )
    assert shapes.conv_transpose_output_shape(
        (size,), (kernel,), stride, (padding,), output_padding, dilation
    ) == (expected,)


@given(
    st.integers(1, 8),
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(0, 4),
    st.integers(0, 3),
    st.integers(1, 3),
)
def test_conv_transpose_output_shape_matches_torch(size, kernel, stride, padding, output_padding, dilation):
    torch = pytest.importorskip("torch")
    x = torch.zeros(1, 1, size)
    w = torch.zeros(1, 1, kernel)
    try:
        expected = torch.nn.functional.conv_transpose1d(
            x, w, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
        ).shape[-1]
    except RuntimeError:
        with pytest.raises(ShapeError):
            shapes.conv_transpose_output_shape((size,), (kernel,), stride, padding, output_padding, dilation)
        return
    assert shapes.conv_transpose_output_shape(
        (size,), (kernel,), stride, padding, output_padding, dilation
    ) == (expected,)


def test_conv_transpose_output_shape_errors():
    with pytest.raises(ShapeError, match=r"`output_padding` must be smaller than the stride or the dilation"):
        shapes.conv_transpose_output_shape((3,), (3,), 2, 0, 2)
    with pytest.raises(ValueError, match=r"or 'VALID'; got 'same'"):
        shapes.conv_transpose_output_shape((3,), (3,), 2, "same")
    assert shapes.conv_transpose_output_shape((3,), (3,), 2, "valid") == (7,)
    with pytest.raises(ShapeError, match=r"padding \(3, 3\) is too large"):
        shapes.conv_transpose_output_shape((2,), (2,), 1, 3)


def test_conv_transpose_output_shape_rank_mismatch():
    # Like conv_output_shape, a spatial rank that does not match the kernel must be an error,
    # not a silently truncated shape.
    with pytest.raises(ShapeError):
        shapes.conv_output_shape((5, 5, 5), (3, 3))
    with pytest.raises(ShapeError):
        shapes.conv_transpose_output_shape((5, 5, 5), (3, 3))


# --------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(size=0, kernel_size=3), ShapeError, r"input size must be >= 1, got 0"),
        (dict(size=7, kernel_size=0), ShapeError, r"`kernel_size` must be >= 1"),
        (dict(size=7, kernel_size=3, stride=0), ShapeError, r"`stride` must be >= 1, got 0"),
        (dict(size=7, kernel_size=3, dilation=-1), ShapeError, r"`dilation` must be >= 1"),
        (dict(size=7, kernel_size=3, padding=-1), ShapeError, r"padding must be >= 0"),
        (
            dict(size=7, kernel_size=8),
            ShapeError,
            r"kernel of size 8 is larger than the padded input of size 7",
        ),
        (dict(size=7, kernel_size=3, dilation=4), ShapeError, r"dilation 4 makes it 9 wide"),
        (dict(size=7.0, kernel_size=3), TypeError, r"`size` must be an int, got 7.0"),
        (dict(size=7, kernel_size=3, stride=2.0), TypeError, r"`stride` must be an int"),
        (dict(size=7, kernel_size=True), TypeError, r"`kernel_size` must be an int, got the bool True"),
        (dict(size=7, kernel_size=3, padding="full"), ValueError, r"unknown name 'full'"),
        (dict(size=7, kernel_size=3, padding=(1, 2, 3)), ShapeError, r"not a \(lo, hi\) pair"),
    ],
)
def test_conv_output_size_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        shapes.conv_output_size(**kwargs)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (
            ((5, 5), (3, 3)),
            dict(strides=(1, 1, 1)),
            r"`strides` must be an int or a tuple of 2 ints.*length 3",
        ),
        (((5, 5), (3, 3)), dict(strides=(1, 0)), r"every entry of `strides` must be >= 1, got \(1, 0\)"),
        (((5, 5), (3, 3)), dict(dilation=(2,)), r"`dilation` must be an int or a tuple of 2 ints"),
        (((5, 5), (3, 0)), {}, r"every entry of `kernel_size` must be >= 1, got \(3, 0\)"),
        (((5, 5), ()), {}, r"`kernel_size` must have at least one spatial dim"),
        (((5,), (3, 3)), {}, r"the input has 1 spatial dims \(5,\) but the kernel has 2"),
        (((5, 5), (3, 3)), dict(padding="causal"), r"'CAUSAL' is for 1-D"),
    ],
)
def test_conv_output_shape_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shapes.conv_output_shape(*args, **kwargs)


def test_shape_error_is_a_value_error():
    assert issubclass(ShapeError, ValueError)


# --------------------------------------------------------------------------------------------
# Specs: hyperparameters parsed once (issue 9)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def padding_calls(monkeypatch):
    """Every call of `shapes.canonicalize_padding`, the one function that parses padding.

    Before the specs (issue 9) a Conv layer parsed its padding once at construction, 4 more times
    per ``init`` and per ``apply`` and 8 times per ``info``; a MaxPool 5 per ``init``/``apply``;
    a 5-layer net's summary 26 times.
    """
    calls = []
    real = shapes.canonicalize_padding

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    # The module that owns it: every caller in jcnn looks it up there.
    monkeypatch.setattr(shapes.padding, "canonicalize_padding", counted)
    return calls


def _layer_cases():
    from jcnn.layers import AvgPool, Conv, ConvTranspose, MaxPool

    return [
        (lambda: Conv(4, 3, strides=2, padding="same", padding_mode="reflect"), (9, 9, 3)),
        (lambda: Conv(4, (3,), padding=1, exact=True), (8, 3)),
        (lambda: ConvTranspose(4, 3, strides=2, padding=1, output_padding=1), (5, 5, 3)),
        (lambda: MaxPool(3, 2, 1, ceil_mode=True), (8, 8, 3)),
        (lambda: AvgPool(3, 2, "same", count_include_pad=False), (8, 8, 3)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_layers_parse_padding_once_at_construction(case, padding_calls):
    make, shape = _layer_cases()[case]
    layer = make()
    assert len(padding_calls) == 1, padding_calls
    out_shape, params, state = layer.init(jax.random.key(0), shape)
    x = jax.numpy.ones((2,) + shape)
    y, _ = layer.apply(params, state, x, batch_ndim=1)
    y_jit, _ = jax.jit(functools.partial(layer.apply, batch_ndim=1))(params, state, x)
    info = layer.info(shape)
    assert y.shape == y_jit.shape == (2,) + out_shape and info.output_shape == out_shape
    assert len(padding_calls) == 1, padding_calls  # none in init, apply (eager or traced) or info


def test_summary_parses_no_padding(padding_calls):
    from jcnn import summary
    from jcnn.layers import Conv, Dense, Flatten, MaxPool, Relu, serial

    net = serial(Conv(6, 5, padding=2), Relu(), MaxPool(2), Flatten(), Dense(10))
    assert len(padding_calls) == 2  # one per Conv / MaxPool constructor
    table = summary(net, (28, 28, 1))
    assert len(padding_calls) == 2 and "Conv" in str(table)


@pytest.mark.parametrize(
    "call",
    [
        lambda ops, x: ops.conv(x, jax.numpy.ones((3, 3, 3, 2)), padding="same", padding_mode="circular"),
        lambda ops, x: ops.conv_transpose(x, jax.numpy.ones((3, 3, 3, 2)), strides=2, padding=1),
        lambda ops, x: ops.max_pool(x, 3, 2, 1),
        lambda ops, x: ops.min_pool(x, 3, 2, "same"),
        lambda ops, x: ops.avg_pool(x, 3, 1, 1, ceil_mode=True),
        lambda ops, x: ops.lp_pool(x, 2, 2, padding=1),
    ],
)
def test_public_ops_parse_padding_once_per_call(call, padding_calls):
    from jcnn import ops

    x = jax.numpy.ones((2, 6, 6, 3))
    call(ops, x)
    assert len(padding_calls) == 1, padding_calls
    jax.jit(lambda x: call(ops, x))(x)
    assert len(padding_calls) == 2, padding_calls


def test_specs_are_frozen_canonical_values():
    spec = shapes.conv_spec([3, 3], strides=np.int64(2), padding="Same", padding_mode="Reflect")
    assert spec == shapes.ConvSpec((3, 3), (2, 2), "SAME", (1, 1), 1, "reflect", False)
    assert hash(spec) == hash(shapes.conv_spec(3, strides=2, padding="same", padding_mode="reflect"))
    with pytest.raises(AttributeError):
        spec.strides = (1, 1)
    t = shapes.conv_transpose_spec(3, 2, "valid", 1)
    assert t.crop == ((0, 0), (0, 0)) and t.output_padding == (1, 1)
    p = shapes.pool_spec((2, 2), padding=((0, 1), (1, 0)), divisor_override=-3)
    assert p.strides == (2, 2) and p.padding == ((0, 1), (1, 0)) and p.divisor_override == -3
    assert shapes.adaptive_pool_spec((None, 3)).output_size == (None, 3)


def test_geometry_carries_mode_and_names_the_crop():
    g = shapes.conv_geometry(
        shapes.conv_spec(3, padding=1, padding_mode="circular"), (2, 5, 5, 3), (3, 3, 3, 4)
    )
    assert g.padding_mode == "circular" and g.padding == ((1, 1), (1, 1)) and g.out_shape == (2, 5, 5, 4)
    t = shapes.conv_transpose_geometry(shapes.conv_transpose_spec(3, 2, 1, 1), (5, 5, 3), (3, 3, 3, 2))
    assert t.crop == ((1, 1), (1, 1)) and t.output_padding == (1, 1) and t.out_shape == (10, 10, 2)
    # One record for both convs: the transposed one's padding is PyTorch's crop.
    assert isinstance(t, shapes.ConvGeometry) and t.padding == t.crop and g.output_padding == (0, 0)
    # The geometry checks the kernel it is given against the spec's kernel_size.
    with pytest.raises(
        ShapeError, match=r"`kernel` must have shape .*kernel_size \(3, 3\), got shape \(5, 5, 3, 4\)"
    ):
        shapes.conv_geometry(shapes.conv_spec(3), (8, 8, 3), (5, 5, 3, 4))


def test_exact_uses_the_fit_rule_in_the_geometry():
    spec = shapes.conv_spec(3, strides=3, exact=True)
    with pytest.raises(
        ShapeError, match=r"spatial dim 1 of input shape \(9, 7, 1\): exact=True, but .*2\.33"
    ):
        shapes.conv_geometry(spec, (9, 7, 1), (3, 3, 1, 1))
    assert shapes.conv_geometry(spec, (9, 9, 1), (3, 3, 1, 1)).out_spatial == (3, 3)
