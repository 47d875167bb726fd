"""Convolution ops: `conv` (five implementations that agree) and `conv_transpose`.

Layouts are channels-last: ``x`` is ``(*batch, *spatial, c_in)`` with zero or more leading batch
dims, the spatial rank ``d`` taken from the kernel (``kernel.ndim - 2``), and kernels are
``(*kernel_size, c_in // groups, c_out)`` (HWIO). Hyperparameters are checked once
into a spec (`jcnn.shapes.conv_spec`), shapes against it by `jcnn.shapes.conv_geometry`, all
before any ``lax`` call, so a bad call fails in the user's words. Layers build their spec once
and call `conv_with_spec` / `conv_transpose_with_spec`.

Implementations (``impl=``):

* ``"xla"``: one ``lax.conv_general_dilated`` call (cuDNN on GPU, XLA's conv emitter on CPU).
* ``"direct"``: the lecture's sliding filter written out: for every kernel offset, the strided
  input slice that offset touches, times that offset's ``(c_in, c_out)`` kernel slice, summed.
  Loops over kernel offsets only, never over pixels or examples.
* ``"im2col"``: the same slices stacked into one patches matrix
  ``(*batch, *out_spatial, prod(kernel_size) * c_in)``, then a single matmul with the reshaped
  kernel. A depthwise conv (``groups == c_in``) has no matmul to make: it sums the taps in one
  pass and has a hand-written backward (`_depthwise`), which supports reverse mode and
  forward-over-reverse (``jax.hessian``) but not plain forward mode (use ``"direct"`` there).
* ``"hybrid"``: XLA's convolution for the forward pass and the input gradient, im2col's chunked
  matmuls for the kernel gradient (a ``custom_jvp``: every autodiff mode works). On CPU, XLA's
  forward and input-gradient convs are the fastest here, but its kernel-gradient conv is up to
  7x slower than the matmuls once images and channels grow (28x28x64->64: 1.7 s vs 0.3 s at batch
  128): `experiments/bench.py --suite convs`.
* ``"onednn"``: oneDNN's convolution kernels (what PyTorch runs on CPU) called from XLA as FFI
  custom calls, forward, input gradient and kernel gradient, on all cores (`jcnn.ops.onednn`).
  CPU only; float32, and bfloat16 where the CPU has a oneDNN kernel for it; no float64 (oneDNN
  has none). Available where jcnn was installed with its compiled extension (Linux x86_64);
  `backends` says whether it is active here.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jcnn import checks, shapes
from jcnn.ops import onednn
from jcnn.shapes import ConvGeometry, ConvSpec, ConvTransposeGeometry, ConvTransposeSpec

IMPLS = ("xla", "direct", "im2col", "hybrid", "onednn")
CHOICES = ("auto",) + IMPLS
TRANSPOSE_IMPLS = ("xla", "onednn")
TRANSPOSE_CHOICES = ("auto",) + TRANSPOSE_IMPLS

_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}

__all__ = ["conv", "conv_transpose", "auto_impl", "backends", "Backend", "IMPLS", "CHOICES"]


def _operands(x, kernel, bias, where: str):
    """The three operands as jax arrays of one floating dtype (their promotion)."""
    x = jnp.asarray(checks.as_array(x, where, "x", "inexact"))
    kernel = jnp.asarray(checks.as_array(kernel, where, "kernel", "inexact"))
    bias = None if bias is None else jnp.asarray(checks.as_array(bias, where, "bias", "inexact"))
    dtype = jnp.result_type(x, kernel) if bias is None else jnp.result_type(x, kernel, bias)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    bias = None if bias is None else bias.astype(dtype)
    return x, kernel, bias


def add_bias(y: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``y + bias`` over the last (channel) axis, broadcast explicitly (no rank promotion)."""
    if bias is None:
        return y
    return y + lax.broadcast_in_dim(bias, y.shape, (y.ndim - 1,))


def _pad(x: jax.Array, geo: ConvGeometry) -> jax.Array:
    """Pad the spatial dims of ``x`` by ``geo.padding`` in ``geo.padding_mode``."""
    if all(p == (0, 0) for p in geo.padding):
        return x
    d = len(geo.kernel_size)
    widths = [(0, 0)] * (x.ndim - d - 1) + list(geo.padding) + [(0, 0)]
    if geo.padding_mode == "zeros":
        return jnp.pad(x, widths)
    return jnp.pad(x, widths, mode=_PAD_MODES[geo.padding_mode])


def _offset_slices(xp: jax.Array, geo: ConvGeometry):
    """Yield ``(offset, slice)``: for each kernel offset, the strided input it multiplies.

    The slice for offset ``o`` starts at ``o * dilation`` and takes every ``stride``-th pixel,
    ``out`` of them: ``xp[..., o*r : o*r + S*(out-1) + 1 : S, :]`` per spatial dim.
    """
    d = len(geo.kernel_size)
    lead = xp.ndim - d - 1
    for offset in itertools.product(*(range(k) for k in geo.kernel_size)):
        start = [0] * lead + [o * r for o, r in zip(offset, geo.dilation)] + [0]
        limit = (
            list(xp.shape[:lead])
            + [
                o * r + s * (n - 1) + 1
                for o, r, s, n in zip(offset, geo.dilation, geo.strides, geo.out_spatial)
            ]
            + [xp.shape[-1]]
        )
        step = [1] * lead + list(geo.strides) + [1]
        yield offset, lax.slice(xp, start, limit, step)


