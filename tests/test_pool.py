"""Tests for jcnn.ops.pool: shape agreement, PyTorch as the float64 oracle (plus a brute-force
reference for the padding forms PyTorch lacks), golden values, gradients, jit/vmap, errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jcnn import shapes
from jcnn.ops import (
    adaptive_avg_pool,
    adaptive_max_pool,
    avg_pool,
    global_avg_pool,
    global_max_pool,
    lp_pool,
    max_pool,
    min_pool,
)
from jcnn.shapes import ShapeError

# Oracle bookkeeping: how many comparisons against PyTorch ran, and the largest difference.
ORACLE = {"cases": 0, "max_err": 0.0}
RTOL = ATOL = 1e-10  # float64 against float64: anything bigger is a semantic difference

WINDOWED = {"max": max_pool, "min": min_pool, "avg": avg_pool, "lp": lp_pool}
WHERE = {
    max_pool: "max_pool",
    min_pool: "min_pool",
    avg_pool: "avg_pool",
    lp_pool: "lp_pool",
    global_avg_pool: "global_avg_pool",
    global_max_pool: "global_max_pool",
    adaptive_avg_pool: "adaptive_avg_pool",
    adaptive_max_pool: "adaptive_max_pool",
}


@pytest.fixture(scope="module", autouse=True)
def _oracle_summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and ORACLE["cases"]:
        reporter.write_line(
            f"test_pool: {ORACLE['cases']} PyTorch oracle comparisons, max |error| {ORACLE['max_err']:.3g}"
        )


def distinct(shape, seed=0, positive=False):
    """Float64 values with no ties (a scaled permutation), so max-pool gradients are defined."""
    rng = np.random.default_rng(seed)
    values = rng.permutation(math.prod(shape)).reshape(shape) / math.prod(shape)
    values = values + 0.1 if positive else 2 * values - 1 + 0.5 / math.prod(shape)
    return values + 0.01 * rng.standard_normal(shape) / math.prod(shape)


# --------------------------------------------------------------------------------------------
# Oracles: PyTorch (NCHW, symmetric padding) and a brute-force reference (any (lo, hi) padding)
# --------------------------------------------------------------------------------------------


def torch_pool(
    kind,
    x,
    window,
    strides=None,
    padding=0,
    *,
    dilation=1,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
    p=None,
):
    """PyTorch's pooling on a channels-last float64 numpy array; axes move here, in the test."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    d = len(window)
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    if kind in ("max", "min"):
        sign = -1 if kind == "min" else 1
        y = sign * getattr(F, f"max_pool{d}d")(sign * t, window, strides, padding, dilation, ceil_mode)
    elif kind == "avg":
        if d == 1:  # avg_pool1d has no divisor_override: the same pool on a (1, w) image
            pad = (0,) + (tuple(padding) if isinstance(padding, tuple) else (padding,))
            y = F.avg_pool2d(
                t[:, :, None],
                (1,) + tuple(window),
                None if strides is None else (1,) + tuple(strides),
                pad,
                ceil_mode,
                count_include_pad,
                divisor_override,
            )[:, :, 0]
        else:
            y = getattr(F, f"avg_pool{d}d")(
                t, window, strides, padding, ceil_mode, count_include_pad, divisor_override
            )
    elif kind == "lp":
        assert padding == 0, "PyTorch's LPPool has no padding"
        if d == 1:  # lp_pool1d multiplies by kernel_size, so it must be an int
            window, strides = window[0], None if strides is None else strides[0]
        y = getattr(F, f"lp_pool{d}d")(t, p, window, strides, ceil_mode)
    else:
        raise AssertionError(kind)
    return np.moveaxis(y.numpy(), 1, -1)


def torch_adaptive(kind, x, output_size):
    torch = pytest.importorskip("torch")
    d = len(output_size)
    if d == 1:  # the 1-D pools take no None; it means the input's size there too
        output_size = tuple(x.shape[1] if o is None else o for o in output_size)
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    y = getattr(torch.nn.functional, f"adaptive_{kind}_pool{d}d")(t, output_size)
    return np.moveaxis(y.numpy(), 1, -1)


def check_oracle(actual, expected, *, nan_ok=False):
    """Compare with the float64 oracle to RTOL/ATOL; count the case and track the max error."""
    actual = np.asarray(actual)
    assert actual.dtype == np.float64
    assert actual.shape == expected.shape
    assert actual.size > 0
    if not nan_ok:
        assert not np.isnan(actual).any()
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, equal_nan=nan_ok)
    finite = np.isfinite(expected)
    err = float(np.max(np.abs(actual[finite] - expected[finite]), initial=0.0))
    ORACLE["cases"] += 1
    ORACLE["max_err"] = max(ORACLE["max_err"], err)


def oracle_or_both_refuse(torch_call, jcnn_call, *, nan_ok=False):
    """Compare with PyTorch, or, where PyTorch refuses the config, check jcnn refuses it too."""
    try:
        expected = torch_call()
    except RuntimeError:
        with pytest.raises(ShapeError):
            jcnn_call()
        return
    check_oracle(jcnn_call(), expected, nan_ok=nan_ok)


def ref_windows(w, k, s, lo, hi, r, ceil_mode):
    """Window starts along one dim, in input coordinates, straight from the definition: a window
    fits if it ends inside the padded input; in ceil mode one that overhangs by less than a stride
    also counts, provided it starts inside the input or its low padding."""
    keff = r * (k - 1) + 1
    starts, i = [], 0
    while True:
        a = i * s - lo
        overhang = a + keff - (w + hi)
        if overhang <= 0 or (ceil_mode and overhang < s and a < w):
            starts.append(a)
            i += 1
        else:
            return starts


def ref_pool(
    kind, x, window, strides, pads, dilation, ceil_mode, count_include_pad=True, divisor_override=None, p=None
):
    """Brute-force pooling of (n, *spatial, c): loops over outputs and taps; (lo, hi) padding."""
    d = len(window)
    spatial = x.shape[1:-1]
    starts = [
        ref_windows(w, k, s, lo, hi, r, ceil_mode)
        for w, k, s, (lo, hi), r in zip(spatial, window, strides, pads, dilation)
    ]
    out = np.zeros((x.shape[0], *map(len, starts), x.shape[-1]))
    for o in itertools.product(*(range(len(a)) for a in starts)):
        real, in_padded = [], 0
        for t in itertools.product(*(range(k) for k in window)):
            pos = [starts[j][o[j]] + t[j] * dilation[j] for j in range(d)]
            if all(0 <= q < w for q, w in zip(pos, spatial)):
                real.append(x[(slice(None), *pos, slice(None))])
                in_padded += 1
            elif all(-lo <= q < w + hi for q, w, (lo, hi) in zip(pos, spatial, pads)):
                in_padded += 1
        if not real:  # only a dilated max/min window can miss every input pixel
            value = np.full((x.shape[0], x.shape[-1]), -np.inf if kind == "max" else np.inf)
            assert kind in ("max", "min")
        elif kind == "max":
            value = np.max(real, axis=0)
        elif kind == "min":
            value = np.min(real, axis=0)
        elif kind == "avg":
            divisor = divisor_override or (in_padded if count_include_pad else len(real))
            value = np.sum(real, axis=0) / divisor
        else:
            value = np.sum(np.power(real, p), axis=0) * math.prod(window) / in_padded
            value = value ** (1 / p)
        out[(slice(None), *o, slice(None))] = value
    return out


