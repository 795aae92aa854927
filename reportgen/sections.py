"""Report data -> view models: the figures, captions and strings each section of the report shows.

Figures are drawn here (through `figures`) and kept in a `FigureStore`: images drawn with numpy are
handed over as functions for its worker threads, matplotlib charts as PNG bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from reportgen import figures, results
from reportgen.analyses import catalogue, patches
from reportgen.analyses.classfilters import class_order, filter_order
from reportgen.figurestore import FigureStore
from reportgen.views import (
    CSP,
    CSP_EXTERNAL,
    ArchitectureRow,
    AttributionRow,
    AttributionView,
    ClassCard,
    ClassEvidenceRow,
    ConceptCard,
    EvidenceSection,
    EvidenceTile,
    Fact,
    FigureView,
    FilterCard,
    FilterRow,
    FindingView,
    Guess,
    LayerView,
    MethodAbout,
    MethodScore,
    PlanRow,
    PredictionView,
    ReportView,
    slug,
)

if TYPE_CHECKING:  # types only: view-building imports no jax
    from reportgen import attribution, visualisation
    from reportgen.analyses import predictions
    from reportgen.analyses.activations import LayerStatistics
    from reportgen.analyses.classfilters import LayerEvidence
    from reportgen.analyses.concepts import LayerConcepts
    from reportgen.config import Settings
    from reportgen.data import ProbeSet
    from reportgen.model.graph import Layer, ReceptiveField


def number(value: float | None, spec: str) -> str:
    """A recorded number formatted by `spec`, or '—' where it was not finite."""
    return "—" if value is None else format(value, spec)


def human(n: float) -> str:
    """1234567 -> '1.23 M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g}"


def receptive_text(rf: results.ReceptiveField | ReceptiveField | None) -> str:
    """'5×5 px, stride 1' or 'whole input'."""
    if rf is None:
        return "whole input"
    size = f"{rf.size[0]}×{rf.size[1]}"
    stride = f"{rf.stride[0]}" if rf.stride[0] == rf.stride[1] else f"{rf.stride[0]}×{rf.stride[1]}"
    return f"{size} px, stride {stride}"


@dataclass(frozen=True)
class Shown:
    """The probe images whose activation maps are drawn, with their names."""

    images: np.ndarray
    names: list[str]


class PredictionsSection(NamedTuple):
    """Views of the Predictions section."""

    rows: tuple[PredictionView, ...]
    wrong: tuple[PredictionView, ...]
    confusion: FigureView | None


class ClassSection(NamedTuple):
    """Views of the class visualisation section."""

    cards: tuple[ClassCard, ...]
    note: str


def figure_prefix(index: int, name: str) -> str:
    """The start of the file names of the figures about the layer at `index`."""
    return f"{index + 1:02d}-{slug(name)}"


def filter_anchor(section: str, f: int) -> str:
    """The HTML id of filter f's card in the layer section `section`."""
    return f"{section}-filter-{f}"


def synthesised_figure(prefix: str, f: int) -> str:
    """The file name of filter f's synthesised image, under its layer's `figure_prefix`."""
    return f"{prefix}-vis-{f:03d}.png"


