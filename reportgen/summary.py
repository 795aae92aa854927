"""summary.md: a report's headline numbers, findings and architecture in Markdown, short enough to
paste into a review comment (no images, at most MAX_BYTES), linking to the full report."""

from __future__ import annotations

import re
from collections.abc import Sequence

from reportgen import findings as findings_module
from reportgen.results import Finding, Report

MAX_BYTES = 60_000
MAX_FINDINGS = 40
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~#])")


def escape(text: str) -> str:
    """User text (names, paths, messages) as literal Markdown on one line."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def code(text: str) -> str:
    """A name (layer, spec) as an inline code span that is also safe inside a table cell."""
    fence = "``" if "`" in text else "`"
    return f"{fence}{' '.join(str(text).split()).replace('|', chr(92) + '|')}{fence}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; cells must already be escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def finding_lines(found: Sequence[Finding], more: str) -> list[str]:
    """A bullet per finding (most severe first), the first MAX_FINDINGS of them."""
    lines = [f"- **{f.severity}** {escape(f.message)}" for f in found[:MAX_FINDINGS]]
    if len(found) > MAX_FINDINGS:
        lines.append(f"- … and {len(found) - MAX_FINDINGS} more in {more}")
    return lines or ["- none"]


def fit(lines: list[str]) -> str:
    """Join lines, dropping the last ones (with a note) until the text fits MAX_BYTES."""
    text = "\n".join(lines) + "\n"
    while len(text.encode()) > MAX_BYTES and len(lines) > 1:
        lines = lines[:-1]
        text = "\n".join([*lines, "", "… (cut to keep this summary short; see the full report)"]) + "\n"
    return text


def report_markdown(report: Report, link: str = "report.html") -> str:
    """summary.md of one report."""
    model, prov, pred = report.model, report.provenance, report.predictions
    accuracy = "no labels" if pred.accuracy is None else f"{pred.accuracy:.1%} of {pred.labelled_images} labelled"
    flagged = [m.title for m in report.attribution.methods if m.flagged]
    insensitive = [m.title for m in report.attribution.methods if m.class_insensitive]
    dead = sum(len(layer.dead_filters) for layer in report.layers)
    title = f"reportgen: {escape(model.class_name)}" + (f" — release {escape(prov.release)}" if prov.release else "")
    lines = [f"# {title}", "", f"Full report: [{link}]({link}) (every figure; open it in a browser).", ""]
    lines += table(
        ("", ""),
        [
            ("Model", f"{code(model.spec)} ({escape(model.class_name)}, Flax {model.api})"),
            ("Checkpoint sha256", f"`{model.checkpoint.sha256[:16]}…`"),
            ("Parameters", f"{model.params:,}"),
            ("Probe images", f"{prov.probe_images}, accuracy {accuracy}"),
            ("Findings", findings_module.count_text(report.findings)),
            ("Dead filters", f"{dead} in {sum(bool(layer.dead_filters) for layer in report.layers)} layers"),
            (
                "Attribution sanity",
                f"{len(flagged)} of {len(report.attribution.methods)} methods survive randomisation"
                + (": " + ", ".join(flagged) if flagged else ""),
            ),
            (
                "Class sensitivity",
                f"{len(insensitive)} of {len(report.attribution.methods)} methods draw the same map for another class"
                + (": " + ", ".join(insensitive) if insensitive else ""),
            ),
            ("Built", f"{prov.date} with reportgen {prov.versions.get('reportgen', '?')}, seed {prov.seed}"),
        ],
    )
    lines += ["", "## Findings", "", *finding_lines(report.findings, link), "", "## Architecture", ""]
    rows = []
    for layer in report.layers:
        rf = layer.receptive_field
        rows.append(
            (
                code(layer.name),
                escape(layer.kind + (f" + {layer.activation}" if layer.activation else "")),
                "×".join(map(str, layer.output_shape)),
                f"{layer.params:,}",
                f"{layer.flops:,}",
                "whole input" if rf is None else f"{rf.size[0]}×{rf.size[1]}",
                f"{len(layer.dead_filters)}",
            )
        )
    lines += table(("layer", "kind", "output", "params", "FLOPs", "receptive field", "dead"), rows)
    return fit(lines)
