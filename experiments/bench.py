"""Benchmark the path models take: train steps, per-layer timings, XLA CPU flags, conv ops.

Every contender of a table runs in the same process, interleaved in rounds (the order rotates
each round), so slow drift in machine load hits all of them alike: read the ratios. Each number
is the median over ``rounds * iters`` timed calls after warm-up, with the interquartile range
and the min-max beside it. Results go to ``--out`` as ``<suite>.json`` and ``<suite>.md``.

Suites (``--suite``, several allowed; no argument runs ``steps layers``):

* ``steps``: one training step (softmax cross-entropy on integer labels, ``optax.adam``) of the
  lecture's LeNet and of a ResNet-8 with BatchNorm, batch 128: jcnn (``batched(model)``, the
  step written here: ``jax.value_and_grad`` + optax, jit with donated params / state / optimizer
  state), jcnn with every conv ``impl="xla"``, raw ``lax`` written batch-first (LeNet), Flax
  linen (same architecture, same optax optimizer) and PyTorch eager (``torch.optim.Adam``; NCHW
  and channels_last, the faster is the reference).
* ``layers``: LeNet's step cut into segments (conv1, relu+pool1, conv2, relu+pool2,
  flatten+dense1+relu, dense2+loss, adam update), each one's forward+backward at the shapes it
  sees inside the model, for jcnn, raw lax and PyTorch (both layouts): where the step's time goes.
* ``flags``: XLA CPU flag settings (``XLA_FLAGS``, one fresh subprocess per setting, settings
  interleaved in rounds) on the LeNet and ResNet steps and a depthwise and a 3-D conv.
* ``ops``: the op-level conv suite (forward and forward+backward of every ``impl`` vs raw lax and
  PyTorch).
* ``convs``: every conv layer of the benchmarked and zoo models at its in-model shape, forward +
  backward as a `batched` layer, for each ``impl`` and PyTorch: the table ``impl="auto"``'s
  rule is derived from.

    python experiments/bench.py                              # steps + layers tables
    python experiments/bench.py --suite all                  # everything (~15 min on 2 cores)
    python experiments/bench.py --quick --suite all          # smoke run (seconds per suite)
    python experiments/bench.py --xla-flags=--xla_cpu_experimental_ynn_fusion_type=   # opt-in

PyTorch runs with ``torch.set_num_threads(cores)`` and ``OMP_WAIT_POLICY=PASSIVE``; the bench
puts the latter in the environment before it imports torch (set it yourself to override).
jcnn never sets an XLA flag; ``--xla-flags`` reruns this script in a subprocess with
``XLA_FLAGS`` set, because flags are read once, when jax starts its backend.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import jcnn
from jcnn import layers as L

JCNN_IMPLS = ("auto", "xla", "direct", "im2col", "hybrid", "onednn")
NUM_CLASSES = 10

# --------------------------------------------------------------------------------------------
# environment: PyTorch's threads and wait policy, machine description
# --------------------------------------------------------------------------------------------


def cores() -> int:
    """CPU cores this process may run on (what PyTorch gets as its thread count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_TORCH = []


def get_torch(threads: int | None = None):
    """PyTorch, imported on first use with ``OMP_WAIT_POLICY=PASSIVE`` (unless set), or None.

    OpenMP reads the variable once, when PyTorch's libgomp is loaded: spinning worker threads
    (the ACTIVE default) steal the cores jax's step needs between torch's ops, so it must be in
    the environment before the import. If torch was already imported, it is left as it is.
    """
    if not _TORCH:
        if "torch" not in sys.modules:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import torch
        except ImportError:  # PyTorch is optional: its columns are left out
            torch = None
        if torch is not None:
            torch.set_num_threads(threads or cores())
        _TORCH.append(torch)
    return _TORCH[0]


def torch_device(torch) -> str:
    """Where PyTorch runs: "cuda" (cuDNN) when jax runs on a GPU and torch sees one, else "cpu"."""
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def machine_info() -> dict:
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cpu_cores": cores(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "jcnn": jcnn.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    torch = get_torch()
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_device"] = torch_device(torch)
        info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(unset: ACTIVE)")
    try:
        import flax

        info["flax"] = flax.__version__
    except ImportError:
        pass
    return info


def machine_line(info: dict) -> str:
    torch = (
        f"torch {info['torch']} ({info['torch_threads']} threads, {info['torch_device']},"
        f" OMP_WAIT_POLICY={info['omp_wait_policy']})"
        if "torch" in info
        else "torch not installed"
    )
    load = ", ".join(f"{v:.2f}" for v in info["loadavg_1_5_15"])
    return (
        f"{info['date_utc']}; {info['cpu_cores']} cores, {info['processor']}, backend"
        f" `{info['backend']}` ({info['device']}); load average {load} at start; jax {info['jax']},"
        f" flax {info.get('flax', '-')}, {torch}; XLA_FLAGS=`{info['xla_flags'] or '(none)'}`."
    )


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def block(tree):
    return jax.block_until_ready(tree)


def interleaved(runs: dict[str, Callable[[], object]], rounds: int, iters: int, warmup: int) -> dict:
    """Seconds per call of each ``runs[name]()``, the contenders taking turns in rounds.

    Each callable must block until its work is done. Warm-up calls (compilation included) come
    first; then every round times ``iters`` consecutive calls of each contender, starting one
    contender later each round so none always runs right after the same neighbour.
    """
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = runs[name]
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def stats(samples: list[float]) -> dict:
    """Median, quartiles and extremes of ``samples`` (seconds) in milliseconds."""
    ms = sorted(1e3 * s for s in samples)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "q1_ms": q[0],
        "q3_ms": q[2],
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "n": len(ms),
    }


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def matmul_ceiling(reps: int = 10, n: int = 1024) -> float:
    """GFLOP/s of one large float32 matmul: this machine's practical ceiling."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    times = interleaved({"mm": lambda: block(f(a))}, rounds=1, iters=reps, warmup=2)["mm"]
    return 2 * n**3 / statistics.median(times) / 1e9


# --------------------------------------------------------------------------------------------
# the models: LeNet (lecture) and ResNet-8 (BatchNorm) for jcnn, raw lax, Flax linen, PyTorch
# --------------------------------------------------------------------------------------------


class ModelSpec(NamedTuple):
    name: str
    input_shape: tuple[int, ...]  # one example, channels last
    description: str


MODELS = {
    "lenet": ModelSpec(
        "LeNet",
        (28, 28, 1),
        "Conv(20,5,p2)-relu-maxpool2-Conv(50,5,p2)-relu-maxpool2-Dense500-relu-Dense10 on 28x28x1",
    ),
    "resnet8": ModelSpec(
        "ResNet-8",
        (32, 32, 3),
        "CIFAR ResNet-8 (He et al. 2016, sec. 4.2, n=1): Conv16-BN-relu, basic blocks 16, 32/2, 64/2"
        " (projection shortcuts Conv1x1-BN), global avg pool, Dense10; no conv bias; on 32x32x3",
    ),
}


def jcnn_lenet(impl: str = "auto") -> L.Layer:
    """The lecture's LeNet: `jcnn.models.lenet` itself for the default impl."""
    if impl == "auto":
        return jcnn.models.lenet(NUM_CLASSES, (28, 28, 1))
    return L.serial(
        L.Conv(20, 5, padding=2, impl=impl),
        L.Relu(),
        L.MaxPool(2),
        L.Conv(50, 5, padding=2, impl=impl),
        L.Relu(),
        L.MaxPool(2),
        L.Flatten(),
        L.Dense(500),
        L.Relu(),
        L.Dense(NUM_CLASSES),
    )


