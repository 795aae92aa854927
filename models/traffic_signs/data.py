"""Procedural GTSRB-style traffic sign images.

The 43 class templates from `signs.py` are warped (scale, rotation, perspective, position),
composited over varied backgrounds and degraded (brightness, contrast, colour cast, blur, noise,
occlusion). Everything is vectorised over the batch with numpy and deterministic for a seed.

    images, labels = generate(50_000, seed=0)   # (N, 32, 32, 3) float32 in [0, 1], (N,) int32
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from signs import NUM_CLASSES, SIZE, templates

IMAGE_SIZE = 32


@dataclass(frozen=True)
class Difficulty:
    """Ranges of the random distortions; `hard()` widens them for probe hard cases."""

    scale: tuple[float, float] = (0.55, 0.95)
    rotation_deg: float = 12.0
    shift: float = 0.12
    perspective: float = 0.12
    brightness: tuple[float, float] = (0.55, 1.2)
    blur_prob: float = 0.25
    noise: float = 0.05
    occlusion_prob: float = 0.1


def _warp(labels: np.ndarray, d: Difficulty, rng: np.random.Generator) -> np.ndarray:
    """Sample each sign through a random projective map into a (N, 32, 32, 4) RGBA canvas."""
    n = len(labels)
    scale = rng.uniform(*d.scale, n)
    angle = np.deg2rad(rng.uniform(-d.rotation_deg, d.rotation_deg, n))
    shift = rng.uniform(-d.shift, d.shift, (n, 2)) * (1.0 - scale)[:, None] * 2
    persp = rng.uniform(-d.perspective, d.perspective, (n, 2))
    squash = rng.uniform(0.8, 1.0, n)  # seen from the side: narrower than tall

    # Output pixel centres in [-1, 1].
    axis = (np.arange(IMAGE_SIZE) + 0.5) / IMAGE_SIZE * 2 - 1
    v, u = np.meshgrid(axis, axis, indexing="ij")
    u = u[None] - shift[:, 0, None, None]
    v = v[None] - shift[:, 1, None, None]
    # Inverse perspective: divide by a plane tilted in x and y.
    w = 1.0 + persp[:, 0, None, None] * u + persp[:, 1, None, None] * v
    u, v = u / w, v / w
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    x = (cos * u + sin * v) / (scale * squash)[:, None, None]
    y = (-sin * u + cos * v) / scale[:, None, None]
    # Template coordinates in pixels.
    px = (x + 1) / 2 * SIZE - 0.5
    py = (y + 1) / 2 * SIZE - 0.5
    return _bilinear(templates(), labels, px, py)


def _bilinear(tmpl: np.ndarray, labels: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Bilinear lookup of tmpl[labels] at (px, py); transparent outside the template."""
    x0 = np.floor(px).astype(np.int32)
    y0 = np.floor(py).astype(np.int32)
    fx = (px - x0)[..., None].astype(np.float32)
    fy = (py - y0)[..., None].astype(np.float32)
    k = labels[:, None, None]
    out = np.zeros((*px.shape, 4), np.float32)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = ((xi >= 0) & (xi < SIZE) & (yi >= 0) & (yi < SIZE))[..., None]
            sample = tmpl[k, np.clip(yi, 0, SIZE - 1), np.clip(xi, 0, SIZE - 1)]
            out += np.where(inside, sample, 0.0) * wy * wx
    return out


