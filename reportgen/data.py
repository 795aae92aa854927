"""Probe images: read, convert, resize and label.

Images are read as float RGB (or grayscale, to match the model's channels) in [0, 1]. A sub-folder
name labels its images when it matches a class: the class name itself, its slug
(`speed_limit_20km_h` for "Speed limit (20km/h)") or its index.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from reportgen.config import Preprocess
from reportgen.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
CHANNELS = (1, 3, 4)
RESIZE_RULES = {
    "crop": "centre-cropped to the model's aspect ratio",
    "pad": "padded with black to the model's aspect ratio",
    "stretch": "stretched",
}
MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class ProbeSet:
    """Probe images in [0, 1] as a person sees them, with their names and optional labels."""

    images: np.ndarray  # (N, H, W, C) float32 in [0, 1]
    names: tuple[str, ...]  # paths relative to the probe folder
    labels: np.ndarray  # (N,) int32, -1 where unlabelled
    warnings: tuple[str, ...]

    @property
    def labelled(self) -> bool:
        """True when at least one image has a label."""
        return bool((self.labels >= 0).any())


def slug(text: str) -> str:
    """Lowercase words joined by underscores: 'Speed limit (20km/h)' -> 'speed_limit_20km_h'."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def read_classes(path: Path | None, num_classes: int) -> list[str]:
    """Class names from a file with one name per line, or 'class 0' ... 'class K-1'."""
    if path is None:
        return [f"class {k}" for k in range(num_classes)]
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read class names from {path}: {e}") from e
    seen: dict[str, int] = {}
    for line, name in enumerate(names, 1):
        if name in seen:
            raise UserError(
                f"{path} names class {name!r} twice (entries {seen[name]} and {line}); class names must be distinct"
            )
        seen[name] = line
    if len(names) != num_classes:
        raise UserError(
            f"{path} has {len(names)} class names but the model has {num_classes} outputs; give one name per line"
        )
    return names


def _label_for(folder: str, classes: list[str]) -> int | None:
    if folder.isdigit() and int(folder) < len(classes):
        return int(folder)
    for k, name in enumerate(classes):
        if folder == name or slug(folder) == slug(name):
            return k
    return None


def to_float(image: Image.Image, channels: int) -> np.ndarray:
    """A Pillow image as float32 (H, W, channels) in [0, 1]. The bit depth comes from the file's
    mode, never from the pixel values: 16-bit grayscale (modes I;16 and I, as Pillow opens 16-bit
    PNGs) is divided by 65535, everything else is read as 8 bits. Transparency is composited on
    white, except for 4-channel models, which get the alpha channel (opaque images: alpha 1)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.clip(np.asarray(image, np.float32) / 65535.0, 0, 1)[..., None]
        if channels == 4:
            return np.concatenate([np.repeat(gray, 3, axis=-1), np.ones_like(gray)], axis=-1)
        return np.repeat(gray, channels, axis=-1) if channels != 1 else gray
    if channels == 4:
        return np.asarray(image.convert("RGBA"), np.float32) / 255.0
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    converted = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(converted, np.float32) / 255.0
    return array[..., None] if channels == 1 else array


def read_probe(folder: Path, shape: tuple[int, int, int], classes: list[str], resize: str = "crop") -> ProbeSet:
    """Every image under `folder` (and its sub-folders), converted to the model's channels and
    resized to `shape` by the `resize` rule (see `fit`); UserError if none."""
    if shape[-1] not in CHANNELS:
        raise UserError(
            f"the model takes {shape[-1]}-channel images; probe images can be read as grayscale (1 channel),"
            " RGB (3) or RGBA (4)"
        )
    if not folder.exists():
        raise UserError(f"probe folder {folder} does not exist; pass --images DIR with PNG or JPEG files")
    if not folder.is_dir():
        raise UserError(f"--images {folder} is not a folder")
    height, width, channels = shape
    notes: list[str] = []
    images, names, labels = [], [], []
    unknown_folders: set[str] = set()
    resized = reshaped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            notes.append(f"skipped {rel}: not a PNG or JPEG file")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    if image.width * image.height > MAX_PIXELS:
                        notes.append(f"skipped {rel}: {image.width}x{image.height} pixels is too large")
                        continue
                    image.load()
                    array = to_float(image, channels)
        except (
            UnidentifiedImageError,
            OSError,
            ValueError,
            Image.DecompressionBombWarning,
            Image.DecompressionBombError,
        ) as e:
            notes.append(f"skipped {rel}: unreadable image ({type(e).__name__})")
            continue
        if array.shape[:2] != (height, width):
            resized += 1
            reshaped += array.shape[0] * width != array.shape[1] * height
        images.append(fit(array, height, width, resize))
        names.append(rel)
        parent = path.parent.relative_to(folder).as_posix()
        label = _label_for(path.parent.name, classes) if parent != "." else None
        if label is None and parent != ".":
            unknown_folders.add(parent)
        labels.append(-1 if label is None else label)
    if resized:
        how = RESIZE_RULES[resize]
        notes.append(
            (f"1 probe image was resized to {height}×{width}" if resized == 1 else
             f"{resized} probe images were resized to {height}×{width}")
            + (f", {reshaped} of them of another aspect ratio ({how}; setting resize)" if reshaped else "")
        )  # fmt: skip
    for name in sorted(unknown_folders):
        notes.append(f"sub-folder {name!r} is not a class name; its images are unlabelled")
    if not images:
        raise UserError(f"probe folder {folder} has no readable PNG or JPEG images")
    return ProbeSet(np.stack(images).astype(np.float32), tuple(names), np.asarray(labels, np.int32), tuple(notes))


def fit(array: np.ndarray, height: int, width: int, rule: str) -> np.ndarray:
    """Resize an image to (height, width): "crop" takes the largest centred window of the target
    aspect ratio first, "pad" adds black borders to reach it, "stretch" ignores it."""
    h, w = array.shape[:2]
    if (h, w) == (height, width):
        return array
    if rule == "crop":
        ch, cw = min(h, round(w * height / width)), min(w, round(h * width / height))
        top, left = (h - ch) // 2, (w - cw) // 2
        array = array[top : top + ch, left : left + cw]
    elif rule == "pad":
        ph, pw = max(h, round(w * height / width)), max(w, round(h * width / height))
        top, left = (ph - h) // 2, (pw - w) // 2
        array = np.pad(array, ((top, ph - h - top), (left, pw - w - left), (0, 0)))
    channels = [
        np.asarray(Image.fromarray(array[..., c], mode="F").resize((width, height), Image.Resampling.BILINEAR))
        for c in range(array.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 1)


def check_preprocess(pre: Preprocess, channels: int) -> None:
    """Mean and std give one value, or one per input channel; UserError otherwise."""
    for name, values in (("mean", pre.mean), ("std", pre.std)):
        if len(values) not in (1, channels):
            raise UserError(
                f"preprocess {name} has {len(values)} values but the model takes {channels}-channel images;"
                f" give one value or {channels}"
            )


def to_model(images: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Images in [0, 1] mapped into the model's input space."""
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    return ((images * pre.scale - mean) / std).astype(np.float32)
