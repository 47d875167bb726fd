"""Multi-process training with real processes (issue 12): 2 local processes x 2 CPU devices each,
joined by `jcnn.train.distributed.initialize` (jax.distributed over gloo) into one 4-device mesh,
train the digits LeNet with `jcnn.train.fit`. Checked: (a) both processes end with bit-identical
params, (b) the loss curve and test accuracy match the 1-process 4-device run to float rounding,
(c) killing one process stops the other with the runtime's error within a timeout, (d) a
2-process run resumes from its checkpoint bit for bit (after an epoch, and mid-epoch).
(c) and (d) are marked slow (each launches the 2 processes again; CI still runs them).

Every process writes its output to a file; a failure shows all of them.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jcnn.train import distributed

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240  # one launch; generous: 2 loaded cores shared with other test runs

# The program every process runs: argv = coordinator, processes, process id, out_dir, epochs,
# then options. It prints one RESULT line of JSON: the params' hash, the history, the step.
DRIVER = r"""
import hashlib, json, sys
coordinator, processes, pid, out, epochs = sys.argv[1:6]
options = sys.argv[6:]
from jcnn.train import distributed
if int(processes) > 1:
    distributed.initialize(coordinator, int(processes), int(pid), heartbeat_timeout_s=5,
                           initialization_timeout_s=120, shutdown_timeout_s=30)
import jax
import numpy as np
import optax
from jcnn import data, models, train

ds = data.load_digits()
ds = ds._replace(train=data.Split(ds.train.images[:512], ds.train.labels[:512]),
                 test=data.Split(ds.test.images[:160], ds.test.labels[:160]))