# --------------------------------------------------------------------------------------------
# 1. Shape agreement: shapes.pool_output_shape == output shape == jax.eval_shape
# --------------------------------------------------------------------------------------------

SHAPE_CASES = [
    # (spatial, window, strides, padding, dilation, ceil_mode)
    ((9,), (3,), None, 0, 1, False),
    ((9,), (3,), 2, 1, 2, True),
    ((8,), (2,), 3, "SAME", 1, False),
    ((8,), (2,), 1, "CAUSAL", 1, False),
    ((7,), (4,), (3,), ((1, 2),), 1, True),
    ((7, 5), 2, None, 0, 1, True),
    ((7, 5), (3, 2), (2, 1), ((1, 0), (0, 1)), (1, 2), False),
    ((7, 5), (3, 3), 2, "same", 1, True),
    ((7, 5), (3, 3), 2, "SAME_LOWER", (2, 1), False),
    ((7, 5), (3, 3), 3, "VALID", 1, True),
    ((2, 2), (3, 3), 3, 0, 1, True),  # ceil mode: the only window overhangs (PyTorch gives 1x1)
    ((5, 6, 4), (2, 3, 2), (1, 2, 3), (1, 1, 0), 1, True),
    ((5, 6, 4), (3, 2, 2), None, "SAME", (1, 2, 1), False),
]


@pytest.mark.parametrize("spatial, window, strides, padding, dilation, ceil_mode", SHAPE_CASES)
@pytest.mark.parametrize("kind", ["max", "avg", "lp"])  # min_pool shares max_pool's geometry
def test_shape_agreement(kind, spatial, window, strides, padding, dilation, ceil_mode):
    if kind in ("avg", "lp") and dilation != 1:
        dilation = 1  # average pools have no dilation: the same case without it
    window_t = shapes.canonicalize_window(window)
    expected = shapes.pool_output_shape(spatial, window_t, strides, padding, dilation, ceil_mode=ceil_mode)
    kwargs = {"ceil_mode": ceil_mode} | ({"dilation": dilation} if kind in ("max", "min") else {})
    args = (2.0,) if kind == "lp" else ()

    def f(x):
        return WINDOWED[kind](x, *args, window, strides, padding, **kwargs)

    x = jnp.asarray(distinct((2, *spatial, 3), positive=True))
    if kind == "max":  # avg and lp outputs are shape-checked against torch below
        assert f(x).shape == (2, *expected, 3)
    assert jax.eval_shape(f, x).shape == (2, *expected, 3)
    spec = shapes.pool_spec(window, strides, padding, dilation, ceil_mode=ceil_mode)
    geometry = shapes.pool_geometry(spec, x.shape)
    assert geometry.out_shape == (2, *expected, 3)


@given(
    st.integers(1, 3).flatmap(
        lambda d: st.tuples(
            st.tuples(*[st.integers(1, 7)] * d),
            st.tuples(*[st.integers(1, 4)] * d),
            st.one_of(st.none(), st.tuples(*[st.integers(1, 3)] * d)),
            st.one_of(
                st.sampled_from(["VALID", "SAME", "SAME_LOWER"]),
                st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2))] * d),
            ),
            st.tuples(*[st.integers(1, 3)] * d),
            st.booleans(),
        )
    )
)
def test_shape_agreement_random(config):
    spatial, window, strides, padding, dilation, ceil_mode = config
    x = jax.ShapeDtypeStruct((1, *spatial, 2), jnp.float32)
    try:
        expected = shapes.pool_output_shape(spatial, window, strides, padding, dilation, ceil_mode=ceil_mode)
    except ShapeError as e:
        with pytest.raises(ShapeError) as caught:
            jax.eval_shape(
                lambda x: max_pool(x, window, strides, padding, dilation=dilation, ceil_mode=ceil_mode), x
            )
        assert str(caught.value) == str(e).replace("pool:", "max_pool:", 1)
        return
    out = jax.eval_shape(
        lambda x: max_pool(x, window, strides, padding, dilation=dilation, ceil_mode=ceil_mode), x
    )
    assert out.shape == (1, *expected, 2)
    if all(r == 1 for r in dilation):
        out = jax.eval_shape(lambda x: avg_pool(x, window, strides, padding, ceil_mode=ceil_mode), x)
        assert out.shape == (1, *expected, 2)


@pytest.mark.parametrize("output_size", [(3,), (7,), (1, 1), (4, None), 3, (2, 3, 4), (None, 1, 9)])
@pytest.mark.parametrize("pool", [adaptive_avg_pool, adaptive_max_pool])
def test_adaptive_shape_agreement(pool, output_size):
    d = 2 if isinstance(output_size, int) else len(output_size)
    spatial = (5, 6, 4)[:d]
    expected = shapes.adaptive_output_shape(spatial, output_size)
    x = jnp.asarray(distinct((2, *spatial, 3)))
    assert jax.eval_shape(lambda x: pool(x, output_size), x).shape == (2, *expected, 3)


# --------------------------------------------------------------------------------------------
# 2. PyTorch oracle, float64
# --------------------------------------------------------------------------------------------

# (spatial, window, strides, padding, dilation) per d; every case also runs with ceil_mode.
TORCH_CASES = {
    1: [
        ((9,), (3,), None, 0, 1),
        ((9,), (3,), (2,), (1,), 2),
        ((8,), (4,), (3,), (2,), 1),
        ((5,), (2,), (2,), (1,), 3),
        ((6,), (1,), (2,), 0, 1),
    ],
    2: [
        ((7, 6), (2, 2), None, 0, 1),
        ((7, 6), (3, 2), (2, 1), (1, 1), 1),
        ((7, 6), (3, 3), (2, 3), (1, 0), (2, 1)),
        ((5, 5), (4, 3), (3, 2), (2, 1), 1),
        ((2, 3), (3, 3), (3, 3), 0, 1),
    ],
    3: [((5, 4, 6), (2, 2, 3), None, 0, 1), ((5, 4, 6), (3, 2, 2), (2, 1, 3), (1, 1, 0), (1, 2, 1))],
}
TORCH_PARAMS = [(d, *case) for d, cases in TORCH_CASES.items() for case in cases]


@pytest.mark.parametrize(
    "kind, ceil_mode, d, spatial, window, strides, padding, dilation",
    [("max", ceil, *case) for case in TORCH_PARAMS for ceil in (False, True)]
    + [("min", True, *case) for case in (TORCH_PARAMS[1], TORCH_PARAMS[7], TORCH_PARAMS[-1])],
)
def test_max_min_pool_match_torch(kind, d, spatial, window, strides, padding, dilation, ceil_mode, x64):
    x = distinct((2, *spatial, 3), seed=d)
    oracle_or_both_refuse(
        lambda: torch_pool(kind, x, window, strides, padding, dilation=dilation, ceil_mode=ceil_mode),
        lambda: WINDOWED[kind](
            jnp.asarray(x), window, strides, padding, dilation=dilation, ceil_mode=ceil_mode
        ),
    )


