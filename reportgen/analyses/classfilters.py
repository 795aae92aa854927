"""Which filters decide each class: every conv filter's contribution to the class logit.

For an image x of class k and a layer with activation A (h, w, C), filter f contributes
c_f = Σ_ij A_ijf · ∂logit_k/∂A_ijf, the first-order share of the logit carried by that filter
(activation × gradient, as in Grad-CAM's channel weighting without averaging the gradient first;
Selvaraju et al. 2017, "Grad-CAM", and Shrikumar et al. 2016, "Not Just a Black Box", at a
layer instead of the input). For a network whose layers after A are linear up to the logit the
contributions add up to the logit minus the later biases. The Grad-CAM channel weight
mean_ij ∂logit_k/∂A_ijf is kept beside it, and, where asked for, the filter's conductance
(Dhamdhere, Yan & Sundararajan 2018, "How Important Is a Neuron?"): the integrated gradient
that flows through the filter along the straight path from a baseline image to x,
Σ_ij ∫ ∂logit_k/∂A_ijf dA_ijf, whose sum over a layer every path crosses is
logit_k(x) − logit_k(baseline). All are averaged over the probe images of class k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # the report's views read LayerEvidence and class_order, and import no jax
    import jax

    from reportgen.model.engine import Engine, Gradients


def class_gradients(
    engine: Engine, variables: Any, image: jax.Array, target: jax.Array, layers: Sequence[str]
) -> Gradients:
    """One image's named layer outputs and the gradients of the target's logit there."""

    def objective(logits: jax.Array, _: dict) -> jax.Array:
        return logits[target]

    return engine.gradients(variables, image, layers, objective)


def path_gradients(
    engine: Engine,
    variables: Any,
    image: jax.Array,
    baseline: jax.Array | np.ndarray,
    target: jax.Array,
    layers: Sequence[str],
    steps: int,
) -> Gradients:
    """`class_gradients` at the steps + 1 points baseline + s/steps · (image − baseline),
    s = 0 … steps, stacked on axis 0 (the last point is the image)."""
    import jax  # here, not at the top: the report's views import this module without jax

    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32).reshape(-1, *([1] * image.ndim))
    points = baseline + alphas * (image - baseline)
    return jax.vmap(lambda x: class_gradients(engine, variables, x, target, layers))(points)


def conductance(activations: jax.Array, gradients: jax.Array) -> jax.Array:
    """Each filter's conductance (C,) from a layer's activations and gradients (S + 1, h, w, C)
    at the points of `path_gradients`: Σ_ij ∫ ∂logit/∂A dA by the trapezoid rule along the path."""
    mean_gradient = 0.5 * (gradients[1:] + gradients[:-1])
    return (mean_gradient * (activations[1:] - activations[:-1])).sum(axis=(0, 1, 2))


def filter_evidence(activation: jax.Array, gradient: jax.Array) -> dict[str, jax.Array]:
    """Each filter's Σ_ij A·∂logit/∂A ("contribution") and mean_ij ∂logit/∂A ("weight"), (C,)."""
    return {"contribution": (activation * gradient).sum(axis=(0, 1)), "weight": gradient.mean(axis=(0, 1))}


class ImageEvidence(NamedTuple):
    """One image's named layer outputs and the gradients of its class logit there, and each
    filter's conductance where a path was taken."""

    outputs: dict[str, jax.Array]
    gradients: dict[str, jax.Array]
    conductance: dict[str, jax.Array]  # {} without a path

    def per_filter(self, layers: Sequence[str]) -> dict[str, dict[str, jax.Array]]:
        """{layer: `filter_evidence`, with "conductance" where it was computed}."""
        return {
            name: filter_evidence(self.outputs[name], self.gradients[name])
            | ({"conductance": self.conductance[name]} if name in self.conductance else {})
            for name in layers
        }


