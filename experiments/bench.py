"""Benchmark jcnn's convolutions and LeNet train step against raw lax, PyTorch and Flax.

Every number is a median over repetitions after warm-up, measured in the same run on the same
machine, so the ratios are what to read. Writes ``bench.json`` and ``bench.md`` into ``--out``.

    python experiments/bench.py            # full suite (~10 minutes on 2 CPU cores)
    python experiments/bench.py --quick    # a smoke run (~1 minute)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jcnn
from jcnn import shapes
from jcnn.ops.conv import IMPLS

try:
    import torch
except ImportError:  # PyTorch is optional: its columns are left empty
    torch = None

# name, input (spatial..., c_in), kernel_size, c_out, conv kwargs
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


def median_time(fn, reps: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds; ``fn`` must block until its result is ready."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def block(tree):
    return jax.block_until_ready(tree)


def machine_info() -> dict:
    info = {
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "jcnn": jcnn.__version__,
    }
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    try:
        import flax

        info["flax"] = flax.__version__
    except ImportError:
        pass
    return info


def matmul_ceiling(reps: int, n: int = 1024) -> float:
    """GFLOP/s of one large float32 matmul: this machine's practical ceiling."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    t = median_time(lambda: block(f(a)), reps)
    return 2 * n**3 / t / 1e9


def _raw_lax(x, kernel, geo: shapes.ConvGeometry):
    d = len(geo.kernel_size)
    spatial = tuple(range(1, d + 1))
    dn = lax.ConvDimensionNumbers((0, d + 1) + spatial, (d + 1, d) + tuple(range(d)), (0, d + 1) + spatial)
    return lax.conv_general_dilated(
        x,
        kernel,
        geo.strides,
        geo.padding,
        rhs_dilation=geo.dilation,
        dimension_numbers=dn,
        feature_group_count=geo.groups,
    )


def bench_conv_case(name, in_shape, ksize, c_out, kw, batch, reps, impls, dtype=jnp.float32) -> dict:
    rng = np.random.default_rng(0)
    groups = kw.get("groups", 1)
    c_in = in_shape[-1]
    x = jnp.asarray(rng.normal(size=(batch,) + in_shape), dtype)
    kernel = jnp.asarray(rng.normal(size=ksize + (c_in // groups, c_out)) / math.sqrt(c_in), dtype)
    geo = shapes.conv_geometry(x.shape, kernel.shape, **kw)
    flops = batch * shapes.conv_flops(geo.out_spatial, ksize, c_in, c_out, groups=groups, bias=False)
    cot = jnp.asarray(rng.normal(size=geo.out_shape), dtype)
    row = {"case": name, "batch": batch, "gflop": flops / 1e9, "fwd": {}, "fwdbwd": {}}

    def add(label, fwd, fwdbwd):
        tf = median_time(lambda: block(fwd(x, kernel)), reps)
        tb = median_time(lambda: block(fwdbwd(x, kernel)), reps)
        row["fwd"][label] = tf
        row["fwdbwd"][label] = tb

    def vjp_of(f):
        def g(x, kernel):
            y, pull = jax.vjp(f, x, kernel)
            return pull(cot)

        return jax.jit(g)

    raw = lambda x, k: _raw_lax(x, k, geo)  # noqa: E731
    add("lax", jax.jit(raw), vjp_of(raw))
    for impl in impls:
        f = lambda x, k, impl=impl: jcnn.ops.conv(x, k, impl=impl, **kw)  # noqa: E731
        add(impl, jax.jit(f), vjp_of(f))

    if torch is not None and dtype == jnp.float32:
        import torch.nn.functional as F

        d = len(ksize)
        tconv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
        perm_x = (0, d + 1) + tuple(range(1, d + 1))
        xt = torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), perm_x)))
        kt = torch.from_numpy(
            np.ascontiguousarray(np.transpose(np.asarray(kernel), (d + 1, d) + tuple(range(d))))
        )
        pad = kw.get("padding", 0)
        tkw = {"stride": kw.get("strides", 1), "padding": pad, "groups": groups}
        gt = torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(cot), perm_x)))

        def tfwd():
            with torch.no_grad():
                tconv(xt, kt, **tkw)

        xr, kr = xt.clone().requires_grad_(True), kt.clone().requires_grad_(True)

        def tbwd():
            xr.grad = kr.grad = None
            tconv(xr, kr, **tkw).backward(gt)

        row["fwd"]["torch"] = median_time(tfwd, reps)
        row["fwdbwd"]["torch"] = median_time(tbwd, reps)
    return row


