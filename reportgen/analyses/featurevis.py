"""Activation maximisation: synthesise the input a filter or a class responds to most.

Erhan et al. 2009, "Visualizing Higher-Layer Features of a Deep Network" (gradient ascent on the
input); Simonyan et al. 2013 for class logits; the regularisers, transforms and parameterisations
follow Olah, Mordvintsev & Schubert 2017, "Feature Visualization" (Distill): random jitter, scale
and rotation each step, total variation, L2 and blur penalties, and an image parameterised by a
1/f-scaled Fourier spectrum in a decorrelated colour space. The colour basis is measured on the
model's own probe images rather than borrowed from ImageNet.

Written for one filter (or class); `compute.iterate_examples` vmaps it across filters, which may
belong to several layers at once (`layers_objective`), so that one compiled program serves them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reportgen.analyses.saliency import blur
from reportgen.model.engine import Engine

PARAMETERISATIONS = ("fourier", "pixels")
OBJECTIVES = ("channel_mean", "centre")


@dataclass(frozen=True)
class VisConfig:
    """Static settings of the optimisation."""

    steps: int = 128
    learning_rate: float = 0.2
    parameterisation: str = "fourier"
    decorrelate: bool = True
    jitter: int = 2  # pixels
    scale: tuple[float, float] = (0.95, 1.05)
    rotation_deg: float = 5.0
    tv_weight: float = 0.1
    l2_weight: float = 0.0
    blur_weight: float = 0.0
    objective: str = "channel_mean"
    images_per_filter: int = 1
    diversity_weight: float = 0.0


@dataclass(frozen=True)
class Preprocessing:
    """Display space [0, 1] -> model input space, as jnp constants: (x * scale - mean) / std."""

    scale: float
    mean: np.ndarray
    std: np.ndarray

    def __call__(self, image: jax.Array) -> jax.Array:
        return (image * self.scale - self.mean) / self.std


def colour_basis(images: np.ndarray) -> np.ndarray:
    """Square root of the pixel colour covariance of `images` (N, H, W, C), normalised so its
    largest column has norm 1: multiplying decorrelated noise by it gives natural colour statistics."""
    channels = images.shape[-1]
    if channels == 1:
        return np.ones((1, 1), np.float32)
    covariance = np.cov(images.reshape(-1, channels).T)
    values, vectors = np.linalg.eigh(covariance)
    root = vectors @ np.diag(np.sqrt(np.maximum(values, 1e-8))) @ vectors.T
    return (root / np.linalg.norm(root, axis=0).max()).astype(np.float32)


def _frequency_scale(height: int, width: int) -> np.ndarray:
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    frequency = np.sqrt(fx**2 + fy**2)
    return (1.0 / np.maximum(frequency, 1.0 / max(height, width))).astype(np.float32)


def init_params(config: VisConfig, shape: tuple[int, int, int], key: jax.Array) -> jax.Array:
    """Small random parameters of one image."""
    h, w, c = shape
    if config.parameterisation == "fourier":
        return 0.01 * jax.random.normal(key, (2, c, h, w // 2 + 1))
    if config.parameterisation == "pixels":
        return 0.01 * jax.random.normal(key, shape)
    raise ValueError(f"unknown parameterisation {config.parameterisation!r}; choose one of {PARAMETERISATIONS}")


def to_image(config: VisConfig, params: jax.Array, shape: tuple[int, int, int], basis: np.ndarray) -> jax.Array:
    """Parameters -> an (H, W, C) image in [0, 1] (display space)."""
    h, w, _ = shape
    if config.parameterisation == "fourier":
        spectrum = (params[0] + 1j * params[1]) * _frequency_scale(h, w)
        raw = jnp.fft.irfft2(spectrum, s=(h, w)) * np.sqrt(h * w) / 4.0
        raw = jnp.moveaxis(raw, 0, -1)
    else:
        raw = params
    if config.decorrelate:
        raw = raw @ jnp.asarray(basis).T
    return jax.nn.sigmoid(raw)


def _reflect(index: jax.Array, size: int) -> jax.Array:
    """Integer indices folded into [0, size) by half-sample symmetric reflection (d c b a | a b c d),
    the "reflect" mode of `scipy.ndimage`."""
    folded = jnp.mod(index, 2 * size)
    return jnp.where(folded < size, folded, 2 * size - 1 - folded)


def random_transform(image: jax.Array, key: jax.Array, config: VisConfig) -> jax.Array:
    """Jitter, scale and rotate about the centre in one bilinear warp (edges reflected).

    The four neighbours of every source point are read for all channels in one gather, which
    compiles in a fraction of the time of per-channel `map_coordinates` and gives the same values.
    """
    h, w, c = image.shape
    k_shift, k_scale, k_angle = jax.random.split(key, 3)
    shift = jax.random.randint(k_shift, (2,), -config.jitter, config.jitter + 1).astype(jnp.float32)
    scale = jax.random.uniform(k_scale, (), minval=config.scale[0], maxval=config.scale[1])
    angle = jnp.deg2rad(jax.random.uniform(k_angle, (), minval=-config.rotation_deg, maxval=config.rotation_deg))
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y, x = yy - cy - shift[0], xx - cx - shift[1]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    sy = (cos * y - sin * x) / scale + cy
    sx = (sin * y + cos * x) / scale + cx
    y0, x0 = jnp.floor(sy), jnp.floor(sx)
    ty, tx = sy - y0, sx - x0
    rows = [_reflect(y0.astype(jnp.int32) + d, h) for d in (0, 1)]
    cols = [_reflect(x0.astype(jnp.int32) + d, w) for d in (0, 1)]
    index = jnp.stack([rows[a] * w + cols[b] for a in (0, 1) for b in (0, 1)])  # (4, H, W)
    weight = jnp.stack([wy * wx for wy in (1 - ty, ty) for wx in (1 - tx, tx)])
    corners = image.reshape(h * w, c)[index.reshape(-1)].reshape(4, h, w, c)
    return (corners * weight[..., None]).sum(axis=0)


def total_variation(image: jax.Array) -> jax.Array:
    """Mean absolute difference between neighbouring pixels."""
    return jnp.abs(jnp.diff(image, axis=0)).mean() + jnp.abs(jnp.diff(image, axis=1)).mean()


def _gram(activation: jax.Array) -> jax.Array:
    """The channels' Gram matrix, flattened and scaled to unit norm (a style descriptor)."""
    flat = activation.reshape(-1, activation.shape[-1])
    gram = flat.T @ flat
    return gram.ravel() / (jnp.linalg.norm(gram) + 1e-8)


