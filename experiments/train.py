"""Train a CNN classifier and save its checkpoint, metrics and learning curves.

With no flags: LeNet on scikit-learn's 8x8 digits (no download), Adam with a cosine schedule,
about half a minute on two CPU cores, test accuracy about 0.98.

    python experiments/train.py
    python experiments/train.py --dataset fashion-mnist --model lenet --epochs 5
    python experiments/train.py --dataset cifar10 --data-dir ~/data --model allconv
    python experiments/train.py --dataset fashion-mnist --resume    # continue runs/fashion-mnist-lenet
    python experiments/train.py --resume --epochs 20 --override epochs   # extend a finished run

Writes into ``--out`` (default ``runs/<dataset>-<model>``): ``checkpoints/<epoch>/`` (orbax, after
every epoch, checksummed, with the run's identity; the last ``--keep`` kept), ``metrics.json``,
``metrics.csv`` and ``learning_curves.png``. Ctrl-C and ``--resume`` continue where the last
finished epoch left off, with identical results; a resume with other flags than the run's is
refused unless each changed field is named in ``--override``. One run per ``--out`` at a time.
With ``--checkpoint-every STEPS`` a checkpoint is also taken every STEPS updates within an epoch
(``checkpoints-mid/<step>/``), and ``--resume`` continues from there, bit for bit.
On several devices (GPUs, a TPU host, or ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
on a CPU) the batch is split over them. Several processes (one per host of a GPU cluster or a
TPU pod, or several on one machine) run the same command with ``--coordinator HOST:PORT
--num-processes N --process-id I`` (or under SLURM / Open MPI / Cloud TPU with none of them:
JAX detects the cluster); each reads its share of every batch, only process 0 prints and plots:

    # on one machine, two processes of two CPU devices each (one 4-device mesh over gloo):
    for i in 0 1; do XLA_FLAGS=--xla_force_host_platform_device_count=2 python experiments/train.py \
        --coordinator 127.0.0.1:12355 --num-processes 2 --process-id $i --no-progress & done; wait
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# The per-dataset defaults: (epochs, batch size, learning rate). Digits: 1438 training images,
# so small batches give enough steps; lenet reaches ~0.975-0.98 test accuracy in 15 epochs.
DEFAULTS = {
    "digits": (15, 32, 2e-3),
    "fashion-mnist": (4, 64, 1e-3),
    "mnist": (3, 64, 1e-3),
    "cifar10": (20, 64, 1e-3),
}


def _number(kind, minimum, *, strict=False):
    """An argparse type: a finite ``kind`` >= ``minimum`` (> when ``strict``), with a readable error."""
    op, word = (float.__gt__, ">") if strict else (float.__ge__, ">=")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or not op(float(value), float(minimum)):
            raise argparse.ArgumentTypeError(f"must be {word} {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder of the dataset's files (fashion-mnist: default $JCNN_DATA_DIR or "
        "/usr/share/datasets/fashion-mnist; required for mnist and cifar10)",
    )
    from jcnn.models import MODELS  # jcnn.models touches no device: jax.distributed may still start
    from jcnn.ops.conv import IMPLS as CONV_IMPLS

    p.add_argument("--model", choices=sorted(MODELS), default="lenet", help="a jcnn.models constructor")
    p.add_argument(
        "--epochs", type=_number(int, 0), default=None, help="default per dataset: " + _defaults_help(0)
    )
    p.add_argument(
        "--batch-size", type=_number(int, 1), default=None, help="default per dataset: " + _defaults_help(1)
    )
    p.add_argument(
        "--lr",
        type=_number(float, 0, strict=True),
        default=None,
        help="peak learning rate; default " + _defaults_help(2),
    )
    p.add_argument("--weight-decay", type=_number(float, 0), default=0.0, help="AdamW decoupled weight decay")
    p.add_argument(
        "--warmup-epochs", type=_number(float, 0), default=0.0, help="linear warm-up before the cosine decay"
    )
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--out", default=None, help="output folder; default runs/<dataset>-<model>")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from --out's newest checkpoint; give the same flags as the first run (the schedule spans --epochs)",
    )
    p.add_argument(
        "--override",
        nargs="+",
        default=[],
        metavar="FIELD",
        help="with --resume: run-identity fields allowed to differ from the checkpoint's, e.g. "
        "`--override epochs lr` (the refusal message names them)",
    )
    p.add_argument(
        "--keep", type=_number(int, 1), default=2, help="how many of the newest checkpoints to keep"
    )
    p.add_argument(
        "--checkpoint-every",
        type=_number(int, 1),
        default=None,
        metavar="STEPS",
        help="also checkpoint every STEPS updates within an epoch, so --resume continues mid-epoch",
    )
    p.add_argument(
        "--precision",
        choices=["default", "high", "highest"],
        default=None,
        help="matmul/conv precision of the steps (jax.default_matmul_precision); default: what JAX does "
        "(TF32 on recent NVIDIA GPUs, bf16 passes on TPU, full float32 on CPU)",
    )
    p.add_argument(
        "--augment",
        type=_augment_spec,
        default=None,
        metavar="SPEC",
        help="on-device augmentation of every training batch, comma-separated in order: crop[:PAD] "
        "(zero-pad PAD pixels, default 4, random crop back), flip (random left-right mirror), "
        "cutout[:SIZE] (zero a random SIZExSIZE square, default 8); e.g. --augment crop:2,flip",
    )
    p.add_argument(
        "--label-smoothing",
        type=_number(float, 0),
        default=0.0,
        metavar="A",
        help="label smoothing in [0, 1)",
    )
    p.add_argument(
        "--compute-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16: mixed precision (bf16 convs and matmuls, float32 params, optimizer state and loss)",
    )
    p.add_argument(
        "--conv-impl",
        choices=CONV_IMPLS,
        default=None,
        help="the impl every impl='auto' conv of the model uses in the train and eval steps "
        "(jcnn.ops.auto_as); default: auto's per-layer pick. --conv-impl xla --xla-cpu-ynn-off is the "
        "fastest LeNet/ResNet-8 step on a 2-core CPU (experiments/RESULTS.md)",
    )
    p.add_argument(
        "--xla-cpu-ynn-off",
        action="store_true",
        help="compile the train and eval steps with XLA CPU's classic convolutions instead of its "
        "YNNPACK fusions (jcnn.train.xla_cpu_ynn_off: per step, not process-wide; faster for small "
        "convnets on CPU, slower for depthwise and 3-D convs; experiments/RESULTS.md)",
    )
    p.add_argument(
        "--tta",
        choices=["flip"],
        default=None,
        help="also report the final test accuracy with test-time augmentation: flip = the mean of the "
        "probabilities of each image and its mirror (evaluation only; not part of the run's identity)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    many = p.add_argument_group(
        "several processes (one per host, or several on one machine)",
        "every process runs the same command with its own --process-id; without these flags, "
        "JAX's cluster auto-detection (SLURM, Open MPI, Cloud TPU) is used when its variables are set",
    )
    many.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
    many.add_argument("--num-processes", type=_number(int, 1), default=None, metavar="N")
    many.add_argument("--process-id", type=_number(int, 0), default=None, metavar="I")
    many.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run by JAX's cluster auto-detection alone (e.g. on a Cloud TPU "
        "pod slice, where no variable above need be set)",
    )
    many.add_argument(
        "--heartbeat-timeout",
        type=_number(int, 1),
        default=100,
        metavar="S",
        help="seconds without a heartbeat before a process is declared dead and the run stops",
    )
    args = p.parse_args(argv)
    if args.label_smoothing >= 1:
        p.error(f"--label-smoothing must be below 1, got {args.label_smoothing}")
    if args.override and not args.resume:
        p.error("--override only applies with --resume")
    multi = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in multi) and not all(v is not None for v in multi):
        p.error("--coordinator, --num-processes and --process-id go together")
    if args.distributed and args.coordinator is not None:
        p.error("--distributed (auto-detection) and --coordinator exclude each other")
    if args.process_id is not None and args.process_id >= args.num_processes:
        p.error(f"--process-id must be below --num-processes {args.num_processes}, got {args.process_id}")
    return args


#: --augment's names: (jcnn.augment function, its option, the option's default).
AUGMENTS = {
    "crop": ("random_crop", "padding", 4),
    "flip": ("random_flip", None, None),
    "cutout": ("cutout", "size", 8),
}


def _augment_spec(text: str) -> list:
    """Parse ``crop:2,flip`` into ``[("crop", 2), ("flip", None)]`` (argparse type)."""
    parts = []
    for item in text.split(","):
        name, _, value = item.strip().partition(":")
        if name not in AUGMENTS:
            raise argparse.ArgumentTypeError(
                f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTS)}"
            )
        option = AUGMENTS[name][1]
        if value and option is None:
            raise argparse.ArgumentTypeError(f"{name} takes no value, got {item!r}")
        if value:
            try:
                number = int(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name}:{value}: expected an integer") from None
            low = 0 if name == "crop" else 1  # a crop may pad nothing; a cutout erases at least a pixel
            if number < low:
                raise argparse.ArgumentTypeError(f"{name}:{value}: must be >= {low}")
        parts.append((name, int(value) if value else AUGMENTS[name][2]))
    return parts


def build_augment(spec: list | None):
    """The `jcnn.augment` pipeline of a parsed ``--augment`` (None without one)."""
    if not spec:
        return None
    import functools

    from jcnn import augment

    fns = []
    for name, value in spec:
        fn_name, option, _ = AUGMENTS[name]
        fn = getattr(augment, fn_name)
        fns.append(functools.partial(fn, **{option: value}) if option else fn)
    return fns[0] if len(fns) == 1 else augment.compose(*fns)


def join_processes(args) -> None:
    """``jax.distributed.initialize`` first thing (before any device is touched), when asked for."""
    from jcnn.train import distributed

    if args.coordinator is not None:
        distributed.initialize(
            args.coordinator, args.num_processes, args.process_id, heartbeat_timeout_s=args.heartbeat_timeout
        )
    elif args.distributed or distributed.cluster_detected():
        distributed.initialize(heartbeat_timeout_s=args.heartbeat_timeout)


def _defaults_help(i: int) -> str:
    return ", ".join(f"{name} {values[i]}" for name, values in DEFAULTS.items())


def load(dataset: str, data_dir: str | None):
    from jcnn import data

    if dataset == "digits":
        return data.load_digits()
    if dataset == "fashion-mnist":
        return data.load_fashion_mnist(data_dir)
    if data_dir is None:
        sys.exit(f"train.py: --dataset {dataset} needs --data-dir (the folder holding its files).")
    return data.load_mnist(data_dir) if dataset == "mnist" else data.load_cifar10(data_dir)


def plot_learning_curves(history: list, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in ((ax_loss, "loss", "cross-entropy loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, [row[f"train_{key}"] for row in history], "o-", label="train")
        test = [row[f"test_{key}"] for row in history]
        if any(v is not None for v in test):
            ax.plot(epochs, test, "s-", label="test")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    epochs, batch_size, lr = DEFAULTS[args.dataset]
    epochs = args.epochs if args.epochs is not None else epochs
    batch_size = args.batch_size if args.batch_size is not None else batch_size
    lr = args.lr if args.lr is not None else lr
    out = args.out or os.path.join("runs", f"{args.dataset}-{args.model}")

    join_processes(args)

    import jax
    import optax

    from jcnn import train
    from jcnn.models import MODELS
    from jcnn.summary import summary

    # Every process trains; only process 0 talks (and plots). Errors are printed by each.
    primary = jax.process_index() == 0
    say = print if primary else (lambda *a, **k: None)
    ds = load(args.dataset, args.data_dir)
    model = MODELS[args.model](ds.num_classes, ds.image_shape)
    say(
        f"{ds.name}: {len(ds.train.labels)} train / {len(ds.test.labels)} test images of shape {ds.image_shape}"
    )
    say(f"model {args.model}:")
    say(summary(model, ds.image_shape))

    steps = epochs * (len(ds.train.labels) // batch_size)
    warmup = int(args.warmup_epochs * (len(ds.train.labels) // batch_size))
    schedule = (
        optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1))
        if warmup
        else (optax.cosine_decay_schedule(lr, max(steps, 1)))
    )
    optimizer = (
        optax.adamw(schedule, weight_decay=args.weight_decay) if args.weight_decay else optax.adam(schedule)
    )
    # What optax cannot report about the optimizer: stored with every checkpoint, so that a
    # resume with another --lr, schedule or weight decay is refused (`--override` accepts it).
    hparams = {
        "optimizer": "adamw" if args.weight_decay else "adam",
        "lr": lr,
        "schedule": "warmup_cosine" if warmup else "cosine",
        "warmup_epochs": args.warmup_epochs,
        "weight_decay": args.weight_decay,
    }
    devices = jax.devices()
    procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    say(
        f"training {epochs} epochs, batch {batch_size}, adam{'w' if args.weight_decay else ''} lr {lr} "
        f"(cosine), seed {args.seed}, on {len(devices)} {devices[0].platform} device(s){procs}; output in {out}"
    )

    recipe = [
        f"augment {','.join(n if v is None else f'{n}:{v}' for n, v in args.augment)}"
        if args.augment
        else "",
        f"label smoothing {args.label_smoothing}" if args.label_smoothing else "",
        "bfloat16 compute (mixed precision)" if args.compute_dtype == "bfloat16" else "",
    ]
    if any(recipe):
        say("recipe: " + "; ".join(r for r in recipe if r))

    trained = []  # the epochs this invocation trains (a resume may train none)

    def report(row: dict) -> None:
        trained.append(row)
        say(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
            f" | test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f}"
            f" | {row['epoch_time_s']:.1f}s, {row['images_per_s']:.0f} images/s",
            flush=True,
        )

    compiler_options = train.xla_cpu_ynn_off() if args.xla_cpu_ynn_off else None
    if args.xla_cpu_ynn_off:
        say(f"step compiler options: {compiler_options or 'none (no YNN fusions in this XLA, or not a CPU)'}")
    t0 = time.perf_counter()
    try:
        result = train.fit(
            model,
            optimizer,
            ds,
            epochs=epochs,
            batch_size=batch_size,
            seed=args.seed,
            out_dir=out,
            resume=args.resume,
            override=tuple(args.override),
            hparams=hparams,
            keep=args.keep,
            checkpoint_every=args.checkpoint_every,
            precision=args.precision,
            augment=build_augment(args.augment),
            label_smoothing=args.label_smoothing,
            compute_dtype=args.compute_dtype,
            compiler_options=compiler_options,
            conv_impl=args.conv_impl,
            progress=not args.no_progress,
            on_epoch_end=report,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last finished epoch is in {out}; continue with --resume", file=sys.stderr)
        return 130
    except train.NonFiniteLossError as e:
        print(f"\n{e}", file=sys.stderr)
        return 1
    except (
        train.RunMismatchError,
        train.CheckpointError,
        train.RunLockedError,
        FileNotFoundError,
        OSError,
    ) as e:
        print(f"train.py: {e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0

    history = result.history
    if not history:
        say(f"--epochs {epochs}: nothing trained, no checkpoint written (metrics files in {out} are empty)")
        return 0
    last = history[-1]
    if primary:
        plot_learning_curves(history, os.path.join(out, "learning_curves.png"), f"{ds.name} {args.model}")
    if trained:
        rates = [row["images_per_s"] for row in trained]
        say(
            f"train step compiled in {result.compile_time_s:.2f}s; {wall:.1f}s in fit; "
            f"{sum(rates) / len(rates):.0f} images/s mean training throughput"
        )
        say(
            f"wrote {out}/{train.CHECKPOINT_DIR}/{last['epoch']}, metrics.json, metrics.csv, learning_curves.png"
        )
    else:
        say(f"nothing to train: the checkpoint in {out} already has all {last['epoch']} epochs")
    if args.tta == "flip":
        from jcnn.augment import flip_horizontal

        views = (unchanged, flip_horizontal)
        step = train.make_eval_step(
            model, views=views, precision=args.precision, compute_dtype=args.compute_dtype,
            compiler_options=compiler_options, conv_impl=args.conv_impl,
        )  # fmt: skip
        tta = train.evaluate(step, result.state, *ds.test)
        say(
            f"test accuracy with flip TTA (mean probabilities of each image and its mirror): {tta['accuracy']:.4f}"
        )
    say(f"test accuracy: {last['test_accuracy']:.4f}")
    return 0


def unchanged(images):
    """The identity view of test-time augmentation."""
    return images


if __name__ == "__main__":
    sys.exit(main())