def jcnn_resnet8(impl: str = "auto") -> L.Layer:
    def conv_bn(c, k, strides=1):
        return [L.Conv(c, k, strides=strides, padding=k // 2, bias=False, impl=impl), L.BatchNorm()]

    def block(c_in, c, strides):
        body = L.serial(*conv_bn(c, 3, strides), L.Relu(), *conv_bn(c, 3))
        short = None if strides == 1 and c_in == c else L.serial(*conv_bn(c, 1, strides))
        return [L.residual(body, shortcut=short), L.Relu()]

    return L.serial(
        *conv_bn(16, 3),
        L.Relu(),
        *block(16, 16, 1),
        *block(16, 32, 2),
        *block(32, 64, 2),
        L.GlobalAvgPool(),
        L.Dense(NUM_CLASSES),
    )


def lax_lenet_init(seed: int = 0) -> dict:
    """He-normal LeNet parameters for `lax_lenet` (HWIO kernels, (in, out) dense weights).

    Drawn with NumPy: jax's threefry sampler would cost seconds of compilation per shape here.
    """
    rng = np.random.default_rng(seed)
    shapes_ = {
        "conv1_k": (5, 5, 1, 20),
        "conv1_b": (20,),
        "conv2_k": (5, 5, 20, 50),
        "conv2_b": (50,),
        "fc1_w": (7 * 7 * 50, 500),
        "fc1_b": (500,),
        "fc2_w": (500, NUM_CLASSES),
        "fc2_b": (NUM_CLASSES,),
    }
    params = {}
    for name, shape in shapes_.items():
        w = (
            np.zeros(shape)
            if len(shape) == 1
            else rng.normal(size=shape) * math.sqrt(2.0 / math.prod(shape[:-1]))
        )
        params[name] = jnp.asarray(w, jnp.float32)
    return params


_NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, k, b, pad):
    y = lax.conv_general_dilated(x, k, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=_NHWC)
    return y + b.reshape(1, 1, 1, -1)


def _lax_relu_pool(x):
    return lax.reduce_window(jnp.maximum(x, 0), -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def lax_lenet(params, x):
    """LeNet written batch-first in raw lax: what "XLA with no library around it" costs."""
    x = _lax_relu_pool(_lax_conv(x, params["conv1_k"], params["conv1_b"], 2))
    x = _lax_relu_pool(_lax_conv(x, params["conv2_k"], params["conv2_b"], 2))
    x = x.reshape(x.shape[0], -1)
    x = jnp.maximum(x @ params["fc1_w"] + params["fc1_b"][None], 0)
    return x @ params["fc2_w"] + params["fc2_b"][None]


def flax_models():
    """Flax linen LeNet and ResNet-8, or None without flax."""
    try:
        import flax.linen as nn
    except ImportError:
        return None

    class FlaxLeNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.max_pool(nn.relu(nn.Conv(20, (5, 5), padding=2)(x)), (2, 2), (2, 2))
            x = nn.max_pool(nn.relu(nn.Conv(50, (5, 5), padding=2)(x)), (2, 2), (2, 2))
            x = x.reshape((x.shape[0], -1))
            return nn.Dense(NUM_CLASSES)(nn.relu(nn.Dense(500)(x)))

    class FlaxResNet8(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            def conv_bn(x, c, k, strides=1):
                x = nn.Conv(c, (k, k), strides=strides, padding=k // 2, use_bias=False)(x)
                # Flax's momentum is 1 - PyTorch's: 0.9 here = torch's (and jcnn's) 0.1.
                return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)

            x = nn.relu(conv_bn(x, 16, 3))
            for c_in, c, s in ((16, 16, 1), (16, 32, 2), (32, 64, 2)):
                y = conv_bn(nn.relu(conv_bn(x, c, 3, s)), c, 3)
                short = x if s == 1 and c_in == c else conv_bn(x, c, 1, s)
                x = nn.relu(short + y)
            return nn.Dense(NUM_CLASSES)(x.mean(axis=(1, 2)))

    return {"lenet": FlaxLeNet(), "resnet8": FlaxResNet8()}


def torch_model(name: str, torch):
    """The PyTorch module of ``name`` (NCHW, default init)."""
    tn = torch.nn
    if name == "lenet":
        return tn.Sequential(
            tn.Conv2d(1, 20, 5, padding=2),
            tn.ReLU(),
            tn.MaxPool2d(2),
            tn.Conv2d(20, 50, 5, padding=2),
            tn.ReLU(),
            tn.MaxPool2d(2),
            tn.Flatten(),
            tn.Linear(50 * 7 * 7, 500),
            tn.ReLU(),
            tn.Linear(500, NUM_CLASSES),
        )

    def conv_bn(c_in, c, k, s=1):
        return [tn.Conv2d(c_in, c, k, stride=s, padding=k // 2, bias=False), tn.BatchNorm2d(c)]

    class Block(tn.Module):
        def __init__(self, c_in, c, s):
            super().__init__()
            self.body = tn.Sequential(*conv_bn(c_in, c, 3, s), tn.ReLU(), *conv_bn(c, c, 3))
            self.short = tn.Identity() if s == 1 and c_in == c else tn.Sequential(*conv_bn(c_in, c, 1, s))

        def forward(self, x):
            return torch.relu(self.short(x) + self.body(x))

    return tn.Sequential(
        *conv_bn(3, 16, 3),
        tn.ReLU(),
        Block(16, 16, 1),
        Block(16, 32, 2),
        Block(32, 64, 2),
        tn.AdaptiveAvgPool2d(1),
        tn.Flatten(),
        tn.Linear(64, NUM_CLASSES),
    )


def param_count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


# --------------------------------------------------------------------------------------------
# train steps: each contender is a closure doing one full step and blocking on its result
# --------------------------------------------------------------------------------------------


class Contender(NamedTuple):
    run: Callable[[], object]
    params: int  # trainable parameter count: the same architecture everywhere
    note: str


def batch_data(model: str, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *MODELS[model].input_shape)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    return x, y


def _ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def jcnn_train_step(layer: L.Layer, xb, yb, opt, compiler_options=None):
    """jcnn's train step written from the public API: ``batched(layer)``, value_and_grad, optax.

    ``compiler_options`` go to this step's ``jax.jit`` only (e.g. `jcnn.train.xla_cpu_ynn_off`).
    Returns ``(step, args, run)``: the jitted step, its first arguments ``(params, state,
    opt_state, x, y)`` (lower it with them before ``run``: the state is donated), and a blocking
    call of one step that carries the state on.
    """
    net = L.batched(layer)
    _, params, state = net.init(jax.random.key(0), tuple(xb.shape))
    opt_state = jax.jit(opt.init)(params)

    def loss_fn(params, state, x, y):
        logits, state = net.apply(params, state, x, train=True)
        return _ce(logits, y), state

    def step(params, state, opt_state, x, y):
        (loss, state), g = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2), compiler_options=compiler_options or None)
    carry = [params, state, opt_state]
    x, y = jnp.asarray(xb), jnp.asarray(yb)

    def run():
        out = step(*carry, x, y)
        carry[:] = out[:-1]
        return block(out[-1])

    return step, (params, state, opt_state, x, y), run


def jcnn_step(layer: L.Layer, xb, yb, opt, compiler_options=None) -> Contender:
    """`jcnn_train_step` as a contender."""
    _, args, run = jcnn_train_step(layer, xb, yb, opt, compiler_options)
    how = "batched(model), jit, donated state"
    if compiler_options:
        how += ", jit compiler_options " + ", ".join(f"{k}={v!r}" for k, v in compiler_options.items())
    return Contender(run, param_count(args[0]), how)


def lax_step(xb, yb, opt) -> Contender:
    params = lax_lenet_init(0)
    opt_state = jax.jit(opt.init)(params)

    def step(params, opt_state, x, y):
        loss, g = jax.value_and_grad(lambda p: _ce(lax_lenet(p, x), y))(params)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    carry = [params, opt_state]
    x, y = jnp.asarray(xb), jnp.asarray(yb)

    def run():
        out = step(*carry, x, y)
        carry[:] = out[:-1]
        return block(out[-1])

    return Contender(run, param_count(params), "hand-written NHWC lax, jit, donated state")


def flax_step(module, xb, yb, opt) -> Contender:
    x, y = jnp.asarray(xb), jnp.asarray(yb)
    # An rbg key: Flax's init under the default threefry compiles for seconds more.
    variables = jax.jit(lambda k, x: module.init(k, x, train=False))(jax.random.key(0, impl="rbg"), x)
    params = variables["params"]
    stats_ = {k: v for k, v in variables.items() if k != "params"}
    opt_state = jax.jit(opt.init)(params)
    mutable = list(stats_)

    def loss_fn(params, stats_, x, y):
        if mutable:
            logits, new = module.apply({"params": params, **stats_}, x, train=True, mutable=mutable)
        else:
            logits, new = module.apply({"params": params}, x, train=True), stats_
        return _ce(logits, y), new

    def step(params, stats_, opt_state, x, y):
        (loss, stats_), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats_, x, y)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), stats_, opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    carry = [params, stats_, opt_state]

    def run():
        out = step(*carry, x, y)
        carry[:] = out[:-1]
        return block(out[-1])

    return Contender(run, param_count(params), "linen, same optax step, jit, donated state")


def torch_step(name: str, xb, yb, channels_last: bool, torch) -> Contender:
    device = torch_device(torch)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = torch_model(name, torch).to(device).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.from_numpy(np.moveaxis(xb, -1, 1).copy()).to(device).contiguous(memory_format=fmt)
    y = torch.from_numpy(yb.astype(np.int64)).to(device)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        torch_sync(torch, device)
        return loss

    count = sum(p.numel() for p in model.parameters())
    return Contender(run, count, f"eager, {'channels_last' if channels_last else 'NCHW'}, {device}")


_STEPS: dict = {}


def step_contenders(model: str, batch: int, torch, quick: bool = False) -> dict[str, Contender]:
    """Every contender's train step for ``model``; built (and compiled) once per process."""
    key = (model, batch, quick, torch is None)
    if key not in _STEPS:
        _STEPS[key] = _build_step_contenders(model, batch, torch, quick)
    return _STEPS[key]


def _build_step_contenders(model: str, batch: int, torch, quick: bool) -> dict[str, Contender]:
    xb, yb = batch_data(model, batch)
    opt = optax.adam(1e-3)
    build = jcnn_lenet if model == "lenet" else jcnn_resnet8
    out = {"jcnn": jcnn_step(build("auto"), xb, yb, opt)}
    if not quick:  # the same step with other conv impls: skipped by the smoke run
        out["jcnn impl=xla"] = jcnn_step(build("xla"), xb, yb, opt)
        out["jcnn impl=im2col"] = jcnn_step(build("im2col"), xb, yb, opt)  # auto's pick until issue 10
        ynn_off = jcnn.train.xla_cpu_ynn_off()  # {} where this XLA has no YNN fusions, or off CPU
        if ynn_off:  # the per-step opt-in (experiments/train.py --xla-cpu-ynn-off)
            out["jcnn, ynn off"] = jcnn_step(build("auto"), xb, yb, opt, ynn_off)
            out["jcnn impl=xla, ynn off"] = jcnn_step(build("xla"), xb, yb, opt, ynn_off)
    if model == "lenet":
        out["raw lax"] = lax_step(xb, yb, opt)
    flax = flax_models()
    if flax is not None:
        out["flax linen"] = flax_step(flax[model], xb, yb, opt)
    if torch is not None:
        out["torch NCHW"] = torch_step(model, xb, yb, False, torch)
        out["torch channels_last"] = torch_step(model, xb, yb, True, torch)
    return out


def step_gflop(model: str, batch: int) -> float:
    """3x the forward FLOPs (`jcnn.summary`: multiply-add = 2) times the batch: the usual
    estimate of one training step's work (forward, input gradient, weight gradient)."""
    layer = jcnn_lenet() if model == "lenet" else jcnn_resnet8()
    return 3 * batch * jcnn.summary(layer, MODELS[model].input_shape).totals["flops"] / 1e9


def torch_best(rows: dict, prefix: str = "torch") -> str | None:
    cands = [k for k in rows if k.startswith(prefix)]
    return min(cands, key=lambda k: rows[k]["median_ms"]) if cands else None


def suite_steps(args, torch) -> dict:
    results = {"batch": args.batch, "rounds": args.rounds, "iters": args.iters, "models": {}}
    results["matmul_gflops"] = matmul_ceiling()
    print(f"matmul ceiling: {results['matmul_gflops']:.1f} GFLOP/s", flush=True)
    for model in args.models:
        contenders = step_contenders(model, args.batch, torch, args.quick)
        times = interleaved({k: c.run for k, c in contenders.items()}, args.rounds, args.iters, args.warmup)
        rows = {}
        for k, c in contenders.items():
            rows[k] = stats(times[k]) | {"params": c.params, "note": c.note}
            rows[k]["images_per_s"] = args.batch / (rows[k]["median_ms"] / 1e3)
        best = torch_best(rows)
        for row in rows.values():
            if best:
                row["vs_torch"] = rows[best]["median_ms"] / row["median_ms"]
        results["models"][model] = {
            "gflop_per_step": step_gflop(model, args.batch),
            "torch_best": best,
            "rows": rows,
        }
        line = "  ".join(f"{k}={r['median_ms']:.1f}" for k, r in rows.items())
        print(f"{MODELS[model].name} step ms (median): {line}", flush=True)
    return results


def markdown_steps(res: dict) -> str:
    lines = []
    for model, m in res["models"].items():
        spec = MODELS[model]
        lines += [
            f"### {spec.name} train step (adam, batch {res['batch']}, float32)",
            "",
            f"{spec.description}; ~{m['gflop_per_step']:.2f} GFLOP a step (3x forward);"
            f" {res['rounds']} rounds x {res['iters']} steps, interleaved. Matmul ceiling"
            f" {res['matmul_gflops']:.0f} GFLOP/s.",
            "",
            "| contender | median ms | IQR ms | min-max ms | images/s | GFLOP/s | vs PyTorch best | params | how |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k, r in m["rows"].items():
            mark = " (best)" if k == m["torch_best"] else ""
            vs = f"{r['vs_torch']:.2f}x" if "vs_torch" in r else "-"
            gflops = m["gflop_per_step"] / (r["median_ms"] / 1e3)
            lines.append(
                f"| {k}{mark} | {r['median_ms']:.1f} | {r['q1_ms']:.1f}-{r['q3_ms']:.1f} |"
                f" {r['min_ms']:.1f}-{r['max_ms']:.1f} | {r['images_per_s']:,.0f} | {gflops:.1f} |"
                f" {vs} | {r['params']:,} | {r['note']} |"
            )
        rows = m["rows"]
        notes = []
        if "flax linen" in rows:
            notes.append(
                f"jcnn / Flax speed: {rows['flax linen']['median_ms'] / rows['jcnn']['median_ms']:.2f}x"
            )
        if "raw lax" in rows and "jcnn impl=xla" in rows:
            ratio = rows["jcnn impl=xla"]["median_ms"] / rows["raw lax"]["median_ms"]
            notes.append(f"jcnn impl=xla time / raw lax time: {ratio:.3f} (target <= 1.03)")
        if notes:
            lines += ["", "; ".join(notes) + "."]
        lines.append("")
    lines += [
        "The jcnn, raw-lax and Flax steps are written in the bench (softmax cross-entropy on integer"
        " labels, `optax.adam(1e-3)`, `jax.value_and_grad`, `jax.jit` with donated params, model"
        " state and optimizer state), so they measure the library's layers, not its training"
        " loop. PyTorch: eager, `torch.optim.Adam`, `cross_entropy`, `zero_grad(set_to_none=True)`;"
        " vs PyTorch = PyTorch's best layout's median time / this median time (> 1 is faster).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# per-layer forward+backward inside LeNet
# --------------------------------------------------------------------------------------------


class Segment(NamedTuple):
    name: str
    in_shape: tuple[int, ...]  # one example, channels last
    jcnn: Callable[[], L.Layer]
    lax: Callable | None  # (params, x) -> y, params from `lax_params` keys
    lax_keys: tuple[str, ...]
    torch: Callable  # torch -> module (NCHW)
    wrt_x: bool  # conv1's input gradient is never needed in a model


def lenet_segments() -> list[Segment]:
    def tconv(c_in, c):
        return lambda t: t.nn.Conv2d(c_in, c, 5, padding=2)

    def trelu_pool(t):
        return t.nn.Sequential(t.nn.ReLU(), t.nn.MaxPool2d(2))

    def tdense1(t):
        return t.nn.Sequential(t.nn.Flatten(), t.nn.Linear(2450, 500), t.nn.ReLU())

    def conv_lax(k, b):
        return lambda p, x: _lax_conv(x, p[k], p[b], 2)

    def dense1_lax(p, x):
        return jnp.maximum(x.reshape(x.shape[0], -1) @ p["fc1_w"] + p["fc1_b"][None], 0)

    relu_pool = lambda: L.serial(L.Relu(), L.MaxPool(2))  # noqa: E731
    return [
        Segment("conv1", (28, 28, 1), lambda: L.Conv(20, 5, padding=2), conv_lax("conv1_k", "conv1_b"),
                ("conv1_k", "conv1_b"), tconv(1, 20), False),
        Segment("relu+pool1", (28, 28, 20), relu_pool, lambda p, x: _lax_relu_pool(x), (), trelu_pool, True),
        Segment("conv2", (14, 14, 20), lambda: L.Conv(50, 5, padding=2), conv_lax("conv2_k", "conv2_b"),
                ("conv2_k", "conv2_b"), tconv(20, 50), True),
        Segment("relu+pool2", (14, 14, 50), relu_pool, lambda p, x: _lax_relu_pool(x), (), trelu_pool, True),
        Segment("flatten+dense1+relu", (7, 7, 50), lambda: L.serial(L.Flatten(), L.Dense(500), L.Relu()),
                dense1_lax, ("fc1_w", "fc1_b"), tdense1, True),
        Segment("dense2+loss", (500,), lambda: L.Dense(NUM_CLASSES),
                lambda p, x: x @ p["fc2_w"] + p["fc2_b"][None], ("fc2_w", "fc2_b"),
                lambda t: t.nn.Linear(500, NUM_CLASSES), True),
    ]  # fmt: skip


def output_gradient(shape: tuple[int, ...], seed: int = 3) -> np.ndarray:
    """A fixed random output gradient (channels last) for a segment's backward pass.

    Not the gradient of ``sum(output)``: a constant cotangent lets XLA fold the backward pass
    (the kernel gradient becomes a column sum of the patches, the input gradient a conv of a
    constant), which no training step can, and PyTorch computes it in full all the same; the
    tables before session 5 were measured that way and flattered the jax side.
    """
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _jax_segment(apply, params, x, y, last: bool, wrt_x: bool):
    """A jitted fwd+bwd of one segment: its VJP with `output_gradient` (the loss's for the last)."""

    def f(params, x, dy):
        if last:
            loss = lambda p, x: _ce(apply(p, x), y)  # noqa: E731
            return jax.value_and_grad(loss, argnums=(0, 1) if wrt_x else 0)(params, x)
        if wrt_x:
            out, pullback = jax.vjp(apply, params, x)
        else:
            out, pullback = jax.vjp(lambda p: apply(p, x), params)
        return out, pullback(dy)

    dy = None if last else jnp.asarray(output_gradient(jax.eval_shape(apply, params, x).shape))
    g = jax.jit(f)
    return lambda: block(g(params, x, dy))


def _torch_segment(module, xb, yb, last: bool, wrt_x: bool, channels_last: bool, torch):
    device = torch_device(torch)
    fmt = torch.channels_last if channels_last and xb.ndim == 4 else torch.contiguous_format
    module = module.to(device).to(memory_format=fmt)
    xt = np.moveaxis(xb, -1, 1) if xb.ndim == 4 else xb
    x = torch.from_numpy(xt.copy()).to(device).contiguous(memory_format=fmt).requires_grad_(wrt_x)
    y = torch.from_numpy(yb.astype(np.int64)).to(device)
    params = list(module.parameters())
    dy = None
    if not last:  # the same output gradient as the jax side's, in PyTorch's layout
        with torch.no_grad():
            out_shape = tuple(module(x).shape)
        nhwc = (out_shape[0], *out_shape[2:], out_shape[1]) if len(out_shape) == 4 else out_shape
        g = output_gradient(nhwc)
        g = np.moveaxis(g, -1, 1) if len(out_shape) == 4 else g
        g_fmt = fmt if len(out_shape) == 4 else torch.contiguous_format
        dy = torch.from_numpy(np.ascontiguousarray(g)).to(device).contiguous(memory_format=g_fmt)

    def run():
        for p in params:
            p.grad = None
        x.grad = None
        out = module(x)
        if last:
            torch.nn.functional.cross_entropy(out, y).backward()
        else:
            out.backward(dy)
        torch_sync(torch, device)

    return run


def adam_contenders(batch: int, torch) -> dict:
    """The optimizer's share: one adam update of all LeNet parameters."""
    opt = optax.adam(1e-3)
    params = lax_lenet_init(0)
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 1e-3), params)
    carry = [params, jax.jit(opt.init)(params)]

    def update(params, opt_state, grads):
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update = jax.jit(update, donate_argnums=(0, 1))

    def run_jax():
        carry[:] = update(*carry, grads)
        block(carry)

    runs = {"jcnn": run_jax}  # raw lax runs the same optax update: its row copies this one
    if torch is not None:
        device = torch_device(torch)
        model = torch_model("lenet", torch).to(device)
        topt = torch.optim.Adam(model.parameters(), 1e-3)
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-3)

        def run_torch():
            topt.step()
            torch_sync(torch, device)

        runs["torch NCHW"] = run_torch  # the optimizer does not see the layout
    return runs


