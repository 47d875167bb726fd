"""Tests for jcnn.layers: the Layer type, shape inference, batching, every layer's numbers, errors,
per-example gradients and a short optax run."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from jcnn import ops
from jcnn.layers import (
    AdaptiveAvgPool,
    AdaptiveMaxPool,
    Add,
    AvgPool,
    BatchNorm,
    BatchNormState,
    Concat,
    Conv,
    ConvTranspose,
    Dense,
    Dropout,
    Flatten,
    Gelu,
    GlobalAvgPool,
    GlobalMaxPool,
    GroupNorm,
    Identity,
    Layer,
    LayerNorm,
    LeakyRelu,
    LogSoftmax,
    MaxPool,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
    apply_child,
    batched,
    child_path,
    output_shape,
    parallel,
    residual,
    serial,
)
from jcnn.shapes import ShapeError

KEY = jax.random.key(0)
F64 = jnp.float64


def rand(shape, seed=0, dtype=F64):
    # numpy's generator: no XLA compilation per shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def lenet(**kw):
    return serial(
        Conv(20, 5, padding=2, **kw),
        Relu(),
        MaxPool(2),
        Conv(50, 5, padding=2, **kw),
        Relu(),
        MaxPool(2),
        Flatten(),
        Dense(500, **kw),
        Relu(),
        Dense(10, **kw),
    )


def small_convnet(drop_rate=0.25):
    """Conv, BatchNorm, pooling, residual, dropout: one of everything a CNN uses."""
    return serial(
        Conv(4, 3, padding=1),
        BatchNorm(),
        Relu(),
        residual(serial(Conv(4, 3, padding="SAME"), Relu())),
        MaxPool(2),
        Dropout(drop_rate),
        Flatten(),
        Dense(3),
    )


# --------------------------------------------------------------------------------------------
# The Layer type
# --------------------------------------------------------------------------------------------


def test_layer_unpacks_as_a_pair_and_carries_metadata():
    layer = Dense(8, bias=False)
    init, apply = layer
    assert init is layer.init and apply is layer.apply
    # Each metadata role one field: a leaf's info, a combinator's route, the declared input.
    assert [f.name for f in dataclasses.fields(Layer)] == [
        "init",
        "apply",
        "name",
        "spec",
        "info",
        "route",
        "input_shape",
    ]
    assert not hasattr(layer, "__dict__")  # slots: the fields above are all there is
    assert layer.name == "Dense" and layer.route is None and layer.input_shape is None
    assert layer.spec.out_features == 8 and layer.spec.bias is False and layer.spec.precision is None
    assert repr(layer) == "Dense(8, bias=False)"
    info = layer.info((3, 5))
    assert info.output_shape == (3, 8) and info.params == 5 * 8
    conv = Conv(8, 3, strides=2, padding=1)
    assert repr(conv) == "Conv(8, 3, strides=2, padding=1)"
    assert conv.info((9, 9, 3)).padding == ((1, 1), (1, 1))
    model = serial(conv, Relu())
    # Children are derived from the route, never stored beside it.
    assert [seg for seg, _ in model.children] == ["serial[0]", "serial[1]"]
    assert model.children[0][1] is conv and model.info is None and model.route is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.name = "x"
    assert hash(Dense(8, bias=False).spec) == hash(layer.spec)
    assert Dense(8, bias=False) == layer and hash(Dense(8, bias=False)) == hash(layer)


def test_spec_layers_cannot_drift_and_custom_layers_work():
    layer = Relu()
    # The functions of a spec'd layer are its spec's: swapping one in is refused, not ignored.
    with pytest.raises(TypeError, match=r"Relu's init, apply, name, info and route come from its spec"):
        dataclasses.replace(layer, apply=lambda p, s, x, *, key=None, train=False, batch_ndim=0: (x + 1, s))
    conv = Conv(8, 3)
    with pytest.raises(TypeError, match=r"layer.replace\(field=value\)"):
        dataclasses.replace(conv, spec=conv.spec.replace(impl="xla"))

    def init(key, input_shape):
        return input_shape, {"w": jnp.ones(input_shape[-1])}, ()

    def apply(params, state, x, *, key=None, train=False):
        assert x.ndim == 2  # one example, never the batch
        return x * params["w"][None, :], state

    # Written for one example: wrapped once, it runs under vmap on a batch.
    custom = Layer.per_example(init, apply, name="Scale")
    out, params, state = serial(custom, Relu()).init(KEY, (2, 3))
    assert out == (2, 3) and custom.info is None and custom.spec is None and custom.route is None
    assert repr(custom) == "Scale"
    y, _ = custom.apply(params[0], (), jnp.ones((4, 2, 3)), batch_ndim=1)
    assert y.shape == (4, 2, 3)
    with pytest.raises(TypeError, match="must be callables"):
        Layer(1, apply)
    # The same apply given straight to Layer: refused with the fix, not a TypeError inside jit.
    with pytest.raises(TypeError, match=r"Layer: Scale's `apply` takes no `batch_ndim=`.*Layer.per_example"):
        Layer(init, apply, name="Scale")
    with pytest.raises(TypeError, match=r"has both `info` .* and `route`"):
        Layer(init, custom.apply, info=Relu().info, route=serial(Relu()).route)
    with pytest.raises(TypeError, match=r"Scale.replace: a layer made from functions has no spec"):
        custom.replace(name="x")
    assert dataclasses.replace(custom, input_shape=[2, 3]).input_shape == (2, 3)
    with pytest.raises(ShapeError, match=r"`input_shape` must be positive ints"):
        dataclasses.replace(custom, input_shape=(0, 3))


def test_child_ops_are_named_by_their_path():
    # The same path names the ops (jax.named_scope): in the jaxpr's name stack, the lowered
    # program's locations and the compiled HLO's op_name metadata that profilers show.
    model = serial(Dense(3), Relu(), parallel(Identity(), Dense(3)), Add())
    _, params, state = model.init(KEY, (4,))
    lowered = jax.jit(lambda p, x: model.apply(p, state, x)[0]).lower(params, jnp.ones(4))
    assert "serial[2]/parallel[1]/Dense/dot_general" in lowered.as_text(debug_info=True)
    assert 'serial[0]/Dense/dot_general"' in lowered.compile().as_text()  # what profilers show
    grad = jax.jit(jax.grad(lambda p, x: model.apply(p, state, x)[0].sum())).lower(params, jnp.ones(4))
    text = grad.as_text(
        debug_info=True
    )  # transformations wrap the outer scope: transpose(jvp(serial[2]))/...
    assert "transpose(" in text and "serial[2]/parallel[1]/Dense/dot_general" in re.sub(r"\w+\(|\)", "", text)


def test_child_errors_carry_their_path_by_one_mechanism():
    model = serial(Relu(), parallel(Identity(), Dense(3)), Add())
    _, params, state = model.init(KEY, (3,))
    with pytest.raises(ShapeError, match=r"^serial\[1\]\.parallel\[1\] Dense: input has 4 features") as info:
        model.apply(params, state, jnp.ones(4))
    assert info.value.jcnn_path == ("serial[1]", "parallel[1]")
    assert info.value.jcnn_message.startswith("Dense: input has 4 features")
    with pytest.raises(ShapeError) as info:
        serial(Relu(), serial(parallel(Identity(), Dense(2)), Concat(axis=0))).init(KEY, (3, 4))
    assert info.value.jcnn_path == ("serial[1]", "serial[1]")
    assert str(info.value).startswith("serial[1].serial[1] Concat: inputs must agree")
    # Not our error: passes through untouched.
    with pytest.raises(KeyError):
        with child_path("serial[0]"):
            raise KeyError("x")


# --------------------------------------------------------------------------------------------
# Shape agreement: init's shape == jax.eval_shape(apply) for every layer and combinator
# --------------------------------------------------------------------------------------------

CASES = [
    ("Conv", lambda: Conv(6, 3, strides=2, padding="SAME", dilation=1), (9, 9, 3)),
    ("Conv-groups-dilation", lambda: Conv(6, (3, 2), groups=3, dilation=(2, 1)), (9, 8, 3)),
    ("Conv-1d-causal", lambda: Conv(2, (3,), padding="CAUSAL", dilation=2), (10, 4)),
    ("Conv-3d-reflect", lambda: Conv(2, (3, 3, 3), padding=1, padding_mode="reflect"), (5, 5, 5, 2)),
    ("Conv-im2col", lambda: Conv(4, 3, impl="im2col", bias=False), (6, 6, 2)),
    ("ConvTranspose", lambda: ConvTranspose(4, 3, strides=2, padding=1, output_padding=1), (5, 5, 3)),
    ("ConvTranspose-groups", lambda: ConvTranspose(4, 3, strides=2, groups=2), (4, 4, 2)),
    ("Dense", lambda: Dense(7), (5,)),
    ("Dense-per-pixel", lambda: Dense(7, bias=False), (3, 3, 5)),
    ("MaxPool", lambda: MaxPool(3, strides=2, padding=1, ceil_mode=True), (8, 8, 2)),
    ("MaxPool-dilated", lambda: MaxPool((3,), dilation=2, strides=1), (9, 2)),
    ("AvgPool", lambda: AvgPool(2, count_include_pad=False, padding=1), (7, 7, 2)),
    ("GlobalAvgPool", lambda: GlobalAvgPool(), (5, 4, 3)),
    ("GlobalMaxPool", lambda: GlobalMaxPool(spatial_dims=1), (5, 3)),
    ("AdaptiveAvgPool", lambda: AdaptiveAvgPool((2, 3)), (7, 5, 3)),
    ("AdaptiveMaxPool", lambda: AdaptiveMaxPool(2), (5, 5, 3)),
    ("Flatten", lambda: Flatten(), (3, 4, 5)),
    ("Identity", lambda: Identity(), (3, 2)),
    ("Relu", lambda: Relu(), (3, 2)),
    ("Gelu", lambda: Gelu(), (3, 2)),
    ("Tanh", lambda: Tanh(), (3, 2)),
    ("Sigmoid", lambda: Sigmoid(), (3, 2)),
    ("LeakyRelu", lambda: LeakyRelu(0.2), (3, 2)),
    ("LogSoftmax", lambda: LogSoftmax(), (4,)),
    ("Softmax", lambda: Softmax(axis=0), (4, 2)),
    ("Dropout", lambda: Dropout(0.5), (4, 4, 2)),
    ("BatchNorm", lambda: BatchNorm(), (4, 4, 3)),
    ("LayerNorm", lambda: LayerNorm(axes=(0, 1, 2)), (4, 4, 3)),
    ("GroupNorm", lambda: GroupNorm(2), (4, 4, 6)),
    ("serial", lambda: lenet(), (28, 28, 1)),
    ("parallel", lambda: parallel(Conv(2, 1), MaxPool(2), Flatten()), (6, 6, 3)),
    ("parallel-Add", lambda: serial(parallel(Conv(3, 3, padding=1), Identity()), Add()), (5, 5, 3)),
    ("parallel-Concat", lambda: serial(parallel(Conv(2, 1), Conv(5, 3, padding=1)), Concat()), (5, 5, 3)),
    ("residual", lambda: residual(serial(Conv(3, 3, padding=1), Relu())), (5, 5, 3)),
    (
        "residual-shortcut",
        lambda: residual(Conv(8, 3, strides=2, padding=1), shortcut=Conv(8, 1, strides=2)),
        (6, 6, 3),
    ),
    ("small_convnet", small_convnet, (8, 8, 2)),
]


def abstract_init(layer, shape):
    """``layer.init`` traced abstractly: output shape and ShapeDtypeStruct params/state, no compile."""
    box = {}

    def run(key):
        box["out"], params, state = layer.init(key, shape)
        return params, state

    params, state = jax.eval_shape(run, KEY)
    return box["out"], params, state


def _tree_shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


@pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
def test_init_shape_equals_eval_shape_of_apply(name, make, shape):
    layer = make()
    out_shape, params, state = abstract_init(layer, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    y, new_state = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, key=KEY), params, state, x)
    assert _tree_shapes(y) == out_shape
    assert _tree_shapes(new_state) == _tree_shapes(state)
    # The summary's arithmetic (info, folded through combinators) agrees with init.
    assert output_shape(layer, shape) == out_shape
    # Two leading batch dims straight into apply, training mode.
    x2 = jax.ShapeDtypeStruct((2, 3, *shape), jnp.float32)
    y2, s2 = jax.eval_shape(
        lambda p, s, x: apply_child("top", layer, p, s, x, key=KEY, train=True, batch_ndim=2),
        params,
        state,
        x2,
    )
    assert _tree_shapes(y2) == jax.tree_util.tree_map(
        lambda s: (2, 3, *s),
        out_shape,
        is_leaf=lambda s: isinstance(s, tuple) and all(isinstance(i, int) for i in s),
    )
    assert _tree_shapes(s2) == _tree_shapes(state)
    # And batched, in training mode (BatchNorm statistics, Dropout keys).
    b_apply = batched(layer).apply
    b_out, b_params, b_state = abstract_init(batched(layer), (3, *shape))
    xb = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    yb, sb = jax.eval_shape(lambda p, s, x: b_apply(p, s, x, key=KEY, train=True), b_params, b_state, xb)
    assert _tree_shapes(yb) == b_out
    assert _tree_shapes(sb) == _tree_shapes(b_state)


def test_param_counts_from_init_equal_info():
    for name, make, shape in CASES:
        layer = make()
        if layer.info is None:
            continue
        _, params, _ = abstract_init(layer, shape)
        count = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
        assert layer.info(shape).params == count, name


# --------------------------------------------------------------------------------------------
# jit == eager, batched == loop, no transposes
# --------------------------------------------------------------------------------------------


def test_jit_equals_eager(x64):
    model = batched(
        serial(
            Conv(2, 3, padding=1, param_dtype=F64),
            BatchNorm(param_dtype=F64),
            Relu(),
            Dropout(0.5),
            Flatten(),
            Dense(2, param_dtype=F64),
        )
    )
    _, params, state = model.init(KEY, (3, 4, 4, 1))
    x = rand((3, 4, 4, 1))
    # Training mode: batch statistics through pmean, dropout keys split per example.
    eager = model.apply(params, state, x, key=KEY, train=True)
    compiled = jax.jit(model.apply, static_argnames="train")(params, state, x, key=KEY, train=True)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), eager, compiled
    )


def test_batched_equals_loop_over_examples(x64):
    model = serial(
        Conv(3, 3, strides=2, param_dtype=F64),
        residual(Conv(3, 3, padding=1, param_dtype=F64)),
        AvgPool(2),
        Flatten(),
        Dense(4, param_dtype=F64),
        LogSoftmax(),
    )
    _, params, state = model.init(KEY, (9, 9, 2))
    xs = rand((5, 9, 9, 2))
    ys, _ = jax.jit(batched(model).apply, static_argnames="train")(params, state, xs, train=True)
    apply = jax.jit(model.apply, static_argnames="train")
    loop = jnp.stack([apply(params, state, x, train=True)[0] for x in xs])
    np.testing.assert_allclose(ys, loop, rtol=1e-12, atol=1e-12)


def test_batched_passes_tuple_outputs_and_batch_size():
    init, apply = batched(parallel(Conv(2, 1), Flatten()))
    out, params, state = init(KEY, (6, 3, 3, 1))
    assert out == ((6, 3, 3, 2), (6, 9))
    y, _ = apply(params, state, jnp.ones((6, 3, 3, 1)))
    assert _tree_shapes(y) == out


def _primitives(jaxpr):
    """Every primitive name in a jaxpr and its sub-jaxprs (pjit, cond, scan, custom_jvp...)."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(v, "eqns"):
                    names |= _primitives(v)
                elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                    names |= _primitives(v.jaxpr)
    return names


