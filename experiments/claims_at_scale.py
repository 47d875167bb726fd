"""Three of the seed's claims that small runs left weak, retested with a deeper net, several
seeds and a significance test (issue 13).

* Claim 12, "strided convolutions do as well as pooling" (Springenberg et al. 2015), and
  claim 11, "pooling reduces noise sensitivity and overfitting": `jcnn.models.small_vgg`
  (two 3x3 conv + BatchNorm + ReLU per stage) in four variants that differ only in how each
  stage halves the image: ``max`` (2x2 max pool), ``strided`` (the stage's second conv takes
  stride 2), ``conv`` (an extra stride-2 conv in the pool's place, the paper's All-CNN) and
  ``none`` (no downsampling). Each is trained for several seeds on the same data without
  augmentation or dropout (they would regularise for the pool); measured: test accuracy, the
  train-test gap (train accuracy in eval mode on the training images), and test accuracy
  under additive Gaussian noise and under whole-pixel translations of 1-4 pixels (each image
  shifted up, down, left or right, zeros filling in). Welch's t-test (two-sided) compares each
  variant with ``max``.
* Claim 3, "each layer extracts higher-level features": on a trained net (``--record``, a
  ``train.py --model small_vgg`` run such as the Fashion-MNIST record, else the first ``max``
  net trained here), for every conv stage: its receptive field (from `jcnn.summary`), the class
  selectivity of its channels (per channel, the spatial max of its ReLU output per image;
  ``(mu_best - mu_rest) / (mu_best + mu_rest)`` over the class means), and the accuracy of a
  nearest-class-mean classifier on those per-channel features; and the input patches (the
  receptive field) that most activate channels of the first and the last conv.

    python experiments/claims_at_scale.py           # Fashion-MNIST, 10k train images, 6 epochs, 5 seeds (~35 min)
    python experiments/claims_at_scale.py --quick   # digits, 2 seeds, 2 epochs
    python experiments/claims_at_scale.py --part features --record runs/fmnist-record   # claim 3 alone

Writes ``claims_at_scale.json``, ``claims_pooling.png`` and ``claims_features.png`` into
``--out`` (default ``runs/claims_at_scale``); ``--figures DIR`` also copies the PNGs there.
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

from jcnn import augment, data, train
from jcnn.layers import batched
from jcnn.models import DOWNSAMPLES, small_vgg
from jcnn.summary import summary

NAME = "claims_at_scale"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-subset", type=int, default=10000, help="train on this many images (seeded)")
    p.add_argument("--epochs", type=int, default=None, help="default 6 (quick 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--widths", type=int, nargs="+", default=(16, 32), help="channels of each stage")
    p.add_argument("--seeds", type=int, default=5, help="seeds per variant: --seed, --seed + 1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--variants",
        default=",".join(DOWNSAMPLES),
        help="comma-separated subset of " + ", ".join(DOWNSAMPLES),
    )
    p.add_argument(
        "--noise", type=float, nargs="+", default=(0.1, 0.2, 0.3), help="std of the additive noise"
    )
    p.add_argument("--shifts", type=int, nargs="+", default=(1, 2, 3, 4), help="translations, pixels")
    p.add_argument(
        "--robust-subset", type=int, default=5000, help="test images for the noise/shift evaluations"
    )
    p.add_argument(
        "--record", default=os.path.join("runs", "fashion-mnist-small_vgg"),
        help="a train.py run folder of small_vgg to analyse for claim 3 (else the first max net here)",
    )  # fmt: skip
    p.add_argument(
        "--part", choices=("all", "pooling", "features"), default="all",
        help="pooling: claims 11-12 only (claims_pooling.json); features: claim 3 only, on --record (claims_features.json)",
    )  # fmt: skip
    p.add_argument("--out", default=os.path.join("runs", NAME), help="folder for the JSON and PNGs")
    p.add_argument(
        "--figures", default=None, help="also copy the PNGs here (RESULTS.md: experiments/figures)"
    )
    p.add_argument("--quick", action="store_true", help="digits, 2 seeds, 2 epochs, narrow nets")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in DOWNSAMPLES]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(DOWNSAMPLES)}")
    if "max" not in args.variants.split(","):
        p.error("--variants must include max (the baseline every variant is compared with)")
    if args.seeds < 2 and not args.quick:
        p.error("--seeds must be at least 2 for a t-test")
    return args


def load(args):
    if args.quick:
        return data.load_digits()
    ds = data.load_fashion_mnist()
    n = min(args.train_subset, len(ds.train.labels))
    idx = np.sort(np.random.default_rng(args.seed).permutation(len(ds.train.labels))[:n])
    return ds._replace(train=data.Split(ds.train.images[idx], ds.train.labels[idx]))


# ---------------------------------------------------------------------------------------------
# Claims 11 and 12.


def perturbed_sets(images: np.ndarray, noise, shifts, seed: int) -> dict:
    """The evaluation copies of ``images``: clean, ``noise:<std>`` and ``shift:<pixels>``.

    Noise is Gaussian, added to the [0, 1] images (not clipped, as a sensor would not know the
    range). A shift of ``t`` moves each image by ``t`` pixels in one of four directions, drawn
    per image; the uncovered border is zeros (the background of both datasets).
    """
    rng = np.random.default_rng(seed)
    out = {"clean": images}
    for std in noise:
        out[f"noise:{std:g}"] = (images + rng.normal(0.0, std, images.shape)).astype(np.float32)
    directions = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.int32)
    pick = rng.integers(0, 4, len(images))
    for t in shifts:
        out[f"shift:{t}"] = np.asarray(
            augment.translate(jnp.asarray(images), jnp.asarray(directions[pick] * t))
        )
    return out


def welch(a, b) -> dict:
    """Welch's two-sided t-test of mean(a) vs mean(b) (scipy), with the difference."""
    from scipy import stats

    t, pvalue = stats.ttest_ind(a, b, equal_var=False)
    return {"difference": statistics.fmean(a) - statistics.fmean(b), "t": float(t), "p": float(pvalue)}


