"""Checkpoints through orbax-checkpoint, with what orbax does not give: integrity and run identity.

Layout of ``<out_dir>/checkpoints/`` (an ``orbax.checkpoint.CheckpointManager`` folder):

* ``<epoch>/`` per finished epoch, the newest ``keep`` of them kept (default 2). orbax writes
  each into a temporary folder and renames it when complete (the atomic commit), so a kill at
  any moment leaves only whole checkpoints; unfinished temporary folders are removed when the
  folder is next opened (``cleanup_tmp_directories``).
* ``<out_dir>/checkpoints-mid/<step>/``: the same, for checkpoints taken within an epoch
  (``fit(checkpoint_every=...)``), named by the number of updates taken; their ``meta`` also
  holds ``position`` (the batch reached in the epoch and its running metric sums).
* ``<epoch>/state``: the `TrainState`'s leaves as arrays, one per leaf, named ``"0000"``,
  ``"0001"``, ... in ``jax.tree_util`` order (orbax's standard handler: tensorstore, OCDBT).
* ``<epoch>/meta``: JSON: ``format``, ``epoch``, ``history`` (every epoch's metrics: the
  metric files are rewritten from it), ``identity`` (the run's configuration, see
  `jcnn.train.identity`), ``overrides`` (fields a resume was allowed to change), ``arrays``
  (for each leaf: its tree path, shape, dtype and the SHA-256 of its bytes), and ``sha256``:
  the SHA-256 of all the other keys (canonical JSON, sorted keys).

On load every array's checksum and the metadata's checksum are verified: a flipped byte
anywhere is refused with a `CheckpointError` naming the checkpoint and the item that failed,
never resumed (issue 11 item 1 found a flipped sign bit resumed silently).

Multi-process runs (issue 12): every process calls `CheckpointStore.save` and ``restore``, as
orbax requires. The state's device arrays are handed to orbax as they are, so a state on a mesh
spanning processes is written collectively (each shard once); every process computes the same
checksums from its host copy of the replicated state, and on restore each reads the arrays back
into host memory and verifies them.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from jcnn.checks import as_int
from jcnn.train.state import TrainState

__all__ = [
    "FORMAT",
    "CHECKPOINT_DIR",
    "MID_EPOCH_DIR",
    "LEGACY_NAME",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "save_checkpoint",
    "load_checkpoint",
    "state_nbytes",
    "legacy_message",
]

FORMAT = "jcnn-checkpoint/1"
#: The folder inside ``out_dir`` that holds the checkpoints.
CHECKPOINT_DIR = "checkpoints"
#: The folder inside ``out_dir`` that holds the checkpoints taken within an epoch.
MID_EPOCH_DIR = "checkpoints-mid"
#: The single-file checkpoint of jcnn before orbax (flax msgpack); recognised, not read.
LEGACY_NAME = "checkpoint.msgpack"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: unreadable, or its bytes fail their checksum.

    Attributes:
        path: the checkpoint folder (``.../checkpoints/<epoch>``).
        item: what failed: ``"meta"``, ``"state"`` or one leaf's tree path, e.g.
            ``"params[1]['kernel']"``.
    """

    def __init__(self, message: str, *, path: str, item: str):
        super().__init__(message)
        self.path, self.item = path, item