def _contract(patch: jax.Array, w: jax.Array, groups: int, precision, acc) -> jax.Array:
    """``patch (..., c_in) x w (c_in // groups, c_out) -> (..., c_out)`` per group."""
    if groups == 1:
        dims = (((patch.ndim - 1,), (0,)), ((), ()))
        return lax.dot_general(patch, w, dims, precision=precision, preferred_element_type=acc)
    cg, c_out = w.shape
    og = c_out // groups
    if cg == 1:  # depthwise: channel g feeds outputs g*og ... g*og + og - 1
        p = patch.astype(acc).reshape(patch.shape + (1,))
        wg = lax.broadcast_in_dim(
            w.astype(acc).reshape(groups, og), p.shape[:-2] + (groups, og), (p.ndim - 2, p.ndim - 1)
        )
        return (p * wg).reshape(patch.shape[:-1] + (c_out,))
    # One matmul per group, joined on the channel axis: an einsum with a group batch dim would
    # put the group axis first and need a transpose of the activations to undo it.
    return lax.concatenate(
        [
            _contract(patch[..., g * cg : (g + 1) * cg], w[:, g * og : (g + 1) * og], 1, precision, acc)
            for g in range(groups)
        ],
        patch.ndim - 1,
    )


def _conv_direct(x, kernel, geo: ConvGeometry, precision) -> jax.Array:
    """The lecture's sliding filter: one strided slice per kernel offset, times its kernel slice."""
    acc = checks.accumulator_dtype(x.dtype)
    y = None
    for offset, patch in _offset_slices(x, geo):
        term = _contract(patch, kernel[offset], geo.groups, precision, acc)
        y = term if y is None else y + term
    return y.astype(x.dtype)


def _conv_im2col(x, kernel, geo: ConvGeometry, precision) -> jax.Array:
    """Patches ``(..., taps * c_in)`` gathered by hand, then one matmul with the kernel matrix."""
    acc = checks.accumulator_dtype(x.dtype)
    taps = math.prod(geo.kernel_size)
    patches = jnp.stack([p for _, p in _offset_slices(x, geo)], axis=-2)  # (..., taps, c_in)
    cg, c_out = kernel.shape[-2:]
    if geo.groups == 1:
        cols = patches.reshape(patches.shape[:-2] + (taps * cg,))
        dims = (((cols.ndim - 1,), (0,)), ((), ()))
        y = lax.dot_general(
            cols, kernel.reshape(taps * cg, c_out), dims, precision=precision, preferred_element_type=acc
        )
    else:  # groups: one matmul per group over that group's columns, joined on channels
        og = c_out // geo.groups
        w = kernel.reshape(taps, cg, c_out)
        y = lax.concatenate(
            [
                lax.dot_general(
                    patches[..., g * cg : (g + 1) * cg].reshape(patches.shape[:-2] + (taps * cg,)),
                    w[:, :, g * og : (g + 1) * og].reshape(taps * cg, og),
                    (((patches.ndim - 2,), (0,)), ((), ())),
                    precision=precision,
                    preferred_element_type=acc,
                )
                for g in range(geo.groups)
            ],
            patches.ndim - 2,
        )
    return y.astype(x.dtype)


# Hand-written impls run over the batch a cache-sized chunk at a time, and recompute their
# patches in the backward pass instead of storing them: on CPU, materialising a taps-times-larger
# patches array for a whole batch costs more (fresh pages, cache misses) than the arithmetic.
CHUNK_BYTES = 4 << 20


