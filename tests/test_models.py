"""Tests for jcnn.models: shapes compose for every dataset's image size, and bad inputs are refused."""

import jax
import jax.numpy as jnp
import pytest

from jcnn import models
from jcnn.layers import batched
from jcnn.summary import summary

IMAGE_SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]


def abstract_init(model, input_shape):
    """``init`` traced abstractly: the output shape and parameter shapes, no random draws."""
    out = {}

    def init(key):
        out["shape"], params, state = model.init(key, input_shape)
        return params, state

    params, state = jax.eval_shape(init, jax.random.key(0))
    return out["shape"], params, state


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("input_shape", IMAGE_SHAPES, ids=str)
def test_shapes_compose(name, input_shape):
    model = models.MODELS[name](7, input_shape)
    out_shape, params, state = abstract_init(model, input_shape)
    assert out_shape == (7,)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    y, _ = jax.eval_shape(lambda p, s, x: batched(model).apply(p, s, x), params, state, x)
    assert y.shape == (2, 7) and y.dtype == jnp.float32
    table = summary(model, input_shape)
    assert all(row["warning"] is None for row in table.rows)  # every pixel is read


def test_lenet_is_the_lecture_net():
    table = summary(models.lenet(10, (28, 28, 1)), (28, 28, 1))
    assert [row["output_shape"] for row in table.rows if row["params"]] == [
        (28, 28, 20),
        (14, 14, 50),
        (500,),
        (10,),
    ]
    assert table.totals["params"] == 520 + 25_050 + (7 * 7 * 50 * 500 + 500) + 5_010
    # The 8x8 digits: 2x2x50 before Flatten.
    rows = summary(models.lenet(10, (8, 8, 1)), (8, 8, 1)).rows
    assert [r["output_shape"] for r in rows if "Flatten" in r["layer"]] == [(200,)]


def test_allconv_has_no_pooling_and_no_dense():
    kinds = {row["layer"].split("(")[0] for row in summary(models.allconv(10, (28, 28, 1)), (28, 28, 1)).rows}
    assert kinds == {"Conv", "Relu", "GlobalAvgPool"}


def test_dropout_options():
    assert "Dropout(0.5)" in repr(models.lenet(10, (28, 28, 1), drop_rate=0.5))
    assert repr(models.allconv(10, (8, 8, 1), drop_rate=0.25)).count("Dropout(0.25)") == 2
    assert "Dropout" not in repr(models.lenet(10, (28, 28, 1)))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: models.lenet(10, (3, 3, 1)), "at least 4x4, got 3x3"),
        (lambda: models.lenet(1, (28, 28, 1)), r"`num_classes` must be >= 2, got 1"),
        (lambda: models.mlp(10, (28, 28)), r"one image \(h, w, c\)"),
        (lambda: models.allconv(10, (28, 28, 1), widths=()), "`widths` must be a non-empty"),
        (lambda: models.lenet(10, (28, 28, 1), drop_rate=1.0), r"`drop_rate` must be a number in \[0, 1\)"),
        (lambda: models.mlp(10, (8, 8, 1), hidden=0), "`hidden` must be a positive int"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_num_classes_type():
    with pytest.raises(TypeError, match="`num_classes` must be an int"):
        models.mlp(10.0, (8, 8, 1))
