"""Tests of the test configuration itself: the ``--accelerator`` switch, the `x64` fixture and
the version shims in conftest.py."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

# jax.random.bits(jax.random.key(0), (2,), jnp.uint32) under the partitionable threefry (the
# default since jax 0.5); the legacy stream starts [928981903, 3453687069].
EXPECTED_BITS = [4070199207, 4202968722]


def test_accelerator_refuses_a_cpu_backend():
    # JAX_PLATFORMS=cpu makes the refusal the expected outcome on any machine, GPU hosts included.
    # --collect-only: were the refusal broken, nothing would run (no recursion into this test).
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--accelerator",
            "--collect-only",
            "-p",
            "no:cacheprovider",
            f"{Path(__file__).name}::test_x64_fixture_gives_float64",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).parent,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "--accelerator: JAX's default backend must be a GPU or TPU, got 'cpu'" in out, out


def test_session_precision_follows_the_switch(request):
    # The plain suite keeps JAX's default; --accelerator (only possible off the CPU) asks for
    # full float32 in every conv and matmul.
    want = "highest" if request.config.getoption("accelerator") else None
    assert jax.config.jax_default_matmul_precision == want


def test_x64_fixture_gives_float64(x64):
    assert jnp.ones(2, dtype=jnp.float64).dtype == jnp.float64
    assert jnp.asarray(1.0).dtype == jnp.float64


def test_float32_outside_the_fixture():
    if os.environ.get("JAX_ENABLE_X64", "").lower() in ("1", "true"):
        pytest.skip("JAX_ENABLE_X64 turns float64 on for the whole session")
    assert jnp.asarray(1.0).dtype == jnp.float32
    with jax.enable_x64(True):  # the spelling hypothesis test bodies use, on every jax version
        assert jnp.asarray(1.0).dtype == jnp.float64
    assert jnp.asarray(1.0).dtype == jnp.float32


def test_random_streams_are_partitionable_threefry():
    # conftest asks jax < 0.5 for jax >= 0.5's random stream; seeded tests depend on it.
    assert jax.config.jax_threefry_partitionable
    bits = jax.random.bits(jax.random.key(0), (2,), jnp.uint32)
    assert bits.tolist() == EXPECTED_BITS
