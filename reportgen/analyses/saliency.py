"""Gradient attributions for one example: saliency, guided backprop, deconvnet, gradient × input,
SmoothGrad and Integrated Gradients. Each returns a signed, un-normalised (H, W, C) map.

The target is a class index; pass -1 for the model's predicted class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from reportgen.model.engine import Engine, ReluRule

IG_RULES = ("riemann", "trapezoid", "gauss-legendre")
IG_BASELINES = ("black", "blurred", "uniform")


def resolve_target(logits: jax.Array, target: jax.Array) -> jax.Array:
    """`target`, or the arg-max class where it is negative."""
    return jnp.where(target < 0, jnp.argmax(jax.lax.stop_gradient(logits)), target)


def input_gradient(
    engine: Engine, variables: Any, image: jax.Array, target: jax.Array, relu: ReluRule = "standard"
) -> jax.Array:
    """d logit[target] / d image, with the chosen ReLU backward rule."""

    def objective(logits: jax.Array, _: dict) -> jax.Array:
        return logits[resolve_target(logits, target)]

    return engine.gradients(variables, image, [], objective, relu=relu).image_grad


def saliency(engine: Engine, variables: Any, image: jax.Array, target: jax.Array) -> jax.Array:
    """Vanilla gradient (Simonyan, Vedaldi & Zisserman 2013, "Deep Inside Convolutional Networks")."""
    return input_gradient(engine, variables, image, target)


def guided_backprop(engine: Engine, variables: Any, image: jax.Array, target: jax.Array) -> jax.Array:
    """Guided backpropagation (Springenberg et al. 2014, "Striving for Simplicity")."""
    return input_gradient(engine, variables, image, target, relu="guided")


def deconvnet(engine: Engine, variables: Any, image: jax.Array, target: jax.Array) -> jax.Array:
    """Deconvnet backward pass (Zeiler & Fergus 2014, "Visualizing and Understanding CNNs")."""
    return input_gradient(engine, variables, image, target, relu="deconvnet")


def gradient_x_input(engine: Engine, variables: Any, image: jax.Array, target: jax.Array) -> jax.Array:
    """Gradient times input (Shrikumar et al. 2016, "Not Just a Black Box")."""
    return input_gradient(engine, variables, image, target) * image


def gradient_sum(engine: Engine, variables: Any, points: jax.Array, weights: jax.Array, target: jax.Array) -> jax.Array:
    """Σ_j weights[j] · d logit[target] / d x at each of `points` (B, H, W, C)."""
    grads = jax.vmap(lambda x: input_gradient(engine, variables, x, target))(points)
    return jnp.tensordot(weights, grads, axes=1)


def smoothgrad_part(
    engine: Engine,
    variables: Any,
    image: jax.Array,
    target: jax.Array,
    key_data: jax.Array,
    samples: jax.Array,
    weights: jax.Array,
    noise: float,
) -> jax.Array:
    """The share of `samples` (sample indices) in SmoothGrad's mean gradient over Gaussian-noised
    copies (Smilkov et al. 2017, "SmoothGrad"); `weights` are 1/S, or 0 for padding.

    `noise` is the standard deviation as a fraction of the image's value range. Sample i's noise
    comes from the example's key folded with i, so any split of the samples gives the same sum.
    """
    key = jax.random.wrap_key_data(key_data)
    sigma = noise * (image.max() - image.min())
    noisy = jax.vmap(lambda i: image + sigma * jax.random.normal(jax.random.fold_in(key, i), image.shape))(samples)
    return gradient_sum(engine, variables, noisy, weights, target)


def blur(image: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of an (H, W, C) image with edge padding."""
    radius = max(1, int(3 * sigma))
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    rows = jnp.zeros((h, padded.shape[1], image.shape[2]), image.dtype)
    for i in range(2 * radius + 1):
        rows = rows + kernel[i] * padded[i : i + h]
    out = jnp.zeros_like(image)
    for i in range(2 * radius + 1):
        out = out + kernel[i] * rows[:, i : i + w]
    return out


def baseline(image: jax.Array, kind: str, key: jax.Array, black: ArrayLike) -> jax.Array:
    """The Integrated Gradients starting point: black (in display space), blurred, or uniform noise.

    `black` is the model-space image of a black picture (zeros after preprocessing).
    """
    if kind == "black":
        return jnp.broadcast_to(black, image.shape)
    if kind == "blurred":
        return blur(image, sigma=max(image.shape[0], image.shape[1]) / 8)
    if kind == "uniform":
        low, high = image.min(), image.max()
        return jax.random.uniform(key, image.shape, image.dtype, low, high)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {IG_BASELINES}")


def path_points(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation coefficients in [0, 1] and their quadrature weights (summing to 1)."""
    if rule == "riemann":  # right Riemann sum
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    if rule == "trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return alphas, weights
    if rule == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    raise ValueError(f"unknown integration rule {rule!r}; choose one of {IG_RULES}")


def integrated_gradients_part(
    engine: Engine,
    variables: Any,
    image: jax.Array,
    target: jax.Array,
    start: jax.Array,
    alphas: jax.Array,
    weights: jax.Array,
) -> jax.Array:
    """The share of path points `alphas` (quadrature weights `weights`, 0 for padding) in
    (x − x′) ⊙ ∫ ∇f(x′ + α(x − x′)) dα (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution").

    Summed over all points of `path_points`, the map sums to f(x) − f(x′) up to the quadrature
    error (completeness).
    """
    path = start + alphas[:, None, None, None] * (image - start)
    return (image - start) * gradient_sum(engine, variables, path, weights, target)


@dataclass(frozen=True)
class GradientMaps:
    """Saliency, gradient × input and every CAM layer's activation and gradient, from one pass."""

    saliency: jax.Array
    gradient_x_input: jax.Array
    logits: jax.Array
    target: jax.Array
    activations: dict[str, jax.Array]
    gradients: dict[str, jax.Array]


def shared_pass(engine: Engine, variables: Any, image: jax.Array, target: jax.Array, layers: list[str]) -> GradientMaps:
    """One forward and one backward pass: the input gradient and the gradient at every named layer."""

    def objective(logits: jax.Array, _: dict) -> jax.Array:
        return logits[resolve_target(logits, target)]

    result = engine.gradients(variables, image, layers, objective)
    grad_x = result.image_grad
    target = resolve_target(result.logits, target)
    return GradientMaps(grad_x, grad_x * image, result.logits, target, result.outputs, result.layer_grads)