def layer_view(
    index: int,
    layer: Layer,
    recorded: results.LayerResult,
    stats: LayerStatistics,
    kernel: np.ndarray | None,
    maps: Mapping[str, np.ndarray],
    shown: Shown,
    settings: Settings,
    store: FigureStore,
    attributed: attribution.AttributionResult,
    vis: visualisation.FilterVisualisation | None,
    probe: ProbeSet,
    found: tuple[results.Finding, ...],
    concepts: LayerConcepts | None = None,
) -> LayerView:
    """The section of one layer: facts, filters, activation maps, Grad-CAM, feature visualisation,
    concepts, and the findings about it."""
    section = recorded.section
    prefix = figure_prefix(index, layer.name)
    channels = layer.output_shape[-1]
    unit = recorded.unit
    facts = [
        Fact("Kind", layer.kind + (f" + {layer.activation}" if layer.activation else "")),
        Fact("Output shape", " × ".join(map(str, layer.output_shape))),
        Fact("Parameters", f"{layer.params:,}"),
        Fact("FLOPs per image", human(layer.flops)),
        Fact("Receptive field", receptive_text(layer.receptive_field)),
        Fact(
            f"Dead {unit}s",
            f"{len(stats.dead)} of {channels}" if stats.nonnegative else "n/a (outputs can be negative)",
        ),
    ]
    figs: list[FigureView] = []
    if kernel is not None:
        colour = (
            "in colour (RGB weights scaled per filter)"
            if kernel.shape[2] == 3
            else ("mean over input channels, blue negative, red positive")
        )
        figs.append(
            store.add(
                f"{prefix}-filters.png",
                partial(figures.filter_grid, kernel),
                f"{layer.name} filters",
                f"Filters {colour}.",
            )
        )
        figs.append(
            store.chart(
                f"{prefix}-filter-norms.png", partial(figures.filter_norm_chart, kernel), f"{layer.name} filter norms"
            )
        )
    if layer.name in maps:
        layer_maps = maps[layer.name]
        n_all = settings.layers.activation_images or len(layer_maps)
        for j in range(min(n_all, len(layer_maps))):
            figs.append(
                store.add(
                    f"{prefix}-channels-{j + 1}.png",
                    partial(figures.channel_grid, layer_maps[j]),
                    f"{layer.name}, all {channels} channels on {shown.names[j]}",
                    f"All {channels} channels on {shown.names[j]} (each map scaled to its own maximum).",
                )
            )
        across = settings.layers.channels_across or channels
        picked = [int(c) for c in np.argsort(-stats.mean, kind="stable")[: min(across, channels)]]
        n_across = min(settings.layers.channel_images or len(layer_maps), len(layer_maps))
        figs.append(
            store.add(
                f"{prefix}-across-images.png",
                partial(figures.channel_across_images, layer_maps[:n_across], shown.images[:n_across], picked),
                f"{layer.name} channels across probe images",
                "First row: probe images. Each further row: one channel across them — the "
                f"{len(picked)} most active channels, in order: {', '.join(map(str, picked))}.",
            )
        )
    if layer.name in attributed.layer_cams:
        display_images = probe.images[attributed.indices]
        n = min(10, len(display_images))
        cams = attributed.layer_cams[layer.name]
        figs.append(
            store.add(
                f"{prefix}-cams.png",
                partial(figures.cam_rows, display_images[:n], [cams[m][:n] for m in catalogue.LAYER_CAMS]),
                f"class activation maps at {layer.name}",
                f"Rows: {', '.join(catalogue.TITLES[m] for m in catalogue.LAYER_CAMS)} at this layer, for the explained"
                f" class of the first {n} attribution images (inferno scale: dark is no evidence, yellow the"
                " map's strongest evidence).",
            )
        )
    figs.append(
        store.chart(
            f"{prefix}-statistics.png",
            partial(figures.statistics_chart, stats.mean, stats.firing, stats.max),
            f"{layer.name} statistics",
            "",
        )
    )
    alerts = [f.message.removeprefix(f"{layer.name}: ") for f in found if f.section == section]
    rows = tuple(
        FilterRow(
            str(c),
            f"{stats.mean[c]:.4g}",
            f"{stats.firing[c]:.0%}",
            f"{stats.max[c]:.4g}",
            "dead" if c in stats.dead else "rare" if c in stats.rare else "",
        )
        for c in range(channels)
    )
    title = f"{index + 1}. {layer.name}"
    summary, cards = filter_cards(vis, layer, probe, store, prefix, section) if vis is not None else ("", ())
    concept_text, concept_views = (
        concept_cards(concepts, recorded.concepts, layer, probe, store, prefix)
        if concepts is not None and recorded.concepts is not None
        else ("", ())
    )
    return LayerView(
        section,
        title,
        layer.kind,
        tuple(facts),
        tuple(figs),
        tuple(alerts),
        rows,
        summary,
        cards,
        concept_text,
        concept_views,
    )


