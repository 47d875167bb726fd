"""Tests for jcnn's oneDNN convolutions (jcnn.ops.onednn, ``impl="onednn"``).

Numbers: against PyTorch (float64, from the same float32 inputs) and against ``impl="xla"``, at
float32 tolerances, for outputs and every gradient; 1-, 2- and 3-D, strides, dilation,
asymmetric padding, groups, depthwise, bias, padding modes, bfloat16, conv_transpose.
Transformations: jit, grad, jvp, hessian, grad-of-grad, check_grads(order=2), vmap (folded into
the batch, batched kernels, per-example gradients), shard_map and pmap over 4 CPU devices,
concurrent callers, torch's OpenMP runtime in the same process. Plus the fallbacks: float64,
disabled, unavailable.

Where the kernels are not built (another platform, JCNN_DISABLE_ONEDNN=1) these tests skip,
unless JCNN_REQUIRE_ONEDNN=1 (CI sets it) turns the skip into a failure.
"""

import functools
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jcnn import shapes
from jcnn.ops import conv, conv_transpose, onednn
from jcnn.ops import conv as conv_module_ops

conv_mod = sys.modules["jcnn.ops.conv"]
REPO = Path(__file__).resolve().parents[1]


def _require():
    s = onednn.status()
    if not s.available:
        if os.environ.get(onednn.REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"{onednn.REQUIRE_ENV} is set but the oneDNN kernels are not active: {s.reason}")
        pytest.skip(f"oneDNN kernels not active: {s.reason}")


@pytest.fixture(autouse=True)
def _onednn_here(request):
    # Every test needs the kernels except those that test the fallbacks (named *_fallback*).
    if "fallback" not in request.node.name:
        _require()


def rng_arrays(seed, *shapes_, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes_]


