"""Alerts read from the typed results only: dead or rarely firing filters, NaNs, misclassified
images, low accuracy, attribution methods that fail the sanity check. The layer sections show the
same findings, so the Overview and a layer's section can never disagree."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from reportgen.results import (
    Attribution,
    ClassEvidence,
    Finding,
    ImagePrediction,
    LayerResult,
    MethodScores,
    Predictions,
    Report,
    auc_gap,
)

LOW_ACCURACY = 0.9
CLASS_FAILS = 3
"""From this many misclassified images of one class, one finding says the class fails."""
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
SHARED_FILTER_CLASSES = 0.25
"""A filter that is the strongest evidence for at least this fraction of the classes (and 3) is
named: many classes then stand on one detector."""
RELIED_SHARE = 0.1
"""A class whose strongest filter carries at least this share of its evidence relies on it."""


def listed(items: Sequence[object], limit: int = 12) -> str:
    """The first `limit` items, comma-separated, and how many more there are."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def layer_findings(layer: LayerResult, previous: LayerResult | None) -> list[Finding]:
    """Dead and rarely firing filters, and non-finite outputs, of one layer. After pooling, only the
    dead and rare channels that pooling adds are reported (a pooled dead channel is dead because its
    input is)."""
    dead, rare = layer.dead_filters, layer.rare_filters
    if "pool" in layer.kind and previous is not None and len(previous.statistics.mean) == len(layer.statistics.mean):
        dead = tuple(c for c in dead if c not in previous.dead_filters)
        rare = tuple(c for c in rare if c not in previous.rare_filters and c not in previous.dead_filters)
    name, section, unit, width = layer.name, layer.section, layer.unit, layer.output_shape[-1]
    found = []
    if layer.nonfinite_weights:
        broken = layer.nonfinite_weights
        message = f"{name}: the weights of {len(broken)} of {width} {unit}s are NaN or infinite: {listed(broken)}"
        found.append(Finding("error", "nonfinite-weights", name, message, section))
    if layer.statistics.nonfinite_images:
        channels = sum(v is None for v in layer.statistics.max)
        inherited = previous is not None and previous.statistics.nonfinite_images > 0
        message = (
            f"{name}: NaN or infinite outputs in {channels} of {width} {unit}s on"
            f" {layer.statistics.nonfinite_images} probe images"
            + (f" (so does the layer before it, {previous.name})" if inherited and previous else "")
        )
        found.append(Finding("warning" if inherited else "error", "nonfinite", name, message, section))
    if dead:
        message = f"{name}: {len(dead)} of {width} {unit}s are dead (zero on every probe image): {listed(dead)}"
        found.append(Finding("warning", "dead-filters", name, message, section))
    if rare:
        message = f"{name}: {len(rare)} of {width} {unit}s fire on few probe images: {listed(rare)}"
        found.append(Finding("info", "rare-filters", name, message, section))
    return found


def prediction_findings(predictions: Predictions) -> list[Finding]:
    """Probability outputs, low accuracy and each misclassified probe image."""
    found = []
    if predictions.outputs_are_probabilities:
        message = (
            "the model returns probabilities (every output row is non-negative and sums to 1), so they are shown"
            " as they are; attribution explains a probability, whose gradient vanishes when the model is"
            " confident: return logits for sharper explanations (setting outputs)"
        )
        found.append(Finding("warning", "probability-outputs", "model", message, "predictions"))
    if predictions.accuracy is None:
        message = "probe images have no labels: no accuracy or confusion matrix"
        return [*found, Finding("info", "unlabelled", "probe", message, "predictions")]
    if predictions.accuracy < LOW_ACCURACY:
        message = f"probe accuracy is {predictions.accuracy:.1%}"
        found.append(Finding("error", "low-accuracy", "probe", message, "predictions"))
    wrong: dict[str, list[ImagePrediction]] = {}
    totals: Counter[str] = Counter(image.label for image in predictions.images if image.label is not None)
    for image in predictions.images:
        if image.correct is False and image.label is not None:
            wrong.setdefault(image.label, []).append(image)
    for label, images in wrong.items():
        if len(images) >= CLASS_FAILS:
            confused, times = Counter(image.top[0].name for image in images).most_common(1)[0]
            message = (
                f"class {label}: {len(images)} of {totals[label]} labelled probe images are misclassified, most"
                f" often as {confused} ({times}): " + listed([image.name for image in images], 5)
            )
            found.append(Finding("warning", "misclassified-class", label, message, "misclassified"))
            continue
        for image in images:
            best = image.top[0]
            probability = "" if best.probability is None else f" ({best.probability:.1%})"
            message = f"{image.name}: labelled {image.label}, predicted {best.name}{probability}"
            found.append(Finding("warning", "misclassified", image.sha256, message, "misclassified"))
    return found


