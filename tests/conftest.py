"""Shared fixtures: tiny models saved with orbax into temporary folders, and probe folders."""

from __future__ import annotations

import os
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


def cpu_devices_env(devices: int) -> dict[str, str]:
    """The environment of a child process whose JAX runs on `devices` virtual CPU devices."""
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


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


def attribution_result(**fields: object) -> object:
    """An `attribution.AttributionResult` of one explained 4x4 image, every method's scores zero
    and four sanity stages (logits, fc1, conv3, conv1; the head at conv3), with `fields` replaced."""
    from reportgen.analyses import catalogue
    from reportgen.attribution import AttributionResult

    m = len(catalogue.METHODS)
    default = dict(
        indices=np.array([0]), targets=np.array([0]), maps={name: np.zeros((1, 4, 4)) for name in catalogue.METHODS},
        layer_cams={}, cam_layer="conv3", deletion=np.zeros((1, m, 3)), insertion=np.ones((1, m, 3)),
        sanity_layers=("logits", "fc1", "conv3", "conv1"), head_stage=2, sanity=np.zeros((m, 4)), sanity_images=1,
        sanity_ssim=np.zeros((m, 4)), independent=np.zeros((m, 4)), independent_ssim=np.zeros((m, 4)),
        class_spearman=np.zeros(m), class_ssim=np.zeros(m),
        baseline_deletion=np.zeros((1, 3, 3)), baseline_insertion=np.zeros((1, 3, 3)),
        ig_completeness_error=np.array([0.01]), road_morf=np.zeros((1, m, 9)), road_lerf=np.ones((1, m, 9)),
        baseline_road_morf=np.zeros((1, 3, 9)), baseline_road_lerf=np.ones((1, 3, 9)),
        infidelity=np.zeros((1, m)), baseline_infidelity=np.ones((1, 3)), max_sensitivity=np.zeros(m),
    )  # fmt: skip
    default.update({k: np.asarray(v) if isinstance(v, list) else v for k, v in fields.items()})
    return AttributionResult(**default)


def one_image_probe() -> object:
    """A `data.ProbeSet` of one 4x4 image of class 0, for `attribution_result`."""
    from reportgen.data import ProbeSet

    return ProbeSet(np.zeros((1, 4, 4, 3), np.float32), ("x.png",), np.array([0]), ())
