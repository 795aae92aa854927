"""The engine: taps, gradients, early stop, ReLU rules, and batching without recompilation."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models
from conftest import SPEC, linen_variables, save

from reportgen import compute
from reportgen.model.engine import Engine, _needed_eqns
from reportgen.model.load import LoadedModel, load_model
from reportgen.model.maxpool import undilated, window_max
from reportgen.model.smallconv import conv_as_matmul, spans_input


@pytest.fixture(scope="module")
def model(linen_checkpoint: Path) -> LoadedModel:
    return load_model(f"{SPEC}:TinyLinen", linen_checkpoint)


def images(n: int, shape: tuple[int, ...] = (8, 8, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


def test_logits_equal_model_apply(model: LoadedModel) -> None:
    x = images(3)
    direct = tiny_models.TinyLinen().apply(linen_variables(), x)
    engine = Engine(model.graph)
    ours = np.stack([engine.logits(model.variables, xi) for xi in x])
    np.testing.assert_allclose(ours, direct, rtol=1e-5, atol=1e-5)


def test_captured_activations_equal_the_submodules(model: LoadedModel) -> None:
    v = linen_variables()
    x = images(1)
    p = v["params"]
    conv1 = nn.relu(nn.Conv(8, (3, 3)).apply({"params": p["conv1"]}, x))
    block = p["ResidualBlock_0"]
    conv = nn.Conv(8, (3, 3)).apply({"params": block["Conv_0"]}, conv1)
    bn_vars = {"params": block["BatchNorm_0"], "batch_stats": v["batch_stats"]["ResidualBlock_0"]["BatchNorm_0"]}
    bn = nn.relu(nn.BatchNorm(use_running_average=True).apply(bn_vars, conv))
    pooled = nn.max_pool(conv1 + bn, (2, 2), strides=(2, 2))
    names = ["conv1", "ResidualBlock_0/Conv_0", "ResidualBlock_0/BatchNorm_0", "max_pool_0"]
    outs = Engine(model.graph).layer_outputs(model.variables, x[0], names)
    for name, expected in zip(names, [conv1, conv, bn, pooled], strict=True):
        np.testing.assert_allclose(outs[name], expected[0], rtol=1e-5, atol=1e-5, err_msg=name)


def test_gradients_match_finite_differences(model: LoadedModel) -> None:
    engine = Engine(model.graph)
    x = jnp.asarray(images(1)[0])
    layer = "max_pool_0"
    var = model.graph.layer(layer).var

    def objective(logits: jax.Array, outs: dict) -> jax.Array:
        return logits[1] - 0.5 * logits[0]

    result = engine.gradients(model.variables, x, [layer], objective)
    grads, grad_x = result.layer_grads, result.image_grad
    from reportgen.model.engine import evaluate

    leaves = jax.tree.leaves(model.variables)
    shape = model.graph.flat.shapes[var]

    def f(delta: np.ndarray) -> float:
        (logits,) = evaluate(model.graph, leaves, x, [model.graph.flat.outputs[0]], {var: jnp.asarray(delta)})
        return float(logits[1] - 0.5 * logits[0])

    eps = 1e-2
    rng = np.random.default_rng(3)
    for _ in range(5):
        idx = tuple(rng.integers(0, s) for s in shape)
        bump = np.zeros(shape, np.float32)
        bump[idx] = eps
        numeric = (f(bump) - f(-bump)) / (2 * eps)
        assert grads[layer][idx[1:]] == pytest.approx(numeric, abs=2e-3)
    # Against jax.grad of the model's own apply, an independent path.
    direct = jax.grad(
        lambda xi: (lambda lg: lg[0, 1] - 0.5 * lg[0, 0])(tiny_models.TinyLinen().apply(linen_variables(), xi[None]))
    )(x)
    np.testing.assert_allclose(grad_x, direct, rtol=1e-4, atol=1e-5)


def test_early_stop_skips_later_layers(model: LoadedModel) -> None:
    flat = model.graph.flat
    needed = _needed_eqns(flat, [model.graph.layer("conv1").var])
    names = {flat.eqns[i].primitive.name for i in needed}
    assert "dot_general" not in names and "reduce_window_max" not in names
    assert len(needed) < len(flat.eqns) / 3


@pytest.fixture(scope="module")
def sign_split(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    variables = {
        "params": {
            "split": {"kernel": jnp.asarray([[[[1.0, -1.0]]]])},
            "out": {"kernel": jnp.asarray([[1.0], [-1.0]])},
        }
    }
    ckpt = save(tmp_path_factory.mktemp("split") / "ck", variables)
    return load_model(f"{SPEC}:SignSplit", ckpt)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # logit = mean(relu(x)) - mean(relu(-x)): d/dx = 1/4 wherever x != 0.
        ("standard", lambda x: np.full_like(x, 0.25)),
        # Guided: the relu(-x) branch receives gradient -1/4 < 0, which is zeroed.
        ("guided", lambda x: np.where(x > 0, 0.25, 0.0)),
        # Deconvnet: relu of the gradient, whatever the sign of x: only the +1/4 branch passes.
        ("deconvnet", lambda x: np.full_like(x, 0.25)),
    ],
)
def test_relu_backward_rules_by_hand(sign_split: LoadedModel, rule: str, expected) -> None:
    x = np.asarray([[[1.5], [-2.0]], [[0.5], [-0.25]]], np.float32)
    grad_x = (
        Engine(sign_split.graph)
        .gradients(sign_split.variables, jnp.asarray(x), [], lambda logits, _: logits[0], relu=rule)
        .image_grad
    )
    np.testing.assert_allclose(grad_x, expected(x), atol=1e-7)


def test_rules_on_the_negated_objective(sign_split: LoadedModel) -> None:
    # -logit: the relu(x) branch receives -1/4 and the relu(-x) branch +1/4.
    x = np.asarray([[[1.5], [-2.0]], [[0.5], [-0.25]]], np.float32)
    engine = Engine(sign_split.graph)
    grads = {
        rule: np.asarray(
            engine.gradients(sign_split.variables, jnp.asarray(x), [], lambda lg, _: -lg[0], relu=rule).image_grad
        )
        for rule in ("standard", "guided", "deconvnet")
    }
    np.testing.assert_allclose(grads["standard"], -0.25)
    # Guided keeps only the +1/4 at the relu(-x) units that were active (x < 0); through weight -1.
    np.testing.assert_allclose(grads["guided"], np.where(x < 0, -0.25, 0.0))
    # Deconvnet keeps the +1/4 everywhere, whatever the sign of x.
    np.testing.assert_allclose(grads["deconvnet"], -0.25)


def test_deconvnet_differs_from_the_gradient_where_a_unit_is_off(tmp_path: Path) -> None:
    # logit = mean(relu(x)) alone: the gradient is 1/4 where x > 0 and 0 where the unit is off;
    # deconvnet passes relu(1/4) back through every unit, whatever the sign of x.
    variables = {
        "params": {
            "split": {"kernel": jnp.asarray([[[[1.0, -1.0]]]])},
            "out": {"kernel": jnp.asarray([[1.0], [0.0]])},
        }
    }
    model = load_model(f"{SPEC}:SignSplit", save(tmp_path / "ck", variables))
    x = jnp.asarray([[[1.5], [-2.0]], [[0.5], [-0.25]]], jnp.float32)
    engine = Engine(model.graph)
    grads = {
        rule: np.asarray(engine.gradients(model.variables, x, [], lambda lg, _: lg[0], relu=rule).image_grad)
        for rule in ("standard", "deconvnet")
    }
    np.testing.assert_allclose(grads["standard"], np.where(x > 0, 0.25, 0.0))
    np.testing.assert_allclose(grads["deconvnet"], 0.25)


def test_composes_with_jit_vmap_and_grad(model: LoadedModel) -> None:
    engine = Engine(model.graph)

    def score(x: jax.Array) -> jax.Array:
        return engine.layer_outputs(model.variables, x, ["max_pool_0"])["max_pool_0"].sum()

    batched = jax.jit(jax.vmap(jax.grad(score)))(jnp.asarray(images(4)))
    looped = np.stack([jax.grad(score)(jnp.asarray(xi)) for xi in images(4)])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)


def test_chunk_size_does_not_change_results(model: LoadedModel) -> None:
    engine = Engine(model.graph)
    x = images(20)
    results = [compute.map_examples(engine.logits, (model.variables,), x, chunk=c) for c in (1, 7, 64)]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-6, atol=1e-6)


def test_new_data_of_the_same_shape_does_not_recompile(model: LoadedModel) -> None:
    engine = Engine(model.graph)
    compute.map_examples(engine.logits, (model.variables,), images(5, seed=1), chunk=8)
    compute.map_examples(engine.logits, (model.variables,), images(21, seed=2), chunk=8)
    assert compute._compiled(engine.logits, 1, 1).jitted._cache_size() == 1


CONVS = [
    # (input NHWC, kernel HWIO, strides, padding, kernel dilation, (lhs, rhs, out) layout)
    ((2, 2, 2, 5), (3, 3, 5, 4), (1, 1), "SAME", (1, 1), ("NHWC", "HWIO", "NHWC")),
    ((2, 4, 4, 3), (3, 3, 3, 4), (2, 2), "SAME", (1, 1), ("NHWC", "HWIO", "NHWC")),
    ((1, 2, 5, 3), (3, 2, 2, 3), (1, 2), ((2, 0), (1, 1)), (1, 2), ("NCHW", "OIHW", "NCHW")),
    ((2, 1, 1, 4), (3, 3, 4, 2), (1, 1), "SAME", (1, 1), ("NHWC", "HWIO", "NHWC")),
    ((1, 4, 4, 3), (4, 4, 3, 2), (1, 1), "VALID", (1, 1), ("NHWC", "HWIO", "NHWC")),
]


def conv_params(numbers: jax.lax.ConvDimensionNumbers, strides, padding, dilation) -> dict:
    """The parameters of a plain `conv_general_dilated` equation."""
    return {
        "window_strides": strides,
        "padding": tuple(padding),
        "lhs_dilation": (1, 1),
        "rhs_dilation": dilation,
        "dimension_numbers": numbers,
        "feature_group_count": 1,
        "batch_group_count": 1,
        "precision": jax.lax.Precision.HIGHEST,
        "preferred_element_type": None,
    }


@pytest.mark.parametrize(("lhs_shape", "rhs_shape", "strides", "padding", "dilation", "layout"), CONVS)
def test_wide_kernel_convolution_as_a_matrix_product(lhs_shape, rhs_shape, strides, padding, dilation, layout) -> None:
    rng = np.random.default_rng(0)
    lhs = jnp.asarray(rng.normal(size=lhs_shape).astype(np.float32))
    rhs = jnp.asarray(rng.normal(size=rhs_shape).astype(np.float32))
    numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, layout)
    spatial = [lhs.shape[d] for d in numbers.lhs_spec[2:]]
    window = [rhs.shape[d] for d in numbers.rhs_spec[2:]]
    pads = jax.lax.padtype_to_pads(spatial, window, strides, padding) if isinstance(padding, str) else padding
    params = conv_params(numbers, strides, pads, dilation)
    assert spans_input(params, lhs.shape, rhs.shape)

    def reference(a: jax.Array, b: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(a, b, **params)

    def ours(a: jax.Array, b: jax.Array) -> jax.Array:
        return conv_as_matmul(a, b, **params)

    np.testing.assert_allclose(ours(lhs, rhs), reference(lhs, rhs), rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=reference(lhs, rhs).shape).astype(np.float32))
    for got, want in zip(
        jax.vjp(ours, lhs, rhs)[1](cotangent), jax.vjp(reference, lhs, rhs)[1](cotangent), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ordinary_convolutions_stay_convolutions() -> None:
    numbers = jax.lax.conv_dimension_numbers((1, 8, 8, 3), (3, 3, 3, 4), ("NHWC", "HWIO", "NHWC"))
    params = conv_params(numbers, (1, 1), ((1, 1), (1, 1)), (1, 1))
    assert not spans_input(params, (1, 8, 8, 3), (3, 3, 3, 4))
    assert not spans_input({**params, "feature_group_count": 3}, (1, 2, 2, 3), (3, 3, 1, 3))
    assert spans_input(params, (1, 2, 2, 3), (3, 3, 3, 4))


def test_engine_on_maps_narrower_than_their_kernels(tmp_path: Path) -> None:
    module = tiny_models.ShrinkingNet()
    variables = tiny_models.init_linen(module, seed=3)
    model = load_model(f"{SPEC}:ShrinkingNet", save(tmp_path / "ckpt", variables))
    engine = Engine(model.graph)
    x = images(3)
    logits = jax.vmap(engine.logits, in_axes=(None, 0))(model.variables, x)
    np.testing.assert_allclose(logits, module.apply(variables, x), rtol=1e-5, atol=1e-5)
    ours = jax.grad(lambda xi: engine.logits(model.variables, xi)[1])(jnp.asarray(x[0]))
    direct = jax.grad(lambda xi: module.apply(variables, xi[None])[0, 1])(jnp.asarray(x[0]))
    np.testing.assert_allclose(ours, direct, rtol=1e-4, atol=1e-6)


POOLS = [
    # shape, window, strides, padding: tiling windows, a ResNet's overlapping 3x3 stride-2 "SAME"
    # pooling, windows that leave a row and a column unused, stride larger than the window, 1-D
    ((1, 4, 6, 3), (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4),
    ((2, 8, 8, 2), (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (0, 1), (0, 1), (0, 0))),
    ((2, 7, 7, 2), (1, 3, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4),
    ((1, 9, 9, 1), (1, 2, 2, 1), (1, 3, 3, 1), ((0, 0), (1, 1), (1, 0), (0, 0))),
    ((10,), (3,), (1,), ((1, 1),)),
]


@pytest.mark.parametrize(("shape", "window", "strides", "padding"), POOLS)
def test_window_max_equals_reduce_window_with_its_gradient(shape, window, strides, padding) -> None:
    rng = np.random.default_rng(1)
    # Rounded values make ties, where the gradient must go to the first maximum of the window;
    # integer cotangents make the sums over overlapping windows exact in any order.
    x = jnp.asarray(np.round(rng.normal(size=shape), 0).astype(np.float32))

    def reference(a: jax.Array) -> jax.Array:
        return jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, window, strides, padding)

    def ours(a: jax.Array) -> jax.Array:
        return window_max(a, window, strides, padding)

    np.testing.assert_array_equal(ours(x), reference(x))
    value, pullback = jax.vjp(ours, x)  # differentiated, the value comes from the running maximum
    np.testing.assert_array_equal(value, reference(x))
    cotangent = jnp.asarray(rng.integers(-4, 5, size=reference(x).shape).astype(np.float32))
    np.testing.assert_array_equal(pullback(cotangent)[0], jax.vjp(reference, x)[1](cotangent)[0])
    if window[0] == 1:  # per example under vmap, as the engine runs it
        inner = (window[1:], strides[1:], padding[1:])

        def per_example(pool):
            return jax.vmap(jax.grad(lambda a, c: (pool(a, *inner) * c).sum()))(x, cotangent)

        def reference_at(a, w, s, p):
            return jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, w, s, p)

        np.testing.assert_array_equal(per_example(window_max), per_example(reference_at))


def test_a_tie_sends_the_gradient_to_the_first_maximum() -> None:
    x = jnp.zeros((3, 3))
    grad = jax.grad(lambda a: window_max(a, (2, 2), (1, 1), ((0, 0), (0, 0))).sum())(x)
    # every window's first element in row-major order is its top-left one
    np.testing.assert_array_equal(grad, [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_only_dilated_pools_stay_reduce_window() -> None:
    plain = {"base_dilation": (1, 1, 1, 1), "window_dilation": (1, 1, 1, 1)}
    assert undilated(plain)
    assert not undilated({**plain, "window_dilation": (1, 2, 2, 1)})
    assert not undilated({**plain, "base_dilation": (1, 2, 2, 1)})