def assert_close(got, want, rtol=2e-5, what=""):
    """float32 closeness relative to the reference's scale (sums of many products)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


# --------------------------------------------------------------------------------------------
# Status, backends, errors, fallbacks
# --------------------------------------------------------------------------------------------


def test_status_says_what_is_active():
    s = onednn.status()
    assert s.available and s.version.startswith("3.") and "float32" in s.dtypes
    assert s.reason.startswith(f"oneDNN {s.version} kernels registered for")
    assert Path(s.library).exists() and not s.kernels["float32"].startswith("ref")
    b = conv_mod.backends()
    assert set(b) == set(conv_mod.IMPLS) and b["onednn"] == (True, s.reason)


def test_auto_picks_onednn_on_cpu_for_float32_never_float64():
    geo = shapes.conv_geometry(shapes.conv_spec(5, padding=2), (128, 14, 14, 20), (5, 5, 20, 50))
    assert conv_mod.auto_impl(geo, "cpu", jnp.float32) == "onednn"
    assert conv_mod.auto_impl(geo, "cpu", jnp.float64) != "onednn"
    assert conv_mod.auto_impl(geo, "gpu", jnp.float32) == "xla"
    tgeo = shapes.conv_transpose_geometry(shapes.conv_transpose_spec(3, 2), (8, 8, 4), (3, 3, 4, 2))
    assert conv_mod.auto_transpose_impl(tgeo, "cpu", jnp.float32) == "onednn"
    assert conv_mod.auto_transpose_impl(tgeo, "cpu", jnp.float64) == "xla"
    assert conv_mod.auto_transpose_impl(tgeo, "tpu", jnp.float32) == "xla"


def test_float64_is_refused_in_the_users_words(x64):
    x, k = rng_arrays(0, (1, 6, 6, 2), (3, 3, 2, 4), dtype=np.float64)
    with pytest.raises(
        TypeError, match=r"^conv: impl='onednn' computes in float32.*got float64 \(oneDNN has no"
    ):
        conv(x, k, impl="onednn")
    with pytest.raises(TypeError, match=r"^conv_transpose: impl='onednn'.*got float64"):
        conv_transpose(x, k, impl="onednn")
    # auto takes another impl for float64, exactly
    np.testing.assert_allclose(conv(x, k), conv(x, k, impl="xla"), rtol=1e-12, atol=1e-12)


def test_float16_is_refused():
    x, k = (a.astype(np.float16) for a in rng_arrays(0, (1, 6, 6, 2), (3, 3, 2, 4)))
    with pytest.raises(TypeError, match="got float16"):
        conv(x, k, impl="onednn")


def test_unavailable_kernels_are_refused_and_auto_fallback(monkeypatch):
    down = onednn.OnednnStatus(False, "disabled by JCNN_DISABLE_ONEDNN=1.")
    monkeypatch.setattr(onednn, "_status", down)
    x, k = rng_arrays(1, (2, 8, 8, 3), (3, 3, 3, 4))
    with pytest.raises(ValueError, match=r"^conv: impl='onednn' is not available here: disabled by"):
        conv(x, k, impl="onednn")
    assert conv_mod.backends()["onednn"] == (False, down.reason)
    geo = shapes.conv_geometry(shapes.conv_spec(3), (2, 8, 8, 3), (3, 3, 3, 4))
    assert conv_mod.auto_impl(geo, "cpu", jnp.float32) != "onednn"
    np.testing.assert_allclose(conv(x, k), conv(x, k, impl="xla"), rtol=2e-5, atol=2e-5)


def test_disable_env_keeps_the_kernels_off_fallback_in_a_fresh_process():
    code = textwrap.dedent("""
        import jax.numpy as jnp
        from jcnn.ops import conv, onednn, backends
        s = onednn.status()
        assert not s.available and s.reason == "disabled by JCNN_DISABLE_ONEDNN=1.", s
        assert not backends()["onednn"].available
        y = conv(jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)))   # auto: a pure-JAX impl
        assert float(y[0, 3, 3, 0]) == 27.0
        print("OK")
    """)
    env = dict(os.environ, JCNN_DISABLE_ONEDNN="1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_explicit_onednn_refused_off_the_cpu(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x, k = rng_arrays(0, (1, 6, 6, 2), (3, 3, 2, 4))
    with pytest.raises(
        ValueError, match=r"^conv: impl='onednn' runs on the CPU, but JAX's default backend is 'gpu'"
    ):
        conv(x, k, impl="onednn")


def test_layer_accepts_onednn_and_errors_name_the_layer():
    from jcnn import layers as L

    layer = L.Conv(4, 3, impl="onednn")
    _, params, state = layer.init(jax.random.key(0), (6, 6, 2))
    y, _ = layer.apply(params, state, jnp.ones((6, 6, 2)))
    assert y.shape == (4, 4, 4)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        with pytest.raises(TypeError, match="Conv.*impl='onednn'.*float64"):
            layer.apply(p64, state, jnp.ones((6, 6, 2), jnp.float64))


# --------------------------------------------------------------------------------------------
# Numbers: outputs and gradients vs PyTorch (float64) and impl="xla"
# --------------------------------------------------------------------------------------------

CONV_CASES = [
    # (x_shape, kernel_shape, kwargs); batch dims first
    ((2, 9, 9, 3), (3, 3, 3, 4), dict(padding=1)),
    ((3, 17, 19, 3), (3, 5, 3, 7), dict(strides=(2, 1), padding=((1, 0), (2, 1)))),
    ((2, 12, 12, 8), (3, 3, 4, 6), dict(strides=(1, 2), padding=2, dilation=2, groups=2)),
    ((2, 10, 10, 6), (3, 3, 1, 12), dict(padding=1, groups=6)),  # depthwise, multiplier 2
    ((2, 8, 8, 4), (3, 3, 4, 5), dict(padding=(1, 2), padding_mode="reflect")),
    ((2, 8, 8, 4), (2, 3, 4, 5), dict(padding=((1, 0), (0, 2)), padding_mode="circular", strides=2)),
    ((4, 20, 6), (5, 6, 8), dict(strides=3, padding="SAME", dilation=2)),  # 1-D, unread tail
    ((2, 3, 40, 4), (9, 4, 3), dict(padding="causal", groups=1)),  # 1-D, two batch dims
    ((2, 6, 7, 5, 4), (3, 2, 3, 2, 6), dict(strides=(1, 2, 1), padding=((1, 1), (0, 1), (2, 0)), groups=2)),
    ((7, 7, 3), (3, 3, 3, 2), dict(strides=3)),  # no batch dim; stride leaves a row unread
    ((1, 5, 5, 2), (5, 5, 2, 3), dict(padding="VALID", padding_mode="replicate")),
]
MODES_TORCH = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _pads(kwargs, x_shape, kernel_shape):
    d = len(kernel_shape) - 2
    spec = shapes.conv_spec(
        kernel_shape[:d],
        **{k: v for k, v in kwargs.items() if k in ("strides", "padding", "dilation", "groups")},
    )
    return shapes.conv_geometry(spec, x_shape, kernel_shape)


def torch_conv_and_grads(torch, x, k, b, geo, mode, dy):
    """PyTorch in float64: y, and (dx, dk, db) for the output cotangent ``dy``."""
    F = torch.nn.functional
    d = k.ndim - 2
    batch = x.shape[: x.ndim - d - 1]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float64))  # noqa: E731
    xt = t(x.reshape((-1,) + x.shape[len(batch) :])).movedim(-1, 1).requires_grad_(True)
    kt = t(np.moveaxis(k, (d + 1, d), (0, 1))).requires_grad_(True)
    bt = t(b).requires_grad_(True)
    flat = [p for pair in reversed(geo.padding) for p in pair]
    xp = F.pad(xt, flat, mode=MODES_TORCH[mode]) if any(flat) else xt
    fn = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    y = fn(xp, kt, bt, stride=geo.strides, dilation=geo.dilation, groups=geo.groups)
    dyt = t(dy.reshape((-1,) + dy.shape[len(batch) :])).movedim(-1, 1)
    y.backward(dyt)
    back = lambda a, lead: a.movedim(1, -1).detach().numpy().reshape(lead + tuple(a.movedim(1, -1).shape[1:]))  # noqa: E731
    dk = np.moveaxis(kt.grad.numpy(), (0, 1), (d + 1, d))
    return back(y, batch), back(xt.grad, batch), dk, bt.grad.numpy()


@functools.partial(jax.jit, static_argnames=("impl", "kw"))
def _value_and_grads(x, k, b, dy, impl, kw):
    y, pullback = jax.vjp(lambda x, k, b: conv(x, k, b, impl=impl, **dict(kw)), x, k, b)
    return (y, *pullback(dy))


def _hashable(kwargs):
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


@pytest.mark.parametrize("x_shape, kernel_shape, kwargs", CONV_CASES)
def test_conv_and_gradients_match_torch_and_xla(x_shape, kernel_shape, kwargs):
    torch = pytest.importorskip("torch")
    x, k, b = rng_arrays(0, x_shape, kernel_shape, (kernel_shape[-1],))
    geo = _pads(kwargs, x_shape, kernel_shape)
    (dy,) = rng_arrays(1, geo.out_shape)
    kw = _hashable(kwargs)
    got = _value_and_grads(x, k, b, dy, "onednn", kw)
    xla = _value_and_grads(x, k, b, dy, "xla", kw)
    want = torch_conv_and_grads(torch, x, k, b, geo, kwargs.get("padding_mode", "zeros"), dy)
    for name, g, w, r in zip(("y", "dx", "dk", "db"), got, want, xla):
        assert g.dtype == jnp.float32
        assert_close(g, w, what=f"{name} vs torch {kwargs}")
        assert_close(g, r, what=f"{name} vs xla {kwargs}")


@pytest.mark.parametrize("bias", [False, True])
def test_golden_values_are_exact(bias):
    # Integer-valued inputs: every product and partial sum is exact in float32.
    x = np.arange(49.0, dtype=np.float32).reshape(1, 7, 7, 1)
    k = np.ones((3, 3, 1, 1), np.float32)
    b = np.array([10.0], np.float32) if bias else None
    y = conv(x, k, b, strides=2, impl="onednn")
    want = np.array([[72.0, 90.0, 108.0], [198.0, 216.0, 234.0], [324.0, 342.0, 360.0]]) + (
        10.0 if bias else 0
    )
    np.testing.assert_array_equal(np.asarray(y)[0, :, :, 0], want)
    # stride 3 leaves row/column 6 unread: its gradient is exactly zero
    dx = jax.grad(lambda x: conv(x, k, strides=3, impl="onednn").sum())(x)[0, :, :, 0]
    cover = np.zeros((7, 7))
    cover[:6, :6] = 1
    np.testing.assert_array_equal(dx, cover)


TRANSPOSE_CASES = [
    ((2, 5, 5, 4), (3, 3, 4, 3), dict(strides=2)),
    (
        (2, 4, 5, 4),
        (3, 3, 4, 1),
        dict(strides=(2, 3), padding=((0, 1), (2, 1)), output_padding=(1, 2), groups=2),
    ),
    ((3, 2), (4, 2, 3), dict(dilation=3, output_padding=2, padding=4)),  # 1-D, output padding > crop
    ((1, 3, 2, 3, 2), (2, 1, 2, 2, 3), dict(dilation=2, padding="valid", output_padding=(1, 0, 1))),
    ((4, 1), (1, 1, 1), dict(strides=2, padding=1)),  # crop more than the kernel's overhang
]


def torch_conv_transpose(torch, x, k, b, kwargs):
    """PyTorch's ConvTranspose in float64 via its functional form and symmetric crops only."""
    F = torch.nn.functional
    d = k.ndim - 2
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float64))  # noqa: E731
    batch = x.shape[: x.ndim - d - 1]
    xt = t(x.reshape((-1,) + x.shape[len(batch) :])).movedim(-1, 1)
    w = t(np.moveaxis(k, (d, d + 1), (0, 1)))
    geo = shapes.conv_transpose_geometry(
        shapes.conv_transpose_spec(
            k.shape[:d],
            **{
                n: kwargs[n]
                for n in ("strides", "padding", "output_padding", "dilation", "groups")
                if n in kwargs
            },
        ),
        x.shape,
        k.shape,
    )
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[d - 1]
    full = fn(xt, w, None, geo.strides, 0, geo.output_padding, geo.groups, geo.dilation)
    index = (slice(None), slice(None)) + tuple(
        slice(lo, n - hi) for (lo, hi), n in zip(geo.crop, full.shape[2:])
    )
    y = full[index] + t(b).reshape((1, -1) + (1,) * d)
    y = y.movedim(1, -1).numpy()
    return y.reshape(batch + y.shape[1:])


