"""Multi-process set-up: one process per host (or several on one machine) joined into one mesh by
JAX's own distributed runtime (``jax.distributed``), and the per-process share of a batch.

Every process runs the same program. `initialize` must come before anything touches a device
(``jax.devices()``, a ``device_put``, a jitted call); afterwards ``jax.devices()`` lists the
devices of every process and the ``"data"`` mesh of `jcnn.train.steps` spans them all. Each
process then feeds only its own rows of every global batch (`process_rows`): the global batch
order stays a function of ``(seed, epoch)``, so one process and N processes train on the same
batches and agree to float rounding.

On a CPU machine, N local processes with ``XLA_FLAGS=--xla_force_host_platform_device_count=K``
form one mesh of N*K devices over gloo (the CPU collectives), which is how the tests exercise the
multi-process path (issue 12).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np

__all__ = [
    "initialize",
    "is_initialized",
    "cluster_detected",
    "process_rows",
    "primary_first",
    "CLUSTER_ENV_VARS",
]

#: Environment variables by which ``jax.distributed.initialize()`` detects a cluster on its own
#: (SLURM, Open MPI, Cloud TPU / GKE): with one of them set, `initialize` may be called bare.
CLUSTER_ENV_VARS = (
    "SLURM_JOB_ID",
    "OMPI_MCA_orte_hnp_uri",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "TPU_WORKER_ID",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "JAX_COORDINATOR_ADDRESS",
)


def is_initialized() -> bool:
    """Whether ``jax.distributed`` has been initialized in this process."""
    return jax.distributed.is_initialized()


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    heartbeat_timeout_s: int = 100,
    initialization_timeout_s: int = 300,
    shutdown_timeout_s: int = 300,
) -> tuple[int, int]:
    """Join this process to a multi-process run, before anything touches a device.

    With ``coordinator``, ``num_processes`` and ``process_id`` given, they are used as they are
    (the same coordinator ``HOST:PORT`` in every process; process 0 serves it). With none of
    them, JAX's cluster auto-detection reads the environment (SLURM, Open MPI, Cloud TPU, the
    ``JAX_COORDINATOR_ADDRESS`` family; see `CLUSTER_ENV_VARS`). On a CPU backend the
    collectives go through gloo (``jax_cpu_collectives_implementation``), without which the
    processes could not reduce across each other.

    A process that stops sending heartbeats for ``heartbeat_timeout_s`` seconds is declared dead
    and the others are stopped with an error naming it, rather than waiting forever in a
    collective.

    Args:
        coordinator: ``"HOST:PORT"`` of process 0's coordination service.
        num_processes: how many processes take part, ``>= 1``.
        process_id: this process's index in ``[0, num_processes)``.
        local_device_ids: restrict this process to these local devices (GPU hosts running one
            process per GPU).
        heartbeat_timeout_s: seconds without a heartbeat before a process is declared dead.
        initialization_timeout_s: seconds to wait for every process to join.
        shutdown_timeout_s: seconds a finishing process waits for the others at exit.

    Returns:
        ``(jax.process_index(), jax.process_count())``.

    Raises:
        ValueError: for an incomplete or out-of-range set of arguments.
        RuntimeError: if JAX already touched a device in this process (too late to join).

    >>> initialize(None, None, None)  # doctest: +SKIP
    (0, 1)
    """
    where = "initialize"
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            f"{where}: `coordinator`, `num_processes` and `process_id` go together (or none of them, "
            f"for JAX's cluster auto-detection), got coordinator={coordinator!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}."
        )
    if all(given):
        host, sep, port = str(coordinator).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{where}: `coordinator` must be HOST:PORT, got {coordinator!r}.")
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"{where}: `num_processes` must be an integer >= 1, got {num_processes!r}.")
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(
                f"{where}: `process_id` must be an integer in [0, {num_processes}), got {process_id!r}."
            )
    # gloo: XLA's CPU client has no cross-process collectives without it (a no-op on GPU/TPU,
    # whose collectives are NCCL / ICI).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator,
        num_processes,
        process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=int(initialization_timeout_s),
        heartbeat_timeout_seconds=int(heartbeat_timeout_s),
        shutdown_timeout_seconds=int(shutdown_timeout_s),
    )
    return jax.process_index(), jax.process_count()


def cluster_detected(environ=None) -> bool:
    """Whether one of `CLUSTER_ENV_VARS` is set (JAX's auto-detection would find a cluster)."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in CLUSTER_ENV_VARS)


def process_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...]) -> slice:
    """The rows (axis 0) of a global batch that this process's devices hold under ``sharding``.

    For the ``"data"`` mesh over ``jax.devices()`` (every process's devices listed together)
    that is one contiguous block per process: block ``i`` of ``jax.process_count()``. Read from
    the sharding itself rather than assumed, so a mesh in another device order is caught.

    Raises:
        ValueError: if this process's rows are not one contiguous block (a mesh whose devices
            interleave processes), which ``make_array_from_process_local_data`` cannot take as
            one slab.

    >>> from jcnn.train.steps import Placement
    >>> process_rows(Placement(None).batch_sharding, (8, 3))
    slice(0, 8, None)
    """
    index_map = sharding.addressable_devices_indices_map(tuple(global_shape))
    if not index_map:
        raise ValueError(
            f"process_rows: process {jax.process_index()} has no device in the mesh; with several "
            f"processes the mesh must include devices of every process (the default, jax.devices())."
        )
    rows = sorted({(idx[0].start or 0, global_shape[0] if idx[0].stop is None else idx[0].stop)
                   for idx in index_map.values()})  # fmt: skip
    lo, hi = rows[0][0], rows[-1][1]
    covered = sum(b - a for a, b in rows)
    if covered != hi - lo:
        raise ValueError(
            f"process_rows: process {jax.process_index()}'s devices hold rows {rows} of the batch, "
            f"not one contiguous block; build the mesh with each process's devices together "
            f"(the order of jax.devices())."
        )
    return slice(lo, hi)


def primary_first(action, what: str) -> None:
    """Run ``action()`` on process 0 only; then every process learns whether it succeeded.

    Process 0 re-raises its own error; the others raise a RuntimeError saying process 0 failed,
    instead of waiting in the next collective for a process that has left (issue 12: a locked
    or unwritable output folder on process 0 must stop every process, promptly). The broadcast
    is also a barrier: nothing after it starts before process 0's action is done.
    """
    error = None
    if jax.process_index() == 0:
        try:
            action()
        except BaseException as e:  # KeyboardInterrupt too: the others must not wait for it
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            raise RuntimeError(
                f"{what} failed on process 0 (its own output says why); process "
                f"{jax.process_index()} stops too."
            )
    if error is not None:
        raise error
