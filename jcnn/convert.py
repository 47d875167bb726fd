"""Dense <-> conv conversion (the lecture's "a fully-connected layer is a convolution, and the
other way round") and PyTorch weight-layout helpers.

PyTorch stores conv weights ``(c_out, c_in // groups, *k)`` (OIHW), transposed-conv weights
``(c_in, c_out // groups, *k)``, Linear weights ``(out, in)``, and flattens NCHW activations
channel-major; jcnn uses ``(*k, c_in // groups, c_out)`` (HWIO), ``(*k, c_in, c_out // groups)``,
``(in, out)`` and channels-last flattening. These helpers move weights across once, on the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.layers.base import Layer, input_shape_of, output_shape
from jcnn.layers.combinators import serial
from jcnn.layers.conv import Conv
from jcnn.layers.dense import Dense
from jcnn.shapes import ShapeError

__all__ = [
    "dense_to_conv",
    "conv_to_dense",
    "convolutionalize",
    "conv_from_torch",
    "dense_from_torch",
    "nchw_rows_to_nhwc",
]


def dense_to_conv(params, input_shape) -> tuple[Layer, dict]:
    """A ``Flatten -> Dense`` head on an ``(h, w, c)`` input as one ``Conv`` with an ``(h, w)`` kernel.

    The conv gives the same numbers as a ``(1, 1, out)`` map on the original input; on a larger
    input it slides, giving a score map (Long et al., 2015, "convolutionalization"). A Dense on
    the last axis that follows it needs no conversion: jcnn's `Dense` already acts per pixel.

    Args:
      params: the Dense params ``{"kernel": (h*w*c, out), "bias": (out,)}``.
      input_shape: the per-example shape the Flatten received, ``(*spatial, c)``.

    Returns:
      ``(layer, params)``: ``Conv(out, spatial)`` and ``{"kernel": (*spatial, c, out), "bias"}``.

    Raises:
      ShapeError: the kernel's input features are not ``prod(input_shape)``.

    >>> import jax, jax.numpy as jnp
    >>> from jcnn.layers import Dense
    >>> _, dense_params, _ = Dense(10).init(jax.random.key(0), (7 * 7 * 50,))
    >>> conv, conv_params = dense_to_conv(dense_params, (7, 7, 50))
    >>> conv, conv_params["kernel"].shape
    (Conv(10, (7, 7)), (7, 7, 50, 10))
    """
    where = "dense_to_conv"
    shape = input_shape_of(input_shape, where)
    kernel = params["kernel"]
    if len(shape) < 2:
        raise ShapeError(
            f"{where}: `input_shape` must be (*spatial, channels) with a spatial dim, got {shape}."
        )
    if kernel.ndim != 2 or kernel.shape[0] != math.prod(shape):
        raise ShapeError(
            f"{where}: the Dense kernel has shape {tuple(kernel.shape)}, but `input_shape` {shape}"
            f" flattens to {math.prod(shape)} features; pass the shape that Flatten received."
        )
    out = kernel.shape[1]
    has_bias = "bias" in params
    layer = Conv(out, shape[:-1], bias=has_bias, param_dtype=kernel.dtype)
    # jcnn's Flatten is row-major over (*spatial, c), so the rows reshape straight into HWIO.
    new = {"kernel": kernel.reshape(shape + (out,))}
    if has_bias:
        new["bias"] = params["bias"]
    return layer, new


def conv_to_dense(layer: Layer, params, input_shape, state=(), *, dtype=None) -> tuple[Layer, dict]:
    """An affine layer (Conv, ConvTranspose, AvgPool, ...) materialised as its dense matrix.

    ``Dense(n_out)`` with the returned params maps ``flatten(x)`` to ``flatten(layer(x))``
    for ``x`` of ``input_shape``: the kernel is the Jacobian (the layer is affine, so it is
    the same everywhere; built by pushing the identity basis through, ``jax.jacfwd``, or by
    ``jax.jacrev`` when the output is smaller) and the bias is ``layer(0)``. This is the
    lecture's point that a convolution is a (sparse, weight-shared) fully-connected layer:
    ``n_in * n_out`` weights instead of ``prod(k) * c_in * c_out``.

    Args:
      layer: an affine `Layer` (no ReLU, no max pooling: those are not linear).
      params: its params.
      input_shape: the per-example input shape.
      state: its state (``()`` for stateless layers).
      dtype: the matrix's dtype; default the params' (for a parameter-free layer such as
        AvgPool, JAX's default float: float64 when x64 is enabled).

    Returns:
      ``(Dense(n_out), {"kernel": (n_in, n_out), "bias": (n_out,)})``.

    >>> import jax, jax.numpy as jnp
    >>> from jcnn.layers import Conv
    >>> conv = Conv(2, 3)
    >>> _, p, _ = conv.init(jax.random.key(0), (4, 4, 1))
    >>> dense, dp = conv_to_dense(conv, p, (4, 4, 1))
    >>> dp["kernel"].shape
    (16, 8)
    """
    shape = input_shape_of(input_shape, "conv_to_dense")
    n_in = math.prod(shape)
    if dtype is None:
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.result_type(float)

    def f(x_flat):
        y, _ = layer.apply(params, state, x_flat.reshape(shape))
        return y.reshape((math.prod(y.shape),))

    zero = jnp.zeros((n_in,), dtype)
    n_out = jax.eval_shape(f, zero).shape[0]
    jacobian = jax.jacfwd if n_in <= n_out else jax.jacrev
    bias, jac = jax.jit(lambda x: (f(x), jacobian(f)(x)))(zero)  # jac: (n_out, n_in)
    return Dense(n_out, param_dtype=dtype), {"kernel": jac.T, "bias": bias}


def convolutionalize(model: Layer, params, input_shape) -> tuple[Layer, tuple]:
    """Turn every ``Flatten -> Dense`` pair of a top-level `serial` model into a `Conv`.

    What is guaranteed: on ``input_shape`` the result computes exactly the model's outputs,
    as a ``(1, 1, ..., classes)`` map, whatever the layers. On a larger input it gives a score
    map (Long et al., 2015), and its output at ``(i, j)`` equals the original model on the
    crop at ``(i * jump, j * jump)`` (``jump`` the product of the strides before the Flatten)
    ONLY when every layer before the Flatten is a sliding window that reads no padding
    (``padding=0`` or ``"VALID"``, no ``ceil_mode``) or acts per pixel (activations, Dense,
    BatchNorm in eval mode, LayerNorm over channels). Padding reads zeros at a crop's border but
    real pixels inside the larger image; layers that look at a whole example (GroupNorm,
    LayerNorm over spatial axes, global or adaptive pooling) differ on a larger input; neither
    is checked here. Later Dense layers act per pixel unchanged.

    Args:
      model: a `serial` model.
      params: its params (a tuple, one entry per layer).
      input_shape: the per-example input shape it was built for.

    Returns:
      ``(model, params)`` of the fully convolutional model; state keeps the layout of
      ``params`` (drop the Flatten's entries likewise: its state is ``()``).

    >>> import jax
    >>> from jcnn.layers import Conv, Dense, Flatten, serial
    >>> model = serial(Conv(4, 3), Flatten(), Dense(10))
    >>> _, p, _ = model.init(jax.random.key(0), (6, 6, 1))
    >>> fcn, fcn_params = convolutionalize(model, p, (6, 6, 1))
    >>> fcn.init(jax.random.key(0), (10, 10, 1))[0]
    (5, 5, 10)
    """
    where = "convolutionalize"
    # serial's name is what identifies it: the only combinator whose children run one after another.
    if not isinstance(model, Layer) or model.name != "serial":
        raise TypeError(f"{where}: `model` must be a serial(...) Layer, got {model!r}.")
    children = [child for _, child in model.children]
    if not isinstance(params, (tuple, list)) or len(params) != len(children):
        raise ValueError(f"{where}: `params` must be a tuple with one entry per layer ({len(children)}).")
    shape = input_shape_of(input_shape, where)
    layers, new_params = [], []
    i = 0
    while i < len(children):
        child = children[i]
        nxt = children[i + 1] if i + 1 < len(children) else None
        if child.name == "Flatten" and nxt is not None and nxt.name == "Dense" and len(shape) > 1:
            child, child_params = dense_to_conv(params[i + 1], shape)
            i += 2
        else:
            child_params = params[i]
            i += 1
        layers.append(child)
        new_params.append(child_params)
        shape = output_shape(child, shape)
    return serial(*layers), tuple(new_params)


def _numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):  # a torch tensor, without importing torch
        t = t.detach().cpu().numpy()
    return np.asarray(t)


def _weight_and_bias(obj, bias, where: str):
    """Accept a torch module, a state_dict-like mapping, or the weight itself."""
    transposed = None
    if hasattr(obj, "weight") and not isinstance(obj, Mapping) and not hasattr(obj, "shape"):
        transposed = getattr(obj, "transposed", None)
        if bias is None:
            bias = getattr(obj, "bias", None)
        obj = obj.weight
    elif isinstance(obj, Mapping):
        if "weight" not in obj:
            raise KeyError(f"{where}: the state_dict has no 'weight' entry; keys are {sorted(obj)}.")
        if bias is None:
            bias = obj.get("bias")
        obj = obj["weight"]
    return _numpy(obj), None if bias is None else _numpy(bias), transposed


def conv_from_torch(weight, bias=None, *, transpose: bool | None = None, dtype=None) -> dict:
    """jcnn params from a PyTorch ``Conv{1,2,3}d`` or ``ConvTranspose{1,2,3}d``.

    ``Conv``: ``(c_out, c_in // groups, *k)`` -> ``(*k, c_in // groups, c_out)``.
    ``ConvTranspose``: ``(c_in, c_out // groups, *k)`` -> ``(*k, c_in, c_out // groups)``
    (no flip: `jcnn.ops.conv_transpose` follows PyTorch's semantics).

    Args:
      weight: the module itself, its ``state_dict()``, or the weight tensor / array.
      bias: the bias (taken from the module or state_dict when omitted).
      transpose: the weight is a ConvTranspose's; read from a module's ``transposed``
        attribute, else ``False``. A state_dict or bare weight of a ConvTranspose needs
        ``transpose=True``.
      dtype: the params' dtype (default: the weight's).

    Returns:
      ``{"kernel": ..., "bias": ...}`` for `jcnn.layers.Conv` / `jcnn.layers.ConvTranspose`.

    >>> import numpy as np
    >>> conv_from_torch(np.zeros((10, 3, 5, 5)))["kernel"].shape
    (5, 5, 3, 10)
    """
    where = "conv_from_torch"
    w, b, transposed = _weight_and_bias(weight, bias, where)
    if transpose is None:
        transpose = bool(transposed)
    if w.ndim < 3:
        raise ShapeError(
            f"{where}: expects a conv weight (c_out, c_in // groups, *k) with >= 1 spatial dim,"
            f" got shape {w.shape}; for a Linear weight use dense_from_torch."
        )
    spatial = tuple(range(2, w.ndim))
    perm = spatial + ((0, 1) if transpose else (1, 0))
    params = {"kernel": jnp.asarray(np.transpose(w, perm), dtype)}
    if b is not None:
        params["bias"] = jnp.asarray(b, dtype)
    return params


def nchw_rows_to_nhwc(kernel, input_shape):
    """Reorder a Dense kernel's rows from PyTorch's channel-first flatten to jcnn's channels-last.

    A torch ``Linear`` after ``Flatten`` of an NCHW activation reads feature
    ``k*h*w + i*w + j``; jcnn's `Flatten` of ``(h, w, c)`` puts that pixel at ``(i*w + j)*c + k``.

    Args:
      kernel: ``(prod(input_shape), out)`` in PyTorch's order (already transposed to (in, out)).
      input_shape: jcnn's per-example shape before the Flatten, ``(*spatial, c)``.

    Returns:
      The kernel with rows in jcnn's order.

    >>> import numpy as np
    >>> k = np.arange(6).reshape(6, 1)          # torch order for c=2, (h, w) = (1, 3)
    >>> nchw_rows_to_nhwc(k, (1, 3, 2))[:, 0].tolist()
    [0, 3, 1, 4, 2, 5]
    """
    shape = input_shape_of(input_shape, "nchw_rows_to_nhwc")
    if kernel.shape[0] != math.prod(shape):
        raise ShapeError(
            f"nchw_rows_to_nhwc: the kernel has {kernel.shape[0]} rows but `input_shape` {shape}"
            f" flattens to {math.prod(shape)}."
        )
    *spatial, c = shape
    d = len(spatial)
    out = kernel.shape[1:]
    k = kernel.reshape((c, *spatial) + out)
    perm = tuple(range(1, d + 1)) + (0,) + tuple(range(d + 1, k.ndim))
    return k.transpose(perm).reshape((math.prod(shape),) + out)


def dense_from_torch(weight, bias=None, *, input_shape=None, dtype=None) -> dict:
    """jcnn Dense params from a PyTorch ``Linear``: ``(out, in)`` -> ``(in, out)``.

    Args:
      weight: the module, its ``state_dict()``, or the weight tensor / array.
      bias: the bias (taken from the module or state_dict when omitted).
      input_shape: if the Linear follows a torch ``Flatten`` of an NCHW activation, jcnn's
        per-example shape of that activation ``(*spatial, c)``: the rows are permuted to
        jcnn's channels-last flatten order (`nchw_rows_to_nhwc`).
      dtype: the params' dtype (default: the weight's).

    Returns:
      ``{"kernel": (in, out), "bias": (out,)}`` for `jcnn.layers.Dense`.

    >>> import numpy as np
    >>> dense_from_torch(np.zeros((10, 500)))["kernel"].shape
    (500, 10)
    """
    where = "dense_from_torch"
    w, b, _ = _weight_and_bias(weight, bias, where)
    if w.ndim != 2:
        raise ShapeError(f"{where}: expects a Linear weight (out, in), got shape {w.shape}.")
    kernel = w.T
    if input_shape is not None:
        kernel = nchw_rows_to_nhwc(kernel, input_shape)
    params = {"kernel": jnp.asarray(kernel, dtype)}
    if b is not None:
        params["bias"] = jnp.asarray(b, dtype)
    return params
