"""Activation maximisation and top activating patches."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SPEC, save

from reportgen import api, visualisation
from reportgen.analyses import activations, featurevis, patches
from reportgen.compute import RANDOM_BITS, iterate_examples, map_examples
from reportgen.model.engine import Engine
from reportgen.model.load import LoadedModel

EDGE = np.tile(np.array([-1.0, -1.0, 0.0, 1.0, 1.0], np.float32), (5, 1))  # a vertical dark-to-light edge


@pytest.fixture(scope="module")
def edge_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    variables = {
        "params": {
            "edge": {"kernel": jnp.asarray(EDGE[:, :, None, None]), "bias": jnp.zeros(1)},
            "out": {"kernel": jnp.ones((1, 2)), "bias": jnp.zeros(2)},
        }
    }
    return api.load_model(f"{SPEC}:EdgeNet", save(tmp_path_factory.mktemp("edge") / "ck", variables))


def test_the_optimum_of_an_edge_filter_is_that_edge(edge_model: LoadedModel) -> None:
    (image,) = api.activation_maximization(
        edge_model,
        "edge",
        steps=96,
        parameterisation="pixels",
        learning_rate=0.1,
        jitter=0,
        rotation_deg=0.0,
        scale=(1.0, 1.0),
    )
    gray = image[..., 0]
    windows = np.lib.stride_tricks.sliding_window_view(gray, (5, 5))
    best = max(np.corrcoef(w.ravel(), EDGE.ravel())[0, 1] for w in windows.reshape(-1, 5, 5))
    assert best > 0.9
    # Columns are uniform: the pattern is vertical edges, not noise.
    assert gray.std(axis=1).mean() > 4 * gray.std(axis=0).mean()


@pytest.fixture(scope="module")
def tiny(linen_checkpoint: Path) -> LoadedModel:
    return api.load_model(f"{SPEC}:TinyLinen", linen_checkpoint)


def test_truncated_forward_gives_the_full_models_activation(tiny: LoadedModel) -> None:
    engine = Engine(tiny.graph)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (8, 8, 3)).astype(np.float32))
    objective = featurevis.layer_objective(engine, "ResidualBlock_0/Conv_0", "channel_mean")
    value, descriptor = objective(tiny.variables, x, jnp.int32(3), jnp.asarray(False))
    _, full = engine.forward(tiny.variables, x, ["ResidualBlock_0/Conv_0"])
    gram = np.einsum("hwc,hwd->cd", full["ResidualBlock_0/Conv_0"], full["ResidualBlock_0/Conv_0"]).ravel()
    np.testing.assert_allclose(descriptor, gram / np.linalg.norm(gram), rtol=1e-5, atol=1e-7)
    assert float(value) == pytest.approx(float(full["ResidualBlock_0/Conv_0"][..., 3].mean()), rel=1e-6)


def test_vmapped_filters_equal_a_per_filter_loop_and_seeds_repeat(tiny: LoadedModel) -> None:
    config = featurevis.VisConfig(steps=12)
    pre = featurevis.Preprocessing(1.0, np.zeros(3, np.float32), np.ones(3, np.float32))
    vis = featurevis.visualise(
        featurevis.layer_objective(Engine(tiny.graph), "conv1", "channel_mean"), config, (8, 8, 3), np.eye(3), pre
    )
    filters = np.arange(5, dtype=np.int32)
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(0), 5)))

    def optimise(chunk: int) -> tuple[np.ndarray, np.ndarray]:
        return iterate_examples(
            vis.init, vis.step, vis.steps, vis.finish, (tiny.variables,), filters, keys, chunk=chunk
        )

    init, step, finish = jax.jit(vis.init), jax.jit(vis.step), jax.jit(vis.finish)

    def one_filter(i: int) -> tuple[jax.Array, jax.Array]:
        state = init(tiny.variables, filters[i], keys[i])
        for t in range(vis.steps):
            state = step(tiny.variables, state, filters[i], keys[i], t)
        return finish(tiny.variables, state, filters[i], keys[i])

    batched, values = optimise(4)
    with RANDOM_BITS:  # the random-bits setting every compiled analysis runs under
        looped = [one_filter(i) for i in range(5)]
    np.testing.assert_allclose(batched, np.stack([im for im, _ in looped]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values, np.stack([v for _, v in looped]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(optimise(1)[0], batched, rtol=1e-4, atol=1e-5)
    again, _ = optimise(4)
    np.testing.assert_array_equal(batched, again)
    assert batched.shape == (5, 1, 8, 8, 3) and batched.min() >= 0 and batched.max() <= 1


def test_layers_visualised_together_equal_each_layer_alone(tiny: LoadedModel) -> None:
    # The deeper target sits behind conv1's ReLU: redirecting conv1's ReLU for its filters too
    # (during the first quarter of the steps) would change their images.
    engine = Engine(tiny.graph)
    layers = ["conv1", "ResidualBlock_0/BatchNorm_0"]
    config = featurevis.VisConfig(steps=12)
    pre = featurevis.Preprocessing(1.0, np.zeros(3, np.float32), np.ones(3, np.float32))
    filters = [np.array([0, 2, 5], np.int32), np.array([1, 3, 7, 4], np.int32)]
    slots = np.repeat(np.arange(2, dtype=np.int32), [3, 4])
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(1), 7)))

    def optimise(objective: featurevis.Objective, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
        vis = featurevis.visualise(objective, config, (8, 8, 3), np.eye(3), pre)
        images, _ = iterate_examples(
            vis.init, vis.step, vis.steps, vis.finish, (tiny.variables,), indices, keys[rows], chunk=4
        )
        return images

    together = optimise(
        featurevis.layers_objective(engine, layers, "channel_mean"),
        np.stack([slots, np.concatenate(filters)], axis=1),
        np.arange(7),
    )
    alone = [
        optimise(featurevis.layer_objective(engine, name, "channel_mean"), f, np.flatnonzero(slots == k))
        for k, (name, f) in enumerate(zip(layers, filters, strict=True))
    ]
    np.testing.assert_allclose(together, np.concatenate(alone), rtol=1e-4, atol=1e-5)


def test_api_shapes_and_diversity(tiny: LoadedModel) -> None:
    images = api.activation_maximization(tiny, "conv1", filters=[0, 2], steps=8)
    assert images.shape == (2, 8, 8, 3)
    several = api.activation_maximization(
        tiny, "conv1", filters=[1], steps=8, images_per_filter=3, diversity_weight=1.0
    )
    assert several.shape == (1, 3, 8, 8, 3)
    assert np.abs(several[0, 0] - several[0, 1]).mean() > 0
    assert api.class_visualization(tiny, classes=[0, 1], steps=8).shape == (2, 8, 8, 3)


def test_top_patches_are_the_brute_force_arg_max(tiny: LoadedModel) -> None:
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 1, (9, 8, 8, 3)).astype(np.float32)
    layer = tiny.graph.layer("max_pool_0")
    maps = api.activations(tiny, images, [layer.name])[layer.name]  # (9, 4, 4, 8)
    engine = Engine(tiny.graph)
    stats = map_examples(
        lambda v, x: activations.channel_statistics(engine.layer_outputs(v, x, [layer.name])[layer.name]),
        (tiny.variables,),
        images,
    )
    top = patches.top_patches(stats["max"], stats["argmax"], width=4, k=3)
    for c in range(maps.shape[-1]):
        per_image = maps[..., c].reshape(9, -1)
        order = np.argsort(-per_image.max(axis=1), kind="stable")[:3]
        np.testing.assert_array_equal(top.images[c], order)
        for j, i in enumerate(order):
            r, col = np.unravel_index(per_image[i].argmax(), (4, 4))
            assert (top.rows[c, j], top.cols[c, j]) == (r, col)
            assert top.values[c, j] == pytest.approx(maps[i, r, col, c])


def test_crop_is_the_receptive_field(tiny: LoadedModel) -> None:
    image = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    rf = tiny.graph.layer("max_pool_0").receptive_field  # 6x6, stride 2, unit 0 centred at 0.5
    assert rf is not None
    np.testing.assert_array_equal(patches.crop(image, rf, 1, 2), image[0:6, 2:8])
    corner = patches.crop(image, rf, 0, 0, fill=-1.0)
    np.testing.assert_array_equal(corner[2:, 2:], image[0:4, 0:4])
    assert (corner[:2] == -1).all() and (corner[:, :2] == -1).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warp_equals_bilinear_map_coordinates_with_reflected_edges(seed: int) -> None:
    image = jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (9, 7, 3)).astype(np.float32))
    config = featurevis.VisConfig(jitter=3, scale=(0.7, 1.3), rotation_deg=40.0)
    key = jax.random.key(seed)
    ours = featurevis.random_transform(image, key, config)
    # The same random draws, then scipy-style bilinear sampling channel by channel.
    k_shift, k_scale, k_angle = jax.random.split(key, 3)
    shift = jax.random.randint(k_shift, (2,), -3, 4).astype(jnp.float32)
    scale = jax.random.uniform(k_scale, (), minval=0.7, maxval=1.3)
    angle = jnp.deg2rad(jax.random.uniform(k_angle, (), minval=-40.0, maxval=40.0))
    yy, xx = np.mgrid[0:9, 0:7].astype(np.float32)
    y, x = yy - 4 - shift[0], xx - 3 - shift[1]
    sy = (jnp.cos(angle) * y - jnp.sin(angle) * x) / scale + 4
    sx = (jnp.sin(angle) * y + jnp.cos(angle) * x) / scale + 3
    assert float(jnp.abs(sy - yy).max()) > 1.0  # a real warp, reaching past the edges
    for ch in range(3):
        expected = jax.scipy.ndimage.map_coordinates(image[..., ch], [sy, sx], order=1, mode="reflect")
        np.testing.assert_allclose(ours[..., ch], expected, rtol=1e-5, atol=1e-6)


def test_each_class_image_is_classified_as_its_own_class(tmp_path: Path) -> None:
    """ConvGap with weights that make logit k = 2·mean(relu(channel k)) − the other channels'
    means: its class image is pure channel k, which the model puts in class k."""
    kernel = np.zeros((3, 3, 3, 4), np.float32)
    kernel[1, 1, [0, 1, 2], [0, 1, 2]] = 1.0  # filter k passes channel k through; filter 3 is off
    head = np.zeros((4, 3), np.float32)
    head[:3] = 3 * np.eye(3) - 1
    variables = {
        "params": {
            "conv": {"kernel": kernel, "bias": np.zeros(4, np.float32)},
            "out": {"kernel": head, "bias": np.zeros(3, np.float32)},
        }
    }
    model = api.load_model(f"{SPEC}:ConvGap", save(tmp_path / "ck", variables))
    images = api.class_visualization(model, steps=64)
    classes = np.arange(3)
    np.testing.assert_array_equal(api.predict(model, images).argmax(axis=1), classes)
    np.testing.assert_array_equal(images.mean(axis=(1, 2)).argmax(axis=1), classes)


def test_chosen_filters_are_the_most_active_and_say_so() -> None:
    mean = np.array([0.3, 2.0, -1.0, 0.9, 1.5], np.float32)
    stats = activations.LayerStatistics(mean, mean, mean, False, (), (), 0)
    indices, text = visualisation.chosen_filters(stats, 2)
    assert indices.tolist() == [1, 4] and text == "the 2 filters of 5 with the highest mean activation"
    indices, text = visualisation.chosen_filters(stats, 1)
    assert indices.tolist() == [1] and text == "the filter of 5 with the highest mean activation"
    indices, text = visualisation.chosen_filters(stats, 0)
    assert indices.tolist() == [0, 1, 2, 3, 4] and text == "all 5 filters"
