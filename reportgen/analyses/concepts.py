"""Concepts per layer: non-negative matrix factorisation of a layer's activations.

Deep Feature Factorization (Collins, Achanta & Süsstrunk 2018, "Deep Feature Factorization for
Concept Discovery") factorises the (positions × channels) matrix V of a layer's non-negative
activations over the probe images as V ≈ W H. Each row of H (k, C) is a concept, a non-negative
mix of filters scaled to unit length; W (positions, k) is how strongly each concept is present
at each position, which gives its heatmaps and top patches. The factors are fitted with Lee &
Seung's multiplicative updates (2001, "Algorithms for Non-negative Matrix Factorization"), from a
seeded start, so a build is deterministic; the activations of each image are then projected on
the fitted concepts by non-negative least squares.

k is chosen by reconstruction error: the factorisation is fitted for every k up to a cap, and k is
the smallest count after which one more concept lowers the relative error by less than `GAIN`
(diminishing returns), or the cap.

A concept's evidence for a class is gradient × input at the concept coefficients, as CRAFT ranks
concepts (Fel et al. 2023, "CRAFT: Concept Recursive Activation FacTorization for
Explainability"): c_k = Σ_ij W_ijk · (H_k · ∂logit/∂A_ij). The concepts' evidence adds up to the
filters' evidence of `classfilters` up to the reconstruction error.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from reportgen.analyses.classfilters import share
from reportgen.analyses.patches import TopPatches

if TYPE_CHECKING:
    from reportgen.model.graph import Layer

FIT_ROWS = 4096
"""Activation vectors (positions of probe images) a layer's factorisation is fitted on."""

FIT_ITERATIONS = 200
"""Multiplicative updates of both factors when fitting."""

PROJECT_ITERATIONS = 20
"""Projected gradient steps of the coefficients when projecting activations on fitted concepts."""

GAIN = 0.02
"""k is the smallest number of concepts that one more would improve by less than this relative error."""

EPSILON = 1e-12
"""Keeps the updates' denominators positive."""


NONNEGATIVE = frozenset({"relu", "sigmoid"})
"""Activations whose outputs are never negative, as non-negative factorisation needs."""


def concept_layers(layers: Sequence[Layer]) -> list[str]:
    """The layers whose concepts are found: spatial convolutions, normalisations and merges that
    end in a non-negative activation. Where residual merges do (a ResNet's block outputs, as Deep
    Feature Factorization factorises them), only those."""
    candidates = [
        layer
        for layer in layers
        if layer.is_spatial and layer.kind in ("conv", "norm", "merge") and layer.activation in NONNEGATIVE
    ]
    merges = [layer for layer in candidates if layer.kind == "merge"]
    return [layer.name for layer in merges or candidates]


