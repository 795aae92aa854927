"""Deletion and insertion curves and their areas (Petsiuk, Das & Saenko 2018, "RISE").

Deletion replaces the most important pixels first with a baseline and watches the class
probability fall (lower area is better); insertion reveals them first on a blurred image and
watches it rise (higher area is better).

An area means little alone: it depends on the model, the images and the removal value. Every
method's curves are therefore measured beside three reference maps that know nothing of the
model's decision — uniform noise, closeness to the image centre, and an edge detector (the
Sobel gradient magnitude, which Adebayo et al. 2018, "Sanity Checks for Saliency Maps", show many
saliency maps resemble) — and a method is worth reading only where it beats them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from reportgen.model.engine import Engine

BASELINES = ("random", "centre", "edge")
"""The reference maps, in the order `baseline_maps` stacks them."""

BASELINE_TITLES = {"random": "Random map", "centre": "Centre map", "edge": "Edge detector"}


def baseline_maps(images: np.ndarray, seed: int, indices: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) reference maps of `images` (N, H, W, C), in `BASELINES` order: uniform noise
    drawn from (seed, probe index), so an image gets the same map whatever else is explained;
    closeness to the centre (the largest squared distance to it minus the pixel's); and the
    Sobel gradient magnitude, summed over channels."""
    n, h, w = images.shape[:3]
    noise = np.stack([np.random.default_rng((seed, int(i))).random((h, w)) for i in indices])
    rows, cols = np.mgrid[:h, :w]
    distance = (rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2
    centre = distance.max() - distance  # non-negative, like the unsigned maps it stands in for
    maps = [noise, np.broadcast_to(centre, (n, h, w)), sobel_magnitude(images)]
    return np.stack(maps, axis=1).astype(np.float32)


def sobel_magnitude(images: np.ndarray) -> np.ndarray:
    """(N, H, W) Sobel gradient magnitude of (N, H, W, C) images (edge-padded), summed over channels."""
    x = np.pad(np.asarray(images, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = images.shape[1:3]

    def tap(dy: int, dx: int) -> np.ndarray:
        return x[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    gx = tap(-1, 1) + 2 * tap(0, 1) + tap(1, 1) - tap(-1, -1) - 2 * tap(0, -1) - tap(1, -1)
    gy = tap(1, -1) + 2 * tap(1, 0) + tap(1, 1) - tap(-1, -1) - 2 * tap(-1, 0) - tap(-1, 1)
    return np.sqrt(gx**2 + gy**2).sum(axis=-1)


def pixel_ranks(importance: np.ndarray) -> np.ndarray:
    """(..., H, W) rank of every pixel in its map, 0 for the most important (ties by position)."""
    flat = np.asarray(importance).reshape(-1, importance.shape[-2] * importance.shape[-1])
    order = np.argsort(-flat, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(flat.shape[-1]), flat.shape), axis=-1)
    return ranks.reshape(importance.shape).astype(np.int32)


def step_counts(steps: int, pixels: int) -> np.ndarray:
    """Pixels changed at each of the `steps` + 1 points of a deletion or insertion curve."""
    return np.round(np.linspace(0, pixels, steps + 1)).astype(np.int32)


def curve_points(counts: np.ndarray, methods: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points of two families of curves (deletion then insertion, or ROAD's most then least
    relevant first) of `methods` maps, each curve at pixel `counts`, flattened: (method index,
    pixels changed, in the first family?)."""
    points = len(counts)
    method = np.tile(np.repeat(np.arange(methods, dtype=np.int32), points), 2)
    count = np.tile(np.asarray(counts, np.int32), 2 * methods)
    first = np.arange(2 * methods * points) < methods * points
    return method, count, first


def distinct_points(
    method: np.ndarray, count: np.ndarray, deleting: np.ndarray, pixels: int
) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the distinct points, index of each point among them) of deletion and insertion
    curve points (`curve_points`). The ends of every curve show the same image whatever the map:
    the image itself (nothing deleted, everything inserted), the fully removed one and the fully
    blurred start, so three passes serve the 4 x methods ends."""
    ends = (count == 0) | (count == pixels)
    shows_image = np.where(deleting, count == 0, count == pixels)
    key = np.stack(
        [
            np.where(ends, -1, method),
            np.where(shows_image, 0, count),
            np.where(shows_image, 1, deleting.astype(np.int64)),
        ],
        axis=1,
    )
    _, first, back = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return first, back.reshape(-1)


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
