"""jcnn: a functional CNN library for JAX.

``jcnn.ops`` (conv, pooling), ``jcnn.shapes`` (shape arithmetic), ``jcnn.layers`` ((init, apply)
pairs), ``jcnn.summary`` (per-layer table), ``jcnn.convert``, ``jcnn.data``, ``jcnn.train``,
``jcnn.models``.
"""

from jcnn import convert, data, layers, models, ops, shapes, train
from jcnn.shapes import ShapeError
from jcnn.summary import Summary, summary

__version__ = "0.1.0"

__all__ = [
    "ops",
    "shapes",
    "layers",
    "summary",
    "Summary",
    "convert",
    "data",
    "train",
    "models",
    "ShapeError",
    "__version__",
]