def concept_cards(
    found: LayerConcepts, recorded: results.Concepts, layer: Layer, probe: ProbeSet, store: FigureStore, prefix: str
) -> tuple[str, tuple[ConceptCard, ...]]:
    """One card per concept of the layer: its maps and patches on its strongest probe images, the
    filters it mixes and the classes it serves."""
    if not recorded.fitted_rows:
        return "No concepts: this layer's outputs are not finite at the positions sampled from the probe images.", ()
    if not recorded.concepts:
        sampled = f"{recorded.fitted_rows:,} positions sampled from the probe images"
        return f"No concepts: this layer is zero at all {sampled}.", ()
    rf = layer.receptive_field
    assert rf is not None
    cards = []
    for c, concept in enumerate(recorded.concepts):
        top = concept.top_patches
        images = [int(i) for i in top.images[0]]
        crops = [
            patches.crop(probe.images[i], rf, r, col)
            for i, r, col in zip(images, top.rows[0], top.cols[0], strict=True)
        ]
        strip = store.add(
            f"{prefix}-concept-{c + 1}.png",
            partial(
                figures.concept_strip, probe.images[images], np.stack([found.maps[i][..., c] for i in images]), crops
            ),
            f"{layer.name} concept {c + 1} on " + ", ".join(probe.names[i] for i in images),
        )
        weighted = list(zip(concept.filters, concept.weights, strict=True))
        mix = ", ".join(f"#{f} ({w:.2f})" for j, (f, w) in enumerate(weighted) if j == 0 or w >= 0.05)
        served = ", ".join(f"{k.name} {k.share:.0%}" for k in concept.classes[:3])
        served = served or "no class (it counts against each)"
        cards.append(ConceptCard(f"Concept {c + 1} · {concept.presence:.0%} of the activation", strip, mix, served))
    errors = [e for e in recorded.errors if e is not None]
    k = len(recorded.concepts)
    summary = (
        f"A non-negative factorisation of this layer's activations at {recorded.fitted_rows:,} positions of the"
        f" probe images (Deep Feature Factorization): {k} concept{'s' if k != 1 else ''} reconstruct it with"
        f" a relative error of {errors[k - 1]:.0%} (1 concept: {errors[0]:.0%}, {len(errors)}: {errors[-1]:.0%};"
        f" k is the smallest count that one more concept would improve by less than {recorded.gain:.0%})."
        " Each concept is a mix of filters."
        " Its maps show where it is present on the probe images where it is strongest (one scale per concept,"
        ' so weaker images look weaker), with the receptive field at each peak below. "Serves" names the'
        " classes for which it carries the largest share of the concept evidence here (coefficient × gradient"
        " of the class logit)."
    )
    if recorded.evidence is not None and recorded.layer_evidence:
        summary += (
            f" Per probe image the concepts carry {recorded.evidence:.3g} of the {recorded.layer_evidence:.3g}"
            " logit units of evidence that all of this layer's filters give the image's class"
        )
        summary += (
            "."
            if recorded.evidence >= 0.5 * recorded.layer_evidence
            else ": most of the class evidence here lies"
            " in what the concepts leave out, so their classes say little about this layer's decisions."
        )
    return summary, tuple(cards)


def filter_cards(
    vis: visualisation.FilterVisualisation, layer: Layer, probe: ProbeSet, store: FigureStore, prefix: str, section: str
) -> tuple[str, tuple[FilterCard, ...]]:
    """One card per visualised filter: its synthesised image and top probe patches."""
    rf = layer.receptive_field
    assert rf is not None
    cards = []
    for k, f in enumerate(vis.filters.tolist()):
        image = store.add(
            synthesised_figure(prefix, f),
            partial(figures.thumbnail, vis.images[k, 0], zoom=2),
            f"{layer.name} filter {f} synthesised",
        )
        crops = [
            patches.crop(probe.images[int(i)], rf, int(r), int(c))
            for i, r, c in zip(vis.top.images[f], vis.top.rows[f], vis.top.cols[f], strict=True)
        ]
        patch_views = tuple(
            store.add(
                f"{prefix}-patch-{f:03d}-{j + 1}.png",
                partial(figures.thumbnail, crop, zoom=figures.zoom_for(crop.shape[0], 32)),
                f"{layer.name} filter {f}: patch of {probe.names[int(vis.top.images[f, j])]}",
            )
            for j, crop in enumerate(crops)
        )
        dead = bool(vis.dead[k])
        status = "dead" if dead else ("beats" if vis.beats_probes[k] else "")
        caption = f"#{f} · {vis.activation[k]:.3g} (probes ≤ {vis.probe_best[k]:.3g})" + (" · dead" if dead else "")
        cards.append(FilterCard(image, patch_views, caption, status, filter_anchor(section, f)))
    fraction = vis.beat_fraction
    live = int((~vis.dead).sum())
    beaten = (
        "no live filters" if fraction is None else f"{fraction:.0%} of the {live} live {'one' if live == 1 else 'ones'}"
    )
    summary = (
        f"Synthesised images for {vis.selection}, beside the probe patches (the receptive field around the strongest"
        f" unit) that excite each filter most. The synthesised image beats every probe image for {beaten}."
    )
    return summary, tuple(cards)