@pytest.mark.parametrize("impl", ["xla", "direct", "im2col"])
def test_no_transpose_in_batched_conv_net(impl):
    model = serial(
        Conv(4, 3, padding=1, impl=impl),
        BatchNorm(),
        Relu(),
        MaxPool(2),
        Conv(8, 3, strides=2, impl=impl),
        Relu(),
        GlobalAvgPool(),
        Dropout(0.1),
        Dense(3),
    )
    init, apply = batched(model)
    _, params, state = init(KEY, (4, 12, 12, 3))
    x = jnp.ones((4, 12, 12, 3), jnp.float32)
    names = _primitives(
        jax.make_jaxpr(lambda p, s, x: apply(p, s, x, key=KEY, train=True))(params, state, x).jaxpr
    )
    assert "conv_general_dilated" in names or impl != "xla"
    assert "transpose" not in names, sorted(names)


def test_primitive_walker_sees_transposes_in_sub_jaxprs():
    # The test above must be able to fail: a transpose hidden inside a jit is found.
    names = _primitives(jax.make_jaxpr(jax.jit(lambda x: x.T + 1))(jnp.ones((2, 3))).jaxpr)
    assert "transpose" in names


# --------------------------------------------------------------------------------------------
# Whole batches: batched hands the batch to every layer that takes one, vmaps the others
# --------------------------------------------------------------------------------------------


