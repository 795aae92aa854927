"""Attribution methods against slow, independent references: loops over windows, channels and
noise samples that call the Flax module itself, not reportgen's engine."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models
from conftest import SPEC, save

from reportgen import api
from reportgen.analyses import infidelity, road
from reportgen.analyses.methods import AttributionConfig
from reportgen.attribution import MethodRunner
from reportgen.compute import RANDOM_BITS, example_keys
from reportgen.model.engine import Engine


@pytest.fixture(scope="module")
def conv_gap(tmp_path_factory: pytest.TempPathFactory):
    """ConvGap (conv + ReLU, mean pooling, dense) with non-zero biases, and its variables."""
    variables = tiny_models.init_linen(tiny_models.ConvGap(), seed=11)
    rng = np.random.default_rng(5)
    variables["params"]["conv"]["bias"] = rng.normal(size=4).astype(np.float32)
    model = api.load_model(f"{SPEC}:ConvGap", save(tmp_path_factory.mktemp("gap") / "ck", variables))
    return model, variables


def probabilities(variables, images: np.ndarray) -> np.ndarray:
    """Class probabilities straight from the Flax module, (N, K)."""
    return np.asarray(jax.nn.softmax(tiny_models.ConvGap().apply(variables, jnp.asarray(images)), axis=-1))


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 6, 6, 3)).astype(np.float32)


def test_occlusion_equals_a_loop_over_windows(conv_gap) -> None:
    model, variables = conv_gap
    x = images(2, 1)
    targets = np.array([0, 2])
    got = api.occlusion(model, x, targets, window=3, stride=2, baseline=0.5)
    starts = [0, 2, 3]  # stride 2 from 0, and the last window flush with the edge (6 - 3)
    drops = np.zeros((2, 6, 6))
    covering = np.zeros((6, 6))
    for top in starts:
        for left in starts:
            occluded = x.copy()
            occluded[:, top : top + 3, left : left + 3] = 0.5
            drop = probabilities(variables, x)[[0, 1], targets] - probabilities(variables, occluded)[[0, 1], targets]
            drops[:, top : top + 3, left : left + 3] += drop[:, None, None]
            covering[top : top + 3, left : left + 3] += 1
    np.testing.assert_allclose(got, drops / covering, rtol=1e-4, atol=1e-6)


def test_score_cam_equals_a_loop_over_channels(conv_gap) -> None:
    model, variables = conv_gap
    x = images(2, 2)
    targets = np.array([1, 0])
    got = api.score_cam(model, x, targets, layer="conv")
    conv = nn.Conv(4, (3, 3))
    for n in range(2):
        activation = np.maximum(np.asarray(conv.apply({"params": variables["params"]["conv"]}, x[n : n + 1]))[0], 0)
        scores = []
        for k in range(4):  # the map is 6x6 like the input: upsampling is the identity
            a = activation[..., k]
            mask = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else a - a.min()
            scores.append(probabilities(variables, (x[n] * mask[..., None])[None])[0, targets[n]])
        weights = np.exp(scores) / np.exp(scores).sum()
        expected = np.maximum((activation * weights).sum(axis=-1), 0)
        np.testing.assert_allclose(got[n], expected, rtol=1e-4, atol=1e-6)


def test_smoothgrad_equals_the_mean_gradient_over_its_noisy_copies(conv_gap) -> None:
    """The noise of sample i is drawn from the example's key folded with i (so chunks never change
    it); the mean of the module's own input gradients over those copies is the reference."""
    model, variables = conv_gap
    x = images(2, 3)
    targets = np.array([2, 1])
    samples, noise = 6, 0.2
    got = api.smoothgrad(model, x, targets, samples=samples, noise=noise, seed=4)
    keys = example_keys(4, np.arange(2))

    def logit(image: jax.Array, k: int) -> jax.Array:
        return tiny_models.ConvGap().apply(variables, image[None])[0, k]

    for n in range(2):
        key = jax.random.wrap_key_data(keys[n])
        sigma = noise * (x[n].max() - x[n].min())
        with RANDOM_BITS:  # the random-bits mode every reportgen computation runs in
            noisy = [x[n] + sigma * jax.random.normal(jax.random.fold_in(key, i), x[n].shape) for i in range(samples)]
        grads = [jax.grad(logit)(copy, targets[n]) for copy in noisy]
        np.testing.assert_allclose(got[n], np.mean(grads, axis=0), rtol=1e-4, atol=1e-6)


def test_guided_grad_cam_is_guided_backprop_times_the_upsampled_grad_cam(conv_gap) -> None:
    model, _ = conv_gap
    x = images(3, 4)
    out = api.attribute(model, x, [0, 1, 2], methods=["guided_grad_cam", "guided_backprop", "grad_cam"])
    expected = out["guided_backprop"] * out["grad_cam"][..., None]
    np.testing.assert_allclose(out["guided_grad_cam"], expected, rtol=1e-5, atol=1e-7)
    assert np.abs(out["guided_grad_cam"]).max() > 0


def dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation by building its equations one pixel at a time and solving them."""
    h, w, channels = image.shape
    unknown = {pixel: k for k, pixel in enumerate(zip(*np.nonzero(removed), strict=True))}
    weights = [(dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    out = image.astype(np.float64)
    for c in range(channels):
        a, b = np.zeros((len(unknown), len(unknown))), np.zeros(len(unknown))
        for (i, j), k in unknown.items():
            for dy, dx, weight in weights:
                y, x = i + dy, j + dx
                if (dy, dx) == (0, 0) or not (0 <= y < h and 0 <= x < w):
                    continue
                a[k, k] += weight
                if (y, x) in unknown:
                    a[k, unknown[y, x]] -= weight
                else:
                    b[k] += weight * image[y, x, c]
        for (i, j), value in zip(unknown, np.linalg.solve(a, b), strict=True):
            out[i, j, c] = value
    return out


def road_runner(model) -> tuple[MethodRunner, object]:
    runner = MethodRunner(
        Engine(model.graph), AttributionConfig(infidelity_samples=12), "conv", [], np.zeros((6, 6, 3))
    )
    return runner, api._passes(model, None)


def test_road_curves_equal_a_loop_over_fractions(conv_gap, monkeypatch: pytest.MonkeyPatch) -> None:
    """Noise off, every point is: rank the map's pixels, remove the top (MoRF) or bottom (LeRF)
    share, solve the imputation densely, and read the class probability from the Flax module."""
    model, variables = conv_gap
    x, targets = images(2, 7), np.array([0, 2])
    maps = np.random.default_rng(8).random((2, 2, 6, 6))
    monkeypatch.setattr(road, "NOISE", 0.0)
    runner, passes = road_runner(model)
    morf, lerf = runner.road_curves(model.variables, x, targets, maps, example_keys(0, np.arange(2)), passes)
    for n in range(2):
        for m in range(2):
            order = np.argsort(-maps[n, m].ravel(), kind="stable")
            for f, fraction in enumerate(road.FRACTIONS):
                count = round(fraction * 36)
                for got, chosen in ((morf, order[:count]), (lerf, order[36 - count :])):
                    removed = np.isin(np.arange(36), chosen).reshape(6, 6)
                    expected = probabilities(variables, dense_imputation(x[n], removed)[None])[0, targets[n]]
                    assert got[n, m, f] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_road_noise_is_small_and_the_same_for_any_chunk_size(conv_gap) -> None:
    model, _ = conv_gap
    x, targets = images(3, 9), np.array([1, 0, 2])
    maps = np.random.default_rng(10).random((3, 2, 6, 6))
    keys = example_keys(0, np.arange(3))
    runner, passes = road_runner(model)
    noisy = runner.road_curves(model.variables, x, targets, maps, keys, passes)
    one_at_a_time = runner.road_curves(model.variables, x, targets, maps, keys, dataclasses.replace(passes, forward=1))
    np.testing.assert_allclose(one_at_a_time, noisy, rtol=1e-5, atol=1e-7)
    quiet_runner, _ = road_runner(model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(road, "NOISE", 0.0)
        quiet = quiet_runner.road_curves(model.variables, x, targets, maps, keys, passes)
    difference = np.abs(np.asarray(noisy) - np.asarray(quiet))
    assert 0 < difference.max() < 0.05


def test_infidelity_equals_a_loop_over_removed_squares(conv_gap) -> None:
    model, variables = conv_gap
    x, targets = images(2, 11), np.array([2, 1])
    maps = np.random.default_rng(12).normal(size=(2, 3, 6, 6))
    runner, passes = road_runner(model)
    got = runner.infidelity_scores(model.variables, x, targets, maps, passes, seed=5)
    squares = infidelity.square_masks(6, 6, 12, seed=5)
    for n in range(2):
        removed = np.where(squares[..., None], 0.0, x[n])  # black is zero in this model's input space
        drops = probabilities(variables, x[n : n + 1])[0, targets[n]] - probabilities(variables, removed)[:, targets[n]]
        for m in range(3):
            a = (maps[n, m] * squares).sum(axis=(1, 2))
            beta = max(0.0, (a * drops).sum() / (a * a).sum())
            expected = ((beta * a - drops) ** 2).sum() / (drops**2).sum()
            assert got[n, m] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_example_keys_fold_each_index_into_the_seed_and_stream() -> None:
    """Key i is key(seed) folded with the stream, then with i: the same key for an example
    whatever else is computed, for any seed an API caller may pass."""
    for seed, stream in ((0, 0), (7, 3), (2**32 + 5, 1)):
        indices = np.array([0, 5, 2, 1000], np.int32)
        with RANDOM_BITS:
            base = jax.random.fold_in(jax.random.key(seed), stream)
            expected = [np.asarray(jax.random.key_data(jax.random.fold_in(base, int(i)))) for i in indices]
        np.testing.assert_array_equal(example_keys(seed, indices, stream), np.stack(expected))
