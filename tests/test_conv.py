"""Tests for jcnn.ops.conv and jcnn.ops.conv_transpose.

Families (STYLE.md): shape agreement; the three impls against each other and against PyTorch in
float64; golden values by hand; check_grads; jit / vmap / batch dims / dtypes; every documented
error; a fuzz over often-invalid arguments. Torch is NCHW / OIHW: layouts are converted here,
in the test only.
"""

import functools
import importlib
import math
import operator
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jcnn import ops, shapes
from jcnn.ops import conv, conv_transpose, onednn
from jcnn.shapes import ShapeError

IMPLS = ("xla", "direct", "im2col", "hybrid")
# oneDNN has no float64: it joins the float32 tests where its kernels are active (tests/test_onednn.py
# has its own oracle tests, and fails instead of skipping when JCNN_REQUIRE_ONEDNN=1).
ONEDNN = ("onednn",) if onednn.available() else ()
IMPLS32 = IMPLS + ONEDNN
MODES = ("zeros", "reflect", "replicate", "circular")
JCNN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(shapes.__file__)))  # jcnn/ (shapes is a package)

# Oracle statistics, filled by the torch tests and printed once at the end of this module.
ORACLE: dict[str, list[dict]] = {}


@pytest.fixture(scope="module", autouse=True)
def _oracle_summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not ORACLE:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for name, runs in ORACLE.items():
            s = {k: max(r[k] for r in runs) if k == "max_err" else sum(r[k] for r in runs) for k in runs[0]}
            who = "by jcnn with its own error" if "fuzz" in name else "by both jcnn and torch"
            reporter.write_line(
                f"torch oracle [{name}]: {s['matched']} configurations matched in float64"
                f" (max abs error {s['max_err']:.2e}), {s['rejected']} refused {who}"
            )


def rng_arrays(seed, *shapes_, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes_]


def assert_jcnn_error(exc: BaseException) -> None:
    """The error is jcnn's own: raised from jcnn's code, in its words, never lax's."""
    msg = str(exc)
    assert "lhs" not in msg and "rhs" not in msg, msg
    assert msg.startswith(("conv:", "conv_transpose:")), msg
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_code.co_filename.startswith(JCNN_DIR), (tb.tb_frame.f_code.co_filename, msg)


# --------------------------------------------------------------------------------------------
# Independent references: padding pairs, NumPy pixel loops, PyTorch.
# --------------------------------------------------------------------------------------------


def oracle_pads(padding, in_spatial, kernel_size, strides, dilation):
    """Concrete (lo, hi) pairs for any padding form, computed without jcnn (names via lax)."""
    d = len(kernel_size)
    if isinstance(padding, str):
        name = padding.upper()
        eff = [r * (k - 1) + 1 for k, r in zip(kernel_size, dilation)]
        if name == "CAUSAL":
            return ((eff[0] - 1, 0),)
        return tuple(tuple(p) for p in jax.lax.padtype_to_pads(in_spatial, eff, strides, name))
    if not isinstance(padding, (tuple, list)):
        p = operator.index(padding)
        return ((p, p),) * d
    return tuple(
        (operator.index(p), operator.index(p))
        if not isinstance(p, (tuple, list))
        else tuple(map(operator.index, p))
        for p in padding
    )


def as_ints(value, d):
    if isinstance(value, (tuple, list)):
        return tuple(map(operator.index, value))
    return (operator.index(value),) * d


NP_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def np_conv(x, kernel, bias=None, strides=1, pads=0, dilation=1, groups=1, mode="zeros"):
    """Pixel-by-pixel NumPy convolution of one example (*spatial, c_in): the slow obvious way."""
    d = kernel.ndim - 2
    strides, dilation = as_ints(strides, d), as_ints(dilation, d)
    pads = oracle_pads(pads, x.shape[:d], kernel.shape[:d], strides, dilation)
    xp = np.pad(x, list(pads) + [(0, 0)], mode=NP_MODES[mode])
    ks = kernel.shape[:d]
    cg, c_out = kernel.shape[-2:]
    og = c_out // groups
    out = tuple((xp.shape[i] - dilation[i] * (ks[i] - 1) - 1) // strides[i] + 1 for i in range(d))
    y = np.zeros(out + (c_out,))
    for o in np.ndindex(*out):
        for t in np.ndindex(*ks):
            pixel = xp[tuple(o[i] * strides[i] + t[i] * dilation[i] for i in range(d))]
            for g in range(groups):
                y[o + (slice(g * og, (g + 1) * og),)] += (
                    pixel[g * cg : (g + 1) * cg] @ kernel[t][:, g * og : (g + 1) * og]
                )
    return y if bias is None else y + bias


def _torch_layout(torch, x, d):
    batch = x.shape[: x.ndim - d - 1]
    xt = torch.from_numpy(np.ascontiguousarray(x.reshape((-1,) + x.shape[x.ndim - d - 1 :])))
    return batch, xt.movedim(-1, 1)


def _from_torch(y, batch):
    y = y.movedim(1, -1).numpy()
    return y.reshape(batch + y.shape[1:])


def torch_conv(torch, x, kernel, bias, strides, pads, dilation, groups, mode):
    """PyTorch's Conv{1,2,3}d in float64, padding_mode applied with F.pad like nn.Conv does."""
    F = torch.nn.functional
    d = kernel.ndim - 2
    batch, xt = _torch_layout(torch, x, d)
    flat = [p for pair in reversed(pads) for p in pair]
    xt = F.pad(xt, flat, mode="constant" if mode == "zeros" else mode)
    w = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (d + 1, d), (0, 1))))
    b = None if bias is None else torch.from_numpy(bias)
    fn = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    return _from_torch(fn(xt, w, b, stride=strides, dilation=dilation, groups=groups), batch)


def torch_conv_transpose(torch, x, kernel, bias, strides, pads, output_padding, dilation, groups):
    """PyTorch's ConvTranspose{1,2,3}d; asymmetric (lo, hi) crops are applied to torch's full output."""
    F = torch.nn.functional
    d = kernel.ndim - 2
    batch, xt = _torch_layout(torch, x, d)
    w = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (d, d + 1), (0, 1))))
    b = None if bias is None else torch.from_numpy(bias)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[d - 1]
    if all(lo == hi for lo, hi in pads):
        y = fn(xt, w, b, strides, [lo for lo, _ in pads], output_padding, groups, dilation)
        return _from_torch(y, batch)
    # torch with no crop: the full output, plus output_padding rows of zeros on the high side
    # (torch validates output_padding here). Then crop (lo, hi).
    full = fn(xt, w, None, strides, 0, output_padding, groups, dilation)
    index = (slice(None), slice(None)) + tuple(slice(lo, n - hi) for (lo, hi), n in zip(pads, full.shape[2:]))
    y = full[index]
    if y.numel() == 0 or any(n < 1 for n in y.shape[2:]):
        raise RuntimeError("empty output")
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * d)
    return _from_torch(y, batch)


def oracle_stats(name):
    """The counters of one oracle test, shown in the summary line for ``name``."""
    stats = {"matched": 0, "rejected": 0, "max_err": 0.0}
    ORACLE.setdefault(name, []).append(stats)
    return stats


def record(stats, got, want):
    err = float(np.max(np.abs(np.asarray(got) - want))) if want.size else 0.0
    stats["matched"] += 1
    stats["max_err"] = max(stats["max_err"], err)


def min_cases():
    """How many examples of each kind (accepted, refused) a property must have seen: a quarter
    of the profile's examples, so a strategy that drifts into all-invalid cannot pass vacuously."""
    return settings().max_examples // 4


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


@st.composite
def padding_forms(draw, d):
    """A padding argument in any accepted form; numeric values 0..2."""
    kind = draw(st.sampled_from(["int", "ints", "pairs", "mixed", "name"]))
    small = st.integers(0, 2)
    if kind == "int":
        return draw(small)
    if kind == "ints":
        return tuple(draw(small) for _ in range(d))
    if kind == "pairs":
        return tuple((draw(small), draw(small)) for _ in range(d))
    if kind == "mixed":
        return tuple(draw(st.one_of(small, st.tuples(small, small))) for _ in range(d))
    names = ["VALID", "SAME", "SAME_LOWER", "same", "valid", "Same_Lower"] + (
        ["CAUSAL", "causal"] if d == 1 else []
    )
    return draw(st.sampled_from(names))


@st.composite
def conv_configs(draw):
    """A valid conv: dims 1-3, strides, dilation, groups (incl. depthwise), every padding form
    and padding_mode, 0-2 batch dims, bias or not. Kernels stay small so the file stays fast."""
    d = draw(st.integers(1, 3))
    kmax = (4, 3, 2)[d - 1]
    kernel_size = tuple(draw(st.integers(1, kmax)) for _ in range(d))
    if d == 3:  # at most 4 taps: each tap is a slice that the direct impl compiles
        kernel_size = kernel_size[:2] + (1,) if draw(st.booleans()) else (1,) + kernel_size[1:]
    strides = tuple(draw(st.integers(1, 3)) for _ in range(d))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(d))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = 1 if draw(st.booleans()) else draw(st.integers(1, 2))  # cg == 1: depthwise
    og = draw(st.integers(1, 2))
    mode = draw(st.sampled_from(MODES))
    padding = draw(padding_forms(d))
    eff = [r * (k - 1) + 1 for k, r in zip(kernel_size, dilation)]
    spatial = []
    for i in range(d):
        if isinstance(padding, str):
            w_min = eff[i]  # SAME / CAUSAL pads are < eff, so reflect and circular both work
        else:
            lo, hi = oracle_pads(padding, [1] * d, kernel_size, strides, dilation)[i]
            w_min = max(1, eff[i] - lo - hi, max(lo, hi) + (mode == "reflect"))
        spatial.append(w_min + draw(st.integers(0, 2)))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
    return dict(
        x_shape=batch + tuple(spatial) + (groups * cg,),
        kernel_shape=kernel_size + (cg, groups * og),
        bias=draw(st.booleans()),
        strides=draw(st.sampled_from([strides, strides[0]])) if len(set(strides)) == 1 else strides,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
        seed=draw(st.integers(0, 2**16)),
    )


