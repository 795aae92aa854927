"""Attribution methods against hand computations and invariants, and the sanity check."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models
from conftest import ROOT, SPEC, save

from reportgen import api
from reportgen.analyses import cam, catalogue, methods, saliency
from reportgen.attribution import cascade_similarity
from reportgen.compute import map_examples
from reportgen.model.engine import Engine
from reportgen.model.load import LoadedModel


def rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, np.ndarray, np.ndarray]:
    """The linear model, and its effective weights W (6, 6, 3, K) and bias computed by hand."""
    variables = tiny_models.init_linen(tiny_models.LinearConv(), seed=3)
    p = jax.tree.map(np.asarray, variables["params"])
    conv = p["mix"]["kernel"][0, 0]  # (3, 2)
    dense = p["out"]["kernel"].reshape(6, 6, 2, 3)  # flatten order is (h, w, f)
    weights = np.einsum("cf,hwfk->hwck", conv, dense)
    ckpt = save(tmp_path_factory.mktemp("linear") / "ck", variables)
    return api.load_model(f"{SPEC}:LinearConv", ckpt), weights, p


def test_saliency_of_a_linear_model_is_its_weights(linear) -> None:
    model, weights, _ = linear
    x = rand((4, 6, 6, 3))
    targets = np.array([0, 1, 2, 1])
    got = api.saliency(model, x, targets)
    np.testing.assert_allclose(got, np.moveaxis(weights[..., targets], -1, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(api.gradient_x_input(model, x, targets), got * x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["riemann", "trapezoid", "gauss-legendre"])
def test_integrated_gradients_of_a_linear_model_is_exact(linear, rule: str) -> None:
    model, weights, _ = linear
    x = rand((3, 6, 6, 3), seed=1)
    start = rand((6, 6, 3), seed=2)
    targets = np.array([2, 0, 1])
    got = api.integrated_gradients(model, x, targets, steps=5, baseline=start, rule=rule)
    expected = (x - start) * np.moveaxis(weights[..., targets], -1, 0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_smoothgrad_without_noise_is_saliency(linear) -> None:
    model, _, _ = linear
    x = rand((2, 6, 6, 3))
    np.testing.assert_allclose(api.smoothgrad(model, x, noise=0.0, samples=4), api.saliency(model, x), rtol=1e-6)


def test_occlusion_of_an_ignored_region_changes_nothing(tmp_path: Path) -> None:
    variables = tiny_models.init_linen(tiny_models.LinearConv(), seed=4)
    dense = np.array(variables["params"]["out"]["kernel"]).reshape(6, 6, 2, 3)
    dense[:, 3:] = 0.0  # the model ignores the right half of the image
    variables["params"]["out"]["kernel"] = jnp.asarray(dense.reshape(72, 3))
    model = api.load_model(f"{SPEC}:LinearConv", save(tmp_path / "ck", variables))
    heat = api.occlusion(model, rand((2, 6, 6, 3), seed=5), window=3, stride=3)
    assert heat.shape == (2, 6, 6)
    np.testing.assert_array_equal(heat[:, :, 3:], 0.0)
    assert np.abs(heat[:, :, :3]).max() > 0


@pytest.fixture(scope="module")
def conv_gap(tmp_path_factory: pytest.TempPathFactory):
    variables = tiny_models.init_linen(tiny_models.ConvGap(), seed=6)
    ckpt = save(tmp_path_factory.mktemp("gap") / "ck", variables)
    return api.load_model(f"{SPEC}:ConvGap", ckpt), jax.tree.map(np.asarray, variables["params"])


def test_cams_on_conv_gap_dense_match_their_closed_forms(conv_gap) -> None:
    model, p = conv_gap
    x = rand((3, 6, 6, 3), seed=7)
    targets = np.array([0, 2, 1])
    acts = np.asarray(nn.relu(nn.Conv(4, (3, 3)).apply({"params": p["conv"]}, x)))  # (N, 6, 6, 4)
    v = p["out"]["kernel"]  # (4, 3)
    # d logit_k / d A_ijf = v[f, k] / 36 at every position.
    g = v[:, targets].T / 36.0  # (N, 4)
    expected_grad_cam = np.maximum(np.einsum("nhwf,nf->nhw", acts, g), 0)
    np.testing.assert_allclose(api.grad_cam(model, x, targets, layer="conv"), expected_grad_cam, rtol=1e-4, atol=1e-6)
    s = acts.sum(axis=(1, 2))  # Σ_ab A_ab per channel
    alpha = g**2 / np.where(2 * g**2 + s * g**3 != 0, 2 * g**2 + s * g**3, 1)
    w_pp = 36 * alpha * np.maximum(g, 0)
    expected_pp = np.maximum(np.einsum("nhwf,nf->nhw", acts, w_pp), 0)
    np.testing.assert_allclose(api.grad_cam_pp(model, x, targets, layer="conv"), expected_pp, rtol=1e-4, atol=1e-6)
    expected_layer = np.maximum(np.einsum("nhwf,nf->nhw", acts, np.maximum(g, 0)), 0)
    np.testing.assert_allclose(api.layer_cam(model, x, targets, layer="conv"), expected_layer, rtol=1e-4, atol=1e-6)
    up = api.grad_cam(model, x, targets, layer="conv", upsample=True)
    assert up.shape == (3, 6, 6)
    score = api.score_cam(model, x, targets, layer="conv")
    assert score.shape == (3, 6, 6) and (score >= 0).all()


def test_chunk_size_does_not_change_attributions(conv_gap) -> None:
    model, _ = conv_gap
    x = rand((9, 6, 6, 3), seed=8)
    results = [api.integrated_gradients(model, x, steps=8, chunk=c) for c in (1, 7, 64)]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-6)
    results = [api.smoothgrad(model, x, samples=4, chunk=c) for c in (1, 7, 64)]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_integrated_gradients_completeness_on_the_demo_model() -> None:
    from reportgen.data import read_classes, read_probe

    demo = ROOT / "models" / "traffic_signs"
    model = api.load_model(f"{demo / 'model.py'}:TrafficSignNet", demo / "checkpoint")
    probe = read_probe(demo / "probe", model.input_shape, read_classes(demo / "classes.txt", 43))
    x = probe.images[::20][:6]
    attributions = api.integrated_gradients(model, x, steps=64, baseline="black", rule="riemann")
    logits = api.predict(model, x)
    base = api.predict(model, np.zeros_like(x))
    target = logits.argmax(1)
    rows = np.arange(len(x))
    difference = logits[rows, target] - base[rows, target]
    total = attributions.reshape(len(x), -1).sum(1)
    np.testing.assert_array_less(np.abs(total - difference), 0.01 * np.abs(difference))


def test_sanity_check_flags_a_method_that_ignores_the_weights(linear) -> None:
    model, _, _ = linear
    engine = Engine(model.graph)

    def edge_detector(image: jax.Array) -> jax.Array:
        gray = image.mean(axis=-1)
        return jnp.abs(jnp.diff(gray, axis=0, append=gray[-1:])) + jnp.abs(jnp.diff(gray, axis=1, append=gray[:, -1:]))

    def maps_fn(variables, image):
        grad = methods.importance("saliency", saliency.saliency(engine, variables, image, jnp.int32(0)))
        return jnp.stack([edge_detector(image), grad])

    x = rand((3, 6, 6, 3), seed=9)

    def maps_of(variables):
        return map_examples(maps_fn, (variables,), x, chunk=4)

    top_down = [layer.param_paths for layer in reversed(model.graph.layers) if layer.param_paths]
    scores, structure = cascade_similarity(maps_of, model.variables, top_down, maps_of(model.variables), seed=0)
    assert scores[0].tolist() == pytest.approx([1.0] * len(top_down))
    assert structure[0].tolist() == pytest.approx([1.0] * len(top_down))
    assert abs(scores[1][-1]) < 0.5
    assert structure[1][-1] < 0.5


def test_the_head_stage_is_where_the_last_convolution_is_randomised() -> None:
    import dataclasses as dc

    from reportgen.attribution import head_stage, sanity_groups
    from reportgen.config import Settings
    from reportgen.model.graph import Layer

    def layer(name: str) -> Layer:
        return Layer(name, "conv" if name.startswith("conv") else "dense", (4,), 1, 1, None, None, 0)

    top_down = [layer(n) for n in ("logits", "fc1", "conv3", "conv2", "conv1")]
    settings = Settings(model="m", checkpoint="c")
    one_each = sanity_groups(top_down, settings)
    assert head_stage(one_each, "conv3") == 2  # logits, fc1, then conv3
    pairs = sanity_groups(top_down, dc.replace(settings, attribution=dc.replace(settings.attribution, sanity_stages=2)))
    assert [[x.name for x in g] for g in pairs] == [["logits", "fc1"], ["conv3", "conv2", "conv1"]]
    assert head_stage(pairs, "conv3") == 1


def test_a_method_that_survives_randomising_the_head_is_flagged_even_if_it_decays_later() -> None:
    from conftest import attribution_result, one_image_probe

    from reportgen import collect, findings

    sanity = np.zeros((len(catalogue.METHODS), 4))
    guided = catalogue.METHODS.index("guided_backprop")
    sanity[guided] = [0.99, 0.97, 0.93, 0.1]  # survives logits, fc1 and conv3, decays at the bottom
    result = attribution_result(sanity=sanity)
    probe = one_image_probe()
    summary = collect.attribution_result(result, probe, ["a"], threshold=0.5, class_threshold=0.9)
    flagged = {s.name: s for s in summary.methods if s.flagged}
    assert set(flagged) == {"guided_backprop"}
    assert flagged["guided_backprop"].sanity_head == pytest.approx(0.93)
    (finding,) = findings.attribution_findings(summary)
    assert "from the output down to conv3 are randomised (Spearman 0.93, 0.10 with every layer" in finding.message
    assert "stays above 0.5 through 3 of 4 stages, down to conv3" in finding.message


def test_hires_cam_of_a_flattening_head_is_each_positions_share_of_the_logit(tmp_path: Path) -> None:
    variables = tiny_models.init_linen(tiny_models.LinearConv(), seed=9)
    model = api.load_model(f"{SPEC}:LinearConv", save(tmp_path / "ck", variables))
    p = jax.tree.map(np.asarray, variables["params"])
    x = rand((3, 6, 6, 3), seed=10)
    targets = np.array([0, 2, 1])
    acts = np.einsum("nhwc,cf->nhwf", x, p["mix"]["kernel"][0, 0]) + p["mix"]["bias"]  # (N, 6, 6, 2)
    v = p["out"]["kernel"].reshape(6, 6, 2, 3)[..., targets].transpose(3, 0, 1, 2)  # d logit / d A, (N, 6, 6, 2)
    share = (acts * v).sum(axis=-1)  # what each position adds to the target logit
    np.testing.assert_allclose(
        api.hires_cam(model, x, targets, layer="mix"), np.maximum(share, 0), rtol=1e-4, atol=1e-6
    )
    logits = api.predict(model, x)[np.arange(3), targets]
    np.testing.assert_allclose(share.sum(axis=(1, 2)) + p["out"]["bias"][targets], logits, rtol=1e-4, atol=1e-5)
    # Grad-CAM averages the gradient over positions first, so it is a different map here.
    assert not np.allclose(api.grad_cam(model, x, targets, layer="mix"), np.maximum(share, 0), atol=1e-3)


def eigen_reference(activation: np.ndarray) -> np.ndarray:
    """EigenCAM by hand: the top eigenvector of the positions' covariance, signed to rise with the
    total activation, negative values cut."""
    h, w, c = activation.shape
    matrix = activation.reshape(h * w, c).astype(np.float64)
    centred = matrix - matrix.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    projection = centred @ vectors[:, -1]
    total = matrix.sum(axis=1)
    if projection @ (total - total.mean()) < 0:
        projection = -projection
    return np.maximum(projection, 0).reshape(h, w)


def test_eigen_cam_is_the_first_principal_component_over_positions(conv_gap) -> None:
    model, p = conv_gap
    x = rand((2, 6, 6, 3), seed=11)
    acts = np.asarray(nn.relu(nn.Conv(4, (3, 3)).apply({"params": p["conv"]}, x)))
    got = api.eigen_cam(model, x, layer="conv")
    for n in range(2):
        np.testing.assert_allclose(got[n], eigen_reference(acts[n]), rtol=1e-3, atol=1e-4)
    # Whatever sign the decomposition returns, the map follows the activation.
    for seed in range(8):
        activation = rand((5, 4, 6), seed=20 + seed) ** 3
        np.testing.assert_allclose(cam.eigen_cam(activation, activation), eigen_reference(activation), atol=1e-4)
    # Few positions and many channels: iterated on the positions rather than the covariance.
    wide = rand((2, 2, 40), seed=29) ** 3
    np.testing.assert_allclose(cam.eigen_cam(wide, wide), eigen_reference(wide), atol=1e-4)
    # Two channels in contrast: the component is orthogonal to the all-ones direction.
    pattern = rand((5, 4, 1), seed=30)
    contrast = np.concatenate([pattern, 1.0 - pattern, np.full_like(pattern, 0.5)], axis=-1)
    np.testing.assert_allclose(cam.eigen_cam(contrast, contrast), eigen_reference(contrast), atol=1e-4)
    # Class-agnostic: the same map whatever class is explained.
    both = api.attribute(model, x, [0, 1], methods=["eigen_cam"], cam_layer="conv")["layer_cams"]["conv"]["eigen_cam"]
    other = api.attribute(model, x, [2, 2], methods=["eigen_cam"], cam_layer="conv")["layer_cams"]["conv"]["eigen_cam"]
    np.testing.assert_array_equal(both, other)


def test_layer_cam_methods_restrict_the_cams_of_the_extra_layers(linen_checkpoint: Path) -> None:
    model = api.load_model(f"{SPEC}:TinyLinen", linen_checkpoint)
    x = rand((3, 8, 8, 3), seed=12)
    everything = api.attribute(model, x, methods=[], cam_layers=["conv1"])["layer_cams"]
    only = api.attribute(model, x, methods=[], cam_layers=["conv1"], layer_cam_methods=["grad_cam"])["layer_cams"]
    assert set(everything["conv1"]) == set(catalogue.LAYER_CAMS) and set(only["conv1"]) == {"grad_cam"}
    np.testing.assert_array_equal(only["conv1"]["grad_cam"], everything["conv1"]["grad_cam"])
    last = model.graph.cam_layer
    assert only[last] == {}  # no CAM method asked for at the CAM layer: none computed there
    asked = api.attribute(model, x, methods=["layer_cam", "guided_grad_cam"], cam_layers=["conv1"])["layer_cams"]
    assert set(asked[last]) == {"grad_cam", "layer_cam"}  # guided Grad-CAM multiplies by Grad-CAM
    np.testing.assert_array_equal(asked["conv1"]["grad_cam"], everything["conv1"]["grad_cam"])
    every_cam = api.attribute(model, x, methods=list(catalogue.LAYER_CAMS))["layer_cams"][last]
    assert set(every_cam) == set(catalogue.LAYER_CAMS)
    np.testing.assert_array_equal(asked[last]["layer_cam"], every_cam["layer_cam"])
    with pytest.raises(ValueError, match="layer_cam_methods"):
        api.attribute(model, x, methods=[], cam_layers=["conv1"], layer_cam_methods=["score_cam"])
