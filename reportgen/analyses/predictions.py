"""Class probabilities, top-k predictions and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np


def probabilities(logits: jax.Array) -> jax.Array:
    """Softmax of one example's logits."""
    return jax.nn.softmax(logits)


def looks_like_probabilities(outputs: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Whether model outputs (N, K) are already probabilities: every row non-negative and summing
    to 1. A softmax of them would flatten every prediction towards uniform."""
    finite = outputs[np.isfinite(outputs).all(axis=1)]
    if len(finite) == 0 or outputs.shape[1] < 2:
        return False
    return bool((finite >= 0).all() and np.allclose(finite.sum(axis=1), 1.0, atol=tolerance))


@dataclass(frozen=True)
class Predictions:
    """Top-k classes per image and, when labels exist, accuracy and confusion."""

    top_classes: np.ndarray  # (N, k) class indices, most probable first
    top_probs: np.ndarray  # (N, k)
    predicted: np.ndarray  # (N,)
    labels: np.ndarray  # (N,) -1 where unknown
    confusion: np.ndarray | None  # (K, K) counts, rows true, columns predicted

    @property
    def labelled(self) -> np.ndarray:
        """Mask of images with a label."""
        return self.labels >= 0

    @property
    def accuracy(self) -> float | None:
        """Top-1 accuracy over labelled images, or None without labels."""
        mask = self.labelled
        return float((self.predicted[mask] == self.labels[mask]).mean()) if mask.any() else None


def summarize(probs: np.ndarray, labels: np.ndarray, k: int = 5) -> Predictions:
    """Top-k (ties broken by class index) and the confusion matrix of labelled images."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_probs = np.take_along_axis(probs, order, axis=1)
    predicted = order[:, 0]
    confusion = None
    mask = labels >= 0
    if mask.any():
        confusion = np.zeros((probs.shape[1], probs.shape[1]), np.int64)
        np.add.at(confusion, (labels[mask], predicted[mask]), 1)
    return Predictions(order, top_probs, predicted, labels, confusion)