@pytest.mark.parametrize(
    "count_include_pad, divisor_override", [(True, None), (False, None), (True, 3), (False, -2)]
)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize(
    "d, spatial, window, strides, padding, dilation", [c for c in TORCH_PARAMS if c[-1] == 1]
)
def test_avg_pool_matches_torch(
    d, spatial, window, strides, padding, dilation, ceil_mode, count_include_pad, divisor_override, x64
):
    x = distinct((2, *spatial, 3), seed=d)
    oracle_or_both_refuse(
        lambda: torch_pool(
            "avg",
            x,
            window,
            strides,
            padding,
            ceil_mode=ceil_mode,
            count_include_pad=count_include_pad,
            divisor_override=divisor_override,
        ),
        lambda: avg_pool(
            jnp.asarray(x),
            window,
            strides,
            padding,
            ceil_mode=ceil_mode,
            count_include_pad=count_include_pad,
            divisor_override=divisor_override,
        ),
    )


@pytest.mark.parametrize("p", [1, 2, 1.5, math.inf])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize(
    "spatial, window, strides",
    [((8,), (3,), (2,)), ((2,), (4,), (3,)), ((7, 6), (3, 2), (2, 3)), ((5, 4, 3), (2, 2, 2), None)],
)
def test_lp_pool_matches_torch(spatial, window, strides, ceil_mode, p, x64):
    # Positive inputs: sums of x**p stay positive, so every p gives a number.
    x = distinct((2, *spatial, 3), seed=len(spatial), positive=True)
    oracle_or_both_refuse(
        lambda: torch_pool("lp", x, window, strides, ceil_mode=ceil_mode, p=p),
        lambda: lp_pool(jnp.asarray(x), p, window, strides, ceil_mode=ceil_mode),
    )


@pytest.mark.parametrize("p", [1, 2, 3, 1.5, math.inf])
def test_lp_pool_signed_inputs_match_torch(p, x64):
    # Odd or fractional p: negative sums give nan exactly where PyTorch's pow does (p=1 and
    # p=inf never do: x**1 keeps the sign, inf is max |x|).
    x = distinct((2, 7, 6, 3), seed=5)
    expected = torch_pool("lp", x, (2, 3), (2, 2), ceil_mode=True, p=p)
    assert np.isnan(expected).any() == (p in (3, 1.5))
    check_oracle(lp_pool(jnp.asarray(x), p, (2, 3), (2, 2), ceil_mode=True), expected, nan_ok=True)


@pytest.mark.parametrize(
    "spatial, output_size",
    [
        ((7,), (3,)),
        ((6,), (4,)),
        ((3,), (7,)),  # evenly strided, varying windows, larger than input
        ((7, 6), (3, 4)),
        ((7, 6), (1, 1)),
        ((4, 5), (9, 2)),
        ((7, 6), (None, 4)),
        ((5, 4, 6), (2, 3, 4)),
        ((3, 2, 2), (1, 5, None)),
    ],
)
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pools_match_torch(kind, spatial, output_size, x64):
    x = distinct((2, *spatial, 3), seed=len(spatial))
    pool = adaptive_avg_pool if kind == "avg" else adaptive_max_pool
    check_oracle(pool(jnp.asarray(x), output_size), torch_adaptive(kind, x, output_size))


def test_adaptive_int_output_size_is_square_2d(x64):
    x = distinct((2, 7, 6, 3))
    check_oracle(adaptive_avg_pool(jnp.asarray(x), 4), torch_adaptive("avg", x, (4, 4)))


@pytest.mark.parametrize("spatial", [(5,), (4, 3), (3, 2, 4)])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_global_pools_match_torch(kind, spatial, x64):
    x = distinct((2, *spatial, 3), seed=len(spatial))
    pool = global_avg_pool if kind == "avg" else global_max_pool
    expected = torch_adaptive(kind, x, (1,) * len(spatial)).reshape(2, 3)
    check_oracle(pool(jnp.asarray(x), spatial_dims=len(spatial)), expected)


def _draw_window_config(draw, d, kind):
    ints = lambda lo, hi: st.tuples(*[st.integers(lo, hi)] * d)  # noqa: E731
    window = draw(ints(0, 4))
    strides = draw(st.one_of(st.none(), ints(0, 3)))
    padding = draw(st.one_of(st.integers(-1, 2), ints(0, 2))) if kind != "lp" else 0
    dilation = draw(st.one_of(st.just(1), ints(0, 3))) if kind in ("max", "min") else 1
    return window, strides, padding, dilation


@given(st.data())
@settings(max_examples=50)
def test_random_configs_match_torch_or_raise(data):
    """Every config (many invalid): jcnn == torch, or both refuse and jcnn says so in its words."""
    with jax.enable_x64(True):  # a float64 oracle
        pytest.importorskip("torch")
        kind = data.draw(st.sampled_from(["max", "min", "avg", "lp"]))
        d = data.draw(st.integers(1, 3))
        spatial = data.draw(st.tuples(*[st.integers(1, 6)] * d))
        window, strides, padding, dilation = _draw_window_config(data.draw, d, kind)
        ceil_mode = data.draw(st.booleans())
        kwargs, torch_kwargs, args = {"ceil_mode": ceil_mode}, {"ceil_mode": ceil_mode}, ()
        if kind in ("max", "min"):
            kwargs["dilation"] = torch_kwargs["dilation"] = dilation
        elif kind == "avg":
            kwargs["count_include_pad"] = data.draw(st.booleans())
            kwargs["divisor_override"] = data.draw(st.sampled_from([None, None, 0, 3, -2]))
            torch_kwargs |= {k: kwargs[k] for k in ("count_include_pad", "divisor_override")}
        else:
            torch_kwargs["p"] = data.draw(st.sampled_from([1, 2, 3, 1.5]))
            args = (torch_kwargs["p"],)
        x = distinct((2, *spatial, 2), seed=sum(spatial), positive=kind == "lp")

        try:
            expected, torch_error = torch_pool(kind, x, window, strides, padding, **torch_kwargs), None
        except (RuntimeError, ValueError, TypeError, ZeroDivisionError) as e:
            expected, torch_error = None, e
        try:
            actual, error = WINDOWED[kind](jnp.asarray(x), *args, window, strides, padding, **kwargs), None
        except (ValueError, TypeError) as e:
            actual, error = None, e

        if error is not None:
            assert str(error).startswith(f"{WHERE[WINDOWED[kind]]}: "), error  # ours, not XLA's
            assert torch_error is not None, f"torch accepts what jcnn refuses: {error}"
            return
        if torch_error is not None:  # jcnn accepts what torch refuses: only one known case
            # torch's 3-D average kernels refuse an input smaller than the window even where
            # padding or ceil_mode make it fit (its 1-D and 2-D ones, and max_pool3d, accept).
            assert "smaller than kernel size" in str(torch_error), torch_error
            assert kind in ("avg", "lp") and d == 3
            assert any(w < k for w, k in zip(spatial, window))
            return
        check_oracle(actual, expected)


@given(st.data())
@settings(max_examples=25)
def test_random_adaptive_match_torch_or_raise(data):
    with jax.enable_x64(True):  # a float64 oracle
        d = data.draw(st.integers(1, 3))
        spatial = data.draw(st.tuples(*[st.integers(1, 6)] * d))
        output_size = data.draw(st.tuples(*[st.one_of(st.none(), st.integers(0, 8))] * d))
        kind = data.draw(st.sampled_from(["avg", "max"]))
        x = distinct((2, *spatial, 2), seed=sum(spatial))
        pool = adaptive_avg_pool if kind == "avg" else adaptive_max_pool
        if 0 in output_size:  # PyTorch returns an empty array; jcnn refuses (never an empty array)
            with pytest.raises(ShapeError, match="`output_size` must be >= 1"):
                pool(jnp.asarray(x), output_size)
            return
        check_oracle(pool(jnp.asarray(x), output_size), torch_adaptive(kind, x, output_size))


