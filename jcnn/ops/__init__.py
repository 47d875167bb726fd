"""Pure, jit-able, vmap-able ops: convolution and pooling (and which conv kernels are active: `backends`)."""

from jcnn.ops import onednn
from jcnn.ops.conv import Backend, auto_as, auto_impl, auto_transpose_impl, backends, conv, conv_transpose
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
    "auto_transpose_impl",
    "auto_as",
    "backends",
    "Backend",
    "onednn",
    "max_pool",
    "avg_pool",
    "min_pool",
    "lp_pool",
    "global_avg_pool",
    "global_max_pool",
    "adaptive_avg_pool",
    "adaptive_max_pool",
]
