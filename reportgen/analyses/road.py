"""ROAD, remove and debias (Rong, Leemann, Borisov, Kasneci & Kasneci 2022, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods").

Turning removed pixels black leaks the shape of what was removed: the model can react to the
outline of the hole rather than to the evidence it lost, and the most-relevant-first and
least-relevant-first orders then disagree about which map is better. ROAD fills the removed pixels
by noisy linear imputation instead: every removed pixel equals the weighted mean of its eight
neighbours (1/6 for the four sharing an edge, 1/12 for the diagonal ones), solved for all removed
pixels at once, plus a little Gaussian noise, so the fill says little about which pixels went.
No retraining is needed. The class probability is recorded with 10 %, 20 %, … 90 % of the pixels
removed, most relevant first (MoRF, lower is better) and least relevant first (LeRF, higher is
better).

The imputation's linear system is the graph Laplacian of the removed pixels with the kept ones as
boundary values: symmetric and positive definite, solved by conjugate gradients with convolutions
as the matrix, so it batches and runs on any device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.sparse.linalg import cg

from reportgen.model.engine import Engine

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Shares of the pixels removed at the curve points (Rong et al.'s percentages)."""

NOISE = 0.01
"""Standard deviation of the noise added to imputed pixels, as a fraction of the image's value range."""

NEIGHBOURS = (
    *((dy, dx, 1 / 6) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))),
    *((dy, dx, 1 / 12) for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1))),
)
"""(row offset, column offset, weight) of the neighbours a removed pixel is imputed from."""


def neighbour_sum(x: jax.Array) -> jax.Array:
    """Σ weight × neighbour for every pixel of (H, W, C) `x`; pixels outside the image count 0."""
    h, w = x.shape[:2]
    padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)))
    return sum(
        (weight * padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx, weight in NEIGHBOURS),
        jnp.zeros_like(x),
    )


def impute(image: jax.Array, removed: jax.Array) -> jax.Array:
    """`image` (H, W, C) with the `removed` (H, W) pixels replaced by the solution of
    Σ_j w_j (x_i − x_j) = 0 over each removed pixel i's neighbours j (noise-free)."""
    m = removed[..., None].astype(image.dtype)
    degree = neighbour_sum(jnp.ones((*image.shape[:2], 1), image.dtype))
    kept = image * (1 - m)

    def laplacian(u: jax.Array) -> jax.Array:  # identity on the kept pixels
        return m * (degree * u - neighbour_sum(m * u)) + (1 - m) * u

    solution, _ = cg(laplacian, m * neighbour_sum(kept), tol=1e-5, maxiter=2 * sum(image.shape[:2]))
    return kept + m * solution


def removed_counts(pixels: int) -> np.ndarray:
    """Pixels removed at each of the `FRACTIONS`."""
    return np.round(np.asarray(FRACTIONS) * pixels).astype(np.int32)


def point_probabilities(
    engine: Engine,
    variables: Any,
    image: jax.Array,
    target: jax.Array,
    ranks: jax.Array,
    key_data: jax.Array,
    method: jax.Array,
    count: jax.Array,
    most_relevant_first: jax.Array,
    point: jax.Array,
) -> jax.Array:
    """(B,) class probability at curve points (`faithfulness.curve_points` of `removed_counts`,
    most relevant first the first family; `point` their indices, which seed the noise): the
    `count` most (or least) important pixels of `method`'s map (`ranks` (M, H, W), 0 the most
    important) removed and imputed."""
    pixels = ranks.shape[-2] * ranks.shape[-1]
    spread = image.max() - image.min()

    def probability(m: jax.Array, c: jax.Array, morf: jax.Array, p: jax.Array) -> jax.Array:
        removed = jnp.where(morf, ranks[m] < c, ranks[m] >= pixels - c)
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data), p)
        noise = NOISE * spread * jax.random.normal(key, image.shape, image.dtype)
        x = impute(image, removed) + removed[..., None] * noise
        return jax.nn.softmax(engine.logits(variables, x))[target]

    return jax.vmap(probability)(method, count, most_relevant_first, point)
