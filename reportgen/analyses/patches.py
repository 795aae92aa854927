"""Top activating probe patches per filter (Zeiler & Fergus 2014): the probe images on which a
filter responds most, cropped to its receptive field around the position of the maximum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from reportgen.model.graph import ReceptiveField


@dataclass(frozen=True)
class TopPatches:
    """For each filter, its k strongest probe images and where in them."""

    images: np.ndarray  # (F, k) probe image indices, strongest first
    rows: np.ndarray  # (F, k) output row of the maximum
    cols: np.ndarray  # (F, k) output column of the maximum
    values: np.ndarray  # (F, k) the maximum activation


def top_patches(maxima: np.ndarray, argmax: np.ndarray, width: int, k: int) -> TopPatches:
    """From per-image channel maxima (N, C) and flat arg-max positions (N, C) on a map `width`
    wide, the k images with the highest maximum per channel (ties: lower image index first)."""
    k = min(k, maxima.shape[0])
    order = np.argsort(-maxima, axis=0, kind="stable")[:k].T  # (C, k)
    channels = np.arange(maxima.shape[1])[:, None]
    flat = argmax[order, channels]
    return TopPatches(order, flat // width, flat % width, maxima[order, channels])


def crop(image: np.ndarray, rf: ReceptiveField, row: int, col: int, fill: float = 0.5) -> np.ndarray:
    """The receptive field of output unit (row, col) cut from an (H, W, C) image; the parts that
    fall outside the image (padding) are filled with grey."""
    size_h, size_w = rf.size
    top = round(rf.start[0] + row * rf.stride[0] - (size_h - 1) / 2)
    left = round(rf.start[1] + col * rf.stride[1] - (size_w - 1) / 2)
    out = np.full((size_h, size_w, image.shape[-1]), fill, image.dtype)
    h, w = image.shape[:2]
    y0, y1 = max(top, 0), min(top + size_h, h)
    x0, x1 = max(left, 0), min(left + size_w, w)
    if y0 < y1 and x0 < x1:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out
