"""experiments/bench.py: its contenders compute the same networks, and every suite runs end to end.

Timings are never asserted (they belong to the benchmark's own output). What is asserted: the
jcnn, raw-lax, Flax and PyTorch LeNets given the same weights give the same logits, the ResNet-8s
have the same parameter count, and ``--quick --suite all`` writes every table with the
contenders, segments, flag settings and conv cases it promises.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "experiments" / "bench.py"
PROFILE = ROOT / "experiments" / "profile_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("jcnn_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _by_shape(leaves):
    """LeNet's parameter shapes are all distinct, so a shape names a parameter."""
    out = {tuple(leaf.shape): leaf for leaf in leaves}
    assert len(out) == len(leaves) == 8
    return out


def test_lenet_contenders_compute_the_same_function(bench):
    net = bench.L.batched(bench.jcnn_lenet())
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 28, 28, 1)), jnp.float32)
    _, params, state = net.init(jax.random.key(0), x.shape)
    w = _by_shape(jax.tree_util.tree_leaves(params))
    want = np.asarray(jax.jit(lambda p, x: net.apply(p, state, x)[0])(params, x))
    assert want.shape == (3, 10) and np.abs(want).max() > 0.1

    lax_params = {k: w[tuple(v.shape)] for k, v in bench.lax_lenet_init(1).items()}
    np.testing.assert_allclose(jax.jit(bench.lax_lenet)(lax_params, x), want, rtol=1e-4, atol=1e-4)

    flax_lenet = bench.flax_models()["lenet"]
    fparams = jax.eval_shape(flax_lenet.init, jax.random.key(2), x)["params"]
    fparams = jax.tree_util.tree_map(lambda p: w[tuple(p.shape)], fparams)
    got = jax.jit(flax_lenet.apply)({"params": fparams}, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    torch = pytest.importorskip("torch")
    tm = bench.torch_model("lenet", torch)
    k1, b1, k2, b2 = (np.asarray(w[s]) for s in [(5, 5, 1, 20), (20,), (5, 5, 20, 50), (50,)])
    fc1, fb1, fc2, fb2 = (np.asarray(w[s]) for s in [(2450, 500), (500,), (500, 10), (10,)])
    # torch flattens (c, h, w); jcnn and lax flatten (h, w, c).
    fc1 = fc1.reshape(7, 7, 50, 500).transpose(2, 0, 1, 3).reshape(2450, 500)
    new = [k1.transpose(3, 2, 0, 1), b1, k2.transpose(3, 2, 0, 1), b2, fc1.T, fb1, fc2.T, fb2]
    with torch.no_grad():
        for p, v in zip(tm.parameters(), new, strict=True):
            p.copy_(torch.from_numpy(np.array(v)))
        got = tm(torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy())).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resnet8_contenders_have_the_same_parameters(bench):
    net = bench.L.batched(bench.jcnn_resnet8())
    _, params, state = jax.eval_shape(lambda k: net.init(k, (2, 32, 32, 3)), jax.random.key(0))
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(
        lambda k: bench.flax_models()["resnet8"].init(k, x, train=False), jax.random.key(0)
    )
    n_jcnn, n_flax = bench.param_count(params), bench.param_count(variables["params"])
    # 3 BatchNorms in the stem and each plain block, 5 in each projecting block; 2 stats each.
    assert bench.param_count(state) == bench.param_count(variables["batch_stats"]) > 0
    assert n_jcnn == n_flax == 78_042
    torch = pytest.importorskip("torch")
    assert sum(p.numel() for p in bench.torch_model("resnet8", torch).parameters()) == n_jcnn


