"""Write the probe image folder: 2 ordinary images per class plus hard cases.

    python models/traffic_signs/make_probe.py

Sub-folders are the class names' slugs (`speed_limit_20km_h`). Hard cases are named after what
makes them hard: dark, blurred, occluded, rotated, off-centre.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from data import Difficulty, render  # noqa: E402
from signs import NUM_CLASSES  # noqa: E402

PROBE_SEED = 777
HARD = {
    "dark": Difficulty(brightness=(0.3, 0.4), blur_prob=0.0, occlusion_prob=0.0),
    "blurred": Difficulty(blur_prob=1.0, occlusion_prob=0.0),
    "occluded": Difficulty(occlusion_prob=1.0, blur_prob=0.0),
    "rotated": Difficulty(rotation_deg=20.0, blur_prob=0.0, occlusion_prob=0.0),
    "off-centre": Difficulty(scale=(0.55, 0.65), shift=0.3, blur_prob=0.0, occlusion_prob=0.0),
}
HARD_CLASSES = (1, 5, 13, 14, 17, 25, 33, 38)


def slug(text: str) -> str:
    """'Speed limit (20km/h)' -> 'speed_limit_20km_h'."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def save(image: np.ndarray, path: Path) -> None:
    """Write a float image in [0, 1] as an 8-bit PNG."""
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def main() -> None:
    """Regenerate probe/ from the seeds above."""
    classes = (HERE / "classes.txt").read_text().splitlines()
    out = HERE / "probe"
    shutil.rmtree(out, ignore_errors=True)
    labels = np.repeat(np.arange(NUM_CLASSES), 2)
    images = render(labels, seed=[PROBE_SEED, 0])
    for k, (label, image) in enumerate(zip(labels, images, strict=True)):
        folder = out / slug(classes[label])
        folder.mkdir(parents=True, exist_ok=True)
        save(image, folder / f"{k % 2 + 1:02d}.png")
    for j, (name, difficulty) in enumerate(HARD.items()):
        hard = render(np.asarray(HARD_CLASSES), seed=[PROBE_SEED, 1 + j], difficulty=difficulty)
        for label, image in zip(HARD_CLASSES, hard, strict=True):
            save(image, out / slug(classes[label]) / f"hard-{name}.png")


if __name__ == "__main__":
    main()
