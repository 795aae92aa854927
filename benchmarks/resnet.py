"""A ResNet-18 written the way the Flax examples write it, for scale benchmarks.

BatchNorm, residual blocks with 1x1 projection shortcuts, `nn.relu(residual + y)`, global average
pooling, 200 classes at 64x64 (Tiny-ImageNet sized): 11.3 M parameters. Weights are random and
the BatchNorm statistics are those of the probe images, so activations, figures and findings have
the sizes and variety of a real model's: enough to measure time and memory, not to learn about
any task.

    python benchmarks/resnet.py DIR [--images N]   # writes DIR/checkpoint and DIR/probe/*.png

`reportgen build --model benchmarks/resnet.py:ResNet18 --checkpoint DIR/checkpoint --images DIR/probe`
then explains it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image


class ResNetBlock(nn.Module):
    """Two 3x3 conv + BatchNorm, added to the (projected) input, then ReLU."""

    filters: int
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
        y = norm()(y)
        if x.shape != y.shape:
            x = nn.Conv(self.filters, (1, 1), self.strides, use_bias=False, name="shortcut")(x)
            x = norm()(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """ResNet-18 for (N, 64, 64, 3) images and 200 classes."""

    num_classes: int = 200
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    input_shape = (64, 64, 3)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, name="conv_init")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
                x = ResNetBlock(64 * 2**stage, strides)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def random_variables(images: np.ndarray, seed: int = 0) -> dict:
    """Initialised parameters, with every BatchNorm's running mean and variance set to the
    statistics of its input on `images` (uint8), as training leaves them: each layer's pre-ReLU
    values are then centred on the probe images and about half of every ReLU layer is active.
    (With the initial statistics, or any made-up ones, most filters of the deeper layers are zero
    on every image and the logits hardly depend on the input: a model no report could explain.)

    Train mode normalises with the batch's statistics, so its output does not depend on the
    running values it is given, and it returns them updated to m * running + (1 - m) * batch.
    Two updates, from running values 0 and 1, give a = (1 - m) * batch and c = m + a, hence each
    layer's momentum m = c - a and its batch statistic a / (1 - m), whatever momentum it uses.
    """
    model = ResNet18()
    x = jnp.asarray(images, jnp.float32) / 255.0
    variables = model.init(jax.random.key(seed), x[:1])
    stats = variables["batch_stats"]

    def updated(running: float) -> dict:
        start = jax.tree.map(lambda s: jnp.full_like(s, running), stats)
        _, state = model.apply(
            {"params": variables["params"], "batch_stats": start}, x, train=True, mutable=["batch_stats"]
        )
        return state["batch_stats"]

    batch = jax.tree.map(lambda a, c: a / (1.0 - (c - a)), updated(0.0), updated(1.0))
    return {"params": variables["params"], "batch_stats": batch}


def probe_images(count: int, seed: int = 0) -> np.ndarray:
    """(count, 64, 64, 3) uint8 images: smooth colour blobs and stripes, so every filter sees structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    images = np.empty((count, 64, 64, 3), np.uint8)
    for i in range(count):
        freq, phase, angle = rng.uniform(2, 12), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        cy, cx = rng.uniform(0.2, 0.8, 2)
        r = rng.uniform(0.1, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        colours = rng.uniform(0, 1, (2, 3))
        image = stripes[..., None] * colours[0] * (1 - blob[..., None]) + blob[..., None] * colours[1]
        images[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return images


def write(folder: Path, count: int) -> None:
    """Save a random-weight checkpoint and `count` probe images under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    images = probe_images(count)
    checkpoint = (folder / "checkpoint").resolve()
    if not checkpoint.exists():
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(checkpoint, random_variables(images[:64]))
        checkpointer.wait_until_finished()
    probe = folder / "probe"
    probe.mkdir(exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(probe / f"{i:05d}.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    write(args.folder, args.images)
