"""Alerts derived from results: dead or rarely firing filters, NaNs, misclassified images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reportgen.analyses.activations import LayerStatistics
from reportgen.analyses.methods import TITLES
from reportgen.analyses.predictions import Predictions

LOW_ACCURACY = 0.9


@dataclass(frozen=True)
class Finding:
    """One alert with the report section it refers to."""

    severity: str  # "error", "warning" or "info"
    code: str
    message: str
    section: str  # HTML id of the section that shows it


def layer_findings(
    name: str, section: str, stats: LayerStatistics, filters: int, unit: str = "filter"
) -> list[Finding]:
    """Dead and rarely firing filters, and non-finite outputs, of one layer."""
    found = []
    if stats.nonfinite_images:
        found.append(
            Finding(
                "error",
                "nonfinite",
                f"{name}: NaN or infinite outputs on {stats.nonfinite_images} probe images",
                section,
            )
        )
    if stats.dead:
        found.append(
            Finding(
                "warning",
                "dead-filters",
                f"{name}: {len(stats.dead)} of {filters} {unit}s are dead (zero on every probe image): "
                + _indices(stats.dead),
                section,
            )
        )
    if stats.rare:
        found.append(
            Finding(
                "info",
                "rare-filters",
                f"{name}: {len(stats.rare)} of {filters} {unit}s fire on few probe images: " + _indices(stats.rare),
                section,
            )
        )
    return found


def _indices(indices: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def prediction_findings(pred: Predictions, names: Sequence[str], classes: Sequence[str]) -> list[Finding]:
    """Accuracy and misclassified probe images."""
    found = []
    accuracy = pred.accuracy
    if accuracy is None:
        return [
            Finding("info", "unlabelled", "probe images have no labels: no accuracy or confusion matrix", "predictions")
        ]
    wrong = [i for i in range(len(names)) if pred.labels[i] >= 0 and pred.predicted[i] != pred.labels[i]]
    if accuracy < LOW_ACCURACY:
        found.append(Finding("error", "low-accuracy", f"probe accuracy is {accuracy:.1%}", "predictions"))
    for i in wrong:
        found.append(
            Finding(
                "warning",
                "misclassified",
                f"{names[i]}: labelled {classes[pred.labels[i]]}, predicted {classes[pred.predicted[i]]}"
                f" ({pred.top_probs[i, 0]:.1%})",
                "misclassified",
            )
        )
    return found


def input_findings(notes: Sequence[str], nonfinite_logits: int) -> list[Finding]:
    """Problems with the probe folder, and NaN outputs."""
    found = [Finding("warning", "probe", note, "overview") for note in notes]
    if nonfinite_logits:
        found.append(
            Finding("error", "nonfinite", f"NaN or infinite logits on {nonfinite_logits} probe images", "predictions")
        )
    return found


def attribution_findings(summary: Mapping[str, Any]) -> list[Finding]:
    """A warning for each method whose maps survive randomising every layer."""
    return [
        Finding(
            "warning",
            "sanity-check",
            f"{TITLES[name]} maps barely change when every layer's weights are randomised"
            f" (Spearman {scores['sanity_final']:.2f}): they do not show what this model learned",
            "attribution",
        )
        for name, scores in summary["methods"].items()
        if scores["flagged"]
    ]


SEVERITY_ORDER: Mapping[str, int] = {"error": 0, "warning": 1, "info": 2}


def ordered(findings: Sequence[Finding]) -> list[Finding]:
    """Most severe first, otherwise in the order they were found."""
    return sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])