model = models.lenet(ds.num_classes, ds.image_shape)
epochs = int(epochs)
optimizer = optax.adam(optax.cosine_decay_schedule(2e-3, epochs * (512 // 32)))
def report(row):
    print("EPOCH", row["epoch"], flush=True)
kwargs = {"checkpoint_every": int(options[options.index("every") + 1])} if "every" in options else {}
result = train.fit(model, optimizer, ds, epochs=epochs, batch_size=32, seed=0, out_dir=out,
                   resume="resume" in options, progress=False, on_epoch_end=report, **kwargs)
h = hashlib.sha256()
for leaf in jax.tree_util.tree_leaves(jax.device_get(result.state)):
    h.update(np.asarray(leaf).tobytes())
print("RESULT", json.dumps({
    "process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
    "hash": h.hexdigest(), "step": int(result.state.step),
    "train_loss": [row["train_loss"] for row in result.history],
    "test_loss": [row["test_loss"] for row in result.history],
    "test_accuracy": [row["test_accuracy"] for row in result.history],
}), flush=True)
"""


def _free_port() -> int:
    # Bound then released: the coordinator binds it a moment later (a tiny race, as in JAX's tests).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """``processes`` copies of DRIVER, each with ``devices`` CPU devices, output in files."""

    def __init__(self, tmp: Path, out: Path, *, processes: int, devices: int, epochs: int = 2, options=()):
        tmp.mkdir(parents=True, exist_ok=True)
        script = tmp / "driver.py"
        script.write_text(DRIVER)
        port = _free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        }
        self.logs = [tmp / f"process_{i}.log" for i in range(processes)]
        self.procs = []
        for i, log in enumerate(self.logs):
            argv = [sys.executable, str(script), f"127.0.0.1:{port}", str(processes), str(i), str(out)]
            argv += [str(epochs), *map(str, options)]
            with open(log, "w") as f:
                self.procs.append(
                    subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
                )

    def output(self) -> str:
        return "\n".join(
            f"----- process {i} (exit {p.returncode}) -----\n{log.read_text()[-6000:]}"
            for i, (p, log) in enumerate(zip(self.procs, self.logs))
        )

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def wait(self, timeout: float = TIMEOUT_S, *, expect: int = 0) -> list[dict]:
        """Wait for every process; fail with all their output unless each exits ``expect``."""
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"the processes did not finish within {timeout} s:\n{self.output()}")
        if any(p.returncode != expect for p in self.procs):
            pytest.fail(f"expected every process to exit {expect}:\n{self.output()}")
        if expect:
            return []
        return [json.loads(log.read_text().split("RESULT ", 1)[1].splitlines()[0]) for log in self.logs]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The reference 2-process x 2-device run, 2 epochs: its folder and both processes' results.

    It also checkpoints every 5 of the 16 steps per epoch (which changes nothing in training:
    tests/test_train.py checks that on one process), for the mid-epoch resume below.
    """
    tmp = tmp_path_factory.mktemp("two")
    launch = Launch(tmp, tmp / "run", processes=2, devices=2, options=["every", 5])
    return tmp / "run", launch.wait()


def test_two_processes_agree_with_each_other_and_with_one_process(two_processes, tmp_path):
    _, results = two_processes
    assert [(r["process"], r["processes"], r["devices"]) for r in results] == [(0, 2, 4), (1, 2, 4)]
    # (a) one mesh, one replicated state: both processes hold the same bytes.
    assert results[0]["hash"] == results[1]["hash"]
    assert results[0]["train_loss"] == results[1]["train_loss"]
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"]
    # (b) the same global batches as one process with 4 devices: the same curve, up to the
    # order of the cross-device sums (gloo's vs one process's all-reduce).
    one = Launch(tmp_path, tmp_path / "run", processes=1, devices=4).wait()[0]
    assert (one["processes"], one["devices"]) == (1, 4)
    assert len(one["train_loss"]) == 2 and one["step"] == results[0]["step"] == 2 * (512 // 32)
    for key in ("train_loss", "test_loss"):
        assert results[0][key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    assert results[0]["test_accuracy"] == one["test_accuracy"]
    assert one["train_loss"][1] < one["train_loss"][0]  # it trained


def test_only_process_0_writes_the_metric_files(two_processes):
    out, results = two_processes
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["train_loss"] for row in metrics["history"]] == results[0]["train_loss"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["1", "2"]
    assert not list(out.glob("*.tmp-*"))


@pytest.mark.slow
def test_killing_one_process_stops_the_other_with_a_clear_error(tmp_path):
    # (c) A dead peer must not leave the survivor waiting in a collective forever: with a 5 s
    # heartbeat timeout, the coordination service declares process 1 dead and stops process 0.
    launch = Launch(tmp_path, tmp_path / "run", processes=2, devices=2, epochs=50)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while "EPOCH 1" not in launch.logs[0].read_text():
            if time.monotonic() > deadline or any(p.poll() is not None for p in launch.procs):
                pytest.fail(f"the run did not reach epoch 1:\n{launch.output()}")
            time.sleep(0.2)
        launch.procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            launch.procs[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process 0 still runs 60 s after its peer was killed:\n{launch.output()}")
        took = time.monotonic() - killed_at
    finally:
        launch.kill_all()
    log = launch.logs[0].read_text()
    assert launch.procs[0].returncode != 0, launch.output()
    assert "stopped sending heartbeats" in log or "another task died" in log, launch.output()
    assert took < 60


@pytest.mark.slow
def test_two_processes_resume_from_their_checkpoint_bit_for_bit(two_processes, tmp_path):
    # (d) As if the run had been killed after epoch 1: its newest checkpoint removed, resumed by
    # two fresh processes, it ends with the uninterrupted run's bytes.
    out, results = two_processes
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.rmtree(run / "checkpoints" / "2")
    shutil.rmtree(run / "checkpoints-mid")  # else the resume starts from the newest, mid-epoch 2
    resumed = Launch(tmp_path, run, processes=2, devices=2, options=["resume"]).wait()
    assert [r["hash"] for r in resumed] == [results[0]["hash"]] * 2
    assert resumed[0]["train_loss"] == results[0]["train_loss"]


@pytest.mark.slow
def test_two_processes_resume_mid_epoch_bit_for_bit(two_processes, tmp_path):
    # The newest mid-epoch checkpoint of the reference run (every 5 of 16 steps per epoch) is
    # step 30: epoch 2, batch 14. Without the epoch-2 checkpoint, two fresh processes resume
    # there and end with the uninterrupted run's bytes and history.
    out, results = two_processes
    run = tmp_path / "run"
    shutil.copytree(out, run)
    assert sorted(int(p.name) for p in (run / "checkpoints-mid").iterdir() if p.name.isdigit()) == [25, 30]
    shutil.rmtree(run / "checkpoints" / "2")
    resumed = Launch(tmp_path, run, processes=2, devices=2, options=["every", 5, "resume"]).wait()
    assert [r["hash"] for r in resumed] == [results[0]["hash"]] * 2
    assert resumed[0]["train_loss"] == results[0]["train_loss"]


@pytest.mark.slow
def test_an_output_folder_refused_on_process_0_stops_every_process(tmp_path):
    # Only process 0 takes the folder (lock, probe); when that fails the others must stop with
    # a message saying so, not wait for it in the next collective.
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    launch = Launch(tmp_path, out, processes=2, devices=2)
    launch.wait(timeout=120, expect=1)
    logs = [log.read_text() for log in launch.logs]
    assert "cannot write into the output folder" in logs[0], launch.output()
    assert "failed on process 0 (its own output says why); process 1 stops too" in logs[1], launch.output()


def test_initialize_argument_errors():
    with pytest.raises(
        ValueError, match=r"initialize: `coordinator`, `num_processes` and `process_id` go together"
    ):
        distributed.initialize("127.0.0.1:1234", 2)
    with pytest.raises(ValueError, match=r"initialize: `coordinator` must be HOST:PORT, got '127.0.0.1'"):
        distributed.initialize("127.0.0.1", 2, 0)
    with pytest.raises(ValueError, match=r"initialize: `process_id` must be an integer in \[0, 2\), got 2"):
        distributed.initialize("127.0.0.1:1234", 2, 2)


def test_cluster_detection_reads_the_environment():
    assert not distributed.cluster_detected({})
    assert distributed.cluster_detected({"SLURM_JOB_ID": "7"})
