"""`reportgen diff`: read two reports, compare them, check the gates, and write diff.html,
diff.json and summary.md into a new folder (never into either input)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reportgen import diff, gates, output, results, serial
from reportgen.diff_sections import diff_markdown, diff_view
from reportgen.errors import UserError
from reportgen.render import render_diff


@dataclass(frozen=True)
class DiffOutcome:
    """What a comparison found and wrote."""

    out: Path
    diff: diff.Diff
    broken: tuple[str, ...]


def _folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def labels(old: Path, new: Path) -> tuple[str, str]:
    """Names for the two sides: their folder names, told apart when they are the same."""
    a, b = _folder(old).resolve().name or "old", _folder(new).resolve().name or "new"
    return (f"{a} (old)", f"{b} (new)") if a == b else (a, b)


def dumps(comparison: diff.Diff) -> str:
    """diff.json text."""
    return json.dumps(serial.to_json(comparison), indent=1, sort_keys=True, allow_nan=False) + "\n"


def write_diff(old_path: Path, new_path: Path, out: Path, rules: Sequence[gates.Rule] = ()) -> DiffOutcome:
    """Compare two report folders (or report.json files) and write the comparison into `out`."""
    old, new = results.load(old_path), results.load(new_path)
    target = out.resolve()
    for given in (old_path, new_path):
        folder = _folder(given).resolve()
        if target == folder or folder in target.parents:
            raise UserError(f"--out {out} is inside the report {given}; a diff never writes into its inputs")
    output.check_out(out, "diff")
    old_label, new_label = labels(old_path, new_path)
    comparison = diff.compare(old, new, old_label, new_label)
    pairs = [(rule.text, *gates.evaluate(rule, new, comparison)) for rule in rules]
    view = diff_view(comparison, pairs, (_folder(old_path), _folder(new_path)))
    files: dict[str, bytes | str] = {
        "diff.html": render_diff(view),
        "diff.json": dumps(comparison),
        "summary.md": diff_markdown(comparison, pairs),
    }
    output.write_folder(out, "diff", files, diff.DIFF_SCHEMA_VERSION)
    return DiffOutcome(out, comparison, tuple(f"{rule}: {why}" for rule, broken, why in pairs if broken))
