"""jcnn: a functional CNN library for JAX.

``jcnn.ops`` (conv, pooling), ``jcnn.shapes`` (shape arithmetic), ``jcnn.layers`` ((init, apply)
pairs derived from frozen specs), ``jcnn.initializers``, ``jcnn.summary`` (per-layer table),
``jcnn.convert``, ``jcnn.data``, ``jcnn.train``, ``jcnn.models``.

Submodules load on first use (PEP 562 ``__getattr__``): ``import jcnn.ops`` or
``import jcnn.shapes`` does not pay for ``jcnn.train``'s optax and orbax imports, while
``jcnn.train``, ``jcnn.data`` ... still work as attributes after ``import jcnn``.

>>> import jcnn
>>> jcnn.shapes.conv_output_size(32, 5)
28
"""

import importlib
import sys
import types

__version__ = "0.1.0"

_SUBMODULES = ("ops", "shapes", "layers", "initializers", "convert", "data", "train", "models")

__all__ = [
    "ops",
    "shapes",
    "layers",
    "initializers",
    "summary",
    "Summary",
    "convert",
    "data",
    "train",
    "models",
    "ShapeError",
    "__version__",
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"jcnn.{name}")
    if name in ("summary", "Summary"):
        module = importlib.import_module("jcnn.summary")  # binds `summary`, see _Package
        return getattr(module, name)
    if name == "ShapeError":
        return importlib.import_module("jcnn.shapes").ShapeError
    raise AttributeError(f"module 'jcnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This package's module type: ``jcnn.summary`` stays the function, never the module.

    Loading a submodule makes the import system ``setattr`` it on its package; eager imports
    used to rebind ``jcnn.summary`` to the function right after. With lazy loading the module
    may be imported at any time (``from jcnn.summary import summary`` anywhere), so the
    rebinding happens here, on every such ``setattr``.
    """

    def __setattr__(self, name, value):
        if name == "summary" and isinstance(value, types.ModuleType):
            super().__setattr__("Summary", value.Summary)
            value = value.summary
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