def predictions_section(
    probe: ProbeSet, pred: predictions.Predictions, classes: list[str], store: FigureStore
) -> PredictionsSection:
    """Every probe image's top-5, the misclassified ones, and the confusion matrix."""
    rows = tuple(prediction_view(i, probe, pred, classes, store, "probe") for i in range(len(probe.names)))
    confusion = (
        store.chart(
            "confusion-matrix.png",
            partial(figures.confusion_chart, pred.confusion),
            "confusion matrix",
            "Rows: true class; columns: predicted class; red boxes: errors.",
        )
        if pred.confusion is not None
        else None
    )
    return PredictionsSection(rows, tuple(p for p in rows if p.verdict == "wrong"), confusion)


def prediction_view(
    i: int, probe: ProbeSet, pred: predictions.Predictions, classes: list[str], store: FigureStore, prefix: str
) -> PredictionView:
    """One probe image with its top classes and whether they are right."""
    label = int(pred.labels[i])
    verdict = "" if label < 0 else ("correct" if pred.predicted[i] == label else "wrong")
    image = store.add(f"{prefix}-{i + 1:04d}.png", partial(figures.thumbnail, probe.images[i]), probe.names[i], "")
    top = tuple(Guess(classes[int(k)], f"{p:.1%}") for k, p in zip(pred.top_classes[i], pred.top_probs[i], strict=True))
    return PredictionView(image, probe.names[i], classes[label] if label >= 0 else "—", verdict, top)


def class_cards(
    vis: visualisation.ClassVisualisation,
    probe: ProbeSet,
    pred: predictions.Predictions,
    classes: list[str],
    store: FigureStore,
) -> ClassSection:
    """Each class's synthesised image beside the first correctly classified probe image of it."""
    cards = []
    for row, k in enumerate(vis.classes.tolist()):
        name = classes[k]
        image = store.add(
            f"class-{k:03d}.png", partial(figures.thumbnail, vis.images[row, 0], zoom=3), f"{name} synthesised"
        )
        hits = np.flatnonzero((probe.labels == k) & (pred.predicted == k))
        example = (
            store.add(
                f"class-{k:03d}-example.png",
                partial(figures.thumbnail, probe.images[hits[0]], zoom=3),
                probe.names[hits[0]],
            )
            if len(hits)
            else None
        )
        cards.append(ClassCard(name, image, example, f"logit {vis.logits[row]:.3g}"))
    note = (
        "Each image maximises one class logit (before softmax), starting from noise; beside it, the first"
        " probe image of that class the model classifies correctly."
    )
    if len(vis.classes) < len(classes):
        note += (
            f" Shown: the {len(vis.classes)} of {len(classes)} classes the model predicts most often on the probe set."
        )
    return ClassSection(tuple(cards), note)


EVIDENCE_LAYERS = 2
"""The deepest visualised layers whose filters each class row shows."""
EVIDENCE_TILES = 3
"""Filters shown per class and layer."""


