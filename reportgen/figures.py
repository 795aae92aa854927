"""numpy arrays -> PNG bytes: image grids, activation maps, filter grids and matplotlib charts.

Deterministic output: Pillow writes no timestamps, matplotlib gets no Software metadata, and
charts are drawn on standalone `Figure` objects (no pyplot global state) with mathtext parsing
off, so user text such as `$x$` in a class name is drawn literally.
"""

from __future__ import annotations

import functools
import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

PAGE_PIXELS = 2176
"""Device pixels across the report's widest figure column (72rem less padding at 2x density): a
wider figure is shown scaled down, so pixels beyond this are never seen."""

CHART_RC: Any = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 10, "svg.hashsalt": "reportgen"}


def finite(values: np.ndarray) -> np.ndarray:
    """NaN and infinities as 0: a model with broken weights still gets every figure (the findings
    say which layers and how many channels are not finite)."""
    return np.nan_to_num(np.asarray(values, np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8 (NaN as 0, values clipped); uint8 passes through."""
    if rgb.dtype == np.uint8:
        return rgb
    return (np.clip(np.nan_to_num(rgb), 0, 1) * 255 + 0.5).astype(np.uint8)


Z_RLE = 3
"""zlib's run-length strategy. It deflates the blocky, colormapped activation figures two to
five times faster than the default strategy, for files about 15 % larger (ResNet-18, every channel
on every probe image); on photographs and overlays it gives files up to three times larger."""


def png(rgb: np.ndarray, runs: bool = False) -> bytes:
    """Encode an (H, W, 3) float image in [0, 1] or uint8 image as PNG; `runs`: with `Z_RLE`."""
    strategy = {"compress_type": Z_RLE} if runs else {}
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(rgb)).save(buffer, format="PNG", compress_level=6, **strategy)
    return buffer.getvalue()


def to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) with C in {1, 3} -> (N, H, W, 3)."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images[..., :3]


def enlarge(tiles: np.ndarray, zoom: int) -> np.ndarray:
    """(N, h, w, 3) tiles with every pixel repeated `zoom` times along both sides."""
    return tiles.repeat(zoom, axis=1).repeat(zoom, axis=2) if zoom > 1 else tiles


def canvas(rows: int, columns: int, h: int, w: int, gap: int, background: float, dtype: Any) -> np.ndarray:
    """A blank image for rows x columns tiles of h x w pixels with `gap` pixels between them, in
    `dtype` (the background, given in [0, 1], scaled to 255 for uint8)."""
    fill = round(background * 255) if dtype == np.uint8 else background
    return np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), fill, dtype)


def paste(board: np.ndarray, tile: np.ndarray, row: int, column: int, gap: int) -> None:
    """Copy an (h, w, 3) tile into cell (row, column) of a `canvas`."""
    h, w, _ = tile.shape
    board[row * (h + gap) : row * (h + gap) + h, column * (w + gap) : column * (w + gap) + w] = tile


def grid(tiles: np.ndarray, columns: int, zoom: int = 1, gap: int = 1, background: float = 1.0) -> np.ndarray:
    """Arrange (N, h, w, 3) tiles row by row, each enlarged `zoom` times, with `gap` pixels between,
    in the tiles' dtype (float in [0, 1] or uint8)."""
    tiles = enlarge(tiles, zoom)
    n, h, w, _ = tiles.shape
    columns = max(1, min(columns, n))
    dtype = np.uint8 if tiles.dtype == np.uint8 else np.float32
    board = canvas(-(-n // columns), columns, h, w, gap, background, dtype)
    for i in range(n):
        paste(board, tiles[i], *divmod(i, columns), gap)
    return board


def zoom_for(side: int, target: int = 64) -> int:
    """An integer enlargement that brings a side of `side` pixels near `target`."""
    return max(1, round(target / max(side, 1)))


@functools.cache
def _palette(cmap: str) -> np.ndarray:
    """The colormap's 256 colours as uint8 RGB."""
    return to_uint8(colormaps[cmap](np.arange(256))[:, :3].astype(np.float32))


def colorize(maps: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """(N, h, w) maps -> (N, h, w, 3) uint8, each scaled to its own maximum (0 stays the darkest
    colour). Looks the colours up in a 256-entry palette, binned as matplotlib bins a float in [0, 1]
    (so the pixels are those of the float colormap), at a quarter of the memory of float RGB."""
    maps = finite(maps)
    low = np.minimum(maps.min(axis=(1, 2), keepdims=True), 0)
    high = maps.max(axis=(1, 2), keepdims=True)
    scaled = (maps - low) / np.where(high > low, high - low, 1)
    return _palette(cmap)[np.minimum((scaled * 256).astype(np.int32), 255)]


def channel_grid(activation: np.ndarray, columns: int = 16) -> bytes:
    """All channels of one example's (h, w, C) activation as a grid of heatmaps."""
    maps = np.moveaxis(activation, -1, 0)
    return png(grid(colorize(maps), columns, zoom_for(maps.shape[1], 48)), runs=True)


def channel_across_images(activations: np.ndarray, images: np.ndarray, channels: Sequence[int]) -> bytes:
    """Rows: the probe images, then each chosen channel's map on each image (N, h, w, C). Drawn one
    row at a time into a uint8 canvas: with every channel of a deep layer the figure is tens of
    thousands of pixels tall. Maps are enlarged to about 48 pixels, less where the row of images
    would be wider than the page."""
    n, h, w, _ = activations.shape
    zoom = max(1, min(zoom_for(h, 48), (PAGE_PIXELS // n - 1) // w))
    board = canvas(1 + len(channels), n, h * zoom, w * zoom, 1, 1.0, np.uint8)
    rows = itertools.chain(
        [to_uint8(_resize_nearest(to_rgb(images), h * zoom, w * zoom))],
        (enlarge(colorize(activations[..., c]), zoom) for c in channels),
    )
    for r, tiles in enumerate(rows):
        for column, tile in enumerate(tiles):
            paste(board, tile, r, column, 1)
    return png(board, runs=True)


def _resize_nearest(images: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = (np.arange(h) * images.shape[1] / h).astype(int)
    xs = (np.arange(w) * images.shape[2] / w).astype(int)
    return images[:, ys][:, :, xs]


def filter_grid(kernel: np.ndarray, columns: int = 16) -> bytes:
    """Convolution filters (kh, kw, C_in, F): in colour when C_in is 3, else the per-filter mean
    over input channels on a diverging scale (blue negative, red positive)."""
    kh, _, cin, _ = kernel.shape
    filters = np.moveaxis(finite(kernel), -1, 0)
    if cin == 3:
        low = filters.min(axis=(1, 2, 3), keepdims=True)
        high = filters.max(axis=(1, 2, 3), keepdims=True)
        tiles = (filters - low) / np.where(high > low, high - low, 1)
    else:
        mean = filters.mean(axis=-1)
        bound = np.abs(mean).max(axis=(1, 2), keepdims=True)
        tiles = colormaps["RdBu_r"](0.5 + 0.5 * mean / np.where(bound > 0, bound, 1))[..., :3]
    return png(grid(tiles.astype(np.float32), columns, zoom_for(kh, 48), gap=2))


def thumbnail(image: np.ndarray, zoom: int = 3) -> bytes:
    """One probe image enlarged."""
    return png(grid(to_rgb(image[None]), 1, zoom, gap=0))


def _save(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def statistics_chart(mean: np.ndarray, firing: np.ndarray, maximum: np.ndarray) -> bytes:
    """Histograms of per-filter mean activation and firing fraction, and the max per filter."""
    with matplotlib.rc_context(CHART_RC):
        fig = Figure(figsize=(9, 2.4))
        # Fixed margins, wide enough for six-character tick labels: this chart is drawn for every
        # layer, and a layout engine's text measurements took 40 % of its time.
        fig.subplots_adjust(left=0.08, right=0.99, bottom=0.2, top=0.88, wspace=0.45)
        left, middle, right = fig.subplots(1, 3)
        left.stairs(*np.histogram(mean[np.isfinite(mean)], bins=30), fill=True, color="#4063a8")
        left.set(title="Mean activation per filter", xlabel="mean activation", ylabel="filters")
        middle.stairs(
            *np.histogram(firing[np.isfinite(firing)], bins=np.linspace(0, 1, 21)), fill=True, color="#d08a2e"
        )
        middle.set(title="Fraction of probe images where it fires", xlabel="fraction", ylabel="filters")
        _per_filter(right, finite(maximum), "#3c8d5a")
        right.set(title="Maximum activation per filter", xlabel="filter", ylabel="max")
        return _save(fig)


def _per_filter(ax: Axes, values: np.ndarray, colour: str) -> None:
    """One bar per filter, drawn as a single filled outline (hundreds of bar patches take a
    second to lay out)."""
    ax.stairs(values, np.arange(len(values) + 1) - 0.5, fill=True, color=colour, baseline=0)


def confusion_chart(confusion: np.ndarray) -> bytes:
    """Confusion matrix, rows true class, columns predicted class (by class index)."""
    k = confusion.shape[0]
    with matplotlib.rc_context(CHART_RC):
        side = min(9.0, 2.5 + k * 0.14)
        fig = Figure(figsize=(side, side * 0.9), layout="constrained")
        ax = fig.subplots()
        shown = np.where(confusion > 0, confusion, np.nan)
        image = ax.imshow(shown, cmap="Blues", vmin=0, interpolation="nearest")
        ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (probe images)")
        step = max(1, k // 15)
        ax.set_xticks(range(0, k, step))
        ax.set_yticks(range(0, k, step))
        for t, p in zip(*np.nonzero((confusion > 0) & ~np.eye(k, dtype=bool)), strict=True):
            ax.add_patch(
                matplotlib.patches.Rectangle((p - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="#c0392b", lw=1.2)
            )
        fig.colorbar(image, ax=ax, shrink=0.8, label="images")
        return _save(fig)


def evidence_heatmap(share: np.ndarray, class_names: Sequence[str], filters: np.ndarray, layer: str) -> bytes:
    """Classes (rows, in the given order) against filters (columns, labelled by `filters`): each
    filter's share of the class's evidence at `layer`, red for evidence for, blue against."""
    k, c = share.shape
    values = finite(share)
    top = float(np.quantile(np.abs(values), 0.995)) or 1.0
    with matplotlib.rc_context(CHART_RC):
        fig = Figure(figsize=(min(11.0, 3.0 + c * 0.05), 1.4 + k * 0.13), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(values, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(k), [name[:28] for name in class_names], fontsize=6)
        step = max(1, c // 24)
        ax.set_xticks(range(0, c, step), [str(int(f)) for f in filters[::step]], fontsize=6, rotation=90)
        ax.set(
            xlabel=f"{layer} filter (ordered by the class it serves most)",
            title=f"Share of each class's evidence at {layer}",
        )
        fig.colorbar(image, ax=ax, shrink=0.6, label="share of the class's positive evidence")
        return _save(fig)


def filter_norm_chart(kernel: np.ndarray) -> bytes:
    """L2 norm of each filter's weights."""
    norms = finite(np.sqrt((kernel.reshape(-1, kernel.shape[-1]).astype(np.float64) ** 2).sum(axis=0)))
    with matplotlib.rc_context(CHART_RC):
        fig = Figure(figsize=(9, 1.8))
        fig.subplots_adjust(left=0.085, right=0.99, bottom=0.27, top=0.86)  # as `statistics_chart`
        ax = fig.subplots()
        _per_filter(ax, norms, "#6b5ea8")
        ax.set(title="Weight norm per filter", xlabel="filter", ylabel="L2 norm")
        return _save(fig)


def overlay(image: np.ndarray, heat: np.ndarray, signed: bool) -> np.ndarray:
    """A (H, W) map over the grayscale image: inferno from 0 to the map's maximum, or for signed maps
    red (for the class) and blue (against) scaled by the largest magnitude."""
    gray = to_rgb(image[None])[0].mean(axis=-1, keepdims=True)
    heat = finite(heat)
    if signed:
        bound = np.abs(heat).max() or 1.0
        colour = colormaps["RdBu_r"](0.5 + 0.5 * heat / bound)[..., :3]
        weight = np.abs(heat / bound)[..., None] * 0.75
    else:
        top = heat.max()
        scaled = np.clip(heat / top, 0, 1) if top > 0 else np.zeros_like(heat)
        colour = colormaps["inferno"](scaled)[..., :3]
        weight = np.full((*heat.shape, 1), 0.7, np.float32)
    return (1 - weight) * gray + weight * colour


def attribution_tile(image: np.ndarray, heat: np.ndarray, signed: bool, zoom: int = 2) -> bytes:
    """One method's map on one image."""
    if heat.shape != image.shape[:2]:
        heat = _resize_bilinear(heat, image.shape[:2])
    return png(grid(overlay(image, heat, signed)[None], 1, zoom, gap=0))


def _resize_bilinear(heat: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    height, width = int(size[0]), int(size[1])
    resized = Image.fromarray(heat.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def cam_rows(images: np.ndarray, rows: Sequence[np.ndarray]) -> bytes:
    """One row per CAM method, one column per image: each (N, h, w) map over its image."""
    tiles = np.stack(
        [
            overlay(img, _resize_bilinear(c, img.shape[:2]), signed=False)
            for cams in rows
            for img, c in zip(images, cams, strict=True)
        ]
    )
    return png(grid(tiles, len(images), zoom_for(images.shape[1], 64), gap=2))


def concept_strip(images: np.ndarray, heats: np.ndarray, crops: Sequence[np.ndarray]) -> bytes:
    """A concept on its strongest probe images: first row, its map over each (N, H, W, C) image in
    grey on one inferno scale (yellow is its strongest coefficient in these images, so weaker images
    look weaker); second row, the receptive field around each map's maximum, enlarged to the image size."""
    height, width = images.shape[1:3]
    heats = np.stack([_resize_bilinear(finite(h), (height, width)) for h in heats])
    top = heats.max()
    scaled = np.clip(heats / top, 0, 1) if top > 0 else np.zeros_like(heats)
    gray = to_rgb(images).mean(axis=-1, keepdims=True)
    weight = (0.3 + 0.6 * scaled)[..., None]  # where the concept is absent the image shows through
    maps = (1 - weight) * gray + weight * colormaps["inferno"](scaled)[..., :3]
    patches = np.concatenate([_resize_nearest(to_rgb(c[None]), height, width) for c in crops])
    return png(grid(np.concatenate([maps, patches]).astype(np.float32), len(images), zoom_for(height, 96), gap=2))


@dataclass(frozen=True)
class CurvePanel:
    """One plot of the faithfulness chart: every map's mean curve (maps × points) over `x`."""

    title: str
    xlabel: str
    x: np.ndarray
    curves: np.ndarray


def faithfulness_chart(titles: Sequence[str], panels: Sequence[CurvePanel], references: int = 0) -> bytes:
    """Mean faithfulness curves, two panels to a row, one legend; the last `references` rows of
    every panel's curves are reference maps, drawn as grey dotted lines."""
    methods = len(titles) - references
    greys = ["#555555", "#888888", "#aaaaaa"]
    styles = ["-", "--", ":", "-."]
    rows = -(-len(panels) // 2)
    with matplotlib.rc_context(CHART_RC):
        fig = Figure(figsize=(9.5, 3.1 * rows + 0.3), layout="constrained")
        axes = fig.subplots(rows, 2, sharey=True, squeeze=False).ravel()
        for ax, panel in zip(axes, panels, strict=False):
            for k, title in enumerate(titles):
                if k < methods:
                    style = {"linestyle": styles[k // 10 % len(styles)], "lw": 1.3}
                else:
                    style = {"linestyle": (0, (1, 1)), "lw": 2.0, "color": greys[(k - methods) % len(greys)]}
                ax.plot(panel.x, panel.curves[k], label=title, **style)
            ax.set(title=panel.title, xlabel=panel.xlabel)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        for ax in axes[::2]:
            ax.set_ylabel("class probability")
        axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
        return _save(fig)


def sanity_chart(
    titles: Sequence[str],
    layers: Sequence[str],
    spearman: np.ndarray,
    ssim: np.ndarray,
    independent: np.ndarray,
    head: int | None = None,
    flagged: Sequence[bool] = (),
) -> bytes:
    """One small plot per method: Spearman correlation of absolute values (solid) and SSIM
    (dashed) with the original maps as layers are randomised from the top down, and Spearman
    with one stage's layers randomised alone (dotted); a vertical line marks `head`, the stage
    by which the classifier head and last convolution are; flagged methods' titles in the
    warning colour."""
    columns = 4
    rows = -(-len(titles) // columns)
    stages = np.arange(len(layers))
    low = min(-0.3, float(np.nanmin(finite(np.concatenate([spearman, ssim, independent])))) - 0.05)
    with matplotlib.rc_context(CHART_RC):
        fig = Figure(figsize=(9.5, 1.55 * rows + 0.9), layout="constrained")
        axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
        for k, ax in enumerate(axes):
            if k >= len(titles):
                ax.set_axis_off()
                continue
            ax.axhline(0, color="#888888", lw=0.6)
            if head is not None:
                ax.axvline(head, color="#a15c00", lw=1.0, ls=":")
            ax.plot(stages, spearman[k], "-", marker="o", ms=2.5, color="#1f77b4", label="Spearman |map|")
            ax.plot(stages, ssim[k], "--", marker="o", ms=2.5, color="#2ca02c", label="SSIM")
            ax.plot(stages, independent[k], ":", color="#7f3f98", lw=1.4, label="Spearman, layer alone")
            warn = k < len(flagged) and flagged[k]
            ax.set_title(
                titles[k], fontsize=8.5, color="#a15c00" if warn else "black", fontweight="bold" if warn else None
            )
            ax.set_ylim(low, 1.05)
        for ax in axes[(rows - 1) * columns :]:
            ax.set_xticks(stages, [f"+{name}" for name in layers], rotation=60, ha="right", fontsize=6.5)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper right", ncols=3, fontsize=8, frameon=False)
        fig.suptitle("Cascading randomisation: similarity with the original maps", fontsize=10, x=0.02, ha="left")
        return _save(fig)
