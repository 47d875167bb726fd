"""Tests for jcnn.ops.extremum through the public pools: NaN that propagates as in PyTorch
(values and gradients, jit and eager, several batch sizes), PyTorch's choice of tap with ties,
NaN and -inf, exact derivatives of every order without pair reductions, the tiled fast path,
and lp_pool with p = inf.

Inputs are small integers as float32 with integer cotangents: every max, min and gradient sum
is exact, so PyTorch's float32 results must be matched bit for bit (NaN where it has NaN)."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from jcnn import shapes
from jcnn.ops import adaptive_max_pool, extremum, global_max_pool, lp_pool, max_pool, min_pool

torch = pytest.importorskip("torch")
F = torch.nn.functional

# (spatial, window, strides, padding, dilation, ceil_mode): tiled (the fast path), tiled with
# the floor-mode tail cropped, strided with padding and a ceil-mode overhang, dilated, 1-D, 3-D.
WINDOW_CASES = {
    "tiled": ((8, 8), (2, 2), None, 0, 1, False),
    "tiled_crop": ((7, 9), (2, 3), None, 0, 1, False),
    "strided": ((7, 7), (3, 3), (2, 2), (1, 1), 1, True),
    "dilated": ((8, 7), (2, 2), (1, 2), (1, 0), (2, 3), True),
    "tiled_1d": ((9,), (3,), None, 0, 1, False),
    "strided_3d": ((4, 6, 5), (2, 2, 2), None, 0, 1, True),
}
ADAPTIVE_CASES = [((7, 6), (3, 4)), ((8, 6), (4, 3)), ((5, 6), (3, 4)), ((3, 5), (4, None))]
# (batch, jit): eager at one batch size (every op compiles on its own), jit at the others.
BATCH_MODES = [(1, True), (8, False), (64, True)]


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def nhwc(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def torch_value_and_grad(f, x, ct):
    """PyTorch's output and the gradient of <f(x), ct>, channels last."""
    t = nchw(x).requires_grad_()
    y = f(t)
    y.backward(nchw(ct))
    return nhwc(y), nhwc(t.grad)


def jcnn_value_and_grad(f, x, ct, *, jit):
    def run(x, ct):
        y, vjp = jax.vjp(f, x)
        return y, vjp(ct)[0]

    y, g = (jax.jit(run) if jit else run)(jnp.asarray(x), jnp.asarray(ct))
    return np.asarray(y), np.asarray(g)


def assert_same(actual, expected):
    """Bit-exact up to the sign of zero, NaN where PyTorch has NaN."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def nan_ties_input(shape, seed, nan_rate=0.04, neg_inf_rate=0.0):
    """Small integers (many ties) with NaN (often several in one window) and optional -inf."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, shape).astype(np.float32)
    x[rng.random(shape) < nan_rate] = np.nan
    x[rng.random(shape) < neg_inf_rate] = -np.inf
    return x


def cotangent(shape, seed):
    return np.random.default_rng(seed).integers(1, 9, shape).astype(np.float32)


def pool_pair(kind, case):
    """The jcnn pool and its PyTorch oracle for one window case."""
    spatial, window, strides, padding, dilation, ceil_mode = case
    d = len(window)
    tstrides = window if strides is None else strides

    def ours(x):
        pool = max_pool if kind == "max" else min_pool
        return pool(x, window, strides, padding, dilation=dilation, ceil_mode=ceil_mode)

    def theirs(t):
        sign = 1 if kind == "max" else -1
        return sign * getattr(F, f"max_pool{d}d")(sign * t, window, tstrides, padding, dilation, ceil_mode)

    return spatial, ours, theirs


# --------------------------------------------------------------------------------------------
# 1. NaN propagates, values and gradients, as in PyTorch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch, jit", BATCH_MODES)
@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_windowed_nan_and_ties_match_torch(case, kind, batch, jit):
    spatial, ours, theirs = pool_pair(kind, WINDOW_CASES[case])
    x = nan_ties_input((batch, *spatial, 3), seed=batch)
    y_shape = jax.eval_shape(ours, jnp.asarray(x)).shape
    ct = cotangent(y_shape, seed=batch + 1)
    y, g = jcnn_value_and_grad(ours, x, ct, jit=jit)
    ty, tg = torch_value_and_grad(theirs, x, ct)
    assert np.isnan(ty).any() and not np.isnan(ty).all()  # the case exercises NaN
    assert_same(y, ty)
    assert_same(g, tg)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", ["tiled", "strided", "dilated"])