def evidence_section(
    recorded: tuple[results.ClassEvidence, ...],
    evidence: list[LayerEvidence],
    layers: tuple[Layer, ...],
    section_of: Mapping[str, str],
    per_image: Mapping[str, Mapping[str, np.ndarray]],
    targets: np.ndarray,
    probe: ProbeSet,
    store: FigureStore,
) -> EvidenceSection:
    """Which filters each class relies on: a class × filter heatmap per visualised layer and, for
    every class, the strongest filters of the deepest layers with what they respond to."""
    index = {layer.name: i for i, layer in enumerate(layers)}
    shown_layers = tuple(layer.layer for layer in evidence[-EVIDENCE_LAYERS:][::-1])
    names = {row.index: row.name for row in recorded}
    heatmaps = []
    for layer_evidence in evidence[::-1]:
        order = class_order(layer_evidence.contribution)
        order = np.array([k for k in order if k in names], int)
        if not len(order):
            continue
        share = layer_evidence.share()[order]
        if not (np.nan_to_num(share) > 0).any():  # the logits do not depend on this layer's filters
            continue
        filters = filter_order(share)
        name = layer_evidence.layer
        heatmaps.append(
            store.chart(
                f"evidence-{figure_prefix(index[name], name)}.png",
                partial(figures.evidence_heatmap, share[:, filters], [names[k] for k in order], filters, name),
                f"Share of each class's evidence per filter of {name}",
                f"{name}: rows are classes, ordered so that classes relying on the same filters sit together;"
                " columns are filters, grouped by the class they serve most. A column red in many rows is a"
                " filter many classes share; a lone red cell is a filter specific to one class.",
            )
        )
    synthesised_views: dict[tuple[str, int], FigureView | None] = {}

    def synthesised(layer_name: str, f: int) -> FigureView | None:
        """The filter's synthesised image, kept by its layer section; None where it was not visualised."""
        if (layer_name, f) not in synthesised_views:
            name = synthesised_figure(figure_prefix(index[layer_name], layer_name), f)
            found = store.view(name, f"{layer_name} filter {f} synthesised") if name in store else None
            synthesised_views[layer_name, f] = found
        return synthesised_views[layer_name, f]

    def class_patch(k: int, layer_name: str, f: int) -> FigureView:
        """Where the filter fires most in the class's probe images: the receptive field around its
        strongest unit in the image of class k it fires on most."""
        layer = layers[index[layer_name]]
        assert layer.receptive_field is not None
        own = np.flatnonzero(targets == k)
        best = own[int(np.argmax(per_image[layer_name]["max"][own, f]))]
        row, col = divmod(int(per_image[layer_name]["argmax"][best, f]), layer.output_shape[1])
        crop = patches.crop(probe.images[best], layer.receptive_field, row, col)
        return store.add(
            f"evidence-{k:03d}-{figure_prefix(index[layer_name], layer_name)}-{f:03d}.png",
            partial(figures.thumbnail, crop, zoom=figures.zoom_for(crop.shape[0], 44)),
            f"{layer_name} filter {f} on {probe.names[best]}",
        )

    def tile(k: int, d: results.DecidingFilter) -> EvidenceTile:
        patch = class_patch(k, d.layer, d.filter)
        image = synthesised(d.layer, d.filter)
        label, share, section = f"{d.layer} #{d.filter}", f"{d.share:.0%}", section_of[d.layer]
        conducted = "" if d.conductance_share is None else f"{d.conductance_share:.0%}"
        if image is None:  # not visualised: no card of its own
            return EvidenceTile(patch, None, label, share, "#" + section, conducted)
        return EvidenceTile(image, patch, label, share, "#" + filter_anchor(section, d.filter), conducted)

    rows = []
    for row in recorded:
        groups = tuple(
            tuple(
                tile(row.index, d)
                for d in [d for d in row.filters if d.layer == layer_name and d.contribution > 0][:EVIDENCE_TILES]
            )
            for layer_name in shown_layers
        )
        examples = np.flatnonzero(targets == row.index)
        example = (
            store.add(
                f"evidence-example-{row.index:03d}.png",
                partial(figures.thumbnail, probe.images[examples[0]], zoom=2),
                probe.names[examples[0]],
            )
            if len(examples)
            else None
        )
        count = f"{row.images} probe image" + ("s" if row.images != 1 else "")
        rows.append(ClassEvidenceRow(row.name, example, count, groups))
    conductance = (
        "; below it, its share of the class's positive conductance there (the integrated gradient that flows"
        " through the filter on the straight path from a black image, Dhamdhere et al. 2018), which counts the"
        " evidence the filter builds up along the way and not only at the image"
        if any(d.conductance_share is not None for row in recorded for d in row.filters)
        else ""
    )
    note = (
        "For each class, the filters whose activation carries the most evidence for its logit: activation"
        " × gradient of the class logit, summed over the map and averaged over the class's probe images"
        " (its label; the predicted class for unlabelled images). The percentage is the filter's share of all"
        f" positive evidence at that layer{conductance}. Each tile shows the filter's synthesised image (where it was"
        " visualised) beside the part of this class's probe images it fires on most; click it to open its"
        " card in its layer section."
    )
    return EvidenceSection(note, shown_layers, tuple(heatmaps), tuple(rows))