def input_findings(warnings: Sequence[str], nonfinite_logits: int) -> list[Finding]:
    """Problems with the probe folder, and NaN outputs."""
    found = [Finding("warning", "probe", note, note, "overview") for note in warnings]
    if nonfinite_logits:
        message = f"NaN or infinite logits on {nonfinite_logits} probe images"
        found.append(Finding("error", "nonfinite", "logits", message, "predictions"))
    return found


def attribution_findings(summary: Attribution) -> list[Finding]:
    """A warning for each method whose maps survive randomising the classifier head and the last
    convolution (they cannot be explaining the decision), or every layer (Adebayo et al. 2018,
    "Sanity Checks for Saliency Maps"), saying how far down the cascade they stay similar; and
    for each method that draws the same map for another class (Sixt et al. 2020)."""
    found = []
    for method in summary.methods:
        if method.flagged:
            found.append(
                Finding("warning", "sanity-check", method.name, cascade_message(method, summary), "attribution")
            )
        if method.class_insensitive and method.class_spearman is not None and method.class_ssim is not None:
            above = "" if summary.class_threshold is None else f", both above {summary.class_threshold:g}"
            message = (
                f"{method.title} draws the same map for a random other class as for the explained class"
                f" (Spearman {method.class_spearman:.2f}, SSIM {method.class_ssim:.2f}{above}, on"
                f" {summary.sanity_images} images): it does not show what the class depends on"
            )
            found.append(Finding("warning", "class-insensitive", method.name, message, "attribution"))
    return found


def cascade_message(method: MethodScores, summary: Attribution) -> str:
    """What the cascade shows of a flagged method: where its maps stay similar."""
    threshold = summary.sanity_threshold
    head, final = method.sanity_head, method.sanity_final
    similar = [k for k, v in enumerate(method.sanity_spearman) if v is not None and abs(v) > threshold]
    through = ""
    if similar and summary.sanity_stages:
        last = max(similar)
        through = (
            f"; it stays above {threshold:g} through {last + 1} of {len(summary.sanity_stages)} stages,"
            f" down to {summary.sanity_stages[last]}"
        )
    if head is not None and abs(head) > threshold:
        down_to = summary.sanity_stages[summary.head_stage] if summary.sanity_stages else "the last convolution"
        return (
            f"{method.title} maps stay similar when the layers from the output down to {down_to} are"
            f" randomised (Spearman {head:.2f}"
            + (f", {final:.2f} with every layer randomised" if final is not None else "")
            + f"{through}): they do not explain this model's decision"
        )
    return (
        f"{method.title} maps barely change when every layer's weights are randomised"
        f" (Spearman {final:.2f}): they do not show what this model learned"
    )


IG_COMPLETENESS_LIMIT = 0.05
"""Relative completeness error of an Integrated Gradients map beyond which the report warns."""