def test_all_neg_inf_windows_send_gradient_to_first_real_tap(case, jit):
    # PyTorch scans only the taps inside the input and starts at the first one; padding taps
    # (read as -inf) never take the gradient, even when every real tap is -inf as well.
    spatial, ours, theirs = pool_pair("max", WINDOW_CASES[case])
    x = nan_ties_input((2, *spatial, 2), seed=3, nan_rate=0.02, neg_inf_rate=0.6)
    ct = cotangent(jax.eval_shape(ours, jnp.asarray(x)).shape, seed=4)
    y, g = jcnn_value_and_grad(ours, x, ct, jit=jit)
    ty, tg = torch_value_and_grad(theirs, x, ct)
    assert np.isneginf(ty).any()
    assert_same(y, ty)
    assert_same(g, tg)


@pytest.mark.parametrize(
    "pool, oracle",
    [
        (lambda x: max_pool(x, 2), lambda t: F.max_pool2d(t, 2)),
        (lambda x: max_pool(x, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),
        (lambda x: min_pool(x, 2), lambda t: -F.max_pool2d(-t, 2)),
        (lambda x: adaptive_max_pool(x, (3, 5)), lambda t: F.adaptive_max_pool2d(t, (3, 5))),
        (global_max_pool, lambda t: F.adaptive_max_pool2d(t, 1)[:, :, 0, 0]),
    ],
    ids=["max_pool_tiled", "max_pool_strided", "min_pool", "adaptive_max_pool", "global_max_pool"],
)
def test_single_nan_large_batch_matches_torch(pool, oracle):
    # Issue 11: a (512, 8, 8, 20) zero array with one NaN gave no NaN under jit. Here one NaN
    # in each of 64 examples, at 64 different positions and channels, eagerly and under jit.
    rng = np.random.default_rng(0)
    x = np.zeros((512, 8, 8, 20), np.float32)
    rows = rng.choice(512, 64, replace=False)
    x[rows, rng.integers(0, 8, 64), rng.integers(0, 8, 64), rng.integers(0, 20, 64)] = np.nan
    t = nchw(x)
    expected = oracle(t).numpy()
    expected = expected if expected.ndim == 2 else np.moveaxis(expected, 1, -1)
    assert np.isnan(expected).sum() >= 64
    for f in (pool, jax.jit(pool)):
        assert_same(np.asarray(f(jnp.asarray(x))), expected)


@pytest.mark.parametrize("batch, jit", BATCH_MODES)
@pytest.mark.parametrize("spatial, output_size", ADAPTIVE_CASES)
def test_adaptive_max_nan_and_ties_match_torch(spatial, output_size, batch, jit):
    x = nan_ties_input((batch, *spatial, 3), seed=batch + 10)
    f = lambda x: adaptive_max_pool(x, output_size)  # noqa: E731
    ct = cotangent(jax.eval_shape(f, jnp.asarray(x)).shape, seed=batch)
    y, g = jcnn_value_and_grad(f, x, ct, jit=jit)
    ty, tg = torch_value_and_grad(lambda t: F.adaptive_max_pool2d(t, output_size), x, ct)
    assert np.isnan(ty).any()
    assert_same(y, ty)
    assert_same(g, tg)


def test_adaptive_max_ties_pick_the_row_major_first():
    # One 2x2 window [[0, 2], [2, 0]]: PyTorch picks (0, 1), the first maximum in row-major
    # order; reducing the first dim first would pick (1, 0).
    x = np.array([[0, 2], [2, 0]], np.float32).reshape(1, 2, 2, 1)
    for f in (lambda x: adaptive_max_pool(x, (1, 1)), lambda x: global_max_pool(x)[:, None, None]):
        g = jax.grad(lambda x, f=f: f(x).sum())(jnp.asarray(x))
        np.testing.assert_array_equal(g[0, ..., 0], [[0, 1], [0, 0]])


@pytest.mark.parametrize("batch, jit", BATCH_MODES)
@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 2)])
def test_global_max_nan_and_ties_match_torch(spatial, batch, jit):
    x = nan_ties_input((batch, *spatial, 3), seed=batch + 20, nan_rate=0.02)
    d = len(spatial)
    f = lambda x: global_max_pool(x, spatial_dims=d)  # noqa: E731
    ct = cotangent((batch, 3), seed=batch)
    y, g = jcnn_value_and_grad(f, x, ct, jit=jit)
    oracle = lambda t: getattr(F, f"adaptive_max_pool{d}d")(t, 1).reshape(t.shape[:2])  # noqa: E731
    t = nchw(x).requires_grad_()
    ty = oracle(t)
    ty.backward(torch.from_numpy(ct))
    assert np.isnan(ty.detach().numpy()).any()
    assert_same(y, ty.detach().numpy())
    assert_same(g, nhwc(t.grad))


