"""What a run leaves in its output folder, kept consistent: lock, checkpoints, metric files.

`RunOutput` is the one object `fit` talks to about files. Entering it takes the folder's lock,
removes stale temporary files and probes the folder (writable, room for the checkpoints) before
anything trains. `RunOutput.start` either resumes (the newest checkpoint, verified, from the
same run unless fields are overridden) or starts afresh (a previous run's checkpoints and metric
files are replaced), and writes the metric files from the history it starts from. `commit`
saves a checkpoint, waits for it, then rewrites the metric files from the same history.

`NoOutput` is the same interface for ``out_dir=None``: nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import jax

from jcnn.train.checkpoint import (
    CHECKPOINT_DIR,
    LEGACY_NAME,
    MID_EPOCH_DIR,
    CheckpointStore,
    legacy_message,
    state_nbytes,
)
from jcnn.train.distributed import primary_first
from jcnn.train.identity import check_same_run
from jcnn.train.metrics import write_metrics
from jcnn.train.rundir import RunFolder
from jcnn.train.state import TrainState

__all__ = ["RunOutput", "NoOutput"]


class NoOutput:
    """`RunOutput`'s interface for a run that writes nothing."""

    last_good = None
    position = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def start(self, state, *, resume, override):
        del override
        if resume:
            raise FileNotFoundError("fit: `resume=True` needs an `out_dir` holding the run's checkpoints.")
        return state, []

    def commit(self, state, history, extra):
        del state, history, extra

    def commit_mid(self, state, history, position):
        del state, history, position