@pytest.mark.slow  # about a minute of subprocesses: run once in CI by `python -m pytest -m slow`
def test_bench_quick_runs_every_suite_and_writes_its_tables(tmp_path, bench):
    # --xla-flags with a flag at its default value: the rerun-with-flags path runs, numbers don't move.
    flag = "--xla_cpu_multi_thread_eigen=true"
    cmd = [
        sys.executable,
        str(BENCH),
        "--quick",
        "--suite",
        "all",
        "--out",
        str(tmp_path),
        f"--xla-flags={flag}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    has_torch = importlib.util.find_spec("torch") is not None
    torch_cols = {"torch NCHW", "torch channels_last"} if has_torch else set()

    steps = json.loads((tmp_path / "steps.json").read_text())
    assert steps["machine"]["xla_flags"] == flag and steps["batch"] == 8
    rows = steps["models"]["lenet"]["rows"]
    assert {"jcnn", "raw lax", "flax linen"} | torch_cols <= set(rows)
    assert {r["params"] for r in rows.values()} == {1_256_080}
    assert all(r["n"] == steps["rounds"] * steps["iters"] and r["median_ms"] > 0 for r in rows.values())
    if has_torch:
        assert steps["models"]["lenet"]["torch_best"] in torch_cols
        assert "vs PyTorch best" in (tmp_path / "steps.md").read_text()

    layers = json.loads((tmp_path / "layers.json").read_text())
    segs = [r["segment"] for r in layers["rows"]]
    assert segs == [
        "conv1",
        "relu+pool1",
        "conv2",
        "relu+pool2",
        "flatten+dense1+relu",
        "dense2+loss",
        "adam update",
    ]
    assert layers["rows"][2]["input"] == [8, 14, 14, 20]
    assert {"jcnn", "raw lax"} | torch_cols <= set(layers["step"])
    assert "| **whole step** |" in (tmp_path / "layers.md").read_text()

    convs = json.loads((tmp_path / "convs.json").read_text())
    assert [r["case"] for r in convs["rows"]] == [c.name for c in bench.CONV_LAYERS[:2]]
    first = convs["rows"][0]
    # auto takes oneDNN on CPU where its kernels are active; else batch 8 is a small call (under
    # HYBRID_MIN_FLOPS) and auto takes im2col
    from jcnn.ops import onednn

    assert first["input"] == [8, 28, 28, 1]
    assert first["auto picks"] == ("onednn" if onednn.available() else "im2col")
    assert set(bench.CONV_LAYER_IMPLS) | torch_cols <= set(first)
    assert "| LeNet conv2 5x5 14x14x20->50 |" in (tmp_path / "convs.md").read_text()

    flags = json.loads((tmp_path / "flags.json").read_text())
    assert flags["settings"] == {"default": "", "ynn-off": "--xla_cpu_experimental_ynn_fusion_type="}
    assert flags["seen"] == flags["settings"]  # each child ran with its own XLA_FLAGS
    assert "LeNet step raw lax" in flags["table"] and any("depthwise" in k for k in flags["table"])
    assert "ynn-off" in (tmp_path / "flags.md").read_text()

    ops = json.loads((tmp_path / "ops.json").read_text())
    (row,) = ops["conv"]
    assert row["case"].startswith("5x5") and row["batch"] == 2
    assert {"lax", "auto", "xla"} | ({"torch"} if has_torch else set()) <= set(row["fwdbwd"])
    assert "| 5x5 32x32x3->32 | 2 |" in (tmp_path / "ops.md").read_text()


def test_profile_step_attributes_the_step_to_its_layers():
    # experiments/profile_step.py: a traced LeNet step at batch 4, read back per layer and phase.
    sys.path.insert(0, str(PROFILE.parent))
    try:
        spec = importlib.util.spec_from_file_location("jcnn_profile_step", PROFILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PROFILE.parent))
    res = module.profile("lenet", "im2col", batch=4, steps=2)
    rows = {(r["layer"], r["phase"]): r for r in res["rows"]}
    for key in [("serial[0] Conv", "forward"), ("serial[3] Conv", "forward"), ("serial[3] Conv", "backward"),
                ("serial[7] Dense", "backward")]:  # fmt: skip
        assert key in rows and rows[key]["ms"] > 0, sorted(rows)
    assert res["step_ms_median"] > 0
    assert "| serial[3] Conv | backward |" in module.markdown(res)
    # the HLO reader: a tuple-shaped while loop is a container (its body is counted instead)
    ops = module.hlo_ops("ENTRY %main (p: f32[2]) -> f32[2] {\n"
                         "  %while.1 = (s32[], f32[2]{0}) while(%tuple.1), condition=%c, body=%b\n"
                         '  ROOT %dot.2 = f32[2]{0} dot(%a, %b), metadata={op_name="jit(f)/serial[1]/Dense/dot_general"}\n'
                         "}")  # fmt: skip
    assert ops["while.1"]["opcode"] == "while" and ops["dot.2"]["opcode"] == "dot"
    assert module.where(ops["dot.2"]["op_name"]) == ("serial[1] Dense", "forward")
    assert module.where("jit(step)/transpose(jvp(serial[3]))/Conv/while/body/dot_general") == (
        "serial[3] Conv",
        "backward",
    )
