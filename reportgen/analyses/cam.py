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


def upsample(cam: jax.Array, size: Sequence[int]) -> jax.Array:
    """Bilinear resize of an (h, w) map to the input size."""
    return jax.image.resize(cam, tuple(size), method="bilinear")


def score_cam(
    engine: Engine, variables: Any, image: jax.Array, target: jax.Array, activation: jax.Array, black: jax.Array
) -> jax.Array:
    """Score-CAM (Wang et al. 2020): channels weighted by how much the class probability rises when
    the image is masked by that channel's upsampled, [0, 1]-normalised map.

    Weights are the softmax over channels of p(image ⊙ mask_k) − p(black), as in the paper.
    """
    size = image.shape[:2]
    maps = jnp.moveaxis(activation, -1, 0)
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    masks = (maps - low) / jnp.where(high > low, high - low, 1.0)
    masks = jax.vmap(lambda m: upsample(m, size))(masks)
    masked = black + (image - black) * masks[..., None]
    base = jax.nn.softmax(engine.logits(variables, black))[target]
    scores = jax.vmap(lambda x: jax.nn.softmax(engine.logits(variables, x))[target])(masked) - base
    weights = jax.nn.softmax(scores)
    return jax.nn.relu((activation * weights).sum(axis=-1))
