"""Tests for jcnn.summary: the lecture's LeNet numbers, paths, warnings, and receptive fields
checked against brute force (which input pixels can change one output unit)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.layers import (
    AdaptiveAvgPool,
    Add,
    AvgPool,
    BatchNorm,
    Concat,
    Conv,
    ConvTranspose,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Identity,
    Layer,
    MaxPool,
    Relu,
    apply_child,
    batched,
    init_child,
    parallel,
    residual,
    serial,
)
from jcnn.shapes import ShapeError
from jcnn.summary import Summary, summary

KEY = jax.random.key(0)
ONES = jax.nn.initializers.ones


def lenet():
    return serial(
        Conv(20, 5, padding=2),
        Relu(),
        MaxPool(2),
        Conv(50, 5, padding=2),
        Relu(),
        MaxPool(2),
        Flatten(),
        Dense(500),
        Relu(),
        Dense(10),
    )


def abstract_param_count(model, shape):
    params = jax.eval_shape(lambda k: model.init(k, shape)[1], KEY)
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))


# --------------------------------------------------------------------------------------------
# The lecture's LeNet
# --------------------------------------------------------------------------------------------


def test_lenet_numbers():
    table = summary(lenet(), (28, 28, 1))
    assert isinstance(table, Summary) and len(table) == 10
    assert [r["path"] for r in table.rows] == [f"serial[{i}]" for i in range(10)]
    assert [r["params"] for r in table.rows] == [520, 0, 0, 25_050, 0, 0, 0, 1_225_500, 0, 5_010]
    assert table.totals["params"] == 1_256_080 == abstract_param_count(lenet(), (28, 28, 1))
    shapes = [r["output_shape"] for r in table.rows]
    assert shapes[:3] == [(28, 28, 20), (28, 28, 20), (14, 14, 20)]
    assert shapes[5:7] == [(7, 7, 50), (2450,)] and table.totals["output_shape"] == (10,)
    # FLOPs per example: 2 per multiply-add plus one per bias add.
    assert table.rows[0]["flops"] == 28 * 28 * 20 * (2 * 5 * 5 * 1 + 1) == 799_680
    assert table.rows[3]["flops"] == 14 * 14 * 50 * (2 * 5 * 5 * 20 + 1)
    assert table.rows[7]["flops"] == 2 * 2450 * 500 + 500
    assert table.rows[2]["flops"] == 14 * 14 * 20 * 4  # one compare per window element
    assert table.rows[1]["flops"] == 28 * 28 * 20 and table.rows[6]["flops"] == 0
    assert table.totals["flops"] == sum(r["flops"] for r in table.rows)
    assert table.rows[0]["activation_bytes"] == 28 * 28 * 20 * 4
    assert table.totals["activation_bytes"] == 4 * sum(math.prod(s) for s in shapes)
    assert table.rows[0]["padding"] == ((2, 2), (2, 2)) and table.rows[1]["padding"] is None
    # Receptive field: 5, then 6 (jump 2) after the pool, 14, then 16 (jump 4) after the second pool.
    sizes = [r["receptive_field"][0]["size"] for r in table.rows[:6]]
    assert sizes == [5, 5, 6, 14, 14, 16]
    assert table.rows[5]["receptive_field"] == [{"size": 16, "jump": 4, "start": 1.5}] * 2
    assert [r["receptive_field"] for r in table.rows[6:]] == ["global"] * 4
    assert all(r["warning"] is None for r in table.rows)


def test_lenet_table_text_and_dict():
    table = summary(lenet(), (28, 28, 1))
    text = str(table)
    for piece in ["serial[7]", "Dense(500)", "1,225,500", "1,256,080", "16x16", "4x4", "1.5,1.5", "global"]:
        assert piece in text, piece
    assert "multiply-add = 2" in text and text.splitlines()[-2].startswith("total")
    as_dict = table.to_dict()
    assert as_dict["input_shape"] == (28, 28, 1) and as_dict["rows"] == table.rows
    assert as_dict["totals"]["params"] == 1_256_080
    assert summary(lenet(), (28, 28, 1), dtype=jnp.float16).rows[0]["activation_bytes"] == 28 * 28 * 20 * 2


# --------------------------------------------------------------------------------------------
# Paths, padding, warnings, totals
# --------------------------------------------------------------------------------------------


def test_nested_paths_and_residual_rows():
    model = serial(
        Conv(4, 3, padding=1),
        parallel(Conv(2, 1), serial(Relu(), Conv(3, 3, padding=1))),
        Concat(),
        residual(serial(Conv(5, 3, padding=1), BatchNorm()), shortcut=Conv(5, 1, bias=False)),
        residual(Relu()),
        GlobalAvgPool(),
        Dropout(0.5),
        Dense(3),
    )
    table = summary(model, (6, 6, 2))
    assert [r["path"] for r in table.rows] == [
        "serial[0]",
        "serial[1].parallel[0]",
        "serial[1].parallel[1].serial[0]",
        "serial[1].parallel[1].serial[1]",
        "serial[2]",
        "serial[3].residual.body.serial[0]",
        "serial[3].residual.body.serial[1]",
        "serial[3].residual.shortcut",
        "serial[3].residual.add",
        "serial[4].residual.body",
        "serial[4].residual.add",
        "serial[5]",
        "serial[6]",
        "serial[7]",
    ]
    assert table.rows[4]["output_shape"] == (6, 6, 5)
    assert table.rows[8]["flops"] == 6 * 6 * 5 and table.rows[8]["layer"] == "Add()"
    assert table.rows[6]["params"] == 10  # BatchNorm scale and shift
    assert table.totals["params"] == abstract_param_count(model, (6, 6, 2))
    assert "serial[1].parallel[1].serial[1]" in str(table)


def test_parallel_rows_show_each_branch_and_merge_takes_the_union():
    model = serial(parallel(Conv(1, 3), Conv(1, 3, padding=1)), Add())
    with pytest.raises(ShapeError, match=r"serial\[1\] Add: all inputs must have the same shape"):
        summary(model, (5, 5, 1))
    table = summary(serial(parallel(Conv(1, 1), Conv(1, 5, padding=2)), Add()), (5, 5, 1))
    assert table.rows[-1]["receptive_field"][0] == {"size": 5, "jump": 1, "start": 0}
    assert summary(parallel(Identity(), Flatten()), (3, 3, 1)).totals["output_shape"] == ((3, 3, 1), (9,))


def test_padding_is_resolved_and_stride_warnings_use_explain_fit():
    table = summary(serial(Conv(2, 4, padding="SAME"), Conv(2, 3, strides=3), MaxPool(2)), (7, 7, 1))
    assert table.rows[0]["padding"] == ((1, 2), (1, 2))
    assert table.rows[0]["warning"] is None
    warning = table.rows[1]["warning"]
    assert warning.startswith("spatial dims 0, 1: stride 3 does not fit a 7-wide input")
    assert "(7 - 3 + 2*0)/3 + 1 = 2.33" in warning and "Fix: padding 1" in warning
    # MaxPool(2) on the 2x2 result fits; on a 7-wide input it would drop a row.
    assert table.rows[2]["warning"] is None
    assert summary(MaxPool(2), (7, 7, 1)).rows[0]["warning"] is not None
    assert summary(MaxPool(2, ceil_mode=True), (7, 7, 1)).rows[0]["warning"] is None
    text = str(table)
    assert "[1]" in text and "serial[1] Conv(2, 3, strides=3): spatial dims 0, 1: stride 3" in text
    # ConvTranspose shows PyTorch's crop.
    row = summary(ConvTranspose(2, 3, strides=2, padding=(1, 0)), (4, 4, 1)).rows[0]
    assert row["padding"] == ((1, 1), (0, 0)) and row["output_shape"] == (7, 9, 2)


def test_custom_layer_without_info_and_errors():
    def init(key, input_shape):
        return input_shape, {"w": jnp.ones(input_shape[-1])}, ()

    def apply(params, state, x, *, key=None, train=False):
        return x * params["w"], state

    table = summary(serial(Conv(2, 3), Layer.per_example(init, apply, name="Scale"), Conv(1, 1)), (5, 5, 1))
    assert table.rows[1]["layer"] == "Scale" and table.rows[1]["params"] == 2
    assert table.rows[1]["flops"] is None and table.totals["flops"] is None
    assert table.rows[2]["receptive_field"] is None and "?" in str(table)
    with pytest.raises(ShapeError, match=r"^serial\[1\] Conv: .*2 spatial dim.*\(25,\)"):
        summary(serial(Flatten(), Conv(1, 3)), (5, 5, 1))
    with pytest.raises(TypeError, match=r"summary: pass the per-example model, not batched\(model\)"):
        summary(batched(lenet()), (8, 28, 28, 1))
    with pytest.raises(TypeError, match=r"summary: `model` must be a Layer"):
        summary(lambda x: x, (5,))


def dense_block(layer):
    """``y = concat(x, layer(x))`` (DenseNet, Huang et al. 2017): a combinator written by a user,
    from functions alone (no spec): its route is all the summary needs."""
    merge = Concat()

    def init(key, input_shape):
        out, params, state = init_child("dense.body", layer, key, input_shape)
        return merge.init(key, (tuple(input_shape), out))[0], params, state

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        y, state = apply_child(
            "dense.body", layer, params, state, x, key=key, train=train, batch_ndim=batch_ndim
        )
        return jnp.concatenate([x, y], axis=-1), state

    def route(flow, visit):
        return visit("dense.concat", merge, (flow, visit("dense.body", layer, flow)))

    return Layer(init, apply, name="dense_block", route=route)


def test_a_user_written_combinator_shows_its_childrens_rows():
    model = serial(Conv(4, 3, padding=1), dense_block(serial(Conv(2, 3, padding=1), Relu())), Dense(3))
    table = summary(model, (6, 6, 2))
    assert [r["path"] for r in table.rows] == [
        "serial[0]",
        "serial[1].dense.body.serial[0]",
        "serial[1].dense.body.serial[1]",
        "serial[1].dense.concat",
        "serial[2]",
    ]
    assert [r["output_shape"] for r in table.rows] == [(6, 6, 4), (6, 6, 2), (6, 6, 2), (6, 6, 6), (6, 6, 3)]
    assert [r["params"] for r in table.rows] == [76, 74, 0, 0, 21]
    assert table.totals["params"] == abstract_param_count(model, (6, 6, 2)) == 171
    assert table.rows[1]["flops"] == 6 * 6 * 2 * (2 * 3 * 3 * 4 + 1) and table.totals["flops"] is not None
    # The concat's field is the union of its inputs': 3 (the input) and 5 (through the body).
    assert [r["receptive_field"][0]["size"] for r in table.rows[:4]] == [3, 5, 5, 5]
    # Its children come from its route; it runs batched too, with its apply given the batch.
    assert [seg for seg, _ in model.children[1][1].children] == ["dense.body", "dense.concat"]
    _, params, state = model.init(KEY, (6, 6, 2))
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((3, 6, 6, 2)), jnp.float32)
    ys, _ = jax.jit(batched(model).apply)(params, state, xs)
    loop = jnp.stack([jax.jit(model.apply)(params, state, x)[0] for x in xs])
    np.testing.assert_allclose(ys, loop, rtol=1e-5, atol=1e-6)


def test_summary_knows_no_combinator_by_name():
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module("jcnn.summary"))
    assert "def summary(" in source
    for word in ('"serial"', '"parallel"', '"residual', '"batched"', ".kind", ".name =="):
        assert word not in source, word


# --------------------------------------------------------------------------------------------
# Receptive fields against brute force
# --------------------------------------------------------------------------------------------


def positive_input(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.5, 1.5, shape), jnp.float32)


def gradient_support(model, params, state, x):
    """support[u..., p...]: input pixel p has a nonzero gradient for output unit u (channels summed).

    Valid for linear nets with positive weights and inputs (no cancellation, nothing blocked).
    """
    d = x.ndim - 1

    def f(x):
        return model.apply(params, state, x)[0].sum(-1)

    jac = jax.jit(jax.jacrev(f))(x)  # (*out_spatial, *in_spatial, c)
    return np.asarray(jnp.abs(jac).sum(-1) > 0), d


def perturbation_support(model, params, state, x):
    """support[u..., p...]: raising input pixel p by 1e3 changes output unit u.

    Max pooling passes the gradient to the argmax alone, so its receptive field (the pixels that
    CAN change a unit) is measured by perturbing each input pixel in turn: with positive weights
    and inputs, a pixel inside the field pushes its way to the max.
    """
    d = x.ndim - 1
    spatial = x.shape[:-1]
    n = math.prod(spatial)

    def bumped(i, params):
        bump = jax.nn.one_hot(i, n, dtype=x.dtype).reshape(spatial + (1,))
        return model.apply(params, state, x + 1e3 * bump)[0]

    # Index n is the unbumped input (one_hot of an out-of-range index is zero), computed by the
    # same compiled program as the others so that rounding cannot differ. The params go in as
    # arguments, as in training: with ones-kernels closed over as constants, XLA's CPU compiler
    # (jax 0.10.2) miscompiles jit(vmap(conv -> max_pool)) (wrong values even for the unbumped
    # row; see the closing note of issue 3).
    ys = jax.jit(jax.vmap(bumped, in_axes=(0, None)))(jnp.arange(n + 1), params)
    changed = np.asarray(jnp.abs(ys[:n] - ys[n:]).sum(-1) > 0)  # (n, *out_spatial)
    return np.moveaxis(changed.reshape(spatial + changed.shape[1:]), range(d), range(-d, 0)), d


def check_rf(model, input_shape, rf, support, d, exact=True):
    """Every output unit whose predicted field lies inside the input: brute-force bounding box
    == predicted window (``exact``), or inside it with the largest box as wide (transposed convs,
    whose field depends on the output phase)."""
    out_spatial = support.shape[:d]
    in_spatial = input_shape[:-1]
    for dim in range(d):
        size, jump, start = rf[dim]["size"], rf[dim]["jump"], rf[dim]["start"]
        checked, widest = 0, 0
        for u in range(out_spatial[dim]):
            lo = start + u * jump - (size - 1) / 2
            hi = start + u * jump + (size - 1) / 2
            if lo < 0 or hi > in_spatial[dim] - 1:
                continue  # clipped by the border: brute force sees less
            # Pixels that unit u (along `dim`, any position along the others) depends on.
            mask = np.take(support, u, axis=dim)
            mask = np.any(mask, axis=tuple(i for i in range(d - 1)))  # over the other output dims
            along = np.any(mask, axis=tuple(i for i in range(d) if i != dim))
            idx = np.flatnonzero(along)
            assert idx.size, (dim, u)
            if exact:
                assert (idx.min(), idx.max()) == (lo, hi), (dim, u, idx.min(), idx.max(), lo, hi)
            else:
                assert lo <= idx.min() and idx.max() <= hi, (dim, u, idx.min(), idx.max(), lo, hi)
                widest = max(widest, idx.max() - idx.min() + 1)
            checked += 1
        assert checked >= 2, f"dim {dim}: no interior unit to check; use a larger input"
        if not exact:
            assert widest == size


RF_GRADIENT_NETS = [
    (
        "conv-stride-dilation-avgpool",
        lambda: serial(
            Conv(2, 3, kernel_init=ONES),
            Conv(2, 3, strides=2, padding=1, kernel_init=ONES),
            Conv(2, 3, dilation=2, kernel_init=ONES),
            AvgPool(2),
            Conv(1, 3, padding=1, kernel_init=ONES),
        ),
        (32, 32, 1),
        [23, 4],
    ),
    (
        "same-padding-even-and-asymmetric-kernels",
        lambda: serial(
            Conv(1, (4, 2), padding="SAME", kernel_init=ONES),
            Conv(1, (3, 5), strides=(2, 1), padding="SAME_LOWER", kernel_init=ONES),
            Conv(1, (2, 3), dilation=(1, 2), kernel_init=ONES),
        ),
        (20, 20, 1),
        None,
    ),
    (
        "parallel-concat",
        lambda: serial(
            Conv(1, 3, kernel_init=ONES),
            parallel(Conv(1, 1, kernel_init=ONES), Conv(1, 5, padding=2, kernel_init=ONES)),
            Concat(),
            Conv(1, 3, strides=2, kernel_init=ONES),
        ),
        (20, 20, 1),
        [9, 2],
    ),
    (
        "residual",
        lambda: serial(
            Conv(1, 3, strides=2, kernel_init=ONES),
            residual(
                serial(Conv(1, 3, padding=1, kernel_init=ONES), Conv(1, 3, padding=1, kernel_init=ONES))
            ),
            Conv(1, 1, kernel_init=ONES),
        ),
        (25, 25, 1),
        [11, 2],
    ),
    (
        "adaptive-avg-pool",
        lambda: serial(Conv(1, 3, kernel_init=ONES), AdaptiveAvgPool(6), Conv(1, 2, kernel_init=ONES)),
        (26, 26, 1),
        [10, 4],
    ),
]


@pytest.mark.parametrize("name,make,shape,expected", RF_GRADIENT_NETS, ids=[n[0] for n in RF_GRADIENT_NETS])
def test_receptive_field_equals_gradient_support(name, make, shape, expected):
    model = make()
    rf = summary(model, shape).rows[-1]["receptive_field"]
    if expected is not None:
        assert [rf[0]["size"], rf[0]["jump"]] == expected
    _, params, state = model.init(KEY, shape)
    support, d = gradient_support(model, params, state, positive_input(shape))
    check_rf(model, shape, rf, support, d)


RF_PERTURBATION_NETS = [
    (
        "lenet-features",
        lambda: serial(
            Conv(2, 5, padding=2, kernel_init=ONES),
            Relu(),
            MaxPool(2),
            Conv(2, 5, padding=2, kernel_init=ONES),
            Relu(),
            MaxPool(2),
        ),
        (28, 28, 1),
        [16, 4],
    ),
    (
        "padded-and-dilated-pools",
        lambda: serial(
            MaxPool(3, strides=2, padding=1),
            AvgPool(3, strides=1, padding=1, count_include_pad=False),
            MaxPool(2, strides=1, dilation=2),
        ),
        (18, 18, 1),
        [11, 2],
    ),
    (
        "1d-dilated",
        lambda: serial(
            Conv(1, (3,), dilation=3, kernel_init=ONES),
            MaxPool((3,), strides=2, dilation=2),
            Conv(1, (2,), strides=3, kernel_init=ONES),
        ),
        (60, 1),
        [13, 6],
    ),
]


@pytest.mark.parametrize(
    "name,make,shape,expected", RF_PERTURBATION_NETS, ids=[n[0] for n in RF_PERTURBATION_NETS]
)
def test_receptive_field_equals_perturbation_support(name, make, shape, expected):
    model = make()
    rf = summary(model, shape).rows[-1]["receptive_field"]
    assert [rf[0]["size"], rf[0]["jump"]] == expected
    _, params, state = model.init(KEY, shape)
    support, d = perturbation_support(model, params, state, positive_input(shape))
    check_rf(model, shape, rf, support, d)


def test_receptive_field_of_transposed_conv_is_the_widest_phase():
    model = serial(
        Conv(1, 3, strides=2, kernel_init=ONES),
        ConvTranspose(1, 3, strides=2, padding=1, kernel_init=ONES),
        Conv(1, 3, kernel_init=ONES),
    )
    shape = (21, 21, 1)
    rf = summary(model, shape).rows[-1]["receptive_field"]
    _, params, state = model.init(KEY, shape)
    support, d = gradient_support(model, params, state, positive_input(shape))
    check_rf(model, shape, rf, support, d, exact=False)


def test_brute_force_check_can_fail():
    # A wrong prediction (one pixel too small) is caught.
    model = serial(Conv(1, 3, kernel_init=ONES), Conv(1, 3, strides=2, kernel_init=ONES))
    shape = (15, 15, 1)
    rf = summary(model, shape).rows[-1]["receptive_field"]
    _, params, state = model.init(KEY, shape)
    support, d = gradient_support(model, params, state, positive_input(shape))
    check_rf(model, shape, rf, support, d)
    wrong = [dict(r, size=r["size"] - 1) for r in rf]
    with pytest.raises(AssertionError):
        check_rf(model, shape, wrong, support, d)
