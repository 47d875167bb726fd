"""A run's identity: the configuration a checkpoint was trained with, and the resume check.

A checkpoint is only worth continuing from if the run that continues it is the same run: the
same model, optimizer and schedule, data, batch size, seed and number of epochs (the schedule
usually spans them). Issue 11 found a copied run folder resumed with ``--lr 0.5`` exiting 0 at
chance accuracy, and a different ``--epochs`` silently changing the schedule. So `fit` stores a
flat dict of fields with every checkpoint and refuses a resume whose fields differ, naming each
field and its two values, unless the caller overrides those fields by name.

optax transformations are pairs of closures: their hyperparameters cannot be read back. The
optimizer is identified by the structure of its state (which transformations, in which order)
and by the hyperparameters the caller declares in ``hparams`` (``experiments/train.py`` declares
its optimizer, lr, schedule, weight decay and warm-up).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np

from jcnn.data import row_chunks, rows_of
from jcnn.layers import spec_record

__all__ = ["BUILTIN_FIELDS", "RunMismatchError", "run_identity", "check_same_run", "data_fingerprint"]

#: The fields `fit` fills in itself; ``hparams`` adds more.
BUILTIN_FIELDS = (
    "model",
    "input_shape",
    "optimizer_state",
    "dataset",
    "data_sha256",
    "batch_size",
    "seed",
    "epochs",
    "precision",
    "augment",
    "label_smoothing",
    "compute_dtype",
)


class RunMismatchError(ValueError):
    """A resume whose configuration differs from the checkpoint's run.

    Attributes:
        differences: ``{field: (saved value, new value)}`` for every field not overridden.
    """

    def __init__(self, message: str, differences: dict):
        super().__init__(message)
        self.differences = differences


def data_fingerprint(*arrays) -> str:
    """SHA-256 over the shapes, dtypes and bytes of ``arrays`` (None entries skipped)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            continue
        a = rows_of(a)
        h.update(f"{np.dtype(a.dtype).str}{tuple(a.shape)}".encode())
        # Row chunks hash to the same digest as the whole array's bytes, in bounded memory
        # (a memory-mapped split is streamed, not loaded).
        for chunk in [a] if a.ndim == 0 else row_chunks(a, 4096):
            h.update(np.ascontiguousarray(chunk).data.cast("B"))
    return h.hexdigest()


def _optimizer_structure(opt_state) -> str:
    """The optimizer state's node types in order, e.g. ``"ScaleByAdamState, ScaleByScheduleState"``."""
    names = []

    def visit(node):
        if isinstance(node, tuple) and hasattr(node, "_fields") and type(node).__name__ != "EmptyState":
            names.append(type(node).__name__)  # (EmptyState: a stateless step, e.g. scale_by_lr)
        if isinstance(node, (tuple, list)):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for key in sorted(node):
                visit(node[key])

    visit(opt_state)
    return ", ".join(names)