def batch_model(drop_rate=0.3):
    """Layers that take batches, with every rank-sensitive one (positive axes, Flatten, GroupNorm)."""
    return serial(
        Dense(6, param_dtype=F64),  # per pixel on (4, 4, 3)
        BatchNorm(momentum=0.3, param_dtype=F64),
        Gelu(),
        GroupNorm(2, param_dtype=F64),
        LayerNorm(axes=(0, 1, 2), param_dtype=F64),
        parallel(Identity(), Softmax(axis=2)),
        Concat(axis=2),
        Flatten(),
        Dropout(drop_rate),
        Dense(5, param_dtype=F64),
        residual(BatchNorm(param_dtype=F64)),
        LogSoftmax(axis=0),
    )


def perturbed_init(model, shape):
    """Params moved off their initial values (norm scales of one, zero biases hide mistakes)."""
    _, params, state = model.init(KEY, shape)
    leaves, tree = jax.tree_util.tree_flatten(params)
    leaves = [p + 0.1 * rand(p.shape, i + 1) for i, p in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(tree, leaves), state


def test_batched_model_equals_loop_and_vmap_reference_in_eval_and_train(x64):
    xs = rand((5, 4, 4, 3))
    model = batch_model()
    params, state = perturbed_init(model, (4, 4, 3))
    y, same = jax.jit(batched(model).apply)(params, state, xs)
    one = jax.jit(model.apply)
    loop = jnp.stack([one(params, state, x)[0] for x in xs])
    np.testing.assert_allclose(y, loop, rtol=1e-12, atol=1e-12)
    assert same is state or jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a, b: (a == b).all(), same, state)
    )
    # Training, against the per-example model under the user's own vmap, BatchNorm averaging
    # across "batch": the same statistics, taken over the batch axis directly. Dropout is off
    # here: one mask per batch differs from per-example masks by design (see the Dropout test).
    model = batch_model(drop_rate=0.0)
    reference = jax.vmap(
        lambda x: model.apply(params, state, x, train=True), out_axes=(0, None), axis_name="batch"
    )
    y, new_state = jax.jit(batched(model).apply, static_argnames="train")(params, state, xs, train=True)
    y_ref, state_ref = jax.jit(reference)(xs)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), new_state, state_ref
    )
    assert not np.allclose(new_state[1].mean, state[1].mean)  # the statistics did move