@pytest.mark.parametrize("x_shape, kernel_shape, kwargs", TRANSPOSE_CASES)
def test_conv_transpose_matches_torch_and_xla(x_shape, kernel_shape, kwargs):
    torch = pytest.importorskip("torch")
    c_out = kernel_shape[-1] * kwargs.get("groups", 1)
    x, k, b = rng_arrays(2, x_shape, kernel_shape, (c_out,))
    got = jax.jit(lambda x, k, b: conv_transpose(x, k, b, impl="onednn", **kwargs))(x, k, b)
    assert_close(got, torch_conv_transpose(torch, x, k, b, kwargs), what=f"torch {kwargs}")
    assert_close(got, conv_transpose(x, k, b, impl="xla", **kwargs), what=f"xla {kwargs}")
    (dy,) = rng_arrays(3, got.shape)

    def grads(impl):
        return jax.vjp(lambda x, k, b: conv_transpose(x, k, b, impl=impl, **kwargs), x, k, b)[1](dy)

    for g, w in zip(jax.jit(lambda: grads("onednn"))(), grads("xla")):
        assert_close(g, w, what=f"grads {kwargs}")


def test_bfloat16_matches_float32():
    if "bfloat16" not in onednn.status().dtypes:
        with pytest.raises(TypeError, match="got bfloat16"):
            conv(jnp.ones((1, 6, 6, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 4), jnp.bfloat16), impl="onednn")
        return
    x, k, b = rng_arrays(4, (2, 12, 12, 16), (3, 3, 16, 8), (8,))
    xb, kb, bb = (jnp.asarray(a, jnp.bfloat16) for a in (x, k, b))
    f = jax.jit(lambda x, k, b: conv(x, k, b, padding=1, impl="onednn"))
    y = f(xb, kb, bb)
    assert y.dtype == jnp.bfloat16
    # the reference: float32 arithmetic on the bfloat16-rounded inputs
    want = conv(*(jnp.asarray(a, jnp.float32) for a in (xb, kb, bb)), padding=1, impl="xla")
    assert_close(y, want, rtol=2e-2, what="bf16 forward")
    dy = jnp.asarray(rng_arrays(5, y.shape)[0], jnp.bfloat16)
    got = jax.jit(lambda: jax.vjp(lambda x, k: conv(x, k, padding=1, impl="onednn"), xb, kb)[1](dy))()
    ref = jax.vjp(
        lambda x, k: conv(x, k, padding=1, impl="xla"), *(jnp.asarray(a, jnp.float32) for a in (xb, kb))
    )[1](jnp.asarray(dy, jnp.float32))
    for g, w in zip(got, ref):
        assert g.dtype == jnp.bfloat16
        assert_close(g, w, rtol=3e-2, what="bf16 gradients")


