"""The seed's closing claim: pooling can be dropped, strided convolutions do as well or better
(Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional Net").

One network, four ways to downsample by 2 (twice: 28 -> 14 -> 7 on Fashion-MNIST)::

    Conv(16, 3, padding=1) - Relu - [down] - Conv(32, 3, padding=1) - Relu - [down]
    - Flatten - Dense(64) - Relu - Dense(10)

* ``max``: [down] = MaxPool(2)
* ``avg``: [down] = AvgPool(2)
* ``strided``: no pooling; the conv before it gets stride 2 (the paper's "Strided-CNN")
* ``allconv``: [down] = Conv(c, 3, strides=2, padding="SAME") - Relu, a learned pooling
  (the paper's "All-CNN")

Each trained with Adam (cosine decay) for the same number of steps on the same data, for
several seeds; test accuracy mean +- std, params and FLOPs from `jcnn.summary`, training time
(`jcnn.train.fit`'s per-epoch train time: compilation and evaluation excluded).

    python experiments/pool_vs_strided.py            # Fashion-MNIST, 12k-image train subset, 2 epochs, 3 seeds (~10 min)
    python experiments/pool_vs_strided.py --quick    # digits, 1 seed per variant, 3 epochs

Writes ``pool_vs_strided.json`` and ``pool_vs_strided.png`` into ``--out`` (default
``runs/pool_vs_strided``); ``--figures DIR`` also copies the PNG there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np
import optax

from jcnn import data, train
from jcnn.layers import AvgPool, Conv, Dense, Flatten, MaxPool, Relu, serial
from jcnn.summary import summary

NAME = "pool_vs_strided"
VARIANTS = ("max", "avg", "strided", "allconv")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    p.add_argument(
        "--train-subset", type=int, default=12000, help="fashion-mnist: train on this many images (seeded)"
    )
    p.add_argument("--epochs", type=int, default=None, help="default: fashion-mnist 2, digits 20 (quick 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--widths", type=int, nargs=2, default=(16, 32), help="channels of the two stages")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant: --seed, --seed + 1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    p.add_argument("--out", default=os.path.join("runs", NAME), help="folder for the JSON and PNG")
    p.add_argument("--figures", default=None, help="also copy the PNG here (RESULTS.md: experiments/figures)")
    p.add_argument("--quick", action="store_true", help="digits, 1 seed, 3 epochs")
    return p.parse_args(argv)


def network(variant: str, widths, num_classes: int):
    """The shared network with the given way to downsample."""
    layers = []
    for c in widths:
        if variant == "strided":
            layers += [Conv(c, 3, strides=2, padding="SAME"), Relu()]
            continue
        layers += [Conv(c, 3, padding=1), Relu()]
        if variant == "max":
            layers.append(MaxPool(2))
        elif variant == "avg":
            layers.append(AvgPool(2))
        elif variant == "allconv":
            layers += [Conv(c, 3, strides=2, padding="SAME"), Relu()]
        else:
            raise ValueError(
                f"pool_vs_strided: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}."
            )
    return serial(*layers, Flatten(), Dense(64), Relu(), Dense(num_classes))


def load(args):
    if args.quick or args.dataset == "digits":
        return data.load_digits(), None
    ds = data.load_fashion_mnist()
    n = min(args.train_subset, len(ds.train.labels))
    idx = np.sort(np.random.default_rng(args.seed).permutation(len(ds.train.labels))[:n])
    return ds._replace(train=data.Split(ds.train.images[idx], ds.train.labels[idx])), n


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    ds, subset = load(args)
    epochs = args.epochs or (3 if args.quick else 2 if ds.name == "fashion-mnist" else 20)
    seeds = [args.seed] if args.quick else list(range(args.seed, args.seed + args.seeds))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    n_train = len(ds.train.labels)
    steps = epochs * (n_train // args.batch_size)
    # One optimizer object for every run: fit then reuses its compiled train step across seeds.
    optimizer = optax.adam(optax.cosine_decay_schedule(args.lr, steps))
    print(f"{ds.name}: {n_train} train{' (subset)' if subset else ''} / {len(ds.test.labels)} test images;"
          f" {epochs} epochs x {n_train // args.batch_size} steps of {args.batch_size}, adam lr {args.lr} cosine;"
          f" seeds {seeds}")  # fmt: skip

    rows = []
    for variant in variants:
        model = network(variant, args.widths, ds.num_classes)
        table = summary(model, ds.image_shape)
        warnings = [r["warning"] for r in table.rows if r["warning"]]
        accs, times, compiles = [], [], []
        for seed in seeds:
            result = train.fit(
                model, optimizer, ds, epochs=epochs, batch_size=args.batch_size, seed=seed, progress=False
            )
            accs.append(result.history[-1]["test_accuracy"])
            times.append(sum(h["train_time_s"] for h in result.history))
            compiles.append(result.compile_time_s)
            print(f"  {variant:<8} seed {seed}: test acc {accs[-1]:.4f}, train {times[-1]:.1f}s", flush=True)
        rows.append(
            {
                "variant": variant,
                "model": repr(model),
                "params": table.totals["params"],
                "flops": table.totals["flops"],
                "summary_warnings": warnings,
                "test_accuracy": accs,
                "mean": statistics.fmean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "train_time_s": times,
                "train_time_mean_s": statistics.fmean(times),
                "images_per_s": steps * args.batch_size / statistics.fmean(times),
                "compile_time_s": compiles[0],
            }
        )

    print(
        f"\n{ds.name}, {len(seeds)} seed(s), {epochs} epochs on {n_train} images; FLOPs per image (forward)"
    )
    print(f"{'variant':<8} {'test accuracy':>18} {'params':>8} {'FLOPs':>11} {'train s':>8} {'img/s':>7}")
    for r in rows:
        print(f"{r['variant']:<8} {r['mean']:>10.4f} +- {r['std']:.4f} {r['params']:>8,} {r['flops']:>11,}"
              f" {r['train_time_mean_s']:>8.1f} {r['images_per_s']:>7.0f}")  # fmt: skip
    best = max(rows, key=lambda r: r["mean"])
    pools = [r for r in rows if r["variant"] in ("max", "avg")]
    strided = [r for r in rows if r["variant"] in ("strided", "allconv")]
    verdict = None
    if pools and strided:
        bp, bs = max(pools, key=lambda r: r["mean"]), max(strided, key=lambda r: r["mean"])
        gap = bs["mean"] - bp["mean"]
        noise = max(bs["std"], bp["std"])
        verdict = {
            "best_pool": bp["variant"],
            "best_strided": bs["variant"],
            "strided_minus_pool": gap,
            "larger_std": noise,
            "strided_as_good": gap >= -noise,
        }
        print(f"best pooling ({bp['variant']}) {bp['mean']:.4f} vs best strided ({bs['variant']}) {bs['mean']:.4f}:"
              f" difference {gap:+.4f}, seed std up to {noise:.4f}")  # fmt: skip
    elapsed = time.perf_counter() - t_start

    png = os.path.join(args.out, f"{NAME}.png")
    plot(png, rows, ds.name, len(seeds), epochs, n_train)
    result = {
        "dataset": ds.name,
        "train_size": n_train,
        "test_size": len(ds.test.labels),
        "epochs": epochs,
        "seeds": seeds,
        "rows": rows,
        "best": best["variant"],
        "verdict": verdict,
        "elapsed_s": elapsed,
        "args": vars(args),
    }
    path = os.path.join(args.out, f"{NAME}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        shutil.copy(png, args.figures)
    print(f"wrote {path} and {png} ({elapsed:.0f}s)")
    return 0


def plot(path, rows, dataset, n_seeds, epochs, n_train) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    colors = [f"C{i}" for i in range(len(rows))]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), constrained_layout=True)
    ax = axes[0]
    ax.bar(names, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], capsize=4, color=colors)
    for i, r in enumerate(rows):
        ax.plot([i] * len(r["test_accuracy"]), r["test_accuracy"], "k.", ms=4)
    lo = min(min(r["test_accuracy"]) for r in rows)
    hi = max(max(r["test_accuracy"]) for r in rows)
    ax.set_ylim(lo - 2 * (hi - lo + 1e-3), hi + (hi - lo + 1e-3))
    ax.set_title(f"test accuracy (mean +- std, dots: {n_seeds} seeds)", fontsize=9)
    for ax, key, title in (
        (axes[1], "params", "parameters"),
        (axes[2], "flops", "forward FLOPs per image"),
        (axes[3], "train_time_mean_s", f"training time, s ({epochs} epochs, CPU)"),
    ):
        ax.bar(names, [r[key] for r in rows], color=colors)
        if key == "train_time_mean_s":
            ax.errorbar(range(len(rows)), [r[key] for r in rows],
                        yerr=[statistics.stdev(r["train_time_s"]) if len(r["train_time_s"]) > 1 else 0 for r in rows],
                        fmt="none", ecolor="k", capsize=4)  # fmt: skip
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Pooling vs strided convolutions, {dataset} ({n_train} training images)", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