Objective = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
"""(variables, model-space image, target index, redirect flag) -> (score to maximise, the unit-norm
Gram descriptor of the target layer's output that the diversity penalty compares)."""


def layers_objective(engine: Engine, layers: Sequence[str], kind: str) -> Objective:
    """An objective for the filters of several layers in one program: the target index is
    (position in `layers`, filter). The model is evaluated up to the deepest of them, and only the
    target layer's ReLU redirects gradients while `redirect` is true, so each filter's value and
    gradient equal those of `layer_objective` for its own layer. `kind`: the channel's spatial
    mean, or its centre unit."""
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown objective {kind!r}; choose one of {OBJECTIVES}")
    layers = list(layers)

    def objective(variables: Any, x: jax.Array, index: jax.Array, redirect: jax.Array) -> tuple[jax.Array, jax.Array]:
        slot, channel = index[0], index[1]
        flags = {name: redirect & (slot == k) for k, name in enumerate(layers)}
        outs = engine.layer_outputs(variables, x, layers, relu="redirected", relu_layers=layers, redirect=flags)
        scores, grams = [], []
        for name in layers:
            out = outs[name]
            unit = jnp.take(out, jnp.minimum(channel, out.shape[-1] - 1), axis=-1)
            centre = kind == "centre" and unit.ndim == 2
            scores.append(unit[unit.shape[0] // 2, unit.shape[1] // 2] if centre else unit.mean())
            grams.append(_gram(out))
        width = max(g.shape[0] for g in grams)
        padded = jnp.stack([jnp.pad(g, (0, width - g.shape[0])) for g in grams])
        return jnp.stack(scores)[slot], padded[slot]

    return objective


def layer_objective(engine: Engine, layer: str, kind: str) -> Objective:
    """(variables, model-space image, filter, redirect) -> (score to maximise, descriptor),
    evaluating the model only up to `layer`, whose ReLU redirects gradients while `redirect` is
    true. `kind`: the channel's spatial mean, or its centre unit."""
    group = layers_objective(engine, [layer], kind)

    def objective(variables: Any, x: jax.Array, index: jax.Array, redirect: jax.Array) -> tuple[jax.Array, jax.Array]:
        return group(variables, x, jnp.stack([jnp.zeros_like(index), index]), redirect)

    return objective


def image_mean(variables: Any, x: jax.Array, index: jax.Array, redirect: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An objective that needs no model: the model-space image's mean (and its colour Gram
    descriptor). Visualising it costs what a step costs besides the model."""
    return x.mean(), _gram(x)


def logit_objective(engine: Engine) -> Objective:
    """(variables, model-space image, class, redirect) -> (the class logit, before softmax;
    descriptor); the logits have no ReLU to redirect."""

    def objective(variables: Any, x: jax.Array, index: jax.Array, redirect: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = engine.logits(variables, x)
        return jnp.take(logits, index), _gram(logits)

    return objective


@dataclass(frozen=True)
class Visualiser:
    """Activation maximisation of one filter (or class) as three per-filter functions, so that a
    host loop drives the steps (`compute.iterate_examples`):

    - `init(variables, index, key_data) -> state`
    - `steps` times `step(variables, state, index, key_data, step_number) -> state`
    - `finish(variables, state, index, key_data) -> (images (B, H, W, C) in [0, 1], their final
      objective values (B,) measured without transforms)`; B = images_per_filter.
    """

    init: Callable[..., Any]
    step: Callable[..., Any]
    steps: int
    finish: Callable[..., Any]


def visualise(
    objective: Objective,
    config: VisConfig,
    shape: tuple[int, int, int],
    basis: np.ndarray,
    preprocess: Preprocessing,
) -> Visualiser:
    """The optimisation of one filter's (or class's) images.

    For the first quarter of the steps the target layer's own ReLU passes gradients that would
    raise a negative input, so that a filter silent on the starting noise still moves; the rest
    follow the true gradient. Step t's transforms come from the filter's key folded with t, so the
    result does not depend on how filters are batched.
    """
    schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps, alpha=0.1)
    optimiser = optax.adam(schedule)
    count = config.images_per_filter

    def loss(params: jax.Array, variables: Any, index: jax.Array, key: jax.Array, redirect: jax.Array) -> jax.Array:
        images = jax.vmap(lambda p: to_image(config, p, shape, basis))(params)
        keys = jax.random.split(key, count)
        warped = jax.vmap(lambda image, k: random_transform(image, k, config))(images, keys)
        scores, grams = jax.vmap(lambda image: objective(variables, preprocess(image), index, redirect))(warped)
        # A penalty of weight 0 is left out rather than multiplied by 0: XLA keeps 0 * x (x may be
        # NaN), and the blur penalty's gradient alone cost half of a shallow layer's step.
        penalty = jnp.zeros(())
        if config.tv_weight:
            penalty += config.tv_weight * jax.vmap(total_variation)(images).mean()
        if config.l2_weight:
            penalty += config.l2_weight * ((images - 0.5) ** 2).mean()
        if config.blur_weight:
            penalty += config.blur_weight * jax.vmap(lambda im: ((im - blur(im, 1.0)) ** 2).mean())(images).mean()
        if count > 1 and config.diversity_weight > 0:
            similarity = grams @ grams.T
            penalty += config.diversity_weight * (similarity.sum() - jnp.trace(similarity)) / (count * (count - 1))
        return -scores.mean() + penalty

    def init(variables: Any, index: jax.Array, key_data: jax.Array) -> tuple[jax.Array, Any]:
        init_key, _ = jax.random.split(jax.random.wrap_key_data(key_data))
        params = jax.vmap(lambda k: init_params(config, shape, k))(jax.random.split(init_key, count))
        return params, optimiser.init(params)

    warm = config.steps // 4

    def step(
        variables: Any, state: tuple[jax.Array, Any], index: jax.Array, key_data: jax.Array, t: jax.Array
    ) -> tuple[jax.Array, Any]:
        params, opt_state = state
        _, run_key = jax.random.split(jax.random.wrap_key_data(key_data))
        grads = jax.grad(loss)(params, variables, index, jax.random.fold_in(run_key, t), t < warm)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def finish(
        variables: Any, state: tuple[jax.Array, Any], index: jax.Array, key_data: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        images = jax.vmap(lambda p: to_image(config, p, shape, basis))(state[0])
        final = jax.vmap(lambda image: objective(variables, preprocess(image), index, jnp.asarray(False))[0])(images)
        return images, final

    return Visualiser(init, step, config.steps, finish)
