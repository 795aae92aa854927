"""Infidelity and max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the
(In)fidelity and Sensitivity of Explanations").

Infidelity asks whether a map predicts what perturbing the input does to the model: over random
perturbations I, the mean of (Iᵀφ − (f(x) − f(x − I)))². The perturbations here are Yeh et al.'s
square removals, a square of random side and position turned black (the deletion curves' removal
value), so Iᵀφ is the 2-D map summed over the square and f is the class probability. A map's
scale is arbitrary (gradient units, CAM weights, probability drops), so it is first scaled by the
non-negative factor that fits best, and the error is reported relative to the mean squared drop:
0 when the map predicts every drop, 1 when it predicts none (as a map with the wrong sign does).

Max-sensitivity asks whether a map is stable under a perturbation too small to matter: the
largest relative change ‖φ(x + δ) − φ(x)‖ / ‖φ(x)‖ over a few δ drawn uniformly from a small box
(each pixel within ±2 % of the image's value range).
"""

from __future__ import annotations

import numpy as np

SENSITIVITY_RADIUS = 0.02
"""Half-width of the perturbation box of max-sensitivity, as a fraction of the image's value range."""


def square_masks(height: int, width: int, count: int, seed: int) -> np.ndarray:
    """(count, H, W) random squares, sides from an eighth to half the shorter image side, the same
    for every image of a build."""
    rng = np.random.default_rng((seed, 2))
    shortest = min(height, width)
    sides = rng.integers(max(1, shortest // 8), max(1, shortest // 2) + 1, size=count)
    masks = np.zeros((count, height, width), bool)
    for mask, side in zip(masks, sides, strict=True):
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        mask[y : y + side, x : x + side] = True
    return masks


def infidelity(maps: np.ndarray, masks: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """(N, M) relative infidelity of `maps` (N, M, H, W) under the square removals `masks` (K, H, W)
    that lowered the class probability by `drops` (N, K): min over β ≥ 0 of Σ(β·a − b)² / Σb², with
    a the map summed over each square and b the drop; NaN where no square changed anything."""
    predicted = np.einsum("nmhw,khw->nmk", np.asarray(maps, np.float64), masks.astype(np.float64))
    b = np.asarray(drops, np.float64)[:, None, :]
    fit, power, energy = (predicted * b).sum(-1), (predicted**2).sum(-1), (b**2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        explained = np.where((fit > 0) & (power > 0), fit**2 / power, 0.0)
        return np.where(energy > 0, 1 - explained / energy, np.nan)


def sensitivity_inputs(images: np.ndarray, seed: int, indices: np.ndarray, sample: int) -> np.ndarray:
    """`images` (N, H, W, C) plus noise uniform within ±`SENSITIVITY_RADIUS` of each image's value
    range, drawn from (seed, probe index, sample)."""
    noisy = []
    for image, index in zip(images, indices, strict=True):
        rng = np.random.default_rng((seed, int(index), 3, sample))
        radius = SENSITIVITY_RADIUS * float(image.max() - image.min())
        noisy.append(image + rng.uniform(-radius, radius, image.shape))
    return np.stack(noisy).astype(images.dtype)


def max_sensitivity(original: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """(N, M) largest ‖φ(x + δ) − φ(x)‖₂ / ‖φ(x)‖₂ of `perturbed` maps (S, N, M, H, W) against the
    `original` (N, M, H, W); NaN where the original map is zero everywhere."""
    axes = (-2, -1)
    change = np.sqrt(((perturbed - original[None]) ** 2).sum(axis=axes)).max(axis=0)
    size = np.sqrt((np.asarray(original) ** 2).sum(axis=axes))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(size > 0, change / size, np.nan)