def make_arrays(cfg):
    x, kernel, bias = rng_arrays(cfg["seed"], cfg["x_shape"], cfg["kernel_shape"], (cfg["kernel_shape"][-1],))
    return x, kernel, (bias if cfg["bias"] else None)


def conv_kwargs(cfg):
    return {k: cfg[k] for k in ("strides", "padding", "dilation", "groups", "padding_mode")}


# --------------------------------------------------------------------------------------------
# 1. Shape agreement
# --------------------------------------------------------------------------------------------

SHAPE_CASES = [
    # (x_shape, kernel_shape, kwargs)
    ((2, 3, 8, 2), (2, 2, 4), dict(strides=2, dilation=3, padding="causal")),
    ((2, 8, 7, 4), (3, 2, 2, 6), dict(strides=(2, 1), padding="SAME", groups=2)),
    ((5, 4, 6, 2), (2, 2, 2, 2, 3), dict(strides=(1, 2, 3), padding=(1, 0, 1), padding_mode="circular")),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("x_shape, kernel_shape, kwargs", SHAPE_CASES)
def test_shape_agreement(impl, x_shape, kernel_shape, kwargs, x64):
    x, kernel = rng_arrays(0, x_shape, kernel_shape)
    d = len(kernel_shape) - 2
    f = functools.partial(conv, impl=impl, **kwargs)
    y = f(x, kernel)
    out_spatial = shapes.conv_output_shape(
        x_shape[-d - 1 : -1],
        kernel_shape[:d],
        kwargs.get("strides", 1),
        kwargs.get("padding", 0),
        kwargs.get("dilation", 1),
    )
    expected = x_shape[: -d - 1] + out_spatial + kernel_shape[-1:]
    assert y.shape == expected
    assert jax.eval_shape(f, x, kernel).shape == expected
    assert y.dtype == jnp.float64


@pytest.mark.parametrize(
    "x_shape, kernel_shape, kwargs",
    [
        ((3, 2), (3, 2, 4), dict(strides=2)),
        ((2, 4, 4, 3), (4, 4, 3, 2), dict(strides=2, padding=1)),  # the DCGAN block doubles
        (
            (4, 5, 4),
            (3, 3, 4, 1),
            dict(strides=(2, 3), padding=((0, 1), (2, 1)), output_padding=(1, 2), groups=2),
        ),
        ((1, 3, 2, 3, 2), (2, 1, 2, 2, 3), dict(dilation=2, padding="valid", output_padding=(1, 0, 1))),
    ],
)
def test_conv_transpose_shape_agreement(x_shape, kernel_shape, kwargs):
    x, kernel = rng_arrays(0, x_shape, kernel_shape)
    d = len(kernel_shape) - 2
    f = functools.partial(conv_transpose, **kwargs)
    y = f(x, kernel)
    out_spatial = shapes.conv_transpose_output_shape(
        x_shape[-d - 1 : -1],
        kernel_shape[:d],
        kwargs.get("strides", 1),
        kwargs.get("padding", 0),
        kwargs.get("output_padding", 0),
        kwargs.get("dilation", 1),
    )
    expected = x_shape[: -d - 1] + out_spatial + (kernel_shape[-1] * kwargs.get("groups", 1),)
    assert y.shape == expected
    assert jax.eval_shape(f, x, kernel).shape == expected


# --------------------------------------------------------------------------------------------
# 2. The three implementations agree
# --------------------------------------------------------------------------------------------


# Each example compiles a dozen small XLA programs (~1 s of CPU), so this test runs half the
# profile's examples; JCNN_HYPOTHESIS_EXAMPLES scales it like every other property.
@settings(max_examples=max(1, settings().max_examples // 2))
@given(conv_configs())
def test_impls_agree(cfg):
    with jax.enable_x64(True):  # a float64 oracle
        x, kernel, bias = make_arrays(cfg)
        kwargs = conv_kwargs(cfg)
        want = conv(x, kernel, bias, impl="xla", **kwargs)
        d = kernel.ndim - 2
        pads = oracle_pads(
            cfg["padding"],
            x.shape[-d - 1 : -1],
            kernel.shape[:d],
            as_ints(cfg["strides"], d),
            cfg["dilation"],
        )
        out_spatial = shapes.conv_output_shape(
            x.shape[-d - 1 : -1], kernel.shape[:d], cfg["strides"], pads, cfg["dilation"]
        )
        assert want.shape == x.shape[: -d - 1] + out_spatial + kernel.shape[-1:]
        for impl in ("direct", "im2col", "hybrid"):
            got = conv(x, kernel, bias, impl=impl, **kwargs)
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"impl={impl} {cfg}")


# --------------------------------------------------------------------------------------------
# 3. PyTorch oracle (float64)
# --------------------------------------------------------------------------------------------

MUTATIONS = [None] * 6 + [
    "channels",
    "groups_out",
    "bias",
    "tiny_input",
    "reflect_big",
    "circular_big",
    "stride0",
]


@st.composite
def oracle_configs(draw):
    """Mostly valid configurations, some broken in one way both libraries must refuse."""
    cfg = draw(conv_configs())
    cfg["mutation"] = mutation = draw(st.sampled_from(MUTATIONS))
    x_shape, k_shape = list(cfg["x_shape"]), list(cfg["kernel_shape"])
    d = len(k_shape) - 2
    if mutation == "channels":
        x_shape[-1] += 1
    elif mutation == "groups_out":
        k_shape[-1] += 1
    elif mutation == "tiny_input":
        x_shape[-d - 1 : -1] = [1] * d
    elif mutation in ("reflect_big", "circular_big"):
        cfg["padding_mode"] = mutation.split("_")[0]
        w = x_shape[-2]
        cfg["padding"] = ((0, 0),) * (d - 1) + ((w + (mutation == "circular_big"), 0),)
    elif mutation == "stride0":
        cfg["strides"] = (0,) + tuple(as_ints(cfg["strides"], d)[1:])
    cfg["x_shape"], cfg["kernel_shape"] = tuple(x_shape), tuple(k_shape)
    return cfg


def test_conv_matches_torch(x64):
    torch = pytest.importorskip("torch")
    stats = oracle_stats("conv")

    @given(oracle_configs())
    def check(cfg):
        x, kernel, _ = make_arrays(cfg)
        bias = None
        if cfg["bias"]:
            (bias,) = rng_arrays(1, (kernel.shape[-1] + (cfg["mutation"] == "bias"),))
        d = kernel.ndim - 2
        strides, dilation = as_ints(cfg["strides"], d), as_ints(cfg["dilation"], d)
        try:
            pads = oracle_pads(cfg["padding"], x.shape[-d - 1 : -1], kernel.shape[:d], strides, dilation)
            want = torch_conv(
                torch, x, kernel, bias, strides, pads, dilation, cfg["groups"], cfg["padding_mode"]
            )
        except (RuntimeError, ValueError, ZeroDivisionError):
            want = None
        try:
            got = conv(x, kernel, bias, **conv_kwargs(cfg))
        except (ValueError, TypeError) as e:
            assert_jcnn_error(e)
            assert want is None, f"torch accepts but jcnn refuses: {e} {cfg}"
            stats["rejected"] += 1
            return
        assert want is not None, f"jcnn accepts what torch refuses {cfg}"
        assert got.shape == want.shape, cfg
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=str(cfg))
        record(stats, got, want)

    check()
    assert stats["matched"] >= min_cases(), stats
    assert stats["rejected"] >= min_cases() // 5, stats


@st.composite
def transpose_configs(draw):
    d = draw(st.integers(1, 3))
    kernel_size = tuple(draw(st.integers(1, (4, 3, 2)[d - 1])) for _ in range(d))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(d))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(d))
    # Mostly valid output padding (< max(stride, dilation)); sometimes one too many.
    too_many = draw(st.sampled_from([0, 0, 0, 1]))
    output_padding = tuple(draw(st.integers(0, max(s, r) - 1 + too_many)) for s, r in zip(strides, dilation))
    pair = st.tuples(st.integers(0, 2), st.integers(0, 2))
    padding = draw(
        st.one_of(
            st.integers(0, 2),
            st.just("VALID"),
            st.tuples(*[st.integers(0, 2)] * d),
            st.tuples(*[pair] * d),
        )
    )
    groups = draw(st.sampled_from([1, 2]))
    cg, og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(d))
    return dict(
        x_shape=batch + spatial + (groups * cg,),
        kernel_shape=kernel_size + (groups * cg, og),
        bias=draw(st.booleans()),
        strides=strides,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        seed=draw(st.integers(0, 2**16)),
    )


