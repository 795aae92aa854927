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


def occlusion(
    engine: Engine, variables: Any, image: jax.Array, target: jax.Array, masks: np.ndarray, baseline: jax.Array
) -> jax.Array:
    """(H, W): mean over the windows covering each pixel of p(image) − p(occluded image).

    `baseline` is the fill value in the model's input space (a scalar or a per-channel vector).
    """
    probs = jax.nn.softmax(engine.logits(variables, image))
    target = jnp.where(target < 0, jnp.argmax(probs), target)
    m = jnp.asarray(masks)[..., None]
    occluded = jnp.where(m, jnp.broadcast_to(baseline, image.shape), image)
    drops = probs[target] - jax.vmap(lambda x: jax.nn.softmax(engine.logits(variables, x))[target])(occluded)
    coverage = masks.sum(axis=0)
    return jnp.tensordot(drops, jnp.asarray(masks, image.dtype), axes=1) / np.maximum(coverage, 1)