def test_batch_ndim_two_equals_one_flattened_batch(x64):
    model = batch_model(drop_rate=0.0)
    params, state = perturbed_init(model, (4, 4, 3))
    xs = rand((2, 3, 4, 4, 3), 4)
    apply = jax.jit(model.apply, static_argnames=("train", "batch_ndim"))
    for train in (False, True):
        y2, s2 = apply(params, state, xs, train=train, batch_ndim=2)
        y1, s1 = apply(params, state, xs.reshape(6, 4, 4, 3), train=train, batch_ndim=1)
        assert y2.shape == (2, 3, 5)
        np.testing.assert_allclose(y2.reshape(6, 5), y1, rtol=1e-12, atol=1e-12)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), s2, s1)


def _spy(monkeypatch, name):
    """Record the lhs shape of every call to ``jax.lax.<name>`` made while tracing."""
    seen = []
    real = getattr(lax, name)

    def spy(lhs, *args, **kwargs):
        seen.append(tuple(lhs.shape))
        return real(lhs, *args, **kwargs)

    monkeypatch.setattr(lax, name, spy)
    return seen


def test_batched_dense_sees_the_real_batch_and_a_user_layer_falls_back_to_vmap(monkeypatch):
    seen_by_user = []

    def init(key, input_shape):
        return input_shape, (), ()

    def apply(params, state, x, *, key=None, train=False):
        # Written for one example: divides by that example's own sum (wrong on a whole batch).
        seen_by_user.append(tuple(x.shape))
        return x / jnp.sum(jnp.abs(x)), state

    normalise = Layer.per_example(init, apply, name="Normalise")
    model = serial(Dense(4), Relu(), normalise, Dense(2))
    _, params, state = model.init(KEY, (3,))
    xs = rand((5, 3), dtype=jnp.float32)
    seen = _spy(monkeypatch, "dot_general")
    jaxpr = jax.make_jaxpr(lambda p, s, x: batched(model).apply(p, s, x))(params, state, xs)
    assert seen == [(5, 3), (5, 4)]  # each Dense ran once, on the whole batch
    assert seen_by_user == [(4,)]  # the user's layer, once, on one example (vmapped)
    assert "dot_general" in str(jaxpr)
    ys, _ = jax.jit(batched(model).apply)(params, state, xs)
    one = jax.jit(model.apply)
    loop = jnp.stack([one(params, state, x)[0] for x in xs])
    np.testing.assert_allclose(ys, loop, rtol=1e-6)
    # On its own, batched vmaps it too.
    y, _ = batched(normalise).apply((), (), xs)
    np.testing.assert_allclose(jnp.abs(y).sum(-1), 1.0, rtol=1e-6)


def test_batched_lenet_conv_sees_the_real_batch(monkeypatch):
    model = serial(
        Conv(20, 5, padding=2, impl="xla"),
        Relu(),
        MaxPool(2),
        Conv(50, 5, padding=2, impl="xla"),
        Relu(),
        MaxPool(2),
        Flatten(),
        Dense(500),
        Relu(),
        Dense(10),
    )
    _, params, state = abstract_init(model, (28, 28, 1))
    x = jax.ShapeDtypeStruct((4, 28, 28, 1), jnp.float32)
    seen = _spy(monkeypatch, "conv_general_dilated")
    jax.make_jaxpr(lambda p, s, x: batched(model).apply(p, s, x))(params, state, x)
    assert len(seen) == 2 and all(shape[0] == 4 for shape in seen), seen


def test_batched_lenet_equals_loop(x64):
    model = lenet(param_dtype=F64)
    _, params, state = model.init(KEY, (28, 28, 1))
    xs = rand((3, 28, 28, 1))
    ys, _ = jax.jit(batched(model).apply)(params, state, xs)
    one = jax.jit(model.apply)
    loop = jnp.stack([one(params, state, x)[0] for x in xs])
    np.testing.assert_allclose(ys, loop, rtol=1e-12, atol=1e-12)


def test_per_example_gradients_of_a_batch_taking_model(x64):
    model = batch_model()
    params, state = perturbed_init(model, (4, 4, 3))
    xs, labels = rand((3, 4, 4, 3), 2), jnp.array([0, 4, 2])
    grad = jax.jit(jax.grad(lambda p, x, y: _loss(model, p, state, x, y)))
    per_example = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0)))(params, xs, labels)
    for i in range(3):
        jax.tree_util.tree_map(
            lambda batch, one, i=i: np.testing.assert_allclose(batch[i], one, rtol=1e-10, atol=1e-14),
            per_example,
            grad(params, xs[i], labels[i]),
        )


