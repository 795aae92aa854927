"""Sanity checks of attribution maps: cascading model-parameter randomisation (Adebayo et al.
2018, "Sanity Checks for Saliency Maps") and class sensitivity (Sixt, Granz & Landgraf 2020,
"When Explanations Lie: Why Many Modified BP Attributions Fail").

Layers are re-initialised from the top down, one more at each stage; a method whose maps stay
similar to the original maps once the layers that decide the class are random does not explain
the decision. A method whose map for another class is the map for the predicted class does not
show what the class depends on. Similarity is measured both ways the papers do: Spearman rank
correlation of the maps' absolute values, and SSIM of the maps scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from scipy import ndimage

from reportgen.analyses import ranks
from reportgen.model.load import leaf_paths


def randomised_stages(
    variables: Any, layers_top_down: Sequence[Sequence[str]], seed: int, cumulative: bool = True
) -> Iterator[Any]:
    """Variables with the top 1, 2, ... layers' parameters replaced by Gaussian noise (cumulative),
    or with only the 1st, 2nd, ... layer's (independent, Adebayo et al.'s second variant), one
    stage at a time.

    Each replaced leaf keeps its shape and the standard deviation of its trained values (or 0.05
    where that is zero), the way a fresh initialisation would scale it; a layer gets the same
    noise in both variants. Running statistics of normalisation layers stay as they are
    (`is_statistic`): they summarise data rather than hold learned weights, and noise in place
    of a variance would make it negative and every later activation NaN.
    """
    paths = leaf_paths(variables)
    leaves, treedef = jax.tree.flatten(variables)
    rng = np.random.default_rng(seed)
    original = [np.asarray(leaf) for leaf in leaves]
    current = list(original)
    for layer_paths in layers_top_down:
        if not cumulative:
            current = list(original)
        for path in (p for p in layer_paths if not is_statistic(p)):
            i = paths.index(path)
            std = float(original[i].std()) or 0.05
            current[i] = rng.normal(0.0, std, original[i].shape).astype(original[i].dtype)
        yield jax.tree.unflatten(treedef, list(current))


def is_statistic(path: str) -> bool:
    """A normalisation layer's running mean or variance: Linen keeps them in the batch_stats
    collection; NNX's BatchNorm names them mean and var."""
    return path.startswith("batch_stats/") or path.rsplit("/", 1)[-1] in ("mean", "var")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); 0 when either is constant."""
    rho = ranks.spearman(a, b)
    return 0.0 if rho is None else rho


SSIM_SIGMA = 1.5
"""Standard deviation in pixels of SSIM's Gaussian window (Wang et al. 2004)."""


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004, "Image Quality Assessment")
    of two maps' magnitudes, each divided by its largest magnitude (data range 1): local means,
    variances and covariance under a Gaussian window, reflected at the borders, averaged over
    the map. NaN when either map is constant: it has no structure to compare."""
    x, y = (np.abs(np.asarray(m, np.float64)) for m in (a, b))
    if x.max() == x.min() or y.max() == y.min():
        return float("nan")
    x, y = x / x.max(), y / y.max()
    c1, c2 = 0.01**2, 0.03**2

    def local(m: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(m, SSIM_SIGMA, mode="reflect", truncate=3.5)

    mx, my = local(x), local(y)
    vx, vy, cov = local(x * x) - mx**2, local(y * y) - my**2, local(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(index.mean())


def similarity(original: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M,) mean Spearman correlation of absolute values and (M,) mean SSIM between each method's
    maps in `original` and `other`, both (N, M, H, W); SSIM over the image pairs where it is
    defined (NaN where it is nowhere)."""
    n, m = original.shape[:2]
    rho = np.array([[spearman(np.abs(original[i, k]), np.abs(other[i, k])) for i in range(n)] for k in range(m)])
    structure = np.array([[ssim(original[i, k], other[i, k]) for i in range(n)] for k in range(m)])
    return rho.mean(axis=1), finite_mean(structure, axis=1)


def finite_mean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean of the finite values along `axis`; NaN where there are none (without numpy's warning)."""
    counted = np.isfinite(values).sum(axis=axis)
    total = np.where(np.isfinite(values), values, 0).sum(axis=axis)
    return np.where(counted > 0, total / np.maximum(counted, 1), np.nan)
