"""Occlusion sensitivity (Zeiler & Fergus 2014): the drop in the target class probability when a
window of the image is replaced by a baseline value, for every window position at once."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reportgen.model.engine import Engine


def window_masks(height: int, width: int, window: int, stride: int) -> np.ndarray:
    """(P, H, W) boolean masks of every window position; the last row and column reach the edge."""
    if window > min(height, width) or window < 1 or stride < 1:
        raise ValueError(f"occlusion window {window} and stride {stride} do not fit a {height}x{width} image")

    def starts(size: int) -> list[int]:
        positions = list(range(0, size - window + 1, stride))
        return positions if positions[-1] == size - window else [*positions, size - window]

    masks = []
    for y in starts(height):
        for x in starts(width):
            mask = np.zeros((height, width), bool)
            mask[y : y + window, x : x + window] = True
            masks.append(mask)
    return np.stack(masks)


def occluded_probabilities(
    engine: Engine, variables: Any, image: jax.Array, target: jax.Array, masks: jax.Array, fill: jax.Array
) -> jax.Array:
    """(B,) target class probability with each of `masks` (B, H, W) filled with `fill` (a scalar
    or per-channel value in the model's input space)."""

    def probability(mask: jax.Array) -> jax.Array:
        occluded = jnp.where(mask[..., None], jnp.broadcast_to(fill, image.shape), image)
        return jax.nn.softmax(engine.logits(variables, occluded))[target]

    return jax.vmap(probability)(masks)


def occlusion_map(probability: np.ndarray, occluded: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, H, W): mean over the windows covering each pixel of p(image) − p(occluded image).

    `probability` (N,) is the unoccluded target probability, `occluded` (N, P) the probability
    with each of the P `masks` (P, H, W) applied.
    """
    drops = probability[:, None] - occluded
    coverage = np.maximum(masks.sum(axis=0), 1)
    return np.tensordot(drops, masks.astype(drops.dtype), axes=1) / coverage
