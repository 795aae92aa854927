"""Deletion and insertion curves and their areas (Petsiuk, Das & Saenko 2018, "RISE").

Deletion replaces the most important pixels first with a baseline and watches the class
probability fall (lower area is better); insertion reveals them first on a blurred image and
watches it rise (higher area is better).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from reportgen.model.engine import Engine


def pixel_ranks(importance: np.ndarray) -> np.ndarray:
    """(..., H, W) rank of every pixel in its map, 0 for the most important (ties by position)."""
    flat = np.asarray(importance).reshape(-1, importance.shape[-2] * importance.shape[-1])
    order = np.argsort(-flat, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(flat.shape[-1]), flat.shape), axis=-1)
    return ranks.reshape(importance.shape).astype(np.int32)


def curve_points(steps: int, pixels: int, methods: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points of every deletion and insertion curve of `methods` maps, flattened: (method
    index, pixels changed, deleting?) for deletion curves first, then insertion curves."""
    counts = np.round(np.linspace(0, pixels, steps + 1)).astype(np.int32)
    method = np.tile(np.repeat(np.arange(methods, dtype=np.int32), steps + 1), 2)
    count = np.tile(counts, 2 * methods)
    deleting = np.arange(2 * methods * (steps + 1)) < methods * (steps + 1)
    return method, count, deleting


def point_probabilities(
    engine: Engine,
    variables: Any,
    image: jax.Array,
    target: jax.Array,
    ranks: jax.Array,
    removed: jax.Array,
    start: jax.Array,
    method: jax.Array,
    count: jax.Array,
    deleting: jax.Array,
) -> jax.Array:
    """(B,) class probability at curve points (`curve_points`): deletion replaces the `count` most
    important pixels of `method`'s map (`ranks` (M, H, W)) by `removed`; insertion reveals them
    on `start`."""

    def probability(m: jax.Array, c: jax.Array, d: jax.Array) -> jax.Array:
        mask = (ranks[m] < c)[..., None]
        x = jnp.where(d, jnp.where(mask, removed, image), jnp.where(mask, image, start))
        return jax.nn.softmax(engine.logits(variables, x))[target]

    return jax.vmap(probability)(method, count, deleting)


def area(curve: ArrayLike) -> jax.Array:
    """Area under curves sampled at equal steps on [0, 1] along the last axis (trapezoid rule)."""
    values = jnp.asarray(curve)
    return (values[..., 1:] + values[..., :-1]).sum(axis=-1) / (2 * (values.shape[-1] - 1))
