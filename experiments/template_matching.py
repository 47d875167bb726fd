"""Finding an eye with a filter: a patch cut from a real photo, used as the filter of a normalised
cross-correlation built on `jcnn.ops.conv`, peaks where the patch came from, also after
Gaussian noise and a brightness/contrast change.

The photo is matplotlib's bundled ``grace_hopper.jpg`` (600x512, grayscale here); the template
is her left eye (as seen), 21x31 pixels. Normalised cross-correlation (NCC) at each window::

    ncc = sum(x * t_hat) / sqrt(sum(x^2) - sum(x)^2 / n),   t_hat = (t - mean t) / |t - mean t|

is three convolutions: the zero-mean unit-norm template, and a ones kernel over ``x`` and
``x^2`` for each window's mean and energy. The plain convolution with the raw template (what
one conv layer computes) is shown beside it.

    python experiments/template_matching.py            # full resolution, ~15 s
    python experiments/template_matching.py --quick    # half resolution

Writes ``template_matching.json`` and ``template_matching.png`` into ``--out`` (default
``runs/template_matching``); ``--figures DIR`` also copies the PNG there.
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

from jcnn import ops

NAME = "template_matching"
# Her left eye (as seen) in the full-resolution photo: window top-left (row, col) and size (h, w).
EYE = (180, 205)
EYE_SIZE = (21, 31)
OTHER_EYE_CENTRE = (187, 302)  # the other eye's centre (row, col), judged by eye


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the Gaussian noise")
    p.add_argument("--out", default=os.path.join("runs", NAME), help="folder for the JSON and PNG")
    p.add_argument("--figures", default=None, help="also copy the PNG here (RESULTS.md: experiments/figures)")
    p.add_argument("--quick", action="store_true", help="half resolution")
    p.add_argument(
        "--noise", type=float, default=0.15, help="std of the added Gaussian noise (pixels in [0, 1])"
    )
    p.add_argument("--contrast", type=float, default=0.5, help="contrast factor of the intensity change")
    p.add_argument("--brightness", type=float, default=0.35, help="brightness offset of the intensity change")
    return p.parse_args(argv)


def load_photo(scale: int) -> np.ndarray:
    """``grace_hopper.jpg`` as grayscale float32 in [0, 1], (h, w, 1), downsampled by ``scale``."""
    import matplotlib.cbook as cbook
    import matplotlib.image as mimage

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        rgb = mimage.imread(f, format="jpg").astype(np.float32) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma
    if scale > 1:  # box-filter downsampling
        h, w = (gray.shape[0] // scale) * scale, (gray.shape[1] // scale) * scale
        gray = gray[:h, :w].reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
    return gray[..., None]


def ncc_map(image: jnp.ndarray, template: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """Normalised cross-correlation of every ``template``-sized window of ``image``, in [-1, 1].

    Args:
      image: ``(h, w, 1)``.
      template: ``(th, tw)``.

    Returns:
      ``(h - th + 1, w - tw + 1)``: entry ``(i, j)`` scores the window with top-left ``(i, j)``.
    """
    th, tw = template.shape
    n = th * tw
    t = template - jnp.mean(template)
    t_hat = (t / jnp.sqrt(jnp.sum(t * t))).reshape(th, tw, 1, 1)
    ones = jnp.ones((th, tw, 1, 1), image.dtype)
    num = ops.conv(image, t_hat)  # t_hat sums to 0, so the window's mean drops out
    s1 = ops.conv(image, ones)
    s2 = ops.conv(image * image, ones)
    energy = jnp.maximum(s2 - s1 * s1 / n, eps)  # n * the window's variance
    return (num / jnp.sqrt(energy))[..., 0]


def raw_map(image: jnp.ndarray, template: jnp.ndarray) -> jnp.ndarray:
    """What one conv layer computes with the patch as its filter: no normalisation."""
    th, tw = template.shape
    return ops.conv(image, template.reshape(th, tw, 1, 1))[..., 0]


def peaks(score: np.ndarray, k: int, radius: int) -> list[tuple[int, int, float]]:
    """The ``k`` best windows, each at least ``radius`` pixels (Chebyshev) from the ones before."""
    s = np.array(score, np.float64)
    out = []
    for _ in range(k):
        i, j = np.unravel_index(np.argmax(s), s.shape)
        out.append((int(i), int(j), float(s[i, j])))
        s[max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1] = -np.inf
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    scale = 2 if args.quick else 1
    photo = load_photo(scale)
    top, left = EYE[0] // scale, EYE[1] // scale
    th, tw = EYE_SIZE[0] // scale, EYE_SIZE[1] // scale
    template = photo[top : top + th, left : left + tw, 0].copy()
    other = (OTHER_EYE_CENTRE[0] // scale - th // 2, OTHER_EYE_CENTRE[1] // scale - tw // 2)
    rng = np.random.default_rng(args.seed)
    conditions = {
        "clean": photo,
        f"noise sd {args.noise:g}": np.clip(
            photo + rng.normal(0, args.noise, photo.shape).astype(np.float32), 0, 1
        ),
        f"{args.contrast:g}*x + {args.brightness:g}": args.contrast * photo + args.brightness,
    }
    print(f"photo {photo.shape[:2]}, template {template.shape} cut at top-left {(top, left)}; windows scored")
    print(
        f"{'condition':<18} {'method':<6} {'peak (row, col)':<16} {'error px':>8} {'score':>7}  {'2nd peak':<12} {'score':>7}"
    )
    results, maps = {}, {}
    radius = max(th, tw) // 2
    for name, img in conditions.items():
        x = jnp.asarray(img)
        for method, fn in (("ncc", ncc_map), ("raw", raw_map)):
            m = np.asarray(fn(x, jnp.asarray(template)))
            (i, j, v), (i2, j2, v2) = peaks(m, 2, radius)
            err = float(np.hypot(i - top, j - left))
            err2 = float(np.hypot(i2 - other[0], j2 - other[1]))
            results[f"{name} / {method}"] = {
                "condition": name,
                "method": method,
                "peak": [i, j],
                "peak_error_px": err,
                "peak_score": v,
                "second_peak": [i2, j2],
                "second_peak_score": v2,
                "second_peak_to_other_eye_px": err2,
                "margin": v - v2,
            }
            maps[(name, method)] = m
            print(
                f"{name:<18} {method:<6} {str((i, j)):<16} {err:>8.1f} {v:>7.3f}  {str((i2, j2)):<12} {v2:>7.3f}"
            )
    clean = maps[("clean", "ncc")]
    affine = maps[(list(conditions)[2], "ncc")]
    # NCC is invariant to x -> a*x + b (a > 0) wherever no pixel clips.
    affine_diff = float(np.max(np.abs(clean - affine)))
    print(f"max |NCC(clean) - NCC({list(conditions)[2]})| over the whole map: {affine_diff:.2e}")
    elapsed = time.perf_counter() - t0

    png = os.path.join(args.out, f"{NAME}.png")
    plot(png, conditions, template, maps, results, (top, left), (th, tw))
    summary = {
        "photo_shape": list(photo.shape),
        "template_top_left": [top, left],
        "template_shape": [th, tw],
        "other_eye_top_left": list(other),
        "results": results,
        "ncc_affine_max_abs_diff": affine_diff,
        "args": vars(args),
        "elapsed_s": elapsed,
    }
    path = os.path.join(args.out, f"{NAME}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        shutil.copy(png, args.figures)
    print(f"wrote {path} and {png} ({elapsed:.1f}s)")
    return 0


def plot(path, conditions, template, maps, results, true_tl, size) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    th, tw = size
    names = list(conditions)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.5), constrained_layout=True)
    ax = axes[0, 0]
    ax.imshow(conditions[names[0]][..., 0], cmap="gray", vmin=0, vmax=1)
    ax.add_patch(Rectangle((true_tl[1], true_tl[0]), tw, th, fill=False, ec="lime", lw=1.5))
    ax.set_title("photo; template cut from the green box", fontsize=9)
    ax = axes[0, 1]
    ax.imshow(template, cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"template (the filter), {th}x{tw}", fontsize=9)
    for k, name in enumerate(names[1:]):
        ax = axes[0, 2 + k]
        ax.imshow(conditions[name][..., 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"input: {name}", fontsize=9)
    row = [("raw", names[0])] + [("ncc", n) for n in names]
    for ax, (method, name) in zip(axes[1], row):
        m = maps[(name, method)]
        ax.imshow(m, cmap="magma")
        r = results[f"{name} / {method}"]
        i, j = r["peak"]
        ax.plot(j, i, "c+", ms=14, mew=2)
        if method == "ncc":
            i2, j2 = r["second_peak"]
            ax.plot(j2, i2, "x", color="yellow", ms=8, mew=1.5)
        ax.add_patch(Rectangle((true_tl[1] - 0.5, true_tl[0] - 0.5), 1, 1, fill=False, ec="lime", lw=1))
        label = "plain conv (raw patch)" if method == "raw" else "normalised cross-correlation"
        ax.set_title(f"{label}, {name}\npeak {tuple(r['peak'])}, {r['peak_error_px']:.0f} px off", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Finding an eye with a filter: response maps (window top-left); + peak, x second peak"
        " (>= half a template away), green = true location",
        fontsize=10,
    )
    fig.savefig(path, dpi=72)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
