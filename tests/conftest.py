"""Test configuration: float32 by default (the dtype users run), rank promotion an error,
deterministic hypothesis, and the `x64` fixture for the tests whose oracle needs float64."""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "jcnn",
    derandomize=True,
    deadline=None,
    max_examples=int(os.environ.get("JCNN_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("jcnn")


@pytest.fixture
def x64():
    """float64 switched on for one test only: PyTorch float64 oracles and `check_grads`.

    Hypothesis tests cannot take function-scoped fixtures; they use
    ``with jax.enable_x64(True):`` in their body instead.
    """
    with jax.enable_x64(True):
        yield
