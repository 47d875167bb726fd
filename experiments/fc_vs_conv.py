"""Fully-connected vs convolutional, on real data (the seed's points 1, 7 and 10).

(a) A fully-connected layer is a convolution and the other way round: `jcnn.convert` both
    ways on real test images, with the largest difference printed.
(b) MLPs and CNNs trained on the same data: test accuracy (mean +- std over seeds) against
    parameter count.
(c) A trained CNN classifier, convolutionalized (its Flatten -> Dense head turned into a conv by
    `jcnn.convert.convolutionalize`), slides over a canvas of several test images side by side
    and gives a score map: one classification per window position, in one pass.

    python experiments/fc_vs_conv.py                             # digits, 3 seeds, ~5 min
    python experiments/fc_vs_conv.py --dataset fashion-mnist     # 10k-image train subset
    python experiments/fc_vs_conv.py --quick                     # 1 seed, 2 models, 3 epochs

Writes ``fc_vs_conv.json``, ``fc_vs_conv_accuracy.png`` and ``fc_vs_conv_scoremap.png`` into
``--out`` (default ``runs/fc_vs_conv``); ``--figures DIR`` also copies the PNGs there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jcnn import data, train
from jcnn.convert import conv_to_dense, convolutionalize, dense_to_conv
from jcnn.layers import Conv, Dense, Flatten, MaxPool, Relu, batched, serial
from jcnn.models import allconv, lenet, mlp
from jcnn.summary import summary

NAME = "fc_vs_conv"
# (epochs, batch size, peak learning rate) per dataset; Adam with a cosine decay.
DEFAULTS = {"digits": (30, 32, 2e-3), "fashion-mnist": (3, 64, 1e-3)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
    p.add_argument("--train-subset", type=int, default=10000, help="fashion-mnist: train on this many images")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=3, help="seeds per model: --seed, --seed + 1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default=None,
                   help="comma-separated subset of the models (mlp-128 and cnn-valid are always trained: (a) and (c) use them)")  # fmt: skip
    p.add_argument("--canvas", type=int, default=8, help="test images side by side in (c)")
    p.add_argument("--out", default=os.path.join("runs", NAME), help="folder for the JSON and PNGs")
    p.add_argument(
        "--figures", default=None, help="also copy the PNGs here (RESULTS.md: experiments/figures)"
    )
    p.add_argument(
        "--quick", action="store_true", help="1 seed, 2 models, 3 epochs on digits; (c) without lenet"
    )
    return p.parse_args(argv)


def valid_cnn(num_classes: int, input_shape) -> object:
    """A small CNN with no padding before its Flatten, so that convolutionalizing it gives
    exactly the classifier applied to every window (padding would read neighbours instead of
    zeros)."""
    del input_shape  # fits any image of at least 6x6
    return serial(
        Conv(16, 3), Relu(), Conv(32, 3), Relu(), MaxPool(2), Flatten(), Dense(64), Relu(), Dense(num_classes)
    )


def model_zoo(quick: bool, names: str | None = None) -> dict:
    """name -> (family, constructor(num_classes, input_shape))."""
    zoo = {
        "mlp-32": ("MLP", lambda n, s: mlp(n, s, hidden=32)),
        "mlp-128": ("MLP", lambda n, s: mlp(n, s, hidden=128)),
        "mlp-1024": ("MLP", lambda n, s: mlp(n, s, hidden=1024)),
        "mlp-512x512": ("MLP", lambda n, s: mlp(n, s, hidden=(512, 512))),
        "cnn-valid": ("CNN", valid_cnn),
        "allconv-16-32": ("CNN", lambda n, s: allconv(n, s, widths=(16, 32))),
        "lenet": ("CNN", lenet),
    }
    if names:
        wanted = {n.strip() for n in names.split(",") if n.strip()} | {"mlp-128", "cnn-valid"}
        unknown = wanted - set(zoo)
        if unknown:
            raise SystemExit(f"fc_vs_conv: unknown --models {sorted(unknown)}; choose from {', '.join(zoo)}.")
        return {k: v for k, v in zoo.items() if k in wanted}
    if quick:
        zoo = {k: zoo[k] for k in ("mlp-128", "cnn-valid")}
    return zoo


def load(args):
    if args.dataset == "digits" or args.quick:
        return data.load_digits()
    ds = data.load_fashion_mnist()
    n = min(args.train_subset, len(ds.train.labels))
    idx = np.random.default_rng(args.seed).permutation(len(ds.train.labels))[:n]
    return ds._replace(train=data.Split(ds.train.images[idx], ds.train.labels[idx]))


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    dataset = "digits" if args.quick else args.dataset
    ds = load(args)
    epochs, batch_size, lr = DEFAULTS[dataset]
    epochs = args.epochs or (3 if args.quick else epochs)
    seeds = [args.seed] if args.quick else list(range(args.seed, args.seed + args.seeds))
    shape, n_classes = ds.image_shape, ds.num_classes
    n_train = len(ds.train.labels)
    print(f"{ds.name}: {n_train} train / {len(ds.test.labels)} test images {shape}; {epochs} epochs, batch {batch_size},"
          f" adam lr {lr} cosine, seeds {seeds}")  # fmt: skip

    # (b) Train every model on every seed.
    steps = epochs * (n_train // batch_size)
    # One optimizer object for every run: fit then reuses its compiled train step across seeds.
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps))
    rows, trained = [], {}
    for name, (family, make) in model_zoo(args.quick, args.models).items():
        model = make(n_classes, shape)
        table = summary(model, shape)
        accs, times = [], []
        for seed in seeds:
            result = train.fit(
                model, optimizer, ds, epochs=epochs, batch_size=batch_size, seed=seed, progress=False
            )
            accs.append(result.history[-1]["test_accuracy"])
            times.append(sum(h["train_time_s"] for h in result.history))
            if seed == seeds[0]:
                trained[name] = (model, result.state)
        row = {
            "model": name,
            "family": family,
            "params": table.totals["params"],
            "flops": table.totals["flops"],
            "test_accuracy": accs,
            "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "train_time_s": statistics.fmean(times),
        }
        rows.append(row)
        print(f"  {name:<14} {family}  params {row['params']:>9,}  FLOPs {row['flops']:>10,}  test acc"
              f" {row['mean']:.4f} +- {row['std']:.4f}  ({row['train_time_s']:.1f}s train/seed)", flush=True)  # fmt: skip

    print(f"\n(b) test accuracy vs parameters, {ds.name}, {len(seeds)} seed(s)")
    print(f"{'model':<14} {'family':<6} {'params':>10} {'FLOPs/image':>12} {'test accuracy':>18}")
    for r in sorted(rows, key=lambda r: r["params"]):
        print(
            f"{r['model']:<14} {r['family']:<6} {r['params']:>10,} {r['flops']:>12,} {r['mean']:>10.4f} +- {r['std']:.4f}"
        )

    conversions = convert_checks(trained, ds)
    scoremap = slide(trained, ds, args)
    elapsed = time.perf_counter() - t_start

    figs = [os.path.join(args.out, f"{NAME}_accuracy.png"), os.path.join(args.out, f"{NAME}_scoremap.png")]
    plot_accuracy(figs[0], rows, ds.name, len(seeds), epochs)
    plot_scoremap(figs[1], scoremap, ds)
    result = {
        "dataset": ds.name,
        "train_size": n_train,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seeds": seeds,
        "models": rows,
        "conversions": conversions,
        "scoremap": {k: v for k, v in scoremap.items() if not isinstance(v, np.ndarray)},
        "elapsed_s": elapsed,
        "args": vars(args),
    }
    path = os.path.join(args.out, f"{NAME}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        for fig in figs:
            shutil.copy(fig, args.figures)
    print(f"\nwrote {path}, {figs[0]}, {figs[1]} ({elapsed:.0f}s)")
    return 0


def _stateless(params) -> tuple:
    # `convolutionalize` returns no state; its docstring says state keeps the params' layout,
    # and every layer here is stateless, so it is one () per layer.
    return tuple(() for _ in params)


def convert_checks(trained, ds) -> dict:
    """(a) dense -> conv and conv -> dense on the test images, with the trained weights."""
    x = jnp.asarray(ds.test.images)
    shape = ds.image_shape
    out = {}
    print("\n(a) a fully-connected layer is a convolution, and the other way round (test images, float32)")

    # Dense -> conv: the MLP's first layer, Flatten -> Dense(128), is a Conv(128, (h, w)).
    model, state = trained["mlp-128"]
    dense_params = state.params[1]
    conv, conv_params = dense_to_conv(dense_params, shape)
    y_dense = jax.vmap(lambda xi: Dense(128).apply(dense_params, (), xi.reshape(-1))[0])(x)
    y_conv = batched(conv).apply(conv_params, (), x)[0]  # (n, 1, 1, 128)
    d1 = float(jnp.max(jnp.abs(y_conv[:, 0, 0] - y_dense)))
    fcn, fcn_params = convolutionalize(model, state.params, shape)
    logits = batched(model).apply(state.params, state.model_state, x)[0]
    logits_fcn = batched(fcn).apply(fcn_params, _stateless(fcn_params), x)[0][:, 0, 0]
    d2 = float(jnp.max(jnp.abs(logits - logits_fcn)))
    same = float(jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(logits_fcn, -1)))
    print(f"  dense_to_conv: Flatten -> Dense(128) as {conv!r}: max |diff| {d1:.2e} over {x.shape[0]} images")
    print(f"  convolutionalize(mlp-128) = {fcn!r}: logits max |diff| {d2:.2e}, same prediction on {same:.0%}")
    out["dense_to_conv_max_abs_diff"] = d1
    out["convolutionalize_mlp_max_abs_diff"] = d2

    # Conv -> dense: the CNN's first conv (trained) as one big matrix on flattened images.
    model, state = trained["cnn-valid"]
    conv_layer = model.children[0][1]
    conv_params = state.params[0]
    dense, dp = conv_to_dense(conv_layer, conv_params, shape)
    y_conv = batched(conv_layer).apply(conv_params, (), x)[0]
    y_dense = jax.vmap(lambda xi: dense.apply(dp, (), xi.reshape(-1))[0])(x)
    d3 = float(jnp.max(jnp.abs(y_dense - y_conv.reshape(y_conv.shape[0], -1))))
    k = np.asarray(dp["kernel"])
    nonzero = int(np.count_nonzero(k))
    conv_weights = int(np.asarray(conv_params["kernel"]).size)
    distinct = int(np.unique(k[k != 0]).size)
    print(f"  conv_to_dense: {conv_layer!r} on {shape} as {dense!r}: max |diff| {d3:.2e}")
    print(f"    its {k.shape[0]}x{k.shape[1]} matrix: {k.size:,} entries, {nonzero:,} nonzero"
          f" ({nonzero / k.size:.1%}), {distinct} distinct nonzero values = the conv's {conv_weights} weights")  # fmt: skip
    out.update(
        conv_to_dense_max_abs_diff=d3,
        conv_to_dense_matrix_shape=list(k.shape),
        conv_to_dense_nonzero=nonzero,
        conv_to_dense_distinct=distinct,
        conv_weights=conv_weights,
    )
    return out


def slide(trained, ds, args) -> dict:
    """(c) Convolutionalized classifiers on a canvas of test images side by side."""
    rng = np.random.default_rng(args.seed)
    labels = ds.test.labels
    k = min(args.canvas, ds.num_classes)
    classes = rng.choice(ds.num_classes, size=k, replace=False)
    picks = [int(rng.choice(np.flatnonzero(labels == c))) for c in classes]
    images = ds.test.images[picks]
    h, w, _ = ds.image_shape
    canvas = np.concatenate(list(images), axis=1)  # (h, k*w, c)
    out = {"classes": classes.tolist(), "test_indices": picks, "canvas": canvas}
    print(f"\n(c) a classifier slid over a {canvas.shape[0]}x{canvas.shape[1]} canvas of {k} test images")
    out["models"] = [name for name in ("cnn-valid", "lenet") if name in trained]
    for name in out["models"]:
        model, state = trained[name]
        fcn, fcn_params = convolutionalize(model, state.params, ds.image_shape)
        t0 = time.perf_counter()
        scores, _ = fcn.apply(fcn_params, _stateless(fcn_params), jnp.asarray(canvas))
        scores = np.asarray(scores[0])  # (positions, classes)
        dt = time.perf_counter() - t0
        positions = scores.shape[0]
        jump = (canvas.shape[1] - w) // (positions - 1)  # input pixels between neighbouring windows
        aligned = scores[:: w // jump][:k]  # windows that sit exactly on one image
        single = np.asarray(batched(model).apply(state.params, state.model_state, jnp.asarray(images))[0])
        diff = float(np.max(np.abs(aligned - single)))
        hits = float(np.mean(aligned.argmax(-1) == classes))
        probs = np.asarray(jax.nn.softmax(jnp.asarray(scores), axis=-1))
        print(f"  {name}: {fcn!r}\n    score map {scores.shape[0]} positions x {scores.shape[1]} classes, one window"
              f" every {jump} px, in one pass ({dt:.2f}s incl. compile); at the {k} windows on an image:"
              f" max |logit - classifier on that image alone| = {diff:.2e}, right class {hits:.0%}")  # fmt: skip
        out[name] = {
            "positions": positions,
            "jump": jump,
            "aligned_max_abs_diff": diff,
            "aligned_accuracy": hits,
            "aligned_argmax": aligned.argmax(-1).tolist(),
        }
        out[f"{name}_probs"] = probs
    return out


def plot_accuracy(path, rows, dataset, n_seeds, epochs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for family, color in (("MLP", "tab:orange"), ("CNN", "tab:blue")):
        rs = [r for r in rows if r["family"] == family]
        ax.errorbar([r["params"] for r in rs], [r["mean"] for r in rs], yerr=[r["std"] for r in rs],
                    fmt="o", color=color, capsize=3, label=family)  # fmt: skip
        for r in rs:
            ax.annotate(
                r["model"], (r["params"], r["mean"]), textcoords="offset points", xytext=(5, -10), fontsize=8
            )
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy")
    ax.set_title(
        f"{dataset}: test accuracy vs parameters ({epochs} epochs, mean +- std of {n_seeds} seed(s))",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scoremap(path, sm, ds) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canvas = sm["canvas"][..., 0]
    h, width = canvas.shape
    classes = sm["classes"]
    names = sm["models"]
    fig, axes = plt.subplots(1 + len(names), 1, figsize=(10, 2.2 + 2.3 * len(names)), constrained_layout=True,
                             height_ratios=(1.2,) + (2,) * len(names))  # fmt: skip
    axes[0].imshow(canvas, cmap="gray_r", extent=(0, width, h, 0))
    axes[0].set_title(
        "canvas: test images side by side; " + ", ".join(ds.class_names[c] for c in classes), fontsize=9
    )
    axes[0].set_yticks([])
    for ax, name in zip(axes[1:], names):
        info, probs = sm[name], sm[f"{name}_probs"]
        jump = info["jump"]
        centres = np.arange(probs.shape[0]) * jump + ds.image_shape[1] / 2  # window centre, canvas px
        for i, c in enumerate(classes):
            ax.plot(centres, probs[:, c], "-", lw=1.2, color=f"C{i}", label=ds.class_names[c])
            ax.axvline(i * ds.image_shape[1] + ds.image_shape[1] / 2, color=f"C{i}", ls=":", lw=0.8)
        for x, a in zip(centres, probs.argmax(-1)):
            ax.text(
                x,
                1.04,
                ds.class_names[a][:4],
                ha="center",
                fontsize=7,
                rotation=90 if len(ds.class_names[a]) > 1 else 0,
            )
        ax.set_xlim(0, width)
        ax.set_ylim(0, 1.2)
        ax.set_ylabel("p(class)")
        padded = "no padding: exact" if info["aligned_max_abs_diff"] < 1e-3 else "padded convs: not exact"
        ax.set_title(f"{name} convolutionalized: p(true class of each image) per window (centre), argmax on top;"
                     f" on-image windows {info['aligned_accuracy']:.0%} right ({padded})", fontsize=9)  # fmt: skip
    axes[1].legend(
        fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="true class", title_fontsize=7
    )
    axes[-1].set_xlabel("canvas column (px); dotted: centre of each image")
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