class Checkpoint(NamedTuple):
    """A loaded checkpoint: the state, the number of finished epochs, their history, the identity.

    A checkpoint taken within an epoch (``fit(checkpoint_every=...)``) also has a ``position``
    in its metadata (`CheckpointStore.read_meta`): ``step`` (the updates taken, the folder's
    number), ``batch`` (batches of epoch ``epoch`` already taken) and the running sums of that
    epoch's metrics (``loss_sum``, ``acc_sum``, ``seen``).
    """

    state: TrainState
    epoch: int
    history: list
    identity: dict
    overrides: list


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _meta_sha256(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def state_nbytes(state) -> int:
    """Bytes of the arrays of ``state`` (what one checkpoint of it holds, uncompressed)."""
    return sum(
        int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(state)
    )


def _ocp():
    # orbax costs ~1-3 s to import: only runs that write or read checkpoints pay for it.
    import orbax.checkpoint as ocp

    return ocp


class CheckpointStore:
    """The checkpoints of one run folder, through an orbax ``CheckpointManager``.

    Args:
        directory: the checkpoint folder (``<out_dir>/checkpoints``).
        keep: how many of the newest checkpoints to keep (``>= 1``).
        create: create ``directory`` if missing (False: read only what is there).
    """

    def __init__(self, directory, *, keep: int = 2, create: bool = True):
        ocp = _ocp()
        self.directory = os.path.abspath(os.fspath(directory))
        keep = as_int(keep, "CheckpointStore", "keep", minimum=1)
        if create:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                cleanup_tmp_directories=True,  # a killed save's temporary folder goes away
                enable_async_checkpointing=True,
            )
        else:  # reading only: touch nothing, not even another run's temporary folders
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, save_interval_steps=0, max_to_keep=None
            )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def path(self, epoch: int) -> str:
        """The folder of the checkpoint after ``epoch`` epochs."""
        return os.path.join(self.directory, str(epoch))

    def latest_epoch(self) -> int | None:
        """The newest committed checkpoint's epoch, or None if there is none."""
        return self._manager.latest_step()

    def save(
        self,
        epoch: int,
        state: TrainState,
        *,
        history: list,
        identity: dict,
        overrides=(),
        position: dict | None = None,
        wait: bool = True,
    ) -> None:
        """Write the checkpoint after ``epoch`` epochs; with ``wait``, return once it is committed.

        With ``position`` (see `Checkpoint`: where in the epoch) the checkpoint is one within epoch ``epoch`` (0-based
        index of the epoch in progress, i.e. the number finished) and its folder is named by
        ``position["step"]`` instead of ``epoch``.

        The arrays are fetched to the host first (so the caller may donate ``state`` right
        after), checksummed, and handed to orbax with the metadata. With ``wait=False`` orbax
        writes in background threads and commits when done; `wait` (or the next save, or
        `close`) waits for that.
        """
        ocp = _ocp()
        host = jax.device_get(state)
        leaves = jax.tree_util.tree_leaves_with_path(host)
        hashed = [np.asarray(leaf) for _, leaf in leaves]
        if jax.process_count() == 1:
            # One process: orbax writes the host copies. (Handing it device arrays on a mesh
            # needs jax.sharding.set_mesh as a context manager inside orbax 0.12.8, which jax
            # 0.6.0, the floor, lacks; the host copies work on every supported version.)
            arrays = {f"{i:04d}": a for i, a in enumerate(hashed)}
        else:
            # Several processes: the device arrays (a replicated state on a mesh spanning the
            # processes) are written collectively, each shard once by the process holding its
            # first replica; the host copies are only checksummed.
            arrays = {
                f"{i:04d}": leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
                for i, leaf in enumerate(jax.tree_util.tree_leaves(state))
            }
        meta: dict[str, Any] = {
            "format": FORMAT,
            "epoch": int(epoch),
            "history": history,
            "identity": identity,
            "overrides": list(overrides),
            **({} if position is None else {"position": dict(position)}),
            "arrays": [
                {
                    "path": jax.tree_util.keystr(p),
                    "shape": list(a.shape),
                    "dtype": a.dtype.str,
                    "sha256": _sha256(a),
                }
                for (p, _), a in zip(leaves, hashed)
            ],
        }
        # A snapshot: orbax serializes the metadata in the background (``wait=False``) while the
        # caller goes on, e.g. appending to the very history list passed in; the bytes written
        # must be the ones checksummed.
        meta = json.loads(json.dumps(meta))
        meta["sha256"] = _meta_sha256(meta)
        self._manager.save(
            int(epoch if position is None else position["step"]),
            args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until the save in flight, if any, is committed (orbax's errors surface here)."""
        self._manager.wait_until_finished()

    def _broken(self, epoch: int, item: str, why: str) -> CheckpointError:
        path = self.path(epoch)
        return CheckpointError(
            f"load_checkpoint: checkpoint {path} is damaged: {item} {why}. Refusing to resume "
            f"from it; delete that folder to resume from an older checkpoint, or start afresh.",
            path=path,
            item=item,
        )

    def read_meta(self, epoch: int | None = None) -> dict:
        """The verified metadata of a checkpoint (default the newest): epoch, history, identity...

        Raises:
            FileNotFoundError: if there is no checkpoint.
            CheckpointError: if the metadata is unreadable or fails its checksum.
        """
        ocp = _ocp()
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"load_checkpoint: {self.directory} holds no checkpoint.")
        try:
            meta = self._manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # orbax/tensorstore raise many types for an unreadable file
            raise self._broken(epoch, "meta", f"could not be read ({type(e).__name__}: {e})") from e
        if not isinstance(meta, dict) or meta.get("sha256") != _meta_sha256(meta):
            raise self._broken(
                epoch, "meta", "fails its checksum (the metadata was changed after it was written)"
            )
        if meta.get("format") != FORMAT:
            raise self._broken(epoch, "meta", f"has format {meta.get('format')!r}, expected {FORMAT!r}")
        return meta

    def restore(self, target: TrainState, epoch: int | None = None) -> Checkpoint:
        """Read and verify a checkpoint (default the newest) into the structure of ``target``.

        Raises:
            FileNotFoundError: if there is no checkpoint.
            CheckpointError: if the metadata or an array is unreadable or fails its checksum.
            ValueError: if the arrays do not fit ``target`` (another model or optimizer).
        """
        ocp = _ocp()
        epoch = self.latest_epoch() if epoch is None else epoch
        meta = self.read_meta(epoch)
        path = self.path(epoch)
        position = meta.get("position")
        number = meta["epoch"] if position is None else position["step"]
        if number != epoch:
            what = "epoch" if position is None else "step"
            raise self._broken(epoch, "meta", f"says {what} {number} in the folder of {what} {epoch}")

        def broken(item: str, why: str) -> CheckpointError:
            return self._broken(epoch, item, why)

        want = jax.tree_util.tree_leaves_with_path(target)
        saved = meta["arrays"]
        for (p, leaf), entry in zip(want, saved):
            here = (jax.tree_util.keystr(p), list(np.shape(leaf)), np.dtype(leaf.dtype).str)
            there = (entry["path"], entry["shape"], entry["dtype"])
            if here != there:
                raise ValueError(
                    f"load_checkpoint: {path} is not a checkpoint of this model and optimizer: it "
                    f"holds {there[0]} {np.dtype(there[2]).name}{there[1]} where the model has "
                    f"{here[0]} {np.dtype(here[2]).name}{here[1]}."
                )
        if len(want) != len(saved):
            raise ValueError(
                f"load_checkpoint: {path} is not a checkpoint of this model and optimizer: it "
                f"holds {len(saved)} arrays, the model and optimizer state {len(want)}."
            )
        abstract = {f"{i:04d}": np.zeros(e["shape"], np.dtype(e["dtype"])) for i, e in enumerate(saved)}
        try:
            arrays = self._manager.restore(
                epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            ).state
        except Exception as e:
            raise broken("state", f"could not be read ({type(e).__name__}: {e})") from e
        leaves = []
        for i, entry in enumerate(saved):
            a = np.asarray(arrays[f"{i:04d}"])
            if (
                a.dtype.str != entry["dtype"]
                or list(a.shape) != entry["shape"]
                or _sha256(a) != entry["sha256"]
            ):
                raise broken(f"array {entry['path']}", "fails its checksum (its bytes changed after saving)")
            leaves.append(a)
        state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), leaves)
        return Checkpoint(
            state, int(meta["epoch"]), meta["history"], meta["identity"], meta.get("overrides", [])
        )

    def close(self) -> None:
        """Wait for any save in flight, then release orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()


def save_checkpoint(
    out_dir, state: TrainState, *, epoch: int, history: list, identity: dict | None = None
) -> str:
    """Write one checkpoint of ``state`` into ``out_dir/checkpoints/<epoch>`` and return its path.

    `fit` does this after every epoch; this function is for code that trains by hand.

    Args:
        out_dir: the run folder (``checkpoints/`` is created in it).
        state: the `TrainState` (device arrays are fetched).
        epoch: number of finished epochs (the checkpoint's step).
        history: per-epoch metric dicts (JSON-able).
        identity: the run's identity (`jcnn.train.identity.run_identity`), or None.
    """
    store = CheckpointStore(os.path.join(os.fspath(out_dir), CHECKPOINT_DIR))
    try:
        store.save(epoch, state, history=history, identity=identity or {})
        return store.path(epoch)
    finally:
        store.close()


def load_checkpoint(out_dir, target: TrainState, *, epoch: int | None = None) -> Checkpoint:
    """Read and verify the newest (or the given ``epoch``'s) checkpoint of a run folder.

    Args:
        out_dir: the run folder `fit` wrote (holding ``checkpoints/``).
        target: a `TrainState` of the same model and optimizer (e.g. from `init_state`) whose
            structure the arrays are restored into.
        epoch: which checkpoint; default the newest.

    Returns:
        A `Checkpoint` ``(state, epoch, history, identity, overrides)``; the state's leaves are
        NumPy arrays.

    Raises:
        FileNotFoundError: if ``out_dir`` holds no checkpoint (and the message says so when it
            holds an old ``checkpoint.msgpack``).
        CheckpointError: if the checkpoint fails its integrity check, naming the item.
        ValueError: if it is not a checkpoint of this model and optimizer.
    """
    out_dir = os.fspath(out_dir)
    directory = os.path.join(out_dir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        legacy = os.path.join(out_dir, LEGACY_NAME)
        if os.path.exists(legacy):
            raise FileNotFoundError(legacy_message(legacy))
        raise FileNotFoundError(
            f"load_checkpoint: {out_dir} holds no checkpoint ({CHECKPOINT_DIR}/ is missing)."
        )
    store = CheckpointStore(directory, create=False)
    try:
        return store.restore(target, epoch)
    finally:
        store.close()


def legacy_message(path: str) -> str:
    """What to say about an old single-file ``checkpoint.msgpack``."""
    return (
        f"{path} is a checkpoint of the old single-file format (flax msgpack, jcnn before the "
        f"orbax checkpoints), which this version cannot resume: it carries no checksums and no "
        f"run identity. Start a fresh run (in another folder, or delete the file), or finish the "
        f"old run with the jcnn version that wrote it."
    )
