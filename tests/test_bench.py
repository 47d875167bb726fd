"""Smoke test: experiments/bench.py runs end to end and writes its JSON and markdown table.

Timings are never asserted (they belong to the benchmark's own output); this only proves the
script works, on the smallest case with one repetition.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_writes_its_table(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "bench.py"),
        "--cases",
        "1x1",
        "--batches",
        "2",
        "--reps",
        "1",
        "--impls",
        "auto",
        "xla",
        "im2col",
        "--no-lenet",
        "--out",
        str(tmp_path),
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    (row,) = results["conv"]
    assert row["case"].startswith("1x1") and row["batch"] == 2
    assert {"lax", "auto", "xla", "im2col"} <= set(row["fwdbwd"])
    assert all(t > 0 for t in row["fwd"].values())
    table = (tmp_path / "bench.md").read_text()
    assert "| 1x1 8x8x128->128 | 2 |" in table
    assert "Matmul ceiling" in table