# --------------------------------------------------------------------------------------------
# Transformations
# --------------------------------------------------------------------------------------------

TX_KW = dict(strides=(2, 1), padding=((1, 0), (1, 2)), groups=2)


def _f(impl):
    return lambda x, k, b: jnp.sin(conv(x, k, b, impl=impl, **TX_KW))


def _tx_arrays():
    return [jnp.asarray(a) for a in rng_arrays(6, (2, 7, 6, 4), (3, 2, 2, 6), (6,))]


def test_jit_lowers_to_the_custom_calls_and_no_transposes():
    x, k, b = _tx_arrays()
    f = lambda x, k, b: conv(x, k, b, impl="onednn", **TX_KW)  # noqa: E731
    jaxpr = jax.make_jaxpr(f)(x, k, b)
    names = [e.primitive.name for e in jaxpr.eqns]
    assert "jcnn_onednn_conv_fwd_bias" in names and "transpose" not in names, names
    hlo = jax.jit(jax.grad(lambda x, k, b: jnp.sin(f(x, k, b)).sum(), (0, 1, 2))).lower(x, k, b).as_text()
    for target in ("jcnn_onednn_conv_fwd_bias", "jcnn_onednn_conv_bwd_data", "jcnn_onednn_conv_bwd_weights"):
        assert target in hlo
    assert "convolution" not in hlo.replace("jcnn_onednn_conv", "")