def attribution_view(
    result: attribution.AttributionResult,
    summary: results.Attribution,
    probe: ProbeSet,
    classes: list[str],
    settings: Settings,
    store: FigureStore,
) -> AttributionView:
    """Every method on every explained image, the scores table and the curves."""
    titles = tuple(catalogue.TITLES[m] for m in catalogue.METHODS)
    rows = []
    for k, i in enumerate(result.indices.tolist()):
        image = probe.images[i]
        tiles = tuple(
            store.add(
                f"attribution-{k + 1:03d}-{m.replace('_', '-')}.png",
                partial(figures.attribution_tile, image, result.maps[m][k], m in catalogue.SIGNED),
                f"{catalogue.TITLES[m]} on {probe.names[i]}",
            )
            for m in catalogue.METHODS
        )
        picture = store.add(
            f"attribution-{k + 1:03d}-image.png", partial(figures.thumbnail, image, zoom=2), probe.names[i]
        )
        error = result.ig_completeness_error[k]
        completeness = "—" if not np.isfinite(error) else f"{error:.2%}"
        rows.append(AttributionRow(picture, probe.names[i], classes[int(result.targets[k])], tiles, completeness))
    scores = score_rows(summary)
    references = [f"{b.title} (reference)" for b in summary.baselines]
    every: list[results.MethodScores | results.BaselineScores] = [*summary.methods, *summary.baselines]

    def panel(title: str, xlabel: str, x: np.ndarray, field: str) -> figures.CurvePanel:
        return figures.CurvePanel(title, xlabel, x, np.array([getattr(m, field) for m in every], np.float64))

    steps = np.linspace(0, 1, len(summary.methods[0].deletion_curve))
    fractions = np.asarray(summary.road_fractions)
    panels = [
        panel("Deletion (lower is better)", "fraction of pixels turned black", steps, "deletion_curve"),
        panel("Insertion (higher is better)", "fraction of pixels revealed", steps, "insertion_curve"),
    ]
    if summary.road_fractions and all(len(m.road_morf_curve) == len(fractions) for m in every):
        imputed = "fraction of pixels imputed"
        panels += [
            panel("ROAD, most relevant first (lower is better)", imputed, fractions, "road_morf_curve"),
            panel("ROAD, least relevant first (higher is better)", imputed, fractions, "road_lerf_curve"),
        ]
    curves = store.chart(
        "attribution-faithfulness.png",
        partial(figures.faithfulness_chart, (*titles, *references), panels, len(references)),
        "deletion, insertion and ROAD curves",
        "Mean class probability as the most important pixels are turned black (deletion) or revealed on a"
        " blurred copy (insertion), and as the most or least important are filled in from their neighbours"
        " (ROAD); the dotted grey curves are the reference maps.",
    )
    flagged = [bool(verdict(m, summary.sanity_threshold)) for m in summary.methods]
    sanity_figure = store.chart(
        "attribution-sanity.png",
        partial(
            figures.sanity_chart,
            titles,
            result.sanity_layers,
            result.sanity,
            result.sanity_ssim,
            result.independent,
            result.head_stage,
            flagged,
        ),
        "cascading randomisation",
        f"Each step re-initialises one more layer, from the top down, on {result.sanity_images} images;"
        " a method that explains the decision falls towards 0 once the head and the last convolution"
        f" ({result.sanity_layers[result.head_stage]}, vertical line) are randomised. The dotted curve"
        " re-initialises that step's layer alone. Methods in orange fail a sanity check."
        if result.sanity_layers
        else "No layers with parameters to randomise.",
    )
    s = settings.attribution
    notes = (
        f"The Attribution CAMs use layer {result.cam_layer}, the last feature map before the classifier;"
        " each conv, merge and pooling layer's section shows "
        + ", ".join(catalogue.TITLES[m] for m in catalogue.LAYER_CAMS[:-1])
        + f" and {catalogue.TITLES[catalogue.LAYER_CAMS[-1]]} at that layer."
        " LRP: the z^B rule at the first layer (pixels bounded by the darkest and brightest input), the γ rule"
        " (γ = 0.25) at the other convolutions, ε at dense layers (Montavon et al. 2019).",
        f"SmoothGrad: {s.smoothgrad_samples} samples, noise {s.smoothgrad_noise:g} of the value range."
        f" Integrated Gradients: {s.ig_steps} steps, {s.ig_rule} rule, {s.ig_baseline} baseline"
        f"{completeness_text(result)}."
        f" Occlusion: {s.occlusion_window}-pixel window, stride {s.occlusion_stride}, black fill.",
        f"Explained class: {s.target}.",
    )
    about = tuple(MethodAbout(m.title, m.needs, m.reference) for m in catalogue.CATALOGUE)
    return AttributionView(titles, about, tuple(rows), scores, curves, sanity_figure, notes)


