"""A comparison (`reportgen.diff.Diff`) -> the diff page's view model and its summary.md. No jax:
the only images are the probe thumbnails the two report folders already hold."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

from reportgen.diff import Diff
from reportgen.findings import listed
from reportgen.results import SAMPLED_SETTINGS, ClassScore, Finding
from reportgen.summary import code, escape, finding_lines, fit, table
from reportgen.views import (
    CSP,
    ChangedPrediction,
    Compared,
    DiffView,
    FigureView,
    FindingView,
    Guess,
    LayerChangeRow,
    MethodChangeRow,
)

MAX_PREDICTION_CARDS = 60
MAX_EVIDENCE_ROWS = 60
INTEGER = "{:,.0f}"
PERCENT = "{:.1%}"
SCORE = "{:.3f}"


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def compared(
    label: str, old: float | None, new: float | None, fmt: str, better: str = "", relative: bool = False
) -> Compared:
    """Both values, the signed change (relative to the old value if `relative`) and whether it is
    better or worse (`better`: 'higher', 'lower', 'zero' (closer to 0), or '' when neither
    direction is better). Values
    that print the same count as unchanged, so rounding noise does not show as a change."""
    before, after = _cell(old, fmt), _cell(new, fmt)
    if before == after:
        return Compared(label, before, after, "", "")
    if old is None or new is None:
        return Compared(label, before, after, "—", "changed")
    delta = new - old
    sign = "+" if delta > 0 else "−"
    size = f"{abs(delta) / abs(old):.0%}" if relative and old else fmt.format(abs(delta))
    if not any(digit in size for digit in "123456789"):  # a change the format rounds to zero
        size = f"{abs(delta):.1g}"
    change = sign + size
    if better == "zero":
        tone = "better" if abs(new) < abs(old) else "worse" if abs(new) > abs(old) else "changed"
    else:
        tone = "changed" if not better else ("better" if (delta > 0) == (better == "higher") else "worse")
    return Compared(label, before, after, change, tone)


def _guesses(top: tuple[ClassScore, ...]) -> tuple[Guess, ...]:
    return tuple(Guess(c.name, _cell(c.probability, PERCENT)) for c in top)


def _thumbnail(folder: Path | None, position: int, alt: str) -> FigureView | None:
    """The probe thumbnail a report folder holds for the image at `position`, embedded."""
    if folder is None:
        return None
    path = folder / "figures" / f"probe-{position + 1:04d}.png"
    if not path.is_file():
        return None
    return FigureView("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(), alt, "")


def _indices(values: Sequence[int]) -> str:
    return listed(values, 16)


def _findings(found: Sequence[Finding]) -> tuple[FindingView, ...]:
    return tuple(FindingView(f.severity, f.message, "") for f in found)


def diff_view(diff: Diff, gates: Sequence[tuple[str, bool, str]], folders: tuple[Path | None, Path | None]) -> DiffView:
    """The comparison page. `gates` holds each rule, whether it broke, and the value measured."""
    old_folder, new_folder = folders
    sides = (
        Compared("model", diff.old.spec, diff.new.spec, "", "changed" if diff.old.spec != diff.new.spec else ""),
        Compared("checkpoint sha256", diff.old.checkpoint_sha256[:16], diff.new.checkpoint_sha256[:16], "", ""),
        Compared("reportgen", diff.old.reportgen, diff.new.reportgen, "", ""),
        Compared("built", diff.old.date, diff.new.date, "", ""),
    )
    formats = {"probe accuracy": PERCENT}
    headline = tuple(compared(h.name, h.old, h.new, formats.get(h.name, INTEGER), h.better) for h in diff.headline)
    changed_classes = [
        compared(c.name, c.old_accuracy, c.new_accuracy, PERCENT, "higher")
        for c in diff.classes
        if c.old_accuracy != c.new_accuracy
    ]
    confusion = tuple(
        compared(f"{c.label} → {c.predicted}", c.old, c.new, INTEGER, "lower") for c in diff.confusion[:30]
    )
    predictions = tuple(
        ChangedPrediction(
            p.name,
            p.label or "—",
            _thumbnail(old_folder, p.old_position, f"{p.name} in {diff.old.label}"),
            _thumbnail(new_folder, p.new_position, f"{p.name} in {diff.new.label}"),
            _guesses(p.old_top),
            _guesses(p.new_top),
        )
        for p in diff.prediction_changes[:MAX_PREDICTION_CARDS]
    )
    layers = tuple(
        LayerChangeRow(
            layer.name,
            layer.filters_correspond,
            compared("dead", layer.old_dead, layer.new_dead, INTEGER, "lower"),
            _indices(layer.died),
            _indices(layer.revived),
            compared("mean", layer.old_mean_activation, layer.new_mean_activation, "{:.3g}", relative=True),
            _cell(layer.channel_mean_correlation, "{:.2f}"),
            compared("firing", layer.old_firing, layer.new_firing, PERCENT),
            compared("vis", layer.old_vis_beat_fraction, layer.new_vis_beat_fraction, PERCENT, "higher"),
        )
        for layer in diff.layers
    )
    only = tuple(f"only in {diff.old.label}: {name}" for name in diff.layers_only_old) + tuple(
        f"only in {diff.new.label}: {name}" for name in diff.layers_only_new
    )
    methods = tuple(
        MethodChangeRow(
            m.title,
            compared("deletion", m.old_deletion_auc, m.new_deletion_auc, SCORE, "lower"),
            compared("insertion", m.old_insertion_auc, m.new_insertion_auc, SCORE, "higher"),
            compared("ROAD", m.old_road_morf, m.new_road_morf, SCORE, "lower"),
            compared("infidelity", m.old_infidelity, m.new_infidelity, "{:.2f}", "lower"),
            compared("sanity", m.old_sanity, m.new_sanity, "{:.2f}", "zero"),
            _cell(m.map_correlation, "{:.2f}") + (f" ({m.compared_images} images)" if m.compared_images else ""),
            {
                (False, True): "now fails the sanity check",
                (True, False): "now passes the sanity check",
                (True, True): "fails the sanity check in both",
            }.get((m.old_flagged, m.new_flagged), ""),
        )
        for m in diff.methods
    )
    evidence = tuple(
        Compared(
            f"{e.name} at {e.layer}",
            f"#{e.old_filter} ({e.old_share:.0%})",
            f"#{e.new_filter} ({e.new_share:.0%})",
            "",
            "",
        )
        for e in diff.evidence[:MAX_EVIDENCE_ROWS]
    )
    provenance = tuple(
        Compared(s.key, s.old or "—", s.new or "—", "", "changed" if s.changed else "") for s in diff.provenance
    )
    changed_provenance = tuple(p for p in provenance if p.tone)
    return DiffView(
        title=f"reportgen diff: {diff.old.label} → {diff.new.label}",
        csp=CSP,
        old_label=diff.old.label,
        new_label=diff.new.label,
        sides=sides,
        gates=tuple(Compared(rule, "", "", why, "worse" if broken else "better") for rule, broken, why in gates),
        headline=headline,
        common_images=f"{diff.common_images} probe images are in both reports (matched by content)",
        classes=tuple(changed_classes),
        classes_unchanged=len(diff.classes) - len(changed_classes),
        confusion=confusion,
        predictions=predictions,
        layers=layers,
        layers_only=only,
        methods=methods,
        introduced=_findings(diff.findings_introduced),
        resolved=_findings(diff.findings_resolved),
        changed=tuple(Compared(f.severity, f.old_message, f.new_message, "", "") for f in diff.findings_changed),
        provenance=changed_provenance + tuple(p for p in provenance if not p.tone and p.label.startswith("versions.")),
        provenance_unchanged=len(provenance) - len(changed_provenance),
        evidence=evidence,
        evidence_note=_evidence_note(diff),
        sampling_note=sampling_note(diff),
    )


def sampling_note(diff: Diff) -> str:
    """What the two reports computed on different samples (the settings a time budget lowers),
    so that a reader does not take a change of sample for a change of the model; "" if none."""
    keys = {f"settings.{name}": name for name in SAMPLED_SETTINGS}
    changed = [f"{keys[s.key]} {s.old} → {s.new}" for s in diff.provenance if s.key in keys and s.changed]
    if not changed:
        return ""
    return (
        f"The two reports computed different samples ({', '.join(changed)}; 0: all): means over the explained"
        " images, the sanity check's stages and images, and the visualised filters and classes compare"
        " different work, not only a different model."
    )


def _evidence_note(diff: Diff) -> str:
    """How many (class, layer) pairs kept their strongest filter; "" where none were compared."""
    compared_pairs = diff.evidence_unchanged + len(diff.evidence)
    if not compared_pairs:
        return ""
    listed = f" The first {MAX_EVIDENCE_ROWS} changes are listed." if len(diff.evidence) > MAX_EVIDENCE_ROWS else ""
    return (
        f"{diff.evidence_unchanged} of {compared_pairs} (class, layer) pairs keep their strongest filter. Only"
        f" layers whose filters correspond in both releases are compared.{listed}"
    )


def diff_markdown(diff: Diff, gates: Sequence[tuple[str, bool, str]], link: str = "diff.html") -> str:
    """summary.md of a comparison: headline side by side, gates, what changed; no images."""
    old, new = escape(diff.old.label), escape(diff.new.label)
    lines = [f"# reportgen diff: {old} → {new}", "", f"Full comparison: [{link}]({link}).", ""]
    rows = [
        (escape(c.label), c.old, c.new, c.change + (f" ({c.tone})" if c.tone in ("better", "worse") else ""))
        for c in (
            compared(h.name, h.old, h.new, PERCENT if h.name == "probe accuracy" else INTEGER, h.better)
            for h in diff.headline
        )
    ]
    lines += table(("", old, new, "change"), rows)
    if note := sampling_note(diff):
        lines += ["", escape(note)]
    if gates:
        lines += ["", "## Gates", ""]
        lines += [
            f"- {'**broken**' if broken else 'held'}: {code(rule)} — {escape(why)}" for rule, broken, why in gates
        ]
    lines += [
        "",
        f"## Predictions that changed ({len(diff.prediction_changes)} of {diff.common_images} common images)",
        "",
    ]
    lines += [
        f"- {escape(p.name)} (label {escape(p.label or '—')}):"
        f" {escape(p.old_top[0].name)} → {escape(p.new_top[0].name)}"
        for p in diff.prediction_changes[:MAX_PREDICTION_CARDS]
    ] or ["- none"]
    lines += ["", "## Filters that died", ""]
    lines += [
        f"- {code(layer.name)}: {_indices(layer.died)}"
        if layer.filters_correspond
        else f"- {code(layer.name)}: {layer.old_dead} → {layer.new_dead} dead (filters do not correspond)"
        for layer in diff.layers
        if layer.died_count
    ] or ["- none"]
    lines += ["", "## Findings introduced", "", *finding_lines(diff.findings_introduced, link)]
    lines += ["", "## Findings resolved", "", *finding_lines(diff.findings_resolved, link)]
    if diff.findings_changed:
        lines += ["", "## Findings that changed", ""]
        lines += [f"- {escape(f.old_message)} → {escape(f.new_message)}" for f in diff.findings_changed[:40]]
    lines += ["", "## Attribution maps between the reports", ""]
    lines += table(
        ("method", "map rank correlation", "sanity (Spearman after randomising all layers)"),
        [
            (
                escape(m.title),
                _cell(m.map_correlation, "{:.2f}"),
                f"{_cell(m.old_sanity, '{:.2f}')} → {_cell(m.new_sanity, '{:.2f}')}",
            )
            for m in diff.methods
        ],
    )
    return fit(lines)
