"""Smoke tests of the seed-claim experiment scripts: each runs with ``--quick`` in a subprocess
into ``tmp_path`` (headless matplotlib, rank promotion an error as in conftest), exits 0, writes
its JSON and figures, and prints the numbers the seed states.

The scripts train small networks, so this file takes about a minute and a half on two CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

pytestmark = pytest.mark.slow


def run_quick(script: str, out: Path, *extra: str, timeout: int = 240) -> tuple[str, dict]:
    """Run ``experiments/<script>.py --quick --out <out>``; return its stdout and its JSON."""
    env = dict(os.environ, MPLBACKEND="Agg", JAX_NUMPY_RANK_PROMOTION="raise", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{script}.py"), "--quick", "--out", str(out), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    with open(out / f"{script}.json") as f:
        return proc.stdout, json.load(f)


def assert_pngs(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 5000, f"missing or empty figure {path}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shapes_walkthrough(tmp_path):
    stdout, result = run_quick("shapes_walkthrough", tmp_path)
    assert result["all_ok"], [r for r in result["rows"] if not r["ok"]]
    assert result["conv_params"] == 760 and result["fc_params"] == 31467520
    assert result["conv_macs_seed"] == 768000
    assert "760" in stdout and "31,467,520" in stdout and "768,000" in stdout
    assert "(7 - 3 + 2*0)/3 + 1 = 2.33" in stdout
    claims = {r["claim"]: r for r in result["rows"]}
    assert claims["28x28x4 * ten 5x5x4 filters"]["op"] == [24, 24, 10]
    assert claims["1x1 conv: 56x56x64 -> 32 filters"]["op"] == [56, 56, 32]


def test_template_matching(tmp_path):
    stdout, result = run_quick("template_matching", tmp_path, "--figures", str(tmp_path / "figs"))
    true = result["template_top_left"]
    for name, r in result["results"].items():
        if r["method"] == "ncc":  # every condition: clean, noisy, brightness/contrast
            assert r["peak_error_px"] <= 3, (name, r["peak"], true)
    assert result["ncc_affine_max_abs_diff"] < 1e-2
    assert "peak" in stdout
    assert_pngs(tmp_path, "template_matching")
    assert_pngs(tmp_path / "figs", "template_matching")


def test_fc_vs_conv(tmp_path):
    _, result = run_quick("fc_vs_conv", tmp_path)
    c = result["conversions"]
    assert c["dense_to_conv_max_abs_diff"] < 1e-4
    assert c["convolutionalize_mlp_max_abs_diff"] < 1e-4
    assert c["conv_to_dense_max_abs_diff"] < 1e-4
    assert c["conv_to_dense_distinct"] <= c["conv_weights"]
    assert (
        c["conv_to_dense_nonzero"] < c["conv_to_dense_matrix_shape"][0] * c["conv_to_dense_matrix_shape"][1]
    )
    sm = result["scoremap"]["cnn-valid"]
    assert sm["aligned_max_abs_diff"] < 1e-4  # no padding: sliding == classifying each window
    models = {m["model"]: m for m in result["models"]}
    assert models["cnn-valid"]["mean"] > 0.85
    assert models["mlp-128"]["params"] == 8 * 8 * 128 + 128 + 128 * 10 + 10
    assert_pngs(tmp_path, "fc_vs_conv_accuracy", "fc_vs_conv_scoremap")


def test_one_by_one(tmp_path):
    stdout, result = run_quick("one_by_one", tmp_path)
    assert result["ycbcr"]["conv_vs_dense"] < 1e-5
    fm = result["feature_map"]
    assert fm["output_shape"] == [56, 56, 32] and fm["input_shape"] == [56, 56, 64]
    assert fm["conv_vs_dense"] < 1e-5 and fm["conv_vs_numpy64"] < 1e-4
    space = result["space"]
    assert space["pixels_changed_by_one_pixel_1x1"] == 1 and space["pixels_changed_by_one_pixel_3x3"] == 9
    assert space["shuffle_then_unshuffle_1x1"] < 1e-6 < space["shuffle_then_unshuffle_3x3"]
    rows = {r["block"]: r for r in result["resnet"]["rows"]}
    w64 = rows["1x1 256->64, 3x3, 1x1 ->256"]
    assert w64["params"] == 256 * 64 + 64 + 9 * 64 * 64 + 64 + 64 * 256 + 256
    assert w64["params_factor"] == pytest.approx((9 * 256 * 256 + 256) / w64["params"])
    assert w64["flops_factor"] > 8
    assert result["googlenet_5x5"]["params_factor"] == pytest.approx(153632 / 15920)
    assert_pngs(tmp_path, "one_by_one")


def test_pool_vs_strided(tmp_path):
    _, result = run_quick("pool_vs_strided", tmp_path)
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"max", "avg", "strided", "allconv"}
    for r in rows.values():
        assert r["mean"] > 0.5, r  # every variant learns digits in a few epochs
        assert r["train_time_mean_s"] > 0
    assert rows["max"]["params"] == rows["avg"]["params"] == rows["strided"]["params"]
    assert rows["allconv"]["params"] > rows["max"]["params"]
    assert rows["strided"]["flops"] < rows["max"]["flops"] < rows["allconv"]["flops"]
    assert_pngs(tmp_path, "pool_vs_strided")


def test_claims_at_scale(tmp_path):
    stdout, result = run_quick("claims_at_scale", tmp_path)
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"max", "strided", "conv", "none"}
    for r in rows.values():
        assert len(r["runs"]) == 2 and r["test_accuracy"]["mean"] > 0.2, r  # learning, 2 epochs on digits
        assert set(r["robust"]) == {"clean", "noise:0.2", "shift:1", "shift:2"}
    # The variants share their convolutions except the extra strided conv, and "none" keeps the
    # full-size maps for the head.
    assert (
        rows["max"]["params"] == rows["strided"]["params"] < rows["conv"]["params"] < rows["none"]["params"]
    )
    tests = result["tests"]
    assert set(tests) == {"strided", "conv", "none"}
    assert all(0.0 <= t["p"] <= 1.0 for v in tests.values() for t in v.values())
    assert set(result["verdicts"]) == {"claim_11", "claim_12"}
    layers = result["features"]["layers"]
    assert [layer["rf_size"] for layer in layers] == sorted(layer["rf_size"] for layer in layers)
    assert len(layers) == 4 and layers[0]["rf_size"] == 3
    assert all(-1.0 <= x <= 1.0 for layer in layers for x in layer["selectivity"])
    assert "claim 3" in stdout
    assert_pngs(tmp_path, "claims_pooling", "claims_features")


def test_visualize(tmp_path):
    _, result = run_quick("visualize", tmp_path)
    hand = result["hand"]
    assert hand["rotation_max_abs_diff"] < 1e-5
    e = hand["laplacian_variance"]
    assert e["blurred"] < e["photo"] < e["sharpened"]
    learned = result["learned"]
    assert learned["test_accuracy"] > 0.8
    assert learned["activation_shapes"][1] == [8, 8, 20]
    assert_pngs(tmp_path, "visualize_filters", "visualize_learned")