def test_dense_precision_reaches_lax():
    layer = Dense(3, precision="highest")
    _, params, _ = layer.init(KEY, (4,))
    jaxpr = jax.make_jaxpr(lambda p, x: layer.apply(p, (), x)[0])(params, jnp.ones((2, 4)))
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert eqn.params["precision"] in (lax.Precision.HIGHEST, (lax.Precision.HIGHEST,) * 2)
    assert layer.spec.precision == lax.Precision.HIGHEST
    assert repr(layer) == "Dense(3, precision='highest')"
    default = jax.make_jaxpr(lambda p, x: Dense(3).apply(p, (), x)[0])(params, jnp.ones((2, 4)))
    (eqn,) = [e for e in default.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert eqn.params["precision"] is None


# --------------------------------------------------------------------------------------------
# Layer numbers
# --------------------------------------------------------------------------------------------


def test_conv_and_dense_layers_compute_the_ops(x64):
    conv = Conv(4, 3, strides=2, padding=1, dilation=1, groups=2, param_dtype=F64)
    _, p, _ = conv.init(KEY, (7, 7, 2))
    x = rand((7, 7, 2))
    y, ref = jax.jit(
        lambda p, x: (
            conv.apply(p, (), x)[0],
            ops.conv(x, p["kernel"], p["bias"], strides=2, padding=1, groups=2),
        )
    )(p, x)
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    dense = Dense(3, param_dtype=F64)
    _, p, _ = dense.init(KEY, (2, 5))
    x = rand((2, 5))
    np.testing.assert_allclose(dense.apply(p, (), x)[0], x @ p["kernel"] + p["bias"][None, :], rtol=1e-12)


def test_conv_transpose_layer_is_the_transpose_of_conv(x64):
    # <conv(x), y> == <x, conv_transpose(y)> with the same kernel seen from both sides.
    conv = Conv(3, 3, strides=2, padding=1, bias=False, param_dtype=F64)
    _, p, _ = conv.init(KEY, (7, 7, 2))
    x = rand((7, 7, 2), 1)
    y = rand((4, 4, 3), 2)
    kernel_t = jnp.swapaxes(p["kernel"], -1, -2)  # (k, k, c_out, c_in): transposed conv's (c_in', c_out')
    convt = ConvTranspose(2, 3, strides=2, padding=1, bias=False)
    out_shape, _, _ = convt.init(KEY, (4, 4, 3))
    assert out_shape == (7, 7, 2)
    lhs = jnp.vdot(jax.jit(conv.apply)(p, (), x)[0], y)
    rhs = jnp.vdot(x, jax.jit(convt.apply)({"kernel": kernel_t}, (), y)[0])
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_activation_values(x64):
    x = jnp.array([-2.0, -0.5, 0.0, 1.5], F64)
    assert Relu().apply((), (), x)[0].tolist() == [0, 0, 0, 1.5]
    np.testing.assert_allclose(LeakyRelu(0.1).apply((), (), x)[0], [-0.2, -0.05, 0, 1.5])
    np.testing.assert_allclose(Tanh().apply((), (), x)[0], np.tanh(x))
    np.testing.assert_allclose(Sigmoid().apply((), (), x)[0], 1 / (1 + np.exp(-np.asarray(x))))
    from scipy.special import erf

    np.testing.assert_allclose(Gelu().apply((), (), x)[0], 0.5 * x * (1 + erf(np.asarray(x) / np.sqrt(2))))
    logp = LogSoftmax().apply((), (), x)[0]
    np.testing.assert_allclose(jnp.exp(logp).sum(), 1.0)
    np.testing.assert_allclose(logp[1] - logp[0], 1.5)
    assert Identity().apply((), (), x)[0] is x


def test_default_initialisers_are_he_normal_fan_in_and_zero_bias(x64):
    _, p, _ = Conv(256, 3).init(KEY, (5, 5, 64))
    fan_in = 3 * 3 * 64
    std = float(jnp.std(p["kernel"]))
    assert abs(std - math.sqrt(2 / fan_in)) < 0.03 * math.sqrt(2 / fan_in)
    # Truncated at two standard deviations of the underlying normal, std / 0.8796.
    assert float(jnp.abs(p["kernel"]).max()) <= 2 * math.sqrt(2 / fan_in) / 0.87962566 * (1 + 1e-6)
    assert not p["bias"].any() and p["kernel"].dtype == jnp.float32
    _, p, _ = Dense(300, kernel_init=jax.nn.initializers.ones, bias_init=jax.nn.initializers.ones).init(
        KEY, (4,)
    )
    assert p["kernel"].tolist() == [[1.0] * 300] * 4 and p["bias"].sum() == 300
    _, p, _ = Conv(2, 1, param_dtype=F64, bias=False).init(KEY, (2, 2, 3))
    assert p["kernel"].dtype == F64 and "bias" not in p


def test_residual_adds_the_shortcut(x64):
    body = Conv(2, 3, padding=1, param_dtype=F64)
    block = residual(body, shortcut=Conv(2, 1, param_dtype=F64))
    _, (pb, ps), _ = block.init(KEY, (4, 4, 3))
    x = rand((4, 4, 3))
    y, _ = jax.jit(block.apply)((pb, ps), ((), ()), x)
    ref = jax.jit(lambda x: body.apply(pb, (), x)[0] + ops.conv(x, ps["kernel"], ps["bias"]))(x)
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    identity = residual(Relu())
    assert identity.apply(((), ()), ((), ()), -x)[0].tolist() == (-x + jnp.maximum(-x, 0)).tolist()


def test_add_and_concat(x64):
    a, b = rand((2, 2, 3), 1), rand((2, 2, 3), 2)
    np.testing.assert_allclose(Add().apply((), (), (a, b, a))[0], 2 * a + b)
    y, _ = Concat().apply((), (), (a, b[..., :1]))
    assert y.shape == (2, 2, 4) and (y[..., 3] == b[..., 0]).all()
    assert Concat(axis=0).init(KEY, ((2, 2, 3), (5, 2, 3)))[0] == (7, 2, 3)


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_rate", [0.1, 0.5, 0.8])
def test_dropout_drops_at_the_rate_and_keeps_the_mean(drop_rate, x64):
    x = jnp.ones((100_000,), F64)
    y, _ = Dropout(drop_rate).apply((), (), x, key=jax.random.key(1), train=True)
    zeroed = float(jnp.mean(y == 0))
    # Binomial standard error at n = 1e5 is <= 0.0016; 5 sigma.
    assert abs(zeroed - drop_rate) < 0.008
    assert abs(float(y.mean()) - 1.0) < 0.04
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 1 / (1 - drop_rate)}


