"""The metric files of a run, ``metrics.json`` and ``metrics.csv``, written from the history.

The history lives in the checkpoint; these files are rewritten from it after every committed
checkpoint and when a run starts or resumes, so they never disagree with it (issue 11 item 3).
"""

from __future__ import annotations

import csv
import io
import json
import os

from jcnn.train.rundir import atomic_write

__all__ = ["METRICS_JSON", "METRICS_CSV", "CSV_FIELDS", "write_metrics"]

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"

#: The columns of ``metrics.csv`` and the keys of every history row.
CSV_FIELDS = (
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "epoch_time_s",
    "train_time_s",
    "eval_time_s",
    "images_per_s",
)


def write_metrics(out_dir: str | os.PathLike, history: list, extra: dict) -> None:
    """Atomically write ``metrics.json`` (``extra`` plus the history) and ``metrics.csv``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_metrics(d, [{"epoch": 1, "step": 10}], {"seed": 0})
    ...     print(open(os.path.join(d, METRICS_CSV)).read().splitlines()[1])
    1,10,,,,,,,,
    """
    out_dir = os.fspath(out_dir)
    atomic_write(
        os.path.join(out_dir, METRICS_JSON),
        json.dumps({**extra, "history": history}, indent=2).encode(),
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(os.path.join(out_dir, METRICS_CSV), buf.getvalue().encode())