class RunOutput:
    """The output folder of one run (see the module docstring).

    Args:
        out_dir: the folder (created).
        identity: the run's identity (`jcnn.train.identity.run_identity`).
        keep: how many checkpoints to keep.
        where: the public function to name in messages.

    Attributes:
        last_good: ``(path, when)`` of the newest checkpoint this run stands on, or None;
            ``when`` says where in the run it was taken, e.g. ``"after epoch 3"`` or ``"at step
            35, within epoch 2"``.
        position: after `start`, the ``position`` of a mid-epoch checkpoint resumed from (the
            batch to continue at, see `jcnn.train.Checkpoint`), or None.
    """

    def __init__(self, out_dir, identity: dict, *, keep: int = 2, where: str = "fit"):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.identity = identity
        self.keep = keep
        self.where = where
        self.overrides: list = []
        self.last_good = None
        self.position: dict | None = None
        # Multi-process runs: only process 0 owns the folder (lock, probe, metric files); every
        # process takes part in orbax's checkpoint saves and restores.
        self.primary = jax.process_index() == 0
        self._folder = RunFolder(self.out_dir, where=where) if self.primary else None
        self._store: CheckpointStore | None = None
        self._mid: CheckpointStore | None = None  # checkpoints within an epoch, opened when needed
        self._pending: tuple | None = None  # (history, extra) of the checkpoint being written

    def __enter__(self) -> RunOutput:
        def take_folder():  # process 0's; the others wait, and stop too if it fails
            self._folder.__enter__()  # creates the folder and takes the lock
            self._folder.clean_stale_files()

        primary_first(take_folder, f"{self.where}: taking the output folder {self.out_dir}")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._store is not None:
                try:
                    if self._mid is not None:
                        self._mid.close()
                    self._store.close()  # waits for a save in flight: fit never returns before it
                    self._publish()  # ... and its history reaches the metric files
                except Exception:
                    if exc_type is None:
                        raise
                    # An error is already on its way out (e.g. the disk filled up mid-save):
                    # report that one, not this follow-up failure of the same cause.
        finally:
            if self._folder is not None:
                self._folder.release()

    def start(self, state: TrainState, *, resume: bool, override=()) -> tuple[TrainState, list]:
        """The state and history to start from; probes the folder and writes the metric files.

        A fresh run (``resume=False``) replaces what an earlier run left in the folder: its
        checkpoints and an old ``checkpoint.msgpack``.
        """
        checkpoints = os.path.join(self.out_dir, CHECKPOINT_DIR)
        mid = os.path.join(self.out_dir, MID_EPOCH_DIR)

        def prepare():  # process 0's; the others open the checkpoints only once it is done
            self._folder.probe(need_bytes=state_nbytes(state) * (self.keep + 1) + 2**20)
            if not resume:
                for folder in (checkpoints, mid):
                    if os.path.isdir(folder):
                        shutil.rmtree(folder)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.out_dir, LEGACY_NAME))

        primary_first(prepare, f"{self.where}: preparing the output folder {self.out_dir}")
        self._store = CheckpointStore(checkpoints, keep=self.keep)
        if os.path.isdir(mid):
            self._mid = CheckpointStore(mid, keep=self.keep)
        history = []
        if resume:
            state, history = self._resume(state, override)
        self._write_metrics(history, {})
        return state, history

    def _resume(self, state, override):
        epoch = self._store.latest_epoch()
        step = None if self._mid is None else self._mid.latest_epoch()
        if epoch is None and step is None:
            legacy = os.path.join(self.out_dir, LEGACY_NAME)
            if os.path.exists(legacy):
                raise FileNotFoundError(f"{self.where}: `resume=True` but {legacy_message(legacy)}")
            raise FileNotFoundError(
                f"{self.where}: `resume=True` but there is no checkpoint in {self._store.directory}; "
                f"run without resume to start fresh."
            )
        # The identity first: a changed configuration is reported as such, not as arrays that
        # do not fit (a different model or optimizer), and nothing big is read for a refusal.
        # The newest position wins: a checkpoint within epoch e (e epochs finished) is newer than
        # the one at the end of epoch e; older mid-epoch checkpoints are left unread.
        store, number = self._store, epoch
        if step is not None:
            meta = self._mid.read_meta(step)
            if epoch is None or meta["epoch"] >= epoch:
                store, number = self._mid, step
        meta = store.read_meta(number)
        path = store.path(number)
        changed = check_same_run(
            meta["identity"], self.identity, override=override, checkpoint=path, where=self.where
        )
        ckpt = store.restore(state, number)
        self.position = meta.get("position")
        self.overrides = list(ckpt.overrides) + [
            {"epoch": ckpt.epoch, "field": k, "old": old, "new": new} for k, (old, new) in changed.items()
        ]
        self.last_good = (path, _when(ckpt.epoch, self.position))
        return ckpt.state, list(ckpt.history)

    def commit(self, state: TrainState, history: list, extra: dict) -> None:
        """Checkpoint ``state`` after ``len(history)`` epochs; the metric files follow once committed.

        orbax writes the checkpoint in the background while the next epoch trains. The metric
        files are rewritten from a checkpoint's history only after that checkpoint is committed
        (at the next commit, or on leaving), so they never run ahead of the checkpoints.
        """
        self._wait()
        epoch = len(history)
        self._store.save(
            epoch, state, history=history, identity=self.identity, overrides=self.overrides, wait=False
        )
        self._pending = (list(history), dict(extra))
        self.last_good = (self._store.path(epoch), _when(epoch, None))

    def commit_mid(self, state: TrainState, history: list, position: dict) -> None:
        """Checkpoint ``state`` within epoch ``len(history)`` at ``position`` (see `Checkpoint`).

        Written in the background into ``checkpoints-mid/<step>``; the metric files are not
        touched (they follow the epochs' checkpoints).
        """
        self._wait()
        if self._mid is None:
            self._mid = CheckpointStore(os.path.join(self.out_dir, MID_EPOCH_DIR), keep=self.keep)
        self._mid.save(
            len(history), state, history=history, identity=self.identity, overrides=self.overrides,
            position=position, wait=False,
        )  # fmt: skip
        self.last_good = (self._mid.path(position["step"]), _when(len(history), position))

    def _wait(self) -> None:
        """Wait for the saves in flight; the metric files follow a committed epoch checkpoint."""
        if self._mid is not None:
            self._mid.wait()
        self._store.wait()
        self._publish()

    def _publish(self) -> None:
        if self._pending is not None:
            self._write_metrics(*self._pending)
            self._pending = None

    def _write_metrics(self, history: list, extra: dict) -> None:
        if self.primary:
            fields = {k: self.identity[k] for k in ("seed", "batch_size", "epochs")}
            write_metrics(self.out_dir, history, {**extra, **fields, "overrides": self.overrides})


def _when(epochs_done: int, position: dict | None) -> str:
    """Where in the run a checkpoint was taken, in words (for `RunOutput.last_good`)."""
    if position is None:
        return f"after epoch {epochs_done}"
    return f"at step {int(position['step'])}, within epoch {epochs_done + 1}"
