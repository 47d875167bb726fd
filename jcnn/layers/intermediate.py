"""Intermediate features: a model's activations at chosen layer paths, as a layer of its own.

``features(model, paths)`` is a `Layer` whose output is the tuple of the activations at
``paths`` (as `jcnn.summary` names them: ``"serial[5]"``, ``"serial[4].residual.body"``), in the
order given, optionally followed by the model's output. Its params and state are the model's,
so it is a backbone: put a head after it, jit it, differentiate it, fine-tune it. The
activations are taken where each child returns to its combinator (`jcnn.layers.apply_child`):
no layer is run twice, and under ``jit`` XLA drops whatever only the unused output needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jcnn.layers.base import Layer
from jcnn.layers.spec import CombinatorSpec
from jcnn.layers.tree import _tapping, apply_child, init_child, layer_paths

__all__ = ["features", "FeaturesSpec"]

_SEGMENT = "features"


@dataclasses.dataclass(frozen=True)
class FeaturesSpec(CombinatorSpec):
    """The activations of ``model`` at ``paths`` (then its output if ``with_output``).

    ``features(model, paths, with_output=False)`` builds the `Layer`. Its output is a tuple
    with one entry per path; ``init`` gives their shapes; errors and summary rows carry the
    prefix ``features.``.

    Args:
      model: the `Layer` to take activations from.
      paths: paths of its layers, combinators or leaves, as the summary's ``path`` column (and
        `jcnn.layers.layer_paths`) names them.
      with_output: append the model's output to the tuple.

    Raises:
      ValueError: an empty ``paths``, a path the model does not have (the message lists some
        it has), or a path given twice.
      TypeError: ``model`` is not a Layer, or a path is not a str.

    >>> import jax, jax.numpy as jnp
    >>> from jcnn.layers import Conv, Dense, Flatten, MaxPool, Relu, serial
    >>> net = serial(Conv(4, 3, padding=1), Relu(), MaxPool(2), Flatten(), Dense(10))
    >>> backbone = features(net, ["serial[1]", "serial[2]"])
    >>> shapes, params, state = backbone.init(jax.random.key(0), (8, 8, 1))
    >>> shapes
    ((8, 8, 4), (4, 4, 4))
    >>> [f.shape for f in backbone.apply(params, state, jnp.ones((2, 8, 8, 1)), batch_ndim=1)[0]]
    [(2, 8, 8, 4), (2, 4, 4, 4)]
    """

    name = "features"
    model: Layer
    paths: Any
    with_output: bool = False

    def __post_init__(self):
        where = self.name
        if not isinstance(self.model, Layer):
            raise TypeError(f"{where}: `model` must be a Layer, got {self.model!r}.")
        paths = (self.paths,) if isinstance(self.paths, str) else tuple(self.paths)
        if not paths:
            raise ValueError(f"{where}: `paths` must name at least one layer path, got none.")
        if not all(isinstance(p, str) for p in paths):
            raise TypeError(f"{where}: `paths` must be strs such as 'serial[3]', got {paths!r}.")
        known = layer_paths(self.model)
        for p in paths:
            if p not in known:
                listed = ", ".join(known[:12]) + (f", ... ({len(known)} in all)" if len(known) > 12 else "")
                raise ValueError(
                    f"{where}: the model has no layer at path {p!r}; its paths (the summary's"
                    f" `path` column) are {listed or 'none: it is a single layer'}."
                )
        if len(set(paths)) != len(paths):
            raise ValueError(f"{where}: `paths` names a path twice: {paths!r}.")
        if not isinstance(self.with_output, bool):
            raise TypeError(f"{where}: `with_output` must be True or False, got {self.with_output!r}.")
        self._canonical(paths=paths)

    def _prefixed(self) -> tuple[str, ...]:
        return tuple(f"{_SEGMENT}.{p}" for p in self.paths)

    def _select(self, got: dict[str, Any], out: Any) -> tuple:
        # While `Layer.children` records the route nothing runs, so nothing is tapped: each
        # feature then stands in as the output.
        picked = tuple(got.get(p, out) for p in self._prefixed())
        return picked + (out,) if self.with_output else picked

    def init(self, key, input_shape, /):
        with _tapping(self._prefixed()) as got:
            out, params, state = init_child(_SEGMENT, self.model, key, input_shape)
        return self._select(got, out), params, state

    def apply(self, params, state, x, /, *, key=None, train=False, batch_ndim=0):
        with _tapping(self._prefixed()) as got:
            out, new_state = apply_child(
                _SEGMENT, self.model, params, state, x, key=key, train=train, batch_ndim=batch_ndim
            )
        return self._select(got, out), new_state

    def route(self, flow, visit, /):
        with _tapping(self._prefixed()) as got:
            out = visit(_SEGMENT, self.model, flow)
        return self._select(got, out)


def features(model: Layer, paths: Any, *, with_output: bool = False) -> Layer:
    """A layer returning ``model``'s activations at ``paths``; see `FeaturesSpec`.

    ResNet-18's four stages as a feature pyramid:

    >>> from jcnn import models
    >>> from jcnn.summary import summary
    >>> net = models.resnet18(10, (64, 64, 3))
    >>> pyramid = features(net, ["serial[5]", "serial[7]", "serial[9]", "serial[11]"])
    >>> summary(pyramid, (64, 64, 3)).totals["output_shape"]
    ((16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512))
    """
    return Layer.of(FeaturesSpec(model, paths, with_output))