# The brute-force reference covers what PyTorch cannot express: (lo, hi) pairs and names.
REF_CASES = [
    # (spatial, window, strides, padding, dilation)
    ((7,), (3,), (1,), "SAME", (2,)),
    ((8,), (2,), (3,), "CAUSAL", (1,)),
    ((6, 5), (3, 2), (2, 2), ((1, 0), (0, 1)), (1, 1)),
    ((6, 5), (3, 3), (2, 3), "SAME", (1, 1)),
    ((6, 5), (2, 3), (1, 2), "same_lower", (2, 1)),
    ((4, 5, 3), (2, 3, 2), (2, 2, 1), ((1, 0), (1, 1), (0, 1)), (1, 1, 1)),
]


def test_reference_matches_torch():
    # The brute-force reference is itself checked against PyTorch on symmetric padding.
    x = distinct((2, 7, 6, 3))
    for ceil_mode in (False, True):
        for dilation in ((1, 1), (2, 1)):
            for kind in ("max", "min"):
                expected = torch_pool(kind, x, (3, 2), (2, 2), (1, 1), dilation=dilation, ceil_mode=ceil_mode)
                ref = ref_pool(kind, x, (3, 2), (2, 2), ((1, 1), (1, 1)), dilation, ceil_mode)
                np.testing.assert_allclose(ref, expected, rtol=RTOL, atol=ATOL)
        for cip, override in ((True, None), (False, None), (True, 5)):
            expected = torch_pool(
                "avg",
                x,
                (3, 2),
                (2, 2),
                (1, 0),
                ceil_mode=ceil_mode,
                count_include_pad=cip,
                divisor_override=override,
            )
            ref = ref_pool("avg", x, (3, 2), (2, 2), ((1, 1), (0, 0)), (1, 1), ceil_mode, cip, override)
            np.testing.assert_allclose(ref, expected, rtol=RTOL, atol=ATOL)
        expected = torch_pool("lp", np.abs(x), (3, 2), (2, 2), ceil_mode=ceil_mode, p=3)
        ref = ref_pool("lp", np.abs(x), (3, 2), (2, 2), ((0, 0), (0, 0)), (1, 1), ceil_mode, p=3)
        np.testing.assert_allclose(ref, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("spatial, window, strides, padding, dilation", REF_CASES)
def test_padding_forms_match_reference(spatial, window, strides, padding, dilation, ceil_mode, x64):
    x = distinct((2, *spatial, 2), seed=3)
    pads = shapes.resolve_padding(padding, spatial, window, strides, dilation)
    xj = jnp.asarray(x)
    expected = ref_pool("max", x, window, strides, pads, dilation, ceil_mode)
    actual = max_pool(xj, window, strides, padding, dilation=dilation, ceil_mode=ceil_mode)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    if any(r != 1 for r in dilation):
        return
    ones = (1,) * len(window)
    for cip, override in [(True, None), (False, None)]:
        expected = ref_pool("avg", x, window, strides, pads, ones, ceil_mode, cip, override)
        actual = avg_pool(
            xj,
            window,
            strides,
            padding,
            ceil_mode=ceil_mode,
            count_include_pad=cip,
            divisor_override=override,
        )
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    expected = ref_pool("lp", np.abs(x), window, strides, pads, ones, ceil_mode, p=3)
    actual = lp_pool(jnp.abs(xj), 3, window, strides, padding, ceil_mode=ceil_mode)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# 3. Golden values by hand
# --------------------------------------------------------------------------------------------


def test_golden_max_min_4x4():
    x = jnp.arange(16.0).reshape(4, 4, 1)
    np.testing.assert_array_equal(max_pool(x, 2)[..., 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(min_pool(x, 2)[..., 0], [[0, 2], [8, 10]])
    np.testing.assert_array_equal(max_pool(x, 3, 1)[..., 0], [[10, 11], [14, 15]])
    # Dilation 2: taps 0 and 2 of each dim.
    np.testing.assert_array_equal(max_pool(x, 2, 1, dilation=2)[..., 0], [[10, 11], [14, 15]])
    np.testing.assert_array_equal(min_pool(x, 2, 1, dilation=2)[..., 0], [[0, 1], [4, 5]])


def test_golden_avg_padding_both_ways():
    x = jnp.arange(9.0).reshape(3, 3, 1)
    sums = np.array([[8, 15, 12], [21, 36, 27], [20, 33, 24]])
    counts = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    np.testing.assert_allclose(avg_pool(x, 3, 1, 1)[..., 0], sums / 9)
    np.testing.assert_allclose(avg_pool(x, 3, 1, 1, count_include_pad=False)[..., 0], sums / counts)
    np.testing.assert_allclose(avg_pool(x, 3, 1, 1, divisor_override=2)[..., 0], sums / 2)


def test_golden_ceil_mode_1d():
    # 5 pixels, windows of 2, stride 2: ceil mode adds a window over the last pixel alone.
    x = jnp.arange(5.0).reshape(5, 1)
    np.testing.assert_array_equal(max_pool(x, (2,), ceil_mode=True)[:, 0], [1, 3, 4])
    np.testing.assert_array_equal(max_pool(x, (2,))[:, 0], [1, 3])
    # The overhang is not padding: the divisor of the last window is 1, even counting padding.
    np.testing.assert_array_equal(avg_pool(x, (2,), ceil_mode=True)[:, 0], [0.5, 2.5, 4])
    # PyTorch's LPPool scales the clipped window back up: 4 * 2 / 1, not the plain sum 4.
    np.testing.assert_array_equal(lp_pool(x, 1, (2,), ceil_mode=True)[:, 0], [1, 5, 8])
    # With padding 1: windows [-1, 1), [1, 3), [3, 5); the divisor counts the padded pixel.
    np.testing.assert_array_equal(avg_pool(x, (2,), padding=1)[:, 0], [0, 1.5, 3.5])
    np.testing.assert_array_equal(avg_pool(x, (2,), padding=1, count_include_pad=False)[:, 0], [0, 1.5, 3.5])
    np.testing.assert_array_equal(avg_pool(x, (2,), padding=1, ceil_mode=True)[:, 0], [0, 1.5, 3.5])
    # 6 pixels, windows of 3, stride 2, padding 1, ceil mode: [-1, 2) [1, 4) [3, 6) [5, 8).
    # The last one holds pixel 5, one padded pixel and one pixel of overhang: the padded pixel
    # counts with count_include_pad, the overhang never does.
    x = jnp.arange(1.0, 7.0).reshape(6, 1)
    np.testing.assert_allclose(avg_pool(x, (3,), 2, 1, ceil_mode=True)[:, 0], [1, 3, 5, 3])
    np.testing.assert_allclose(
        avg_pool(x, (3,), 2, 1, ceil_mode=True, count_include_pad=False)[:, 0], [1.5, 3, 5, 6]
    )
    np.testing.assert_allclose(avg_pool(x, (3,), 2, 1)[:, 0], [1, 3, 5])


def test_golden_integer_max_pool_keeps_dtype_and_ignores_padding():
    x = jnp.arange(4, dtype=jnp.int32).reshape(4, 1)
    y = max_pool(x, (2,), padding=1)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(y[:, 0], [0, 2, 3])
    np.testing.assert_array_equal(min_pool(x, (2,), padding=1)[:, 0], [0, 1, 3])
    np.testing.assert_array_equal(adaptive_max_pool(x, (3,))[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(global_max_pool(x, spatial_dims=1), [3])
    u = jnp.arange(4, dtype=jnp.uint8).reshape(4, 1)
    np.testing.assert_array_equal(min_pool(u, (2,), padding=1)[:, 0], [0, 1, 3])


def test_golden_all_padding_windows():
    # A dilated window can skip every input pixel (PyTorch allows it too): taps at -1 and 2 of
    # a 2-pixel input. Max reads -inf there, min +inf, integers the dtype's extremes.
    x = jnp.array([[3.0], [4.0]])
    np.testing.assert_array_equal(max_pool(x, (2,), 1, 1, dilation=3)[:, 0], [-np.inf])
    np.testing.assert_array_equal(min_pool(x, (2,), 1, 1, dilation=3)[:, 0], [np.inf])
    i = jnp.array([[3], [4]], jnp.int16)
    np.testing.assert_array_equal(max_pool(i, (2,), 1, 1, dilation=3)[:, 0], [np.iinfo(np.int16).min])
    np.testing.assert_array_equal(min_pool(i, (2,), 1, 1, dilation=3)[:, 0], [np.iinfo(np.int16).max])


def test_golden_negative_integers():
    x = -jnp.arange(1, 7, dtype=jnp.int32).reshape(6, 1)  # -1 .. -6: padding must not win
    np.testing.assert_array_equal(max_pool(x, (2,), padding=1)[:, 0], [-1, -2, -4, -6])
    np.testing.assert_array_equal(min_pool(-x, (2,), padding=1)[:, 0], [1, 2, 4, 6])


def test_golden_adaptive_and_global():
    x = jnp.arange(5.0).reshape(5, 1)
    np.testing.assert_allclose(adaptive_avg_pool(x, (3,))[:, 0], [0.5, 2, 3.5])  # [0,2) [1,4) [3,5)
    np.testing.assert_array_equal(adaptive_max_pool(x, (3,))[:, 0], [1, 3, 4])
    np.testing.assert_allclose(adaptive_avg_pool(x[:2], (3,))[:, 0], [0, 0.5, 1])  # larger than input
    y = jnp.arange(12.0).reshape(2, 3, 2)
    np.testing.assert_allclose(global_avg_pool(y), [5, 6])
    np.testing.assert_array_equal(global_max_pool(y), [10, 11])


def test_golden_gradients():
    x = jnp.arange(16.0).reshape(4, 4, 1)
    g = jax.jit(jax.grad(lambda x: max_pool(x, 2).sum()))(x)[..., 0]
    np.testing.assert_array_equal(g, [[0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]])
    g = jax.jit(jax.grad(lambda x: avg_pool(x, 2).sum()))(x)
    np.testing.assert_array_equal(g, np.full((4, 4, 1), 0.25))
    # Overlapping 3x3 windows, stride 1, padding 1, count_include_pad=False: each pixel gets
    # the sum of 1/count over the windows that contain it.
    g = jax.jit(jax.grad(lambda x: avg_pool(x, 3, 1, 1, count_include_pad=False).sum()))(jnp.zeros((3, 3, 1)))
    inv = 1 / np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    expected = np.array(
        [
            [
                sum(
                    inv[a, b]
                    for a in range(max(i - 1, 0), min(i + 2, 3))
                    for b in range(max(j - 1, 0), min(j + 2, 3))
                )
                for j in range(3)
            ]
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(g[..., 0], expected)
    g = jax.jit(jax.grad(lambda x: adaptive_avg_pool(x, (3,)).sum()))(jnp.arange(5.0).reshape(5, 1))
    np.testing.assert_allclose(g[:, 0], [1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2])


# --------------------------------------------------------------------------------------------
# 4. Gradients (float64, numerical check)
# --------------------------------------------------------------------------------------------

GRAD_FNS = {  # name: (f, order): second order for the smooth pools and plain max pooling
    "avg_pool": (lambda x: avg_pool(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), 2),
    "lp_pool": (lambda x: lp_pool(x, 2, (2, 3), (2, 2), ceil_mode=True), 2),
    "adaptive_avg_pool": (lambda x: adaptive_avg_pool(x, (4, 3)), 2),
    "max_pool": (lambda x: max_pool(x, 3, 2, 1, ceil_mode=True), 2),
    # Dilated max/min pooling go through jcnn's own JVP rule (JAX has no VJP for them); its
    # reverse mode is also checked against PyTorch's gradients below.
    "max_pool_dilated": (lambda x: max_pool(x, 2, 1, 1, dilation=(2, 3), ceil_mode=True), 1),
}


@pytest.mark.parametrize("name", list(GRAD_FNS))
def test_check_grads(name, x64):
    # Tie-free positive inputs: max-pool gradients are defined, and lp's sums stay positive.
    f, order = GRAD_FNS[name]
    x = jnp.asarray(distinct((1, 5, 7, 2), seed=11, positive=True))
    check_grads(f, (x,), order=order, modes=["fwd", "rev"])


@pytest.mark.parametrize(
    "kind, window, strides, padding, dilation",
    [
        ("max", (3, 2), (2, 1), (1, 1), (1, 2)),
        ("max", (2, 2), (1, 2), (1, 0), (2, 3)),
        ("min", (2, 3), (2, 2), (1, 1), (2, 1)),
        ("avg", (3, 2), (2, 1), (1, 1), 1),
        ("lp", (3, 2), (2, 1), 0, 1),
        ("adaptive_avg", (4, 3), None, None, None),
        ("adaptive_max", (4, 5), None, None, None),
    ],
)
def test_gradients_match_torch(kind, window, strides, padding, dilation, x64):
    torch = pytest.importorskip("torch")
    x = distinct((2, 6, 7, 2), seed=7, positive=True)
    kwargs = {"dilation": dilation} if kind in ("max", "min") else {"p": 2} if kind == "lp" else {}

    def f(x):
        if kind.startswith("adaptive"):
            return (adaptive_avg_pool if kind == "adaptive_avg" else adaptive_max_pool)(x, window)
        if kind == "lp":
            return lp_pool(x, 2, window, strides, ceil_mode=True)
        return WINDOWED[kind](x, window, strides, padding, ceil_mode=True, **kwargs)

    ct = distinct(jax.eval_shape(f, x).shape, seed=8)
    # One compiled program for value and gradient (cheaper than compiling each op eagerly).
    y, actual = jax.jit(lambda x, ct: (lambda y, vjp: (y, *vjp(ct)))(*jax.vjp(f, x)))(x, ct)
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).requires_grad_()
    F = torch.nn.functional
    if kind == "max":
        ty = F.max_pool2d(t, window, strides, padding, dilation, ceil_mode=True)
    elif kind == "min":
        ty = -F.max_pool2d(-t, window, strides, padding, dilation, ceil_mode=True)
    elif kind == "avg":
        ty = F.avg_pool2d(t, window, strides, padding, ceil_mode=True)
    elif kind == "lp":
        ty = F.lp_pool2d(t, 2, window, strides, ceil_mode=True)
    else:
        ty = getattr(F, f"{kind}_pool2d")(t, window)
    ty.backward(torch.from_numpy(np.ascontiguousarray(np.moveaxis(ct, -1, 1))))
    check_oracle(y, np.moveaxis(ty.detach().numpy(), 1, -1))
    check_oracle(actual, np.moveaxis(t.grad.numpy(), 1, -1))


# --------------------------------------------------------------------------------------------
# 5. jit, vmap, batch dims, dtypes, no layout shuffles
# --------------------------------------------------------------------------------------------

OPS = {
    "max_pool": lambda x: max_pool(x, 3, 2, 1, ceil_mode=True),
    "min_pool": lambda x: min_pool(x, (2, 3), 1, "SAME", dilation=(2, 1)),
    "avg_pool": lambda x: avg_pool(x, 3, 2, 1, count_include_pad=False, ceil_mode=True),
    "lp_pool": lambda x: lp_pool(x, 2, 2, ceil_mode=True),
    "global_avg_pool": global_avg_pool,
    "global_max_pool": global_max_pool,
    "adaptive_avg_pool": lambda x: adaptive_avg_pool(x, (4, 3)),
    "adaptive_max_pool": lambda x: adaptive_max_pool(x, (4, 3)),
}
TIGHT = {"rtol": 1e-14, "atol": 0}  # the same float64 computation, up to fusion order


@pytest.mark.parametrize("name", list(OPS))
def test_jit_vmap_and_batch_dims(name, x64):
    f = OPS[name]
    x = jnp.asarray(distinct((2, 5, 7, 2), seed=2, positive=True))
    y = f(x)
    np.testing.assert_allclose(jax.jit(f)(x), y, **TIGHT)
    unbatched = [f(xi) for xi in x]  # zero batch dims
    np.testing.assert_allclose(jax.vmap(f)(x), np.stack(unbatched), **TIGHT)
    np.testing.assert_allclose(unbatched[0], y[0], **TIGHT)
    two = f(jnp.stack([x, x[::-1]]))  # two batch dims
    assert two.shape == (2, *y.shape)
    np.testing.assert_allclose(two[0], y, **TIGHT)
    np.testing.assert_allclose(two[1], y[::-1], **TIGHT)
    empty = jax.eval_shape(f, x[:0])  # an empty batch is fine; it is the input that is empty
    assert empty.shape == (0, *y.shape[1:])


@pytest.mark.parametrize("dilation", [1, (2, 3)])
@pytest.mark.parametrize("kind", ["max", "min"])
def test_max_min_gradients_with_ties_match_torch(kind, dilation, x64):
    # With ties, both PyTorch and jcnn send a window's gradient to its first extreme tap (in
    # window order), whether through XLA's select_and_scatter or jcnn's dilated JVP rule.
    torch = pytest.importorskip("torch")
    x = np.round(np.random.default_rng(1).uniform(0, 2, (2, 6, 7, 2)))  # values 0, 1, 2

    def f(x):
        return WINDOWED[kind](x, (3, 2), (2, 1), 1, dilation=dilation, ceil_mode=True)

    ct = distinct(jax.eval_shape(f, x).shape, seed=2)
    (actual,) = jax.jit(lambda x, ct: jax.vjp(f, x)[1](ct))(x, ct)
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).requires_grad_()
    sign = 1 if kind == "max" else -1
    ty = sign * torch.nn.functional.max_pool2d(sign * t, (3, 2), (2, 1), 1, dilation, ceil_mode=True)
    ty.backward(torch.from_numpy(np.ascontiguousarray(np.moveaxis(ct, -1, 1))))
    check_oracle(actual, np.moveaxis(t.grad.numpy(), 1, -1))


def test_dilated_gradients_compose_with_vmap_and_jit():
    # jcnn's JVP rule for dilated max pooling under every transformation order.
    def loss(x):
        return (max_pool(x, 2, 1, 1, dilation=(2, 3), ceil_mode=True) ** 2).sum()

    x = jnp.asarray(distinct((2, 5, 7, 2), seed=9))
    g = jax.jit(jax.grad(loss))(x)
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(loss)))(x), g, **TIGHT)
    np.testing.assert_allclose(jax.jit(jax.grad(lambda x: jax.vmap(loss)(x).sum()))(x), g, **TIGHT)
    # Each output's cotangent 2*y lands on exactly one input pixel.
    y = max_pool(x, 2, 1, 1, dilation=(2, 3), ceil_mode=True)
    np.testing.assert_allclose(g.sum(), (2 * y).sum(), rtol=1e-12)


@pytest.mark.parametrize(
    "spatial, output_size, gathers",
    [((8, 6), (4, 3), 0), ((7, 6), (3, 2), 0), ((7, 6), (3, 4), 1), ((5, 6), (3, 4), 2)],
)
def test_adaptive_pools_use_reduce_window_for_even_windows(spatial, output_size, gathers):
    # W % O == 0, or windows of one length at one stride (7 -> 3: [0,3) [2,5) [4,7)), need no
    # gather: one reduce_window covers those dims.
    for pool in (adaptive_avg_pool, adaptive_max_pool):
        jaxpr = str(jax.make_jaxpr(pool, static_argnums=1)(jnp.ones((1, *spatial, 2)), output_size))
        assert jaxpr.count("gather[") == gathers
        assert jaxpr.count("reduce_window") == (1 if gathers < 2 else 0)


@pytest.mark.parametrize("name", list(OPS))
def test_no_layout_shuffles(name):
    jaxpr = str(jax.make_jaxpr(OPS[name])(jnp.ones((2, 5, 7, 2))))
    assert "transpose" not in jaxpr
    if name in ("max_pool", "min_pool", "avg_pool", "lp_pool"):
        assert jaxpr.count("reduce_window") == 1


@pytest.mark.parametrize(
    "name, dtype, rtol",
    [(name, jnp.bfloat16, 2**-8) for name in OPS]
    + [(name, jnp.float32, 1e-6) for name in ("avg_pool", "lp_pool", "adaptive_avg_pool", "global_avg_pool")],
)
def test_low_precision_dtypes(name, dtype, rtol, x64):
    # The same inputs (rounded to `dtype`) in float64: only the result's rounding may differ.
    x = jnp.asarray(distinct((2, 5, 7, 2), seed=4, positive=True)).astype(dtype)
    y = OPS[name](x)
    assert y.dtype == dtype
    reference = OPS[name](x.astype(jnp.float64))
    np.testing.assert_allclose(y.astype(jnp.float64), reference, rtol=rtol, atol=0)


# --------------------------------------------------------------------------------------------
# 6. Errors: raised before XLA sees the call, in the user's words
# --------------------------------------------------------------------------------------------

X2 = jnp.zeros((2, 5, 5, 3))
X2I = jnp.zeros((2, 5, 5, 3), jnp.int32)

ERRORS = [
    # rank and empty dims
    (
        lambda: max_pool(jnp.zeros((5, 5)), 2),
        ShapeError,
        r"max_pool: `x` must have shape \(\*batch, \*spatial, channels\) with 2 spatial dim\(s\) \(`window_shape` "
        r"\(2, 2\) has 2\), got shape \(5, 5\)\. A single-channel input needs a trailing channel dim",
    ),
    (
        lambda: avg_pool(jnp.zeros((5, 5)), (2, 2, 2)),
        ShapeError,
        r"avg_pool: `x` must have shape .* 3 spatial",
    ),
    (
        lambda: max_pool(jnp.zeros((2, 0, 5, 3)), 2),
        ShapeError,
        r"max_pool: every spatial and channel dim of `x` must be >= 1",
    ),
    (
        lambda: adaptive_avg_pool(jnp.zeros((4, 3)), (2, 2)),
        ShapeError,
        r"adaptive_avg_pool: `x` must have shape",
    ),
    (lambda: adaptive_max_pool(jnp.zeros((2, 0, 3)), (2,)), ShapeError, r"every spatial and channel dim"),
    (
        lambda: global_avg_pool(jnp.zeros((4, 3))),
        ShapeError,
        r"global_avg_pool: `x` must have shape .*`spatial_dims`=2",
    ),
    (lambda: global_max_pool(jnp.zeros((2, 4, 0, 3))), ShapeError, r"global_max_pool: every spatial"),
    # window larger than the padded input
    (
        lambda: max_pool(X2, 6),
        ShapeError,
        r"max_pool: .* of size 6 is larger than the padded input of size 5",
    ),
    (lambda: avg_pool(X2, 8, padding=1), ShapeError, r"larger than the padded input of size 7"),
    (lambda: max_pool(X2, 3, 1, dilation=3), ShapeError, r"dilation 3 makes it 7 wide"),
    (
        lambda: max_pool(X2, 5, 3, ceil_mode=False, dilation=(2, 1)),
        ShapeError,
        r"larger than the padded input",
    ),
    # windows, strides, dilation
    (
        lambda: max_pool(X2, 0),
        ShapeError,
        r"max_pool: every entry of `window_shape` must be >= 1, got \(0, 0\)",
    ),
    (lambda: max_pool(X2, (2, -1)), ShapeError, r"every entry of `window_shape` must be >= 1"),
    (lambda: max_pool(X2, ()), ShapeError, r"`window_shape` must have at least one spatial dim"),
    (lambda: max_pool(X2, 2.0), TypeError, r"max_pool: `window_shape` must be an int, got 2.0"),
    (lambda: max_pool(X2, True), TypeError, r"`window_shape` must be an int, got the bool"),
    (lambda: avg_pool(X2, 2, 0), ShapeError, r"avg_pool: every entry of `strides` must be >= 1, got 0"),
    (lambda: avg_pool(X2, 2, (1, -1)), ShapeError, r"every entry of `strides` must be >= 1"),
    (
        lambda: max_pool(X2, 2, (1, 1, 1)),
        ShapeError,
        r"`strides` must be an int or a tuple of 2 ints .* length 3",
    ),
    (lambda: max_pool(X2, 2, 1.5), TypeError, r"`strides` must be an int"),
    (lambda: max_pool(X2, 2, dilation=0), ShapeError, r"every entry of `dilation` must be >= 1"),
    (
        lambda: min_pool(X2, 2, dilation=(1,)),
        ShapeError,
        r"min_pool: `dilation` must be an int or a tuple of 2 ints",
    ),
    # padding
    (
        lambda: max_pool(X2, 2, padding=-1),
        ShapeError,
        r"max_pool: padding must be >= 0 on every side, got -1",
    ),
    (lambda: avg_pool(X2, 3, padding=((0, -1), (0, 0))), ShapeError, r"padding must be >= 0 on every side"),
    (
        lambda: max_pool(X2, 2, padding=(1, 1, 1)),
        ShapeError,
        r"got \(1, 1, 1\) with 3 entries for 2 spatial dims",
    ),
    (lambda: max_pool(X2, 2, padding=((1, 1, 1), (0, 0))), ShapeError, r"is not a \(lo, hi\) pair"),
    (lambda: max_pool(X2, 2, padding=1.0), TypeError, r"`padding` must be an int, a tuple of 2 ints"),
    (
        lambda: max_pool(X2, 2, padding="FULL"),
        ValueError,
        r"max_pool: `padding` must be .*unknown name 'FULL'",
    ),
    (lambda: max_pool(X2, 2, padding="causal"), ValueError, r"padding 'CAUSAL' is for 1-D inputs"),
    (
        lambda: max_pool(X2, 3, padding=2),
        ShapeError,
        r"max_pool: padding must be at most half the window on each side, got padding \(2, 2\) for a window of size 3",
    ),
    (lambda: avg_pool(X2, 2, padding=((0, 2), (0, 0))), ShapeError, r"at most half the window"),
    (lambda: lp_pool(X2, 2, 2, padding=2), ShapeError, r"lp_pool: padding must be at most half the window"),
    # flags and divisors
    (lambda: max_pool(X2, 2, ceil_mode="yes"), TypeError, r"max_pool: `ceil_mode` must be True or False"),
    (
        lambda: avg_pool(X2, 2, count_include_pad=None),
        TypeError,
        r"`count_include_pad` must be True or False",
    ),
    (
        lambda: avg_pool(X2, 2, divisor_override=0),
        ValueError,
        r"avg_pool: `divisor_override` must be nonzero",
    ),
    (lambda: avg_pool(X2, 2, divisor_override=2.5), TypeError, r"`divisor_override` must be None or an int"),
    # lp_pool's p
    (
        lambda: lp_pool(X2, 0, 2),
        ValueError,
        r"lp_pool: `p` must be > 0 \(or inf for max pooling of \|x\|\), got 0",
    ),
    (lambda: lp_pool(X2, -1.0, 2), ValueError, r"`p` must be > 0"),
    (lambda: lp_pool(X2, -math.inf, 2), ValueError, r"`p` must be > 0"),
    (lambda: lp_pool(X2, math.nan, 2), ValueError, r"`p` must be > 0"),
    (
        lambda: lp_pool(X2, jnp.array(2.0), 2),
        TypeError,
        r"lp_pool: `p` must be a Python or NumPy real number",
    ),
    (lambda: lp_pool(X2, "2", 2), TypeError, r"`p` must be a Python or NumPy real number"),
    # dtypes
    (
        lambda: avg_pool(X2I, 2),
        TypeError,
        r"avg_pool: `x` must have a floating-point dtype, got int32; cast it first",
    ),
    (lambda: lp_pool(X2I, 2, 2), TypeError, r"lp_pool: `x` must have a floating-point dtype"),
    (
        lambda: adaptive_avg_pool(X2I, 2),
        TypeError,
        r"adaptive_avg_pool: `x` must have a floating-point dtype",
    ),
    (lambda: global_avg_pool(X2I), TypeError, r"global_avg_pool: `x` must have a floating-point dtype"),
    (
        lambda: max_pool(X2.astype(bool), 2),
        TypeError,
        r"max_pool: `x` must have a real floating-point or integer",
    ),
    (
        lambda: min_pool(X2.astype(jnp.complex64), 2),
        TypeError,
        r"min_pool: `x` must have a real floating-point",
    ),
    # adaptive output sizes
    (
        lambda: adaptive_avg_pool(X2, 0),
        ShapeError,
        r"adaptive_avg_pool: every entry of `output_size` must be >= 1",
    ),
    (lambda: adaptive_max_pool(X2, (2, -1)), ShapeError, r"every entry of `output_size` must be >= 1"),
    (lambda: adaptive_max_pool(X2, ()), ShapeError, r"`output_size` must have at least one spatial dim"),
    (lambda: adaptive_avg_pool(X2, 2.0), TypeError, r"adaptive_avg_pool: `output_size` must be an int"),
    (lambda: adaptive_avg_pool(X2, (2, "a")), TypeError, r"`output_size` must be an int"),
    # global pools' spatial_dims
    (lambda: global_avg_pool(X2, 0), ShapeError, r"global_avg_pool: `spatial_dims` must be >= 1, got 0"),
    (lambda: global_max_pool(X2, True), TypeError, r"global_max_pool: `spatial_dims` must be an int"),
    (
        lambda: global_max_pool(X2, (1, 2)),
        TypeError,
        r"`spatial_dims` must be an int \(the number of spatial dims\)",
    ),
    (lambda: global_avg_pool(X2, 4), ShapeError, r"with 4 spatial dim\(s\)"),
]


@pytest.mark.parametrize("call, error, match", ERRORS)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "f, match",
    [
        (lambda x: max_pool(x, 6), "larger than the padded input"),
        (lambda x: avg_pool(x, 3, padding=2), "at most half the window"),
        (lambda x: lp_pool(x, 2, (2, 2, 2, 2)), "with 4 spatial dim"),
        (lambda x: adaptive_max_pool(x, (2, 0)), "`output_size` must be >= 1"),
        (lambda x: avg_pool(x.astype(jnp.int32), 2), "floating-point dtype"),
    ],
)
def test_errors_are_raised_while_tracing(f, match):
    # Checks look at shapes and dtypes only, so they fire on tracers, before XLA sees anything.
    with pytest.raises((ValueError, TypeError), match=match):
        jax.jit(f)(X2)
    with pytest.raises((ValueError, TypeError), match=match):
        jax.vmap(f)(X2[None])


# --------------------------------------------------------------------------------------------
# Layers take whole batches; nothing inside JAX or Python fails first (issues 9 and 11)
# --------------------------------------------------------------------------------------------


def _pool_layer_cases():
    from jcnn import layers as L

    return {
        "max": (L.MaxPool(3, 2, 1, ceil_mode=True), (7, 6, 2)),
        "max-dilated": (L.MaxPool((2, 2), 1, dilation=2), (6, 6, 2)),
        "avg": (L.AvgPool(3, 2, "same", count_include_pad=False), (7, 6, 2)),
        "avg-1d": (L.AvgPool((3,), 1, 1, divisor_override=2), (8, 2)),
        "global-avg": (L.GlobalAvgPool(), (5, 4, 3)),
        "global-max-1d": (L.GlobalMaxPool(1), (5, 3)),
        "adaptive-avg": (L.AdaptiveAvgPool((3, None)), (7, 5, 2)),
        "adaptive-max": (L.AdaptiveMaxPool(2), (5, 7, 2)),
    }


@pytest.mark.parametrize("name", list(_pool_layer_cases()))
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_pool_layers_take_leading_batch_dims(name, batch):
    layer, shape = _pool_layer_cases()[name]
    out_shape, params, state = layer.init(jax.random.key(0), shape)
    x = distinct(batch + shape, seed=len(batch)).astype(np.float32)
    y, new_state = layer.apply(params, state, x, batch_ndim=len(batch))
    assert y.shape == batch + out_shape and new_state == state
    flat = x.reshape((-1,) + shape)
    loop = jnp.stack([layer.apply(params, state, xi)[0] for xi in flat]).reshape(y.shape)
    np.testing.assert_allclose(y, loop, rtol=1e-6, atol=1e-6)
    if batch:
        vmapped = jax.vmap(lambda xi: layer.apply(params, state, xi)[0])(flat)
        np.testing.assert_allclose(y, vmapped.reshape(y.shape), rtol=1e-6, atol=1e-6)


HUGE = 2**63


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: max_pool(None, 2), TypeError, r"^max_pool: `x` must be an array, got NoneType None"),
        (lambda x: max_pool("abc", 2), TypeError, r"^max_pool: `x` must be an array, got str"),
        (
            lambda x: avg_pool(np.full((4, 4, 1), "a"), 2),
            TypeError,
            r"^avg_pool: `x` must have a floating-point",
        ),
        (lambda x: max_pool(np.full((4, 4, 1), None), 2), TypeError, r"^max_pool: `x` must have a real"),
        (
            lambda x: global_avg_pool([[1.0], [2.0, 3.0]]),
            TypeError,
            r"^global_avg_pool: `x` must be an array",
        ),
        (lambda x: adaptive_max_pool(None, 2), TypeError, r"^adaptive_max_pool: `x` must be an array"),
        (
            lambda x: max_pool(x, HUGE),
            ValueError,
            r"^max_pool: every entry of `window_shape` must be <= 2147483647",
        ),
        (lambda x: max_pool(x, 2, HUGE), ValueError, r"^max_pool: every entry of `strides` must be <= "),
        (
            lambda x: min_pool(x, 2, dilation=(1, HUGE)),
            ValueError,
            r"^min_pool: every entry of `dilation` must be",
        ),
        (lambda x: avg_pool(x, 2, padding=HUGE), ValueError, r"^avg_pool: `padding` must be <= "),
        (
            lambda x: avg_pool(x, 2, divisor_override=HUGE),
            ValueError,
            r"^avg_pool: `divisor_override` must be <= ",
        ),
        (
            lambda x: lp_pool(x, 2, (2, HUGE)),
            ValueError,
            r"^lp_pool: every entry of `window_shape` must be <= ",
        ),
        (
            lambda x: adaptive_avg_pool(x, HUGE),
            ValueError,
            r"^adaptive_avg_pool: every entry of `output_size`",
        ),
        (lambda x: adaptive_avg_pool(x, (None, HUGE)), ValueError, r"^adaptive_avg_pool: every entry of"),
        (lambda x: global_max_pool(x, HUGE), ValueError, r"^global_max_pool: `spatial_dims` must be <= "),
    ],
)
def test_fuzz_classes_get_jcnn_errors(call, error, match):
    with pytest.raises(error, match=match) as e:
        call(X2)
    tb = e.value.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert "/jcnn/" in tb.tb_frame.f_code.co_filename, tb.tb_frame.f_code.co_filename