def completeness_text(result: attribution.AttributionResult) -> str:
    """How closely the IG maps sum to the logit change they explain, as a clause."""
    errors = result.ig_completeness_error[np.isfinite(result.ig_completeness_error)]
    if not len(errors):
        return ""
    return (
        f"; each map sums to the class logit's change from the baseline within {errors.max():.2%}"
        f' (median {np.median(errors):.2%}; "IG error" under each image)'
    )


def score_rows(summary: results.Attribution) -> tuple[MethodScore, ...]:
    """Every method and reference map, ranked by insertion minus deletion AUC (best first); each
    method with the reference maps it beats and its sanity verdict."""
    floors = [(b.name, results.auc_gap(b)) for b in summary.baselines]

    def score(entry: results.MethodScores | results.BaselineScores) -> float:
        gap = results.auc_gap(entry)
        return -np.inf if gap is None else gap

    entries: list[results.MethodScores | results.BaselineScores] = [*summary.methods, *summary.baselines]
    ranked = sorted(entries, key=score, reverse=True)
    rows = []
    for rank, entry in enumerate(ranked, start=1):
        gap = results.auc_gap(entry)
        beats, head, final, contrast, said, sensitivity = "", "—", "—", "—", "", "—"
        if isinstance(entry, results.MethodScores):
            beaten = [name for name, floor in floors if gap is not None and floor is not None and gap > floor]
            beats = ", ".join(beaten) or "none"
            structure = entry.sanity_ssim
            head = pair(entry.sanity_head, structure[summary.head_stage] if structure else None)
            final = pair(entry.sanity_final, structure[-1] if structure else None)
            contrast = pair(entry.class_spearman, entry.class_ssim)
            said = verdict(entry, summary.sanity_threshold)
            sensitivity = number(entry.max_sensitivity, ".2f")
        road_pair = "—" if entry.road_morf is None else f"{entry.road_morf:.3f} / {number(entry.road_lerf, '.3f')}"
        rows.append(
            MethodScore(
                rank,
                entry.title,
                number(entry.deletion_auc, ".3f"),
                number(entry.insertion_auc, ".3f"),
                number(gap, ".3f"),
                road_pair,
                number(entry.infidelity, ".2f"),
                beats,
                head,
                final,
                contrast,
                sensitivity,
                said,
                isinstance(entry, results.BaselineScores),
            )
        )
    return tuple(rows)


def pair(spearman: float | None, ssim: float | None) -> str:
    """'Spearman / SSIM' as table text."""
    if spearman is None:
        return "—"
    return f"{spearman:.2f} / —" if ssim is None else f"{spearman:.2f} / {ssim:.2f}"


def verdict(method: results.MethodScores, threshold: float) -> str:
    """What the sanity checks say of a method, in words ("" when it passes them)."""
    said = []
    if method.sanity_head is not None and abs(method.sanity_head) > threshold:
        said.append("survives randomising the head and last convolution")
    elif method.flagged:
        said.append("survives full randomisation")
    if method.class_insensitive:
        said.append("same map for another class")
    return "; ".join(said)


def plan_row(stage: results.PlanStage) -> PlanRow:
    """A recorded stage of the plan as table cells."""
    batching = f"{stage.chunk} at once" if stage.chunk else "—"
    if stage.inner_batch:
        batching += f" × {stage.inner_batch} inner"
    measured, compiling, peak, rate = (
        stage.measured_seconds,
        stage.compile_seconds,
        stage.measured_peak_bytes,
        stage.gflops_per_second,
    )
    return PlanRow(
        stage.name,
        batching,
        number(stage.estimated_seconds, ".1f") + " s",
        "—" if measured is None else f"{measured:.1f} s" + (f" ({compiling:.1f} s compiling)" if compiling else ""),
        "—" if peak is None else f"{peak / 1e9:.2f} GB",
        "—" if not rate else f"{rate:.1f}",
    )