def completeness_findings(summary: Attribution) -> list[Finding]:
    """A warning when Integrated Gradients maps do not sum to the logit change they explain
    (Sundararajan et al. 2017): the path integral needs more steps or a better rule."""
    errors = [(image.ig_completeness_error, image.name) for image in summary.images]
    measured = [(error, name) for error, name in errors if error is not None]
    over = [(error, name) for error, name in measured if error > IG_COMPLETENESS_LIMIT]
    if not over:
        return []
    worst, name = max(over)
    message = (
        f"Integrated Gradients maps miss completeness by more than {IG_COMPLETENESS_LIMIT:.0%} on {len(over)} of"
        f" {len(measured)} explained images (worst {worst:.1%}, {name}): a map should sum to the class logit's"
        ' change from the baseline image; raise ig_steps or use ig_rule = "gauss-legendre"'
    )
    return [Finding("warning", "ig-completeness", "integrated_gradients", message, "attribution")]


def faithfulness_findings(summary: Attribution) -> list[Finding]:
    """A warning for each method whose maps order pixels no better than random noise does, by
    insertion AUC minus deletion AUC on the explained images."""
    random = next((b for b in summary.baselines if b.name == "random"), None)
    floor = None if random is None else auc_gap(random)
    if floor is None:
        return []
    found = []
    for method in summary.methods:
        gap = auc_gap(method)
        if gap is not None and gap <= floor:
            message = (
                f"{method.title} orders pixels no better than a random map: insertion minus deletion AUC"
                f" {gap:.3f}, a random map {floor:.3f}"
            )
            found.append(Finding("warning", "faithfulness", method.name, message, "attribution"))
    return found


def evidence_findings(evidence: Sequence[ClassEvidence], layers: Sequence[LayerResult]) -> list[Finding]:
    """Filters that are the strongest evidence for many classes, and classes relying on a filter
    the layer's census calls rare (it fires on few probe images: a detector specific to the class,
    or a fragile one)."""
    found: list[Finding] = []
    rare = {layer.name: set(layer.rare_filters) for layer in layers}
    strongest: dict[tuple[str, int], list[str]] = {}
    for row in evidence:
        for layer in dict.fromkeys(d.layer for d in row.filters):
            top = next(d for d in row.filters if d.layer == layer)
            if top.contribution <= 0:
                continue
            strongest.setdefault((layer, top.filter), []).append(row.name)
            if top.share >= RELIED_SHARE and top.filter in rare[layer]:
                message = (
                    f"{row.name} relies most on {layer} filter {top.filter} ({top.share:.0%} of its evidence there),"
                    " which fires on few probe images"
                )
                found.append(Finding("info", "rare-filter-evidence", f"{row.name}/{layer}", message, "class-evidence"))
    least = max(3, SHARED_FILTER_CLASSES * len(evidence))
    for (layer, f), names in strongest.items():
        if len(names) >= least:
            message = (
                f"{layer} filter {f} is the strongest evidence for {len(names)} of {len(evidence)} classes"
                f" ({listed(names, 6)})"
            )
            found.append(Finding("info", "shared-filter", f"{layer}/{f}", message, "class-evidence"))
    return found


def ordered(findings: Sequence[Finding]) -> list[Finding]:
    """Most severe first, otherwise in the order they were found."""
    return sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])


def of(report: Report) -> tuple[Finding, ...]:
    """Every finding of a report, most severe first."""
    found = input_findings(report.provenance.probe_warnings, report.predictions.nonfinite_logits)
    found += prediction_findings(report.predictions)
    previous = None
    for layer in report.layers:
        found += layer_findings(layer, previous)
        previous = layer
    found += attribution_findings(report.attribution)
    found += completeness_findings(report.attribution)
    found += faithfulness_findings(report.attribution)
    found += evidence_findings(report.class_evidence, report.layers)
    return tuple(ordered(found))


def counts(findings: Sequence[Finding]) -> dict[str, int]:
    """Number of findings per severity."""
    return {severity: sum(f.severity == severity for f in findings) for severity in SEVERITY_ORDER}


def count_text(findings: Sequence[Finding]) -> str:
    """'1 error, 3 warnings, 0 notes'."""
    n = counts(findings)
    return ", ".join(
        f"{n[s]} {word}{'' if n[s] == 1 else 's'}"
        for s, word in (("error", "error"), ("warning", "warning"), ("info", "note"))
    )
