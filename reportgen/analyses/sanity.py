"""Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Layers are re-initialised from the top down, one more at each stage; a method whose maps stay
rank-correlated with the original maps after every layer is random does not explain the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from reportgen.analyses import ranks
from reportgen.model.load import leaf_paths


def randomised_stages(variables: Any, layers_top_down: Sequence[Sequence[str]], seed: int) -> list[Any]:
    """Variables with the top 1, 2, ... layers' parameters replaced by Gaussian noise.

    Each replaced leaf keeps its shape and the standard deviation of its trained values (or 0.05
    where that is zero), the way a fresh initialisation would scale it.
    """
    paths = leaf_paths(variables)
    leaves, treedef = jax.tree.flatten(variables)
    rng = np.random.default_rng(seed)
    current = [np.asarray(leaf) for leaf in leaves]
    stages = []
    for layer_paths in layers_top_down:
        for path in layer_paths:
            i = paths.index(path)
            std = float(current[i].std()) or 0.05
            current[i] = rng.normal(0.0, std, current[i].shape).astype(current[i].dtype)
        stages.append(jax.tree.unflatten(treedef, [np.array(leaf) for leaf in current]))
    return stages


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); 0 when either is constant."""
    rho = ranks.spearman(a, b)
    return 0.0 if rho is None else rho