def _json_value(value, where: str, name: str):
    """``value`` as JSON would give it back, so that saved and new values compare equal."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{where}: `hparams[{name!r}]` must be JSON-able (str, int, float, bool, None, lists), "
            f"got {value!r} of type {type(value).__name__}."
        ) from e


def run_identity(
    model,
    opt_state,
    *,
    input_shape: Sequence[int],
    dataset_name: str | None,
    data_sha256: str,
    batch_size: int,
    seed: int,
    epochs: int,
    precision: str | None,
    hparams: Mapping | None = None,
    where: str = "fit",
    recipe: Mapping | None = None,
) -> dict:
    """The flat, JSON-able identity of a run (see the module docstring).

    >>> import optax
    >>> from jcnn.layers import Dense, Flatten, serial
    >>> ident = run_identity(serial(Flatten(), Dense(10)), optax.adam(1e-3).init({}),
    ...     input_shape=(8, 8, 1), dataset_name="digits", data_sha256="ab", batch_size=32,
    ...     seed=0, epochs=2, precision=None, hparams={"lr": 1e-3})
    >>> ident["model"]["layers"][1]["out_features"], ident["optimizer_state"], ident["lr"]
    (10, 'ScaleByAdamState', 0.001)
    """
    identity = {
        "model": spec_record(model),  # every hyperparameter of every layer, from the specs
        "input_shape": [int(d) for d in input_shape],
        "optimizer_state": _optimizer_structure(opt_state),
        "dataset": dataset_name,
        "data_sha256": data_sha256,
        "batch_size": int(batch_size),
        "seed": int(seed),
        "epochs": int(epochs),
        "precision": precision,
    }
    # The training recipe (augment, label_smoothing, compute_dtype) is recorded only where it
    # differs from the default (None): a checkpoint of a run without one still resumes, and a
    # resume that adds one differs from it (None vs the value).
    identity.update({k: v for k, v in (recipe or {}).items() if v is not None})
    for name, value in (hparams or {}).items():
        if not isinstance(name, str) or name in identity or name in BUILTIN_FIELDS:
            raise ValueError(
                f"{where}: `hparams` keys must be strings other than the built-in fields "
                f"{', '.join(BUILTIN_FIELDS)}, got {name!r}."
            )
        identity[name] = _json_value(value, where, name)
    return identity


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_difference(old, new, path: str = "") -> tuple[str, object, object]:
    """The path to the first leaf where two JSON-like values differ, and the two leaves there.

    >>> _first_difference({"layers": [{"impl": "auto"}, {}]}, {"layers": [{"impl": "xla"}, {}]})
    ('.layers[0].impl', 'auto', 'xla')
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return path, old, new


def _said(name: str, old, new) -> str:
    """One differing field in words; a nested record (the model) by its first differing leaf."""
    where, a, b = _first_difference(old, new)
    at = f" at {where[1:] if where.startswith('.') else where}" if where else ""
    return f"`{name}`{at} {_short(a)} (now {_short(b)})"


def check_same_run(
    saved: Mapping, now: Mapping, *, override: Sequence[str] = (), checkpoint: str, where: str = "fit"
) -> dict:
    """Refuse to continue ``saved``'s run as ``now`` unless every differing field is overridden.

    Args:
        saved: the identity stored with the checkpoint.
        now: the identity of the run that would continue it.
        override: names of fields allowed to differ.
        checkpoint: the checkpoint's path, for the message.
        where: the public function to name in messages.

    Returns:
        ``{field: (saved value, new value)}`` for the overridden fields that did differ.

    Raises:
        ValueError: if ``override`` names a field that is not part of the identity.
        RunMismatchError: naming each differing field and its two values.

    >>> check_same_run({"lr": 0.1, "seed": 0}, {"lr": 0.5, "seed": 0}, checkpoint="ck")
    Traceback (most recent call last):
    ...
    jcnn.train.identity.RunMismatchError: fit: the checkpoint ck was written by a different run: `lr` 0.1 (now 0.5). Resume with the same configuration, pass override=('lr',) (train.py: --override lr) to accept the change, or start a fresh run in another folder.
    """
    fields = sorted(set(saved) | set(now))
    unknown = [name for name in override if name not in fields]
    if unknown:
        raise ValueError(
            f"{where}: `override` names {', '.join(map(repr, unknown))}, which the run identity "
            f"does not have; its fields are {', '.join(fields)}."
        )
    differ = {k: (saved.get(k), now.get(k)) for k in fields if saved.get(k) != now.get(k)}
    refused = {k: v for k, v in differ.items() if k not in override}
    if refused:
        said = ", ".join(_said(k, old, new) for k, (old, new) in refused.items())
        names = tuple(refused)
        raise RunMismatchError(
            f"{where}: the checkpoint {checkpoint} was written by a different run: {said}. Resume "
            f"with the same configuration, pass override={names!r} (train.py: --override "
            f"{' '.join(names)}) to accept the change, or start a fresh run in another folder.",
            refused,
        )
    return {k: v for k, v in differ.items() if k in override}
