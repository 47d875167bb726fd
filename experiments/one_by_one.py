"""1x1 convolutions (the seed's point 8): a 1x1 conv is a Dense layer applied at every pixel, it
changes the number of channels without touching space, and a bottleneck (1x1 down, 3x3, 1x1 up)
cuts parameters and FLOPs by the factor `jcnn.summary` reports.

Real data: scikit-learn's ``china.jpg``. Checks:

1. per-pixel Dense: RGB -> YCbCr is a 1x1 conv with a fixed 3x3 matrix; and on a real 56x56x64
   feature map a learned-style 64 -> 32 1x1 conv. `jcnn.ops.conv`, `jcnn.layers.Conv(32, 1)`,
   `jcnn.layers.Dense(32)` (which acts on the last axis) and a NumPy matmul over the pixels agree.
2. no spatial mixing: shuffling the pixels commutes with a 1x1 conv (not with a 3x3 one), a
   change at one input pixel changes exactly one output pixel, and the summary's receptive
   field is 1x1.
3. bottleneck: ResNet's 56x56x256 block (3x3 256->256 vs 1x1 256->w, 3x3 w->w, 1x1 w->256)
   for several widths w, and GoogLeNet's 5x5 branch; params and FLOPs from `jcnn.summary`,
   and the measured forward time of both on this CPU.

    python experiments/one_by_one.py            # ~1 min
    python experiments/one_by_one.py --quick    # smaller timing batch, 3 widths

Writes ``one_by_one.json`` and ``one_by_one.png`` into ``--out`` (default
``runs/one_by_one``); ``--figures DIR`` also copies the PNG there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jcnn import ops
from jcnn.layers import Conv, Dense, Relu, batched, serial
from jcnn.summary import summary

NAME = "one_by_one"
# ITU-R BT.601 RGB -> YCbCr (full range), as a (c_in, c_out) matrix and a bias: a 1x1 conv.
YCBCR = np.array(
    [[0.299, -0.168736, 0.5], [0.587, -0.331264, -0.418688], [0.114, 0.5, -0.081312]], np.float32
)
YCBCR_BIAS = np.array([0.0, 0.5, 0.5], np.float32)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the random filters")
    p.add_argument("--out", default=os.path.join("runs", NAME), help="folder for the JSON and PNG")
    p.add_argument("--figures", default=None, help="also copy the PNG here (RESULTS.md: experiments/figures)")
    p.add_argument("--quick", action="store_true", help="batch 1 and 3 widths in the timing")
    p.add_argument("--batch", type=int, default=4, help="images per timed forward pass")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    return p.parse_args(argv)


def photo() -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return load_sample_image("china.jpg").astype(np.float32) / 255.0


def max_diff(a, b) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    img = photo()
    out: dict = {}

    # 1. A 1x1 conv is a Dense applied at every pixel.
    print("1. a 1x1 conv is a Dense layer applied at every pixel (china.jpg, float32)")
    x = jnp.asarray(img)
    kernel = jnp.asarray(YCBCR.reshape(1, 1, 3, 3))
    y_conv = ops.conv(x, kernel, jnp.asarray(YCBCR_BIAS))
    y_dense = Dense(3).apply({"kernel": jnp.asarray(YCBCR), "bias": jnp.asarray(YCBCR_BIAS)}, (), x)[0]
    y_numpy = (img.reshape(-1, 3).astype(np.float64) @ YCBCR + YCBCR_BIAS).reshape(img.shape)
    out["ycbcr"] = {"conv_vs_dense": max_diff(y_conv, y_dense), "conv_vs_numpy64": max_diff(y_conv, y_numpy)}
    print(f"   RGB -> YCbCr on {img.shape}: conv vs Dense {out['ycbcr']['conv_vs_dense']:.1e},"
          f" conv vs NumPy float64 matmul {out['ycbcr']['conv_vs_numpy64']:.1e}")  # fmt: skip

    crop = jnp.asarray(img[150:206, 250:306])  # 56x56x3
    w3 = rng.standard_normal((3, 3, 3, 64), np.float32) / math.sqrt(27)
    feat = jax.nn.relu(ops.conv(crop, jnp.asarray(w3), padding=1))  # a real 56x56x64 feature map
    conv11 = Conv(32, 1)
    _, p11, _ = conv11.init(jax.random.key(args.seed), feat.shape)
    y_layer = conv11.apply(p11, (), feat)[0]
    k = p11["kernel"].reshape(64, 32)
    y_dense = Dense(32).apply({"kernel": k, "bias": p11["bias"]}, (), feat)[0]
    y_mat = np.asarray(feat, np.float64).reshape(-1, 64) @ np.asarray(k, np.float64) + np.asarray(p11["bias"])
    y_mat = y_mat.reshape(56, 56, 32)
    out["feature_map"] = {
        "input_shape": list(feat.shape),
        "output_shape": list(y_layer.shape),
        "conv_vs_dense": max_diff(y_layer, y_dense),
        "conv_vs_numpy64": max_diff(y_layer, y_mat),
        "output_scale": float(jnp.max(jnp.abs(y_layer))),
    }
    f = out["feature_map"]
    print(f"   Conv(32, 1) on a real {tuple(feat.shape)} feature map -> {tuple(y_layer.shape)}: vs Dense(32)"
          f" {f['conv_vs_dense']:.1e}, vs NumPy float64 {f['conv_vs_numpy64']:.1e} (outputs up to {f['output_scale']:.1f})")  # fmt: skip

    # 2. It does not touch space.
    print("2. it changes channels, not space")
    perm = rng.permutation(56 * 56)
    inv = np.argsort(perm)

    def shuffled(a):
        return a.reshape(56 * 56, -1)[perm].reshape(a.shape)

    def unshuffled(a):
        return a.reshape(56 * 56, -1)[inv].reshape(a.shape)

    conv33 = Conv(32, 3, padding=1)
    _, p33, _ = conv33.init(jax.random.key(args.seed + 1), feat.shape)
    shuffle_11 = max_diff(unshuffled(conv11.apply(p11, (), shuffled(feat))[0]), y_layer)
    y33 = conv33.apply(p33, (), feat)[0]
    shuffle_33 = max_diff(unshuffled(conv33.apply(p33, (), shuffled(feat))[0]), y33)
    bump = feat.at[20, 30, :].add(1.0)
    changed_11 = int(jnp.sum(jnp.any(conv11.apply(p11, (), bump)[0] != y_layer, axis=-1)))
    changed_33 = int(jnp.sum(jnp.any(conv33.apply(p33, (), bump)[0] != y33, axis=-1)))
    rf11 = summary(conv11, tuple(feat.shape)).rows[0]["receptive_field"]
    rf33 = summary(conv33, tuple(feat.shape)).rows[0]["receptive_field"]
    out["space"] = {
        "shuffle_then_unshuffle_1x1": shuffle_11,
        "shuffle_then_unshuffle_3x3": shuffle_33,
        "pixels_changed_by_one_pixel_1x1": changed_11,
        "pixels_changed_by_one_pixel_3x3": changed_33,
        "receptive_field_1x1": rf11[0]["size"],
        "receptive_field_3x3": rf33[0]["size"],
    }
    print(f"   shape {tuple(feat.shape)} -> {tuple(y_layer.shape)}: spatial dims kept, 64 -> 32 channels")
    print(
        f"   shuffle pixels, conv, unshuffle: 1x1 differs by {shuffle_11:.1e}; a 3x3 conv by {shuffle_33:.2f}"
    )
    print(f"   changing one input pixel changes {changed_11} output pixel(s) (1x1) vs {changed_33} (3x3)")
    print(
        f"   receptive field (jcnn.summary): {rf11[0]['size']}x{rf11[1]['size']} vs {rf33[0]['size']}x{rf33[1]['size']}"
    )

    # 3. Bottlenecks.
    print("3. bottlenecks: params and FLOPs per image from jcnn.summary; forward time measured here")
    widths = (16, 64, 256) if args.quick else (16, 32, 64, 128, 256)
    batch = 1 if args.quick else args.batch
    reps = 1 if args.quick else args.reps
    shape = (56, 56, 256)
    plain = Conv(256, 3, padding=1)
    cases = [("plain 3x3 256->256", plain)]
    for w in widths:
        cases.append((f"1x1 256->{w}, 3x3, 1x1 ->256", bottleneck(256, w)))
    rows = []
    xb = jnp.asarray(rng.random((batch,) + shape, np.float32))
    for label, layer in cases:
        t = summary(layer, shape).totals
        seconds = time_forward(layer, xb, reps, args.seed)
        rows.append({"block": label, "params": t["params"], "flops": t["flops"], "seconds": seconds})
    base = rows[0]
    print(
        f"   {'block on 56x56x256':<32} {'params':>9} {'FLOPs':>15} {'params x':>9} {'FLOPs x':>8} {'time':>8} {'time x':>7}"
    )
    for r in rows:
        r["params_factor"] = base["params"] / r["params"]
        r["flops_factor"] = base["flops"] / r["flops"]
        r["time_factor"] = base["seconds"] / r["seconds"]
        print(f"   {r['block']:<32} {r['params']:>9,} {r['flops']:>15,} {r['params_factor']:>8.2f}x"
              f" {r['flops_factor']:>7.2f}x {r['seconds'] * 1e3:>6.0f}ms {r['time_factor']:>6.2f}x")  # fmt: skip
    out["resnet"] = {"input_shape": list(shape), "batch": batch, "reps": reps, "rows": rows}

    # GoogLeNet (Szegedy et al. 2014) inception 3a, 5x5 branch: 28x28x192 -> 32, reduced to 16 first.
    g_shape = (28, 28, 192)
    g_plain = summary(Conv(32, 5, padding=2), g_shape).totals
    g_red = summary(serial(Conv(16, 1), Relu(), Conv(32, 5, padding=2)), g_shape).totals
    out["googlenet_5x5"] = {
        "plain": {"params": g_plain["params"], "flops": g_plain["flops"]},
        "reduced": {"params": g_red["params"], "flops": g_red["flops"]},
        "params_factor": g_plain["params"] / g_red["params"],
        "flops_factor": g_plain["flops"] / g_red["flops"],
    }
    g = out["googlenet_5x5"]
    print(f"   GoogLeNet 3a 5x5 branch on 28x28x192: 5x5 ->32 {g_plain['params']:,} params {g_plain['flops']:,} FLOPs;"
          f" 1x1 ->16 then 5x5 ->32 {g_red['params']:,} params {g_red['flops']:,} FLOPs:"
          f" {g['params_factor']:.2f}x fewer params, {g['flops_factor']:.2f}x fewer FLOPs")  # fmt: skip

    elapsed = time.perf_counter() - t_start
    out["elapsed_s"] = elapsed
    out["args"] = vars(args)
    png = os.path.join(args.out, f"{NAME}.png")
    plot(png, img, np.asarray(y_conv), rows)
    path = os.path.join(args.out, f"{NAME}.json")
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        shutil.copy(png, args.figures)
    print(f"wrote {path} and {png} ({elapsed:.0f}s)")
    return 0


def bottleneck(channels: int, width: int):
    """ResNet's bottleneck body (He et al. 2016), without the shortcut and normalisation."""
    return serial(Conv(width, 1), Relu(), Conv(width, 3, padding=1), Relu(), Conv(channels, 1))