def _chunked(fn, xp: jax.Array, kernel: jax.Array, geo: ConvGeometry, precision) -> jax.Array:
    """``fn`` applied to ``xp`` (padded, batch dims flattened) a chunk of examples at a time."""
    n = math.prod(geo.batch_shape)
    per_example = (
        math.prod(geo.out_spatial) * math.prod(geo.kernel_size) * geo.in_channels * xp.dtype.itemsize
    )
    chunk = max(1, min(n, CHUNK_BYTES // max(per_example, 1)))
    flat = xp.reshape((n,) + xp.shape[len(geo.batch_shape) :])
    one = geo._replace(batch_shape=())
    if chunk >= n or n == 0:
        y = fn(flat, kernel, one, precision)
    else:
        body = jax.checkpoint(lambda xe: fn(xe, kernel, one, precision))
        y = lax.map(body, flat, batch_size=chunk)
    return y.reshape(geo.out_shape)


# Depthwise convs (one input channel per group) have no matmul to make, and differentiating
# their sliced form is slow on CPU: the kernel gradient's per-tap sums over a whole batch make XLA
# hold one shifted copy of the input per tap at once (fresh pages), and the input gradient
# becomes a sum of padded copies. `_depthwise` keeps the forward as one fused pass and writes
# the backward by hand: the input gradient is the same tap sum over the output gradient
# (dilated by the stride, padded by the kernel's extent) with the flipped kernel, and the
# kernel gradient is summed a cache-sized chunk of examples at a time.
DEPTHWISE_CHUNK_BYTES = 2 << 20


def _is_depthwise(geo: ConvGeometry) -> bool:
    return geo.groups > 1 and geo.groups == geo.in_channels


def _tap_sum(a: jax.Array, w: jax.Array, geo: ConvGeometry) -> jax.Array:
    """``sum over taps t of slice_t(a) * w[t]``: ``a (n, *spatial, c)``, ``w (*kernel_size, c)``."""
    acc = checks.accumulator_dtype(a.dtype)
    y = None
    for offset, patch in _offset_slices(a, geo):
        term = patch.astype(acc) * lax.broadcast_in_dim(w[offset].astype(acc), patch.shape, (patch.ndim - 1,))
        y = term if y is None else y + term
    return y.astype(a.dtype)


def _tap_products(a: jax.Array, dy: jax.Array, geo: ConvGeometry, acc) -> jax.Array:
    """``(taps, c)``: each tap's slice of ``a`` times ``dy``, summed over examples and pixels."""
    axes = tuple(range(dy.ndim - 1))
    return jnp.stack([jnp.sum(p.astype(acc) * dy.astype(acc), axes) for _, p in _offset_slices(a, geo)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _depthwise(geo: ConvGeometry, xp: jax.Array, w: jax.Array) -> jax.Array:
    """Depthwise conv of the padded ``xp (n, *spatial, c)`` with ``w (*kernel_size, c)``.

    A custom VJP (reverse mode, and forward-over-reverse such as ``jax.hessian``); plain
    forward mode (``jax.jvp``, ``jax.jacfwd``) needs ``impl="direct"`` or ``"xla"``.
    """
    return _tap_sum(xp, w, geo)


def _depthwise_fwd(geo, xp, w):
    return _tap_sum(xp, w, geo), (xp, w)


def _depthwise_bwd(geo, res, dy):
    xp, w = res
    d = len(geo.kernel_size)
    # Input gradient: pixel p of xp gets dy[q] * w[t] wherever p = t*r + s*q. Dilate dy by the
    # stride (interior padding), pad it by the kernel's extent f = r*(k - 1) on both sides, and
    # correlate with the flipped kernel at stride 1: that covers the first s*(out - 1) + 1 + f
    # pixels of xp; any rows after them were never read and get zero.
    full = [r * (k - 1) for r, k in zip(geo.dilation, geo.kernel_size)]
    zero = jnp.zeros((), dy.dtype)
    dyp = lax.pad(dy, zero, [(0, 0, 0)] + [(f, f, s - 1) for f, s in zip(full, geo.strides)] + [(0, 0, 0)])
    span = tuple(s * (n - 1) + 1 + f for s, n, f in zip(geo.strides, geo.out_spatial, full))
    flipped = geo._replace(strides=(1,) * d, out_spatial=span)
    dx = _tap_sum(dyp, lax.rev(w, tuple(range(d))), flipped)
    rest = [(0, size - n, 0) for size, n in zip(xp.shape[1:-1], span)]
    dx = lax.pad(dx, zero, [(0, 0, 0)] + rest + [(0, 0, 0)])
    # Kernel gradient: a few examples at a time, so each tap's shifted slice stays in cache.
    acc = checks.accumulator_dtype(w.dtype)
    n = xp.shape[0]
    per_example = max(1, math.prod(geo.out_spatial) * w.shape[-1] * dy.dtype.itemsize)
    chunk = max(1, min(n, DEPTHWISE_CHUNK_BYTES // per_example))
    whole = n // chunk * chunk
    dw = jnp.zeros((math.prod(geo.kernel_size), w.shape[-1]), acc)
    if whole:

        def body(total, pair):
            return total + _tap_products(*pair, geo, acc), None

        pairs = (a[:whole].reshape((whole // chunk, chunk) + a.shape[1:]) for a in (xp, dy))
        dw, _ = lax.scan(body, dw, tuple(pairs))
    if whole < n:
        dw = dw + _tap_products(xp[whole:], dy[whole:], geo, acc)
    return dx, dw.reshape(w.shape).astype(w.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _conv_depthwise(xp: jax.Array, kernel: jax.Array, geo: ConvGeometry) -> jax.Array:
    """A depthwise conv (``kernel (*k, 1, c_out)``, ``c_out = multiplier * c_in``) of the padded
    ``xp``, any batch dims: input channel g feeds outputs ``g*m ... g*m + m - 1``."""
    d = len(geo.kernel_size)
    n = math.prod(geo.batch_shape)
    flat = xp.reshape((n,) + xp.shape[len(geo.batch_shape) :])
    multiplier = geo.out_channels // geo.in_channels
    if multiplier > 1:
        flat = jnp.repeat(flat, multiplier, axis=d + 1)
    w = kernel.reshape(geo.kernel_size + (geo.out_channels,))
    return _depthwise(geo._replace(batch_shape=()), flat, w).reshape(geo.out_shape)


def _dimension_numbers(d: int) -> lax.ConvDimensionNumbers:
    """Channels-last for any spatial rank: lhs/out (N, *spatial, C), rhs (*spatial, I, O)."""
    spatial = tuple(range(1, d + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, d + 1) + spatial,
        rhs_spec=(d + 1, d) + tuple(range(d)),
        out_spec=(0, d + 1) + spatial,
    )


def _with_one_batch_dim(x: jax.Array, geo: ConvGeometry | ConvTransposeGeometry) -> jax.Array:
    # lax wants exactly one batch dim; a reshape of the leading dims is free (no data moves).
    return x.reshape((math.prod(geo.batch_shape),) + x.shape[len(geo.batch_shape) :])


def _conv_xla(
    x, kernel, geo: ConvGeometry | ConvTransposeGeometry, padding, precision, lhs_dilation=None
) -> jax.Array:
    d = len(geo.kernel_size)
    y = lax.conv_general_dilated(
        _with_one_batch_dim(x, geo),
        kernel,
        window_strides=geo.strides if lhs_dilation is None else (1,) * d,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=geo.dilation,
        dimension_numbers=_dimension_numbers(d),
        feature_group_count=geo.groups,
        precision=precision,
    )
    return y.reshape(geo.out_shape)


def _conv_xla_any_mode(x, kernel, geo: ConvGeometry, precision) -> jax.Array:
    """XLA's conv for any padding mode: zeros pad inside lax, the others are padded first."""
    if geo.padding_mode == "zeros":
        return _conv_xla(x, kernel, geo, geo.padding, precision)
    return _conv_xla(_pad(x, geo), kernel, geo, ((0, 0),) * len(geo.kernel_size), precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 3))
def _hybrid(geo: ConvGeometry, x: jax.Array, kernel: jax.Array, precision) -> jax.Array:
    """XLA's conv, differentiated as XLA's conv in ``x`` and as the chunked im2col in ``kernel``.

    The conv is bilinear, so its tangent is ``conv(x_dot, k) + conv(x, k_dot)``, each term linear
    in its tangent; reverse mode transposes each term as written: the first into XLA's
    input-gradient conv, the second into one patches-transpose-times-cotangent matmul per batch
    chunk (the chunk's patches recomputed: `_chunked`'s checkpoint).
    """
    return _conv_xla_any_mode(x, kernel, geo, precision)


@functools.partial(_hybrid.defjvp, symbolic_zeros=True)
def _hybrid_jvp(geo, precision, primals, tangents):
    x, kernel = primals
    x_dot, k_dot = tangents
    y = _conv_xla_any_mode(x, kernel, geo, precision)
    terms = []
    if not isinstance(x_dot, SymbolicZero):
        terms.append(_conv_xla_any_mode(x_dot, kernel, geo, precision))
    if not isinstance(k_dot, SymbolicZero):
        # conv(x, k_dot) is written as the JVP of the chunked im2col in the kernel (the same
        # value, conv being linear in the kernel) so that JAX builds its scan with the kernel
        # marked linear: jax < 0.7 cannot transpose a scan a custom_jvp rule built over a
        # tangent it was not told is linear. Under jit the unused primal is dropped (DCE).
        chunked = functools.partial(_chunked, _conv_im2col, _pad(x, geo), geo=geo, precision=precision)
        terms.append(jax.jvp(chunked, (kernel,), (k_dot,))[1])
    y_dot = functools.reduce(lax.add, terms) if terms else jnp.zeros_like(y)
    return y, y_dot


class Backend(NamedTuple):
    """Whether one conv implementation can run in this process, and why (not)."""

    available: bool
    reason: str


def backends() -> dict[str, Backend]:
    """Every `conv` implementation with whether it is active here and why: the pure-JAX ones
    always are; ``"onednn"`` where jcnn's compiled oneDNN kernels loaded (`jcnn.ops.onednn.status`).

    >>> b = backends()
    >>> b["xla"].available, sorted(b) == sorted(IMPLS)
    (True, True)
    """
    s = onednn.status()
    pure = Backend(True, "pure JAX (lax), every backend and dtype.")
    return {impl: pure for impl in IMPLS if impl != "onednn"} | {"onednn": Backend(s.available, s.reason)}


def _check_onednn(dtype, where: str) -> None:
    """Raise unless ``impl="onednn"`` can run a ``dtype`` conv here (before anything is traced)."""
    s = onednn.status()
    if not s.available:
        raise ValueError(
            f"{where}: impl='onednn' is not available here: {s.reason} Use impl='auto' or 'xla'."
        )
    backend = jax.default_backend()
    if backend != "cpu":
        raise ValueError(
            f"{where}: impl='onednn' runs on the CPU, but JAX's default backend is {backend!r}. "
            f"Use impl='auto' (XLA's conv there)."
        )
    name = jnp.dtype(dtype).name
    if name not in s.dtypes:
        why = (
            "oneDNN has no float64 convolution"
            if name == "float64"
            else f"oneDNN here runs {', '.join(s.dtypes)}"
        )
        raise TypeError(
            f"{where}: impl='onednn' computes in {' or '.join(s.dtypes)}, got {name} ({why}). "
            f"Use impl='auto' or 'xla' for {name}."
        )


def _conv_onednn(x, kernel, bias, geo: ConvGeometry) -> jax.Array:
    """oneDNN's conv: batch dims folded into one, non-zero padding modes padded first."""
    d = len(geo.kernel_size)
    padding = geo.padding
    if geo.padding_mode != "zeros":
        x, padding = _pad(x, geo), ((0, 0),) * d
    n = math.prod(geo.batch_shape)
    y = onednn.conv(
        x.reshape((n,) + x.shape[len(geo.batch_shape) :]),
        kernel,
        bias,
        strides=geo.strides,
        padding=padding,
        dilation=geo.dilation,
        groups=geo.groups,
    )
    return y.reshape(geo.out_shape)


def _onednn_auto(dtype) -> bool:
    """Whether ``"auto"`` may take oneDNN on the CPU: its kernels support ``dtype``, and JAX
    sees one device. XLA's SPMD partitioner cannot split a custom call, so under a ``jit`` whose
    batch is sharded over several devices (``fit`` on a multi-device or multi-process CPU mesh)
    each device would gather the whole batch and run the whole conv; XLA's own convs are split.
    (Explicit ``impl="onednn"`` still works there, and inside ``shard_map`` runs per device.)"""
    return jax.device_count() == 1 and onednn.supports(jnp.float32 if dtype is None else dtype)


def auto_impl(geo: ConvGeometry, backend: str | None = None, dtype=None) -> str:
    """The implementation ``impl="auto"`` picks for a geometry (and dtype) on a backend.

    The rule comes from ``experiments/bench.py --suite convs`` (every conv layer of the
    benchmarked and zoo models at its in-model shape, forward + backward with a random output
    gradient, each impl), ``--suite ops`` and the step tables (numbers in experiments/RESULTS.md):

    * GPU and TPU: ``"xla"`` (cuDNN on NVIDIA); nothing hand-written beats it there.
    * CPU with one device (``jax.device_count() == 1``, the usual single process), where jcnn's
      oneDNN kernels are active (`backends`) and have a kernel for the dtype (float32;
      bfloat16 where the CPU has an optimised oneDNN kernel for it): ``"onednn"``, for
      every geometry (1-, 2- and 3-D, strided, 1x1, grouped and depthwise, small and large
      calls). It is as fast as PyTorch's CPU convolutions (the same library) and faster than
      every pure-JAX impl in each measured layer, mostly because XLA's CPU convolution runs on one
      core and oneDNN's on all of them.
    * CPU otherwise (float64, which oneDNN lacks; float16; oneDNN not built for this platform,
      or disabled by ``JCNN_DISABLE_ONEDNN=1``; several devices, where XLA cannot split a oneDNN
      call over a sharded batch), the pure-JAX rule:

      * CPU, 1-D: ``"xla"``; XLA's 1-D convolutions and their gradients are fast.
      * CPU, bfloat16 / float16: ``"xla"``; the hand-written impls' float32-accumulated matmuls
        are several times slower there (issue 10: a 7x7 stride-2 stem on 224x224x3, 64 ms vs
        6.6 ms at batch 2).
      * CPU, depthwise (``groups == c_in``), float32/float64: ``"im2col"``, i.e. its one-pass tap
        sum with the hand-written backward (XLA's depthwise conv backward is 10-30x slower).
      * CPU, 3-D, float32/float64: ``"im2col"``; XLA's 3-D forward is 2x slower than its matmuls.
      * CPU, 2-D, float32/float64, strided or 1x1: ``"im2col"`` (0.5-0.85x hybrid's time there).
      * CPU, 2-D, under `HYBRID_MIN_FLOPS` forward FLOPs for the whole call (small images or
        batches, e.g. the main job's 8x8 digits at batch 32: a LeNet step takes 3.8 ms with
        im2col, 10.6 ms with hybrid): ``"im2col"``; XLA's conv has a fixed cost per call there.
      * CPU, 2-D, stride 1, image inputs (``c_in <= 3``, a model's first layer, whose input
        gradient is never taken): ``"direct"`` for one channel and kernels up to 3x3 (its
        per-tap outer products: 5.2 ms vs 10-12 ms for a 28x28x1->32 layer at batch 128),
        ``"xla"`` otherwise (LeNet's 5x5 conv1 10.1 ms vs 13.6-15.7, ResNet's 3x3 RGB stem
        14.5 ms vs 18.4-54).
      * CPU, 2-D, stride 1, kernels up to 3x3 on outputs smaller than 28x28: ``"im2col"`` (e.g.
        8x8x64->64: 23.3 ms vs hybrid 32.4, XLA 33.2); XLA's convs pay a fixed cost per call
        that small images do not amortise.
      * CPU, 2-D, stride 1, larger kernels or images: ``"hybrid"``: XLA's forward and
        input-gradient convs are the fastest there, its kernel-gradient conv is not (up to 7x
        slower than chunked matmuls).

    >>> geo = shapes.conv_geometry(shapes.conv_spec(3, padding=1), (8, 8, 4), (3, 3, 4, 8))
    >>> auto_impl(geo, "gpu"), auto_impl(geo, "cpu", jnp.float64)
    ('xla', 'im2col')
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "xla"
    if _onednn_auto(dtype):
        return "onednn"
    if len(geo.kernel_size) == 1:
        return "xla"
    if dtype is not None and jnp.dtype(dtype).itemsize < 4 and jnp.issubdtype(dtype, jnp.floating):
        return "xla"
    if _is_depthwise(geo) or len(geo.kernel_size) == 3:
        return "im2col"
    if any(s > 1 for s in geo.strides) or all(k == 1 for k in geo.kernel_size):
        return "im2col"
    if math.prod(geo.batch_shape) * geo.flops(bias=False) < HYBRID_MIN_FLOPS:
        return "im2col"
    taps = math.prod(geo.kernel_size)
    if geo.in_channels <= 3:
        return "direct" if geo.in_channels == 1 and taps <= 9 else "xla"
    if taps <= 9 and math.prod(geo.out_spatial) < 28 * 28:
        return "im2col"
    return "hybrid"


_AUTO_AS: contextvars.ContextVar[str | None] = contextvars.ContextVar("jcnn_auto_as", default=None)


@contextlib.contextmanager
def auto_as(impl: str):
    """Convs traced inside the block with ``impl="auto"`` use ``impl`` instead of `auto_impl`'s pick.

    A trace-time setting read when a conv is traced: put the block inside the function being
    traced (``make_train_step(conv_impl=...)`` and ``fit(conv_impl=...)`` do). Unlike
    ``jax.default_matmul_precision`` it is not part of JAX's trace-cache key, so a function
    already traced (``jax.jit``, ``make_jaxpr``) outside the block is not retraced inside it.
    Convs given an explicit impl keep it. It is for a compilation the rule does not
    know about: with `jcnn.train.xla_cpu_ynn_off` XLA's classic convs win the LeNet and ResNet-8
    steps, so ``auto_as("xla")`` there (but XLA's depthwise convs are 10-30x slower than
    im2col's on CPU: not for MobileNets).

    >>> x, k = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 4))
    >>> with auto_as("direct"):
    ...     eqns = jax.make_jaxpr(lambda x, k: conv(x, k))(x, k).eqns
    >>> any(e.primitive.name == "conv_general_dilated" for e in eqns)
    False
    """
    impl = checks.one_of(impl, IMPLS, "auto_as", "impl")
    token = _AUTO_AS.set(impl)
    try:
        yield
    finally:
        _AUTO_AS.reset(token)


# Below this many forward FLOPs per call, im2col beats XLA's convs on CPU (the main job's digits
# LeNet at batch 32, 2 and 25 MFLOPs per conv: a whole train step 2.8x faster with im2col than
# with hybrid; experiments/RESULTS.md).
HYBRID_MIN_FLOPS = 50_000_000


def _conv(x, kernel, bias, geo: ConvGeometry, impl: str, precision, where: str = "conv") -> jax.Array:
    """The convolution itself, on checked operands and their concrete geometry."""
    if impl == "auto":
        impl = _AUTO_AS.get() or auto_impl(geo, dtype=x.dtype)
    if impl == "onednn":
        _check_onednn(x.dtype, where)
        return _conv_onednn(x, kernel, bias, geo)
    if impl == "xla":
        y = _conv_xla_any_mode(x, kernel, geo, precision)
    elif impl == "hybrid":
        y = _hybrid(geo, x, kernel, precision)
    elif impl == "im2col" and _is_depthwise(geo):
        y = _conv_depthwise(_pad(x, geo), kernel, geo)
    else:
        fn = _conv_direct if impl == "direct" else _conv_im2col
        y = _chunked(fn, _pad(x, geo), kernel, geo, precision)
    return add_bias(y, bias)


def conv_with_spec(
    spec: ConvSpec, x, kernel, bias=None, *, impl: str = "auto", precision=None, where: str = "conv"
) -> jax.Array:
    """`conv` with its hyperparameters already checked: what a `Conv` layer's ``apply`` calls.

    Checks the operands' types and shapes against ``spec`` (free under ``jit``), never the
    hyperparameters again. ``impl`` must be one of `CHOICES` (checked where it was given).
    ``x`` may have any number of leading batch dims; the hand-written impls chunk over them.

    >>> spec = shapes.conv_spec(5)
    >>> conv_with_spec(spec, jnp.ones((2, 32, 32, 3)), jnp.ones((5, 5, 3, 10))).shape
    (2, 28, 28, 10)
    """
    x, kernel, bias = _operands(x, kernel, bias, where)
    geo = shapes.conv_geometry(spec, x.shape, kernel.shape, None if bias is None else bias.shape, where=where)
    return _conv(x, kernel, bias, geo, impl, precision, where)


def conv(
    x,
    kernel,
    bias=None,
    *,
    strides=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    padding_mode: str = "zeros",
    impl: str = "auto",
    precision=None,
) -> jax.Array:
    """N-D convolution (cross-correlation, like every deep-learning framework), channels last.

    Args:
      x: input ``(*batch, *spatial, c_in)``; zero or more leading batch dims.
      kernel: ``(*kernel_size, c_in // groups, c_out)``; its rank sets the spatial rank d.
      bias: optional ``(c_out,)``.
      strides: int or d ints, >= 1.
      padding: an int, d ints, d ``(lo, hi)`` pairs, or ``"VALID"``, ``"SAME"`` (odd pixel
        high), ``"SAME_LOWER"``, ``"CAUSAL"`` (1-D).
      dilation: kernel dilation, int or d ints, >= 1.
      groups: feature groups; ``groups == c_in`` is a depthwise conv.
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (PyTorch's).
      impl: ``"auto"`` (the default: `auto_impl`'s pick for this backend, shape and dtype),
        ``"xla"``, ``"direct"``, ``"im2col"``, ``"hybrid"`` or ``"onednn"`` (CPU; float32, and
        bfloat16 where the CPU has a oneDNN kernel; never float64: oneDNN has none, and
        ``"auto"`` does not pick it there); all give the same numbers (to float rounding).
      precision: the internal precision of the contraction, passed to ``lax`` (every impl):
        ``None`` means JAX's default, which for float32 is true float32 on CPU, TF32 on NVIDIA
        Ampere and newer GPUs, and one bfloat16 pass on TPU; ``"highest"`` (or
        ``lax.Precision.HIGHEST``) gives true float32 everywhere. See the README's "Precision".
        ``"onednn"`` ignores it: its float32 is always true float32.

    Returns:
      ``(*batch, *out_spatial, c_out)`` with ``out = floor((W + lo + hi - dilation*(F-1) - 1)/S) + 1``.

    Raises:
      ShapeError: shapes that do not fit (channels, groups, bias, kernel larger than the input).
      ValueError: bad hyperparameters (strides, padding, names), or ``impl="onednn"`` where it
        is not available (`backends` says why) or off the CPU.
      TypeError: integer input (cast to float first), something that is not an array, or
        ``impl="onednn"`` with a dtype it has no kernel for (float64, float16).

    >>> x = jnp.ones((32, 32, 3)); k = jnp.ones((5, 5, 3, 10))
    >>> conv(x, k).shape
    (28, 28, 10)
    """
    where = "conv"
    impl = checks.one_of(impl, CHOICES, where, "impl")
    kernel = checks.as_array(kernel, where, "kernel", "inexact")
    spec = shapes.conv_spec(
        shapes.kernel_size_of(kernel.shape, where, shapes.CONV_KERNEL_LAYOUT),
        strides=strides,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
        where=where,
    )
    return conv_with_spec(spec, x, kernel, bias, impl=impl, precision=precision, where=where)


def auto_transpose_impl(geo: ConvTransposeGeometry, backend: str | None = None, dtype=None) -> str:
    """The implementation ``conv_transpose(..., impl="auto")`` picks: ``"onednn"`` on a CPU with
    one device for the dtypes it supports (float32, and bfloat16 where the CPU has a oneDNN
    kernel; never float64), else ``"xla"`` (as `auto_impl`).

    >>> geo = shapes.conv_transpose_geometry(shapes.conv_transpose_spec(3, 2), (8, 8, 4), (3, 3, 4, 2))
    >>> auto_transpose_impl(geo, "gpu")
    'xla'
    """
    del geo  # oneDNN's backward-data kernel won wherever it runs (experiments/RESULTS.md)
    backend = backend or jax.default_backend()
    if backend == "cpu" and _onednn_auto(dtype):
        return "onednn"
    return "xla"


def _conv_transpose_onednn(x, kernel, bias, geo: ConvTransposeGeometry) -> jax.Array:
    """A transposed conv as oneDNN's input-gradient kernel of the conv it transposes.

    That conv maps the ``out_spatial`` output back to ``x``'s size with padding (lo, hi -
    output_padding); its kernel is this one with in/out roles swapped per group (the kernel
    moves, never the activations). Rows a negative high padding would hide are never read by
    it, so their gradient is zero: computed on the shorter input, then padded with zeros.
    """
    d = len(geo.kernel_size)
    g = geo.groups
    cg, og = geo.in_channels // g, kernel.shape[-1]
    # (*k, g*cg, og) -> (*k, og, g*cg): the forward conv reads og channels per group.
    w = jnp.moveaxis(kernel.reshape(geo.kernel_size + (g, cg, og)), d + 2, d).reshape(
        geo.kernel_size + (og, g * cg)
    )
    cut = tuple(max(0, op - hi) for (_, hi), op in zip(geo.crop, geo.output_padding))
    padding = tuple((lo, max(0, hi - op)) for (lo, hi), op in zip(geo.crop, geo.output_padding))
    n = math.prod(geo.batch_shape)
    y = onednn.conv_input_gradient(
        x.reshape((n,) + x.shape[len(geo.batch_shape) :]),
        w,
        tuple(size - c for size, c in zip(geo.out_spatial, cut)),
        strides=geo.strides,
        padding=padding,
        dilation=geo.dilation,
        groups=g,
    )
    if any(cut):
        zero = jnp.zeros((), y.dtype)
        y = lax.pad(y, zero, [(0, 0, 0)] + [(0, c, 0) for c in cut] + [(0, 0, 0)])
    return add_bias(y.reshape(geo.out_shape), bias)


def _conv_transpose(
    x, kernel, bias, geo: ConvTransposeGeometry, precision, impl: str = "auto", where: str = "conv_transpose"
) -> jax.Array:
    """The transposed convolution on checked operands and their concrete geometry."""
    if impl == "auto":
        impl = auto_transpose_impl(geo, dtype=x.dtype)
    if impl == "onednn":
        _check_onednn(x.dtype, where)
        return _conv_transpose_onednn(x, kernel, bias, geo)
    d = len(geo.kernel_size)
    # A transposed conv is a stride-1 conv over the input dilated by the stride, with the kernel
    # flipped and its in/out roles swapped, padded by dilation*(F-1) minus PyTorch's crop.
    w = lax.rev(kernel, tuple(range(d)))
    if geo.groups > 1:
        g = geo.groups
        cg, og = geo.in_channels // g, kernel.shape[-1]
        # (*k, g*cg, og) -> (*k, cg, g*og): lax wants the groups on the output-feature axis.
        w = jnp.swapaxes(w.reshape(geo.kernel_size + (g, cg, og)), d, d + 1).reshape(
            geo.kernel_size + (cg, g * og)
        )
    full = tuple(r * (k - 1) for r, k in zip(geo.dilation, geo.kernel_size))
    pads = tuple((f - lo, f - hi + op) for f, (lo, hi), op in zip(full, geo.crop, geo.output_padding))
    y = _conv_xla(x, w, geo, pads, precision, lhs_dilation=geo.strides)
    return add_bias(y, bias)


def conv_transpose_with_spec(
    spec: ConvTransposeSpec,
    x,
    kernel,
    bias=None,
    *,
    precision=None,
    impl: str = "auto",
    where: str = "conv_transpose",
) -> jax.Array:
    """`conv_transpose` with its hyperparameters already checked (a `ConvTranspose` layer's
    ``apply``): checks the operands against ``spec``, nothing else.

    >>> spec = shapes.conv_transpose_spec(3, 2)
    >>> conv_transpose_with_spec(spec, jnp.ones((3, 3, 4)), jnp.ones((3, 3, 4, 2))).shape
    (7, 7, 2)
    """
    x, kernel, bias = _operands(x, kernel, bias, where)
    geo = shapes.conv_transpose_geometry(
        spec, x.shape, kernel.shape, None if bias is None else bias.shape, where=where
    )
    return _conv_transpose(x, kernel, bias, geo, precision, impl, where)


def conv_transpose(
    x,
    kernel,
    bias=None,
    *,
    strides=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups: int = 1,
    precision=None,
    impl: str = "auto",
) -> jax.Array:
    """Transposed convolution with PyTorch's ``ConvTranspose{1,2,3}d`` semantics, channels last.

    ``out = (W - 1)*S - (lo + hi) + dilation*(F - 1) + output_padding + 1`` per spatial dim.
    It is the gradient of `conv` with respect to its input: each input pixel scatters a copy of
    the kernel, ``stride`` pixels apart, and ``padding`` crops the result.

    Args:
      x: ``(*batch, *spatial, c_in)``.
      kernel: ``(*kernel_size, c_in, c_out // groups)``: PyTorch's ``(c_in, c_out // groups, *k)``
        weight moved to channels-last, not flipped.
      bias: optional ``(c_out,)``.
      strides, dilation: ints or d ints, >= 1.
      padding: an int, d ints, d ``(lo, hi)`` pairs or ``"VALID"`` (= 0): rows cropped.
      output_padding: extra rows on the high side, each smaller than the stride or dilation.
      groups: feature groups.
      precision: the internal precision of the contraction, passed to ``lax`` (every impl):
        ``None`` means JAX's default, which for float32 is true float32 on CPU, TF32 on NVIDIA
        Ampere and newer GPUs, and one bfloat16 pass on TPU; ``"highest"`` (or
        ``lax.Precision.HIGHEST``) gives true float32 everywhere. See the README's "Precision".
        oneDNN ignores it: its float32 is always true float32.
      impl: ``"auto"`` (`auto_transpose_impl`'s pick), ``"xla"`` (one dilated
        ``lax.conv_general_dilated``) or ``"onednn"`` (oneDNN's input-gradient kernel; CPU,
        float32 / bfloat16, see `conv`).

    Returns:
      ``(*batch, *out_spatial, c_out)``.

    Raises:
      ShapeError: shapes that do not fit.
      ValueError: bad hyperparameters, or ``impl="onednn"`` where it is not available.
      TypeError: ``impl="onednn"`` with a dtype it has no kernel for (float64, float16).

    >>> conv_transpose(jnp.ones((3, 3, 4)), jnp.ones((3, 3, 4, 2)), strides=2).shape
    (7, 7, 2)
    """
    where = "conv_transpose"
    impl = checks.one_of(impl, TRANSPOSE_CHOICES, where, "impl")
    kernel = checks.as_array(kernel, where, "kernel", "inexact")
    spec = shapes.conv_transpose_spec(
        shapes.kernel_size_of(kernel.shape, where, shapes.CONV_TRANSPOSE_KERNEL_LAYOUT),
        strides,
        padding,
        output_padding,
        dilation,
        groups,
        where=where,
    )
    return conv_transpose_with_spec(spec, x, kernel, bias, precision=precision, impl=impl, where=where)
