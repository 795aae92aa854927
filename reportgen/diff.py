"""Two reports -> what changed between them, as typed results (diff.json). Reads report.json only:
no model, no jax. Probe images are matched by content hash and layers by name, so renamed files
and different architectures compare where they can, and the rest is listed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen import findings as findings_module
from reportgen.analyses.ranks import correlation, spearman
from reportgen.results import ClassScore, DecidingFilter, Finding, ImagePrediction, LayerResult, Report

DIFF_SCHEMA_VERSION = 1
CORRESPONDENCE = 0.5
"""Filters are compared index by index only when the per-channel mean activations of the layer
correlate at least this much between the reports: a fine-tuned release keeps its filters in
place (correlation near 1), an independently trained one does not (near 0), and then only the
counts of dead filters can be compared."""


@dataclass(frozen=True)
class Side:
    """One of the two reports compared."""

    label: str
    spec: str
    class_name: str
    checkpoint_sha256: str
    date: str
    reportgen: str


@dataclass(frozen=True)
class Headline:
    """A headline number in both reports."""

    name: str
    old: float | None
    new: float | None
    better: str  # "higher", "lower" or "" (neither)


@dataclass(frozen=True)
class ClassChange:
    """Accuracy on one class's labelled probe images in both reports."""

    name: str
    old_accuracy: float | None
    new_accuracy: float | None
    old_images: int
    new_images: int


@dataclass(frozen=True)
class ConfusionChange:
    """How often images labelled `label` were predicted as `predicted`, before and after."""

    label: str
    predicted: str
    old: int
    new: int


@dataclass(frozen=True)
class PredictionChange:
    """A probe image (same content in both reports) whose top-1 class changed."""

    sha256: str
    name: str
    label: str | None
    old_position: int
    new_position: int
    old_top: tuple[ClassScore, ...]
    new_top: tuple[ClassScore, ...]


@dataclass(frozen=True)
class LayerChange:
    """One layer present in both reports (matched by name)."""

    name: str
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    filters_correspond: bool
    died_count: int  # filters that died here: by index where filters correspond, else the count's growth
    died: tuple[int, ...]
    revived: tuple[int, ...]
    old_dead: int
    new_dead: int
    old_mean_activation: float | None
    new_mean_activation: float | None
    channel_mean_correlation: float | None
    old_firing: float | None
    new_firing: float | None
    old_vis_beat_fraction: float | None
    new_vis_beat_fraction: float | None


@dataclass(frozen=True)
class MethodChange:
    """One attribution method's scores in both reports, and how alike its maps are."""

    name: str
    title: str
    old_deletion_auc: float | None
    new_deletion_auc: float | None
    old_insertion_auc: float | None
    new_insertion_auc: float | None
    old_sanity: float | None
    new_sanity: float | None
    old_flagged: bool
    new_flagged: bool
    map_correlation: float | None
    compared_images: int
    old_road_morf: float | None = None
    new_road_morf: float | None = None
    old_infidelity: float | None = None
    new_infidelity: float | None = None


@dataclass(frozen=True)
class FindingChange:
    """A finding about the same thing in both reports whose message changed."""

    severity: str
    old_message: str
    new_message: str


@dataclass(frozen=True)
class SettingChange:
    """A provenance or settings entry in both reports (JSON text; null where absent)."""

    key: str
    old: str | None
    new: str | None
    changed: bool


@dataclass(frozen=True)
class EvidenceChange:
    """A class whose strongest filter at a layer differs between the reports, at a layer whose
    filters correspond (so that filter numbers mean the same filters in both)."""

    name: str
    layer: str
    old_filter: int
    new_filter: int
    old_share: float  # of the class's positive evidence at the layer
    new_share: float