def time_forward(layer, x, reps: int, seed: int) -> float:
    """Median seconds of one jitted forward pass over the batch ``x``."""
    _, params, state = layer.init(jax.random.key(seed), x.shape[1:])
    fwd = jax.jit(lambda p, xb: batched(layer).apply(p, state, xb)[0])
    jax.block_until_ready(fwd(params, x))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(params, x))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plot(path, img, ycbcr, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 6.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 4)
    titles = ("input RGB (3 channels)", "1x1 conv output: Y", "Cb", "Cr")
    panels = (img, ycbcr[..., 0], ycbcr[..., 1], ycbcr[..., 2])
    for i, (title, panel) in enumerate(zip(titles, panels)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(panel[::2, ::2], cmap=None if panel.ndim == 3 else "gray")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    base = rows[0]
    bn = rows[1:]
    widths = [int(r["block"].split("->")[1].split(",")[0]) for r in bn]
    ax = fig.add_subplot(grid[1, :2])
    ax.plot(widths, [r["params"] for r in bn], "o-", label="bottleneck params")
    ax.plot(widths, [r["flops"] for r in bn], "s-", label="bottleneck FLOPs")
    ax.axhline(base["params"], color="C0", ls="--", lw=1, label="plain 3x3 params")
    ax.axhline(base["flops"], color="C1", ls="--", lw=1, label="plain 3x3 FLOPs")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_yscale("log")
    ax.set_xlabel("bottleneck width w")
    ax.set_title("56x56x256 block, per image (jcnn.summary)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[1, 2:])
    ax.plot(widths, [r["flops_factor"] for r in bn], "s-", label="FLOPs saved (summary)")
    ax.plot(widths, [r["params_factor"] for r in bn], "o-", label="params saved (summary)")
    ax.plot(widths, [r["time_factor"] for r in bn], "^-", label="forward time saved (measured)")
    ax.axhline(1, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_yscale("log")
    ax.set_xlabel("bottleneck width w")
    ax.set_ylabel("plain / bottleneck")
    ax.set_title("factor saved by the bottleneck", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(
        "A 1x1 conv mixes channels pixel by pixel (RGB -> YCbCr); 1x1 bottlenecks cut params and FLOPs",
        fontsize=10,
    )
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
