"""Shared fixtures: tiny models saved with orbax into temporary folders, and probe folders."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from PIL import Image

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

import tiny_models  # noqa: E402

SPEC = f"{TESTS / 'tiny_models.py'}"


def save(path: Path, tree: object) -> Path:
    """Save a tree with orbax's StandardCheckpointer."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path.resolve(), tree)
    checkpointer.wait_until_finished()
    return path


def linen_variables() -> dict:
    """TinyLinen variables with non-trivial BatchNorm running statistics."""
    variables = tiny_models.init_linen(tiny_models.TinyLinen())
    stats = variables["batch_stats"]["ResidualBlock_0"]["BatchNorm_0"]
    rng = np.random.default_rng(0)
    stats["mean"] = jax.numpy.asarray(rng.normal(size=8).astype(np.float32))
    stats["var"] = jax.numpy.asarray(rng.uniform(0.5, 2.0, size=8).astype(np.float32))
    return variables


@pytest.fixture(scope="session")
def linen_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyLinen saved as {'params', 'batch_stats'}."""
    return save(tmp_path_factory.mktemp("linen") / "ckpt", linen_variables())


@pytest.fixture(scope="session")
def nnx_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyNNX saved as its pure state dict (RNG state included)."""
    model = tiny_models.TinyNNX(nnx.Rngs(0))
    return save(tmp_path_factory.mktemp("nnx") / "ckpt", nnx.to_pure_dict(nnx.state(model)))


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a float image in [0, 1] (H, W, 3) as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="session")
def tiny_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve random 8x8 images in class folders a, b and c."""
    folder = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(1)
    for k, label in enumerate("abc"):
        for i in range(4):
            write_png(folder / label / f"{i}.png", rng.uniform(0, 1, (8, 8, 3)) * (0.5 + 0.2 * k))
    return folder


@pytest.fixture(scope="session")
def tiny_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class names a, b, c."""
    path = tmp_path_factory.mktemp("classes") / "classes.txt"
    path.write_text("a\nb\nc\n")
    return path
