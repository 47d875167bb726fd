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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.layers._examples import input_shape_of
from jcnn.layers.base import Layer
from jcnn.layers.combinators import SerialSpec, serial
from jcnn.layers.conv import Conv
from jcnn.layers.dense import Dense
from jcnn.layers.tree import output_shape
from jcnn.models import CIFAR_RESNET_DEPTHS, MOBILENET_V2_SETTINGS, RESNET_DEPTHS, VGG_CONFIGS
from jcnn.shapes import ShapeError

__all__ = [
    "dense_to_conv",
    "conv_to_dense",
    "convolutionalize",
    "conv_from_torch",
    "dense_from_torch",
    "nchw_rows_to_nhwc",
    "TorchEntry",
    "torch_layout",
    "torch_shapes",
    "from_torch_state_dict",
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
    (Conv(10, 7), (7, 7, 50, 10))
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
    if not isinstance(model, Layer) or not isinstance(model.spec, SerialSpec):
        raise TypeError(f"{where}: `model` must be a serial(...) Layer, got {model!r}.")
    children = list(model.spec.layers)
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


# ---------------------------------------------------------------------------------------------
# Whole-model PyTorch state_dicts (the classic architectures of jcnn.models)
# ---------------------------------------------------------------------------------------------


class TorchEntry(NamedTuple):
    """One PyTorch module with weights, in the order jcnn's params hold it.

    ``prefix`` is the module's state_dict name (``"layer1.0.conv1"``); ``kind`` is ``"conv"``,
    ``"linear"`` or ``"bn"``; ``flatten_shape`` is, for a Linear that reads a flattened NCHW
    activation, jcnn's per-example shape ``(h, w, c)`` of that activation (its rows are
    reordered to channels-last), else None.
    """

    prefix: str
    kind: str
    flatten_shape: tuple | None = None


def _vgg_layout(cfg, batch_norm: bool) -> list[TorchEntry]:
    entries, i = [], 0
    for v in cfg:
        if v == "M":
            i += 1
            continue
        entries.append(TorchEntry(f"features.{i}", "conv"))
        if batch_norm:
            entries.append(TorchEntry(f"features.{i + 1}", "bn"))
        i += 3 if batch_norm else 2  # conv, [bn], relu
    return entries + [
        TorchEntry("classifier.0", "linear", (7, 7, 512)),
        TorchEntry("classifier.3", "linear"),
        TorchEntry("classifier.6", "linear"),
    ]


def _resnet_layout(blocks, bottleneck: bool, planes, projections) -> list[TorchEntry]:
    entries = [TorchEntry("conv1", "conv"), TorchEntry("bn1", "bn")]
    for stage, n in enumerate(blocks):
        for b in range(n):
            prefix = f"layer{stage + 1}.{b}."
            for j in range(3 if bottleneck else 2):
                entries += [
                    TorchEntry(f"{prefix}conv{j + 1}", "conv"),
                    TorchEntry(f"{prefix}bn{j + 1}", "bn"),
                ]
            if b == 0 and projections[stage]:
                entries += [
                    TorchEntry(f"{prefix}downsample.0", "conv"),
                    TorchEntry(f"{prefix}downsample.1", "bn"),
                ]
    return entries + [TorchEntry("fc", "linear")]


def _mobilenet_v2_layout() -> list[TorchEntry]:
    entries = [TorchEntry("features.0.0", "conv"), TorchEntry("features.0.1", "bn")]
    k = 1
    for t, _, n, _ in MOBILENET_V2_SETTINGS:
        for _ in range(n):
            p = f"features.{k}.conv."
            if t != 1:  # Conv2dNormActivation (expand), Conv2dNormActivation (depthwise), conv, bn
                names = [(p + "0.0", "conv"), (p + "0.1", "bn"), (p + "1.0", "conv"), (p + "1.1", "bn")]
                names += [(p + "2", "conv"), (p + "3", "bn")]
            else:  # Conv2dNormActivation (depthwise), conv, bn
                names = [(p + "0.0", "conv"), (p + "0.1", "bn"), (p + "1", "conv"), (p + "2", "bn")]
            entries += [TorchEntry(*e) for e in names]
            k += 1
    return entries + [
        TorchEntry(f"features.{k}.0", "conv"),
        TorchEntry(f"features.{k}.1", "bn"),
        TorchEntry("classifier.1", "linear"),
    ]


def torch_layout(arch: str, *, shortcut: str = "A") -> list[TorchEntry]:
    """The PyTorch modules with weights of a `jcnn.models` architecture, in jcnn's params order.

    Names follow torchvision's modules: ``alexnet``, ``vgg11`` ... ``vgg19`` and ``vgg11_bn``
    ... ``vgg19_bn``, ``resnet18`` ... ``resnet152``, ``mobilenet_v2`` (any ``width_mult``).
    The CIFAR ResNets (``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``, ``resnet110``),
    which torchvision lacks, use the same names as its ResNets (``conv1``, ``bn1``,
    ``layer{1,2,3}.{i}.conv1`` ..., ``downsample.{0,1}`` for option B, ``fc``).

    Args:
      arch: the architecture's name.
      shortcut: for the CIFAR ResNets, ``"A"`` (parameter-free) or ``"B"`` (projection) as
        the model was built with.

    Returns:
      A list of `TorchEntry`.

    Raises:
      ValueError: an unknown ``arch`` or ``shortcut``.

    >>> torch_layout("resnet18")[:3]
    [TorchEntry(prefix='conv1', kind='conv', flatten_shape=None), TorchEntry(prefix='bn1', kind='bn', flatten_shape=None), TorchEntry(prefix='layer1.0.conv1', kind='conv', flatten_shape=None)]
    """
    where = "torch_layout"
    if shortcut not in ("A", "B"):
        raise ValueError(f"{where}: `shortcut` must be 'A' or 'B', got {shortcut!r}.")
    if arch == "alexnet":
        return [TorchEntry(f"features.{i}", "conv") for i in (0, 3, 6, 8, 10)] + [
            TorchEntry("classifier.1", "linear", (6, 6, 256)),
            TorchEntry("classifier.4", "linear"),
            TorchEntry("classifier.6", "linear"),
        ]
    if arch == "mobilenet_v2":
        return _mobilenet_v2_layout()
    if isinstance(arch, str) and arch.startswith("vgg"):
        depth, _, bn = arch[3:].partition("_")
        if depth.isdigit() and int(depth) in VGG_CONFIGS and bn in ("", "bn"):
            return _vgg_layout(VGG_CONFIGS[int(depth)], bn == "bn")
    if isinstance(arch, str) and arch.startswith("resnet") and arch[6:].isdigit():
        depth = int(arch[6:])
        if depth in RESNET_DEPTHS:
            blocks, bottleneck = RESNET_DEPTHS[depth]
            # The first stage projects only in the bottleneck nets (64 -> 256 channels).
            return _resnet_layout(blocks, bottleneck, (64, 128, 256, 512), (bottleneck, True, True, True))
        if depth in CIFAR_RESNET_DEPTHS:
            n = (depth - 2) // 6
            b = shortcut == "B"
            return _resnet_layout((n, n, n), False, (16, 32, 64), (False, b, b))
    raise ValueError(
        f"{where}: `arch` must be 'alexnet', 'vgg11'...'vgg19' (with '_bn'), 'resnet18', 'resnet34',"
        f" 'resnet50', 'resnet101', 'resnet152', 'resnet20'...'resnet110' or 'mobilenet_v2', got {arch!r}."
    )


def _is_group(p) -> bool:
    return isinstance(p, Mapping) and ("kernel" in p or "scale" in p)


def _is_bn_state(s) -> bool:
    return hasattr(s, "_fields") and "mean" in s._fields and "var" in s._fields


def _group_kind(group) -> str:
    if "scale" in group:
        return "bn"
    return "linear" if group["kernel"].ndim == 2 else "conv"


class _Plan(NamedTuple):
    layout: list  # TorchEntry per weighted layer
    groups: list  # the params' weighted layers, in tree order
    params_def: Any
    bn_states: list  # BatchNorm states, in tree order
    state_def: Any
    shapes: dict  # torch key -> (torch shape, jcnn dtype), in load order


def _plan(params, state, arch, shortcut: str, where: str) -> _Plan:
    """Match the params' weighted layers to the architecture's torch modules, in order."""
    layout = torch_layout(arch, shortcut=shortcut) if isinstance(arch, str) else list(arch)
    what = arch if isinstance(arch, str) else "the layout"
    # Only the pytrees init returns are read: conv / dense {"kernel", "bias"} dicts, BatchNorm
    # {"scale", "bias"} with a (mean, var) state, in the order the layers run (which is the
    # order torch registers these architectures' modules).
    groups, params_def = jax.tree_util.tree_flatten(params, is_leaf=_is_group)
    bn_states, state_def = jax.tree_util.tree_flatten(state, is_leaf=_is_bn_state)
    if not all(_is_group(g) for g in groups) or not all(_is_bn_state(s) for s in bn_states):
        raise ValueError(
            f"{where}: `params` / `state` must be what the model's init returned (conv and dense"
            f" {{'kernel', 'bias'}} dicts, BatchNorm {{'scale', 'bias'}} with a (mean, var) state)."
        )
    kinds = [_group_kind(g) for g in groups]
    if kinds != [e.kind for e in layout] or kinds.count("bn") != len(bn_states):
        raise ValueError(
            f"{where}: the params hold {len(groups)} weighted layers ({kinds.count('conv')} conv,"
            f" {kinds.count('linear')} dense, {kinds.count('bn')} BatchNorm) but {what} has"
            f" {len(layout)}: build the model with the matching jcnn.models constructor (same"
            f" depth, batch_norm and shortcut)."
        )
    shapes = {}
    states = iter(bn_states)
    for entry, group in zip(layout, groups):
        p = entry.prefix
        if entry.kind == "bn":
            s = next(states)
            shapes[f"{p}.weight"] = (tuple(group["scale"].shape), group["scale"].dtype)
            shapes[f"{p}.bias"] = (tuple(group["bias"].shape), group["bias"].dtype)
            shapes[f"{p}.running_mean"] = (tuple(s.mean.shape), s.mean.dtype)
            shapes[f"{p}.running_var"] = (tuple(s.var.shape), s.var.dtype)
            continue
        k = tuple(group["kernel"].shape)
        # jcnn's conv kernel (*k, c_in // groups, c_out) is torch's (c_out, c_in // groups, *k).
        torch_shape = (k[-1], k[-2], *k[:-2]) if entry.kind == "conv" else k[::-1]
        shapes[f"{p}.weight"] = (torch_shape, group["kernel"].dtype)
        if "bias" in group:
            shapes[f"{p}.bias"] = (tuple(group["bias"].shape), group["bias"].dtype)
    return _Plan(layout, groups, params_def, bn_states, state_def, shapes)


def torch_shapes(params, state, arch, *, shortcut: str = "A") -> dict:
    """The ``state_dict`` a jcnn model needs: torch key -> shape in PyTorch's layout.

    Compare it with ``{k: tuple(v.shape) for k, v in torch_model.state_dict().items()}`` (less
    the ``num_batches_tracked`` entries) to check an architecture without loading any weights;
    ``params`` and ``state`` may be abstract (``jax.eval_shape`` of ``init``).

    Args:
      params: the model's params (arrays or ``jax.ShapeDtypeStruct``).
      state: the model's state.
      arch: as in `from_torch_state_dict`.
      shortcut: as in `from_torch_state_dict`.

    Returns:
      A dict, in load order.

    >>> import jax
    >>> from jcnn.models import resnet20
    >>> params, state = jax.eval_shape(lambda k: resnet20().init(k, (32, 32, 3))[1:], jax.random.key(0))
    >>> list(torch_shapes(params, state, "resnet20").items())[:2]
    [('conv1.weight', (16, 3, 3, 3)), ('bn1.weight', (16,))]
    """
    plan = _plan(params, state, arch, shortcut, "torch_shapes")
    return {k: shape for k, (shape, _) in plan.shapes.items()}


def from_torch_state_dict(state_dict: Mapping, params, state, arch, *, shortcut: str = "A") -> tuple:
    """Load a PyTorch ``state_dict`` into the params and state of a `jcnn.models` architecture.

    Conv weights go OIHW -> HWIO (grouped and depthwise convs included: torch's
    ``(c_out, c_in // groups, kh, kw)`` is jcnn's ``(kh, kw, c_in // groups, c_out)``), Linear
    weights ``(out, in) -> (in, out)`` with the rows after a Flatten reordered from NCHW to
    channels-last (`nchw_rows_to_nhwc`), BatchNorm ``weight, bias`` -> params ``scale, bias``
    and ``running_mean, running_var`` -> state ``mean, var`` (``num_batches_tracked`` is
    ignored). jcnn's BatchNorm uses PyTorch's ``eps`` (1e-5) and momentum convention, so an
    eval-mode forward pass gives torch's numbers. Every value is cast to the dtype of the
    jcnn leaf it replaces; ``params`` and ``state`` themselves are not modified, and only their
    shapes and dtypes are read (abstract ones from ``jax.eval_shape`` of ``init`` do).

    Args:
      state_dict: name -> torch tensor or numpy array, e.g. ``torch_model.state_dict()``.
      params: the params ``model.init`` returned for the model.
      state: the state ``model.init`` returned.
      arch: the architecture's name (see `torch_layout`) or a list of `TorchEntry` for a model
        of your own whose params hold its weighted layers in the same order as torch's modules.
      shortcut: for the CIFAR ResNets, ``"A"`` or ``"B"`` as the model was built with.

    Returns:
      ``(params, state)`` with the torch values.

    Raises:
      ValueError: a key the architecture needs is missing, or a key is unexpected (both named),
        or the params do not hold the architecture's layers.
      ShapeError: a tensor's shape differs from what the jcnn model needs (the key named).

    >>> import jax, numpy as np
    >>> from jcnn.models import resnet20
    >>> init = lambda key: resnet20().init(key, (32, 32, 3))[1:]  # shapes are all it reads
    >>> params, state = jax.eval_shape(init, jax.random.key(0))
    >>> sd = {"conv1.weight": np.ones((16, 3, 3, 3), np.float32)}
    >>> from_torch_state_dict(sd, params, state, "resnet20")
    Traceback (most recent call last):
    ...
    ValueError: from_torch_state_dict: the state_dict lacks 'bn1.weight', 'bn1.bias', 'bn1.running_mean' (and 93 more keys) that resnet20 needs.
    """
    where = "from_torch_state_dict"
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{where}: `state_dict` must be a mapping name -> tensor, got {type(state_dict).__name__}."
        )
    plan = _plan(params, state, arch, shortcut, where)
    what = arch if isinstance(arch, str) else "the layout"
    given = [k for k in state_dict if not str(k).endswith("num_batches_tracked")]
    missing = [k for k in plan.shapes if k not in state_dict]
    unexpected = sorted(set(given) - set(plan.shapes), key=str)
    for problem, keys, tail in (
        ("lacks", missing, f" that {what} needs"),
        ("has unexpected", unexpected, ""),
    ):
        if keys:
            listed = ", ".join(map(repr, keys[:3]))
            more = f" (and {len(keys) - 3} more keys)" if len(keys) > 3 else ""
            raise ValueError(f"{where}: the state_dict {problem} {listed}{more}{tail}.")

    def fetch(key) -> np.ndarray:
        value = _numpy(state_dict[key])
        shape, dtype = plan.shapes[key]
        if value.shape != shape:
            raise ShapeError(
                f"{where}: {key!r} has shape {value.shape} but the jcnn model needs {shape} (in"
                f" PyTorch's layout); build the model with the state_dict's widths and classes."
            )
        return value.astype(dtype, copy=False)

    new_groups, new_states = [], []
    states = iter(plan.bn_states)
    for entry, group in zip(plan.layout, plan.groups):
        p = entry.prefix
        bias = fetch(f"{p}.bias") if "bias" in group else None
        if entry.kind == "bn":
            s = next(states)
            new_groups.append({"scale": jnp.asarray(fetch(f"{p}.weight")), "bias": jnp.asarray(bias)})
            new_states.append(
                s._replace(
                    mean=jnp.asarray(fetch(f"{p}.running_mean")), var=jnp.asarray(fetch(f"{p}.running_var"))
                )
            )
        elif entry.kind == "conv":
            new_groups.append(conv_from_torch(fetch(f"{p}.weight"), bias))
        else:
            new_groups.append(dense_from_torch(fetch(f"{p}.weight"), bias, input_shape=entry.flatten_shape))
    return plan.params_def.unflatten(new_groups), plan.state_def.unflatten(new_states)