def _backgrounds(n: int, rng: np.random.Generator) -> np.ndarray:
    """Varied (N, 32, 32, 3) backgrounds: gradients, smooth noise, stripes and scenery."""
    s = IMAGE_SIZE
    yy, xx = np.meshgrid(np.linspace(0, 1, s), np.linspace(0, 1, s), indexing="ij")
    kind = rng.integers(0, 4, n)
    c1 = rng.uniform(0, 1, (n, 1, 1, 3))
    c2 = rng.uniform(0, 1, (n, 1, 1, 3))
    direction = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    t = (np.cos(direction) * xx + np.sin(direction) * yy + 1.5) / 3
    gradient = c1 + (c2 - c1) * t[..., None]

    coarse = rng.uniform(0, 1, (n, 5, 5, 3))
    idx = np.linspace(0, 4, s)
    i0 = np.floor(idx).astype(int).clip(0, 3)
    f = (idx - i0)[None, :, None, None]
    rows = coarse[:, i0] * (1 - f) + coarse[:, i0 + 1] * f
    f = (idx - i0)[None, None, :, None]
    noise = rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f
    noise = 0.5 * noise + 0.5 * c1

    freq = rng.uniform(3, 10, (n, 1, 1))
    stripes = np.sin(freq * (np.cos(direction) * xx + np.sin(direction) * yy) * 2 * np.pi) > 0
    texture = np.where(stripes[..., None], c1, 0.6 * c1 + 0.4 * c2)

    horizon = rng.uniform(0.3, 0.7, (n, 1, 1))
    sky = np.array([0.55, 0.7, 0.9]) * rng.uniform(0.6, 1.1, (n, 1, 1, 1))
    ground = np.array([0.3, 0.45, 0.25]) * rng.uniform(0.5, 1.3, (n, 1, 1, 3))
    scenery = np.where((yy[None] < horizon)[..., None], sky, ground)
    scenery = scenery + 0.15 * (noise - 0.5)

    options = np.stack([gradient, noise, texture, scenery])
    return options[kind, np.arange(n)].astype(np.float32)


def _blur(images: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Blend each image with its 3x3 binomial blur by `amount` in [0, 1]; applied twice."""
    for _ in range(2):
        p = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        h = 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]
        b = 0.25 * h[:, :-2] + 0.5 * h[:, 1:-1] + 0.25 * h[:, 2:]
        images = images + amount[:, None, None, None] * (b - images)
    return images


def _occlude(images: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Paint a random rectangle (a branch, a sticker) over part of some images."""
    n, s = len(images), IMAGE_SIZE
    chosen = rng.uniform(0, 1, n) < prob
    w = rng.integers(3, 8, n)
    h = rng.integers(3, 8, n)
    x0 = rng.integers(4, s - 14, n)
    y0 = rng.integers(4, s - 14, n)
    colour = rng.uniform(0, 0.8, (n, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:s, 0:s]
    mask = (
        chosen[:, None, None]
        & (xx[None] >= x0[:, None, None])
        & (xx[None] < (x0 + w)[:, None, None])
        & (yy[None] >= y0[:, None, None])
        & (yy[None] < (y0 + h)[:, None, None])
    )
    return np.where(mask[..., None], colour[:, None, None, :], images)


def render(labels: np.ndarray, seed: int | list[int], difficulty: Difficulty = Difficulty()) -> np.ndarray:
    """Images of the given class labels, (N, 32, 32, 3) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, np.int32)
    n = len(labels)
    d = difficulty
    sign = _warp(labels, d, rng)
    alpha = sign[..., 3:]
    images = sign[..., :3] + (1 - alpha) * _backgrounds(n, rng)  # templates are premultiplied
    contrast = rng.uniform(0.7, 1.2, (n, 1, 1, 1))
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    images = mean + (images - mean) * contrast
    images = images * rng.uniform(*d.brightness, (n, 1, 1, 1))
    images = images * rng.uniform(0.85, 1.15, (n, 1, 1, 3))
    blurred = rng.uniform(0, 1, n) < d.blur_prob
    images = _blur(images, np.where(blurred, rng.uniform(0.5, 1.0, n), 0.0))
    images = _occlude(images, d.occlusion_prob, rng)
    images = images + rng.normal(0, 1, images.shape) * rng.uniform(0, d.noise, (n, 1, 1, 1))
    return np.clip(images, 0, 1).astype(np.float32)


def generate(n: int, seed: int, difficulty: Difficulty = Difficulty()) -> tuple[np.ndarray, np.ndarray]:
    """`n` images with balanced random labels; returns (images, labels)."""
    rng = np.random.default_rng([seed, 1])
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int32)
    chunks = [render(labels[i : i + 4096], seed=[seed, 2, i], difficulty=difficulty) for i in range(0, n, 4096)]
    images = np.concatenate(chunks) if chunks else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    return images, labels