def test_dropout_is_identity_in_eval_and_masks_differ_per_example(x64):
    layer = Dropout(0.5)
    x = rand((3, 4))
    assert layer.apply((), (), x)[0] is x
    assert Dropout(0.0).apply((), (), x, key=KEY, train=True)[0] is x
    assert not Dropout(1.0).apply((), (), x, key=KEY, train=True)[0].any()
    y, _ = batched(layer).apply((), (), jnp.ones((8, 64)), key=KEY, train=True)
    assert len({tuple(row) for row in np.asarray(y == 0).tolist()}) == 8
    # On a batch, one mask is drawn for the whole batch from the key (documented): the same
    # numbers as the layer applied to the batch as if it were one example.
    whole, _ = layer.apply((), (), jnp.ones((8, 64)), key=KEY, train=True)
    assert (y == whole).all()
    per_example = jax.vmap(lambda x, k: layer.apply((), (), x, key=k, train=True)[0])(
        jnp.ones((8, 64)), jax.random.split(KEY, 8)
    )
    assert not (y == per_example).all()


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def test_batchnorm_updates_state_in_training_and_freezes_it_in_eval(x64):
    init, apply = batched(BatchNorm(momentum=0.25, param_dtype=F64))
    apply = jax.jit(apply, static_argnames="train")
    _, params, state = init(KEY, (6, 3, 3, 2))
    x = 2.0 + 3.0 * rand((6, 3, 3, 2))
    y, new = apply(params, state, x, train=True)
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    n = 6 * 3 * 3
    np.testing.assert_allclose(new.mean, 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(new.var, 0.75 + 0.25 * var * n / (n - 1), rtol=1e-12)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), var / (var + 1e-5), rtol=1e-10)
    y_eval, frozen = apply(params, new, x, train=False)
    assert (frozen.mean == new.mean).all() and (frozen.var == new.var).all()
    np.testing.assert_allclose(
        y_eval, (x - new.mean[None, None, None]) / jnp.sqrt(new.var[None, None, None] + 1e-5), rtol=1e-12
    )


def test_batchnorm_axis_none_on_a_whole_batch_equals_batched(x64):
    x = rand((5, 4, 3))
    _, params, state = BatchNorm(param_dtype=F64).init(KEY, (4, 3))
    y1, s1 = jax.jit(lambda p, s, x: batched(BatchNorm(param_dtype=F64)).apply(p, s, x, train=True))(
        params, state, x
    )
    y2, s2 = jax.jit(lambda p, s, x: BatchNorm(axis_name=None).apply(p, s, x, train=True))(params, state, x)
    np.testing.assert_allclose(y1, y2, rtol=1e-12)
    np.testing.assert_allclose(s1.var, s2.var, rtol=1e-12)