def accuracy_text(predictions: results.Predictions) -> str:
    """'98.4% of 64 labelled images' or 'no labels'."""
    if predictions.accuracy is None:
        return "no labels"
    return f"{predictions.accuracy:.1%} of {predictions.labelled_images} labelled images"


def report_view(
    settings: Settings,
    report: results.Report,
    layer_views: list[LayerView],
    predictions: PredictionsSection,
    attribution: AttributionView,
    classes: ClassSection,
    evidence: EvidenceSection,
) -> ReportView:
    """The whole report's view model."""
    model, prov = report.model, report.provenance
    ck = model.checkpoint
    accuracy = accuracy_text(report.predictions)
    overview: tuple[Fact, ...] = (
        Fact("Model", model.spec),
        Fact("Model class", f"{model.class_name} (Flax {model.api})"),
        Fact("Checkpoint", ck.path + (f" (step {ck.step})" if ck.step is not None else "")),
        Fact("Checkpoint sha256", ck.sha256),
        Fact("Parameters", f"{model.params:,}"),
        Fact("Input shape", " × ".join(map(str, model.input_shape))),
        Fact("Classes", str(model.num_classes)),
        Fact("Probe images", f"{prov.probe_images} from {prov.probe_folder}"),
        Fact("Probe accuracy", accuracy),
        Fact("Layers", str(len(report.layers))),
    )
    if prov.release is not None:
        overview = (Fact("Release", prov.release), *overview)
    architecture = tuple(
        ArchitectureRow(
            "#" + layer.section,
            layer.name,
            layer.kind + (f" + {layer.activation}" if layer.activation else ""),
            " × ".join(map(str, layer.output_shape)),
            f"{layer.params:,}",
            human(layer.flops),
            receptive_text(layer.receptive_field),
        )
        for layer in report.layers
    )
    provenance = (
        *(Fact(k, v) for k, v in prov.versions.items()),
        Fact("python", prov.python),
        Fact("backend", prov.backend),
        Fact("devices", ", ".join(prov.devices)),
        Fact("seed", str(prov.seed)),
        Fact("command", prov.command or "(Python API)"),
        Fact("date", prov.date),
    )
    plan = prov.plan
    planned = {stage.name for stage in plan.stages}
    timings = tuple(Fact(k, f"{v:.2f} s") for k, v in prov.timings.items() if k not in planned)
    if plan.forward_gflops_per_second and plan.memory_budget_bytes:
        timings += (
            Fact("model forward speed, measured before the build", f"{plan.forward_gflops_per_second:.1f} GFLOP/s"),
        )
        if plan.gradient_gflops_per_second:
            speed = f"{plan.gradient_gflops_per_second:.1f} GFLOP/s"
            timings += (Fact("model gradient speed, measured before the build", speed),)
        if plan.visualisation_gflops_per_second:
            speed = f"{plan.visualisation_gflops_per_second:.1f} GFLOP/s"
            timings += (Fact("model gradient speed at feature visualisation's batch", speed),)
        if plan.visualisation_step_ms:
            step = f"{plan.visualisation_step_ms:.2f} ms per image and step"
            timings += (Fact("feature-visualisation work besides the model", step),)
        timings += (Fact("memory budget", f"{plan.memory_budget_bytes / 1e9:.1f} GB per stream"),)
    return ReportView(
        title=f"reportgen: {model.class_name}" + (f" {prov.release}" if prov.release else ""),
        csp=CSP_EXTERNAL if settings.external_figures else CSP,
        overview=overview,
        findings=tuple(FindingView(f.severity, f.message, "#" + f.section) for f in report.findings),
        architecture=architecture,
        accuracy=accuracy,
        predictions=predictions.rows,
        confusion=predictions.confusion,
        misclassified=predictions.wrong,
        attribution=attribution,
        layers=tuple(layer_views),
        classes=classes.cards,
        classes_note=classes.note,
        evidence=evidence,
        provenance=provenance,
        timings=timings,
        plan=tuple(plan_row(stage) for stage in plan.stages),
        sampled=plan.sampled,
        settings_json=json.dumps(prov.settings, indent=2, sort_keys=True),
    )