# --------------------------------------------------------------------------------------------
# 2. lp_pool with p = inf: max of |x|, PyTorch's values and gradients (sgn(0) = sgn(nan) = 0)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "spatial, window, strides, ceil_mode",
    [((8, 8), (2, 2), None, False), ((7, 6), (3, 2), (2, 3), True), ((9,), (4,), (3,), True)],
)
def test_lp_pool_inf_signed_zero_and_nan_match_torch(spatial, window, strides, ceil_mode, jit):
    # torch 2.13's lp_pool{1,2,3}d special-case norm_type=inf as max_pool(|x|) (so do we, with
    # no pow): signed inputs give max |x|, and the gradient is sgn(x) at the chosen tap.
    x = nan_ties_input((4, *spatial, 3), seed=7, nan_rate=0.03)
    d = len(spatial)
    f = lambda x: lp_pool(x, math.inf, window, strides, ceil_mode=ceil_mode)  # noqa: E731
    ct = cotangent(jax.eval_shape(f, jnp.asarray(x)).shape, seed=8)
    y, g = jcnn_value_and_grad(f, x, ct, jit=jit)
    k, s = (window[0], None if strides is None else strides[0]) if d == 1 else (window, strides)
    ty, tg = torch_value_and_grad(lambda t: getattr(F, f"lp_pool{d}d")(t, math.inf, k, s, ceil_mode), x, ct)
    assert (x == 0).any() and np.isnan(ty).any() and (tg < 0).any()
    assert_same(y, ty)
    assert_same(g, tg)


def test_abs_sgn_derivative_is_pytorchs_sgn():
    x = jnp.array([-2.0, -0.0, 0.0, 3.0, jnp.nan, -jnp.inf])
    np.testing.assert_array_equal(jax.grad(lambda x: extremum.abs_sgn(x).sum())(x), [-1, 0, 0, 1, 0, -1])
    np.testing.assert_array_equal(extremum.abs_sgn(x), jnp.abs(x))


# --------------------------------------------------------------------------------------------
# 3. Exact derivatives of every order, no pair reductions
# --------------------------------------------------------------------------------------------

GRAD_CASES = {
    "max_pool_tiled": lambda x: max_pool(x, 2),
    "min_pool_tiled_crop": lambda x: min_pool(x, (2, 3)),
    "max_pool_strided": lambda x: max_pool(x, 3, 2, 1, ceil_mode=True),
    "min_pool_dilated": lambda x: min_pool(x, 2, 1, 1, dilation=(2, 3), ceil_mode=True),
    "adaptive_max_pool": lambda x: adaptive_max_pool(x, (3, 4)),
    "global_max_pool": global_max_pool,
    "lp_pool_inf": lambda x: lp_pool(x, math.inf, (2, 3), (2, 2), ceil_mode=True),
}
# What JAX differentiates a reduce-window max with: pair reductions (select_and_gather_add,
# reduced precision on GPU for 2nd derivatives) and the slow select_and_scatter_add.
PAIR_REDUCTION_PRIMITIVES = (
    "select_and_gather_add",
    "select_and_scatter",
    "reduce_window_max",
    "reduce_window_min",
)


def distinct(shape, seed):
    """Float64 values with no ties (and no zeros), so max-pool derivatives are defined."""
    rng = np.random.default_rng(seed)
    values = (rng.permutation(math.prod(shape)).reshape(shape) + 1) / math.prod(shape)
    return values * rng.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_check_grads_second_order_without_pair_reductions(name, x64):
    f = GRAD_CASES[name]
    x = jnp.asarray(distinct((1, 5, 7, 2), seed=11))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # JAX's "Using reduced precision for gradient ..." too
        check_grads(jax.jit(f), (x,), order=2, modes=("fwd", "rev"))
    # Forward over reverse and reverse over reverse: no primitive that needs pair reductions.
    v = jnp.asarray(distinct(x.shape, seed=12))
    hvp = lambda x: jax.jvp(jax.grad(lambda x: (f(x) ** 2).sum()), (x,), (v,))[1]  # noqa: E731
    hess_row = lambda x: jax.grad(lambda x: jax.grad(lambda x: (f(x) ** 2).sum())(x)[0, 1, 2, 1])(x)  # noqa: E731
    for g in (hvp, hess_row):
        jaxpr = str(jax.make_jaxpr(g)(x))
        assert not [p for p in PAIR_REDUCTION_PRIMITIVES if p in jaxpr], name


