"""Tests for the spec-derived layers: one record per layer, and everything derived from it.

The drift cases: ``replace`` really changes behaviour, the repr shows every non-default field,
a bad field is refused at construction, the run identity sees a changed per-layer field and a
resume is refused. Then `map_layers`, `spec_record`, int keys, `features` (ResNet-18's stages
as a feature pyramid), the zoo's declared ``input_shape`` and CONTRIBUTING.md's example.
"""

import dataclasses
import inspect
import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn import data, models, train
from jcnn import layers as L
from jcnn.layers import Layer, features, map_layers, serial, spec_record
from jcnn.shapes import ShapeError
from jcnn.summary import summary

KEY = jax.random.key(0)
REPO = Path(__file__).resolve().parents[1]


def rand(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


# Every built-in constructor, with arguments for its required fields.
CONSTRUCTORS = {
    "Conv": lambda: L.Conv(4, 3),
    "ConvTranspose": lambda: L.ConvTranspose(4, 3),
    "Dense": lambda: L.Dense(4),
    "Flatten": lambda: L.Flatten(),
    "MaxPool": lambda: L.MaxPool(2),
    "AvgPool": lambda: L.AvgPool(2),
    "GlobalAvgPool": lambda: L.GlobalAvgPool(),
    "GlobalMaxPool": lambda: L.GlobalMaxPool(),
    "AdaptiveAvgPool": lambda: L.AdaptiveAvgPool(2),
    "AdaptiveMaxPool": lambda: L.AdaptiveMaxPool(2),
    "Identity": lambda: L.Identity(),
    "Relu": lambda: L.Relu(),
    "Relu6": lambda: L.Relu6(),
    "Gelu": lambda: L.Gelu(),
    "Tanh": lambda: L.Tanh(),
    "Sigmoid": lambda: L.Sigmoid(),
    "LeakyRelu": lambda: L.LeakyRelu(),
    "LogSoftmax": lambda: L.LogSoftmax(),
    "Softmax": lambda: L.Softmax(),
    "Dropout": lambda: L.Dropout(0.5),
    "BatchNorm": lambda: L.BatchNorm(),
    "LayerNorm": lambda: L.LayerNorm(),
    "GroupNorm": lambda: L.GroupNorm(2),
    "Add": lambda: L.Add(),
    "Concat": lambda: L.Concat(),
    "serial": lambda: L.serial(L.Relu()),
    "parallel": lambda: L.parallel(L.Relu()),
    "residual": lambda: L.residual(L.Relu()),
    "batched": lambda: L.batched(L.Relu()),
    "features": lambda: L.features(L.serial(L.Relu()), ["serial[0]"]),
}


# --------------------------------------------------------------------------------------------
# One record per layer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_every_layer_is_derived_from_its_spec(name):
    layer = CONSTRUCTORS[name]()
    spec = layer.spec
    assert layer.name == spec.name == name
    assert (layer.init, layer.apply) == (spec.init, spec.apply)  # the spec's own methods
    assert (layer.info is None) != (layer.route is None)  # a leaf's info or a combinator's route
    assert Layer.of(spec) == layer and hash(Layer.of(spec)) == hash(layer)  # equal specs: equal layers
    # The record is complete and JSON-able: every field, and it survives a round trip.
    record = spec_record(layer)
    assert set(record) == {"layer"} | {f.name for f in dataclasses.fields(spec)}
    assert json.loads(json.dumps(record)) == record
    # A constructor generated from its spec takes exactly the spec's fields.
    constructor = getattr(L, name)
    if hasattr(constructor, "spec_class"):
        assert inspect.signature(constructor).parameters == inspect.signature(type(spec)).parameters


def test_replace_really_changes_behaviour():
    conv = L.Conv(4, 3, impl="direct")
    _, params, _ = conv.init(KEY, (6, 6, 2))
    x = rand((6, 6, 2))
    xla = conv.replace(impl="xla")
    assert xla.spec.impl == "xla" and conv.spec.impl == "direct"  # a new layer; the old one is kept
    direct_jaxpr = str(jax.make_jaxpr(conv.apply)(params, (), x))
    xla_jaxpr = str(jax.make_jaxpr(xla.apply)(params, (), x))
    assert "conv_general_dilated" in xla_jaxpr and "conv_general_dilated" not in direct_jaxpr
    np.testing.assert_allclose(
        xla.apply(params, (), x)[0], conv.apply(params, (), x)[0], rtol=1e-5, atol=1e-5
    )
    # Geometry fields too: init, apply and info all read the new value.
    strided = conv.replace(strides=2, padding=1)
    assert strided.init(KEY, (6, 6, 2))[0] == strided.info((6, 6, 2)).output_shape == (3, 3, 4)
    assert strided.apply(params, (), x)[0].shape == (3, 3, 4)
    # param_dtype reaches the params; precision reaches lax.
    bf16 = L.Dense(3).replace(param_dtype=jnp.bfloat16)
    assert bf16.init(KEY, (5,))[1]["kernel"].dtype == jnp.bfloat16
    highest = L.Dense(3, precision="highest")
    _, p, _ = highest.init(KEY, (5,))
    assert "precision=(Precision.HIGHEST, Precision.HIGHEST)" in str(
        jax.make_jaxpr(highest.apply)(p, (), rand((5,)))
    )


def test_repr_shows_every_non_default_field():
    def my_init(key, shape, dtype):
        return jnp.zeros(shape, dtype)

    conv = L.Conv(8, 3, precision="highest", param_dtype=jnp.bfloat16, kernel_init=my_init, impl="xla")
    assert (
        repr(conv)
        == "Conv(8, 3, kernel_init=my_init, param_dtype='bfloat16', precision='highest', impl='xla')"
    )
    assert repr(L.Conv(8, 3)) == "Conv(8, 3)"  # the defaults, canonical or not, are not shown
    assert repr(L.Conv(8, (3, 3), strides=(1, 1), padding=((0, 0), (0, 0)))) == "Conv(8, 3)"
    assert (
        repr(L.Conv(2, (3, 3, 3), strides=2, padding="same"))
        == "Conv(2, (3, 3, 3), strides=2, padding='SAME')"
    )
    assert repr(L.Conv(2, 3, padding=((1, 2), (1, 2)))) == "Conv(2, 3, padding=((1, 2), (1, 2)))"
    assert repr(L.ConvTranspose(2, 3, precision="high")) == "ConvTranspose(2, 3, precision='high')"
    assert repr(L.Dense(4, param_dtype="float64", bias_init=my_init)) == (
        "Dense(4, bias_init=my_init, param_dtype='float64')"
    )
    assert repr(L.MaxPool(2)) == "MaxPool(2)" and repr(L.MaxPool(2, 1)) == "MaxPool(2, strides=1)"
    assert repr(L.BatchNorm(param_dtype=jnp.bfloat16, momentum=0.01)) == (
        "BatchNorm(param_dtype='bfloat16', momentum=0.01)"
    )
    # The repr is the constructor call: evaluating it gives the same layer.
    for layer in [
        L.Conv(8, 3, precision="highest", param_dtype=jnp.bfloat16, strides=2, padding="same"),
        L.residual(L.serial(L.Conv(4, 3, padding=1), L.BatchNorm(eps=1e-3)), shortcut=L.Conv(4, 1)),
        L.parallel(L.MaxPool(3, 2, 1, ceil_mode=True), L.AvgPool(2, count_include_pad=False)),
        models.lenet(10, (8, 8, 1)),
    ]:
        assert eval(repr(layer), vars(L)) == dataclasses.replace(layer, input_shape=None)


BAD_FIELDS = [
    (
        lambda: L.Conv(8, 3, precision="bogus"),
        ValueError,
        r"^Conv: `precision` must be None, a jax.lax.Precision",
    ),
    (lambda: L.ConvTranspose(8, 3, precision="bogus"), ValueError, r"^ConvTranspose: `precision` must be"),
    (lambda: L.Dense(8, precision=3), ValueError, r"^Dense: `precision` must be"),
    (lambda: L.Conv(8, 3, param_dtype="bogus"), TypeError, r"^Conv: `param_dtype` must be a floating-point"),
    (lambda: L.ConvTranspose(8, 3, param_dtype=jnp.int32), TypeError, r"^ConvTranspose: `param_dtype`"),
    (lambda: L.Dense(8, param_dtype=int), TypeError, r"^Dense: `param_dtype` must be a floating-point"),
    (lambda: L.BatchNorm(param_dtype="int8"), TypeError, r"^BatchNorm: `param_dtype`"),
    (lambda: L.LayerNorm(param_dtype="x"), TypeError, r"^LayerNorm: `param_dtype`"),
    (lambda: L.GroupNorm(2, param_dtype=None), TypeError, r"^GroupNorm: `param_dtype`"),
    (lambda: L.Conv(8, 3, kernel_init=3), TypeError, r"^Conv: `kernel_init` must be an initializer"),
    (lambda: L.ConvTranspose(8, 3, bias_init="zeros"), TypeError, r"^ConvTranspose: `bias_init` must be an"),
    (lambda: L.Dense(8, kernel_init=[1]), TypeError, r"^Dense: `kernel_init` must be an initializer"),
    (lambda: L.BatchNorm(scale_init=1.0), TypeError, r"^BatchNorm: `scale_init` must be an initializer"),
    (lambda: L.LayerNorm(bias_init=0), TypeError, r"^LayerNorm: `bias_init` must be an initializer"),
    (
        lambda: L.GroupNorm(2, scale_init="ones"),
        TypeError,
        r"^GroupNorm: `scale_init` must be an initializer",
    ),
    (lambda: L.Conv(8, 3, impl="cudnn"), ValueError, r"^Conv: `impl` must be one of"),
    (lambda: L.Conv(8, 3).replace(precision="bogus"), ValueError, r"^Conv: `precision` must be"),
    (lambda: L.Conv(8, 3).replace(stride=2), TypeError, r"^Conv.replace: `stride` is not a field of Conv"),
    (
        lambda: L.Relu().replace(slope=2),
        TypeError,
        r"^Relu.replace: `slope` is not a field of Relu; its fields are none",
    ),
    (
        lambda: L.serial(L.Relu()).replace(layers=(L.Relu, 1)),
        TypeError,
        r"^serial: argument 0 must be a Layer",
    ),
]


@pytest.mark.parametrize("make,exc,match", BAD_FIELDS)
def test_bad_fields_are_refused_at_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_spec_record_sees_every_field():
    model = serial(L.Conv(4, 3), L.Relu(), L.Flatten(), L.Dense(2))
    record = spec_record(model)
    conv = record["layers"][0]
    assert conv["layer"] == "Conv" and conv["kernel_size"] == [3, 3] and conv["precision"] is None
    assert conv["kernel_init"] == "jcnn.initializers.default_kernel_init"
    assert record["layers"][1] == {"layer": "Relu"}
    for change in [dict(precision="highest"), dict(param_dtype="bfloat16"), dict(impl="xla")]:
        changed = map_layers(
            model, lambda layer, c=change: layer.replace(**c) if layer.name == "Conv" else layer
        )
        assert (
            spec_record(changed) != record
            and json.loads(json.dumps(spec_record(changed)))["layers"][1:] == (record["layers"][1:])
        )
    assert spec_record(changed)["layers"][0]["impl"] == "xla"
    assert spec_record(L.Dense(2, precision="highest"))["precision"] == "highest"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    ds = data.load_digits()
    ds = ds._replace(
        train=data.Split(ds.train.images[:128], ds.train.labels[:128]),
        test=data.Split(ds.test.images[:64], ds.test.labels[:64]),
    )
    model = serial(L.Flatten(), L.Dense(16), L.Relu(), L.Dense(10))
    out = tmp_path_factory.mktemp("run")
    train.fit(model, optax.sgd(0.1), ds, epochs=1, batch_size=64, out_dir=out, progress=False)
    return model, ds, out


@pytest.mark.parametrize("change", [dict(precision="highest"), dict(param_dtype="bfloat16")])
def test_a_resume_with_a_changed_layer_field_is_refused(finished_run, change):
    model, ds, out = finished_run
    changed = map_layers(model, lambda layer: layer.replace(**change) if layer.name == "Dense" else layer)
    assert repr(changed) != repr(model)
    with pytest.raises(train.RunMismatchError, match=r"written by a different run: `model`") as info:
        train.fit(
            changed, optax.sgd(0.1), ds, epochs=1, batch_size=64, out_dir=out, resume=True, progress=False
        )
    saved, now = info.value.differences["model"]
    assert saved == spec_record(model) and now == spec_record(changed)
    # The message names the first changed leaf of the nested model record, not a truncated repr.
    ((field, value),) = change.items()
    was = saved["layers"][1][field]
    assert f"`model` at layers[1].{field} {was!r} (now {value!r})" in str(info.value), str(info.value)


# --------------------------------------------------------------------------------------------
# map_layers
# --------------------------------------------------------------------------------------------


def test_map_layers_rebuilds_every_combinator_bottom_up():
    model = models.resnet20(10, (16, 16, 3))
    seen = []

    def to_xla(layer):
        seen.append(layer.name)
        return layer.replace(impl="xla") if layer.name == "Conv" else layer

    mapped = map_layers(model, to_xla)
    convs = [layer for layer in _leaves(mapped) if layer.name == "Conv"]
    assert len(convs) == 19 and all(c.spec.impl == "xla" for c in convs)
    assert seen[-1] == "serial" and seen.count("Conv") == 19  # the model last, every conv once
    assert mapped.input_shape == (16, 16, 3) == model.input_shape  # kept
    # Layers fn leaves alone stay the very same objects; every conv now traces XLA's conv.
    assert mapped.spec.layers[-1] is model.spec.layers[-1]
    params, state = jax.eval_shape(lambda k: model.init(k, (16, 16, 3))[1:], KEY)
    x = jax.ShapeDtypeStruct((16, 16, 3), jnp.float32)
    assert str(jax.make_jaxpr(mapped.apply)(params, state, x)).count("conv_general_dilated") == 19
    assert map_layers(model, lambda layer: layer) == model
    with pytest.raises(TypeError, match=r"map_layers: `fn` must return a Layer, got None"):
        map_layers(model, lambda layer: None)


def _leaves(layer):
    if layer.route is None:
        return [layer]
    return [leaf for _, child in layer.children for leaf in _leaves(child)]


def test_map_layers_refuses_to_change_a_child_of_a_hand_written_combinator():
    inner = L.Conv(2, 3)

    def init(key, input_shape):
        return L.init_child("wrap", inner, key, input_shape)

    def apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        return L.apply_child("wrap", inner, params, state, x, key=key, train=train, batch_ndim=batch_ndim)

    wrapper = Layer(init, apply, name="Wrap", route=lambda flow, visit: visit("wrap", inner, flow))
    assert map_layers(serial(wrapper), lambda layer: layer).spec.layers[0] is wrapper
    with pytest.raises(TypeError, match=r"Wrap is a hand-written combinator .* its child wrap changed"):
        map_layers(
            serial(wrapper), lambda layer: layer.replace(impl="xla") if layer.name == "Conv" else layer
        )


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def test_int_keys_are_seeds_in_every_layer_that_uses_its_key():
    x = jnp.ones((4, 6))
    drop = L.Dropout(0.5)
    y0 = drop.apply((), (), x, key=0, train=True)[0]
    assert (y0 == drop.apply((), (), x, key=jax.random.key(0), train=True)[0]).all()
    model = serial(L.Dense(6), L.Dropout(0.5), L.residual(L.Dropout(0.5)), L.parallel(L.Dropout(0.3)))
    _, params, state = model.init(0, (6,))  # init takes a seed too
    ys = [
        model.apply(params, state, x, key=k, train=True, batch_ndim=1)[0][0] for k in (3, jax.random.key(3))
    ]
    assert (ys[0] == ys[1]).all()
    per_example = Layer.per_example(
        lambda k, s: (s, (), ()), lambda p, s, x, *, key=None, train=False: (x, s)
    )
    assert per_example.apply((), (), x, key=1, batch_ndim=1)[0].shape == (4, 6)
    for bad in ["0", 1.5, True]:
        with pytest.raises(
            TypeError, match=r"^Dropout: `key` must be a PRNG key \(jax.random.key\(0\)\) or an int"
        ):
            drop.apply((), (), x, key=bad, train=True)
    with pytest.raises(TypeError, match=r"^serial: `key` must be a PRNG key"):
        model.apply(params, state, x, key="k", train=True, batch_ndim=1)


# --------------------------------------------------------------------------------------------
# Intermediate features
# --------------------------------------------------------------------------------------------

STAGES = ["serial[5]", "serial[7]", "serial[9]", "serial[11]"]


def test_resnet18_stages_as_a_feature_pyramid():
    net = models.resnet18(10, (32, 32, 3))
    pyramid = features(net, STAGES, with_output=True)
    shapes, params, state = pyramid.init(KEY, (32, 32, 3))
    assert shapes == ((8, 8, 64), (4, 4, 128), (2, 2, 256), (1, 1, 512), (10,))
    _, net_params, net_state = net.init(KEY, (32, 32, 3))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(net_params)
    xs = rand((2, 32, 32, 3))
    layers = net.spec.layers

    def by_prefixes(params, state, xs):
        # The same features, by running each prefix of the serial (chained: prefix k = the last
        # prefix followed by the next layers).
        out, y, start = [], xs, 0
        for stage in (5, 7, 9, 11, 13):
            part = serial(*layers[start : stage + 1])
            y, _ = part.apply(params[start : stage + 1], state[start : stage + 1], y, batch_ndim=1)
            out.append(y)
            start = stage + 1
        return tuple(out)

    both = jax.jit(lambda p, s, x: (pyramid.apply(p, s, x, batch_ndim=1), by_prefixes(p, s, x)))
    (got, new_state), want = both(params, state, xs)
    assert [g.shape for g in got] == [(2, *s) for s in shapes]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    # The summary shows the backbone's rows under `features.`, and the pyramid as its output.
    table = summary(features(net, STAGES), (32, 32, 3))
    assert table.rows[0]["path"] == "features.serial[0]" and table.totals["output_shape"] == shapes[:4]
    assert table.totals["params"] == summary(net, (32, 32, 3)).totals["params"]  # the model's params


def test_features_are_differentiable_and_nest_in_a_model():
    net = models.lenet(10, (8, 8, 1))
    backbone = features(net, ["serial[2]", "serial[5]"])

    # A head on the pyramid, taking both maps.
    def head_init(key, input_shape):
        return (sum(math.prod(s) for s in input_shape),), (), ()

    def head_apply(params, state, x, *, key=None, train=False, batch_ndim=0):
        a, b = (f.reshape(f.shape[:batch_ndim] + (-1,)) for f in x)
        return jnp.concatenate([a**2, b], axis=-1), state

    model = serial(backbone, Layer(head_init, head_apply, name="Head"))
    out, params, state = model.init(KEY, (8, 8, 1))
    assert out == (4 * 4 * 20 + 2 * 2 * 50,)

    def loss(params, x):
        return model.apply(params, state, x, batch_ndim=1)[0].sum()

    grads = jax.jit(jax.grad(loss))(params, rand((3, 8, 8, 1)))
    conv_grads = grads[0][0]  # the backbone's first conv: reached through both features
    assert conv_grads["kernel"].shape == (5, 5, 1, 20) and bool(jnp.abs(conv_grads["kernel"]).sum() > 0)
    dense_grads = grads[0][7]  # after the last feature: no gradient reaches it
    assert float(jnp.abs(dense_grads["kernel"]).sum()) == 0.0
    assert "serial[0].features.serial[5]" in [row["path"] for row in summary(model, (8, 8, 1)).rows]


def test_features_paths_are_checked_at_construction():
    net = models.lenet(10, (8, 8, 1))
    with pytest.raises(
        ValueError,
        match=r"^features: the model has no layer at path 'serial\[99\]'; its paths .* are serial\[0\], serial\[1\]",
    ):
        features(net, ["serial[99]"])
    with pytest.raises(ValueError, match=r"names a path twice"):
        features(net, ["serial[1]", "serial[1]"])
    with pytest.raises(ValueError, match=r"at least one"):
        features(net, [])
    assert features(net, "serial[1]").spec.paths == ("serial[1]",)
    # Paths inside combinators, as the summary names them.
    block = serial(L.residual(L.serial(L.Conv(2, 3, padding=1), L.Relu())))
    inner = features(block, ["serial[0].residual.body.serial[0]", "serial[0].residual.add"])
    shapes, params, state = inner.init(KEY, (5, 5, 2))
    assert shapes == ((5, 5, 2), (5, 5, 2))
    (conv_out, added), _ = inner.apply(params, state, rand((5, 5, 2)))
    assert conv_out.shape == added.shape == (5, 5, 2)


# --------------------------------------------------------------------------------------------
# The zoo's declared input shape; advice that works
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet", "mlp", "allconv", "small_vgg", "resnet20", "mobilenet_v2"])
def test_zoo_models_remember_their_input_shape(name):
    model = models.MODELS[name](10, (32, 32, 3))
    assert model.input_shape == (32, 32, 3)
    assert L.Conv(2, 3).input_shape is None and L.serial(L.Relu()).input_shape is None
    assert model.replace(layers=model.spec.layers).input_shape == (32, 32, 3)


def test_summary_of_a_batch_shape_gives_advice_that_works():
    model = models.lenet(10, (28, 28, 1))
    with pytest.raises(ShapeError, match=r"drop the batch dim, i.e. input shape \(28, 28, 1\)\.") as info:
        summary(model, (4, 28, 28, 1))
    message = str(info.value).splitlines()[0]  # (jax appends a note on its filtered traceback)
    assert "batched" not in message
    shape = tuple(int(s) for s in re.search(r"input shape \(([\d, ]+)\)\.$", message).group(1).split(","))
    assert summary(model, shape).totals["params"] == 1_256_080


def test_zoo_resnet_summaries_warn_only_where_input_goes_unread():
    for net, shape in [(models.resnet18(10, (64, 64, 3)), (64, 64, 3)), (models.resnet20(), (32, 32, 3))]:
        assert [r["path"] for r in summary(net, shape).rows if r["warning"]] == []
    # A 3x3 stride-2 conv without padding does leave the last row unread: that is warned about.
    row = summary(L.Conv(2, 3, strides=2), (8, 8, 1)).rows[0]
    assert "the last 1 input pixel(s) are never read" in row["warning"]


# --------------------------------------------------------------------------------------------
# How to add a layer: CONTRIBUTING.md's example runs
# --------------------------------------------------------------------------------------------


def test_contributing_example_runs():
    text = (REPO / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "CONTRIBUTING.md has no python example"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"CONTRIBUTING.md python block {i}", "exec"), namespace)
    scale = namespace["Scale"](2.0)  # the example's layer: spec-derived like the built-in ones
    assert isinstance(scale, Layer) and repr(scale) == "Scale(init_value=2.0)"