def mean_std(values) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def pooling_runs(args, ds, epochs: int, seeds: list) -> tuple[list, dict]:
    """Train every variant for every seed; returns the rows and the first max net (for claim 3)."""
    variants = args.variants.split(",")
    n_train = len(ds.train.labels)
    steps = epochs * (n_train // args.batch_size)
    optimizer = optax.adam(optax.cosine_decay_schedule(args.lr, steps))  # one object: one compile per variant
    test_x, test_y = ds.test.images, ds.test.labels
    k = min(args.robust_subset, len(test_y))
    robust = perturbed_sets(test_x[:k], args.noise, args.shifts, seed=12345)
    first_max = None
    rows = []
    for variant in variants:
        model = small_vgg(ds.num_classes, ds.image_shape, widths=tuple(args.widths), downsample=variant,
                          hidden=128, drop_rate=0.0)  # fmt: skip
        table = summary(model, ds.image_shape)
        eval_step = train.make_eval_step(model)
        runs = []
        for seed in seeds:
            result = train.fit(model, optimizer, ds, epochs=epochs, batch_size=args.batch_size, seed=seed,
                               progress=False)  # fmt: skip
            state = result.state
            if variant == "max" and first_max is None:
                first_max = {"model": model, "state": state, "source": f"max net of this run, seed {seed}"}
            train_acc = train.evaluate(eval_step, state, *ds.train)["accuracy"]
            test_acc = result.history[-1]["test_accuracy"]
            scores = {
                name: train.evaluate(eval_step, state, x, test_y[:k])["accuracy"]
                for name, x in robust.items()
            }
            runs.append({
                "seed": seed, "test_accuracy": test_acc, "train_accuracy": train_acc, "gap": train_acc - test_acc,
                "robust": scores, "train_time_s": sum(h["train_time_s"] for h in result.history),
            })  # fmt: skip
            print(f"  {variant:<8} seed {seed}: test {test_acc:.4f}  train {train_acc:.4f}  "
                  + "  ".join(f"{n} {v:.3f}" for n, v in scores.items() if n != "clean")
                  + f"  ({runs[-1]['train_time_s']:.0f}s)", flush=True)  # fmt: skip
        rows.append({
            "variant": variant, "model": repr(model), "params": table.totals["params"],
            "flops": table.totals["flops"], "runs": runs,
            "test_accuracy": mean_std([r["test_accuracy"] for r in runs]),
            "gap": mean_std([r["gap"] for r in runs]),
            "robust": {name: mean_std([r["robust"][name] for r in runs]) for name in robust},
        })  # fmt: skip
    return rows, first_max


def drop(run: dict, name: str) -> float:
    """Accuracy a run loses under the perturbation ``name``: its sensitivity to it."""
    return run["robust"]["clean"] - run["robust"][name]


def compare(rows: list) -> dict:
    """Each variant vs max: Welch tests on test accuracy, the gap and the accuracy lost under
    each perturbation (``drop``: a positive difference means the variant is more sensitive)."""
    base = next(r for r in rows if r["variant"] == "max")
    out = {}
    for r in rows:
        if r is base:
            continue
        tests = {
            "test_accuracy": welch([x["test_accuracy"] for x in r["runs"]], [x["test_accuracy"] for x in base["runs"]]),
            "gap": welch([x["gap"] for x in r["runs"]], [x["gap"] for x in base["runs"]]),
        }  # fmt: skip
        for name in r["robust"]:
            if name != "clean":
                tests[name] = welch([drop(x, name) for x in r["runs"]], [drop(x, name) for x in base["runs"]])
        out[r["variant"]] = tests
    return out


ALPHA = 0.05  # significance level of the verdicts


def significant(test: dict, sign: int) -> bool:
    """Whether a Welch test found a significant difference of the given sign (+1 or -1)."""
    return test["p"] < ALPHA and test["difference"] * sign > 0


def verdicts(tests: dict) -> dict:
    """Plain-words verdicts of claims 11 and 12 from the tests."""

    def said(variant, key, subject):
        t = tests[variant][key]
        sign = "higher" if t["difference"] > 0 else "lower"
        sig = "significant" if t["p"] < ALPHA else "not significant"
        return f"{subject} {abs(t['difference']):.4f} {sign} than max (p = {t['p']:.3g}, {sig})"

    out = {}
    strided = [v for v in ("strided", "conv") if v in tests]
    if strided:
        worse = [v for v in strided if significant(tests[v]["test_accuracy"], -1)]
        out["claim_12"] = {
            "supported": not worse,
            "text": "; ".join(said(v, "test_accuracy", v) for v in strided)
            + (". Supported: no strided variant is significantly worse than max pooling." if not worse
               else f". Not supported for {', '.join(worse)}: significantly worse than max pooling."),
        }  # fmt: skip
    if "none" in tests:
        t = tests["none"]
        perturbed = [k for k in t if k.startswith(("noise:", "shift:"))]
        less_robust = [k for k in perturbed if significant(t[k], +1)]
        more_robust = [k for k in perturbed if significant(t[k], -1)]
        out["claim_11"] = {
            "overfitting": said("none", "gap", "the no-downsampling net's train-test gap is"),
            "sensitivity": "; ".join(
                f"{k}: loses {t[k]['difference']:+.4f} vs max (p = {t[k]['p']:.3g})" for k in perturbed
            ),
            "more_sensitive_without_pooling": less_robust,
            "less_sensitive_without_pooling": more_robust,
            "supported_overfitting": significant(t["gap"], +1),
            "supported_noise_or_shift": bool(less_robust),
        }
    return out


# ---------------------------------------------------------------------------------------------
# Claim 3.


def load_record(path: str, ds):
    """The params and state of a ``train.py --model small_vgg`` run folder, or None."""
    if not os.path.isdir(os.path.join(path, train.CHECKPOINT_DIR)):
        return None
    from jcnn.train.checkpoint import CheckpointStore

    store = CheckpointStore(os.path.join(path, train.CHECKPOINT_DIR), create=False)
    try:
        identity = store.read_meta()["identity"]  # the newest checkpoint's run identity
    finally:
        store.close()
    if identity.get("input_shape") != list(ds.image_shape):
        return None
    model = small_vgg(ds.num_classes, ds.image_shape)
    if identity.get("model") != repr(model):
        return None
    # The optimizer's structure only: the checkpoint holds its state, which is not used here.
    schedule = (
        optax.warmup_cosine_decay_schedule(0.0, 1.0, 1, 2)
        if identity.get("warmup_epochs")
        else optax.cosine_decay_schedule(1.0, 2)
    )
    opt = (
        optax.adamw(schedule, weight_decay=1.0)
        if identity.get("optimizer") == "adamw"
        else optax.adam(schedule)
    )
    template = train.init_state(model, opt, 0, ds.image_shape)
    ckpt = train.load_checkpoint(path, template)
    return {"model": model, "state": ckpt.state, "source": f"{path} (epoch {ckpt.epoch}, test accuracy "
            f"{ckpt.history[-1]['test_accuracy']:.4f})"}  # fmt: skip


def stage_outputs(model, state, x) -> list:
    """The ReLU outputs after each conv (the spatial ones), in order: ``[(child index, array)]``."""
    outs, h = [], jnp.asarray(x)
    for i, ((_, child), p, s) in enumerate(zip(model.children, state.params, state.model_state)):
        h, _ = batched(child).apply(p, s, h, train=False)
        if child.name == "Relu" and h.ndim == 4:
            outs.append((i, h))
    return outs


def selectivity(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class selectivity per channel of ``(n, c)`` features: (best class mean - mean of the rest) / sum."""
    means = np.stack([features[labels == k].mean(0) for k in range(num_classes)])  # (classes, c)
    best = means.max(0)
    rest = (means.sum(0) - best) / (num_classes - 1)
    return (best - rest) / np.maximum(best + rest, 1e-12)


def nearest_mean_accuracy(train_f, train_y, test_f, test_y, num_classes: int) -> float:
    """Accuracy of the nearest class mean (standardised features) on the test features."""
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    a, b = (train_f - mu) / sd, (test_f - mu) / sd
    centres = np.stack([a[train_y == k].mean(0) for k in range(num_classes)])
    d = ((b[:, None, :] - centres[None]) ** 2).sum(-1)
    return float((d.argmin(1) == test_y).mean())


def top_patches(images, act, rf, channels, per_channel: int) -> list:
    """For each channel, the receptive-field patches of its ``per_channel`` largest activations
    (one per image). ``rf``: per spatial dim ``{size, jump, start}``; ``start`` is the centre
    of output position 0 in input pixels."""
    size_y, size_x = rf[0]["size"], rf[1]["size"]
    pad = max(size_y, size_x)
    padded = np.pad(images[..., 0], ((0, 0), (pad, pad), (pad, pad)))
    n, h, w, _ = act.shape
    out = []
    for c in channels:
        a = act[..., c].reshape(n, -1)
        best_pos = a.argmax(1)
        order = np.argsort(-a.max(1))[:per_channel]
        patches = []
        for i in order:
            oy, ox = divmod(int(best_pos[i]), w)
            cy = rf[0]["start"] + oy * rf[0]["jump"]
            cx = rf[1]["start"] + ox * rf[1]["jump"]
            top = int(np.floor(cy - (size_y - 1) / 2)) + pad
            left = int(np.floor(cx - (size_x - 1) / 2)) + pad
            patches.append(padded[i, top : top + size_y, left : left + size_x])
        out.append(patches)
    return out


def features_part(record, ds, n_images: int) -> dict:
    model, state = record["model"], record["state"]
    table = summary(model, ds.image_shape)
    n = min(n_images, len(ds.test.labels))
    test_x, test_y = ds.test.images[:n], ds.test.labels[:n]
    m = min(n_images, len(ds.train.labels))
    train_x, train_y = ds.train.images[:m], ds.train.labels[:m]
    test_outs, train_outs = stage_outputs(model, state, test_x), stage_outputs(model, state, train_x)
    layers = []
    for (i, act), (_, tr) in zip(test_outs, train_outs):
        act, tr = np.asarray(act), np.asarray(tr)
        pooled, tr_pooled = act.max((1, 2)), tr.max((1, 2))
        si = selectivity(pooled, test_y, ds.num_classes)
        rf = table.rows[i]["receptive_field"]
        layers.append({
            "index": i, "path": table.rows[i]["path"], "shape": list(act.shape[1:]), "rf_size": rf[0]["size"],
            "selectivity_median": float(np.median(si)), "selectivity_mean": float(si.mean()),
            "fraction_selective": float((si > 0.5).mean()), "selectivity": si.tolist(),
            "nearest_mean_accuracy": nearest_mean_accuracy(tr_pooled, train_y, pooled, test_y, ds.num_classes),
            "_act": act, "_rf": rf,
        })  # fmt: skip
    for which in (layers[0], layers[-1]):
        si = np.asarray(which["selectivity"])
        channels = [int(c) for c in np.argsort(-si)[:6]]  # the most class-selective channels
        which["patch_channels"] = channels
        which["_patches"] = top_patches(test_x, which["_act"], which["_rf"], channels, per_channel=8)
        counts = [np.bincount(test_y[np.argsort(-which["_act"][..., c].max((1, 2)))[:8]], minlength=ds.num_classes)
                  for c in channels]  # fmt: skip
        # How many of each channel's top-8 images share its most common class.
        which["top8_same_class"] = [int(c.max()) for c in counts]
    return {"source": record["source"], "images": n, "layers": layers}


# ---------------------------------------------------------------------------------------------
# Figures.


def plot_pooling(path, rows, noise, shifts, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), constrained_layout=True)
    names = [r["variant"] for r in rows]
    ax = axes[0]
    ax.bar(names, [r["test_accuracy"]["mean"] for r in rows], yerr=[r["test_accuracy"]["std"] for r in rows],
           capsize=4, color=[f"C{i}" for i in range(len(rows))])  # fmt: skip
    accs = [x["test_accuracy"] for r in rows for x in r["runs"]]
    for i, r in enumerate(rows):
        ax.plot([i] * len(r["runs"]), [x["test_accuracy"] for x in r["runs"]], "k.", ms=4)
    spread = max(accs) - min(accs) + 1e-3
    ax.set_ylim(max(0.0, min(accs) - 1.5 * spread), min(1.0, max(accs) + 0.5 * spread))
    ax.set_title("test accuracy (mean ± std, dots: seeds)", fontsize=9)
    ax = axes[1]
    ax.bar(names, [r["gap"]["mean"] for r in rows], yerr=[r["gap"]["std"] for r in rows], capsize=4,
           color=[f"C{i}" for i in range(len(rows))])  # fmt: skip
    ax.set_title("train − test accuracy (overfitting)", fontsize=9)
    for ax, key, xs, label in (
        (axes[2], "noise", noise, "Gaussian noise std"),
        (axes[3], "shift", shifts, "shift, pixels"),
    ):
        for i, r in enumerate(rows):
            lost = [[0.0] * len(r["runs"])] + [[drop(x, f"{key}:{v:g}") for x in r["runs"]] for v in xs]
            ax.errorbar([0, *xs], [statistics.fmean(v) for v in lost], yerr=[statistics.pstdev(v) for v in lost],
                        marker="o", ms=3, capsize=3, label=r["variant"], color=f"C{i}")  # fmt: skip
        ax.set_xlabel(label)
        ax.set_title(f"test accuracy lost under {key} (sensitivity)", fontsize=9)
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def montage(rows: list) -> np.ndarray:
    """Equal-sized patches in a grid, rows of ``rows``, with a 1-pixel grey border between them."""
    h, w = rows[0][0].shape
    grid = np.full((len(rows) * (h + 1) + 1, len(rows[0]) * (w + 1) + 1), 0.5, np.float32)
    for r, patches in enumerate(rows):
        for c, patch in enumerate(patches):
            grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = patch
    return grid


def plot_features(path, result, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = result["layers"]
    fig = plt.figure(figsize=(15, 6.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 3, width_ratios=[1.2, 1.2, 1])
    for col, which, name in ((0, layers[0], "first conv"), (1, layers[-1], "last conv")):
        ax = fig.add_subplot(grid[:, col])
        ax.imshow(montage(which["_patches"]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        size = which["_patches"][0][0].shape[0] + 1
        ax.set_yticks([size * (r + 0.5) for r in range(len(which["_patches"]))],
                      [f"ch {c}" for c in which["patch_channels"]], fontsize=8)  # fmt: skip
        ax.set_xticks([])
        ax.set_title(f"{name} (RF {which['rf_size']}x{which['rf_size']}): its 6 most class-selective channels,\n"
                     f"the input patches of their 8 strongest activations (one row per channel)", fontsize=9)  # fmt: skip
    ax = fig.add_subplot(grid[0, 2])
    rf = [f"{layer['rf_size']}" for layer in layers]
    ax.boxplot([layer["selectivity"] for layer in layers], showfliers=False)
    ax.set_xticks(range(1, len(layers) + 1), rf)
    ax.set_xlabel("receptive field size of the conv layer (pixels)")
    ax.set_title("class selectivity of its channels", fontsize=9)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[1, 2])
    ax.plot(range(1, len(layers) + 1), [layer["nearest_mean_accuracy"] for layer in layers], "o-")
    ax.set_xticks(range(1, len(layers) + 1), rf)
    ax.set_xlabel("receptive field size of the conv layer (pixels)")
    ax.set_title("nearest-class-mean accuracy on its channel maxima", fontsize=9)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def run_pooling(args, ds, epochs: int, seeds: list) -> tuple[dict, dict, str]:
    """Claims 11 and 12: train, test, print; returns the JSON part, the first max net and the PNG."""
    n_train = len(ds.train.labels)
    print("claims 11 and 12: how a stage downsamples")
    rows, first_max = pooling_runs(args, ds, epochs, seeds)
    tests = compare(rows)
    words = verdicts(tests)
    print(f"\n{'variant':<8} {'params':>8} {'test accuracy':>17} {'train-test gap':>17}  "
          + "  ".join(f"{k:>13}" for k in rows[0]["robust"] if k != "clean"))  # fmt: skip
    for r in rows:
        print(f"{r['variant']:<8} {r['params']:>8,} {r['test_accuracy']['mean']:>8.4f} ± {r['test_accuracy']['std']:.4f}"
              f" {r['gap']['mean']:>8.4f} ± {r['gap']['std']:.4f}  "
              + "  ".join(f"{v['mean']:.3f} ± {v['std']:.3f}" for k, v in r["robust"].items() if k != "clean"))  # fmt: skip
    for variant, t in tests.items():
        print(
            f"{variant} vs max (Welch): "
            + ", ".join(f"{k} {v['difference']:+.4f} (p {v['p']:.3g})" for k, v in t.items())
        )
    for claim, v in words.items():
        print(f"{claim}: {v}")
    png = os.path.join(args.out, "claims_pooling.png")
    plot_pooling(png, rows, args.noise, args.shifts,
                 f"Claims 11-12: small_vgg{tuple(args.widths)} on {ds.name} ({n_train} train images, {epochs} epochs,"
                 f" {len(seeds)} seeds), by how each stage downsamples")  # fmt: skip
    part = {"train_size": n_train, "epochs": epochs, "seeds": seeds, "widths": list(args.widths), "rows": rows,
            "tests": tests, "verdicts": words}  # fmt: skip
    return part, first_max, png


def run_features(args, ds, first_max) -> tuple[dict, str]:
    """Claim 3 on the record net (or ``first_max``); returns the JSON part and the PNG."""
    print("\nclaim 3: what the layers of a trained net respond to")
    record = None if args.quick else load_record(args.record, ds)
    if record is None and first_max is None:
        sys.exit(f"claims_at_scale.py: --part features needs --record, a train.py run folder of small_vgg on "
                 f"{ds.name} (got {args.record!r}, which holds none)")  # fmt: skip
    features = features_part(record or first_max, ds, n_images=2000)
    print(f"net: {features['source']}")
    for layer in features["layers"]:
        print(f"  {layer['path']:<11} RF {layer['rf_size']:>2}x{layer['rf_size']:<2} {str(tuple(layer['shape'])):<14}"
              f" selectivity median {layer['selectivity_median']:.3f}, {layer['fraction_selective']:.0%} of channels > 0.5;"
              f" nearest-class-mean accuracy {layer['nearest_mean_accuracy']:.3f}")  # fmt: skip
    first, last = features["layers"][0], features["layers"][-1]
    print(
        f"  top-8 images of the 6 most selective channels sharing one class: first conv "
        f"{first['top8_same_class']}, last conv {last['top8_same_class']}"
    )
    png = os.path.join(args.out, "claims_features.png")
    plot_features(png, features, f"Claim 3: {features['source']}")
    for layer in features["layers"]:
        for k in [k for k in layer if k.startswith("_")]:
            del layer[k]
    return features, png


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if args.quick:
        args.widths, args.seeds, args.noise, args.shifts = (4, 8), 2, (0.2,), (1, 2)
    epochs = args.epochs or (2 if args.quick else 6)
    seeds = list(range(args.seed, args.seed + args.seeds))
    ds = load(args)
    result = {"dataset": ds.name, "test_size": len(ds.test.labels)}
    pngs, first_max = [], None
    if args.part in ("all", "pooling"):
        print(f"{ds.name}: {len(ds.train.labels)} train / {len(ds.test.labels)} test images; small_vgg widths"
              f" {tuple(args.widths)}, {epochs} epochs x {len(ds.train.labels) // args.batch_size} steps of"
              f" {args.batch_size}, adam lr {args.lr} cosine, no augmentation or dropout; seeds {seeds}", flush=True)  # fmt: skip
        part, first_max, png = run_pooling(args, ds, epochs, seeds)
        result.update(part)
        pngs.append(png)
    if args.part in ("all", "features"):
        result["features"], png = run_features(args, ds, first_max)
        pngs.append(png)
    elapsed = time.perf_counter() - t_start
    result.update({"elapsed_s": elapsed, "args": vars(args), "jax": jax.__version__})
    name = NAME if args.part == "all" else f"claims_{args.part}"
    path = os.path.join(args.out, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        for png in pngs:
            shutil.copy(png, args.figures)
    print(f"wrote {path} and {' and '.join(pngs)} ({elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