@dataclass(frozen=True)
class Diff:
    """Everything that changed between two reports (diff.json)."""

    schema_version: int
    old: Side
    new: Side
    headline: tuple[Headline, ...]
    common_images: int
    classes: tuple[ClassChange, ...]
    confusion: tuple[ConfusionChange, ...]
    prediction_changes: tuple[PredictionChange, ...]
    layers: tuple[LayerChange, ...]
    layers_only_old: tuple[str, ...]
    layers_only_new: tuple[str, ...]
    methods: tuple[MethodChange, ...]
    findings_introduced: tuple[Finding, ...]
    findings_resolved: tuple[Finding, ...]
    findings_changed: tuple[FindingChange, ...]
    provenance: tuple[SettingChange, ...]
    evidence: tuple[EvidenceChange, ...] = ()
    evidence_unchanged: int = 0  # (class, layer) pairs compared whose strongest filter is the same

    def headline_value(self, name: str) -> Headline:
        """The headline row called `name`."""
        return next(h for h in self.headline if h.name == name)


def _mean(values: tuple[float | None, ...]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


# ---------------------------------------------------------------------------------------------
# The comparison


def _side(report: Report, label: str) -> Side:
    prov = report.provenance
    return Side(
        label=prov.release or label,
        spec=report.model.spec,
        class_name=report.model.class_name,
        checkpoint_sha256=report.model.checkpoint.sha256,
        date=prov.date,
        reportgen=prov.versions.get("reportgen", "?"),
    )


def _headline(old: Report, new: Report) -> tuple[Headline, ...]:
    def numbers(report: Report) -> dict[str, float | None]:
        counts = findings_module.counts(report.findings)
        return {
            "probe accuracy": report.predictions.accuracy,
            "probe images": len(report.predictions.images),
            "parameters": report.model.params,
            "layers": len(report.layers),
            "dead filters": sum(len(layer.dead_filters) for layer in report.layers),
            "error findings": counts["error"],
            "warning findings": counts["warning"],
            "methods failing the sanity check": sum(m.flagged for m in report.attribution.methods),
        }

    better = {"probe accuracy": "higher", "dead filters": "lower", "error findings": "lower"}
    better |= {"warning findings": "lower", "methods failing the sanity check": "lower"}
    before, after = numbers(old), numbers(new)
    return tuple(Headline(name, before[name], after[name], better.get(name, "")) for name in before)


def _by_hash(report: Report) -> dict[str, tuple[int, ImagePrediction]]:
    out: dict[str, tuple[int, ImagePrediction]] = {}
    for position, image in enumerate(report.predictions.images):
        out.setdefault(image.sha256, (position, image))
    return out


def _classes(old: Report, new: Report) -> tuple[ClassChange, ...]:
    def per_class(report: Report) -> dict[str, tuple[int, int]]:
        tally: dict[str, tuple[int, int]] = {}
        for image in report.predictions.images:
            if image.label is not None:
                hits, total = tally.get(image.label, (0, 0))
                tally[image.label] = (hits + bool(image.correct), total + 1)
        return tally

    before, after = per_class(old), per_class(new)
    names = [*before, *(n for n in after if n not in before)]
    rows = []
    for name in names:
        hits_old, total_old = before.get(name, (0, 0))
        hits_new, total_new = after.get(name, (0, 0))
        rows.append(
            ClassChange(
                name,
                hits_old / total_old if total_old else None,
                hits_new / total_new if total_new else None,
                total_old,
                total_new,
            )
        )
    return tuple(rows)


def _confusion(old: Report, new: Report) -> tuple[ConfusionChange, ...]:
    """Off-diagonal cells (label -> predicted class) whose count changed, largest change first."""

    def cells(report: Report) -> dict[tuple[str, str], int]:
        tally: dict[tuple[str, str], int] = {}
        for image in report.predictions.images:
            if image.label is not None and image.correct is False:
                key = (image.label, image.top[0].name)
                tally[key] = tally.get(key, 0) + 1
        return tally

    before, after = cells(old), cells(new)
    keys = sorted(set(before) | set(after), key=lambda k: (-abs(after.get(k, 0) - before.get(k, 0)), k))
    return tuple(
        ConfusionChange(label, predicted, before.get((label, predicted), 0), after.get((label, predicted), 0))
        for label, predicted in keys
        if before.get((label, predicted), 0) != after.get((label, predicted), 0)
    )


def _prediction_changes(old: Report, new: Report) -> tuple[int, tuple[PredictionChange, ...]]:
    before, after = _by_hash(old), _by_hash(new)
    changes = []
    for sha, (new_position, image) in after.items():
        if sha not in before:
            continue
        old_position, previous = before[sha]
        if previous.top[0].name != image.top[0].name:
            changes.append(
                PredictionChange(sha, image.name, image.label, old_position, new_position, previous.top, image.top)
            )
    return sum(sha in before for sha in after), tuple(changes)


def _layer(old: LayerResult, new: LayerResult, before: LayerChange | None) -> LayerChange:
    """One layer in both reports. After pooling, only the filters that pooling itself kills or
    revives are listed (a pooled filter dies with its input)."""
    same_width = old.output_shape[-1] == new.output_shape[-1]
    profile = (
        correlation(np.array(old.statistics.mean, np.float64), np.array(new.statistics.mean, np.float64))
        if same_width
        else None
    )
    correspond = profile is not None and profile >= CORRESPONDENCE
    died = tuple(c for c in new.dead_filters if c not in old.dead_filters) if correspond else ()
    revived = tuple(c for c in old.dead_filters if c not in new.dead_filters) if correspond else ()
    growth = max(0, len(new.dead_filters) - len(old.dead_filters))
    if "pool" in new.kind and before is not None and before.new_shape[-1] == new.output_shape[-1]:
        died = tuple(c for c in died if c not in before.died)
        revived = tuple(c for c in revived if c not in before.revived)
        growth = max(0, growth - max(0, before.new_dead - before.old_dead))
    old_vis, new_vis = old.feature_visualisation, new.feature_visualisation
    return LayerChange(
        name=new.name,
        old_shape=old.output_shape,
        new_shape=new.output_shape,
        filters_correspond=correspond,
        died_count=len(died) if correspond else growth,
        died=died,
        revived=revived,
        old_dead=len(old.dead_filters),
        new_dead=len(new.dead_filters),
        old_mean_activation=_mean(old.statistics.mean),
        new_mean_activation=_mean(new.statistics.mean),
        channel_mean_correlation=profile,
        old_firing=_mean(old.statistics.firing_fraction),
        new_firing=_mean(new.statistics.firing_fraction),
        old_vis_beat_fraction=None if old_vis is None else old_vis.beat_fraction,
        new_vis_beat_fraction=None if new_vis is None else new_vis.beat_fraction,
    )


def _layers(old: Report, new: Report) -> tuple[LayerChange, ...]:
    before = {layer.name: layer for layer in old.layers}
    changes: list[LayerChange] = []
    for layer in new.layers:
        if layer.name in before:
            changes.append(_layer(before[layer.name], layer, changes[-1] if changes else None))
    return tuple(changes)


def _methods(old: Report, new: Report) -> tuple[MethodChange, ...]:
    before = {m.name: m for m in old.attribution.methods}
    old_images = {image.sha256: image for image in old.attribution.images}
    rows = []
    for method in new.attribution.methods:
        previous = before.get(method.name)
        if previous is None:
            continue
        correlations = []
        for image in new.attribution.images:
            match = old_images.get(image.sha256)
            if match is None or method.name not in match.maps or method.name not in image.maps:
                continue
            rho = spearman(match.maps[method.name].array(), image.maps[method.name].array())
            if rho is not None:
                correlations.append(rho)
        rows.append(
            MethodChange(
                name=method.name,
                title=method.title,
                old_deletion_auc=previous.deletion_auc,
                new_deletion_auc=method.deletion_auc,
                old_insertion_auc=previous.insertion_auc,
                new_insertion_auc=method.insertion_auc,
                old_sanity=previous.sanity_final,
                new_sanity=method.sanity_final,
                old_flagged=previous.flagged,
                new_flagged=method.flagged,
                map_correlation=float(np.mean(correlations)) if correlations else None,
                compared_images=len(correlations),
                old_road_morf=previous.road_morf,
                new_road_morf=method.road_morf,
                old_infidelity=previous.infidelity,
                new_infidelity=method.infidelity,
            )
        )
    return tuple(rows)


def _flat(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key in sorted(value):
            out |= _flat(f"{prefix}.{key}" if prefix else str(key), value[key])
        return out
    return {prefix: json.dumps(value, sort_keys=True)}


def _provenance(old: Report, new: Report) -> tuple[SettingChange, ...]:
    def entries(report: Report) -> dict[str, str]:
        prov = report.provenance
        return {
            "checkpoint.sha256": report.model.checkpoint.sha256,
            "checkpoint.path": report.model.checkpoint.path,
            "model.spec": report.model.spec,
            "python": prov.python,
            "backend": prov.backend,
            "devices": ", ".join(prov.devices),
            "seed": str(prov.seed),
            "date": prov.date,
            **{f"versions.{k}": v for k, v in sorted(prov.versions.items())},
            **_flat("settings", prov.settings),
        }

    before, after = entries(old), entries(new)
    keys = [*before, *(k for k in after if k not in before)]
    return tuple(SettingChange(k, before.get(k), after.get(k), before.get(k) != after.get(k)) for k in keys)


def _evidence(old: Report, new: Report, layers: tuple[LayerChange, ...]) -> tuple[tuple[EvidenceChange, ...], int]:
    """Classes whose strongest filter changed, at the layers whose filters correspond; and how
    many (class, layer) pairs kept theirs."""
    comparable = [layer.name for layer in layers if layer.filters_correspond]

    def strongest(report: Report) -> dict[tuple[str, str], DecidingFilter]:
        first: dict[tuple[str, str], DecidingFilter] = {}
        for row in report.class_evidence:
            for d in row.filters:  # largest first within each layer
                first.setdefault((row.name, d.layer), d)
        return first

    before, after = strongest(old), strongest(new)
    pairs = [(row.name, layer) for layer in comparable[::-1] for row in new.class_evidence]
    shared = [key for key in pairs if key in before and key in after]
    changes = tuple(
        EvidenceChange(name, layer, before[name, layer].filter, after[name, layer].filter,
                       before[name, layer].share, after[name, layer].share)
        for name, layer in shared
        if before[name, layer].filter != after[name, layer].filter
    )  # fmt: skip
    return changes, len(shared) - len(changes)


def _finding_key(finding: Finding) -> tuple[str, str]:
    return finding.code, finding.subject


def compare(old: Report, new: Report, old_label: str = "old", new_label: str = "new") -> Diff:
    """What changed from `old` to `new`."""
    common, changes = _prediction_changes(old, new)
    old_layers = {layer.name: layer for layer in old.layers}
    new_names = {layer.name for layer in new.layers}
    old_findings = {_finding_key(f): f for f in old.findings}
    new_keys = {_finding_key(f) for f in new.findings}
    layers = _layers(old, new)
    evidence, evidence_unchanged = _evidence(old, new, layers)
    return Diff(
        schema_version=DIFF_SCHEMA_VERSION,
        old=_side(old, old_label),
        new=_side(new, new_label),
        headline=_headline(old, new),
        common_images=common,
        classes=_classes(old, new),
        confusion=_confusion(old, new),
        prediction_changes=changes,
        layers=layers,
        layers_only_old=tuple(layer.name for layer in old.layers if layer.name not in new_names),
        layers_only_new=tuple(layer.name for layer in new.layers if layer.name not in old_layers),
        methods=_methods(old, new),
        findings_introduced=tuple(f for f in new.findings if _finding_key(f) not in old_findings),
        findings_resolved=tuple(f for f in old.findings if _finding_key(f) not in new_keys),
        findings_changed=tuple(
            FindingChange(f.severity, old_findings[_finding_key(f)].message, f.message)
            for f in new.findings
            if _finding_key(f) in old_findings and old_findings[_finding_key(f)].message != f.message
        ),
        provenance=_provenance(old, new),
        evidence=evidence,
        evidence_unchanged=evidence_unchanged,
    )