@pytest.mark.parametrize(
    "make, x, error, match",
    [
        (lambda L: L.MaxPool(2, HUGE), None, ValueError, r"^MaxPool: every entry of `strides` must be <= "),
        (
            lambda L: L.AdaptiveAvgPool(HUGE),
            None,
            ValueError,
            r"^AdaptiveAvgPool: every entry of `output_size`",
        ),
        (lambda L: L.MaxPool(2), None, TypeError, r"^MaxPool: `x` must be an array, got NoneType"),
        (
            lambda L: L.AvgPool(2),
            np.full((4, 4, 1), "s"),
            TypeError,
            r"^AvgPool: `x` must have a floating-point",
        ),
        (lambda L: L.GlobalMaxPool(), "abc", TypeError, r"^GlobalMaxPool: `x` must be an array, got str"),
        (
            lambda L: L.AdaptiveMaxPool(2),
            [[1.0], [2.0, 3.0]],
            TypeError,
            r"^AdaptiveMaxPool: `x` must be an array",
        ),
    ],
)
def test_fuzz_classes_get_jcnn_errors_from_layers(make, x, error, match):
    from jcnn import layers

    with pytest.raises(error, match=match):
        layer = make(layers)
        _, params, state = layer.init(jax.random.key(0), (4, 4, 1))
        layer.apply(params, state, x)
