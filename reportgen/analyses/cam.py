"""Class activation maps from a layer's activation A (h, w, C) and gradient G = d logit / d A.

All maps are (h, w) at the layer's resolution and non-negative; `upsample` brings them to the
input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from reportgen.model.engine import Engine


def grad_cam(activation: jax.Array, gradient: jax.Array) -> jax.Array:
    """ReLU(Σ_k mean(G_k) A_k) (Selvaraju et al. 2017, "Grad-CAM")."""
    weights = gradient.mean(axis=(0, 1))
    return jax.nn.relu((activation * weights).sum(axis=-1))


def grad_cam_pp(activation: jax.Array, gradient: jax.Array) -> jax.Array:
    """Grad-CAM++ (Chattopadhyay et al. 2018): pixel-weighted positive gradients.

    α = G² / (2G² + Σ_ab A_ab G³), w_k = Σ_ij α_ij ReLU(G_ij), map = ReLU(Σ_k w_k A_k); the
    closed form for an exponential of the class score.
    """
    g2, g3 = gradient**2, gradient**3
    denominator = 2 * g2 + activation.sum(axis=(0, 1)) * g3
    alpha = g2 / jnp.where(denominator != 0, denominator, 1.0)
    weights = (alpha * jax.nn.relu(gradient)).sum(axis=(0, 1))
    return jax.nn.relu((activation * weights).sum(axis=-1))


def layer_cam(activation: jax.Array, gradient: jax.Array) -> jax.Array:
    """ReLU(Σ_k ReLU(G_k) ⊙ A_k) (Jiang et al. 2021, "LayerCAM")."""
    return jax.nn.relu((jax.nn.relu(gradient) * activation).sum(axis=-1))


def hires_cam(activation: jax.Array, gradient: jax.Array) -> jax.Array:
    """ReLU(Σ_k G_k ⊙ A_k) (Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful
    explanations of convolutional neural networks"): the gradient is not averaged over space
    first, so for a head that flattens the map into dense layers the map adds up to the part of
    the class score each position contributes."""
    return jax.nn.relu((gradient * activation).sum(axis=-1))


POWER_ITERATIONS = 100
"""Power-iteration steps for EigenCAM's principal component: the error shrinks as
(λ₂/λ₁)^steps, below 1e-4 for an eigenvalue ratio up to 0.9."""


def eigen_cam(activation: jax.Array, gradient: jax.Array) -> jax.Array:
    """The activation's first principal component over positions (Muhammad & Yeasin 2020,
    "Eigen-CAM: Class Activation Map using Principal Components"): the (h·w, C) matrix, centred
    over positions, projected on its top principal direction. Class-agnostic: the gradient is
    not read. The direction comes from power iteration (matrix products only: a LAPACK
    decomposition in the same program as convolutions hangs XLA's CPU runtime when two threads
    run it at once). Its sign is arbitrary; it is chosen so that the map rises where the
    channels' total activation does, then negative values are cut."""
    del gradient
    h, w, c = activation.shape
    matrix = activation.reshape(h * w, c)
    centred = matrix - matrix.mean(axis=0)

    if c * (h * w + POWER_ITERATIONS) < 2 * POWER_ITERATIONS * h * w:  # cheaper through the C x C covariance
        covariance = centred.T @ centred

        def apply(v: jax.Array) -> jax.Array:
            return covariance @ v
    else:

        def apply(v: jax.Array) -> jax.Array:
            return centred.T @ (centred @ v)

    def step(_: int, v: jax.Array) -> jax.Array:
        u = apply(v)
        return u / jnp.maximum(jnp.linalg.norm(u), jnp.finfo(u.dtype).tiny)

    # A fixed, irregular, positive start: it overlaps any direction (a uniform start is
    # orthogonal to a contrast between channels).
    start = 1.0 + 0.5 * jnp.cos(2.4 * jnp.arange(c, dtype=activation.dtype))
    direction = jax.lax.fori_loop(0, POWER_ITERATIONS, step, start / jnp.linalg.norm(start))
    projection = centred @ direction
    total = matrix.sum(axis=-1)
    sign = jnp.where(jnp.dot(projection, total - total.mean()) < 0, -1.0, 1.0)
    return jax.nn.relu(sign * projection).reshape(h, w)


def upsample(cam: jax.Array, size: Sequence[int]) -> jax.Array:
    """Bilinear resize of an (h, w) map to the input size."""
    return jax.image.resize(cam, tuple(size), method="bilinear")


def score_cam_probabilities(
    engine: Engine,
    variables: Any,
    image: jax.Array,
    target: jax.Array,
    activation: jax.Array,
    channels: jax.Array,
    black: jax.Array,
) -> jax.Array:
    """(B,) target class probability of the image masked by each of `channels`' upsampled,
    [0, 1]-normalised activation map (blending towards `black`): Score-CAM's channel scores."""
    size = image.shape[:2]

    def probability(channel: jax.Array) -> jax.Array:
        single = jnp.take(activation, channel, axis=-1)
        low, high = single.min(), single.max()
        mask = upsample((single - low) / jnp.where(high > low, high - low, 1.0), size)
        masked = black + (image - black) * mask[..., None]
        return jax.nn.softmax(engine.logits(variables, masked))[target]

    return jax.vmap(probability)(channels)


def score_cam(activation: jax.Array, scores: jax.Array) -> jax.Array:
    """Score-CAM (Wang et al. 2020): ReLU(Σ_k softmax(s)_k A_k), with s_k the class probability of
    the image masked by channel k (`score_cam_probabilities`). The paper subtracts the
    probability of the baseline image from every score first, which the softmax cancels."""
    return jax.nn.relu((activation * jax.nn.softmax(scores)).sum(axis=-1))
