"""A release archive: one report folder per release, a diff of each release against the one
before, and index.html, a self-contained table of every release with its headline numbers."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reportgen import compare, findings, gates, output, results
from reportgen.errors import UserError
from reportgen.render import environment
from reportgen.views import CSP

ORDER_FILE = "releases.json"
RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


@dataclass(frozen=True)
class ReleaseRow:
    """One release in the archive index (cells as text)."""

    name: str
    report: str
    date: str
    accuracy: str
    errors: str
    warnings: str
    dead: str
    flagged: str
    diff: str
    changes: str


def check_release(name: str) -> str:
    """A release name usable as a folder name, or UserError."""
    if not RELEASE_NAME.match(name) or name in (".", ".."):
        raise UserError(f"--release {name!r}: use letters, digits, '.', '_', '+' or '-' (e.g. v1.2.0)")
    return name


def releases(archive: Path) -> list[str]:
    """Release names in the order they were first archived."""
    path = archive / ORDER_FILE
    if not path.is_file():
        return []
    try:
        names = json.loads(path.read_text(encoding="utf-8"))["releases"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a reportgen archive index ({e}); remove it to start a new archive") from e
    return [n for n in names if (archive / n / "report.json").is_file()]


def previous_release(archive: Path, release: str) -> str | None:
    """The release that `release` is compared with: the one before it, or the newest for a new one."""
    names = releases(archive)
    before = names[: names.index(release)] if release in names else names
    return before[-1] if before else None


def check_archive(archive: Path) -> None:
    """Refuse a folder that holds other things than an archive."""
    if archive.exists() and not archive.is_dir():
        raise UserError(f"--archive {archive} is a file; choose a folder")
    if archive.is_dir() and any(archive.iterdir()) and not (archive / ORDER_FILE).is_file():
        raise UserError(f"--archive {archive} exists and is not a reportgen archive; choose an empty or new folder")


def publish(archive: Path, release: str, rules: Sequence[gates.Rule]) -> list[str]:
    """Add `release` (already built into archive/release) to the archive: rebuild every diff between
    consecutive releases and index.html. Returns the broken diff rules of this release against the
    one before it (none when it is the first)."""
    names = releases(archive)
    if release not in names:
        names.append(release)
    output.write_file(archive / ORDER_FILE, json.dumps({"releases": names}, indent=1) + "\n")
    diffs = archive / "diffs"
    wanted = {f"{a}--{b}" for a, b in itertools.pairwise(names)}
    if diffs.is_dir():
        for stale in diffs.iterdir():
            if stale.name not in wanted:
                shutil.rmtree(stale, ignore_errors=True)
    broken: list[str] = []
    outcomes: dict[str, compare.DiffOutcome] = {}
    diff_rules = [rule for rule in rules if gates.METRICS[rule.metric].needs_diff]
    for a, b in itertools.pairwise(names):
        own = diff_rules if b == release else []
        outcome = compare.write_diff(archive / a, archive / b, diffs / f"{a}--{b}", own)
        outcomes[b] = outcome
        if b == release:
            broken = list(outcome.broken)
    output.write_file(archive / "index.html", _index(archive, names, outcomes))
    return broken


def _index(archive: Path, names: list[str], outcomes: dict[str, compare.DiffOutcome]) -> str:
    rows = []
    for name in reversed(names):
        report = results.load(archive / name)
        counts = findings.counts(report.findings)
        accuracy = report.predictions.accuracy
        outcome = outcomes.get(name)
        before = names[names.index(name) - 1] if names.index(name) > 0 else None
        rows.append(
            ReleaseRow(
                name=name,
                report=f"{name}/report.html",
                date=report.provenance.date,
                accuracy="—" if accuracy is None else f"{accuracy:.1%}",
                errors=str(counts["error"]),
                warnings=str(counts["warning"]),
                dead=str(sum(len(layer.dead_filters) for layer in report.layers)),
                flagged=str(sum(m.flagged for m in report.attribution.methods)),
                diff="" if before is None else f"diffs/{before}--{name}/diff.html",
                changes=""
                if outcome is None
                else f"{len(outcome.diff.prediction_changes)} predictions changed since {before}",
            )
        )
    return environment().get_template("archive.html.j2").render(rows=rows, csp=CSP, title=f"Releases: {archive.name}")
