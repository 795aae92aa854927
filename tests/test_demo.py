"""The bundled demo model: generator, committed checkpoint, probe folder, full report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from reportgen import cli
from reportgen.compute import map_examples
from reportgen.data import read_classes, read_probe
from reportgen.model.engine import Engine
from reportgen.model.load import load_model

DEMO = ROOT / "models" / "traffic_signs"
SPEC = f"{DEMO / 'model.py'}:TrafficSignNet"
sys.path.insert(0, str(DEMO))

import data as signs_data  # noqa: E402
import signs  # noqa: E402


def test_generator_is_deterministic_per_seed() -> None:
    a, la = signs_data.generate(300, seed=5)
    b, lb = signs_data.generate(300, seed=5)
    c, _ = signs_data.generate(300, seed=6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert np.abs(a - c).mean() > 0.05
    assert a.shape == (300, 32, 32, 3) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1


def test_all_43_classes_are_present_and_distinct() -> None:
    templates = signs.templates()
    assert templates.shape[0] == 43
    _, labels = signs_data.generate(430, seed=0)
    assert np.bincount(labels, minlength=43).tolist() == [10] * 43
    flat = templates.reshape(43, -1)
    distance = np.abs(flat[:, None] - flat[None]).mean(-1)
    off_diagonal = distance[~np.eye(43, dtype=bool)]
    assert off_diagonal.min() > 0.005, "two classes are drawn (almost) identically"


@pytest.fixture(scope="module")
def demo():
    return load_model(SPEC, DEMO / "checkpoint")


@pytest.mark.slow
def test_checkpoint_scores_on_fresh_images(demo) -> None:
    images, labels = signs_data.generate(20 * 43, seed=2026)
    logits = map_examples(Engine(demo.graph).logits, (demo.variables,), images, chunk=64)
    accuracy = (logits.argmax(1) == labels).mean()
    assert accuracy >= 0.95, accuracy


def test_probe_folders_are_class_names_and_probe_accuracy(demo) -> None:
    classes = read_classes(DEMO / "classes.txt", 43)
    probe = read_probe(DEMO / "probe", (32, 32, 3), classes)
    assert probe.warnings == ()
    assert (probe.labels >= 0).all() and len(set(probe.labels.tolist())) == 43
    assert np.bincount(probe.labels, minlength=43).min() >= 2
    hard = [n for n in probe.names if "hard-" in n]
    assert {n.split("hard-")[1][:-4] for n in hard} == {"dark", "blurred", "occluded", "rotated", "off-centre"}
    logits = map_examples(Engine(demo.graph).logits, (demo.variables,), probe.images, chunk=64)
    assert (logits.argmax(1) == probe.labels).mean() >= 0.95


def test_demo_architecture(demo) -> None:
    kinds = [(layer.name, layer.kind, layer.output_shape) for layer in demo.graph.layers]
    assert kinds[:3] == [
        ("conv1", "conv", (32, 32, 32)),
        ("conv2", "conv", (32, 32, 32)),
        ("max_pool_0", "max_pool", (16, 16, 32)),
    ]
    assert [layer.name for layer in demo.graph.layers if layer.kind == "conv"] == [f"conv{i}" for i in range(1, 7)]
    assert demo.graph.num_classes == 43


def _predicted(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    """Top-1 classes from Flax and orbax directly, independently of reportgen's loader and engine."""
    import orbax.checkpoint as ocp
    from model import TrafficSignNet

    params = ocp.StandardCheckpointer().restore(checkpoint.resolve())["params"]
    return np.asarray(TrafficSignNet().apply({"params": params}, images)).argmax(-1)


@pytest.mark.slow
def test_two_demo_releases_end_to_end_with_diff_and_gates(tmp_path: Path) -> None:
    """Release v1 is the committed checkpoint, v2 the same model fine-tuned for 40 steps with
    another seed; both are built into an archive, then compared and gated."""
    finetuned = tmp_path / "finetuned" / "checkpoint"
    train = [sys.executable, str(DEMO / "train.py"), "--init-from", str(DEMO / "checkpoint"), "--steps", "40"]
    train += ["--train-size", "4096", "--seed", "7", "--out", str(finetuned)]
    subprocess.run(train, check=True, capture_output=True)
    archive = tmp_path / "releases"
    common = ["build", "--model", SPEC, "--profile", "quick", "--archive", str(archive), "--quiet"]
    assert cli.main([*common, "--release", "v1"]) == 0
    assert cli.main([*common, "--release", "v2", "--checkpoint", str(finetuned)]) == 0

    data = json.loads((archive / "v1" / "report.json").read_text())
    assert data["predictions"]["accuracy"] >= 0.95
    assert len(data["layers"]) == 11
    assert (archive / "v1" / "report.html").stat().st_size < 25e6
    assert (archive / "diffs" / "v1--v2" / "diff.html").is_file()

    images = read_probe(DEMO / "probe", (32, 32, 3), read_classes(DEMO / "classes.txt", 43)).images
    changed = int((_predicted(DEMO / "checkpoint", images) != _predicted(finetuned, images)).sum())
    diff = ["diff", str(archive / "v1"), str(archive / "v2"), "--quiet"]
    assert cli.main([*diff, "--out", str(tmp_path / "held"), "--fail-on", f"prediction-changes>{changed}"]) == 0
    assert cli.main([*diff, "--out", str(tmp_path / "broken"), "--fail-on", f"prediction-changes>{changed - 1}"]) == 1
    recorded = json.loads((tmp_path / "held" / "diff.json").read_text())
    assert len(recorded["prediction_changes"]) == changed
    assert recorded["common_images"] == len(images)
    assert (recorded["old"]["label"], recorded["new"]["label"]) == ("v1", "v2")
