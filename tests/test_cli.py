"""The command line: exit status, one-line errors, the layer table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SPEC

from reportgen.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_prints_the_layer_table(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["build", "--model", f"{SPEC}:TinyLinen", "--checkpoint", str(linen_checkpoint)]
    code, out, _ = run([*args, "--images", str(tiny_probe), "--out", str(tmp_path / "r")], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["layer", "kind", "output", "params", "FLOPs", "receptive", "field"]
    assert lines[1].split()[:4] == ["conv1", "conv+relu", "8x8x8", "224"]
    assert any(line.startswith("wrote ") and "report.html" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "missing.py:Net", "--checkpoint", "x"], "model file missing.py does not exist"),
        (["--model", f"{SPEC}:TinyLinen", "--checkpoint", "/nope"], "checkpoint /nope does not exist"),
        (
            ["--model", f"{SPEC}:TinyLinen", "--checkpoint", "CK", "--images", "/nope"],
            "probe folder /nope does not exist",
        ),
        (["--model", f"{SPEC}:TinyLinen", "--checkpoint", "CK", "--input-shape", "8,8"], "is not H,W,C"),
        (["--model", f"{SPEC}:TinyLinen", "--checkpoint", "CK", "--profile", "huge"], "invalid choice"),
        (
            ["--model", f"{SPEC}:TinyLinen", "--checkpoint", "CK", "--config", "/no.toml"],
            "config file /no.toml does not exist",
        ),
    ],
)
def test_mistakes_are_one_line_with_status_2(
    args: list[str], needle: str, linen_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.replace("CK", str(linen_checkpoint)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        code = main(["build", *args, "--out", str(tmp_path / "r")])
        raise SystemExit(code)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert needle in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reportgen", "build", "--model", "missing.py:Net", "--checkpoint", "x", "--debug"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "UserError" in result.stderr


def test_console_script_and_module_entry(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reportgen", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("reportgen ")
    script = Path(sys.executable).parent / "reportgen"
    assert script.exists(), "console script not installed; run make setup"
    result = subprocess.run([str(script), "build"], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no model given" in result.stderr


def test_templates_and_schema_ship_in_the_wheel(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import zipfile

    (wheel,) = tmp_path.glob("reportgen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("report.html.j2", "diff.html.j2", "archive.html.j2", "report.css"):
        assert f"reportgen/templates/{name}" in names
    assert "reportgen/schema/report-v2.json" in names


def test_a_model_too_big_for_the_memory_budget_is_one_line_with_status_2(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tight.toml"
    config.write_text("memory_budget = 1e-9\n")
    args = ["build", "--model", f"{SPEC}:TinyLinen", "--checkpoint", str(linen_checkpoint), "--images", str(tiny_probe)]
    code = main([*args, "--config", str(config), "--out", str(tmp_path / "r")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("reportgen: error:")]
    assert code == 2
    assert len(errors) == 1
    assert "one example needs about" in errors[0] and "KiB" in errors[0]
    assert "widest layer" in errors[0] and "memory_budget" in errors[0]
    assert not (tmp_path / "r").exists()