def image_evidence(
    engine: Engine,
    variables: Any,
    image: jax.Array,
    target: jax.Array,
    layers: Sequence[str],
    baseline: jax.Array | np.ndarray | None = None,
    steps: int = 0,
) -> ImageEvidence:
    """The named layers' outputs and gradients of the target's logit at the image; with `steps`,
    from the last point of the path from `baseline`, with the conductance of every layer's filters."""
    if not steps:
        result = class_gradients(engine, variables, image, target, layers)
        return ImageEvidence(result.outputs, result.layer_grads, {})
    assert baseline is not None
    path = path_gradients(engine, variables, image, baseline, target, layers, steps)
    return ImageEvidence(
        {name: path.outputs[name][-1] for name in layers},
        {name: path.layer_grads[name][-1] for name in layers},
        {name: conductance(path.outputs[name], path.layer_grads[name]) for name in layers},
    )


def share(contribution: np.ndarray) -> np.ndarray:
    """(K, C) each column's contribution over the row's total positive contribution (NaN where
    a row has none)."""
    positive = np.nansum(np.maximum(contribution, 0), axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(positive > 0, contribution / positive, np.nan)


@dataclass(frozen=True)
class LayerEvidence:
    """One layer's filters against every class, averaged over each class's probe images."""

    layer: str
    contribution: np.ndarray  # (K, C) mean activation × gradient; NaN rows for classes without images
    weight: np.ndarray  # (K, C) mean Grad-CAM channel weight
    conductance: np.ndarray | None = None  # (K, C) mean conductance, where computed

    def share(self) -> np.ndarray:
        """(K, C) each filter's contribution over the class's total positive contribution."""
        return share(self.contribution)

    def top(self, k: int, count: int) -> np.ndarray:
        """The `count` filters contributing most to class k, largest first."""
        row = np.nan_to_num(self.contribution[k], nan=-np.inf)
        return np.argsort(-row, kind="stable")[:count]


def per_class(values: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, C) mean of the (N, C) per-image values over each class's images; NaN where a class has none."""
    sums = np.zeros((num_classes, values.shape[1]), np.float64)
    np.add.at(sums, classes, values)
    counts = np.bincount(classes, minlength=num_classes)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def filter_order(share: np.ndarray) -> np.ndarray:
    """Filters grouped by the class (row of `share`, in its order) they give the largest share
    to, strongest first within a class; filters serving no class last."""
    values = np.nan_to_num(share, nan=-np.inf)
    best_row = values.argmax(axis=0)
    best = values.max(axis=0)
    serving = best > 0
    keys = np.where(serving, best_row, len(share))
    return np.lexsort((-np.where(serving, best, 0.0), keys))


def aggregate(
    per_image: dict[str, dict[str, np.ndarray]], layers: Sequence[str], targets: np.ndarray, num_classes: int
) -> list[LayerEvidence]:
    """The named layers' `ImageEvidence.per_filter` values over N images (stacked on axis 0), with conductance
    where it was computed, averaged per class, in the order of `layers`."""
    return [
        LayerEvidence(
            name,
            per_class(per_image[name]["contribution"], targets, num_classes),
            per_class(per_image[name]["weight"], targets, num_classes),
            per_class(per_image[name]["conductance"], targets, num_classes)
            if "conductance" in per_image[name]
            else None,
        )
        for name in layers
    ]


def class_order(contribution: np.ndarray) -> np.ndarray:
    """Classes ordered so that classes relying on the same filters sit together: a greedy
    nearest-neighbour chain over the cosine similarity of their contribution rows, starting from
    the class whose row is most similar to all others. Classes without images go last."""
    present = np.flatnonzero(~np.isnan(contribution).all(axis=1))
    rows = np.nan_to_num(contribution[present])
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = rows / np.where(norms > 0, norms, 1.0)
    similarity = unit @ unit.T
    if len(present) == 0:
        return np.arange(len(contribution))
    chain = [int(np.argmax(similarity.sum(axis=1)))]
    left = set(range(len(present))) - set(chain)
    while left:
        candidates = sorted(left)
        nearest = candidates[int(np.argmax(similarity[chain[-1], candidates]))]
        chain.append(nearest)
        left.remove(nearest)
    absent = np.setdiff1d(np.arange(len(contribution)), present)
    return np.concatenate([present[chain], absent]).astype(int)
