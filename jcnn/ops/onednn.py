"""oneDNN convolutions on CPU: loading the kernels, and the JAX primitives that call them.

jcnn's C++ extension (``jcnn/ops/csrc/onednn_conv.cc``, built by ``pip install`` where oneDNN is
available) holds XLA FFI handlers for the three directions of a channels-last convolution. This
module finds it, checks that the running jaxlib accepts it, registers it for the CPU platform
(lazily, once), and wraps each direction in a JAX primitive:

* ``fwd(x, k) -> y`` (and ``fwd_bias(x, k, b) -> y``, the bias fused into oneDNN's kernel),
* ``bwd_data(dy, k) -> dx``, the transpose of ``fwd`` in ``x``,
* ``bwd_weights(x, dy) -> dk``, the transpose of ``fwd`` in ``k``.

Each is bilinear, so its JVP is the sum of the primitive applied to one tangent at a time, and
its transposes are again the other two primitives: every autodiff mode (``grad``, ``jvp``,
``jax.hessian``, any order) runs on oneDNN. Batching rules fold a ``vmap`` axis into the batch
(unbatched kernel) or into the channel groups (batched kernel, per-example kernel gradients).
Off the CPU the primitives lower to XLA's convolution, so a traced program still compiles there.

Use it through ``jcnn.ops.conv(..., impl="onednn")`` or ``conv_transpose(..., impl="onednn")``;
`status` says whether the kernels are active and why (``jcnn.ops.backends()`` for every impl).

Threads: oneDNN runs each call on an OpenMP team of the calling thread (the GNU OpenMP runtime,
libgomp, which PyTorch's CPU wheels also load: one runtime serves both). jcnn sets no OpenMP
environment variable: a call of 64 MFLOPs or more runs on ``OMP_NUM_THREADS`` threads (default:
the cores this process may use), a smaller one on the calling thread alone (its thread count
set for that call and restored after; a team's barrier costs more than it saves there, far more
on a machine with more runnable threads than cores). Idle threads wait the way
``OMP_WAIT_POLICY`` says (libgomp's default spins briefly, then sleeps); ``ACTIVE`` makes them
spin and slows XLA's own ops that follow (a matmul 1.6x in experiments/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import threading
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["OnednnStatus", "status", "available", "supports", "DISABLE_ENV", "REQUIRE_ENV"]

DISABLE_ENV = "JCNN_DISABLE_ONEDNN"  # "1": never load the kernels (the pure-JAX impls remain)
REQUIRE_ENV = "JCNN_REQUIRE_ONEDNN"  # "1": tests fail instead of skipping when they are absent
LIBRARY = Path(__file__).with_name("libjcnn_onednn.so")
ONEDNN_DIST = "onednn-cpu-gomp"  # the PyPI package that ships libdnnl.so.3 (oneDNN 3.2, libgomp)

# FFI target name -> symbol in the extension.
_TARGETS = {
    "jcnn_onednn_conv_fwd": "JcnnOnednnConvFwd",
    "jcnn_onednn_conv_fwd_bias": "JcnnOnednnConvFwdBias",
    "jcnn_onednn_conv_bwd_data": "JcnnOnednnConvBwdData",
    "jcnn_onednn_conv_bwd_weights": "JcnnOnednnConvBwdWeights",
}
_XLA_DTYPE_CODES = {"float32": 11, "bfloat16": 16}  # XLA_FFI_DataType numbering


# ------------------------------------------------------------------------------------------
# JAX version shims (jax 0.6 .. 0.10): the only version-dependent lines of this module.
# ------------------------------------------------------------------------------------------


def _unify_varying(*args):
    """Give the operands one set of varying manual axes (``shard_map``), as lax ops do.

    A primitive's operands must agree on the mesh axes they vary over; lax inserts the casts
    itself (jax 0.6: ``core.standard_insert_pvary``, jax 0.7+: ``core.auto_insert_reshard``),
    and each cast's transpose is the ``psum`` that reduces a replicated operand's gradient.
    """
    from jax._src import core

    insert = getattr(core, "auto_insert_reshard", None) or getattr(core, "standard_insert_pvary", None)
    return tuple(insert(*args)) if insert is not None else args


def _impl(prim):
    """The eager rule: compile the primitive alone and run it (what lax primitives do)."""
    from jax._src import dispatch

    return functools.partial(dispatch.apply_primitive, prim)


# ------------------------------------------------------------------------------------------
# Loading and registration
# ------------------------------------------------------------------------------------------


class OnednnStatus(NamedTuple):
    """Whether jcnn's oneDNN kernels are active in this process, and why (not).

    Attributes:
      available: the kernels are loaded and registered with XLA for the CPU platform.
      reason: one sentence: what is active, or why nothing is.
      version: oneDNN's version (e.g. ``"3.2.0"``), or ``None``.
      dtypes: the dtypes with an optimised oneDNN kernel on this CPU (``"float32"``, and
        ``"bfloat16"`` where the CPU has one); the others are refused by ``impl="onednn"``.
      kernels: oneDNN's implementation per dtype for a probe conv (e.g.
        ``{"float32": "brg_conv_fwd:avx512_core"}``).
      library: the loaded extension's path, or ``None``.
    """

    available: bool
    reason: str
    version: str | None = None
    dtypes: tuple[str, ...] = ()
    kernels: dict | None = None
    library: str | None = None


_lock = threading.Lock()
_status: OnednnStatus | None = None


def _find_libdnnl() -> Path | None:
    """libdnnl.so.3 from the onednn-cpu-gomp wheel: it lands in ``<prefix>/lib``, outside
    site-packages, and has no RUNPATH, so jcnn loads it by absolute path before its extension."""
    from importlib import metadata

    try:
        files = metadata.distribution(ONEDNN_DIST).files or ()
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libdnnl.so.3":
            path = Path(f.locate()).resolve()
            if path.exists():
                return path
    return None


def _running_ffi_api() -> tuple[int, int] | None:
    """The XLA FFI API version of the running jaxlib, read from the headers it ships."""
    header = Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h"
    try:
        text = header.read_text()
    except OSError:
        return None
    found = [re.search(rf"#define XLA_FFI_API_{part}\s+(\d+)", text) for part in ("MAJOR", "MINOR")]
    return None if None in found else (int(found[0][1]), int(found[1][1]))


def _load() -> OnednnStatus:
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return OnednnStatus(False, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}.")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return OnednnStatus(
            False,
            f"jcnn ships oneDNN kernels for Linux x86_64 only, this is {platform.system()} {platform.machine()}.",
        )
    if not LIBRARY.exists():
        return OnednnStatus(
            False,
            f"the extension {LIBRARY.name} was not built (oneDNN missing or the compile failed at "
            f"install time; reinstall with `pip install -v` to see the build log).",
        )
    libdnnl = _find_libdnnl()
    try:
        # RTLD_GLOBAL: the extension's NEEDED libdnnl.so.3 is then resolved to this copy.
        ctypes.CDLL(str(libdnnl) if libdnnl else "libdnnl.so.3", mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as e:
        where = libdnnl or f"the system's library path (the {ONEDNN_DIST} package is not installed)"
        return OnednnStatus(False, f"could not load oneDNN from {where}: {e}.")
    for name in ("jcnn_onednn_ffi_api_version", "jcnn_onednn_version"):
        getattr(lib, name).restype = ctypes.c_int64
    lib.jcnn_onednn_probe.restype = ctypes.c_char_p
    lib.jcnn_onednn_probe.argtypes = [ctypes.c_int64]
    built = divmod(int(lib.jcnn_onednn_ffi_api_version()), 1000)
    running = _running_ffi_api()
    # XLA accepts handlers of its own FFI API version or older within one major version; a
    # refused handler would disable JAX's whole CPU backend, so check before registering.
    if running is not None and (built[0] != running[0] or built[1] > running[1]):
        return OnednnStatus(
            False,
            f"the extension was built for XLA FFI API {built[0]}.{built[1]}, the running jaxlib "
            f"{jax.lib.__version__} has {running[0]}.{running[1]}; rebuild jcnn (pip install -e .).",
        )
    v = int(lib.jcnn_onednn_version())
    version = f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    kernels = {name: lib.jcnn_onednn_probe(code).decode() for name, code in _XLA_DTYPE_CODES.items()}
    dtypes = tuple(name for name, impl in kernels.items() if impl and not impl.startswith("ref"))
    if "float32" not in dtypes:
        return OnednnStatus(False, f"oneDNN {version} has no optimised float32 conv on this CPU ({kernels}).")
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    missing = sorted(set(_XLA_DTYPE_CODES) - set(dtypes))
    detail = (
        f"; {', '.join(missing)} uses XLA's conv (no optimised oneDNN kernel on this CPU)" if missing else ""
    )
    reason = f"oneDNN {version} kernels registered for {', '.join(dtypes)} ({kernels['float32']}){detail}."
    return OnednnStatus(True, reason, version, dtypes, kernels, str(LIBRARY))


def status() -> OnednnStatus:
    """Load and register the oneDNN kernels (once per process) and say whether they are active.

    Nothing is loaded until the first call (or the first ``impl="onednn"`` / ``"auto"`` conv on a
    CPU). Setting ``JCNN_DISABLE_ONEDNN=1`` before that keeps them off.

    Returns:
      An `OnednnStatus`; ``available`` is False on platforms without oneDNN wheels (aarch64,
      macOS), when the build was skipped or failed, when disabled, or when the running jaxlib
      could not accept the handlers, and ``reason`` says which.

    >>> s = status()
    >>> isinstance(s.available, bool) and s.reason.endswith(".")
    True
    """
    global _status
    with _lock:
        if _status is None:
            _status = _load()
        return _status


def available() -> bool:
    """``status().available``: the oneDNN kernels are loaded and registered."""
    return status().available


def supports(dtype) -> bool:
    """Whether ``impl="onednn"`` has a kernel for ``dtype`` here (float32; bfloat16 where the
    CPU has an optimised one; never float64 or float16, which oneDNN's convolutions lack)."""
    s = status()
    return s.available and jnp.dtype(dtype).name in s.dtypes


# ------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------


def _out_spatial(in_spatial, kernel_size, strides, padding, dilation):
    return tuple(
        (n + lo + hi - r * (k - 1) - 1) // s + 1
        for n, k, s, (lo, hi), r in zip(in_spatial, kernel_size, strides, padding, dilation)
    )


def _fwd_shape(x, k, *bias, strides, padding, dilation, groups):
    d = len(strides)
    return (x.shape[0],) + _out_spatial(x.shape[1:-1], k.shape[:d], strides, padding, dilation) + k.shape[-1:]


def _bwd_data_shape(dy, k, *, groups, in_spatial, **_):
    return (dy.shape[0],) + tuple(in_spatial) + (k.shape[-2] * groups,)


def _bwd_weights_shape(x, dy, *, groups, kernel_size, **_):
    return tuple(kernel_size) + (x.shape[-1] // groups, dy.shape[-1])


# ------------------------------------------------------------------------------------------
# The primitives
# ------------------------------------------------------------------------------------------

fwd_p = Primitive("jcnn_onednn_conv_fwd")
fwd_bias_p = Primitive("jcnn_onednn_conv_fwd_bias")
bwd_data_p = Primitive("jcnn_onednn_conv_bwd_data")
bwd_weights_p = Primitive("jcnn_onednn_conv_bwd_weights")
_SHAPES = {
    fwd_p: _fwd_shape,
    fwd_bias_p: _fwd_shape,
    bwd_data_p: _bwd_data_shape,
    bwd_weights_p: _bwd_weights_shape,
}


def _call(prim, *args, **params):
    """Bind ``prim`` on operands given one set of varying axes; empty arrays need no kernel."""
    args = _unify_varying(*args)
    shape = _SHAPES[prim](*args, **params)
    if 0 in shape or any(0 in a.shape for a in args):
        return jnp.zeros(shape, args[0].dtype)
    return prim.bind(*args, **params)


def _abstract_eval(prim):
    def rule(*avals, **params):
        # The output keeps the first operand's varying axes (all operands share them, see
        # `_call`) and its rank (every direction maps rank d + 2 to rank d + 2).
        return avals[0].update(shape=_SHAPES[prim](*avals, **params), weak_type=False)

    return rule


def _ffi_attrs(strides, padding, dilation, groups):
    return dict(
        strides=np.asarray(strides, np.int64),
        padding_lo=np.asarray([lo for lo, _ in padding], np.int64),
        padding_hi=np.asarray([hi for _, hi in padding], np.int64),
        dilation=np.asarray(dilation, np.int64),
        groups=np.int64(groups),
    )


def _cpu_lowering(prim):
    lower = jax.ffi.ffi_lowering(prim.name)

    def rule(ctx, *args, strides, padding, dilation, groups, **_):
        return lower(ctx, *args, **_ffi_attrs(strides, padding, dilation, groups))

    return rule


def _dimension_numbers(d):
    spatial = tuple(range(1, d + 1))
    return lax.ConvDimensionNumbers((0, d + 1) + spatial, (d + 1, d) + tuple(range(d)), (0, d + 1) + spatial)


def _xla_fwd(x, k, *, strides, padding, dilation, groups):
    return lax.conv_general_dilated(
        x,
        k,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=_dimension_numbers(len(strides)),
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )


def _xla_lowerings():
    """The same maths with XLA's convolution, for every platform but the CPU."""

    def bwd_data(dy, k, *, in_spatial, **geo):
        x = jnp.zeros((dy.shape[0],) + tuple(in_spatial) + (k.shape[-2] * geo["groups"],), dy.dtype)
        return jax.vjp(lambda x: _xla_fwd(x, k, **geo), x)[1](dy)[0]

    def bwd_weights(x, dy, *, kernel_size, **geo):
        k = jnp.zeros(tuple(kernel_size) + (x.shape[-1] // geo["groups"], dy.shape[-1]), x.dtype)
        return jax.vjp(lambda k: _xla_fwd(x, k, **geo), k)[1](dy)[0]

    def fwd_bias(x, k, b, **geo):
        y = _xla_fwd(x, k, **geo)
        return y + lax.broadcast_in_dim(b, y.shape, (y.ndim - 1,))

    return {fwd_p: _xla_fwd, fwd_bias_p: fwd_bias, bwd_data_p: bwd_data, bwd_weights_p: bwd_weights}


for _prim, _xla in _xla_lowerings().items():
    _prim.def_impl(_impl(_prim))
    _prim.def_abstract_eval(_abstract_eval(_prim))
    mlir.register_lowering(_prim, mlir.lower_fun(_xla, multiple_results=False))
    mlir.register_lowering(_prim, _cpu_lowering(_prim), platform="cpu")


def _geo(params):
    return {k: params[k] for k in ("strides", "padding", "dilation", "groups")}


# Transposes (each linear operand in turn; ``ct`` is the cotangent of the output):
#   fwd(x, k) = y:          x <- bwd_data(ct, k),     k <- bwd_weights(x, ct)
#   bwd_data(dy, k) = dx:   dy <- fwd(ct, k),         k <- bwd_weights(ct, dy)
#   bwd_weights(x, dy) = dk: x <- bwd_data(dy, ct),   dy <- fwd(x, ct)
# from <fwd(x, k), dy> = <x, bwd_data(dy, k)> = <k, bwd_weights(x, dy)>.
def _fwd_t_x(ct, x, k, **params):
    return _call(bwd_data_p, ct, k, in_spatial=x.aval.shape[1:-1], **_geo(params))


def _fwd_t_k(ct, x, k, **params):
    return _call(bwd_weights_p, x, ct, kernel_size=k.aval.shape[:-2], **_geo(params))


def _bwd_data_t_dy(ct, dy, k, **params):
    return _call(fwd_p, ct, k, **_geo(params))


def _bwd_data_t_k(ct, dy, k, **params):
    return _call(bwd_weights_p, ct, dy, kernel_size=k.aval.shape[:-2], **_geo(params))


def _bwd_weights_t_x(ct, x, dy, **params):
    return _call(bwd_data_p, dy, ct, in_spatial=x.aval.shape[1:-1], **_geo(params))


def _bwd_weights_t_dy(ct, x, dy, **params):
    return _call(fwd_p, x, ct, **_geo(params))


ad.defbilinear(fwd_p, _fwd_t_x, _fwd_t_k)
ad.defbilinear(bwd_data_p, _bwd_data_t_dy, _bwd_data_t_k)
ad.defbilinear(bwd_weights_p, _bwd_weights_t_x, _bwd_weights_t_dy)


def _fwd_bias_jvp(primals, tangents, **params):
    x, k, b = primals
    x_dot, k_dot, b_dot = tangents
    y = fwd_bias_p.bind(x, k, b, **params)
    terms = []
    if type(x_dot) is not ad.Zero:
        terms.append(_call(fwd_p, x_dot, k, **params))
    if type(k_dot) is not ad.Zero:
        terms.append(_call(fwd_p, x, k_dot, **params))
    if type(b_dot) is not ad.Zero:
        terms.append(lax.broadcast_in_dim(b_dot, y.shape, (y.ndim - 1,)))
    if not terms:
        return y, jnp.zeros_like(y)
    return y, functools.reduce(lax.add, terms)


ad.primitive_jvps[fwd_bias_p] = _fwd_bias_jvp


# ------------------------------------------------------------------------------------------
# Batching: a vmapped axis B, moved to the front of each batched operand, is folded into the
# conv itself. Roles: "in" (n, *s, g*cg), "out" (n, *o, g*og), "kernel" (*k, cg, g*og).
#   A  in and out batched, kernel not: B joins the batch n.
#   B  kernel and out batched, in not: B joins each group's output channels (g, B, og).
#   C  kernel and in batched, out not: B joins each group's input channels (g, B, cg) and the
#      kernel's input axis (B, cg).
#   D  all batched: B becomes B groups of its own, channels (B, g, c), groups B * g.
# The activations move (a transpose) only in modes B-D, as in lax's own batching rule.
# ------------------------------------------------------------------------------------------

_ROLES = {
    fwd_p: ("in", "kernel", "out"),
    bwd_data_p: ("out", "kernel", "in"),
    bwd_weights_p: ("in", "out", "kernel"),
}


def _mode(batched_roles):
    roles = set(batched_roles)
    if "kernel" not in roles:
        return "A"
    if roles == {"kernel", "out"}:
        return "B"
    if roles == {"kernel", "in"}:
        return "C"
    return "D"


def _split_channels(a, groups):
    """(B, ..., g*c) -> (B, ..., g, c)."""
    return a.reshape(a.shape[:-1] + (groups, a.shape[-1] // groups))


def _fold(a, role, mode, groups, bsize):
    """A batched operand (B first) in its folded, unbatched form."""
    r = a.ndim  # B + the primitive's rank
    if mode == "A":
        return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
    if role == "kernel" and mode == "C":  # (B, *k, cg, O) -> (*k, B*cg, O)
        a = jnp.moveaxis(a, 0, r - 3)
        return a.reshape(a.shape[: r - 3] + (bsize * a.shape[r - 2], a.shape[-1]))
    if mode == "D":  # (B, ..., C) -> (..., B*C)
        a = jnp.moveaxis(a, 0, r - 2)
        return a.reshape(a.shape[: r - 2] + (bsize * a.shape[-1],))
    # modes B (out, kernel) and C (in): (B, ..., g*c) -> (..., g, B, c) -> (..., g*B*c)
    a = jnp.moveaxis(_split_channels(a, groups), 0, r - 1)
    return a.reshape(a.shape[: r - 2] + (groups * bsize * a.shape[-1],))


def _unfold(a, role, mode, groups, bsize):
    """The inverse of `_fold` for the primitive's output: B first again."""
    if mode == "A":
        return a.reshape((bsize, a.shape[0] // bsize) + a.shape[1:])
    r = a.ndim + 1
    if role == "kernel" and mode == "C":
        a = a.reshape(a.shape[:-2] + (bsize, a.shape[-2] // bsize, a.shape[-1]))
        return jnp.moveaxis(a, r - 3, 0)
    if mode == "D":
        a = a.reshape(a.shape[:-1] + (bsize, a.shape[-1] // bsize))
        return jnp.moveaxis(a, r - 2, 0)
    a = a.reshape(a.shape[:-1] + (groups, bsize, a.shape[-1] // (groups * bsize)))
    a = jnp.moveaxis(a, r - 1, 0)
    return a.reshape(a.shape[:-2] + (a.shape[-2] * a.shape[-1],))


def _batch_rule(prim):
    def rule(args, dims, **params):
        roles = _ROLES[prim]
        bsize = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        batched = [d is not None for d in dims]
        mode = _mode([role for role, b in zip(roles[:2], batched) if b] + [roles[2]])
        g = params["groups"]
        folded = [
            _fold(jnp.moveaxis(a, d, 0), role, mode, g, bsize) if b else a
            for a, d, b, role in zip(args, dims, batched, roles)
        ]
        new = dict(params, groups=g * bsize if mode == "D" else g)
        out = _call(prim, *folded, **new)
        return _unfold(out, roles[2], mode, g, bsize), 0

    return rule


_BATCH_RULES = {prim: _batch_rule(prim) for prim in _ROLES}
for _prim, _rule in _BATCH_RULES.items():
    batching.primitive_batchers[_prim] = _rule


def _fwd_bias_batch(args, dims, **params):
    x, k, b = args
    xd, kd, bd = dims
    if kd is None and bd is None:  # the bias stays fused
        bsize = x.shape[xd]
        y = _call(fwd_bias_p, _fold(jnp.moveaxis(x, xd, 0), "in", "A", 1, bsize), k, b, **params)
        return _unfold(y, "out", "A", 1, bsize), 0
    y, yd = _BATCH_RULES[fwd_p]((x, k), (xd, kd), **params)
    if bd is None:
        return y + lax.broadcast_in_dim(b, y.shape, (y.ndim - 1,)), yd
    b = jnp.moveaxis(b, bd, 0)
    return y + lax.broadcast_in_dim(b, y.shape, (0, y.ndim - 1)), yd


batching.primitive_batchers[fwd_bias_p] = _fwd_bias_batch


# ------------------------------------------------------------------------------------------
# Entry points for jcnn.ops.conv
# ------------------------------------------------------------------------------------------


def conv(x, kernel, bias, *, strides, padding, dilation, groups):
    """``conv(x, kernel) + bias`` for ``x (n, *spatial, c_in)`` (one batch dim), zero padding
    ``padding`` ((lo, hi) per spatial dim); the caller has checked shapes and dtypes."""
    geo = dict(
        strides=tuple(strides), padding=tuple(map(tuple, padding)), dilation=tuple(dilation), groups=groups
    )
    if bias is None:
        return _call(fwd_p, x, kernel, **geo)
    return _call(fwd_bias_p, x, kernel, bias, **geo)


def conv_input_gradient(dy, kernel, in_spatial, *, strides, padding, dilation, groups):
    """The transpose of `conv` in ``x`` applied to ``dy (n, *out_spatial, c_out)``: the
    ``(n, *in_spatial, c_in)`` input gradient (and so a transposed convolution)."""
    geo = dict(
        strides=tuple(strides), padding=tuple(map(tuple, padding)), dilation=tuple(dilation), groups=groups
    )
    return _call(bwd_data_p, dy, kernel, in_spatial=tuple(in_spatial), **geo)
