"""Fault injection for `jcnn.train.fit` (issue 11): kill -9 mid-checkpoint, flipped bytes, changed
run configurations, a second run on the same folder, unwritable or full folders, bad data.

Every test here fails on the msgpack checkpoints of the old `jcnn/train.py`. Kept cheap: a
linear model on 640 digits, one or two epochs, subprocesses only where a process must die.
"""

import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from jcnn import data, train
from jcnn.layers import Dense, Flatten, serial

fit_module = importlib.import_module("jcnn.train.fit")  # the module; `train.fit` is the function

REPO = Path(__file__).resolve().parents[1]
MODEL = serial(Flatten(), Dense(10))
OPTIMIZER = optax.adam(1e-2)
HPARAMS = {"lr": 1e-2}


@pytest.fixture(scope="module")
def digits():
    ds = data.load_digits()
    return ds._replace(
        train=data.Split(ds.train.images[:640], ds.train.labels[:640]),
        test=data.Split(ds.test.images[:100], ds.test.labels[:100]),
    )


def run(digits, out, epochs=1, **kwargs):
    kwargs = {"batch_size": 32, "seed": 1, "progress": False, "hparams": HPARAMS} | kwargs
    return train.fit(MODEL, kwargs.pop("optimizer", OPTIMIZER), digits, epochs=epochs, out_dir=out, **kwargs)


def template():
    return train.init_state(MODEL, OPTIMIZER, 0, (8, 8, 1))


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


# ---------------------------------------------------------------------------------------------
# kill -9 in the middle of a checkpoint write, then resume.

KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import optax
    from jcnn import data, train
    from jcnn.layers import Dense, Flatten, serial
    from jcnn.train.checkpoint import CheckpointStore

    real_save = CheckpointStore.save

    def save_then_die(self, epoch, state, **k):
        if epoch == 2:
            # orbax has started epoch 2's save in its background threads when its `save`
            # returns; die then, instead of waiting: the process is gone mid-write, uncommitted.
            manager_save = self._manager.save
            def start_then_die(*a, **kk):
                manager_save(*a, **kk)
                os.kill(os.getpid(), signal.SIGKILL)
            self._manager.save = start_then_die
        return real_save(self, epoch, state, **k)

    CheckpointStore.save = save_then_die
    ds = data.load_digits()
    ds = ds._replace(train=data.Split(ds.train.images[:640], ds.train.labels[:640]),
                     test=data.Split(ds.test.images[:100], ds.test.labels[:100]))
    train.fit(serial(Flatten(), Dense(10)), optax.adam(1e-2), ds, epochs=3, batch_size=32, seed=1,
              progress=False, hparams={"lr": 1e-2}, out_dir=sys.argv[1])
    """
)


def test_kill_9_during_a_checkpoint_write_then_resume_is_bit_exact(digits, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # The kill left the dead run's lock, checkpoint 1 and orbax's unfinished folder for epoch 2.
    assert (out / train.LOCK_NAME).exists()
    left = sorted(os.listdir(out / "checkpoints"))
    assert left[0] == "1" and any("tmp" in name for name in left[1:]), left
    assert [r["epoch"] for r in json.loads((out / "metrics.json").read_text())["history"]] == [1]
    # Resumed here (the stale lock does not block): the unfinished folder is cleaned away and
    # the run continues from epoch 1 to exactly where an uninterrupted run ends.
    resumed = run(digits, out, epochs=3, resume=True)
    straight = run(digits, tmp_path / "straight", epochs=3)
    assert leaves_equal(resumed.state, straight.state)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    assert sorted(os.listdir(out / "checkpoints")) == ["2", "3"]
    assert sorted(os.listdir(out)) == ["checkpoints", "metrics.csv", "metrics.json"]
    assert [r["epoch"] for r in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Integrity: a changed byte is refused, naming the checkpoint and the item.


def test_flipped_byte_in_the_arrays_is_refused(digits, tmp_path):
    run(digits, tmp_path, epochs=1)
    data_dir = tmp_path / "checkpoints" / "1" / "state" / "ocdbt.process_0" / "d"
    biggest = max(data_dir.iterdir(), key=lambda f: f.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0x80
    biggest.write_bytes(bytes(raw))
    with pytest.raises(train.CheckpointError, match=r"checkpoints/1 is damaged: (state|array \S+) ") as info:
        run(digits, tmp_path, epochs=1, resume=True)
    assert info.value.path == str(tmp_path / "checkpoints" / "1")


def test_swapped_valid_arrays_fail_their_checksum(digits, tmp_path):
    """Valid array files of another epoch: readable, but not what was saved (issue 11's silent
    sign flip was of this kind): the per-array SHA-256 refuses them, naming the array."""
    run(digits, tmp_path, epochs=2)
    ckpts = tmp_path / "checkpoints"
    shutil.rmtree(ckpts / "1" / "state")
    shutil.copytree(ckpts / "2" / "state", ckpts / "1" / "state")
    with pytest.raises(
        train.CheckpointError, match=r"checkpoints/1 is damaged: array \.params\[1\]\['bias'\]"
    ):
        train.load_checkpoint(tmp_path, template(), epoch=1)


def test_edited_metadata_is_refused(digits, tmp_path):
    run(digits, tmp_path, epochs=1)
    meta = tmp_path / "checkpoints" / "1" / "meta" / "metadata"
    text = meta.read_text()
    assert '"epoch": 1' in text
    meta.write_text(text.replace('"epoch": 1', '"epoch": 3', 1))  # issue 11: epoch field flipped
    with pytest.raises(
        train.CheckpointError, match=r"checkpoints/1 is damaged: meta fails its checksum"
    ) as info:
        run(digits, tmp_path, epochs=1, resume=True)
    assert info.value.item == "meta"


def test_old_msgpack_checkpoint_gets_a_clear_message(digits, tmp_path):
    (tmp_path / "checkpoint.msgpack").write_bytes(b"\x85\xa5state")
    with pytest.raises(
        FileNotFoundError, match=r"checkpoint.msgpack is a checkpoint of the old single-file format"
    ):
        run(digits, tmp_path, epochs=1, resume=True)


# ---------------------------------------------------------------------------------------------
# Run identity.


def test_changed_run_config_is_refused_unless_overridden(digits, tmp_path):
    run(digits, tmp_path, epochs=1)
    with pytest.raises(
        train.RunMismatchError, match=r"`epochs` 1 \(now 2\), `lr` 0\.01 \(now 0\.5\)"
    ) as info:
        run(digits, tmp_path, epochs=2, resume=True, hparams={"lr": 0.5})
    assert "override=('epochs', 'lr')" in str(info.value) and "--override epochs lr" in str(info.value)
    with pytest.raises(
        train.RunMismatchError, match=r"`optimizer_state` 'ScaleByAdamState' \(now 'TraceState'\)"
    ):
        run(digits, tmp_path, epochs=1, resume=True, optimizer=optax.sgd(1e-2, momentum=0.9))
    with pytest.raises(train.RunMismatchError, match=r"`data_sha256`"):
        shifted = digits._replace(train=data.Split(digits.train.images[::-1], digits.train.labels[::-1]))
        run(shifted, tmp_path, epochs=1, resume=True)
    result = run(digits, tmp_path, epochs=2, resume=True, hparams={"lr": 0.5}, override=("epochs", "lr"))
    assert [row["epoch"] for row in result.history] == [1, 2]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["overrides"] == [
        {"epoch": 1, "field": "epochs", "old": 1, "new": 2},
        {"epoch": 1, "field": "lr", "old": 0.01, "new": 0.5},
    ]
    assert train.load_checkpoint(tmp_path, template()).identity["lr"] == 0.5


# ---------------------------------------------------------------------------------------------
# One run per folder; the folder checked before training; metrics agree with the checkpoint.

HOLD_LOCK = "import sys, time; from jcnn.train.rundir import RunFolder; RunFolder(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(120)"


def test_second_concurrent_run_is_refused_and_a_dead_runs_lock_does_not_block(digits, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(train.RunLockedError, match=rf"is in use by another run \(pid {holder.pid} on "):
            run(digits, tmp_path, epochs=1)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (tmp_path / train.LOCK_NAME).exists()  # killed: its lock is stale now
    result = run(digits, tmp_path, epochs=1)
    assert len(result.history) == 1 and not (tmp_path / train.LOCK_NAME).exists()


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits; an immutable folder refuses even root
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root on a file system without chattr +i")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture
def no_training(monkeypatch):
    calls = []
    monkeypatch.setattr(fit_module, "_train_epoch", lambda *a, **k: calls.append(1) or pytest.fail("trained"))
    return calls


@pytest.mark.parametrize("sub", ["", "run"], ids=["folder-itself", "inside-it"])
def test_unwritable_folder_is_refused_before_training(digits, read_only_dir, no_training, sub):
    out = read_only_dir / sub if sub else read_only_dir
    with pytest.raises(
        PermissionError, match=rf"cannot write into the output folder {out} .*nothing was trained"
    ):
        run(digits, out, epochs=1)


def test_full_disk_is_refused_before_training(digits, tmp_path, monkeypatch, no_training):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(
        OSError, match=r"has 0\.0 MiB free but the checkpoints and metrics need about"
    ) as info:
        run(digits, tmp_path, epochs=1)
    assert info.value.errno == 28
    assert not (tmp_path / train.LOCK_NAME).exists()


def test_metrics_are_rewritten_from_the_checkpoint_and_stale_temp_files_removed(digits, tmp_path):
    run(digits, tmp_path, epochs=2)
    # A kill after the last checkpoint but before the metric files: they lag one epoch, and a
    # killed write left its temporary file.
    saved = json.loads((tmp_path / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps({**saved, "history": saved["history"][:1]}))
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / ".metrics.json.tmp-4194300").write_bytes(b"half")
    result = run(digits, tmp_path, epochs=2, resume=True)  # nothing left to train
    assert result.compile_time_s == 0.0
    assert json.loads((tmp_path / "metrics.json").read_text())["history"] == saved["history"]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "metrics.csv", "metrics.json"]


# ---------------------------------------------------------------------------------------------
# Data validated before training.


def with_split(ds, split, images=None, labels=None):
    old = getattr(ds, split)
    new = data.Split(old.images if images is None else images, old.labels if labels is None else labels)
    return ds._replace(**{split: new})


def bad(labels, i, value):
    labels = labels.copy()
    labels[i] = value
    return labels


@pytest.mark.parametrize(
    "split, change, error, match",
    [
        (
            "train",
            lambda s: {"labels": bad(s.labels, 5, -1)},
            ValueError,
            r"train label at index 5 is -1; labels must be integers in \[0, 10\)",
        ),
        ("train", lambda s: {"labels": bad(s.labels, 7, 10)}, ValueError, r"train label at index 7 is 10"),
        (
            "test",
            lambda s: {"labels": np.full_like(s.labels, 10)},
            ValueError,
            r"test label at index 0 is 10",
        ),
        (
            "train",
            lambda s: {"labels": s.labels.astype(np.float32)},
            TypeError,
            r"train labels must be integer class indices, got dtype float32",
        ),
        ("train", lambda s: {"labels": s.labels.astype(bool)}, TypeError, r"got dtype bool"),
        (
            "train",
            lambda s: {"labels": np.eye(10, dtype=np.int32)[s.labels]},
            ValueError,
            r"train labels must be 1-D",
        ),
        ("train", lambda s: {"labels": s.labels.astype(str)}, TypeError, r"got dtype <U"),
        (
            "train",
            lambda s: {"images": np.where(np.arange(640)[:, None, None, None] == 3, np.nan, s.images)},
            ValueError,
            r"train image at index 3 holds a non-finite value \(nan\)",
        ),
        (
            "test",
            lambda s: {"images": np.where(np.arange(100)[:, None, None, None] == 9, np.inf, s.images)},
            ValueError,
            r"test image at index 9 holds a non-finite value \(inf\)",
        ),
        (
            "train",
            lambda s: {"images": s.images.astype(object)},
            TypeError,
            r"train images must be a numeric .* got dtype object",
        ),
        (
            "test",
            lambda s: {"images": s.images[:, :7]},
            ValueError,
            r"test images must have shape \(n, 8, 8, 1\) like the model's input, got \(100, 7, 8, 1\)",
        ),
    ],
    ids=[
        "neg",
        "too-big",
        "test-all-10",
        "float",
        "bool",
        "one-hot",
        "str",
        "nan",
        "test-inf",
        "object",
        "test-shape",
    ],
)
def test_bad_data_is_refused_before_training(digits, no_training, split, change, error, match):
    ds = with_split(digits, split, **change(getattr(digits, split)))
    with pytest.raises(error, match=match):
        train.fit(MODEL, OPTIMIZER, ds, epochs=1, batch_size=32, progress=False)


# ---------------------------------------------------------------------------------------------
# The command line.


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--batch-size", "0", "argument --batch-size: must be >= 1, got 0"),
        ("--epochs", "-1", "argument --epochs: must be >= 0, got -1"),
        ("--lr", "nan", "argument --lr: must be > 0, got nan"),
        ("--seed", "1.5", "argument --seed: expected an integer, got '1.5'"),
        ("--override", "lr", "--override only applies with --resume"),
    ],
)
def test_cli_arguments_are_validated_by_argparse(train_script, capsys, flag, value, message):
    with pytest.raises(SystemExit) as info:
        train_script.parse_args([flag, value])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_cli_epochs_0_claims_no_checkpoint(train_script, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_script.main(["--no-progress", "--model", "mlp", "--epochs", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nothing trained, no checkpoint written" in printed and "wrote" not in printed
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train.load_checkpoint(out, template())