def suite_layers(args, torch) -> dict:
    batch = args.batch
    rng = np.random.default_rng(1)
    yb = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    lax_params = lax_lenet_init(1)
    rows = []
    segs = lenet_segments()
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        xb = rng.normal(size=(batch, *seg.in_shape)).astype(np.float32)
        x, y = jnp.asarray(xb), jnp.asarray(yb)
        net = L.batched(seg.jcnn())
        _, params, state = net.init(jax.random.key(0), (batch, *seg.in_shape))
        jcnn_apply = lambda p, x, net=net, state=state: net.apply(p, state, x, train=True)[0]  # noqa: E731
        lp = {k: lax_params[k] for k in seg.lax_keys}
        runs = {
            "jcnn": _jax_segment(jcnn_apply, params, x, y, last, seg.wrt_x),
            "raw lax": _jax_segment(seg.lax, lp, x, y, last, seg.wrt_x),
        }
        if torch is not None:
            for cl, label in ((False, "torch NCHW"), (True, "torch channels_last")):
                runs[label] = _torch_segment(seg.torch(torch), xb, yb, last, seg.wrt_x, cl, torch)
        times = interleaved(runs, args.rounds, args.iters, args.warmup)
        rows.append(
            {"segment": seg.name, "input": [batch, *seg.in_shape]} | {k: stats(v) for k, v in times.items()}
        )
        print(f"{seg.name:>22}: " + "  ".join(f"{k}={statistics.median(v) * 1e3:.2f}" for k, v in times.items()),
              flush=True)  # fmt: skip
    times = interleaved(adam_contenders(batch, torch), args.rounds, args.iters, args.warmup)
    adam = {k: stats(v) for k, v in times.items()}
    adam["raw lax"] = adam["jcnn"]
    if "torch NCHW" in adam:
        adam["torch channels_last"] = adam["torch NCHW"]
    rows.append({"segment": "adam update", "input": ["all params"]} | adam)
    # The whole step, measured in the same run, to compare with the sum of its parts.
    steps = step_contenders("lenet", batch, torch, args.quick)
    cols = ("jcnn", "raw lax", "torch NCHW", "torch channels_last")
    whole = {k: steps[k].run for k in cols if k in steps}
    times = interleaved(whole, args.rounds, args.iters, args.warmup)
    step_row = {"segment": "whole step", "input": [batch, 28, 28, 1]} | {
        k: stats(v) for k, v in times.items()
    }
    return {"batch": batch, "rounds": args.rounds, "iters": args.iters, "rows": rows, "step": step_row}


