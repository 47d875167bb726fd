"""What filters see: hand-designed filters on a real photo, and the first-layer filters and
activation maps of a CNN trained on real images.

1. One conv layer with four hand-designed 5x5 filters (Sobel x, Sobel y, Gaussian blur,
   sharpen) applied to scikit-learn's ``china.jpg`` with `jcnn.ops.conv`: four activation maps.
   Checks: rotating the photo and the Sobel-x filter by 90 degrees gives the rotated map
   (convolution commutes with rotation when the kernel rotates too); blur lowers and sharpen
   raises the image's high-frequency energy (variance of its Laplacian).
2. The lecture's LeNet (`jcnn.models.lenet`) trained on Fashion-MNIST (a train subset; digits
   in ``--quick``): its 20 first-layer 5x5 filters before and after training, and the
   activation maps of both conv layers for one real test image. How edge-like the filters
   are: each filter's best |cosine| with a bank of oriented edge and bar detectors, at
   initialisation and after training.

    python experiments/visualize.py            # Fashion-MNIST, 10k train images, 2 epochs (~3 min)
    python experiments/visualize.py --quick    # digits, 3 epochs

Writes ``visualize.json``, ``visualize_filters.png`` and ``visualize_learned.png`` into
``--out`` (default ``runs/visualize``); ``--figures DIR`` also copies the PNGs there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import jax.numpy as jnp
import numpy as np
import optax

from jcnn import data, ops, train
from jcnn.models import lenet

NAME = "visualize"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=10000, help="fashion-mnist: train on this many images")
    p.add_argument("--epochs", type=int, default=None, help="default: fashion-mnist 2, digits 20 (quick 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image", type=int, default=0, help="index of the test image whose activations are shown")
    p.add_argument("--out", default=os.path.join("runs", NAME), help="folder for the JSON and PNGs")
    p.add_argument(
        "--figures", default=None, help="also copy the PNGs here (RESULTS.md: experiments/figures)"
    )
    p.add_argument("--quick", action="store_true", help="digits, 3 epochs")
    return p.parse_args(argv)


def hand_filters() -> dict[str, np.ndarray]:
    """Four classic 3x3 / 5x5 filters, each centred in a 5x5 kernel."""
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    g = np.exp(-0.5 * (np.arange(-2, 3) / 1.0) ** 2)
    gauss = np.outer(g, g).astype(np.float32)
    sharpen = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)

    def five(k):
        out = np.zeros((5, 5), np.float32)
        o = (5 - k.shape[0]) // 2
        out[o : o + k.shape[0], o : o + k.shape[1]] = k
        return out

    return {
        "Sobel x": five(sobel_x),
        "Sobel y": five(sobel_x.T.copy()),
        "Gaussian blur": gauss / gauss.sum(),
        "sharpen": five(sharpen),
    }


def edge_bank(size: int) -> np.ndarray:
    """Oriented first (edge) and second (bar) derivatives of a Gaussian, plus a blob: (n, k, k)."""
    r = np.arange(size) - (size - 1) / 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    sigma = size / 4
    bank = [np.exp(-(xx**2 + yy**2) / (2 * sigma**2))]
    for theta in np.linspace(0, np.pi, 8, endpoint=False):
        u = xx * np.cos(theta) + yy * np.sin(theta)
        g = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        bank.append(u * g)  # edge across direction theta
        bank.append((u**2 / sigma**2 - 1) * g)  # bar along theta
    return np.stack(bank)


def edge_likeness(filters: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Per filter ``(k, k)``: the largest |cosine| with any bank filter (both zero-mean)."""

    def unit(a):
        a = a.reshape(a.shape[0], -1)
        a = a - a.mean(axis=1, keepdims=True)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    # The blob is kept whole: zero-meaning it gives a Mexican hat, itself a centre-surround detector.
    return np.abs(unit(filters) @ unit(bank).T).max(axis=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    out: dict = {}

    # 1. Hand-designed filters on a real photo.
    from sklearn.datasets import load_sample_image

    rgb = load_sample_image("china.jpg").astype(np.float32) / 255.0
    gray = (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]  # (427, 640, 1)
    filters = hand_filters()
    names = list(filters)
    kernel = jnp.asarray(np.stack([filters[n] for n in names], axis=-1)[:, :, None, :])  # (5, 5, 1, 4)
    maps = np.asarray(ops.conv(jnp.asarray(gray), kernel, padding="SAME"))  # one layer, four maps
    rot_kernel = jnp.asarray(np.rot90(filters["Sobel x"]).copy())[:, :, None, None]
    rot = np.asarray(ops.conv(jnp.asarray(np.rot90(gray).copy()), rot_kernel, padding="SAME"))
    rot_diff = float(np.max(np.abs(np.rot90(maps[..., :1]) - rot)))
    lap = jnp.asarray(np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)[:, :, None, None])

    def hf(a):  # variance of the Laplacian (valid part): high-frequency energy
        return float(jnp.var(ops.conv(jnp.asarray(a), lap)))

    energy = {"photo": hf(gray), "blurred": hf(maps[..., 2:3]), "sharpened": hf(maps[..., 3:4])}
    out["hand"] = {
        "filters": {n: filters[n].tolist() for n in names},
        "maps_shape": list(maps.shape),
        "rotation_max_abs_diff": rot_diff,
        "laplacian_variance": energy,
    }
    print(f"1. one conv layer, 4 hand-designed 5x5 filters, on china.jpg {gray.shape} -> {maps.shape}")
    print(f"   rot90(conv(x, Sobel x)) vs conv(rot90(x), rot90(Sobel x)): max |diff| {rot_diff:.1e}")
    print(f"   high-frequency energy (variance of the Laplacian): photo {energy['photo']:.2e},"
          f" blurred {energy['blurred']:.2e} ({energy['blurred'] / energy['photo']:.2f}x),"
          f" sharpened {energy['sharpened']:.2e} ({energy['sharpened'] / energy['photo']:.2f}x)")  # fmt: skip

    # 2. A trained LeNet's first layer.
    if args.quick or args.dataset == "digits":
        ds = data.load_digits()
        epochs = args.epochs or (3 if args.quick else 20)
        batch_size, lr = 32, 2e-3
    else:
        ds = data.load_fashion_mnist()
        n = min(args.train_subset, len(ds.train.labels))
        idx = np.sort(np.random.default_rng(args.seed).permutation(len(ds.train.labels))[:n])
        ds = ds._replace(train=data.Split(ds.train.images[idx], ds.train.labels[idx]))
        epochs = args.epochs or 2
        batch_size, lr = 64, 1e-3
    model = lenet(ds.num_classes, ds.image_shape)
    steps = epochs * (len(ds.train.labels) // batch_size)
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps))
    init = train.init_state(model, optimizer, args.seed, ds.image_shape)
    # conv1's filters at init, (20, 5, 5), copied before fit (which starts from the same seed).
    w0 = np.asarray(init.params[0]["kernel"])[:, :, 0, :].transpose(2, 0, 1)
    result = train.fit(
        model, optimizer, ds, epochs=epochs, batch_size=batch_size, seed=args.seed, progress=False
    )
    state = result.state
    w1 = np.asarray(state.params[0]["kernel"])[:, :, 0, :].transpose(2, 0, 1)
    acc = result.history[-1]["test_accuracy"]
    bank = edge_bank(5)
    like0, like1 = edge_likeness(w0, bank), edge_likeness(w1, bank)
    rng = np.random.default_rng(args.seed)
    like_rand = edge_likeness(rng.standard_normal((2000, 5, 5)), bank)
    moved = float(np.linalg.norm(w1 - w0) / np.linalg.norm(w0))

    # Activations of one real test image through the trained net's two conv stages.
    x = jnp.asarray(ds.test.images[args.image])
    layers = [child for _, child in model.children]
    acts, h = [], x
    for layer, p, s in zip(layers[:6], state.params[:6], state.model_state[:6]):
        h, _ = layer.apply(p, s, h)
        acts.append(np.asarray(h))
    logits = model.apply(state.params, state.model_state, x)[0]
    pred = int(jnp.argmax(logits))
    label = int(ds.test.labels[args.image])
    out["learned"] = {
        "dataset": ds.name,
        "train_size": len(ds.train.labels),
        "epochs": epochs,
        "test_accuracy": acc,
        "edge_likeness_init_mean": float(like0.mean()),
        "edge_likeness_trained_mean": float(like1.mean()),
        "edge_likeness_random_mean": float(like_rand.mean()),
        "edge_likeness_init": like0.tolist(),
        "edge_likeness_trained": like1.tolist(),
        "relative_change_of_conv1": moved,
        "image": args.image,
        "label": ds.class_names[label],
        "prediction": ds.class_names[pred],
        "activation_shapes": [list(a.shape) for a in acts],
    }
    print(
        f"2. LeNet on {ds.name} ({len(ds.train.labels)} train images, {epochs} epochs): test accuracy {acc:.4f}"
    )
    print(f"   conv1 filters moved {moved:.0%} (|w1 - w0| / |w0|); best |cos| with an oriented edge/bar/blob bank:"
          f" init {like0.mean():.3f}, trained {like1.mean():.3f} (random 5x5: {like_rand.mean():.3f};"
          f" trained > init for {int(np.sum(like1 > like0))}/{len(like1)} filters)")  # fmt: skip
    print(f"   test image {args.image} ({ds.class_names[label]}, predicted {ds.class_names[pred]}):"
          f" conv1 maps {acts[1].shape}, conv2 maps {acts[4].shape}")  # fmt: skip

    elapsed = time.perf_counter() - t_start
    out["elapsed_s"] = elapsed
    out["args"] = vars(args)
    figs = [os.path.join(args.out, f"{NAME}_filters.png"), os.path.join(args.out, f"{NAME}_learned.png")]
    plot_hand(figs[0], gray[..., 0], filters, maps)
    plot_learned(figs[1], w0, w1, like0, like1, np.asarray(x), acts, ds, label, pred)
    path = os.path.join(args.out, f"{NAME}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        for fig in figs:
            shutil.copy(fig, args.figures)
    print(f"wrote {path}, {figs[0]}, {figs[1]} ({elapsed:.0f}s)")
    return 0


def _clean(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def plot_hand(path, gray, filters, maps) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(filters)
    crop = (slice(40, 300), slice(60, 400))  # the pagoda, at full resolution
    fig, axes = plt.subplots(2, 5, figsize=(13, 4.2), constrained_layout=True, height_ratios=(1, 2))
    axes[0, 0].axis("off")
    axes[0, 0].text(0.5, 0.5, "filters (5x5)\nblue < 0 < red", ha="center", va="center", fontsize=9)
    axes[1, 0].imshow(gray[crop], cmap="gray", vmin=0, vmax=1)
    axes[1, 0].set_title("input (china.jpg, gray, crop)", fontsize=9)
    for i, n in enumerate(names):
        k = filters[n]
        m = np.abs(k).max()
        axes[0, i + 1].imshow(k, cmap="RdBu_r", vmin=-m, vmax=m)
        axes[0, i + 1].set_title(n, fontsize=9)
        a = maps[crop][..., i]
        if n.startswith("Sobel"):  # signed edges: show their strength
            axes[1, i + 1].imshow(np.abs(a), cmap="gray_r", vmin=0, vmax=np.percentile(np.abs(a), 99))
            axes[1, i + 1].set_title(f"|activation map|: {n}", fontsize=9)
        else:
            axes[1, i + 1].imshow(np.clip(a, 0, 1), cmap="gray", vmin=0, vmax=1)
            axes[1, i + 1].set_title(f"activation map: {n}", fontsize=9)
    for ax in axes.ravel():
        _clean(ax)
    fig.suptitle(
        "One conv layer with four hand-designed filters (jcnn.ops.conv, padding 'SAME')", fontsize=10
    )
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_learned(path, w0, w1, like0, like1, image, acts, ds, label, pred) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = w0.shape[0]
    show2 = min(20, acts[4].shape[-1])
    fig = plt.figure(figsize=(12, 7.2), constrained_layout=True)
    grid = fig.add_gridspec(5, n)
    for row, (w, like, what) in enumerate(((w0, like0, "at init"), (w1, like1, "trained"))):
        for i in range(n):
            ax = fig.add_subplot(grid[row, i])
            m = np.abs(w[i]).max()
            ax.imshow(w[i], cmap="RdBu_r", vmin=-m, vmax=m)
            ax.set_xlabel(f"{like[i]:.2f}", fontsize=6, labelpad=1)
            _clean(ax)
            if i == 0:
                ax.set_ylabel(f"conv1\n{what}", fontsize=8)
    ax = fig.add_subplot(grid[2, 0])
    ax.imshow(image[..., 0], cmap="gray_r")
    ax.set_ylabel("input", fontsize=8)
    ax.set_xlabel(f"{ds.class_names[label]}\n(pred. {ds.class_names[pred]})", fontsize=7, labelpad=1)
    _clean(ax)
    for i in range(n - 1):
        ax = fig.add_subplot(grid[2, i + 1])
        ax.imshow(acts[1][..., i], cmap="magma")
        _clean(ax)
        if i == 0:
            ax.set_title("conv1+ReLU maps", fontsize=7, loc="left")
    for i in range(min(show2, n)):
        ax = fig.add_subplot(grid[3, i])
        ax.imshow(acts[4][..., i], cmap="magma")
        _clean(ax)
        if i == 0:
            ax.set_ylabel("conv2\n+ReLU", fontsize=8)
    ax = fig.add_subplot(grid[4, : n // 2])
    ax.hist([like0, like1], bins=np.linspace(0, 1, 21), label=["init", "trained"])
    ax.set_xlabel(
        "best |cos| with an oriented edge / bar / blob filter (number under each filter)", fontsize=8
    )
    ax.legend(fontsize=8)
    ax.tick_params(labelsize=7)
    fig.suptitle(
        f"LeNet on {ds.name}: first-layer filters (blue < 0 < red) and activation maps of one test image",
        fontsize=10,
    )
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