def lenet_images_per_sec(batch: int, reps: int) -> dict:
    """Images/s of one LeNet train step (adam) for jcnn, Flax linen and PyTorch eager."""
    import optax

    from jcnn import layers as L

    rng = np.random.default_rng(0)
    xb = jnp.asarray(rng.random((batch, 28, 28, 1)), jnp.float32)
    yb = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    opt = optax.adam(1e-3)
    out = {}

    model = L.serial(
        L.Conv(20, 5, padding=2),
        L.Relu(),
        L.MaxPool(2),
        L.Conv(50, 5, padding=2),
        L.Relu(),
        L.MaxPool(2),
        L.Flatten(),
        L.Dense(500),
        L.Relu(),
        L.Dense(10),
    )
    net = L.batched(model)
    _, params, state = net.init(jax.random.key(0), (batch, 28, 28, 1))
    opt_state = opt.init(params)

    def loss_fn(params, state, x, y):
        logits, state = net.apply(params, state, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    @jax.jit
    def step(params, state, opt_state, x, y):
        (loss, state), g = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), state, opt_state, loss

    carry = [params, state, opt_state]

    def run_jcnn():
        carry[:3] = step(*carry, xb, yb)[:3]
        block(carry[0])

    out["jcnn"] = batch / median_time(run_jcnn, reps)

    try:
        import flax.linen as nn

        class FlaxLeNet(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.relu(nn.Conv(20, (5, 5), padding=2)(x))
                x = nn.max_pool(x, (2, 2), (2, 2))
                x = nn.relu(nn.Conv(50, (5, 5), padding=2)(x))
                x = nn.max_pool(x, (2, 2), (2, 2))
                x = x.reshape((x.shape[0], -1))
                return nn.Dense(10)(nn.relu(nn.Dense(500)(x)))

        fm = FlaxLeNet()
        fparams = fm.init(jax.random.key(0), xb)
        fopt = opt.init(fparams)

        @jax.jit
        def fstep(p, o, x, y):
            def lf(p):
                return optax.softmax_cross_entropy_with_integer_labels(fm.apply(p, x), y).mean()

            loss, g = jax.value_and_grad(lf)(p)
            upd, o = opt.update(g, o, p)
            return optax.apply_updates(p, upd), o, loss

        fc = [fparams, fopt]

        def run_flax():
            fc[:2] = fstep(*fc, xb, yb)[:2]
            block(fc[0])

        out["flax"] = batch / median_time(run_flax, reps)
    except ImportError:
        pass

    if torch is not None:
        tn = torch.nn
        tm = tn.Sequential(
            tn.Conv2d(1, 20, 5, padding=2),
            tn.ReLU(),
            tn.MaxPool2d(2),
            tn.Conv2d(20, 50, 5, padding=2),
            tn.ReLU(),
            tn.MaxPool2d(2),
            tn.Flatten(),
            tn.Linear(50 * 7 * 7, 500),
            tn.ReLU(),
            tn.Linear(500, 10),
        )
        topt = torch.optim.Adam(tm.parameters(), 1e-3)
        xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(xb), -1, 1)))
        yt = torch.from_numpy(np.asarray(yb).astype(np.int64))

        def run_torch():
            topt.zero_grad()
            tn.functional.cross_entropy(tm(xt), yt).backward()
            topt.step()

        out["torch"] = batch / median_time(run_torch, reps)
    return out


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [
        f"Machine: {info['cpu_cores']} cores, {info['processor']}, backend `{info['backend']}`"
        f" ({info['device']}); jax {info['jax']}, torch {info.get('torch', '-')}"
        f" ({info.get('torch_threads', '-')} threads), flax {info.get('flax', '-')}.",
        "",
        f"Matmul ceiling (1024x1024 f32): **{results['matmul_gflops']:.1f} GFLOP/s**.",
        "",
    ]
    cols = results["columns"]
    for mode, title in (("fwd", "forward"), ("fwdbwd", "forward + backward")):
        lines += [f"### Convolution, {title} (median ms; GFLOP/s of the best jcnn impl)", ""]
        head = ["case", "batch"] + cols + ["best jcnn GFLOP/s", "default / torch"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in results["conv"]:
            t = row[mode]
            jcnn_times = [t[c] for c in cols if c in IMPLS or c == "auto"]
            best = min(jcnn_times)
            mult = 3 if mode == "fwdbwd" else 1
            ratio = f"{t['torch'] / t['auto']:.2f}x" if "torch" in t and "auto" in t else "-"
            cells = [row["case"], str(row["batch"])]
            cells += [f"{t[c] * 1e3:.2f}" if c in t else "-" for c in cols]
            cells += [f"{mult * row['gflop'] / best:.1f}", ratio]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    s = results.get("summary", {})
    if s:
        lines += ["### Targets", ""]
        for k, v in s.items():
            lines.append(f"- {k}: {v}")
        lines.append("")
    if results.get("lenet"):
        lines += [f"### LeNet train step (adam, batch {results['lenet_batch']}), images/s", ""]
        lines += ["| " + " | ".join(results["lenet"]) + " |", "|" + "---|" * len(results["lenet"])]
        lines.append("| " + " | ".join(f"{v:,.0f}" for v in results["lenet"].values()) + " |")
        lines.append("")
    return "\n".join(lines)


def summarize(results: dict) -> dict:
    rows = results["conv"]
    out = {}
    if rows and "torch" in rows[0]["fwdbwd"]:
        r = [row["fwdbwd"]["torch"] / row["fwdbwd"]["auto"] for row in rows]
        out["default (auto) fwd+bwd vs torch, geomean"] = f"{geomean(r):.2f}x (min {min(r):.2f}x)"
    for impl in ("direct", "im2col"):
        if rows and impl in rows[0]["fwdbwd"]:
            wins = sum(row["fwdbwd"][impl] < row["fwdbwd"]["xla"] for row in rows)
            out[f"{impl} faster than xla fwd+bwd"] = f"{wins}/{len(rows)} cases"
    over = [row["fwdbwd"]["xla"] / row["fwdbwd"]["lax"] for row in rows]
    over += [row["fwd"]["xla"] / row["fwd"]["lax"] for row in rows]
    out["impl='xla' time / raw lax time, geomean (fwd and fwd+bwd)"] = f"{geomean(over):.3f}"
    if results.get("lenet"):
        le = results["lenet"]
        for k in ("torch", "flax"):
            if k in le:
                out[f"LeNet step jcnn / {k}"] = f"{le['jcnn'] / le[k]:.2f}x"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few cases, batch 8, few repetitions")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (default 10)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 64 128)")
    p.add_argument("--cases", nargs="+", default=None, help="substrings selecting conv cases")
    p.add_argument("--impls", nargs="+", default=["auto", "xla", "direct", "im2col"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--no-lenet", action="store_true")
    p.add_argument("--out", default="experiments/bench_results")
    args = p.parse_args(argv)

    reps = args.reps or (3 if args.quick else 10)
    batches = args.batches or ([8] if args.quick else [64, 128])
    cases = CASES[:3] if args.quick else CASES
    if args.cases:
        cases = [c for c in CASES if any(s in c[0] for s in args.cases)]
    if torch is not None:
        torch.set_num_threads(os.cpu_count())
    dtype = jnp.dtype(args.dtype)

    results = {"machine": machine_info(), "reps": reps, "dtype": args.dtype}
    results["matmul_gflops"] = matmul_ceiling(reps)
    print(f"matmul ceiling: {results['matmul_gflops']:.1f} GFLOP/s", flush=True)
    rows = []
    for case in cases:
        for b in batches:
            row = bench_conv_case(*case, batch=b, reps=reps, impls=args.impls, dtype=dtype)
            rows.append(row)
            fmt = "  ".join(f"{k}={v * 1e3:.2f}" for k, v in row["fwdbwd"].items())
            print(f"{row['case']:>28} b={b:<4} fwd+bwd ms: {fmt}", flush=True)
    results["conv"] = rows
    results["columns"] = ["lax"] + list(args.impls) + (["torch"] if torch is not None else [])
    if not args.no_lenet:
        results["lenet_batch"] = 32 if args.quick else 128
        results["lenet"] = lenet_images_per_sec(results["lenet_batch"], reps)
        print("LeNet images/s:", {k: round(v) for k, v in results["lenet"].items()}, flush=True)
    results["summary"] = summarize(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    md = markdown(results)
    (out / "bench.md").write_text(md)
    print()
    print(md)


if __name__ == "__main__":
    main()