def markdown_layers(res: dict) -> str:
    rows, step = res["rows"], res["step"]
    cols = [c for c in ("jcnn", "raw lax", "torch NCHW", "torch channels_last") if c in step]
    total = {c: sum(r[c]["median_ms"] for r in rows) for c in cols}
    lines = [
        f"### LeNet per-layer forward+backward (batch {res['batch']}, median ms, IQR in brackets)",
        "",
        "Each segment alone, jitted (jax) or eager (PyTorch), at the shapes it sees inside the"
        " model: its VJP with a fixed random output gradient (`output_gradient`) w.r.t. its"
        " parameters and its input (conv1: parameters only, as in a model), the last segment with the softmax cross-entropy; jcnn segments are"
        " `batched(...)` layers. 'share' is the segment's part of the jcnn sum.",
        "",
        "| segment | input | " + " | ".join(cols) + " | jcnn / torch best | share of jcnn |",
        "|---|---|" + "---|" * (len(cols) + 2),
    ]

    def cell(r, c):
        s = r.get(c)
        return f"{s['median_ms']:.2f} [{s['q1_ms']:.2f}-{s['q3_ms']:.2f}]" if s else "-"

    def ratio(r):
        t = [r[c]["median_ms"] for c in cols if c.startswith("torch") and c in r]
        return f"{r['jcnn']['median_ms'] / min(t):.2f}x" if t else "-"

    for r in rows:
        share = f"{100 * r['jcnn']['median_ms'] / total['jcnn']:.0f} %"
        inp = "x".join(map(str, r["input"]))
        lines.append(
            f"| {r['segment']} | {inp} | "
            + " | ".join(cell(r, c) for c in cols)
            + f" | {ratio(r)} | {share} |"
        )
    lines.append("| **sum of segments** | | " + " | ".join(f"{total[c]:.2f}" for c in cols) + " | | |")
    lines.append(
        f"| **whole step** | {'x'.join(map(str, step['input']))} | "
        + " | ".join(cell(step, c) for c in cols)
        + f" | {ratio(step)} | |"
    )
    lines += ["", "(jcnn / torch best is a time ratio: > 1 means jcnn is slower.)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# conv layers at their in-model shapes, every impl: the table `impl="auto"` is derived from
# --------------------------------------------------------------------------------------------


class ConvLayerCase(NamedTuple):
    name: str
    in_shape: tuple[int, ...]  # one example, channels last
    c_out: int
    kernel: int
    kw: dict  # strides / padding / groups / bias, as jcnn's Conv and torch's Conv2d take them
    wrt_x: bool  # a model's first conv never needs its input gradient


# Every conv shape of the steps' models and of the zoo nets this CPU trains (small_vgg, the record
# model), plus a MobileNet-v2 block at 28x28 (1x1 expand, depthwise 3x3, 1x1 project).
CONV_LAYERS = [
    ConvLayerCase("LeNet conv1 5x5 28x28x1->20", (28, 28, 1), 20, 5, {"padding": 2}, False),
    ConvLayerCase("LeNet conv2 5x5 14x14x20->50", (14, 14, 20), 50, 5, {"padding": 2}, True),
    ConvLayerCase("ResNet-8 stem 3x3 32x32x3->16", (32, 32, 3), 16, 3, {"padding": 1, "bias": False}, False),
    ConvLayerCase("ResNet-8 3x3 32x32x16->16", (32, 32, 16), 16, 3, {"padding": 1, "bias": False}, True),
    ConvLayerCase("ResNet-8 3x3/2 32x32x16->32", (32, 32, 16), 32, 3, {"strides": 2, "padding": 1, "bias": False}, True),
    ConvLayerCase("ResNet-8 1x1/2 32x32x16->32", (32, 32, 16), 32, 1, {"strides": 2, "bias": False}, True),
    ConvLayerCase("ResNet-8 3x3 16x16x32->32", (16, 16, 32), 32, 3, {"padding": 1, "bias": False}, True),
    ConvLayerCase("ResNet-8 3x3 8x8x64->64", (8, 8, 64), 64, 3, {"padding": 1, "bias": False}, True),
    ConvLayerCase("small_vgg 3x3 28x28x1->32", (28, 28, 1), 32, 3, {"padding": 1, "bias": False}, False),
    ConvLayerCase("small_vgg 3x3 28x28x32->32", (28, 28, 32), 32, 3, {"padding": 1, "bias": False}, True),
    ConvLayerCase("small_vgg 3x3 14x14x32->64", (14, 14, 32), 64, 3, {"padding": 1, "bias": False}, True),
    ConvLayerCase("small_vgg 3x3 7x7x128->128", (7, 7, 128), 128, 3, {"padding": 1, "bias": False}, True),
    ConvLayerCase("MobileNet 1x1 28x28x32->192", (28, 28, 32), 192, 1, {"bias": False}, True),
    ConvLayerCase("MobileNet dw 3x3 28x28x192", (28, 28, 192), 192, 3, {"padding": 1, "groups": 192, "bias": False}, True),
    ConvLayerCase("MobileNet 1x1 28x28x192->32", (28, 28, 192), 32, 1, {"bias": False}, True),
]  # fmt: skip

CONV_LAYER_IMPLS = ("xla", "im2col", "hybrid", "direct", "onednn", "auto")


def conv_layer_runs(case: ConvLayerCase, batch: int, torch, impls=CONV_LAYER_IMPLS) -> dict:
    """Blocking closures: one `batched(Conv)` layer's jitted fwd+bwd per impl, and PyTorch's."""
    rng = np.random.default_rng(2)
    xb = rng.normal(size=(batch, *case.in_shape)).astype(np.float32)
    x = jnp.asarray(xb)
    yb = np.zeros(batch, np.int32)
    runs = {}
    for impl in impls:
        net = L.batched(L.Conv(case.c_out, case.kernel, impl=impl, **case.kw))
        _, params, state = net.init(jax.random.key(0), (batch, *case.in_shape))
        apply = lambda p, x, net=net, state=state: net.apply(p, state, x, train=True)[0]  # noqa: E731
        runs[impl] = _jax_segment(apply, params, x, None, False, case.wrt_x)
    if torch is not None:
        kw = case.kw
        c_in = case.in_shape[-1]

        def module(t):
            return t.nn.Conv2d(c_in, case.c_out, case.kernel, stride=kw.get("strides", 1),
                               padding=kw.get("padding", 0), groups=kw.get("groups", 1),
                               bias=kw.get("bias", True))  # fmt: skip

        for cl, label in ((False, "torch NCHW"), (True, "torch channels_last")):
            runs[label] = _torch_segment(module(torch), xb, yb, False, case.wrt_x, cl, torch)
    return runs


def suite_convs(args, torch) -> dict:
    batch = args.batch
    cases = CONV_LAYERS[:2] if args.quick else CONV_LAYERS
    if args.cases:
        cases = [c for c in CONV_LAYERS if any(s in c.name for s in args.cases)]
    rows = []
    for case in cases:
        geo = jcnn.shapes.conv_geometry(
            jcnn.shapes.conv_spec(case.kernel, strides=case.kw.get("strides", 1),
                                  padding=case.kw.get("padding", 0), groups=case.kw.get("groups", 1)),
            (batch, *case.in_shape),
            (case.kernel, case.kernel, case.in_shape[-1] // case.kw.get("groups", 1), case.c_out),
        )  # fmt: skip
        times = interleaved(conv_layer_runs(case, batch, torch), args.rounds, args.iters, args.warmup)
        row = {"case": case.name, "input": [batch, *case.in_shape], "wrt_x": case.wrt_x}
        row["auto picks"] = jcnn.ops.auto_impl(geo, dtype=jnp.float32)
        row |= {k: stats(v) for k, v in times.items()}
        rows.append(row)
        print(f"{case.name:>30}: " + "  ".join(f"{k}={statistics.median(v) * 1e3:.2f}" for k, v in times.items()),
              flush=True)  # fmt: skip
    return {"batch": batch, "rounds": args.rounds, "iters": args.iters, "rows": rows}


def markdown_convs(res: dict) -> str:
    rows = res["rows"]
    cols = [c for c in (*CONV_LAYER_IMPLS, "torch NCHW", "torch channels_last") if c in rows[0]]
    impls = [c for c in cols if c in CONV_LAYER_IMPLS and c != "auto"]
    lines = [
        f"### Conv layers at their in-model shapes (batch {res['batch']}, fwd+bwd, median ms)",
        "",
        "One `batched(Conv(...))` layer per impl, jitted: its VJP with a fixed random output"
        " gradient w.r.t. its parameters and input (first layers: parameters only). 'fastest' is the fastest"
        " hand-picked impl; 'auto / fastest' the time `impl=\"auto\"` loses to it; 'auto / torch'"
        " the time ratio to PyTorch's faster layout (> 1: slower).",
        "",
        "| case | " + " | ".join(cols) + " | fastest | auto picks | auto / fastest | auto / torch |",
        "|---|" + "---|" * (len(cols) + 4),
    ]
    for r in rows:
        med = {c: r[c]["median_ms"] for c in cols}
        fastest = min(impls, key=med.get)
        torch_t = [med[c] for c in cols if c.startswith("torch")]
        cells = [r["case"]] + [f"{med[c]:.2f}" for c in cols] + [fastest, r["auto picks"]]
        cells.append(f"{med['auto'] / med[fastest]:.2f}")
        cells.append(f"{med['auto'] / min(torch_t):.2f}" if torch_t else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if all("torch NCHW" in r for r in rows):
        ratios = [
            min(r[c]["median_ms"] for c in cols if c.startswith("torch")) / r["auto"]["median_ms"]
            for r in rows
        ]
        lines += [
            "",
            f"auto vs PyTorch's best layout (speed): geomean {geomean(ratios):.2f}x, worst {min(ratios):.2f}x",
        ]
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# XLA CPU flags: one subprocess per setting, settings interleaved in rounds
# --------------------------------------------------------------------------------------------

# XLA in jaxlib 0.10.2 puts dots and convolutions into YNNPACK fusions by default on CPU (the
# compiled HLO shows `__ynn_fusion` custom fusions); `xla_cpu_experimental_ynn_fusion_type` takes
# the list of fusion types ("individual_dot", "individual_convolution", ...; "-x" removes one,
# empty = none). The oneDNN and XNNPACK fusion flags of the same build change nothing in the
# compiled HLO here, so they are not measured.
FLAG_SETS = {
    "default": "",
    "ynn-off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn-dots-only": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "ynn-convs-only": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot",
    "eigen-1-thread": "--xla_cpu_multi_thread_eigen=false",
}

# name, input (spatial..., c_in), kernel_size, c_out, conv kwargs, batch in the flags suite
FLAG_CONVS = [
    ("depthwise 3x3 56x56x64", (56, 56, 64), (3, 3), 64, {"padding": 1, "groups": 64}, 8),
    ("3-D 3x3x3 16^3x8->16", (16, 16, 16, 8), (3, 3, 3), 16, {"padding": 1}, 16),
]


def conv_fwdbwd(in_shape, ksize, c_out, kw, batch, impl):
    """A blocking closure: jitted forward+backward of one conv (cotangent given)."""
    rng = np.random.default_rng(0)
    c_in, groups = in_shape[-1], kw.get("groups", 1)
    x = jnp.asarray(rng.normal(size=(batch, *in_shape)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*ksize, c_in // groups, c_out)) / math.sqrt(c_in), jnp.float32)
    f = lambda x, k: jcnn.ops.conv(x, k, impl=impl, **kw)  # noqa: E731
    cot = jnp.asarray(rng.normal(size=jax.eval_shape(f, x, kernel).shape), jnp.float32)

    @jax.jit
    def g(x, k):
        return jax.vjp(f, x, k)[1](cot)

    return lambda: block(g(x, kernel))


def flags_child(args) -> dict:
    """Runs inside the subprocess of one flag setting: times every item once, interleaved."""
    # PyTorch does not read XLA_FLAGS, so it has no column here (and is not even imported).
    runs = {}
    for model in args.models:
        xb, yb = batch_data(model, args.batch)
        opt = optax.adam(1e-3)
        build = jcnn_lenet if model == "lenet" else jcnn_resnet8
        if not args.quick:  # the smoke run times the raw-lax step alone: the cheapest to compile
            runs[f"{MODELS[model].name} step jcnn"] = jcnn_step(build("auto"), xb, yb, opt).run
            runs[f"{MODELS[model].name} step jcnn impl=xla"] = jcnn_step(build("xla"), xb, yb, opt).run
        if model == "lenet":
            runs["LeNet step raw lax"] = lax_step(xb, yb, opt).run
    for name, in_shape, ksize, c_out, kw, batch in FLAG_CONVS[: 1 if args.quick else None]:
        batch = 2 if args.quick else batch
        for impl in ("auto",) if args.quick else ("auto", "xla"):
            runs[f"{name} b{batch} fwd+bwd {impl}"] = conv_fwdbwd(in_shape, ksize, c_out, kw, batch, impl)
    times = interleaved(runs, args.rounds, args.iters, args.warmup)
    return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "times": times}


def suite_flags(args, torch) -> dict:
    del torch
    names = args.flag_sets or (["default", "ynn-off"] if args.quick else list(FLAG_SETS))
    unknown = [n for n in names if n not in FLAG_SETS]
    if unknown:
        raise SystemExit(f"bench: unknown --flag-sets {unknown}; choose from {list(FLAG_SETS)}.")
    samples, seen = {n: {} for n in names}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.flag_rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                path = Path(tmp) / "child.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--flags-child", str(path)]
                cmd += ["--batch", str(args.batch), "--rounds", str(args.rounds), "--iters", str(args.iters)]
                cmd += ["--warmup", str(args.warmup), "--models", *args.models] + (
                    ["--quick"] if args.quick else []
                )
                env = dict(os.environ, XLA_FLAGS=FLAG_SETS[name])
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"bench: the flags child for {name!r} failed:\n{proc.stderr[-3000:]}")
                child = json.loads(path.read_text())
                seen[name] = child["xla_flags"]
                for item, ts in child["times"].items():
                    samples[name].setdefault(item, []).extend(ts)
                print(f"flags round {r + 1}: {name!r} done in {time.perf_counter() - t0:.0f} s", flush=True)
    items = list(samples[names[0]])
    table = {item: {n: stats(samples[n][item]) for n in names} for item in items}
    return {
        "settings": {n: FLAG_SETS[n] for n in names},
        "seen": seen,  # XLA_FLAGS as each child process read them
        "rounds": args.flag_rounds,
        "batch": args.batch,
        "table": table,
    }


def markdown_flags(res: dict) -> str:
    names = list(res["settings"])
    lines = [
        "### XLA CPU flags (median ms; time relative to the default setting in brackets)",
        "",
        f"One subprocess per setting, settings interleaved over {res['rounds']} rounds; steps at batch"
        f" {res['batch']}, convs at the batch in their name. Settings:",
        "",
    ]
    lines += [f"- {n}: `XLA_FLAGS={res['settings'][n] or '(none)'}`" for n in names]
    lines += ["", "| item | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for item, row in res["table"].items():
        base = row[names[0]]["median_ms"]
        cells = [f"{row[n]['median_ms']:.1f} ({row[n]['median_ms'] / base:.2f})" for n in names]
        lines.append(f"| {item} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# op-level conv suite
# --------------------------------------------------------------------------------------------

# name, input (spatial..., c_in), kernel_size, c_out, conv kwargs (int padding and strides)
CASES = [
    ("5x5 32x32x3->32", (32, 32, 3), (5, 5), 32, {}),
    ("3x3 32x32x32->64 p1", (32, 32, 32), (3, 3), 64, {"padding": 1}),
    ("3x3 16x16x64->128 s2", (16, 16, 64), (3, 3), 128, {"strides": 2, "padding": 1}),
    ("1x1 8x8x128->128", (8, 8, 128), (1, 1), 128, {}),
    ("LeNet conv1 28x28x1->20", (28, 28, 1), (5, 5), 20, {"padding": 2}),
    ("LeNet conv2 14x14x20->50", (14, 14, 20), (5, 5), 50, {"padding": 2}),
    ("depthwise 3x3 56x56x64", (56, 56, 64), (3, 3), 64, {"padding": 1, "groups": 64}),
    ("1-D k9 256x32->64", (256, 32), (9,), 64, {"padding": 4}),
    ("3-D 3x3x3 16^3x8->16", (16, 16, 16, 8), (3, 3, 3), 16, {"padding": 1}),
]


def _raw_lax_conv(x, kernel, kw):
    d = kernel.ndim - 2
    spatial = tuple(range(1, d + 1))
    dn = lax.ConvDimensionNumbers((0, d + 1) + spatial, (d + 1, d) + tuple(range(d)), (0, d + 1) + spatial)
    p, s = kw.get("padding", 0), kw.get("strides", 1)
    return lax.conv_general_dilated(
        x, kernel, (s,) * d, ((p, p),) * d, dimension_numbers=dn, feature_group_count=kw.get("groups", 1)
    )


def bench_conv_case(name, in_shape, ksize, c_out, kw, batch, reps, impls, torch, dtype=jnp.float32) -> dict:
    rng = np.random.default_rng(0)
    groups = kw.get("groups", 1)
    c_in = in_shape[-1]
    x = jnp.asarray(rng.normal(size=(batch,) + in_shape), dtype)
    kernel = jnp.asarray(rng.normal(size=ksize + (c_in // groups, c_out)) / math.sqrt(c_in), dtype)
    out_shape = jax.eval_shape(lambda x, k: _raw_lax_conv(x, k, kw), x, kernel).shape
    flops = 2 * math.prod(out_shape) * math.prod(ksize) * (c_in // groups)
    cot = jnp.asarray(rng.normal(size=out_shape), dtype)
    row = {"case": name, "batch": batch, "gflop": flops / 1e9, "fwd": {}, "fwdbwd": {}}

    def vjp_of(f):
        # The output as well as both gradients, as PyTorch's forward + backward computes them:
        # returning only the gradients lets XLA drop the forward conv (a linear op's backward
        # does not need its output); before session 5 this column was measured that way.
        def fwd_bwd(x, k):
            y, pullback = jax.vjp(f, x, k)
            return y, pullback(cot)

        return jax.jit(fwd_bwd)

    fns = {"lax": lambda x, k: _raw_lax_conv(x, k, kw)}
    for impl in impls:
        fns[impl] = lambda x, k, impl=impl: jcnn.ops.conv(x, k, impl=impl, **kw)

    def blocking(f):
        return lambda: block(f(x, kernel))

    fwd = {label: blocking(jax.jit(f)) for label, f in fns.items()}
    bwd = {label: blocking(vjp_of(f)) for label, f in fns.items()}

    if torch is not None and dtype == jnp.float32:
        import torch.nn.functional as F

        d = len(ksize)
        tconv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
        perm_x = (0, d + 1) + tuple(range(1, d + 1))
        device = torch_device(torch)
        xt = torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), perm_x))).to(device)
        kt = torch.from_numpy(
            np.ascontiguousarray(np.transpose(np.asarray(kernel), (d + 1, d) + tuple(range(d))))
        ).to(device)
        tkw = {"stride": kw.get("strides", 1), "padding": kw.get("padding", 0), "groups": groups}
        gt = torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(cot), perm_x))).to(device)
        xr, kr = xt.clone().requires_grad_(True), kt.clone().requires_grad_(True)

        def tfwd():
            with torch.no_grad():
                tconv(xt, kt, **tkw)
            torch_sync(torch, device)

        def tbwd():
            xr.grad = kr.grad = None
            tconv(xr, kr, **tkw).backward(gt)
            torch_sync(torch, device)

        fwd["torch"], bwd["torch"] = tfwd, tbwd
        if d in (2, 3):  # PyTorch's other layout, channels_last(_3d): often its faster one on CPU
            cl = torch.channels_last if d == 2 else torch.channels_last_3d
            xc, gc = xt.contiguous(memory_format=cl), gt.contiguous(memory_format=cl)
            kc = kt.contiguous(memory_format=cl)
            xcr, kcr = xc.clone().requires_grad_(True), kc.clone().requires_grad_(True)

            def tfwd_cl():
                with torch.no_grad():
                    tconv(xc, kc, **tkw)
                torch_sync(torch, device)

            def tbwd_cl():
                xcr.grad = kcr.grad = None
                tconv(xcr, kcr, **tkw).backward(gc)
                torch_sync(torch, device)

            fwd["torch CL"], bwd["torch CL"] = tfwd_cl, tbwd_cl
    for mode, runs in (("fwd", fwd), ("fwdbwd", bwd)):
        times = interleaved(runs, rounds=reps, iters=1, warmup=2)
        row[mode] = {k: statistics.median(v) for k, v in times.items()}
        if "torch" in row[mode]:
            row[mode]["torch best"] = min(v for k, v in row[mode].items() if k.startswith("torch"))
    return row


def markdown_ops(results: dict) -> str:
    lines = [f"Matmul ceiling (1024x1024 f32): **{results['matmul_gflops']:.1f} GFLOP/s**.", ""]
    cols = results["columns"]
    for mode, title in (("fwd", "forward"), ("fwdbwd", "forward + backward")):
        lines += [f"### Convolution, {title} (median ms; GFLOP/s of the best jcnn impl)", ""]
        head = ["case", "batch"] + cols + ["best jcnn GFLOP/s", "default / torch"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in results["conv"]:
            t = row[mode]
            best = min(t[c] for c in cols if c in JCNN_IMPLS)
            mult = 3 if mode == "fwdbwd" else 1
            ratio = f"{t['torch best'] / t['auto']:.2f}x" if "torch" in t and "auto" in t else "-"
            cells = [row["case"], str(row["batch"])]
            cells += [f"{t[c] * 1e3:.2f}" if c in t else "-" for c in cols]
            cells += [f"{mult * row['gflop'] / best:.1f}", ratio]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    s = results.get("summary", {})
    if s:
        lines += ["### Targets", ""] + [f"- {k}: {v}" for k, v in s.items()] + [""]
    return "\n".join(lines)


def summarize_ops(results: dict) -> dict:
    rows = results["conv"]
    out = {}
    if rows and "torch" in rows[0]["fwdbwd"] and "auto" in rows[0]["fwdbwd"]:
        r = [row["fwdbwd"]["torch best"] / row["fwdbwd"]["auto"] for row in rows]
        out["default (auto) fwd+bwd vs torch's best layout, geomean"] = (
            f"{geomean(r):.2f}x (min {min(r):.2f}x)"
        )
    for impl in ("direct", "im2col", "hybrid", "onednn"):
        if rows and impl in rows[0]["fwdbwd"] and "xla" in rows[0]["fwdbwd"]:
            wins = sum(row["fwdbwd"][impl] < row["fwdbwd"]["xla"] for row in rows)
            out[f"{impl} faster than xla fwd+bwd"] = f"{wins}/{len(rows)} cases"
    if rows and "xla" in rows[0]["fwd"]:
        over = [row[m]["xla"] / row[m]["lax"] for row in rows for m in ("fwd", "fwdbwd")]
        out["impl='xla' time / raw lax time, geomean (fwd and fwd+bwd)"] = f"{geomean(over):.3f}"
    return out


def suite_ops(args, torch) -> dict:
    reps = args.reps or (2 if args.quick else 10)
    batches = args.batches or ([2] if args.quick else [64, 128])
    cases = CASES[:1] if args.quick else CASES
    if args.cases:
        cases = [c for c in CASES if any(s in c[0] for s in args.cases)]
    impls = args.impls or (["auto", "xla"] if args.quick else list(JCNN_IMPLS))
    results = {"reps": reps, "dtype": args.dtype, "matmul_gflops": matmul_ceiling()}
    rows = []
    for case in cases:
        for b in batches:
            row = bench_conv_case(
                *case, batch=b, reps=reps, impls=impls, torch=torch, dtype=jnp.dtype(args.dtype)
            )
            rows.append(row)
            fmt = "  ".join(f"{k}={v * 1e3:.2f}" for k, v in row["fwdbwd"].items())
            print(f"{row['case']:>28} b={b:<4} fwd+bwd ms: {fmt}", flush=True)
    results["conv"] = rows
    results["columns"] = ["lax"] + list(impls) + (["torch", "torch CL"] if torch is not None else [])
    results["summary"] = summarize_ops(results)
    return results


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

SUITES = {
    "steps": (suite_steps, markdown_steps),
    "layers": (suite_layers, markdown_layers),
    "flags": (suite_flags, markdown_flags),
    "ops": (suite_ops, markdown_ops),
    "convs": (suite_convs, markdown_convs),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--suite",
        nargs="+",
        default=["steps", "layers"],
        choices=[*SUITES, "all"],
        help="what to run (default: steps layers; all = steps layers convs flags ops)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: batch 8, 2 rounds, fewer items")
    p.add_argument("--out", default="experiments/bench_results", help="folder for <suite>.json/.md")
    p.add_argument(
        "--xla-flags",
        default=None,
        help="rerun the bench in a subprocess with XLA_FLAGS=VALUE (opt-in); write --xla-flags=VALUE",
    )
    g = p.add_argument_group("steps, layers and flags")
    g.add_argument("--batch", type=int, default=None, help="batch size (default 128; quick 8)")
    g.add_argument("--models", nargs="+", default=None, choices=list(MODELS), help="default: lenet resnet8")
    g.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; quick 2)")
    g.add_argument("--iters", type=int, default=None, help="timed calls per contender per round (default 5)")
    g.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; quick 1)")
    g.add_argument(
        "--flag-sets", nargs="+", default=None, help=f"flags suite settings, from {list(FLAG_SETS)}"
    )
    g.add_argument("--flag-rounds", type=int, default=None, help="subprocess rounds per setting (default 2)")
    g.add_argument("--torch-threads", type=int, default=None, help="default: the cores this process may use")
    g = p.add_argument_group("ops")
    g.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (default 10)")
    g.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 64 128)")
    g.add_argument("--cases", nargs="+", default=None, help="substrings selecting conv cases")
    g.add_argument("--impls", nargs="+", default=None, choices=JCNN_IMPLS)
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--flags-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.batch = args.batch or (8 if q else 128)
    args.models = args.models or (["lenet"] if q else ["lenet", "resnet8"])
    args.rounds = args.rounds or (2 if q else 7)
    args.iters = args.iters or (1 if q else 5)
    args.warmup = args.warmup or (1 if q else 3)
    args.flag_rounds = args.flag_rounds or (1 if q else 2)
    if "all" in args.suite:
        args.suite = ["steps", "layers", "convs", "flags", "ops"]
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.xla_flags is not None and os.environ.get("XLA_FLAGS") != args.xla_flags:
        # Flags are read when jax starts its backend, once per process: set them for a fresh one.
        env = dict(os.environ, XLA_FLAGS=args.xla_flags)
        return subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], env=env).returncode
    if args.flags_child:
        Path(args.flags_child).write_text(json.dumps(flags_child(args)))
        return 0
    torch = get_torch(args.torch_threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for suite in args.suite:
        run, markdown = SUITES[suite]
        info = machine_info()
        print(machine_line(info), flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        res = run(args, torch)
        res["cpu_s"] = round(time.process_time() - c0, 1)  # this process only (not flags children)
        res["machine"] = info | {"loadavg_at_end": [round(v, 2) for v in os.getloadavg()]}
        res["command"] = "python experiments/bench.py " + " ".join(argv)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        md = "\n".join([f"Command: `{res['command']}`", "", machine_line(info), "", markdown(res)])
        (out / f"{suite}.json").write_text(json.dumps(res, indent=2))
        (out / f"{suite}.md").write_text(md)
        print()
        print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