def test_batchnorm_matches_torch_batchnorm2d_in_float64(x64):
    torch = pytest.importorskip("torch")
    c = 3
    ref = torch.nn.BatchNorm2d(c, momentum=0.1, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([0.5, 1.5, -2.0], dtype=torch.float64))
        ref.bias.copy_(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
    init, apply = batched(BatchNorm(param_dtype=F64))
    apply = jax.jit(apply, static_argnames="train")
    _, _, state = init(KEY, (4, 5, 6, c))
    params = {"scale": jnp.array([0.5, 1.5, -2.0]), "bias": jnp.array([0.1, -0.2, 0.3])}
    ref.train()
    for step in range(2):
        x = 1.0 + 2.0 * np.asarray(rand((4, 5, 6, c), step))
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
        y, state = apply(params, state, jnp.asarray(x), train=True)
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state.mean, ref.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(state.var, ref.running_var.numpy(), rtol=1e-12)
    ref.eval()
    x = np.array(rand((2, 5, 6, c), 9))
    expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(apply(params, state, jnp.asarray(x))[0], expected, rtol=1e-10, atol=1e-12)
    assert isinstance(state, BatchNormState)


def test_layernorm_and_groupnorm_match_torch(x64):
    torch = pytest.importorskip("torch")
    x = np.asarray(rand((4, 5, 6), 3)) * 3 + 1
    # LayerNorm over channels (flax / ConvNeXt style) == torch.nn.LayerNorm(c) on NHWC.
    layer = LayerNorm(param_dtype=F64)
    _, p, _ = layer.init(KEY, x.shape)
    p = {"scale": p["scale"] + jnp.arange(6.0), "bias": p["bias"] - 1.0}
    ref = torch.nn.LayerNorm(6, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(np.array(p["scale"])))
        ref.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    y, _ = jax.jit(layer.apply)(p, (), jnp.asarray(x))
    np.testing.assert_allclose(y, ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)
    # LayerNorm over the whole example == torch.nn.LayerNorm([c, h, w]) without affine.
    whole = LayerNorm(axes=(0, 1, 2), scale=False, bias=False)
    ref = torch.nn.LayerNorm([6, 4, 5], elementwise_affine=False, dtype=torch.float64)
    expected = ref(torch.from_numpy(x.transpose(2, 0, 1))).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(jax.jit(whole.apply)((), (), jnp.asarray(x))[0], expected, rtol=1e-10)
    # GroupNorm(3 groups) == torch.nn.GroupNorm(3, 6) on NCHW.
    gn = GroupNorm(3, param_dtype=F64)
    _, p, _ = gn.init(KEY, x.shape)
    p = {"scale": p["scale"] * 2, "bias": p["bias"] + jnp.arange(6.0)}
    ref = torch.nn.GroupNorm(3, 6, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(np.array(p["scale"])))
        ref.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    expected = ref(torch.from_numpy(x.transpose(2, 0, 1)[None]))[0].detach().numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(jax.jit(gn.apply)(p, (), jnp.asarray(x))[0], expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Errors: every documented one, in the user's words
# --------------------------------------------------------------------------------------------

INIT_ERRORS = [
    (
        lambda: serial(Flatten(), Dense(8), Relu(), Conv(3, 3)),
        (4, 4, 1),
        ShapeError,
        r"^serial\[3\] Conv: .*2 spatial dim.*\(8,\)",
    ),
    (
        lambda: serial(Conv(2, 1), serial(Relu(), parallel(Identity(), Conv(3, (3,)))), Relu()),
        (4, 4, 1),
        ShapeError,
        r"^serial\[1\]\.serial\[1\]\.parallel\[1\] Conv: .*1 spatial dim.*\(4, 4, 2\)",
    ),
    (lambda: serial(Conv(2, 5)), (3, 3, 1), ShapeError, r"serial\[0\] Conv: the kernel of size 5 is larger"),
    (
        lambda: Conv(4, 3, strides=3, exact=True),
        (7, 7, 1),
        ShapeError,
        r"Conv: spatial dim 0.*\(7 - 3 \+ 2\*0\)/3 \+ 1 = 2\.33.*Fix: padding 1",
    ),
    (
        lambda: Conv(4, 1, strides=2, exact=True),
        (5, 5, 1),
        ShapeError,
        r"Conv: .*2 input pixel\(s\) fall between windows",
    ),
    (
        lambda: Conv(4, 3, groups=2),
        (5, 5, 3),
        ShapeError,
        r"Conv: input channels \(3, .*divisible by `groups` \(2\)",
    ),
    (lambda: Conv(4, 3), (2, 5, 5, 3), ShapeError, r"drop the batch dim"),
    (lambda: Conv(4, 3), (5, 5), ShapeError, r"trailing channel dim"),
    (lambda: MaxPool(4), (3, 3, 1), ShapeError, r"MaxPool: the window of size 4 is larger"),
    (lambda: GlobalAvgPool(), (5, 3), ShapeError, r"GlobalAvgPool: .*2 spatial dim.*\(5, 3\)"),
    (
        lambda: residual(Conv(4, 3)),
        (5, 5, 4),
        ShapeError,
        r"residual: the body's output shape \(3, 3, 4\) differs from the input's.*\(5, 5, 4\).*shortcut=",
    ),
    (
        lambda: serial(Relu(), residual(Conv(4, 1), shortcut=Conv(5, 1))),
        (5, 5, 4),
        ShapeError,
        r"^serial\[1\] residual: the body's output shape \(5, 5, 4\) differs from the shortcut's \(5, 5, 5\)",
    ),
    (
        lambda: serial(parallel(Conv(2, 1), Conv(2, 3)), Add()),
        (5, 5, 1),
        ShapeError,
        r"serial\[1\] Add: all inputs must have the same shape, got shapes \(5, 5, 2\), \(3, 3, 2\)",
    ),
    (
        lambda: serial(parallel(Conv(2, 1), Conv(2, 3)), Concat()),
        (5, 5, 1),
        ShapeError,
        r"Concat: inputs must agree on every axis but axis -1",
    ),
    (lambda: Add(), (5, 5, 1), ShapeError, r"Add: expects a tuple of inputs"),
    (lambda: Relu(), ((2,), (3,)), TypeError, r"Relu: `input_shape` must be one shape"),
    (
        lambda: GroupNorm(4),
        (3, 3, 6),
        ShapeError,
        r"GroupNorm: channels \(6, .*divisible by `num_groups` \(4\)",
    ),
    (lambda: LayerNorm(axes=3), (3, 3, 6), ShapeError, r"LayerNorm: `axes` 3 is out of range .*per example"),
    (lambda: Softmax(axis=2), (3, 6), ShapeError, r"Softmax: `axis` 2 is out of range"),
    (
        lambda: batched(Dense(2)),
        (),
        ShapeError,
        r"batched: `input_shape` must be \(batch, \*per_example_shape\)",
    ),
    (lambda: Dense(2), (0, 3), ShapeError, r"Dense: every dim of `input_shape` must be >= 1"),
]


@pytest.mark.parametrize("make,shape,exc,match", INIT_ERRORS)
def test_init_errors(make, shape, exc, match):
    with pytest.raises(exc, match=match):
        make().init(KEY, shape)


CONSTRUCTOR_ERRORS = [
    (lambda: serial(Relu, Dense(2)), TypeError, r"serial: argument 0 must be a Layer.*Write Relu\(\)"),
    (lambda: parallel(), ValueError, r"parallel: needs at least one layer"),
    (lambda: Conv(0, 3), ValueError, r"Conv: `out_channels` must be >= 1, got 0"),
    (lambda: Conv(4.0, 3), TypeError, r"Conv: `out_channels` must be an int"),
    (
        lambda: Conv(5, 3, groups=2),
        ShapeError,
        r"Conv: `out_channels` \(5\) must be divisible by `groups` \(2\)",
    ),
    (
        lambda: Conv(4, 3, padding="FULL"),
        ValueError,
        r"Conv: `padding` must be an int, a tuple of 2 ints.*'FULL'",
    ),
    (
        lambda: Conv(4, 3, strides=(1, 2, 3)),
        ShapeError,
        r"Conv: `strides` must be an int or a tuple of 2 ints",
    ),
    (lambda: Conv(4, 3, padding_mode="mirror"), ValueError, r"Conv: `padding_mode` must be one of"),
    (lambda: Conv(4, 3, impl="fft"), ValueError, r"Conv: `impl` must be one of .*'xla', 'direct', 'im2col'"),
    (lambda: Conv(4, 3, kernel_init="he"), TypeError, r"Conv: `kernel_init` must be an initializer"),
    (lambda: Conv(4, 3, bias=1), TypeError, r"Conv: `bias` must be True or False"),
    (
        lambda: ConvTranspose(4, 3, padding="SAME"),
        ValueError,
        r"ConvTranspose: `padding` must be .*PyTorch's numeric padding",
    ),
    (lambda: MaxPool(3, padding=2), ShapeError, r"MaxPool: padding must be at most half the window"),
    (
        lambda: AvgPool(2, divisor_override=0),
        ValueError,
        r"AvgPool: `divisor_override` must be nonzero \(or None\), got 0",
    ),
    (
        lambda: Dropout(1.5),
        ValueError,
        r"Dropout: `drop_rate` is the probability of dropping and must be in \[0, 1\]",
    ),
    (lambda: Dropout("0.5"), TypeError, r"Dropout: `drop_rate` must be a number"),
    (
        lambda: BatchNorm(momentum=0.9 + 1),
        ValueError,
        r"BatchNorm: `momentum` is the weight of the new batch statistic",
    ),
    (lambda: BatchNorm(eps=-1), ValueError, r"BatchNorm: `eps` must be a number >= 0"),
    (lambda: LayerNorm(axes=()), TypeError, r"LayerNorm: `axes` must be an int or a non-empty tuple"),
    (lambda: GroupNorm(0), ValueError, r"GroupNorm: `num_groups` must be >= 1"),
    (
        lambda: Dense(2, precision="fast"),
        ValueError,
        r"Dense: `precision` must be None, a jax.lax.Precision, one of",
    ),
    (lambda: batched(lambda x: x), TypeError, r"batched: expects a Layer"),
    (lambda: residual(Relu(), shortcut=Relu), TypeError, r"residual shortcut: argument 0 must be a Layer"),
    (lambda: Concat(axis=1.0), TypeError, r"Concat: `axis` must be an int"),
]


@pytest.mark.parametrize("make,exc,match", CONSTRUCTOR_ERRORS)
def test_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_apply_errors_name_the_layer_and_both_shapes():
    model = lenet()
    _, params, state = abstract_init(model, (28, 28, 1))
    with pytest.raises(
        ShapeError,
        match=r"^serial\[0\] Conv: input has 3 channels but the kernel expects 1 .*\(5, 5, 1, 20\).*\(28, 28, 3\)",
    ):
        jax.eval_shape(model.apply, params, state, jnp.ones((28, 28, 3)))
    with pytest.raises(
        ShapeError,
        match=r"^serial\[0\] Conv: `apply` expects one example .*got x of shape \(8, 28, 28, 1\)\. For a batch pass"
        r" `batch_ndim=1`.*batched",
    ):
        jax.eval_shape(model.apply, params, state, jnp.ones((8, 28, 28, 1)))
    # Wrong spatial size: the Dense after Flatten names both feature counts. Checked under jit too.
    with pytest.raises(
        ShapeError, match=r"^serial\[7\] Dense: input has 3200 features .* expects 2450 .*\(2450, 500\)"
    ):
        jax.jit(model.apply)(params, state, jnp.ones((32, 32, 1)))
    with pytest.raises(
        ValueError, match=r"serial: `params` must be a tuple with one entry per layer \(10\), got 3"
    ):
        jax.eval_shape(model.apply, params[:3], state, jnp.ones((28, 28, 1)))
    with pytest.raises(
        ShapeError, match=r"MaxPool: `apply` expects one example .*got x of shape \(2, 4, 4, 1\)"
    ):
        MaxPool(2).apply((), (), jnp.ones((2, 4, 4, 1)))
    with pytest.raises(ShapeError, match=r"BatchNorm: input has 4 channels .* initialised for 3"):
        BatchNorm().apply(*BatchNorm().init(KEY, (3,))[1:], jnp.ones(4))
    with pytest.raises(ShapeError, match=r"Add: expects a tuple of arrays"):
        Add().apply((), (), jnp.ones(3))
    with pytest.raises(ShapeError, match=r"Add: all inputs must have the same shape"):
        Add().apply((), (), (jnp.ones(3), jnp.ones(4)))
    with pytest.raises(ShapeError, match=r"batched: `x` must have a leading batch axis"):
        batched(Relu()).apply((), (), jnp.float32(1.0))


def test_dropout_and_batchnorm_training_errors():
    with pytest.raises(ValueError, match=r"Dropout: `train=True` needs a random `key`"):
        serial(Dense(2), Dropout(0.5)).apply(
            *serial(Dense(2), Dropout(0.5)).init(KEY, (3,))[1:], jnp.ones(3), train=True
        )
    bn = BatchNorm()
    _, p, s = bn.init(KEY, (4, 4, 3))
    with pytest.raises(
        ValueError,
        match=r"BatchNorm: `train=True` needs batch statistics across the vmapped axis 'batch'.*batched",
    ):
        bn.apply(p, s, jnp.ones((4, 4, 3)), train=True)
    with pytest.raises(ValueError, match=r"BatchNorm: training needs more than one value per channel, got 1"):
        batched(BatchNorm()).apply(p, s, jnp.ones((1, 3)), train=True)


# --------------------------------------------------------------------------------------------
# Per-example gradients and training
# --------------------------------------------------------------------------------------------


def _loss(model, params, state, x, label):
    logits, _ = model.apply(params, state, x)
    return -jax.nn.log_softmax(logits)[label]


def test_per_example_gradients_from_vmap_of_grad(x64):
    model = serial(Conv(3, 3, param_dtype=F64), Relu(), AvgPool(2), Flatten(), Dense(4, param_dtype=F64))
    _, params, state = model.init(KEY, (6, 6, 2))
    xs = rand((5, 6, 6, 2))
    labels = jnp.array([0, 1, 2, 3, 1])
    grad = jax.jit(jax.grad(lambda p, x, y: _loss(model, p, state, x, y)))
    per_example = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0)))(params, xs, labels)
    for i in range(5):
        single = grad(params, xs[i], labels[i])
        jax.tree_util.tree_map(
            lambda batch, one, i=i: np.testing.assert_allclose(batch[i], one, rtol=1e-10, atol=1e-14),
            per_example,
            single,
        )