def test_second_derivative_is_exact(x64):
    # y = max_pool(x)**2 summed: the Hessian is diagonal, 2 at each window's max, 0 elsewhere.
    x = jnp.asarray(distinct((1, 4, 4, 1), seed=3))
    hessian = jax.jit(jax.hessian(lambda x: (max_pool(x, 2) ** 2).sum()))(x).reshape(16, 16)
    argmax = np.asarray(jax.jit(jax.grad(lambda x: max_pool(x, 2).sum()))(x)).reshape(16)
    np.testing.assert_array_equal(hessian, np.diag(2 * argmax))


# --------------------------------------------------------------------------------------------
# 4. The tiled fast path, integers, vmap
# --------------------------------------------------------------------------------------------


def test_tiled_fast_path_has_no_reduce_window_or_scatter():
    x = jnp.ones((4, 8, 9, 3))
    f = lambda x: max_pool(x, (2, 3))  # noqa: E731
    assert "reduce_window" not in str(jax.make_jaxpr(f)(x))
    backward = str(jax.make_jaxpr(jax.grad(lambda x: f(x).sum()))(x))
    assert "scatter" not in backward
    # Other geometries keep one reduce_window.
    assert str(jax.make_jaxpr(lambda x: max_pool(x, 2, 1))(x)).count("reduce_window") == 1


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_no_layout_shuffles_forward_or_backward(name):
    x = jnp.ones((2, 6, 8, 2))
    for f in (GRAD_CASES[name], jax.grad(lambda x: GRAD_CASES[name](x).sum())):
        jaxpr = str(jax.make_jaxpr(f)(x))
        assert "transpose" not in jaxpr and "squeeze" not in jaxpr


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint8])
@pytest.mark.parametrize("case", ["tiled", "tiled_crop", "strided", "dilated"])
def test_integer_pools_match_torch_float(case, dtype):
    spatial, ours, theirs = pool_pair("max", WINDOW_CASES[case])
    info = np.iinfo(dtype)
    x = np.random.default_rng(5).integers(info.min, info.max, (2, *spatial, 3), endpoint=True).astype(dtype)
    y = np.asarray(ours(jnp.asarray(x)))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, theirs(nchw(x).double()).numpy().transpose(0, 2, 3, 1).astype(dtype))
    _, ours_min, theirs_min = pool_pair("min", WINDOW_CASES[case])
    ymin = np.asarray(ours_min(jnp.asarray(x)))
    np.testing.assert_array_equal(
        ymin, theirs_min(nchw(x).double()).numpy().transpose(0, 2, 3, 1).astype(dtype)
    )


@pytest.mark.parametrize("name", ["max_pool_tiled", "min_pool_dilated", "adaptive_max_pool"])
def test_gradients_compose_with_vmap_and_jit(name):
    f = GRAD_CASES[name]
    x = jnp.asarray(nan_ties_input((3, 5, 7, 2), seed=13, nan_rate=0.05))

    def loss(x):
        y = f(x)
        return (y * jnp.arange(1.0, 3.0).reshape((1,) * (y.ndim - 1) + (2,))).sum()

    g = jax.grad(loss)(x)
    np.testing.assert_array_equal(jax.jit(jax.grad(loss))(x), g)
    np.testing.assert_array_equal(jax.jit(jax.vmap(jax.grad(loss)))(x[:, None])[:, 0], g)
    np.testing.assert_array_equal(jax.vmap(f)(x), f(x))


def test_window_extremum_direct():
    g = shapes.pool_geometry(shapes.pool_spec(2), (2, 4, 4, 1))
    x = jnp.arange(32.0).reshape(2, 4, 4, 1).at[1, 0, 1, 0].set(jnp.nan)
    y = extremum.window_extremum(x, lax.max, g)
    np.testing.assert_array_equal(y[..., 0], [[[5, 7], [13, 15]], [[np.nan, 23], [29, 31]]])
    np.testing.assert_array_equal(extremum.window_extremum(x, lax.min, g)[0, ..., 0], [[0, 2], [8, 10]])