def test_forward_mode_and_higher_order_match_xla():
    x, k, b = _tx_arrays()
    f1, f0 = _f("onednn"), _f("xla")
    t1 = jax.jvp(f1, (x, k, b), (k.sum() * x, k, b))
    t0 = jax.jvp(f0, (x, k, b), (k.sum() * x, k, b))
    for a, c in zip(t1, t0):
        assert_close(a, c, what="jvp")
    loss = lambda f: lambda k: jnp.sum(f(x, k, b) ** 2)  # noqa: E731
    assert_close(jax.jit(jax.hessian(loss(f1)))(k), jax.hessian(loss(f0))(k), rtol=1e-4, what="hessian")
    gg = lambda f: jax.grad(lambda x: jnp.sum(jax.grad(lambda k: jnp.sum(f(x, k, b) ** 2))(k) ** 2))  # noqa: E731
    assert_close(jax.jit(gg(f1))(x), gg(f0)(x), rtol=1e-4, what="grad of grad")
    assert_close(jax.jacfwd(lambda b: f1(x, k, b))(b), jax.jacfwd(lambda b: f0(x, k, b))(b), what="jacfwd")


def test_check_grads_second_order():
    x, k, b = (a[:1, :5, :5] if a.ndim == 4 and a.shape[0] == 2 else a for a in _tx_arrays())
    f = lambda x, k, b: conv(x, k, b, impl="onednn", **TX_KW)  # noqa: E731
    # float32 finite differences (oneDNN has no float64): jax's float32 step and a 1e-2 tolerance.
    check_grads(f, (x, k, b), order=2, modes=("fwd", "rev"), eps=1e-2, atol=1e-2, rtol=1e-2)