def _bars(n, seed):
    """8x8 images: a horizontal bar (class 0) or a vertical bar (class 1) plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    pos = rng.integers(1, 7, n)
    x = 0.3 * rng.standard_normal((n, 8, 8, 1))
    for i in range(n):
        if labels[i] == 0:
            x[i, pos[i], 1:7, 0] += 1.0
        else:
            x[i, 1:7, pos[i], 0] += 1.0
    return jnp.asarray(x, jnp.float32), jnp.asarray(labels)


def test_short_optax_run_reduces_the_loss():
    model = serial(
        Conv(4, 3, padding=1),
        BatchNorm(),
        Relu(),
        MaxPool(2),
        Dropout(0.1),
        Flatten(),
        Dense(2),
        LogSoftmax(),
    )
    init, apply = batched(model)
    _, params, state = init(jax.random.key(1), (64, 8, 8, 1))
    x, y = _bars(64, 0)
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)

    def loss_fn(params, state, key, train):
        logp, state = apply(params, state, x, key=key, train=train)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), state

    @jax.jit
    def step(params, state, opt_state, key):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, key, True)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    evaluate = jax.jit(lambda params, state, x: apply(params, state, x)[0])
    eval_loss = jax.jit(lambda params, state: loss_fn(params, state, None, False)[0])
    first = eval_loss(params, state)
    key = jax.random.key(2)
    for _ in range(50):
        key, sub = jax.random.split(key)
        params, state, opt_state, loss = step(params, state, opt_state, sub)
    last = eval_loss(params, state)
    assert float(last) < 0.25 * float(first), (float(first), float(last))
    x_test, y_test = _bars(64, 1)
    logp = evaluate(params, state, x_test)
    assert float(jnp.mean(jnp.argmax(logp, -1) == y_test)) > 0.9
