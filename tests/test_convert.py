"""Tests for jcnn.convert: dense <-> conv round trips and PyTorch weight layouts (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.convert import (
    conv_from_torch,
    conv_to_dense,
    convolutionalize,
    dense_from_torch,
    dense_to_conv,
    nchw_rows_to_nhwc,
)
from jcnn.layers import (
    AvgPool,
    Conv,
    ConvTranspose,
    Dense,
    Dropout,
    Flatten,
    LogSoftmax,
    MaxPool,
    Relu,
    batched,
    serial,
)
from jcnn.shapes import ShapeError

KEY = jax.random.key(0)
F64 = jnp.float64


def rand(shape, seed=0):
    # numpy's generator: no XLA compilation per shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F64)


def init_f64(layer, shape, seed=0):
    """Params drawn in float64, biases nonzero so that they are checked too."""
    _, params, state = layer.init(jax.random.key(seed), shape)
    return jax.tree_util.tree_map(lambda p: p.astype(F64) + 0.1, params), state


# --------------------------------------------------------------------------------------------
# Dense <-> conv
# --------------------------------------------------------------------------------------------


def test_dense_to_conv_gives_the_same_numbers_and_slides_over_larger_inputs(x64):
    shape = (5, 4, 3)
    dense = Dense(6)
    params, _ = init_f64(dense, (math.prod(shape),))
    conv, conv_params = dense_to_conv(params, shape)
    assert (
        conv_params["kernel"].shape == (5, 4, 3, 6) and repr(conv) == "Conv(6, (5, 4), param_dtype='float64')"
    )  # the repr shows every non-default field
    x = rand((7, 6, 3))
    score_map, _ = jax.jit(conv.apply)(conv_params, (), x)
    assert score_map.shape == (3, 3, 6)
    crops = jnp.stack([x[i : i + 5, j : j + 4].reshape(-1) for i in range(3) for j in range(3)])
    expected, _ = jax.jit(batched(dense).apply)(params, (), crops)
    np.testing.assert_allclose(score_map.reshape(9, 6), expected, rtol=1e-12)


def test_convolutionalize_a_classifier_into_a_score_map(x64):
    # No padding before the head, so that a crop and the larger image see the same pixels.
    model = serial(
        Conv(3, 3), Relu(), MaxPool(2), Flatten(), Dense(8), Relu(), Dropout(0.5), Dense(4), LogSoftmax()
    )
    params, state = init_f64(model, (10, 10, 1))
    fcn, fcn_params = convolutionalize(model, params, (10, 10, 1))
    assert [child.name for _, child in fcn.children][:4] == ["Conv", "Relu", "MaxPool", "Conv"]
    assert repr(fcn.children[3][1]) == "Conv(8, 4, param_dtype='float64')"
    fcn_state = tuple(s for i, s in enumerate(state) if i != 3)  # Flatten's () is gone
    x = rand((14, 12, 1), 1)
    y, _ = jax.jit(fcn.apply)(fcn_params, fcn_state, x)
    # The network's stride is 2 (one 2x2 pool): output (i, j) is the classifier on the 10x10
    # crop at (2i, 2j).
    assert y.shape == (3, 2, 4)
    crops = jnp.stack([x[2 * i : 2 * i + 10, 2 * j : 2 * j + 10] for i in range(3) for j in range(2)])
    expected, _ = jax.jit(batched(model).apply)(params, state, crops)
    np.testing.assert_allclose(y.reshape(6, 4), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "layer,shape",
    [
        (Conv(4, 3, strides=2, padding=1, dilation=2, groups=2), (7, 6, 4)),
        (Conv(2, (3,), padding=2, padding_mode="circular"), (6, 3)),
        (ConvTranspose(2, 3, strides=2, padding=1, output_padding=1, groups=2), (3, 4, 2)),
        (AvgPool(3, strides=2, padding=1, count_include_pad=False), (5, 5, 2)),
    ],
    ids=["conv", "conv-1d-circular", "conv-transpose", "avg-pool"],
)
def test_conv_to_dense_and_back(layer, shape, x64):
    params, state = init_f64(layer, shape)
    dense, dense_params = conv_to_dense(layer, params, shape, state)
    # Round trip: the dense matrix as a conv whose kernel covers the whole input.
    conv, conv_params = dense_to_conv(dense_params, shape)

    @jax.jit
    def outputs(x):
        y, _ = layer.apply(params, state, x)
        flat, _ = dense.apply(dense_params, (), x.reshape(-1))
        z, _ = conv.apply(conv_params, (), x)
        return y, flat, z

    x = rand(shape, 3)
    y, flat, z = outputs(x)
    n_in, n_out = math.prod(shape), y.size
    assert dense_params["kernel"].shape == (n_in, n_out) and dense.spec.out_features == n_out
    np.testing.assert_allclose(flat, y.reshape(-1), rtol=1e-10, atol=1e-12)
    assert z.shape == (1,) * (len(shape) - 1) + (n_out,)
    np.testing.assert_allclose(z.reshape(-1), y.reshape(-1), rtol=1e-10, atol=1e-12)


def test_conv_to_dense_shows_the_lectures_parameter_gap(x64):
    conv = Conv(10, 5, padding=2)
    params, _ = init_f64(conv, (8, 8, 3))
    _, dense_params = conv_to_dense(conv, params, (8, 8, 3))
    assert dense_params["kernel"].size == (8 * 8 * 3) * (8 * 8 * 10)
    assert sum(p.size for p in params.values()) == 760  # the lecture's ten 5x5x3 filters
    # Most of the dense matrix is zero: each output sees a 5x5x3 window only.
    assert int((dense_params["kernel"] != 0).sum(0).max()) == 5 * 5 * 3


def test_conversion_errors():
    params = {"kernel": jnp.zeros((100, 3)), "bias": jnp.zeros(3)}
    with pytest.raises(
        ShapeError,
        match=r"dense_to_conv: the Dense kernel has shape \(100, 3\), but `input_shape` \(7, 7, 2\) flattens to 98",
    ):
        dense_to_conv(params, (7, 7, 2))
    with pytest.raises(ShapeError, match=r"dense_to_conv: `input_shape` must be \(\*spatial, channels\)"):
        dense_to_conv(params, (100,))
    with pytest.raises(TypeError, match=r"convolutionalize: `model` must be a serial"):
        convolutionalize(Dense(3), params, (100,))
    with pytest.raises(
        ShapeError,
        match=r"nchw_rows_to_nhwc: the kernel has 100 rows but `input_shape` \(3, 3, 3\) flattens to 27",
    ):
        nchw_rows_to_nhwc(np.zeros((100, 2)), (3, 3, 3))
    with pytest.raises(ShapeError, match=r"conv_from_torch: expects a conv weight.*use dense_from_torch"):
        conv_from_torch(np.zeros((10, 3)))
    with pytest.raises(
        ShapeError, match=r"dense_from_torch: expects a Linear weight \(out, in\), got shape \(2, 3, 3\)"
    ):
        dense_from_torch(np.zeros((2, 3, 3)))
    with pytest.raises(KeyError, match=r"no 'weight' entry"):
        conv_from_torch({"bias": np.zeros(3)})


def test_nchw_rows_to_nhwc_golden():
    # torch feature index k*h*w + i*w + j  ->  jcnn index (i*w + j)*c + k, for (h, w, c) = (2, 3, 2).
    h, w, c = 2, 3, 2
    torch_rows = np.array([[k * h * w + i * w + j] for k in range(c) for i in range(h) for j in range(w)])
    jcnn_rows = nchw_rows_to_nhwc(torch_rows, (h, w, c))[:, 0]
    assert jcnn_rows.tolist() == [k * h * w + i * w + j for i in range(h) for j in range(w) for k in range(c)]


# --------------------------------------------------------------------------------------------
# PyTorch layouts, against torch's own outputs (float64)
# --------------------------------------------------------------------------------------------


def _nhwc(t):
    """A torch (N, C, *spatial) tensor as a numpy (N, *spatial, C) array."""
    a = t.detach().numpy()
    return np.moveaxis(a, 1, -1)


@pytest.mark.parametrize(
    "d,kwargs",
    [
        (1, dict(stride=2, padding=1)),
        (2, dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)),
        (3, dict(stride=1, padding=1, bias=False)),
    ],
)
def test_conv_from_torch_matches_torch_conv(d, kwargs, x64):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    conv_cls = [torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d][d - 1]
    ref = conv_cls(4, 6, 3, dtype=torch.float64, **kwargs)
    x = torch.randn((2, 4) + (7,) * d, dtype=torch.float64)
    layer = Conv(
        6,
        (3,) * d,
        strides=kwargs.get("stride", 1),
        padding=kwargs.get("padding", 0),
        dilation=kwargs.get("dilation", 1),
        groups=kwargs.get("groups", 1),
        bias=kwargs.get("bias", True),
    )
    for params in (
        conv_from_torch(ref),
        conv_from_torch(ref.state_dict()),
        conv_from_torch(ref.weight, ref.bias),
    ):
        y, _ = jax.jit(batched(layer).apply)(params, (), jnp.asarray(_nhwc(x)))
        np.testing.assert_allclose(y, _nhwc(ref(x)), rtol=1e-10, atol=1e-12)
    assert conv_from_torch(ref)["kernel"].dtype == F64


def test_conv_transpose_from_torch_matches_torch(x64):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    ref = torch.nn.ConvTranspose2d(
        4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1, dtype=torch.float64
    )
    x = torch.randn((2, 4, 5, 4), dtype=torch.float64)
    layer = ConvTranspose(6, 3, strides=2, padding=1, output_padding=1, groups=2)
    params = conv_from_torch(ref)  # the module says it is transposed
    assert params["kernel"].shape == (3, 3, 4, 3)
    y, _ = jax.jit(batched(layer).apply)(params, (), jnp.asarray(_nhwc(x)))
    np.testing.assert_allclose(y, _nhwc(ref(x)), rtol=1e-10, atol=1e-12)
    # A state_dict cannot say so: transpose=True.
    ref1 = torch.nn.ConvTranspose1d(3, 2, 4, stride=3, dtype=torch.float64)
    x1 = torch.randn((1, 3, 5), dtype=torch.float64)
    y1, _ = ConvTranspose(2, (4,), strides=3).apply(
        conv_from_torch(ref1.state_dict(), transpose=True), (), jnp.asarray(_nhwc(x1)[0])
    )
    np.testing.assert_allclose(y1, _nhwc(ref1(x1))[0], rtol=1e-10, atol=1e-12)


def test_torch_cnn_with_flatten_and_linear_loads_into_jcnn(x64):
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 2 * 3, 5),
    ).double()
    model = serial(Conv(3, 3, padding=1), Relu(), MaxPool(2), Flatten(), Dense(5))
    params = (
        conv_from_torch(ref[0]),
        (),
        (),
        (),
        dense_from_torch(ref[4], input_shape=(2, 3, 3)),  # NHWC shape that Flatten received
    )
    x = torch.randn((4, 2, 4, 6), dtype=torch.float64)
    y, _ = jax.jit(batched(model).apply)(params, ((),) * 5, jnp.asarray(_nhwc(x)))
    np.testing.assert_allclose(y, ref(x).detach().numpy(), rtol=1e-10, atol=1e-12)
    # Without the row permutation the numbers differ: the test can fail.
    wrong = params[:4] + (dense_from_torch(ref[4]),)
    y_wrong, _ = jax.jit(batched(model).apply)(wrong, ((),) * 5, jnp.asarray(_nhwc(x)))
    assert not np.allclose(y_wrong, y)
