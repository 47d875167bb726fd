"""Test configuration: float64 available, rank promotion an error, deterministic hypothesis."""

import os

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)
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
