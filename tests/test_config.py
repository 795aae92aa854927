"""Settings precedence, the model folder convention and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from reportgen.config import PROFILES, Preprocess, resolve
from reportgen.errors import UserError


def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "probe").mkdir()
    (folder / "classes.txt").write_text("a\n")
    (folder / "model.py").write_text("")
    return folder


def test_model_folder_convention(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    s = resolve({"model": f"{folder}/model.py:Net"}, cwd=tmp_path)
    assert (s.checkpoint, s.images, s.classes) == (
        str(folder / "checkpoint"),
        str(folder / "probe"),
        str(folder / "classes.txt"),
    )


def test_precedence_flags_over_config_over_folder_over_pyproject(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.reportgen]\nseed = 1\nprofile = "quick"\n[tool.reportgen.layers]\ntop_patches = 8\nrare_fraction = 0.2\n'
    )
    (folder / "reportgen.toml").write_text("seed = 2\n[layers]\ntop_patches = 6\n")
    config = tmp_path / "c.toml"
    config.write_text("seed = 3\npreprocess = { scale = 255.0, mean = [1, 2, 3], std = 2 }\n")
    s = resolve({"model": f"{folder}/model.py:Net", "seed": 4}, str(config), cwd=tmp_path)
    # Tables merge setting by setting: top_patches from the model folder, rare_fraction from pyproject.
    assert (s.seed, s.layers.top_patches, s.layers.rare_fraction, s.profile) == (4, 6, 0.2, "quick")
    assert s.layers.activation_images == PROFILES["quick"]["layers"]["activation_images"]
    assert s.visualisation.steps == PROFILES["quick"]["visualisation"]["steps"]
    assert s.preprocess == Preprocess(255.0, (1.0, 2.0, 3.0), (2.0,))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "unknown setting 'colour'"),
        ("memory_budget = -1.0\n", "memory_budget must not be negative"),
        ('profile = "huge"\n', "profile 'huge' is unknown"),
        ("input_shape = [1, 2]\n", "is not H,W,C"),
        ("seed = [\n", "is not valid TOML"),
        ("preprocess = { std = 0 }\n", "must be non-zero"),
        ('external_figures = "yes"\n', "must be true or false"),
        ('[layers]\nrare_fraction = "often"\n', "must be a number"),
        ("[visualisation]\nsteps = 0\n", "visualisation.steps must be at least 1"),
        ('[attribution]\nig_rule = "simpson"\n', "attribution.ig_rule 'simpson' is unknown"),
        ("[attribution]\ncolour = 1\n", r"unknown setting 'colour' in \[attribution\]"),
        ("attribution = 3\n", r"\[attribution\] in .* must be a table"),
        ("ig_steps = 64\n", r"setting 'ig_steps' in .* is now 'ig_steps' in the \[attribution\] table"),
        ("vis_filters = 8\n", r"is now 'filters' in the \[visualisation\] table"),
    ],
)
def test_bad_settings(tmp_path: Path, text: str, message: str) -> None:
    folder = model_folder(tmp_path)
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(UserError, match=message):
        resolve({"model": f"{folder}/model.py:Net"}, str(config), cwd=tmp_path)


def test_missing_model_or_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no model given"):
        resolve({}, cwd=tmp_path)
    with pytest.raises(UserError, match="no checkpoint given"):
        resolve({"model": "pkg.mod:Net"}, cwd=tmp_path)
