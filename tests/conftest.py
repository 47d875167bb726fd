"""Test configuration: float32 by default (the dtype users run), rank promotion an error,
deterministic hypothesis, the `x64` fixture for the tests whose oracle needs float64, and the
``--accelerator`` switch that runs the suite on a GPU or TPU.

Running on an accelerator::

    python -m pytest --accelerator

runs the whole suite on the backend JAX picks (``jax.default_backend()``), refuses to start if
that is the CPU, and sets ``jax_default_matmul_precision`` to ``"highest"`` for the session. The
tests compare float32 results with float64 oracles at float32 tolerances; at JAX's default
precision an NVIDIA GPU since Ampere computes float32 convolutions and matmuls in TF32 (10-bit
mantissa) and a TPU in bfloat16 passes, which no float32 tolerance covers. With ``"highest"``
the comparisons check jcnn's arithmetic, not the hardware's default rounding.

Without the option the suite runs on whatever JAX picks at JAX's default precision; the last
line of the report says which jax, backend, device and precision a run used.
"""

import importlib.util
import os
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_rank_promotion", "raise")

# Version shims: the suite runs unchanged on every jax from the floor in pyproject.toml up.
# `jax.enable_x64` (the float64 context manager) is top-level since jax 0.8; older versions
# have the same context manager as `jax.experimental.enable_x64`. Test bodies call
# `jax.enable_x64(True)`, so give old jax the name rather than a second spelling per test.
if not hasattr(jax, "enable_x64"):
    from jax.experimental import enable_x64 as _enable_x64

    jax.enable_x64 = _enable_x64
# jax 0.5 made the partitionable threefry the default, which changed every random stream.
# Ask older jax for the same one, so seeded tests (initial weights, dropout masks) see the
# same numbers on every supported version.
if not getattr(jax.config, "jax_threefry_partitionable", True):
    jax.config.update("jax_threefry_partitionable", True)

settings.register_profile(
    "jcnn",
    derandomize=True,
    deadline=None,
    max_examples=int(os.environ.get("JCNN_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("jcnn")


def pytest_addoption(parser):
    parser.addoption(
        "--accelerator",
        action="store_true",
        default=False,
        help="run on the GPU/TPU JAX sees (refused if jax.default_backend() is 'cpu'), "
        "with jax_default_matmul_precision='highest' for the session.",
    )


def pytest_configure(config):
    if not config.getoption("accelerator"):
        return
    backend = jax.default_backend()
    if backend == "cpu":
        raise pytest.UsageError(
            f"--accelerator: JAX's default backend must be a GPU or TPU, got 'cpu' "
            f"(jax {jax.__version__}, devices {jax.devices()}). Install a jaxlib for the "
            f'accelerator (e.g. pip install -U "jax[cuda12]"), check that JAX_PLATFORMS does '
            f"not say cpu, or run without --accelerator."
        )
    # float32 at full precision (no TF32, no bf16 passes) for every conv and matmul that
    # passes precision=None, so float32-vs-float64 tolerances mean the same as on a CPU.
    jax.config.update("jax_default_matmul_precision", "highest")


def pytest_terminal_summary(terminalreporter):
    # At the end, not in the header: addopts has -q, which hides the header.
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    precision = jax.config.jax_default_matmul_precision or "JAX's default"
    terminalreporter.write_line(
        f"jcnn tests ran on jax {jax.__version__}, backend {jax.default_backend()} ({devices}); "
        f"matmul precision: {precision}"
    )


@pytest.fixture
def x64():
    """float64 switched on for one test only: PyTorch float64 oracles and `check_grads`.

    Hypothesis tests cannot take function-scoped fixtures; they use
    ``with jax.enable_x64(True):`` in their body instead.
    """
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def train_script():
    """experiments/train.py loaded as a module: its parse_args / main called in this process."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "train.py"
    spec = importlib.util.spec_from_file_location("train_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
