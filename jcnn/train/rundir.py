"""The output folder of a run: one run at a time (a pid lock), checked writable and roomy before
training, cleared of stale temporary files, and written atomically.

Issue 11 items 2-3: two runs writing one folder both claimed success; a read-only folder was
discovered only after the first epoch had trained, its error masked by a cleanup error; killed
writes left ``.tmp-PID`` files behind forever.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import socket
import time

__all__ = ["LOCK_NAME", "RunLockedError", "RunFolder", "atomic_write"]

#: The lock file a running `fit` holds in its ``out_dir``.
LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another live run holds the output folder's lock."""


def atomic_write(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that it holds either the old bytes or all the new ones.

    A temporary file in the same folder (``os.replace`` is atomic only within one file system)
    is written, flushed and fsync-ed, then renamed over ``path``; the folder is fsync-ed so the
    rename itself survives a power cut. On any exception, KeyboardInterrupt included, the
    temporary file is removed and ``path`` is left as it was; the exception raised is the write's
    own, never one from that cleanup.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # e.g. file systems that refuse fsync on folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunFolder:
    """A run's output folder, held by one run at a time.

    Use as a context manager (``with RunFolder(path) as folder:``): entering creates the folder
    and takes the lock, leaving releases it.

    Args:
        path: the folder.
        where: the public function to name in messages.
    """

    def __init__(self, path, *, where: str = "fit"):
        self.path = os.path.abspath(os.fspath(path))
        self.where = where
        self.lock_path = os.path.join(self.path, LOCK_NAME)
        self._locked = False

    def __enter__(self) -> RunFolder:
        try:
            os.makedirs(self.path, exist_ok=True)
            self.lock()
        except OSError as e:
            raise self._unwritable(e) from e
        return self

    def _unwritable(self, e: OSError) -> OSError:
        """``e``'s own OSError subclass, with a message naming the folder and saying what to do."""
        return type(e)(
            e.errno,
            f"{self.where}: cannot write into the output folder {self.path} ({e.strerror or e}); "
            f"nothing was trained. Choose a writable folder",
        )

    def __exit__(self, *exc) -> None:
        self.release()

    def lock(self) -> None:
        """Take the folder's lock, or raise `RunLockedError` if a live run holds it.

        The lock is a file holding ``pid host start-time``, created with its content in one
        step (a hard link of a complete temporary file: ``link`` fails if the name exists), so
        a reader never sees it half-written. A lock whose pid is dead on this host is stale (a
        killed run) and is replaced.
        """
        me = f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n"
        tmp = f"{self.lock_path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(me)
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.lock_path)
                    self._locked = True
                    return
                except FileExistsError:
                    if self._holder_alive():
                        break
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.lock_path)  # stale: its process is gone
        finally:
            os.remove(tmp)
        pid, host, since = self._read_lock()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
        raise RunLockedError(
            f"{self.where}: {self.path} is in use by another run (pid {pid} on {host}, started "
            f"{started}; lock file {self.lock_path}). Two runs writing one folder would overwrite "
            f"each other's checkpoints: wait for it to finish, or choose another output folder."
            + (" If that run is dead, delete the lock file." if host != socket.gethostname() else "")
        )

    def _read_lock(self) -> tuple[int | None, str, float | None]:
        try:
            with open(self.lock_path) as f:
                pid, host, since = f.read().split()
            return int(pid), host, float(since)
        except (OSError, ValueError):
            return None, "?", None

    def _holder_alive(self) -> bool:
        pid, host, _ = self._read_lock()
        if pid is None:  # gone meanwhile, or garbled (never one of ours: they are written whole)
            return False
        if host != socket.gethostname():
            return True  # cannot check another host's processes: assume it runs
        return _pid_alive(pid)

    def release(self) -> None:
        """Remove the lock if this object holds it."""
        if self._locked:
            self._locked = False
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.lock_path)

    def clean_stale_files(self) -> list[str]:
        """Remove temporary files a killed run left (``.*.tmp-PID``); returns their paths.

        Called with the lock held, so no live run of this folder is writing them.
        """
        removed = []
        for tmp in glob.glob(os.path.join(glob.escape(self.path), ".*.tmp-*")) + glob.glob(
            os.path.join(glob.escape(self.path), "*.tmp-*")
        ):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
                removed.append(tmp)
        return removed

    def probe(self, need_bytes: int) -> None:
        """Check, before any training, that the folder takes a write and has ``need_bytes`` free.

        Raises:
            OSError: (the write's own subclass, e.g. PermissionError) naming the folder, if a
                file cannot be written there, or ``errno.ENOSPC`` if there is too little room.
        """
        probe = os.path.join(self.path, f".probe.tmp-{os.getpid()}")
        try:
            atomic_write(probe, b"jcnn write probe\n")
            os.remove(probe)
        except OSError as e:
            raise self._unwritable(e) from e
        free = shutil.disk_usage(self.path).free
        if free < need_bytes:
            raise OSError(
                errno.ENOSPC,
                f"{self.where}: the output folder {self.path} has {free / 2**20:.1f} MiB free but the "
                f"checkpoints and metrics need about {need_bytes / 2**20:.1f} MiB; nothing was "
                f"trained. Free some space or choose another folder",
            )
