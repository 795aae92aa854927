"""Deletion and insertion curves and their areas (Petsiuk, Das & Saenko 2018, "RISE").

Deletion replaces the most important pixels first with a baseline and watches the class
probability fall (lower area is better); insertion reveals them first on a blurred image and
watches it rise (higher area is better).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from reportgen.model.engine import Engine


def curves(
    engine: Engine,
    variables: Any,
    image: jax.Array,
    target: jax.Array,
    importance: jax.Array,
    removed: jax.Array,
    start: jax.Array,
    steps: int,
) -> tuple[jax.Array, jax.Array]:
    """Deletion and insertion curves, each (steps + 1,) class probabilities from 0 to all pixels.

    `importance` (H, W) ranks pixels (ties by position); `removed` is what deleted pixels become,
    `start` the image insertion starts from.
    """
    h, w = importance.shape
    order = jnp.argsort(-importance.ravel(), stable=True)
    rank = jnp.zeros(h * w, jnp.int32).at[order].set(jnp.arange(h * w, dtype=jnp.int32)).reshape(h, w)
    counts = jnp.round(jnp.linspace(0, h * w, steps + 1)).astype(jnp.int32)
    masks = (rank[None] < counts[:, None, None])[..., None]
    probability = jax.vmap(lambda x: jax.nn.softmax(engine.logits(variables, x))[target])
    deletion = probability(jnp.where(masks, removed, image))
    insertion = probability(jnp.where(masks, image, start))
    return deletion, insertion


def area(curve: ArrayLike) -> jax.Array:
    """Area under curves sampled at equal steps on [0, 1] along the last axis (trapezoid rule)."""
    values = jnp.asarray(curve)
    return (values[..., 1:] + values[..., :-1]).sum(axis=-1) / (2 * (values.shape[-1] - 1))
