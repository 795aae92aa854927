"""A multi-host build: two processes joined by `jax.distributed` (over gloo, on this machine) write
the report that one process writes alone."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SPEC, cpu_devices_env

TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def _command(checkpoint: Path, probe: Path, classes: Path, config: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "reportgen",
        "build",
        "--model",
        f"{SPEC}:TinyLinen",
        "--checkpoint",
        str(checkpoint),
        "--images",
        str(probe),
        "--classes",
        str(classes),
        "--config",
        str(config),
        "--out",
        str(out),
        "--quiet",
    ]


def _results(folder: Path) -> dict[str, Any]:
    """report.json without its provenance (timings, command line, plan)."""
    report = json.loads((folder / "report.json").read_text())
    report.pop("provenance")
    return report


def _assert_same(a: Any, b: Any, where: str = "report") -> None:
    """Equal structure and strings; numbers within 1e-5 (relative) or 1e-6."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float | int) and not isinstance(a, bool):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=where)
    else:
        assert a == b, where


@pytest.mark.slow
def test_two_hosts_write_the_report_one_host_writes(
    linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path, tmp_path: Path
) -> None:
    config = tmp_path / "settings.toml"
    # Sample nothing, whatever the speeds each run measures; a memory budget small enough that the
    # twelve images make three chunks of four: two rounds over two hosts, the last one a repeat.
    config.write_text("time_budget = inf\nmemory_budget = 0.0002\n")
    alone = tmp_path / "alone"
    single = subprocess.run(
        _command(linen_checkpoint, tiny_probe, tiny_classes, config, alone),
        env=cpu_devices_env(1),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    shared = tmp_path / "shared"
    shared.mkdir()
    out = shared / "report"
    port = _free_port()
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    joined = [*_command(linen_checkpoint, tiny_probe, tiny_classes, config, out), "--coordinator", f"localhost:{port}"]
    hosts = [
        subprocess.Popen(
            [*joined, "--num-processes", "2", "--process-id", str(i)],
            env=cpu_devices_env(1),
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        for i, log in enumerate(logs)
    ]
    try:
        for host in hosts:
            host.wait(timeout=TIMEOUT)
    finally:
        for host in hosts:
            host.kill()
    for host, log in zip(hosts, logs, strict=True):
        assert host.returncode == 0, log.read_text()[-3000:]

    assert sorted(p.name for p in shared.iterdir()) == ["report"], "one report, no leftover temporary folder"
    devices = json.loads((out / "report.json").read_text())["provenance"]["devices"]
    assert len(devices) == 2, devices
    _assert_same(_results(alone), _results(out))
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(p.name for p in (alone / "figures").iterdir())


def test_a_run_that_cannot_be_joined_is_one_line_and_status_2(tmp_path: Path) -> None:
    """No coordinator given and no cluster to detect one from."""
    env = {k: v for k, v in cpu_devices_env(1).items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR"))}
    out = tmp_path / "report"
    command = [sys.executable, "-m", "reportgen", "build", "--num-processes", "2", "--process-id", "0"]
    done = subprocess.run(
        [*command, "--model", f"{SPEC}:TinyLinen", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("reportgen: error: could not join the multi-host run: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()