def samples_per_image(images: int) -> int:
    """Positions sampled from each probe image so that about `FIT_ROWS` are fitted in all."""
    return max(1, -(-FIT_ROWS // max(images, 1)))


def sample_rows(activation: jax.Array, uniform: jax.Array) -> jax.Array:
    """Activation vectors (S, C) at the positions that `uniform` (S,) values in [0, 1) pick from
    an (h, w, C) map."""
    flat = activation.reshape(-1, activation.shape[-1])
    return flat[jnp.minimum((uniform * flat.shape[0]).astype(jnp.int32), flat.shape[0] - 1)]


@functools.partial(jax.jit, static_argnames=("max_concepts", "iterations"))
def fit_all(
    rows: jax.Array, key: jax.Array, max_concepts: int, iterations: int = FIT_ITERATIONS
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Factorisations of non-negative `rows` (R, C) with k = 1 … max_concepts concepts, all from
    one seeded start (the first k columns of it): coefficients (max_concepts, R, max_concepts),
    unit-length bases (max_concepts, max_concepts, C), both zero past k, and relative errors
    ‖V − WH‖ / ‖V‖ (max_concepts,)."""
    count, channels = rows.shape
    scale = jnp.sqrt(rows.mean() / max_concepts)
    w_key, h_key = jax.random.split(key)
    w_start = jax.random.uniform(w_key, (count, max_concepts), rows.dtype) * scale
    h_start = jax.random.uniform(h_key, (max_concepts, channels), rows.dtype) * scale
    norm = jnp.linalg.norm(rows)

    def one(k: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        used = (jnp.arange(max_concepts) < k).astype(rows.dtype)

        def update(_: int, factors: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            w, h = factors
            h = h * (w.T @ rows) / ((w.T @ w) @ h + EPSILON)
            w = w * (rows @ h.T) / (w @ (h @ h.T) + EPSILON)
            return w, h

        w, h = jax.lax.fori_loop(0, iterations, update, (w_start * used, h_start * used[:, None]))
        length = jnp.linalg.norm(h, axis=1)
        h = h / jnp.where(length > 0, length, 1.0)[:, None]
        w = w * length
        return w, h, jnp.linalg.norm(rows - w @ h) / norm

    return jax.vmap(one)(jnp.arange(1, max_concepts + 1))


def choose(errors: np.ndarray) -> int:
    """The smallest k (1-based) after which one more concept lowers the error by less than
    `GAIN`, or the last; 0 where the errors are not finite (all-zero activations)."""
    errors = np.asarray(errors, np.float64)
    if not np.isfinite(errors).all():
        return 0
    small = np.flatnonzero(errors[:-1] - errors[1:] < GAIN)
    return int(small[0]) + 1 if len(small) else len(errors)


def inverse_gram(basis: np.ndarray) -> np.ndarray:
    """The (pseudo-)inverse of the concepts' Gram matrix H Hᵀ, which `project` starts from;
    computed on the host once per layer (a LAPACK call in a program with convolutions can hang
    XLA's CPU runtime when two threads run it)."""
    return np.linalg.pinv(np.asarray(basis, np.float64) @ np.asarray(basis, np.float64).T).astype(np.float32)


def project(
    activation: jax.Array, basis: jax.Array, inverse: jax.Array, iterations: int = PROJECT_ITERATIONS
) -> jax.Array:
    """Non-negative coefficients (..., k) of activation vectors (..., C) on fixed concepts (k, C)
    with `inverse_gram(basis)`: least squares ‖A − W H‖ over W ≥ 0, by projected gradient steps
    (Lin 2007, "Projected Gradient Methods for Nonnegative Matrix Factorization") of length
    1 / (a Gershgorin bound on the Gram matrix's largest eigenvalue), from the clipped
    unconstrained solution. Where that solution is non-negative it is the answer."""
    gram = basis @ basis.T
    target = activation @ basis.T
    step = 1.0 / jnp.maximum(jnp.abs(gram).sum(axis=1).max(), EPSILON)

    def update(_: int, w: jax.Array) -> jax.Array:
        return jnp.maximum(w - step * (w @ gram - target), 0.0)

    return jax.lax.fori_loop(0, iterations, update, jnp.maximum(target @ inverse, 0.0))


def concept_evidence(
    activation: jax.Array, gradient: jax.Array, basis: jax.Array, inverse: jax.Array
) -> dict[str, jax.Array]:
    """For one image's (h, w, C) activation and the gradient of its class logit there: each
    concept's evidence Σ_ij W_ijk (H_k · ∂logit/∂A_ij) and its strongest coefficient with the flat
    position of it, each (k,), and the evidence of all filters Σ A · ∂logit/∂A ("total", a scalar)
    that the concepts' evidence is part of."""
    coefficients = project(activation, basis, inverse).reshape(-1, basis.shape[0])
    along = (gradient @ basis.T).reshape(-1, basis.shape[0])
    return {
        "contribution": (coefficients * along).sum(axis=0),
        "max": coefficients.max(axis=0),
        "argmax": coefficients.argmax(axis=0).astype(jnp.int32),
        "total": (activation * gradient).sum(),
    }


@dataclass(frozen=True)
class Factorisation:
    """One layer's concepts, fitted on sampled activation vectors of the probe images."""

    basis: np.ndarray  # (k, C) unit-length concepts, the most present first
    inverse: np.ndarray  # (k, k) inverse_gram(basis)
    errors: np.ndarray  # (max_concepts,) relative reconstruction error for 1 … max_concepts concepts
    presence: np.ndarray  # (k,) each concept's share of the reconstructed activation (L1)
    rows: int  # activation vectors fitted


def factorise(rows: np.ndarray, max_concepts: int, seed: int) -> Factorisation:
    """The concepts of a layer from its sampled activation vectors (R, C), k chosen by `choose`;
    concepts ordered by how much of the activation they reconstruct. Vectors that are not finite
    are left out."""
    rows = np.asarray(rows, np.float32)
    rows = rows[np.isfinite(rows).all(axis=1)]
    cap = max(1, min(max_concepts, rows.shape[1]))
    if not len(rows):
        errors = np.full(cap, np.nan, np.float32)
    else:
        coefficients, bases, errors = jax.device_get(fit_all(rows, jax.random.key(seed), cap))
    k = choose(errors)
    if k == 0:
        empty = np.zeros((0, rows.shape[1]), np.float32)
        return Factorisation(empty, np.zeros((0, 0), np.float32), np.asarray(errors), np.zeros(0), len(rows))
    w, h = coefficients[k - 1][:, :k], bases[k - 1][:k]
    mass = w.sum(axis=0) * h.sum(axis=1)
    order = np.argsort(-mass, kind="stable")
    total = mass.sum()
    presence = mass[order] / total if total > 0 else np.zeros(k)
    basis = h[order]
    return Factorisation(basis, inverse_gram(basis), np.asarray(errors), presence, len(rows))


@dataclass(frozen=True)
class LayerConcepts:
    """One layer's concepts, their evidence for each class and where they are strongest."""

    layer: str
    factorisation: Factorisation
    contribution: np.ndarray  # (K, k) mean concept evidence over each class's probe images; NaN rows where none
    evidence: float  # mean over the probe images of the concepts' evidence for the image's class
    total: float  # mean over the probe images of all filters' evidence Σ A · ∂logit/∂A
    top: TopPatches  # per concept, the probe images where its coefficient peaks, and where
    maps: dict[int, np.ndarray]  # probe image index -> its (h, w, k) coefficients, for the top images

    def share(self) -> np.ndarray:
        """(K, k) each concept's share of the class's positive concept evidence."""
        return share(self.contribution)

    @classmethod
    def none(cls, layer: str, factorisation: Factorisation, num_classes: int) -> LayerConcepts:
        """A layer without concepts: zero, or not finite, at every sampled position."""
        nowhere = np.zeros((0, 0), np.int64)
        top = TopPatches(nowhere, nowhere, nowhere, np.zeros((0, 0)))
        return cls(layer, factorisation, np.zeros((num_classes, 0)), 0.0, 0.0, top, {})
