"""Tests for jcnn.models: shapes compose for every dataset's image size, the classic architectures
have torchvision's parameter counts, and bad inputs are refused."""

import jax
import jax.numpy as jnp
import pytest

from jcnn import layers as L
from jcnn import models
from jcnn.layers import batched
from jcnn.summary import summary

IMAGE_SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]
SMALL_MODELS = ["lenet", "allconv", "mlp", "small_vgg"]  # fit every dataset's images, down to the 8x8 digits


def abstract_init(model, input_shape):
    """``init`` traced abstractly: the output shape and parameter shapes, no random draws."""
    out = {}

    def init(key):
        out["shape"], params, state = model.init(key, input_shape)
        return params, state

    params, state = jax.eval_shape(init, jax.random.key(0))
    return out["shape"], params, state


@pytest.mark.parametrize("name", SMALL_MODELS)
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


# --- the classic architectures ----------------------------------------------------------------

# torchvision's parameter counts at 1000 classes (its model docs / sum(p.numel())); the CIFAR
# ResNets' are He et al.'s 0.27M / 0.85M (option A), 10 classes at 32x32.
TORCHVISION_PARAMS = [
    ("resnet18", lambda: models.resnet18(), 11_689_512),
    ("resnet34", lambda: models.resnet34(), 21_797_672),
    ("resnet50", lambda: models.resnet50(), 25_557_032),
    ("vgg16", lambda: models.vgg16(), 138_357_544),
    ("vgg16_bn", lambda: models.vgg16(batch_norm=True), 138_365_992),
    ("vgg19", lambda: models.vgg19(), 143_667_240),
    ("alexnet", lambda: models.alexnet(), 61_100_840),
    ("mobilenet_v2", lambda: models.mobilenet_v2(), 3_504_872),
]
CIFAR_PARAMS = [
    ("resnet20", lambda: models.resnet20(), 269_722),
    ("resnet20_B", lambda: models.resnet20(shortcut="B"), 272_474),
    ("resnet56", lambda: models.resnet56(), 853_018),
]


@pytest.mark.parametrize("name, make, count", TORCHVISION_PARAMS, ids=[c[0] for c in TORCHVISION_PARAMS])
def test_torchvision_parameter_counts(name, make, count):
    table = summary(make(), (224, 224, 3))
    assert table.totals["params"] == count
    assert table.rows[-1]["output_shape"] == (1000,)


@pytest.mark.parametrize("name, make, count", CIFAR_PARAMS, ids=[c[0] for c in CIFAR_PARAMS])
def test_cifar_resnet_parameter_counts(name, make, count):
    table = summary(make(), (32, 32, 3))
    assert table.totals["params"] == count
    assert table.rows[-1]["output_shape"] == (10,)


def count(tree):
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree))


# A size each fits (AlexNet needs 63x63), small enough for cheap abstract traces.
ZOO = [
    ("alexnet", (64, 64, 3)),
    ("vgg11", (32, 32, 3)),
    ("resnet18", (32, 32, 3)),
    ("resnet50", (32, 32, 3)),
    ("resnet20", (28, 28, 1)),
    ("resnet56", (32, 32, 3)),
    ("mobilenet_v2", (28, 28, 1)),
]


