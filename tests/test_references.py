"""Attribution methods against slow, independent references: loops over windows, channels and
noise samples that call the Flax module itself, not reportgen's engine."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models
from conftest import SPEC, save

from reportgen import api
from reportgen.compute import RANDOM_BITS, example_keys


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
