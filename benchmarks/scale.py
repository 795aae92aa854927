"""Scaling benchmark: whole `reportgen build` runs, timed, with their peak resident memory.

    python benchmarks/scale.py                 # every row below
    python benchmarks/scale.py --only demo     # rows whose name contains "demo"

Rows:
- the demo model, standard profile, with a cold compilation cache and then warm;
- a ResNet-18 (benchmarks/resnet.py, 64x64, random weights) with 64 probe images, quick and
  standard profiles;
- the same ResNet-18 with 1,024 probe images, doing the work the 64-image quick build chose
  (its sampled counts, no time budget), so that only the probe set differs: how memory grows with it.

Each build runs in its own process; its wall time and peak RSS (from wait4) are printed and
written to benchmarks/results/scale.json together with the plan the build recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEMO = ROOT / "models" / "traffic_signs" / "model.py:TrafficSignNet"
RESNET = ROOT / "benchmarks" / "resnet.py:ResNet18"
SAME_WORK = "quick, same work as 64"


def build(name: str, args: list[str], out: Path, cache: Path) -> dict[str, Any]:
    """Run one build in a child process; its wall time, peak RSS and recorded plan."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "reportgen", "build", *args, "--out", str(out), "--quiet"]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    errors = child.stderr.read() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name}: build failed\n{errors}")
    report = json.loads((out / "report.json").read_text())
    return {
        "name": name,
        "settings": report["provenance"]["settings"],
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),
        "plan": report["provenance"]["plan"],
        "timings": report["provenance"]["timings"],
    }


def same_work(settings: dict[str, Any], path: Path) -> Path:
    """A config file that repeats the counts a build's time budget chose (`settings` from its
    report.json), with no time budget of its own."""
    a, v = settings["attribution"], settings["visualisation"]
    path.write_text(
        "time_budget = inf\n[attribution]\n"
        + "".join(f"{key} = {a[key]}\n" for key in ("images", "sanity_images", "sanity_stages"))
        + "[visualisation]\n"
        + "".join(f"{key} = {v[key]}\n" for key in ("filters", "classes"))
    )
    return path


def resnet_folder(root: Path, images: int) -> Path:
    """A checkpoint and `images` probe images of the benchmark ResNet-18."""
    folder = root / f"resnet-{images}"
    if not folder.exists():
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "resnet.py"), str(folder), "--images", str(images)], check=True
        )
    return folder


def main(argv: list[str] | None = None) -> None:
    """Run the rows, print a table and write benchmarks/results/scale.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only the rows whose name contains this text")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="reportgen-scale-") as tmp:
        root = Path(tmp)
        cache = root / "cache"
        plans: list[tuple[str, list[str], Path]] = [
            ("demo standard, cold cache", ["--model", str(DEMO)], cache / "demo"),
            ("demo standard, warm cache", ["--model", str(DEMO)], cache / "demo"),
        ]
        for images, profiles in ((64, ("quick", "standard")), (1024, (SAME_WORK,))):
            if args.only and not any(args.only in f"resnet18 {images} images {p}" for p in profiles):
                continue
            folder = resnet_folder(root, images)
            for profile in profiles:
                flags = ["--model", str(RESNET), "--checkpoint", str(folder / "checkpoint")]
                flags += ["--images", str(folder / "probe"), "--profile", "quick" if profile == SAME_WORK else profile]
                plans.append((f"resnet18 {images} images {profile}", flags, cache / "resnet"))
        done: dict[str, dict[str, Any]] = {}
        for name, flags, cache_dir in plans:
            if args.only and args.only not in name:
                continue
            if name.endswith(SAME_WORK):
                small = done.get("resnet18 64 images quick")
                if small is None:
                    raise SystemExit(f"{name} repeats the work of 'resnet18 64 images quick': run both")
                flags = [*flags, "--config", str(same_work(small["settings"], root / "same-work.toml"))]
            row = build(name, flags, root / "out" / name.replace(" ", "-").replace(",", ""), cache_dir)
            done[name] = row
            rows.append(row)
            print(f"{name:36s} {row['seconds']:7.1f} s   peak RSS {row['peak_rss_gb']:5.2f} GB", flush=True)
            for stage in row["plan"]["stages"]:
                print(f"    {stage['name']:30s} {stage['measured_seconds']:7.1f} s", flush=True)
    by_name = {row["name"]: row for row in rows}
    small, large = by_name.get("resnet18 64 images quick"), by_name.get(f"resnet18 1024 images {SAME_WORK}")
    if small and large:
        print(f"peak RSS, 1,024 / 64 probe images: {large['peak_rss_gb'] / small['peak_rss_gb']:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "rows": rows}
    (RESULTS / "scale.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