@pytest.mark.parametrize("name, input_shape", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_init_and_apply_shapes(name, input_shape):
    model = models.MODELS[name](7, input_shape)
    out_shape, params, state = abstract_init(model, input_shape)
    assert out_shape == (7,)
    assert count(params) == summary(model, input_shape).totals["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves((params, state)))
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    for train in (False, True):  # train mode: batch statistics, dropout keys, new running stats
        y, new_state = jax.eval_shape(
            lambda p, s, x, k, train=train: batched(model).apply(p, s, x, key=k, train=train),
            params,
            state,
            x,
            jax.random.key(0),
        )
        assert y.shape == (2, 7) and y.dtype == jnp.float32
        assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)


def test_resnet_structure():
    # BasicBlock nets: 2 convs per block + stem + projections; bottlenecks: 3 per block.
    rows = summary(models.resnet18(), (224, 224, 3)).rows
    convs = [r for r in rows if r["layer"].startswith("Conv(")]
    assert len(convs) == 1 + 2 * 8 + 3
    assert [r["output_shape"] for r in rows if r["layer"].startswith("MaxPool")] == [(56, 56, 64)]
    assert rows[-2]["output_shape"] == (512,)
    rows = summary(models.resnet50(), (224, 224, 3)).rows
    assert len([r for r in rows if r["layer"].startswith("Conv(")]) == 1 + 3 * 16 + 4
    assert rows[-2]["output_shape"] == (2048,)
    # CIFAR option A: no projection convs, 3 stages 16/32/64.
    rows = summary(models.resnet20(), (32, 32, 3)).rows
    assert len([r for r in rows if r["layer"].startswith("Conv(")]) == 19
    assert rows[-2]["output_shape"] == (64,)
    assert sum("ZeroPadShortcut" in r["layer"] for r in rows) == 2


def test_mobilenet_v2_structure():
    rows = summary(models.mobilenet_v2(), (224, 224, 3)).rows
    depthwise = [r for r in rows if "groups=" in r["layer"]]
    assert len(depthwise) == 17  # one per inverted residual
    assert sum(r["layer"] == "Relu6()" for r in rows) == 1 + 2 * 17 - 1 + 1  # the t=1 block has no expansion
    assert sum(r["layer"] == "Relu()" for r in rows) == 0
    assert rows[-2]["output_shape"] == (1280,) or rows[-3]["output_shape"] == (1280,)
    # width_mult rounds channels to multiples of 8, as torchvision does.
    assert summary(models.mobilenet_v2(width_mult=0.5), (224, 224, 3)).totals["params"] == 1_968_680


def test_vgg_batch_norm_and_dropout_options():
    assert repr(models.vgg11(10, (32, 32, 3), batch_norm=True)).count("BatchNorm()") == 8
    assert "BatchNorm" not in repr(models.vgg11(10, (32, 32, 3)))
    assert repr(models.vgg11(10, (32, 32, 3))).count("Dropout(0.5)") == 2
    assert "Dropout" not in repr(models.alexnet(10, (64, 64, 3), drop_rate=0.0))
    assert repr(models.mobilenet_v2(10, (32, 32, 3))).count("Dropout(0.2)") == 1


def test_relu6():
    y, state = L.Relu6().apply((), (), jnp.array([[-2.0, 0.5], [6.0, 7.5]]))
    assert y.tolist() == [[0.0, 0.5], [6.0, 6.0]] and state == ()


def test_small_vgg_downsampling_variants_share_their_convolutions():
    tables = {}
    for d in models.DOWNSAMPLES:
        tables[d] = summary(models.small_vgg(10, (28, 28, 1), widths=(8, 16), downsample=d), (28, 28, 1))
    convs = {
        d: [r["params"] for r in t.rows if r["layer"].startswith(("Conv", "BatchNorm"))]
        for d, t in tables.items()
    }
    assert convs["max"] == convs["strided"] == convs["none"] and len(convs["max"]) == 8
    assert len(convs["conv"]) == 12 and convs["conv"][:4] == convs["max"][:4]
    flat = {
        d: next(r["output_shape"] for r in t.rows if r["layer"] == "Flatten()") for d, t in tables.items()
    }
    assert flat == {
        "max": (7 * 7 * 16,),
        "strided": (7 * 7 * 16,),
        "conv": (7 * 7 * 16,),
        "none": (28 * 28 * 16,),
    }
    kinds = {d: {r["layer"].split("(")[0] for r in t.rows} for d, t in tables.items()}
    assert "MaxPool" in kinds["max"] and "MaxPool" not in kinds["strided"] | kinds["conv"] | kinds["none"]
    strides = [r["layer"] for r in tables["strided"].rows if "strides=2" in r["layer"]]
    assert len(strides) == 2  # the second conv of each stage
    # Odd sizes round up in both downsampling variants (7 -> 4), so their heads match.
    odd = {d: summary(models.small_vgg(10, (7, 7, 1), widths=(4,), downsample=d), (7, 7, 1)).totals["params"]
           for d in ("max", "strided")}  # fmt: skip
    assert len(set(odd.values())) == 1
    assert "BatchNorm" not in repr(models.small_vgg(batch_norm=False, drop_rate=0.0))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: models.small_vgg(downsample="avg"),
            ValueError,
            r"`downsample` must be one of \('max', 'strided', 'conv', 'none'\)",
        ),
        (lambda: models.small_vgg(widths=(8, 0)), ValueError, r"`widths` must be a non-empty sequence"),
        (lambda: models.small_vgg(hidden=0), ValueError, r"`hidden` must be a positive int, got 0"),
        (lambda: models.small_vgg(batch_norm="yes"), TypeError, r"`batch_norm` must be True or False"),
        (lambda: models.alexnet(10, (62, 62, 3)), ValueError, r"alexnet: .* at least 63x63, got 62x62"),
        (lambda: models.vgg16(10, (28, 28, 1)), ValueError, r"vgg: .* at least 32x32, got 28x28"),
        (lambda: models.vgg(12), ValueError, r"vgg: `depth` must be one of 11, 13, 16, 19, got 12"),
        (lambda: models.vgg(16, batch_norm=1), TypeError, r"`batch_norm` must be True or False, got 1"),
        (lambda: models.resnet(21), ValueError, r"resnet: `depth` must be one of 18, 20, 32, 34, 44, 50, 56"),
        (lambda: models.resnet(20, shortcut="C"), ValueError, r"`shortcut` must be 'A' or 'B', got 'C'"),
        (lambda: models.resnet(18, shortcut="B"), ValueError, r"`shortcut` applies to the CIFAR depths"),
        (lambda: models.mobilenet_v2(width_mult=0), ValueError, r"`width_mult` must be a number > 0, got 0"),
        (lambda: models.mobilenet_v2(10, (32, 32, 3), drop_rate=1.0), ValueError, r"`drop_rate` must be"),
        (lambda: models.resnet18(1), ValueError, r"`num_classes` must be >= 2, got 1"),
    ],
)
def test_zoo_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
