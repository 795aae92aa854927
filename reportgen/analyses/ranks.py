"""Correlations between maps or profiles: Pearson, and Spearman on tie-averaged ranks. Plain numpy,
so comparisons of saved reports can use them without jax."""

from __future__ import annotations

import numpy as np


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    position = np.empty(len(values), np.float64)
    position[order] = np.arange(len(values), dtype=np.float64)
    _, tie, count = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(tie, weights=position) / count)[tie]


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation, None when either side is constant or the sizes differ."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape or a.size < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (Pearson correlation of tie-averaged ranks); None as above."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    return correlation(ranks(a), ranks(b)) if a.shape == b.shape else None
