"""jcnn: a functional CNN library for JAX."""

from jcnn import ops, shapes
from jcnn.shapes import ShapeError

__version__ = "0.1.0"

__all__ = ["ops", "shapes", "ShapeError", "__version__"]
