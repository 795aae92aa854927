"""Whatever the input: one line and exit status 2 for a mistake, a complete report for a broken
model, and explicit rules (never guesses) for image bit depth, channels and size."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import SPEC, linen_variables, save, write_png
from PIL import Image

from reportgen import cli
from reportgen.data import read_classes, read_probe
from reportgen.errors import UserError

BAD = [
    ("infinite float", {"config": "[attribution]\nsmoothgrad_noise = inf\n"}, "must be a finite number, not inf"),
    (
        "preprocess length",
        {"config": "preprocess = { mean = [0.1, 0.2] }\n"},
        "preprocess mean has 2 values but the model takes 3-channel images",
    ),
    (
        "occlusion window",
        {"config": "[attribution]\nocclusion_window = 9\n"},
        "attribution.occlusion_window 9 is larger than the 8×8 input; choose at most 8",
    ),
    ("duplicate classes", {"classes": "a\nb\na\n"}, "names class 'a' twice (entries 1 and 3)"),
    ("resize rule", {"config": 'resize = "zoom"\n'}, "resize 'zoom' is unknown"),
    ("flat setting", {"config": "ig_steps = 8\n"}, "is now 'ig_steps' in the [attribution] table"),
    ("truncated checkpoint", {"truncate": True}, "cannot read orbax checkpoint"),
    ("model without convolutions", {"model": "NoConv"}, "NoConv has no convolution layer"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD, ids=[case for case, _, _ in BAD])
def test_mistakes_are_one_line_with_status_2_and_write_nothing(
    case: str, change: dict, message: str, tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path
) -> None:
    checkpoint, classes, model = linen_checkpoint, tmp_path / "classes.txt", "TinyLinen"
    classes.write_text(change.get("classes", "a\nb\nc\n"))
    args = ["--images", str(tiny_probe), "--classes", str(classes), "--out", str(tmp_path / "out")]
    if "config" in change:
        (tmp_path / "settings.toml").write_text(change["config"])
        args += ["--config", str(tmp_path / "settings.toml")]
    if change.get("truncate"):
        checkpoint = tmp_path / "truncated"
        shutil.copytree(linen_checkpoint, checkpoint)
        for data in (checkpoint / "ocdbt.process_0" / "d").iterdir():
            data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    if "model" in change:
        model = change["model"]
        checkpoint = save(
            tmp_path / "noconv",
            {"params": {"Dense_0": {"kernel": np.zeros((16, 2), np.float32), "bias": np.zeros(2, np.float32)}}},
        )
    command = [
        sys.executable,
        "-m",
        "reportgen",
        "build",
        "--model",
        f"{SPEC}:{model}",
        "--checkpoint",
        str(checkpoint),
    ]
    result = subprocess.run([*command, *args], capture_output=True, text=True, check=False, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("reportgen: error: "), result.stderr[-2000:]
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_nan_weights_give_findings_and_a_complete_report(tmp_path: Path, tiny_probe: Path, tiny_classes: Path) -> None:
    variables = jax.tree.map(np.array, linen_variables())
    variables["params"]["conv1"]["kernel"][..., 2] = np.nan  # a diverged run: one filter of conv1
    checkpoint = save(tmp_path / "diverged", variables)
    argv = ["build", "--model", f"{SPEC}:TinyLinen", "--checkpoint", str(checkpoint), "--images", str(tiny_probe)]
    assert cli.main([*argv, "--classes", str(tiny_classes), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    found = {(f["code"], f["subject"]): f for f in report["findings"]}
    weights = found[("nonfinite-weights", "conv1")]
    assert weights["severity"] == "error" and weights["message"].endswith("1 of 8 filters are NaN or infinite: 2")
    outputs = found[("nonfinite", "conv1")]
    assert outputs["severity"] == "error" and "in 1 of 8 filters on 12 probe images" in outputs["message"]
    conv1 = next(layer for layer in report["layers"] if layer["name"] == "conv1")
    assert conv1["nonfinite_weights"] == [2] and conv1["statistics"]["max"][2] is None
    assert conv1["concepts"]["fitted_rows"] == 0 and conv1["concepts"]["concepts"] == []  # every vector has a NaN
    html = (tmp_path / "r" / "report.html").read_text()
    assert "No concepts: this layer&#39;s outputs are not finite" in html


def test_bit_depth_comes_from_the_file_not_from_its_pixels(tmp_path: Path) -> None:
    dark = np.full((8, 8), 200, np.uint16)  # a dark 16-bit image: values a content guess would read as 8-bit
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    Image.fromarray(dark.astype(np.uint8)).save(tmp_path / "bright8.png")
    probe = read_probe(tmp_path, (8, 8, 1), ["x"])
    values = dict(zip(probe.names, probe.images[:, 0, 0, 0], strict=True))
    assert values["dark16.png"] == pytest.approx(200 / 65535)
    assert values["bright8.png"] == pytest.approx(200 / 255)


def test_channels_are_converted_or_refused(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128  # half-transparent red
    Image.fromarray(rgba).save(tmp_path / "red.png")
    four = read_probe(tmp_path, (8, 8, 4), ["x"]).images[0, 0, 0]
    np.testing.assert_allclose(four, [1.0, 0.0, 0.0, 128 / 255])
    three = read_probe(tmp_path, (8, 8, 3), ["x"]).images[0, 0, 0]  # composited on white
    np.testing.assert_allclose(three, [1.0, 127 / 255, 127 / 255], atol=1 / 255)
    with pytest.raises(UserError, match="the model takes 2-channel images"):
        read_probe(tmp_path, (8, 8, 2), ["x"])


def test_other_sizes_keep_their_aspect_ratio_and_are_counted(tmp_path: Path) -> None:
    wide = np.zeros((8, 16, 3))
    wide[:, :, 0] = np.arange(16)[None, :] / 15  # red encodes the column
    write_png(tmp_path / "wide.png", wide)
    write_png(tmp_path / "square.png", np.full((8, 8, 3), 0.5))
    cropped = read_probe(tmp_path, (8, 8, 3), ["x"], resize="crop")
    assert cropped.warnings == ("1 probe image was resized to 8×8, 1 of them of another aspect ratio"
                                " (centre-cropped to the model's aspect ratio; setting resize)",)  # fmt: skip
    red = cropped.images[cropped.names.index("wide.png"), 0, :, 0]
    np.testing.assert_allclose(red, np.round(np.arange(4, 12) / 15 * 255) / 255, atol=1e-6)
    padded = read_probe(tmp_path, (8, 8, 3), ["x"], resize="pad")
    image = padded.images[padded.names.index("wide.png")]
    assert image[0].max() == 0 and image[-1].max() == 0 and image[4, -1, 0] > 0.9  # black bars, full width
    assert padded.warnings == ("1 probe image was resized to 8×8, 1 of them of another aspect ratio"
                               " (padded with black to the model's aspect ratio; setting resize)",)  # fmt: skip


def test_class_files_ignore_blank_lines_and_keep_markup_as_text(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("\n<b>stop</b>\n\n  yield \n")
    assert read_classes(path, 2) == ["<b>stop</b>", "yield"]
    path.write_text("a\nb\n")
    with pytest.raises(UserError, match="has 2 class names but the model has 3 outputs"):
        read_classes(path, 3)
    path.write_text("\n".join(f"class {k}" for k in range(10_000)))
    with pytest.raises(UserError, match="has 10000 class names but the model has 3 outputs"):
        read_classes(path, 3)


def test_redacted_text_keeps_relative_names_and_drops_the_machine() -> None:
    from reportgen.redact import text

    names = {"ana": "[user]", "box7": "[host]"}
    assert text("/home/ana/models/model.py:Net", names) == "…/model.py:Net"
    assert text("C:\\Users\\ana\\nets\\m.py", names) == "…/m.py"
    assert text("reportgen build --out=/tmp/r --images stop/1.png 1/2", names) == (
        "reportgen build --out=…/r --images stop/1.png 1/2"
    )
    assert text("built by ana on box7; anagram", names) == "built by [user] on [host]; anagram"


def test_redact_leaves_paths_out_of_every_output(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path
) -> None:
    argv = ["build", "--model", f"{SPEC}:TinyLinen", "--checkpoint", str(linen_checkpoint), "--images", str(tiny_probe)]
    assert cli.main([*argv, "--classes", str(tiny_classes), "--out", str(tmp_path / "r"), "--redact", "--quiet"]) == 0
    for name in ("report.html", "report.json", "summary.md"):
        content = (tmp_path / "r" / name).read_text()
        for secret in (str(tmp_path), str(linen_checkpoint.parent), str(tiny_probe.parent), str(Path(SPEC).parent)):
            assert secret not in content, (name, secret)
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["model"]["spec"] == "…/tiny_models.py:TinyLinen"
    assert data["model"]["checkpoint"]["path"] == f"…/{linen_checkpoint.name}"
    assert data["provenance"]["settings"]["redact"] is True


def test_probability_outputs_are_shown_as_they_are_and_reported(
    tmp_path: Path, tiny_probe: Path, tiny_classes: Path
) -> None:
    import tiny_models

    variables = tiny_models.init_linen(tiny_models.SoftmaxHead(), seed=3)
    checkpoint = save(tmp_path / "softmax", variables)
    argv = ["build", "--model", f"{SPEC}:SoftmaxHead", "--checkpoint", str(checkpoint), "--images", str(tiny_probe)]
    assert cli.main([*argv, "--classes", str(tiny_classes), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    images = read_probe(tiny_probe, (8, 8, 3), ["a", "b", "c"]).images
    expected = np.asarray(tiny_models.SoftmaxHead().apply(variables, images)).max(axis=1)
    shown = [image["top"][0]["probability"] for image in report["predictions"]["images"]]
    np.testing.assert_allclose(shown, expected, rtol=1e-4)  # not softmax(probabilities)
    assert report["predictions"]["outputs_are_probabilities"] is True
    assert any(f["code"] == "probability-outputs" for f in report["findings"])


def test_api_targets_out_of_range_are_refused_not_clamped(linen_checkpoint: Path) -> None:
    from reportgen import api

    model = api.load_model(f"{SPEC}:TinyLinen", linen_checkpoint)
    images = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match=r"targets must be class indices in 0\.\.2; got \[0, 3\]"):
        api.saliency(model, images, targets=[0, 3])
    with pytest.raises(ValueError, match="one class index per image"):
        api.saliency(model, images, targets=[0])


def test_an_output_folder_that_cannot_be_written_fails_before_any_work(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").write_text("a file where a folder is needed")
    out = tmp_path / "taken" / "report"
    argv = ["build", "--model", f"{SPEC}:TinyLinen", "--checkpoint", str(linen_checkpoint), "--images", str(tiny_probe)]
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and "load model" not in err  # refused before the model was loaded


@pytest.mark.slow
def test_ten_thousand_tiny_probe_images_build_with_grouped_findings(
    tmp_path: Path, linen_checkpoint: Path, tiny_classes: Path
) -> None:
    rng = np.random.default_rng(0)
    for i in range(10_000):
        pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        folder = tmp_path / "probe" / "abc"[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    argv = ["build", "--model", f"{SPEC}:TinyLinen", "--checkpoint", str(linen_checkpoint)]
    argv += ["--images", str(tmp_path / "probe"), "--classes", str(tiny_classes), "--out", str(tmp_path / "r")]
    assert cli.main([*argv, "--quiet"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(report["predictions"]["images"]) == 10_000
    assert "10000 probe images were resized to 8×8" in report["provenance"]["probe_warnings"]
    assert len(report["findings"]) <= 12  # failing classes are one finding each, not one per image