def test_vmap_folds_batches_and_handles_batched_kernels():
    x, k, b = _tx_arrays()
    xs, ks, bs = jnp.stack([x, 2 * x, -x]), jnp.stack([k, -k, 0.5 * k]), jnp.stack([b, 2 * b, -b])
    f1 = lambda x, k, b: conv(x, k, b, impl="onednn", **TX_KW)  # noqa: E731
    f0 = lambda x, k, b: conv(x, k, b, impl="xla", **TX_KW)  # noqa: E731
    for axes, args in [
        ((0, None, None), (xs, k, b)),  # examples: folded into the batch
        ((None, 0, None), (x, ks, b)),  # kernels only
        ((0, 0, 0), (xs, ks, bs)),  # an ensemble
        ((1, None, 0), (jnp.moveaxis(xs, 0, 1), k, bs)),  # a non-leading vmapped axis
    ]:
        assert_close(jax.jit(jax.vmap(f1, axes))(*args), jax.vmap(f0, axes)(*args), what=str(axes))
    # per-example gradients (a batched kernel gradient) and an ensemble's gradients
    loss = lambda f: lambda x, k, b: jnp.sum(jnp.sin(f(x, k, b)))  # noqa: E731
    for axes, args in [((0, None, None), (x[:, None], k, b)), ((0, 0, 0), (xs, ks, bs))]:
        g1 = jax.jit(jax.vmap(jax.grad(loss(f1), (0, 1, 2)), axes))(*args)
        g0 = jax.vmap(jax.grad(loss(f0), (0, 1, 2)), axes)(*args)
        for a, c in zip(g1, g0):
            assert_close(a, c, what=f"vmap(grad) {axes}")
    # a vmapped transposed conv with a batched kernel
    kt = jnp.asarray(rng_arrays(7, (2, 3, 2, 4, 3))[0])
    ct = lambda impl: jax.vmap(lambda k: conv_transpose(x, k, strides=2, groups=2, impl=impl))  # noqa: E731
    assert_close(ct("onednn")(kt), ct("xla")(kt), what="vmap conv_transpose")


def test_empty_batch_gives_empty_output():
    x, k = np.zeros((0, 6, 6, 2), np.float32), np.ones((3, 3, 2, 4), np.float32)
    y, dk = jax.jit(jax.value_and_grad(lambda k: conv(x, k, impl="onednn").sum()))(k)
    assert float(y) == 0.0 and dk.shape == k.shape and not np.any(dk)
    assert conv(x, k, impl="onednn").shape == (0, 4, 4, 4)


def test_concurrent_callers_and_many_geometries():
    # Several Python threads run jitted oneDNN convs of different geometries at once: the
    # primitive cache and the per-thread scratchpads must keep them apart.
    cases = [((4, 10, 10, 3), (3, 3, 3, 5), 1), ((2, 9, 9, 4), (5, 5, 4, 6), 2), ((3, 16, 8), (3, 8, 4), 0)]
    fns, refs, args = [], [], []
    for i, (xs, ks, p) in enumerate(cases):
        x, k = rng_arrays(10 + i, xs, ks)
        f = jax.jit(
            jax.value_and_grad(
                lambda x, k, p=p: jnp.sum(jnp.sin(conv(x, k, padding=p, impl="onednn"))), (0, 1)
            )
        )
        fns.append(f)
        args.append((x, k))
        refs.append(jax.block_until_ready(f(x, k)))
    errors = []

    def work(j):
        try:
            for r in range(6):
                i = (j + r) % len(cases)
                got = fns[i](*args[i])
                for a, c in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(refs[i])):
                    np.testing.assert_array_equal(a, c)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


