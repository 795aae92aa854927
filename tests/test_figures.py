"""Figures drawn from arrays: the pixels they show, checked against matplotlib's colormaps."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

from reportgen import figures


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def float_colours(maps: np.ndarray, cmap: str) -> np.ndarray:
    """Each map scaled from min(0, its minimum) to its maximum, through the float colormap."""
    low = np.minimum(maps.min(axis=(1, 2), keepdims=True), 0)
    high = maps.max(axis=(1, 2), keepdims=True)
    rgb = colormaps[cmap]((maps - low) / (high - low))[..., :3]
    return (rgb * 255 + 0.5).astype(np.uint8)


def test_colorize_shows_the_colours_of_the_float_colormap() -> None:
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((5, 7, 9)).astype(np.float32)
    maps[2] = np.abs(maps[2])  # a non-negative map starts from 0, not from its minimum
    for cmap in ("viridis", "magma"):
        np.testing.assert_array_equal(figures.colorize(maps, cmap), float_colours(maps, cmap))


def test_channel_across_images_puts_each_chosen_channel_in_its_row() -> None:
    n, h, w, channels = 3, 2, 2, 4
    activations = np.zeros((n, h, w, channels), np.float32)
    for i in range(n):
        for c in range(channels):
            activations[i, (i + c) % h, c % w, c] = 1.0  # one hot pixel per image and channel
    images = np.zeros((n, 8, 8, 3), np.float32)
    images[1] = 1.0  # the second probe image is white, the others black
    chosen = [3, 0]
    picture = decode(figures.channel_across_images(activations, images, chosen))

    zoom = figures.zoom_for(h, 48)
    tile_h, tile_w = h * zoom, w * zoom
    assert picture.shape == (3 * (tile_h + 1) - 1, n * (tile_w + 1) - 1, 3)
    hot = (np.asarray(colormaps["viridis"](1.0)[:3]) * 255 + 0.5).astype(np.uint8)
    cold = (np.asarray(colormaps["viridis"](0.0)[:3]) * 255 + 0.5).astype(np.uint8)
    for i in range(n):
        left = i * (tile_w + 1)
        np.testing.assert_array_equal(picture[:tile_h, left : left + tile_w], 255 if i == 1 else 0)
        for row, c in enumerate(chosen, start=1):
            top = row * (tile_h + 1)
            tile = picture[top : top + tile_h, left : left + tile_w]
            for y in range(h):
                for x in range(w):
                    expected = hot if (y, x) == ((i + c) % h, c % w) else cold
                    cell = tile[y * zoom : (y + 1) * zoom, x * zoom : (x + 1) * zoom]
                    np.testing.assert_array_equal(cell, np.broadcast_to(expected, cell.shape))
    np.testing.assert_array_equal(picture[tile_h], 255)  # the gap between rows is white
    np.testing.assert_array_equal(picture[:, tile_w], 255)  # and between columns


def test_channel_across_many_images_fits_the_page() -> None:
    n, h = 64, 2
    activations = np.ones((n, h, h, 3), np.float32)
    images = np.zeros((n, 8, 8, 3), np.float32)
    picture = decode(figures.channel_across_images(activations, images, [0]))
    assert picture.shape[1] <= figures.PAGE_PIXELS
    tile = (picture.shape[1] + 1) // n - 1
    assert tile % h == 0 and tile > figures.PAGE_PIXELS // (2 * n)  # whole pixels, not needlessly small
    assert picture.shape[0] == 2 * (tile + 1) - 1