def test_conv_transpose_matches_torch(x64):
    torch = pytest.importorskip("torch")
    stats = oracle_stats("conv_transpose")

    @given(transpose_configs())
    def check(cfg):
        x, kernel = rng_arrays(cfg["seed"], cfg["x_shape"], cfg["kernel_shape"])
        c_out = kernel.shape[-1] * cfg["groups"]
        bias = rng_arrays(1, (c_out,))[0] if cfg["bias"] else None
        d = kernel.ndim - 2
        pads = oracle_pads(
            0 if cfg["padding"] == "VALID" else cfg["padding"], None, kernel.shape[:d], None, None
        )
        try:
            want = torch_conv_transpose(
                torch,
                x,
                kernel,
                bias,
                cfg["strides"],
                pads,
                cfg["output_padding"],
                cfg["dilation"],
                cfg["groups"],
            )
        except RuntimeError:
            want = None
        kwargs = {k: cfg[k] for k in ("strides", "padding", "output_padding", "dilation", "groups")}
        try:
            got = conv_transpose(x, kernel, bias, **kwargs)
        except (ValueError, TypeError) as e:
            assert_jcnn_error(e)
            assert want is None, f"torch accepts but jcnn refuses: {e} {cfg}"
            stats["rejected"] += 1
            return
        assert want is not None, f"jcnn accepts what torch refuses {cfg}"
        assert got.shape == want.shape, cfg
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=str(cfg))
        record(stats, got, want)

    check()
    assert stats["matched"] >= min_cases(), stats
    assert stats["rejected"] >= min_cases() // 5, stats


