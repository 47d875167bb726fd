"""Pure, jit-able, vmap-able ops: convolution and pooling."""

from jcnn.ops.conv import auto_as, auto_impl, conv, conv_transpose
from jcnn.ops.pool import (
    adaptive_avg_pool,
    adaptive_max_pool,
    avg_pool,
    global_avg_pool,
    global_max_pool,
    lp_pool,
    max_pool,
    min_pool,
)

__all__ = [
    "conv",
    "conv_transpose",
    "auto_impl",
    "auto_as",
    "max_pool",
    "avg_pool",
    "min_pool",
    "lp_pool",
    "global_avg_pool",
    "global_max_pool",
    "adaptive_avg_pool",
    "adaptive_max_pool",
]
