"""The seed's shape arithmetic, line by line: each number computed by `jcnn.shapes` and checked
against the shape a real op gives on a real array (a crop of scikit-learn's ``china.jpg``).

    python experiments/shapes_walkthrough.py            # ~10 s; prints the table, writes JSON
    python experiments/shapes_walkthrough.py --quick    # the same checks (they are all cheap)

Writes ``shapes_walkthrough.json`` into ``--out`` (default ``runs/shapes_walkthrough``). Exits 1
if any computed number disagrees with the seed or with the op. No figure: the numbers are it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jcnn import ops, shapes
from jcnn.layers import Conv, Dense, MaxPool, Relu, serial
from jcnn.summary import summary

NAME = "shapes_walkthrough"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the random filters")
    p.add_argument("--out", default=os.path.join("runs", NAME), help="folder for the JSON")
    p.add_argument(
        "--figures", default=None, help="unused (this script draws no figure); accepted for uniformity"
    )
    p.add_argument(
        "--quick", action="store_true", help="same checks (all are cheap); kept for the smoke test"
    )
    return p.parse_args(argv)


def photo() -> np.ndarray:
    """``china.jpg`` as float32 in [0, 1], (427, 640, 3)."""
    from sklearn.datasets import load_sample_image

    return load_sample_image("china.jpg").astype(np.float32) / 255.0


class Table:
    """Rows of (claim, seed's value, jcnn.shapes value, real op's value, agree?)."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, claim: str, seed, computed, op, note: str = "") -> None:
        ok = computed == seed and (op is None or op == seed)
        self.rows.append({"claim": claim, "seed": seed, "shapes": computed, "op": op, "ok": ok, "note": note})

    def __str__(self) -> str:
        def s(v):
            if v is None:
                return "-"
            return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

        cells = [
            (r["claim"], s(r["seed"]), s(r["shapes"]), s(r["op"]), "ok" if r["ok"] else "MISMATCH")
            for r in self.rows
        ]
        head = ("claim", "seed says", "jcnn.shapes", "real op", "")
        widths = [max(len(c[i]) for c in cells + [head]) for i in range(5)]
        line = lambda c: "  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip()  # noqa: E731
        rule = "-" * len(line(head))
        return "\n".join([rule, line(head), rule, *map(line, cells), rule])


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    def filters(*shape):
        # NumPy, not jax.random: an eager jax.random call compiles once per shape (seconds each).
        return jnp.asarray(rng.standard_normal(shape, np.float32) / math.sqrt(math.prod(shape[:-1])))

    img = photo()
    gray = img.mean(axis=-1, keepdims=True)
    x32 = jnp.asarray(img[200:232, 300:332])  # a 32x32x3 crop of a real photo
    x7 = jnp.asarray(gray[200:207, 300:307])  # a 7x7x1 crop
    t = Table()
    notes: list[str] = []

    # 2. A 5x5x3 filter on a 32x32x3 image.
    one = shapes.conv_output_shape((32, 32), (5, 5)) + (1,)
    a1 = ops.conv(x32, filters(5, 5, 3, 1))
    t.add("32x32x3 * one 5x5x3 filter", (28, 28, 1), one, a1.shape)
    four = shapes.conv_output_shape((32, 32), (5, 5)) + (4,)
    a4 = jax.nn.relu(ops.conv(x32, filters(5, 5, 3, 4)))
    t.add("32x32x3 * four 5x5x3 filters", (28, 28, 4), four, a4.shape)
    # 3. Stacking: ten 5x5x4 filters on the 28x28x4 map.
    ten = shapes.conv_output_shape(four[:2], (5, 5)) + (10,)
    a10 = ops.conv(a4, filters(5, 5, 4, 10))
    t.add("28x28x4 * ten 5x5x4 filters", (24, 24, 10), ten, a10.shape)

    # 5. Stride on a 7x7 input with a 3x3 filter.
    k3 = filters(3, 3, 1, 1)
    for s, want in ((1, 5), (2, 3)):
        got = shapes.conv_output_size(7, 3, stride=s)
        t.add(f"7x7 * 3x3, stride {s}", (want, want), (got, got), ops.conv(x7, k3, strides=s).shape[:2])
    fit = shapes.explain_fit(7, 3, 3)
    t.add("7x7 * 3x3, stride 3: fits?", False, fit.fits, None, fit.message)
    t.add("  ... seed's (7-3)/3+1", 2.33, round(fit.exact_output, 2), None)
    t.add(
        "  ... what frameworks give (floor)",
        (2, 2),
        (fit.output_size,) * 2,
        ops.conv(x7, k3, strides=3).shape[:2],
    )
    t.add("  ... input pixels never read", 1, fit.unused, None)
    try:
        shapes.conv_output_size(7, 3, stride=3, exact=True)
        raised = "no error"
    except shapes.ShapeError as e:
        raised = "ShapeError"
        notes.append(f"conv_output_size(7, 3, stride=3, exact=True) raises ShapeError: {e}")
    t.add("  ... exact=True", "ShapeError", raised, None)
    pad_fix, out_fix = fit.paddings[0]
    t.add(
        f"  ... fix: padding {pad_fix}, stride 3",
        (3, 3),
        (shapes.conv_output_size(7, 3, 3, pad_fix),) * 2,
        ops.conv(x7, k3, strides=3, padding=pad_fix).shape[:2],
    )
    t.add("  ... fixed fits?", True, shapes.explain_fit(7, 3, 3, pad_fix).fits, None)

    # 6. The output formula (W - F + 2P)/S + 1 on a few classic layers.
    formula_rows = []
    for w, f, s, p, what in (
        (32, 5, 1, 0, "5x5 valid"),
        (32, 5, 1, 2, "5x5, P=(F-1)/2 keeps the size"),
        (7, 3, 1, 1, "3x3, P=1 keeps the size"),
        (227, 11, 4, 0, "AlexNet conv1"),
        (224, 7, 2, 3, "ResNet stem"),
    ):
        by_hand = (w - f + 2 * p) / s + 1
        got = shapes.conv_output_size(w, f, s, p)
        op = ops.conv(jnp.asarray(gray[:w, :w]), filters(f, f, 1, 1), strides=s, padding=p).shape[0]
        # Where the formula is not whole, every framework floors it: the seed's value is the floor.
        note = "" if by_hand == int(by_hand) else shapes.explain_fit(w, f, s, p).message
        t.add(f"({w} - {f} + 2*{p})/{s} + 1 = {by_hand:g}  [{what}]", math.floor(by_hand), got, op, note)
        if note:
            notes.append(f"{what}: {note}")
        formula_rows.append({"W": w, "F": f, "S": s, "P": p, "by_hand": by_hand, "shapes": got, "op": op})

    # 7. Parameters: 10 filters 5x5x3 vs a fully-connected 32x32x3 -> 32x32x10.
    conv_p = shapes.conv_params(5, 3, 10)
    layer_p = _param_count(Conv(10, 5, padding=2), (32, 32, 3))
    t.add("params: ten 5x5x3 filters + biases", 760, conv_p, layer_p, "op column: Conv(10, 5).init, counted")
    fc_p = shapes.dense_params(32 * 32 * 3, 32 * 32 * 10)
    fc_layer_p = _param_count(Dense(32 * 32 * 10), (32 * 32 * 3,))  # abstract: 126 MB never allocated
    t.add(
        "params: FC 32x32x3 -> 32x32x10", 31_467_520, fc_p, fc_layer_p, "op column: Dense.init via eval_shape"
    )
    ratio = fc_p / conv_p

    # Multiply-adds of the padded conv: the seed-style count, the summary's FLOPs, XLA's own count.
    macs = shapes.conv_flops((32, 32), 5, 3, 10, bias=False) // 2
    t.add("MACs: 10 filters 5x5x3 -> 32x32 (P=2)", 768_000, macs, None)
    summ = summary(Conv(10, 5, padding=2), (32, 32, 3))
    summary_flops = summ.totals["flops"]
    t.add("  ... summary FLOPs (2/MAC + bias adds)", 2 * 768_000 + 32 * 32 * 10, summary_flops, None)
    xla_flops = _xla_flops(lambda x, k: ops.conv(x, k, padding=2, impl="xla"), x32, filters(5, 5, 3, 10))
    inside = sum(min(i + 2, 31) - max(i - 2, 0) + 1 for i in range(32)) ** 2 * 3 * 10  # taps on real pixels
    t.add("  ... XLA cost analysis MACs (real pixels only)", inside, int(xla_flops) // 2, None)
    notes.append(
        f"XLA's cost analysis counts {int(xla_flops) // 2:,} MACs for the padded conv: it skips the"
        f" {768_000 - inside:,} taps that land on the zero padding; the seed-style count"
        f" (every output x every tap) is 768,000."
    )
    fc_macs = shapes.dense_flops(32 * 32 * 3, 32 * 32 * 10, bias=False) // 2
    t.add("MACs: the FC equivalent", 31_457_280, fc_macs, None)

    # 8. 1x1 conv: 56x56x64 -> 56x56x32.
    # A real 56x56x64 map: 64 filters over a crop of the photo.
    feat = jax.nn.relu(ops.conv(jnp.asarray(img[100:156, 100:156]), filters(3, 3, 3, 64), padding=1))
    y11 = ops.conv(feat, filters(1, 1, 64, 32))
    t.add(
        "1x1 conv: 56x56x64 -> 32 filters",
        (56, 56, 32),
        shapes.conv_output_shape((56, 56), (1, 1)) + (32,),
        y11.shape,
    )
    t.add(
        "  ... its params",
        64 * 32 + 32,
        shapes.conv_params(1, 64, 32),
        _param_count(Conv(32, 1), (56, 56, 64)),
    )

    # 11. Pooling: output size by the same formula, no parameters.
    feat224 = jax.nn.relu(ops.conv(jnp.asarray(img[100:324, 200:424]), filters(3, 3, 3, 64), padding=1))
    t.add(
        "max pool 2x2/2: 224x224x64",
        (112, 112, 64),
        shapes.pool_output_shape((224, 224), (2, 2)) + (64,),
        ops.max_pool(feat224, 2).shape,
    )
    t.add(
        "avg pool 2x2/2: 28x28x4",
        (14, 14, 4),
        shapes.pool_output_shape((28, 28), (2, 2)) + (4,),
        ops.avg_pool(a4, 2).shape,
    )
    t.add(
        "max pool 3x3/2: 7x7",
        (3, 3),
        shapes.pool_output_shape((7, 7), (3, 3), 2),
        ops.max_pool(x7, 3, 2).shape[:2],
    )
    t.add(
        "  ... pooling params",
        0,
        summary(MaxPool(2), (224, 224, 64)).totals["params"],
        _param_count(MaxPool(2), (224, 224, 64)),
    )

    # 9. K, F, S, P set a conv layer: the seed's stack, as jcnn.summary shows it.
    stack = serial(Conv(4, 5), Relu(), Conv(10, 5))
    table = summary(stack, (32, 32, 3))
    t.add("summary: Conv(4,5)-Relu-Conv(10,5) on 32x32x3", (24, 24, 10), table.totals["output_shape"], None)
    t.add(
        "  ... its params (4*76 + 10*101)",
        4 * 76 + 10 * 101,
        table.totals["params"],
        _param_count(stack, (32, 32, 3)),
    )

    elapsed = time.perf_counter() - t_start
    print(t)
    print(f"\nexplain_fit(7, 3, stride=3):\n  {fit.message}")
    for n in notes:
        print(f"\n{n}")
    print(f"\nparameter ratio FC / conv: {fc_p:,} / {conv_p:,} = {ratio:,.0f}x")
    print(f"\nthe seed's stack, per jcnn.summary:\n{table}")
    bad = [r for r in t.rows if not r["ok"]]
    print(f"\n{len(t.rows) - len(bad)}/{len(t.rows)} checks agree with the seed ({elapsed:.1f}s)")

    result = {
        "rows": t.rows,
        "formula": formula_rows,
        "explain_fit_7_3_3": fit.message,
        "conv_params": conv_p,
        "fc_params": fc_p,
        "fc_over_conv": ratio,
        "conv_macs_seed": macs,
        "conv_macs_xla": int(xla_flops) // 2,
        "summary_flops": summary_flops,
        "fc_macs": fc_macs,
        "notes": notes,
        "all_ok": not bad,
        "seed": args.seed,
        "elapsed_s": elapsed,
    }
    path = os.path.join(args.out, f"{NAME}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=_jsonable)
    print(f"wrote {path}")
    return 0 if not bad else 1


def _param_count(layer, input_shape) -> int:
    """Elements of the params ``layer.init`` creates, traced abstractly (nothing allocated)."""
    params = jax.eval_shape(lambda k: layer.init(k, input_shape)[1], jax.random.key(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def _xla_flops(fn, *args) -> float:
    """XLA's own FLOP count of ``fn(*args)`` (its HLO cost analysis)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def _jsonable(v):
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