@pytest.mark.parametrize(
    "x_shape, kernel_shape, kwargs",
    [
        ((4, 1), (1, 1, 1), dict(strides=2, padding=1)),  # crop more than the kernel overhang
        ((2, 3, 3), (3, 3, 2), dict(strides=3, padding=2, output_padding=2, dilation=2, groups=3)),
        ((1, 3, 2, 4), (2, 3, 4, 1), dict(strides=(1, 2), padding=((1, 0), (2, 2)), groups=4)),
        (
            (2, 2, 2, 2, 2),
            (2, 1, 2, 2, 2),
            dict(strides=(2, 1, 3), padding=((0, 1), 0, (1, 0)), output_padding=(1, 0, 2)),
        ),
        ((3, 2), (4, 2, 3), dict(dilation=3, output_padding=2, padding=4)),
    ],
)
def test_conv_transpose_cases_match_torch(x_shape, kernel_shape, kwargs, x64):
    torch = pytest.importorskip("torch")
    x, k, b = rng_arrays(20, x_shape, kernel_shape, (kernel_shape[-1] * kwargs.get("groups", 1),))
    d = k.ndim - 2
    pads = oracle_pads(kwargs.get("padding", 0), None, k.shape[:d], None, None)
    want = torch_conv_transpose(
        torch,
        x,
        k,
        b,
        as_ints(kwargs.get("strides", 1), d),
        pads,
        as_ints(kwargs.get("output_padding", 0), d),
        as_ints(kwargs.get("dilation", 1), d),
        kwargs.get("groups", 1),
    )
    got = conv_transpose(x, k, b, **kwargs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    record(oracle_stats("conv_transpose"), got, want)


@pytest.mark.parametrize(
    "x, kernel, name",
    [
        (None, np.ones((3, 3, 2, 2)), "x"),
        ("abc", np.ones((3, 3, 2, 2)), "x"),
        (np.ones((5, 5, 2)), None, "kernel"),
    ],
)
def test_non_array_input_names_the_argument(x, kernel, name):
    with pytest.raises((TypeError, ValueError), match=rf"`{name}`") as e:
        conv(x, kernel)
    assert_jcnn_error(e.value)


@pytest.mark.parametrize(
    "x_shape, kernel_shape, padding, mode",
    [
        ((3, 3, 1), (3, 3, 1, 1), 2, "reflect"),  # padding 2 < size 3: allowed
        ((3, 3, 1), (3, 3, 1, 1), 3, "circular"),  # wraps exactly once: allowed
        ((2, 5, 2), (5, 2, 3), ((4, 0),), "replicate"),
        ((1, 4, 4, 2), (4, 4, 2, 2), ((3, 3), (0, 3)), "circular"),
    ],
)
def test_padding_mode_limits_match_torch(x_shape, kernel_shape, padding, mode, x64):
    torch = pytest.importorskip("torch")
    x, kernel = rng_arrays(3, x_shape, kernel_shape)
    d = kernel.ndim - 2
    pads = oracle_pads(padding, None, kernel.shape[:d], None, None)
    want = torch_conv(torch, x, kernel, None, (1,) * d, pads, (1,) * d, 1, mode)
    np.testing.assert_allclose(conv(x, kernel, padding=padding, padding_mode=mode), want, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# 4. Golden values by hand
# --------------------------------------------------------------------------------------------

X77 = np.arange(49.0).reshape(7, 7, 1)  # x[r, c] = 7r + c
ONES33 = np.ones((3, 3, 1, 1))


def _block_sums(rows, cols):
    """Sum of 7r + c over rows x cols, the hand formula for a window of X77."""
    return 7 * len(cols) * sum(rows) + len(rows) * sum(cols)


@pytest.mark.parametrize("impl", IMPLS32)
def test_golden_7x7_stride_1(impl):
    y = conv(X77, ONES33, impl=impl)
    assert y.shape == (5, 5, 1)
    # Each 3x3 window sums to 9 times its centre pixel.
    np.testing.assert_array_equal(y[..., 0], 9 * X77[1:6, 1:6, 0])
    assert y[0, 0, 0] == 72 and y[4, 4, 0] == 360
    np.testing.assert_array_equal(y, np_conv(X77, ONES33))


@pytest.mark.parametrize("impl", IMPLS32)
def test_golden_7x7_stride_2(impl):
    y = conv(X77, ONES33, strides=2, impl=impl)
    np.testing.assert_array_equal(y[..., 0], 9 * np.array([[8, 10, 12], [22, 24, 26], [36, 38, 40]]))
    np.testing.assert_array_equal(y, np_conv(X77, ONES33, strides=2))


@pytest.mark.parametrize("impl", IMPLS32)
def test_golden_7x7_stride_3_padding_1(impl):
    y = conv(X77, ONES33, strides=3, padding=1, impl=impl)
    # Windows cover input rows {-1,0,1}, {2,3,4}, {5,6,7}; rows -1 and 7 are zero padding.
    blocks = [[0, 1], [2, 3, 4], [5, 6]]
    expected = np.array([[_block_sums(r, c) for c in blocks] for r in blocks])
    assert expected[0, 0] == 16 and expected[1, 1] == 216 and expected[2, 2] == 176
    np.testing.assert_array_equal(y[..., 0], expected)
    np.testing.assert_array_equal(y, np_conv(X77, ONES33, strides=3, pads=1))


COVERAGE = [
    (1, 0, [1, 2, 3, 3, 3, 2, 1]),
    (2, 0, [1, 1, 2, 1, 2, 1, 1]),
    (3, 0, [1, 1, 1, 1, 1, 1, 0]),  # pixel 6 is never read: explain_fit's unused == 1
    (3, 1, [1, 1, 1, 1, 1, 1, 1]),  # padding 1 makes stride 3 tile exactly
]


@pytest.mark.parametrize(
    "impl, strides, padding, coverage",
    [(i,) + c for i in ("xla",) + ONEDNN for c in COVERAGE]
    + [(i,) + c for i in ("direct", "im2col") for c in COVERAGE[1::2]],
)
def test_golden_gradients(impl, strides, padding, coverage):
    # d sum(y) / dx counts the windows that read each pixel.
    f = functools.partial(conv, strides=strides, padding=padding, impl=impl)
    gx, gk = jax.grad(lambda x, k: f(x, k).sum(), argnums=(0, 1))(X77, ONES33)
    np.testing.assert_array_equal(gx[..., 0], np.outer(coverage, coverage))
    assert shapes.explain_fit(7, 3, strides, padding).unused == coverage.count(0)
    # d sum(y) / dk[a, b] is the sum of the pixels that tap reads.
    out = shapes.conv_output_size(7, 3, strides, padding)
    for a in range(3):
        for b in range(3):
            rows = [i * strides + a - padding for i in range(out)]
            cols = [j * strides + b - padding for j in range(out)]
            rows, cols = [r for r in rows if 0 <= r < 7], [c for c in cols if 0 <= c < 7]
            assert gk[a, b, 0, 0] == _block_sums(rows, cols)
    if strides == 1:
        np.testing.assert_array_equal(gk[..., 0, 0], 400 + 175 * np.arange(3)[:, None] + 25 * np.arange(3))


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_seed_stack(impl, x64):
    # 32x32x3 image, one 5x5x3 filter -> 28x28x1; 4 filters -> 28x28x4; ten 5x5x4 -> 24x24x10.
    x = np.ones((32, 32, 3))
    y1 = conv(x, np.ones((5, 5, 3, 1)), impl=impl)
    assert y1.shape == (28, 28, 1)
    np.testing.assert_array_equal(y1, 75.0)
    k4 = np.ones((5, 5, 3, 4)) * np.arange(1.0, 5.0)  # filter f is (f + 1) * ones
    y4 = conv(x, k4, impl=impl)
    assert y4.shape == (28, 28, 4)
    np.testing.assert_array_equal(y4, np.broadcast_to(75.0 * np.arange(1, 5), (28, 28, 4)))
    y10 = conv(y4, np.ones((5, 5, 4, 10)), np.arange(10.0), impl=impl)
    assert y10.shape == (24, 24, 10)
    np.testing.assert_array_equal(y10, np.broadcast_to(25 * 75 * 10 + np.arange(10.0), (24, 24, 10)))
    # The same stack on a non-constant image, against pixel loops.
    xr, kr = rng_arrays(7, (32, 32, 3), (5, 5, 3, 4))
    np.testing.assert_allclose(conv(xr, kr, impl=impl), np_conv(xr, kr), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_1x1_conv_is_a_dense_layer(impl, x64):
    x, k = rng_arrays(4, (2, 5, 5, 6), (1, 1, 6, 3))
    np.testing.assert_allclose(conv(x, k, impl=impl), x @ k[0, 0], rtol=1e-13, atol=1e-13)


def test_golden_conv_transpose_by_hand():
    # One input pixel scatters a copy of the kernel; stride 2 places copies 2 apart, overlapping.
    x = np.array([1.0, 10.0]).reshape(2, 1)
    k = np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)
    y = conv_transpose(x, k, strides=2)
    np.testing.assert_array_equal(y[:, 0], [1, 2, 3 + 10, 20, 30])
    np.testing.assert_array_equal(conv_transpose(x, k, strides=2, padding=1)[:, 0], [2, 13, 20])
    np.testing.assert_array_equal(
        conv_transpose(x, k, strides=2, padding=1, output_padding=1)[:, 0], [2, 13, 20, 30]
    )
    np.testing.assert_array_equal(conv_transpose(x, k, strides=2, padding=((0, 2),))[:, 0], [1, 2, 13])


def test_conv_transpose_is_the_gradient_of_conv(x64):
    # <conv(x, k), y> == <x, conv_transpose(y, k')> where k' swaps in/out channels.
    x, k = rng_arrays(5, (2, 8, 6, 3), (3, 2, 3, 4))
    y = conv(x, k, strides=2, padding=1)
    (g,) = rng_arrays(6, y.shape)
    inner = float(jnp.vdot(y, g))
    # (8 + 2 - 3) // 2 + 1 = 4 rows; back: (4 - 1)*2 - 2 + 2 + 1 = 7, + 1 output_padding row = 8.
    xt = conv_transpose(g, np.swapaxes(k, -1, -2), strides=2, padding=1, output_padding=(1, 0))
    assert xt.shape == x.shape
    np.testing.assert_allclose(float(jnp.vdot(x, xt)), inner, rtol=1e-12)
    (vjp,) = jax.vjp(lambda x: conv(x, k, strides=2, padding=1), x)[1](g)
    np.testing.assert_allclose(xt, vjp, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# 5. check_grads (float64)
# --------------------------------------------------------------------------------------------


# Small on purpose: order-2 checks in both modes compile every primitive's jvp and transpose.
# The padding modes share one padding routine, so reflect is differentiated once (xla).
GRAD_1D = dict(strides=2, groups=2, dilation=3, padding=((2, 1),))
GRAD_CASES = [
    ("direct", (2, 6, 4), (2, 2, 2), GRAD_1D),
    ("im2col", (2, 6, 4), (2, 2, 2), GRAD_1D),
    ("xla", (2, 6, 4), (2, 2, 2), dict(GRAD_1D, padding_mode="reflect")),
    # hybrid's custom_jvp: XLA's tangent in x, im2col's in the kernel; both modes, order 2
    ("hybrid", (2, 5, 4, 2), (2, 2, 2, 3), dict(strides=(2, 1), padding=((1, 0), (0, 1)))),
    ("hybrid", (2, 6, 4), (2, 2, 2), dict(GRAD_1D, padding_mode="circular")),
]


@pytest.mark.parametrize("impl, x_shape, kernel_shape, kwargs", GRAD_CASES)
def test_check_grads_conv(impl, x_shape, kernel_shape, kwargs, x64):
    x, k, b = rng_arrays(8, x_shape, kernel_shape, kernel_shape[-1:])
    f = functools.partial(conv, impl=impl, **kwargs)
    check_grads(f, (x, k, b), order=2, modes=["fwd", "rev"])


# Depthwise convs under impl="im2col" (and so "auto" on CPU) take a hand-written VJP: its input
# gradient is a flipped-kernel tap sum over the stride-dilated output gradient, its kernel
# gradient a chunked per-tap sum. Strides, dilation, a channel multiplier, 1-3 D, padding modes,
# several batch dims and an empty batch, against XLA's gradients and check_grads (reverse mode,
# order 2, which also checks the hand-written backward's own derivative).
DEPTHWISE_GRAD_CASES = [
    ((2, 9, 8, 3), (3, 3, 1, 3), dict(padding=1, groups=3)),
    ((2, 9, 8, 3), (3, 2, 1, 6), dict(strides=(2, 3), dilation=(1, 2), padding=((1, 0), (2, 1)), groups=3)),
    ((5, 10, 4), (3, 1, 4), dict(strides=2, padding=2, groups=4, padding_mode="reflect")),
    ((2, 1, 3, 6, 5, 4, 2), (2, 2, 1, 1, 4), dict(strides=(1, 2, 1), padding="SAME", groups=2)),
    ((7, 6, 6, 2), (2, 2, 1, 2), dict(strides=3, groups=2)),  # rows the stride never reads
    ((0, 6, 6, 2), (2, 2, 1, 2), dict(groups=2)),
]


@pytest.mark.parametrize("x_shape, kernel_shape, kwargs", DEPTHWISE_GRAD_CASES)
def test_depthwise_gradients(x_shape, kernel_shape, kwargs, monkeypatch, x64):
    conv_module = importlib.import_module("jcnn.ops.conv")
    # A chunk budget of 2 examples' output gradient (an upper bound on it: the input's pixels):
    # the kernel gradient's scan over chunks and, for odd batches, its remainder both run.
    d = len(kernel_shape) - 2
    per_example = 8 * kernel_shape[-1] * math.prod(x_shape[-d - 1 : -1])
    monkeypatch.setattr(conv_module, "DEPTHWISE_CHUNK_BYTES", 2 * per_example)
    x, k, b = rng_arrays(21, x_shape, kernel_shape, kernel_shape[-1:])

    def loss(x, k, b, impl):
        return jnp.sum(jnp.sin(conv(x, k, b, impl=impl, **kwargs)))

    want = jax.grad(loss, (0, 1, 2))(x, k, b, "xla")
    for impl in ("im2col", "auto"):
        got = jax.jit(jax.grad(loss, (0, 1, 2)), static_argnums=3)(x, k, b, impl)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=f"{impl} {kwargs}")
    f = functools.partial(conv, impl="im2col", **kwargs)
    check_grads(jax.jit(f), (x, k, b), order=2, modes=["rev"])  # jit: compiled once, not op by op
    # forward-over-reverse (jax.hessian) works; plain forward mode is JAX's custom_vjp error.
    h = jax.jit(jax.hessian(lambda k: loss(x, k, b, "im2col")))(k)
    want_h = jax.jit(jax.hessian(lambda k: loss(x, k, b, "direct")))(k)
    np.testing.assert_allclose(h, want_h, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(f, (x, k, b), (x, k, b))


def test_check_grads_conv_transpose(x64):
    x, k, b = rng_arrays(9, (1, 3, 2, 2), (2, 3, 2, 1), (2,))
    f = functools.partial(
        conv_transpose, strides=2, padding=((1, 0), (0, 1)), output_padding=(1, 0), groups=2
    )
    check_grads(f, (x, k, b), order=2, modes=["fwd", "rev"])


# --------------------------------------------------------------------------------------------
# 6. jit, vmap, batch dims, dtypes
# --------------------------------------------------------------------------------------------

BATCH_CASE = dict(strides=(2, 1), padding="same", groups=2, padding_mode="circular")


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_vmap_and_batch_dims(impl, x64):
    x, k, b = rng_arrays(10, (2, 3, 6, 5, 4), (2, 2, 2, 6), (6,))
    f = functools.partial(conv, impl=impl, **BATCH_CASE)
    y = f(x, k, b)
    assert y.shape == (2, 3, 3, 5, 6)
    # jit(f) == f
    np.testing.assert_allclose(jax.jit(f)(x, k, b), y, rtol=1e-14, atol=1e-14)
    # two batch dims == one flattened batch dim == each example alone (no batch dim)
    flat = f(x.reshape(6, 6, 5, 4), k, b)
    np.testing.assert_allclose(flat.reshape(y.shape), y, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(f(x[1, 2], k, b), y[1, 2], rtol=1e-14, atol=1e-14)
    # vmap(f) == loop, over the examples and over per-example kernels
    np.testing.assert_allclose(jax.vmap(f, (0, None, None))(x[0], k, b), y[0], rtol=1e-14, atol=1e-14)
    ks = np.stack([k, 2 * k, -k])
    vm = jax.vmap(f, (0, 0, None))(x[0], ks, b)
    loop = np.stack([f(x[0, i], ks[i], b) for i in range(3)])
    np.testing.assert_allclose(vm, loop, rtol=1e-13, atol=1e-13)


def test_conv_transpose_jit_vmap_batch_dims():
    x, k, b = rng_arrays(11, (2, 3, 3, 4, 2), (3, 3, 2, 3), (3,))
    f = functools.partial(conv_transpose, strides=(2, 1), padding=(1, 0), output_padding=(1, 0))
    y = f(x, k, b)
    np.testing.assert_allclose(jax.jit(f)(x, k, b), y, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(f(x[1, 0], k, b), y[1, 0], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(jax.vmap(f, (0, None, None))(x[1], k, b), y[1], rtol=1e-14, atol=1e-14)


# float32 is accumulated in float32 by every impl; bfloat16 takes the float32-accumulator path.
@pytest.mark.parametrize(
    "impl, dtype",
    [("xla", jnp.float32)]
    + [(i, jnp.bfloat16) for i in IMPLS + (ONEDNN if onednn.supports(jnp.bfloat16) else ())],
)
def test_low_precision_matches_float64(impl, dtype, x64):
    x, k, b = rng_arrays(12, (2, 6, 6, 3), (3, 3, 3, 4), (4,))
    xl, kl, bl = (jnp.asarray(a, dtype) for a in (x, k, b))
    kwargs = dict(strides=(1, 2), padding=1, impl=impl)
    y = conv(xl, kl, bl, **kwargs)
    assert y.dtype == dtype
    # Exact inputs: the low-precision values themselves, in float64.
    x64, k64, b64 = (np.asarray(a.astype(jnp.float64)) for a in (xl, kl, bl))
    ref = dict(kwargs, impl="xla" if impl == "onednn" else impl)  # oneDNN: no float64 to compare in
    want = np.asarray(conv(x64, k64, b64, **ref))
    scale = np.asarray(conv(np.abs(x64), np.abs(k64), np.abs(b64), **ref))
    # Products of low-precision numbers are exact in float32; the 27 of them are summed in float32
    # (at most n*u32*sum|terms|, Higham), then rounded to the dtype twice: the conv result c, and
    # c + bias (at most u*|c| and u*|c + bias|). Summing in the low precision itself would round
    # every partial sum and is not held to this bound.
    n = 3 * 3 * 3
    u, u32 = float(jnp.finfo(dtype).eps) / 2, float(jnp.finfo(jnp.float32).eps) / 2
    err = np.abs(np.asarray(y.astype(jnp.float64)) - want)
    bound = u * (2 * np.abs(want) + np.abs(b64)) * (1 + 2 * u) + 2 * n * u32 * scale
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.max(err) > 0  # the dtype really rounds: the check can fail


@pytest.mark.parametrize("impl", IMPLS32)
def test_precision_is_passed_through(impl):
    x, k = rng_arrays(13, (5, 5, 2), (2, 2, 2, 3))
    y = conv(x.astype(np.float32), k.astype(np.float32), impl=impl, precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(y, np_conv(x, k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS32)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_no_transpose_in_the_jaxpr(impl, groups):
    # DESIGN.md: no layout shuffles around lax calls (tracing only, nothing is compiled).
    x, k = rng_arrays(14, (2, 6, 6, 4), (3, 3, 4 // groups, 4))
    jaxpr = jax.make_jaxpr(functools.partial(conv, groups=groups, padding=1, impl=impl))(x, k)
    prims = {str(e.primitive) for e in jaxpr.jaxpr.eqns}
    assert "transpose" not in prims, jaxpr


@pytest.mark.parametrize("impl", ("xla",) + ONEDNN)
@pytest.mark.parametrize("groups", [1, 2])
def test_no_transpose_of_activations_in_the_conv_transpose_jaxpr(impl, groups):
    # Grouped transposed convs regroup the (small) kernel's axes once (oneDNN's swaps its in/out
    # roles, groups or not); the activations are never shuffled: every transpose in the jaxpr
    # acts on an array with the kernel's element count.
    x, k = rng_arrays(14, (2, 6, 6, 4), (3, 3, 4, 2))
    jaxpr = jax.make_jaxpr(functools.partial(conv_transpose, groups=groups, strides=2, impl=impl))(x, k)
    transposes = [e for e in jaxpr.jaxpr.eqns if str(e.primitive) == "transpose"]
    assert all(math.prod(e.invars[0].aval.shape) == k.size for e in transposes), jaxpr
    assert len(transposes) == (0 if groups == 1 and impl == "xla" else 1), jaxpr


@pytest.mark.parametrize("impl, batch", [("im2col", (5,)), ("direct", (2, 3))])
def test_chunked_batches_agree(impl, batch, monkeypatch, x64):
    # The hand-written impls split large batches into chunks (lax.map + checkpoint). Shrink the
    # chunk budget so a tiny batch is split 2 + 2 + 1 (or 4 + 2), and compare values (and the
    # gradients, which recompute the patches: checkpoint).
    conv_module = importlib.import_module("jcnn.ops.conv")
    x, k, b = rng_arrays(18, batch + (6, 5, 2), (2, 2, 2, 3), (3,))
    kwargs = dict(strides=(2, 1), padding=1, padding_mode="replicate")

    def loss(x, k, impl):
        return (conv(x, k, b, impl=impl, **kwargs) ** 2).sum()

    want = conv(x, k, b, **kwargs)
    per_example = 4 * 6 * 4 * 2 * 8  # out pixels x taps x c_in x itemsize
    monkeypatch.setattr(conv_module, "CHUNK_BYTES", (2 if batch == (5,) else 4) * per_example + 1)
    f = functools.partial(conv, impl=impl, **kwargs)
    prims = {str(e.primitive) for e in jax.make_jaxpr(f)(x, k, b).jaxpr.eqns}
    assert prims & {"scan", "while"}, prims  # the batch really is chunked
    np.testing.assert_allclose(f(x, k, b), want, rtol=1e-12, atol=1e-12)
    if len(batch) == 1:
        grads_want = jax.grad(loss, (0, 1))(x, k, "xla")
        for got, ref in zip(jax.grad(loss, (0, 1))(x, k, impl), grads_want):
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_hybrid_kernel_gradient_is_chunked(monkeypatch, x64):
    # hybrid's kernel gradient is im2col's chunked matmul (a scan over batch chunks in the
    # gradient's jaxpr), its input gradient XLA's; both equal XLA's own gradients.
    conv_module = importlib.import_module("jcnn.ops.conv")
    x, k, b = rng_arrays(22, (5, 6, 5, 2), (3, 2, 2, 3), (3,))
    kwargs = dict(strides=(1, 2), padding=1, padding_mode="reflect")

    def loss(x, k, impl):
        return jnp.sum(jnp.sin(conv(x, k, b, impl=impl, **kwargs)))

    per_example = (6 * 3) * 6 * 2 * 8  # out pixels x taps x c_in x itemsize
    monkeypatch.setattr(conv_module, "CHUNK_BYTES", 2 * per_example + 1)  # 2 examples a chunk
    grad = jax.grad(loss, (0, 1))
    prims = {str(e.primitive) for e in jax.make_jaxpr(grad, static_argnums=2)(x, k, "hybrid").jaxpr.eqns}
    assert prims & {"scan", "while"}, prims
    for got, want in zip(grad(x, k, "hybrid"), grad(x, k, "xla")):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    only_x = jax.grad(loss)(x, k, "hybrid")  # a symbolic-zero kernel tangent: no im2col at all
    np.testing.assert_allclose(only_x, jax.grad(loss)(x, k, "xla"), rtol=1e-12, atol=1e-12)


@pytest.fixture
def without_onednn(monkeypatch):
    """`auto_impl`'s rule where the oneDNN kernels are not active (other platforms, disabled)."""
    monkeypatch.setattr(onednn, "_status", onednn.OnednnStatus(False, "off for this test."))


def test_auto_impl_matches_xla():
    x, k, b = rng_arrays(19, (2, 6, 6, 2), (2, 2, 2, 4), (4,))
    np.testing.assert_allclose(conv(x, k, b, impl="auto", padding=1), conv(x, k, b, padding=1), rtol=1e-12)


@pytest.mark.parametrize(
    "kernel_shape, dtype, backend, want",
    [
        ((3, 3, 2, 4), jnp.float32, "cpu", "xla"),  # an image input (c_in <= 3)
        ((3, 3, 1, 2), jnp.float32, "cpu", "im2col"),  # depthwise (groups = 2 = c_in)
        ((1, 1, 2, 4), jnp.float32, "cpu", "im2col"),  # 1x1
        ((3, 3, 3, 2, 4), jnp.float64, "cpu", "im2col"),
        ((3, 3, 2, 4), jnp.bfloat16, "cpu", "xla"),  # issue 10: im2col is up to 10x slower there
        ((3, 3, 2, 4), jnp.float16, "cpu", "xla"),
        ((3, 2, 4), jnp.float32, "cpu", "xla"),
        ((3, 3, 2, 4), jnp.float32, "gpu", "xla"),
    ],
)
def test_auto_impl_rule(kernel_shape, dtype, backend, want, without_onednn):
    d = len(kernel_shape) - 2
    spec = shapes.conv_spec(kernel_shape[:d], groups=2 // kernel_shape[-2])
    geo = shapes.conv_geometry(spec, (4096,) + (32,) * d + (2,), kernel_shape)  # a big call
    assert conv_module().auto_impl(geo, backend, dtype) == want


def test_auto_impl_strided_2d_is_im2col(without_onednn):
    geo = shapes.conv_geometry(shapes.conv_spec(3, strides=(2, 1)), (2, 8, 8, 2), (3, 3, 2, 4))
    assert conv_module().auto_impl(geo, "cpu", jnp.float32) == "im2col"


@pytest.mark.parametrize("batch, want", [((32,), "im2col"), ((128,), "xla"), ((2, 64), "xla")])
def test_auto_impl_small_calls_take_im2col(batch, want, without_onednn):
    # LeNet conv1 at 28x28: 0.78 MFLOPs an example, so 50 MFLOPs is crossed at 64 examples.
    geo = shapes.conv_geometry(shapes.conv_spec(5, padding=2), batch + (28, 28, 1), (5, 5, 1, 20))
    assert conv_module().auto_impl(geo, "cpu", jnp.float32) == want


@pytest.mark.parametrize(
    "in_shape, kernel_shape, want",
    [
        ((28, 28, 1), (3, 3, 1, 32), "direct"),  # small_vgg's first layer
        ((28, 28, 1), (5, 5, 1, 20), "xla"),  # LeNet conv1
        ((32, 32, 3), (3, 3, 3, 16), "xla"),  # ResNet's RGB stem
        ((16, 16, 32), (3, 3, 32, 32), "im2col"),  # 3x3 on a small image
        ((7, 7, 128), (3, 3, 128, 128), "im2col"),
        ((28, 28, 32), (3, 3, 32, 32), "hybrid"),  # 3x3 on a 28x28 image
        ((14, 14, 20), (5, 5, 20, 50), "hybrid"),  # LeNet conv2: a 5x5 kernel
    ],
)
def test_auto_impl_by_layer(in_shape, kernel_shape, want, without_onednn):
    # The layer table's winners (experiments/bench.py --suite convs, batch 128).
    geo = shapes.conv_geometry(
        shapes.conv_spec(kernel_shape[:2], padding="same"), (128,) + in_shape, kernel_shape
    )
    assert conv_module().auto_impl(geo, "cpu", jnp.float32) == want


def test_auto_as_overrides_auto_inside_its_block_only():
    x, k = rng_arrays(23, (2, 6, 6, 2), (3, 3, 2, 4))

    def prims(f):  # a fresh function each time: JAX caches traces per function, not per scope
        return {e.primitive.name for e in jax.make_jaxpr(lambda x, k: f(x, k))(x, k).eqns}

    auto = functools.partial(conv, padding=1)  # a small call: auto picks im2col (no lax conv)
    assert "conv_general_dilated" not in prims(auto)
    with ops.auto_as("xla"):
        assert "conv_general_dilated" in prims(auto)
        assert "conv_general_dilated" not in prims(functools.partial(conv, padding=1, impl="im2col"))
        with ops.auto_as("direct"):
            assert "conv_general_dilated" not in prims(auto)
        assert "conv_general_dilated" in prims(auto)
    assert "conv_general_dilated" not in prims(auto)
    with ops.auto_as("xla"):
        np.testing.assert_allclose(
            jax.jit(auto)(x, k), conv(x, k, padding=1, impl="im2col"), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match=r"auto_as: `impl` must be one of"):
        with ops.auto_as("auto"):
            pass


def conv_module():
    return importlib.import_module("jcnn.ops.conv")


def test_errors_are_raised_under_jit():
    x, k = rng_arrays(0, (6, 6, 3), (3, 3, 3, 4))
    with pytest.raises(ShapeError, match=r"`strides` must be >= 1, got 0") as e:
        jax.jit(functools.partial(conv, strides=0))(x, k)
    assert_jcnn_error(e.value)


# --------------------------------------------------------------------------------------------
# 7. Errors
# --------------------------------------------------------------------------------------------

X = (2, 6, 6, 3)
K = (3, 3, 3, 4)

CONV_ERRORS = [
    # (x_shape, kernel_shape, bias_shape, kwargs, error, match)
    (
        (6, 6),
        (3, 3, 1, 4),
        None,
        {},
        ShapeError,
        r"`x` must have shape .*got shape \(6, 6\).*x\[\.\.\., None\]",
    ),
    (
        (6,),
        K,
        None,
        {},
        ShapeError,
        r"`x` must have shape \(\*batch, \*spatial, channels\) with 2 spatial dim",
    ),
    (X, (3, 3), None, {}, ShapeError, r"`kernel` must have shape .*got shape \(3, 3\)"),
    (X, (3,), None, {}, ShapeError, r"`kernel` must have shape"),
    ((6, 6, 4), K, None, {}, ShapeError, r"input has 4 channels but the kernel expects 3 .*\(3, 3, 3, 4\)"),
    (
        (6, 6, 3),
        (3, 3, 1, 4),
        None,
        dict(groups=2),
        ShapeError,
        r"input channels \(3\) must be divisible by `groups` \(2\)",
    ),
    (
        (6, 6, 4),
        (3, 3, 2, 3),
        None,
        dict(groups=2),
        ShapeError,
        r"out-channels \(3.*divisible by `groups` \(2\)",
    ),
    (
        (6, 6, 4),
        (3, 3, 1, 4),
        None,
        dict(groups=2),
        ShapeError,
        r"input has 4 channels but the kernel expects 2",
    ),
    (X, K, None, dict(groups=0), ShapeError, r"`groups` must be >= 1, got 0"),
    (X, K, None, dict(groups=-3), ShapeError, r"`groups` must be >= 1, got -3"),
    (X, K, None, dict(groups=1.0), TypeError, r"`groups` must be an int"),
    (X, K, (5,), {}, ShapeError, r"`bias` must have shape \(4,\).*got shape \(5,\)"),
    (X, K, (1, 4), {}, ShapeError, r"`bias` must have shape \(4,\).*got shape \(1, 4\)"),
    (X, K, (), {}, ShapeError, r"`bias` must have shape \(4,\).*got shape \(\)"),
    (X, K, None, dict(strides=0), ShapeError, r"`strides` must be >= 1, got 0"),
    (X, K, None, dict(strides=(1, -1)), ShapeError, r"`strides` must be >= 1, got \(1, -1\)"),
    (
        X,
        K,
        None,
        dict(strides=(1, 1, 1)),
        ShapeError,
        r"`strides` must be an int or a tuple of 2 ints.*length 3",
    ),
    (X, K, None, dict(strides=1.5), TypeError, r"`strides` must be an int, got 1.5"),
    (X, K, None, dict(strides="2"), TypeError, r"`strides` must be an int, got '2'"),
    (X, K, None, dict(dilation=0), ShapeError, r"`dilation` must be >= 1, got 0"),
    (X, K, None, dict(dilation=(2,)), ShapeError, r"`dilation` must be an int or a tuple of 2 ints"),
    (X, (0, 3, 3, 4), None, {}, ShapeError, r"`kernel_size` must be >= 1, got \(0, 3\)"),
    (
        X,
        (3, 3, 3, 0),
        None,
        {},
        ShapeError,
        r"kernel must have >= 1 input and output channel.*\(3, 3, 3, 0\)",
    ),
    (X, (3, 3, 0, 4), None, {}, ShapeError, r"kernel must have >= 1 input and output channel"),
    ((2, 0, 6, 3), K, None, {}, ShapeError, r"every spatial and channel dim of `x` must be >= 1"),
    ((2, 6, 6, 0), (3, 3, 0, 4), None, {}, ShapeError, r">= 1"),
    (X, K, None, dict(padding=-1), ShapeError, r"padding must be >= 0 on every side, got -1"),
    (X, K, None, dict(padding=((1, -1), (0, 0))), ShapeError, r"padding must be >= 0"),
    (
        X,
        K,
        None,
        dict(padding=((1, 2, 3), (1, 1))),
        ShapeError,
        r"entry \(1, 2, 3\) is not a \(lo, hi\) pair",
    ),
    (
        X,
        K,
        None,
        dict(padding=(1, 1, 1)),
        ShapeError,
        r"`padding` must be an int, a tuple of 2 ints.*3 entries for 2",
    ),
    (X, K, None, dict(padding=1.5), TypeError, r"`padding` must be an int, a tuple of 2 ints"),
    (X, K, None, dict(padding=None), TypeError, r"`padding` must be an int"),
    (X, K, None, dict(padding="full"), ValueError, r"unknown name 'full'"),
    (X, K, None, dict(padding="causal"), ValueError, r"'CAUSAL' is for 1-D inputs, got 2 spatial dims"),
    (
        X,
        K,
        None,
        dict(padding_mode="mirror"),
        ValueError,
        r"`padding_mode` must be one of 'zeros', 'reflect', .*'mirror'",
    ),
    (X, K, None, dict(padding_mode=None), ValueError, r"`padding_mode` must be one of"),
    (
        X,
        K,
        None,
        dict(impl="fft"),
        ValueError,
        r"`impl` must be one of .*'xla', 'direct', 'im2col'.*got 'fft'",
    ),
    (X, K, None, dict(impl=None), ValueError, r"`impl` must be one of"),
    ((2, 2, 3), K, None, {}, ShapeError, r"kernel of size 3 is larger than the padded input of size 2"),
    ((4, 4, 3), K, None, dict(dilation=2), ShapeError, r"dilation 2 makes it 5 wide.*padded input of size 4"),
    (
        (3, 3, 3),
        K,
        None,
        dict(padding=3, padding_mode="reflect"),
        ShapeError,
        r"reflect padding must be smaller than the input.*\(3, 3\).*size of 3",
    ),
    (
        (3, 3, 3),
        K,
        None,
        dict(padding=((0, 0), (0, 3)), padding_mode="reflect"),
        ShapeError,
        r"reflect padding",
    ),
    (
        (3, 3, 3),
        K,
        None,
        dict(padding=4, padding_mode="circular"),
        ShapeError,
        r"circular padding can wrap at most once",
    ),
]


@pytest.mark.parametrize("impl", ("xla", "im2col") + ONEDNN)
@pytest.mark.parametrize("x_shape, kernel_shape, bias_shape, kwargs, error, match", CONV_ERRORS)
def test_conv_errors(impl, x_shape, kernel_shape, bias_shape, kwargs, error, match):
    x, k = np.ones(x_shape), np.ones(kernel_shape)
    bias = None if bias_shape is None else np.ones(bias_shape)
    kwargs = {"impl": impl, **kwargs}
    with pytest.raises(error, match=match) as e:
        conv(x, k, bias, **kwargs)
    assert_jcnn_error(e.value)


@pytest.mark.parametrize(
    "x, kernel, bias, name",
    [
        (np.ones((6, 6, 3), np.int32), np.ones(K), None, "x"),
        (np.ones((6, 6, 3)), np.ones(K, np.int64), None, "kernel"),
        (np.ones((6, 6, 3), bool), np.ones(K), None, "x"),
        (np.ones((6, 6, 3)), np.ones(K), np.ones(4, np.int32), "bias"),
    ],
)
@pytest.mark.parametrize("op", ["conv", "conv_transpose"])
def test_integer_input_says_cast(x, kernel, bias, name, op):
    fn = conv if op == "conv" else conv_transpose
    if op == "conv_transpose":
        kernel = np.ones((3, 3, 3, 4), kernel.dtype)
    with pytest.raises(TypeError, match=rf"`{name}` must have a floating-point .*dtype, got .*; cast") as e:
        fn(x, kernel, bias)
    assert_jcnn_error(e.value)


TRANSPOSE_ERRORS = [
    (
        (5, 5, 2),
        (3, 3, 2, 1),
        None,
        dict(strides=2, output_padding=2),
        ShapeError,
        r"`output_padding` must be smaller than the stride or the dilation",
    ),
    ((5, 5, 2), (3, 3, 2, 1), None, dict(output_padding=1), ShapeError, r"`output_padding` must be smaller"),
    (
        (5, 5, 2),
        (3, 3, 2, 1),
        None,
        dict(strides=2, output_padding=-1),
        ShapeError,
        r"`output_padding` must be >= 0",
    ),
    (
        (5, 5, 2),
        (3, 3, 2, 1),
        None,
        dict(strides=2, output_padding=(1, 1, 1)),
        ShapeError,
        r"`output_padding` must be an int or a tuple of 2",
    ),
    ((5, 5, 3), (3, 3, 4, 2), None, {}, ShapeError, r"input has 3 channels but the kernel expects 4"),
    (
        (5, 5, 3),
        (3, 3, 3, 2),
        None,
        dict(groups=2),
        ShapeError,
        r"input channels \(3\) must be divisible by `groups` \(2\)",
    ),
    ((5, 5, 4), (3, 3, 4, 2), (2,), dict(groups=2), ShapeError, r"`bias` must have shape \(4,\)"),
    ((5, 5, 2), (3, 3, 2, 0), None, {}, ShapeError, r">= 1 output channel"),
    ((5, 5, 2), (3, 3, 2, 1), None, dict(padding="same"), ValueError, r"'VALID'; got 'same'"),
    ((2, 2, 1), (2, 2, 1, 1), None, dict(padding=3), ShapeError, r"padding \(3, 3\) is too large"),
    ((5, 5, 2), (3, 3, 2, 1), None, dict(padding=-1), ShapeError, r"padding must be >= 0"),
    ((5, 5, 2), (3, 3, 2, 1), None, dict(strides=0), ShapeError, r"`strides` must be >= 1, got 0"),
    ((5, 5, 2), (3, 3, 2, 1), None, dict(dilation=(1, 0)), ShapeError, r"`dilation` must be >= 1"),
    ((5, 5, 2), (3, 3, 2, 1), None, dict(groups=0), ShapeError, r"`groups` must be >= 1, got 0"),
    ((5, 2), (3, 3, 2, 1), None, {}, ShapeError, r"`x` must have shape"),
    ((5, 5, 2), (3, 2), None, {}, ShapeError, r"`kernel` must have shape"),
]


@pytest.mark.parametrize("x_shape, kernel_shape, bias_shape, kwargs, error, match", TRANSPOSE_ERRORS)
def test_conv_transpose_errors(x_shape, kernel_shape, bias_shape, kwargs, error, match):
    x, k = np.ones(x_shape), np.ones(kernel_shape)
    bias = None if bias_shape is None else np.ones(bias_shape)
    with pytest.raises(error, match=match) as e:
        conv_transpose(x, k, bias, **kwargs)
    assert_jcnn_error(e.value)


# --------------------------------------------------------------------------------------------
# 8. Fuzz: often-invalid arguments give jcnn's error or the right array, nothing else.
# --------------------------------------------------------------------------------------------

wild_scalar = st.sampled_from(
    [-2, -1, 0, 1, 2, 3, 9, np.int64(2), 2.0, 1.5, float("nan"), "2", "", None, True, b"1"]
)
wild_entry = st.one_of(st.integers(-1, 3), st.tuples(st.integers(-1, 3), st.integers(-1, 3)), wild_scalar)
wild_tuple = st.lists(wild_entry, max_size=4).map(tuple)
wild_hyper = st.one_of(wild_scalar, wild_tuple)
wild_padding = st.one_of(
    st.sampled_from(["SAME", "same", "VALID", "causal", "Same_Lower", "full", "CIRCULAR", "", "SAME "]),
    wild_scalar,
    wild_tuple,
    st.just([[1, 0]]),
)
wild_mode = st.one_of(
    st.sampled_from(["Reflect", "CIRCULAR", "mirror", "edge", "", "constant"]), st.none(), st.integers()
)
wild_impl = st.one_of(st.sampled_from(["XLA", "fft", "", "Direct"]), st.none(), st.integers())
wild_dims = st.tuples(
    st.lists(st.sampled_from([0, 1, 1, 2, 3, 5]), max_size=5), st.integers(0, 5), st.sampled_from([None, 40])
).map(lambda t: tuple(t[0][: t[1]] + ([t[2]] if t[2] else []) + t[0][t[1] :]))  # at most one huge dim


@st.composite
def fuzz_cases(draw, transpose=False):
    """A valid configuration with each argument replaced, now and then, by something wild:
    negative or zero sizes, wrong lengths, huge kernels, strings, floats, None, bools."""
    if transpose:
        cfg = draw(transpose_configs())
        names = ("strides", "padding", "output_padding", "dilation", "groups")
    else:
        cfg = draw(conv_configs())
        cfg["impl"] = draw(st.sampled_from(IMPLS))
        names = ("strides", "padding", "dilation", "groups", "padding_mode", "impl")
    c_out = cfg["kernel_shape"][-1] * (cfg["groups"] if transpose else 1)
    cfg["bias_shape"] = draw(
        st.sampled_from([None, (c_out,), (c_out,), (c_out,), (c_out + 1,), (1, c_out), ()])
    )
    wild = {"padding": wild_padding, "padding_mode": wild_mode, "impl": wild_impl}
    sometimes = st.sampled_from([False] * 9 + [True])
    for name in names:
        if draw(sometimes):
            cfg[name] = draw(wild.get(name, wild_hyper))
    for name in ("x_shape", "kernel_shape"):
        if draw(sometimes):
            cfg[name] = draw(wild_dims)
    return cfg


def _fuzz_result_ok(y, x, kernel, reference):
    d = kernel.ndim - 2
    n_batch = x.ndim - d - 1
    assert y.shape[:n_batch] == x.shape[:n_batch]
    assert all(n >= 1 for n in y.shape[n_batch:]), y.shape  # never an empty array
    assert y.shape == reference.shape
    np.testing.assert_allclose(y, reference, rtol=1e-10, atol=1e-10)


def test_fuzz_conv(x64):
    torch = pytest.importorskip("torch")
    stats, accepted = oracle_stats("conv (fuzz)"), []

    @given(fuzz_cases(), st.integers(0, 9))
    def check(cfg, seed):
        x, kernel = rng_arrays(seed, cfg["x_shape"], cfg["kernel_shape"])
        bias = None if cfg["bias_shape"] is None else rng_arrays(seed, cfg["bias_shape"])[0]
        kwargs = conv_kwargs(cfg)
        try:
            y = conv(x, kernel, bias, impl=cfg["impl"], **kwargs)
        except (ValueError, TypeError) as e:
            assert_jcnn_error(e)
            stats["rejected"] += 1
            return
        accepted.append(cfg)
        d = kernel.ndim - 2
        if cfg["impl"] != "xla":
            _fuzz_result_ok(y, x, kernel, conv(x, kernel, bias, impl="xla", **kwargs))
        if 0 not in x.shape:
            s, r = as_ints(kwargs["strides"], d), as_ints(kwargs["dilation"], d)
            pads = oracle_pads(kwargs["padding"], x.shape[-d - 1 : -1], kernel.shape[:d], s, r)
            mode = kwargs["padding_mode"].lower()
            want = torch_conv(torch, x, kernel, bias, s, pads, r, operator.index(kwargs["groups"]), mode)
            _fuzz_result_ok(y, x, kernel, want)
            record(stats, y, want)

    check()
    assert len(accepted) >= min_cases() and stats["rejected"] >= min_cases(), stats


def test_fuzz_conv_transpose(x64):
    torch = pytest.importorskip("torch")
    stats, accepted = oracle_stats("conv_transpose (fuzz)"), []

    @given(fuzz_cases(transpose=True), st.integers(0, 9))
    def check(cfg, seed):
        x, kernel = rng_arrays(seed, cfg["x_shape"], cfg["kernel_shape"])
        bias = None if cfg["bias_shape"] is None else rng_arrays(seed, cfg["bias_shape"])[0]
        kwargs = {k: cfg[k] for k in ("strides", "padding", "output_padding", "dilation", "groups")}
        try:
            y = conv_transpose(x, kernel, bias, **kwargs)
        except (ValueError, TypeError) as e:
            assert_jcnn_error(e)
            stats["rejected"] += 1
            return
        accepted.append(cfg)
        d = kernel.ndim - 2
        if 0 not in x.shape:
            padding = kwargs["padding"]
            pads = oracle_pads(0 if isinstance(padding, str) else padding, None, kernel.shape[:d], None, None)
            want = torch_conv_transpose(
                torch,
                x,
                kernel,
                bias,
                as_ints(kwargs["strides"], d),
                pads,
                as_ints(kwargs["output_padding"], d),
                as_ints(kwargs["dilation"], d),
                operator.index(kwargs["groups"]),
            )
            _fuzz_result_ok(y, x, kernel, want)
            record(stats, y, want)

    check()
    assert len(accepted) >= min_cases() and stats["rejected"] >= min_cases(), stats


def test_zero_size_batch_is_allowed_like_torch():
    # An empty batch is not an empty result of a bad shape: torch accepts it, and so does jcnn.
    x, k = np.ones((0, 5, 5, 3)), np.ones((3, 3, 3, 2))
    assert conv(x, k).shape == (0, 3, 3, 2)
    torch = pytest.importorskip("torch")
    assert torch_conv(torch, x, k, None, (1, 1), ((0, 0), (0, 0)), (1, 1), 1, "zeros").shape == (0, 3, 3, 2)


def test_same_and_causal_output_lengths(x64):
    # float64: the mirror check below compares two sums of the same terms in opposite orders.
    x, k = rng_arrays(15, (2, 9, 2), (3, 2, 2))
    assert conv(x, k, strides=2, padding="SAME").shape == (2, 5, 2)  # ceil(9 / 2)
    y = conv(x, k, padding="causal", dilation=2)
    assert y.shape == (2, 9, 2)
    # Causal: output t depends on inputs <= t only.
    x2 = x.copy()
    x2[:, 5:] += 1.0
    y2 = conv(x2, k, padding="causal", dilation=2)
    np.testing.assert_array_equal(y[:, :5], y2[:, :5])
    assert not np.allclose(y[:, 5:], y2[:, 5:])
    # SAME_LOWER mirrors SAME: reversing the input reverses the output of the reversed kernel.
    x3, k3 = rng_arrays(16, (8, 1), (4, 1, 1))
    a = conv(x3, k3, padding="same")
    b = conv(x3[::-1], k3[::-1], padding="same_lower")[::-1]
    np.testing.assert_allclose(a, b, rtol=1e-13)


def test_accepts_jax_arrays_and_numpy_ints():
    x, k = rng_arrays(17, (6, 6, 2), (3, 3, 2, 2))
    want = conv(x, k, strides=2, padding=1)
    got = conv(jnp.asarray(x), jnp.asarray(k), strides=np.int64(2), padding=(np.int32(1), (1, np.int64(1))))
    np.testing.assert_array_equal(got, want)
    assert math.prod(got.shape) > 0


# --------------------------------------------------------------------------------------------
# 9. Layers take whole batches; nothing inside JAX or Python fails first (issues 9 and 11)
# --------------------------------------------------------------------------------------------


def _layer_batch_cases():
    from jcnn.layers import Conv, ConvTranspose

    return {
        "conv-im2col": (Conv(4, 3, strides=2, padding=1, impl="im2col"), (7, 6, 3)),
        "conv-direct-reflect": (
            Conv(4, (3, 2), padding="same", padding_mode="reflect", impl="direct"),
            (5, 6, 2),
        ),
        "conv-xla-groups": (Conv(4, 3, groups=2, dilation=2, impl="xla"), (7, 7, 2)),
        "conv-auto-1d": (Conv(3, (3,), padding="causal"), (9, 2)),
        "conv_transpose": (ConvTranspose(4, 3, strides=2, padding=1, output_padding=1, groups=2), (4, 5, 2)),
    }


@pytest.mark.parametrize("name", list(_layer_batch_cases()))
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_conv_layers_take_leading_batch_dims(name, batch):
    layer, shape = _layer_batch_cases()[name]
    out_shape, params, state = layer.init(jax.random.key(0), shape)
    x = jnp.asarray(np.random.default_rng(0).normal(size=batch + shape), jnp.float32)
    y, new_state = layer.apply(params, state, x, batch_ndim=len(batch))
    assert y.shape == batch + out_shape and new_state == state
    flat = x.reshape((-1,) + shape)
    loop = jnp.stack([layer.apply(params, state, xi)[0] for xi in flat]).reshape(y.shape)
    np.testing.assert_allclose(y, loop, rtol=1e-5, atol=1e-5)
    if batch:
        one = jax.vmap(lambda xi: layer.apply(params, state, xi)[0])
        np.testing.assert_allclose(y, one(flat).reshape(y.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["im2col", "direct"])
def test_conv_layer_chunks_the_batch_it_receives(impl, monkeypatch):
    # Inside a model the op now sees the whole batch, so the hand-written impls' chunking
    # (lax.map over cache-sized chunks) fires: the jaxpr has a loop, and the numbers are the
    # loop over examples and the vmap of the per-example apply.
    from jcnn.layers import Conv

    conv_module = importlib.import_module("jcnn.ops.conv")
    layer = Conv(3, 2, padding=1, impl=impl)
    _, params, state = layer.init(jax.random.key(1), (6, 5, 2))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 6, 5, 2)), jnp.float32)
    per_example = 7 * 6 * 4 * 2 * 4  # out pixels x taps x c_in x itemsize (float32)
    monkeypatch.setattr(conv_module, "CHUNK_BYTES", 2 * per_example + 1)
    apply = functools.partial(layer.apply, params, state)
    batch_apply = functools.partial(layer.apply, params, state, batch_ndim=1)
    prims = {str(e.primitive) for e in jax.make_jaxpr(batch_apply)(x).jaxpr.eqns}
    assert prims & {"scan", "while"}, prims
    y = batch_apply(x)[0]
    loop = jnp.stack([apply(xi)[0] for xi in x])
    vmapped = jax.vmap(lambda xi: apply(xi)[0])(x)
    np.testing.assert_allclose(y, loop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, vmapped, rtol=1e-5, atol=1e-5)


HUGE = 2**63


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, k: conv(x, k, strides=HUGE), r"^conv: every entry of `strides` must be <= 2147483647"),
        (lambda x, k: conv(x, k, strides=(1, HUGE)), r"^conv: every entry of `strides` must be <= "),
        (lambda x, k: conv(x, k, dilation=HUGE), r"^conv: every entry of `dilation` must be <= "),
        (lambda x, k: conv(x, k, padding=HUGE), r"^conv: `padding` must be <= "),
        (lambda x, k: conv(x, k, padding=((0, HUGE), (0, 0))), r"^conv: `padding` must be <= "),
        (lambda x, k: conv(x, k, groups=HUGE), r"^conv: `groups` must be <= "),
        (
            lambda x, k: conv_transpose(x, k, strides=HUGE),
            r"^conv_transpose: every entry of `strides` must be <= ",
        ),
        (lambda x, k: conv_transpose(x, k, padding=HUGE), r"^conv_transpose: `padding` must be <= "),
        (
            lambda x, k: conv_transpose(x, k, output_padding=-HUGE),
            r"^conv_transpose: every entry of `output_padding`",
        ),
        (lambda x, k: conv(None, k), r"^conv: `x` must be an array, got NoneType None"),
        (lambda x, k: conv("abc", k), r"^conv: `x` must be an array, got str 'abc'"),
        (
            lambda x, k: conv(np.array(["a", "b"]), k),
            r"^conv: `x` must have a floating-point .*dtype, got <U1",
        ),
        (
            lambda x, k: conv(np.array([object()]), k),
            r"^conv: `x` must have a floating-point .*dtype, got object",
        ),
        (lambda x, k: conv([[1.0, 2.0], [3.0]], k), r"^conv: `x` must be an array \(or nested lists"),
        (lambda x, k: conv(x, None), r"^conv: `kernel` must be an array, got NoneType"),
        (lambda x, k: conv(x, k, bias="b"), r"^conv: `bias` must be an array, got str"),
        (
            lambda x, k: conv_transpose(x, np.array([[["k"]]])),
            r"^conv_transpose: `kernel` must have a floating",
        ),
    ],
)
def test_fuzz_classes_get_jcnn_errors(call, match):
    # Issue 11: huge ints, None, strings and string/object arrays used to fail inside JAX or
    # Python (a TypeError on slice strides, an OverflowError, "must be an array, got ndarray").
    x, k = np.ones((2, 6, 6, 2)), np.ones((3, 3, 2, 2))
    with pytest.raises((TypeError, ValueError), match=match) as e:
        call(x, k)
    assert_jcnn_error(e.value)


@pytest.mark.parametrize(
    "make, x, error, match",
    [
        (
            lambda L: L.Conv(4, 3, strides=HUGE),
            None,
            ValueError,
            r"^Conv: every entry of `strides` must be <= ",
        ),
        (
            lambda L: L.ConvTranspose(4, 3, strides=HUGE),
            None,
            ValueError,
            r"^ConvTranspose: every entry of `strides`",
        ),
        (
            lambda L: L.ConvTranspose(4, 3, dilation=(1, HUGE)),
            None,
            ValueError,
            r"^ConvTranspose: every entry of",
        ),
        (lambda L: L.Conv(HUGE, 3), None, ValueError, r"^Conv: `out_channels` must be <= "),
        (lambda L: L.Conv(4, 3), None, TypeError, r"^Conv: `x` must be an array, got NoneType"),
        (lambda L: L.Conv(4, 3), "abc", TypeError, r"^Conv: `x` must be an array, got str"),
        (
            lambda L: L.Conv(4, 3),
            np.full((5, 5, 2), "a"),
            TypeError,
            r"^Conv: `x` must have a floating-point",
        ),
        (
            lambda L: L.ConvTranspose(4, 3),
            np.full((5, 5, 2), None),
            TypeError,
            r"^ConvTranspose: `x` must have a",
        ),
        (
            lambda L: L.Conv(4, 3),
            [[1.0] * 2] * 2,
            ValueError,
            r"^Conv: `apply` expects one example of shape \(\*spatial, channels\) with 2 spatial dim",
        ),
    ],
)
def test_fuzz_classes_get_jcnn_errors_from_layers(make, x, error, match):
    from jcnn import layers

    with pytest.raises(error, match=match):
        layer = make(layers)
        _, params, state = layer.init(jax.random.key(0), (5, 5, 2))
        layer.apply(params, state, x)


def test_conv_layer_accepts_nested_lists():
    from jcnn.layers import Conv

    layer = Conv(2, 2)
    _, params, state = layer.init(jax.random.key(0), (3, 3, 1))
    x = np.arange(18.0).reshape(2, 3, 3, 1)
    np.testing.assert_allclose(
        layer.apply(params, state, x.tolist(), batch_ndim=1)[0],
        layer.apply(params, state, x, batch_ndim=1)[0],
    )