# Runs in a fresh process with 4 CPU devices (the flag must precede jax's import).
MULTI_DEVICE = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P
    import inspect
    try:
        from jax import shard_map
    except ImportError:
        from jax.experimental.shard_map import shard_map
    # jax 0.6's experimental shard_map cannot differentiate a loss that varies over the mesh
    # with its replication check on, whatever the conv (impl="xla" fails the same way).
    CHECK = {"check_rep": False} if "check_rep" in inspect.signature(shard_map).parameters else {}
    from jcnn.ops import conv
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 9, 9, 4)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 6)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((6,)), jnp.float32)

    def step(impl):
        def loss(k, b, x):
            return jnp.mean(jnp.sin(conv(x, k, b, padding=1, impl=impl)) ** 2)
        return jax.value_and_grad(loss, (0, 1))

    def sharded(impl):
        def body(k, b, x):
            l, (gk, gb) = step(impl)(k, b, x)
            return jax.lax.pmean(l, "d"), jax.lax.pmean(gk, "d"), jax.lax.pmean(gb, "d")
        mesh = Mesh(np.array(jax.devices()), ("d",))
        return jax.jit(shard_map(body, mesh=mesh, in_specs=(P(), P(), P("d")), out_specs=(P(), P(), P()), **CHECK))

    def close(a, c):
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(c)):
            np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-6)

    close(sharded("onednn")(k, b, x), sharded("xla")(k, b, x))
    pm = lambda impl: jax.pmap(step(impl), in_axes=(None, None, 0))
    xs = x.reshape(4, 2, 9, 9, 4)
    close(pm("onednn")(k, b, xs), pm("xla")(k, b, xs))
    # with several devices, auto leaves oneDNN alone: XLA cannot split its calls over a sharded batch
    from jcnn import shapes
    from jcnn.ops import auto_impl
    geo = shapes.conv_geometry(shapes.conv_spec(3, padding=1), (8, 9, 9, 4), (3, 3, 4, 6))
    assert auto_impl(geo, "cpu", jnp.float32) != "onednn"
    # jit with the batch sharded over the devices (how jcnn.train.fit runs on several devices)
    from jax.sharding import NamedSharding
    mesh = Mesh(np.array(jax.devices()), ("data",))
    xd = jax.device_put(x, NamedSharding(mesh, P("data")))
    close(jax.jit(step("onednn"))(k, b, xd), step("xla")(k, b, x))
    print("OK")
""")


def test_shard_map_pmap_and_sharded_jit_over_4_cpu_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


# torch first or jcnn's oneDNN first: one OpenMP runtime (libgomp) must serve both.
WITH_TORCH = textwrap.dedent("""
    import sys
    order = sys.argv[1]
    if order == "torch-first":
        import torch
    import numpy as np, jax, jax.numpy as jnp
    from jcnn.ops import conv, onednn
    assert onednn.status().available, onednn.status()
    x = np.random.default_rng(0).standard_normal((4, 12, 12, 8)).astype(np.float32)
    k = np.random.default_rng(1).standard_normal((3, 3, 8, 16)).astype(np.float32)
    y = np.asarray(jax.jit(lambda x, k: conv(x, k, padding=1, impl="onednn"))(x, k))
    if order != "torch-first":
        import torch
    t = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(k).permute(3, 2, 0, 1), padding=1)
    np.testing.assert_allclose(y, t.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    y2 = np.asarray(jax.jit(lambda x, k: conv(x, k, padding=1, impl="onednn"))(x, k))
    np.testing.assert_array_equal(y, y2)
    gomp = {l.split()[-1] for l in open("/proc/self/maps") if "libgomp" in l}
    print("OK", len(gomp))
""")


@pytest.mark.parametrize("order", ["torch-first", "jcnn-first"])
def test_torch_and_onednn_in_one_process(order):
    pytest.importorskip("torch")
    out = subprocess.run(
        [sys.executable, "-c", WITH_TORCH, order],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_conv_module_exports():
    assert conv_module_ops is conv_mod.conv and "onednn" in conv_mod.CHOICES
