"""Build a report: run the analyses, make the figures, write report.json, figures/ and report.html.

The only module that writes files. Output goes into a temporary folder beside OUT and is renamed
into place at the end, so a failed build never leaves a half-written report or destroys the
previous one.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reportgen import attribution, figures, visualisation
from reportgen.analyses import activations, methods, patches, predictions
from reportgen.analyses.activations import LayerStatistics
from reportgen.compute import enable_compilation_cache, map_examples
from reportgen.config import Settings, as_dict
from reportgen.data import ProbeSet, read_classes, read_probe, to_model
from reportgen.errors import UserError
from reportgen.findings import Finding, input_findings, layer_findings, ordered, prediction_findings
from reportgen.model.engine import Engine
from reportgen.model.graph import Layer
from reportgen.model.load import LoadedModel, leaf_paths, load_model
from reportgen.progress import Progress
from reportgen.render import render
from reportgen.views import (
    ArchitectureRow,
    AttributionRow,
    AttributionView,
    ClassCard,
    Fact,
    FigureView,
    FilterCard,
    FilterRow,
    FindingView,
    Guess,
    LayerView,
    MethodScore,
    PredictionView,
    ReportView,
)

SCHEMA_VERSION = 1
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
CSP_EXTERNAL = (
    "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)
VERSIONED_PACKAGES = ("reportgen", "jax", "jaxlib", "flax", "orbax-checkpoint", "numpy", "jinja2", "matplotlib")


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote."""

    out: Path
    html_bytes: int
    figures: int
    layers: tuple[Layer, ...]
    findings: tuple[Finding, ...]
    warnings: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Small formatting helpers


def slug(text: str) -> str:
    """A lowercase id fragment."""
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-") or "layer"


def human(n: float) -> str:
    """1234567 -> '1.23 M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g}"


def rounded(value: Any) -> Any:
    """JSON-ready numbers: 6 significant digits, non-finite as None."""
    if isinstance(value, np.ndarray):
        return [rounded(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def layer_id(index: int, layer: Layer) -> str:
    """Section id of a layer."""
    return f"layer-{index + 1}-{slug(layer.name)}"


def receptive_text(layer: Layer, input_shape: tuple[int, ...]) -> str:
    """'5×5 px, stride 1' or 'whole input'."""
    rf = layer.receptive_field
    if rf is None:
        return "whole input"
    size = f"{rf.size[0]}×{rf.size[1]}" if rf.size[0] != rf.size[1] else f"{rf.size[0]}×{rf.size[0]}"
    stride = f"{rf.stride[0]}" if rf.stride[0] == rf.stride[1] else f"{rf.stride[0]}×{rf.stride[1]}"
    return f"{size} px, stride {stride}"


def unit_name(layer: Layer) -> str:
    """What one output channel of a layer is called: a filter, or a unit of a dense layer."""
    return "filter" if layer.is_spatial else "unit"


def display_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """Probe images to show: one per distinct label first (in order), then the rest; `count` of them."""
    firsts, rest, seen = [], [], set()
    for i, label in enumerate(labels.tolist()):
        if label >= 0 and label not in seen:
            seen.add(label)
            firsts.append(i)
        else:
            rest.append(i)
    order = firsts + rest
    return np.asarray(order[: count if count > 0 else len(order)], np.int64)


# ---------------------------------------------------------------------------------------------
# Computation


def _probe(settings: Settings, model: LoadedModel, classes: list[str]) -> ProbeSet:
    if settings.images is None:
        raise UserError("no probe images; pass --images DIR with PNG or JPEG files (sub-folders named by class)")
    return read_probe(Path(settings.images), model.input_shape, classes)


def _summaries(engine: Engine, model: LoadedModel, images: np.ndarray, chunk: int, progress: Progress) -> Any:
    """Class probabilities, finiteness and per-channel statistics of every layer, for every image."""
    names = [layer.name for layer in model.graph.layers]

    def per_example(variables: Any, image: jax.Array) -> Any:
        logits, outs = engine.forward(variables, image, names)
        stats = {n: activations.channel_statistics(outs[n]) for n in names}
        return predictions.probabilities(logits), jnp.isfinite(logits).all(), stats

    progress.start("forward pass", len(images))
    result = map_examples(per_example, (model.variables,), images, chunk=chunk, progress=progress.advance)
    progress.finish()
    return result


def _maps(
    engine: Engine, model: LoadedModel, images: np.ndarray, names: list[str], chunk: int, progress: Progress
) -> dict[str, np.ndarray]:
    """Full activation maps of the spatial layers for the images shown."""

    def per_example(variables: Any, image: jax.Array) -> dict[str, jax.Array]:
        return engine.layer_outputs(variables, image, names)

    progress.start("activation maps", len(images))
    result = map_examples(per_example, (model.variables,), images, chunk=chunk, progress=progress.advance)
    progress.finish()
    return result


# ---------------------------------------------------------------------------------------------
# Figures


class FigureStore:
    """PNG bytes by file name, and the src each is shown with (data URI or relative path)."""

    def __init__(self, external: bool) -> None:
        self.external = external
        self.files: dict[str, bytes] = {}

    def add(self, name: str, data: bytes, alt: str, caption: str = "") -> FigureView:
        """Keep a figure and return its view."""
        if name in self.files:
            raise ValueError(f"duplicate figure name {name}")
        self.files[name] = data
        src = f"figures/{name}" if self.external else "data:image/png;base64," + base64.b64encode(data).decode()
        return FigureView(src, alt, caption)


def _kernel(model: LoadedModel, layer: Layer) -> np.ndarray | None:
    leaves = dict(zip(leaf_paths(model.variables), jax.tree.leaves(model.variables), strict=True))
    kernels = [np.asarray(leaves[p]) for p in layer.param_paths if np.ndim(leaves[p]) == 4]
    return kernels[0] if len(kernels) == 1 else None


# ---------------------------------------------------------------------------------------------
# Sections


def _layer_view(
    index: int,
    layer: Layer,
    stats: LayerStatistics,
    model: LoadedModel,
    maps: Mapping[str, np.ndarray],
    shown_images: np.ndarray,
    shown_names: list[str],
    settings: Settings,
    store: FigureStore,
    attributed: attribution.AttributionResult,
    display_images: np.ndarray,
    vis: visualisation.FilterVisualisation | None,
    probe: ProbeSet,
) -> LayerView:
    section = layer_id(index, layer)
    prefix = f"{index + 1:02d}-{slug(layer.name)}"
    channels = layer.output_shape[-1]
    unit = unit_name(layer)
    facts = [
        Fact("Kind", layer.kind + (f" + {layer.activation}" if layer.activation else "")),
        Fact("Output shape", " × ".join(map(str, layer.output_shape))),
        Fact("Parameters", f"{layer.params:,}"),
        Fact("FLOPs per image", human(layer.flops)),
        Fact("Receptive field", receptive_text(layer, model.input_shape)),
        Fact(
            f"Dead {unit}s",
            f"{len(stats.dead)} of {channels}" if stats.nonnegative else "n/a (outputs can be negative)",
        ),
    ]
    figs: list[FigureView] = []
    kernel = _kernel(model, layer) if layer.kind == "conv" else None
    if kernel is not None:
        colour = (
            "in colour (RGB weights scaled per filter)"
            if kernel.shape[2] == 3
            else ("mean over input channels, blue negative, red positive")
        )
        figs.append(
            store.add(
                f"{prefix}-filters.png", figures.filter_grid(kernel), f"{layer.name} filters", f"Filters {colour}."
            )
        )
        figs.append(
            store.add(f"{prefix}-filter-norms.png", figures.filter_norm_chart(kernel), f"{layer.name} filter norms", "")
        )
    if layer.name in maps:
        layer_maps = maps[layer.name]
        n_all = settings.activation_images or len(layer_maps)
        for j in range(min(n_all, len(layer_maps))):
            figs.append(
                store.add(
                    f"{prefix}-channels-{j + 1}.png",
                    figures.channel_grid(layer_maps[j]),
                    f"{layer.name}, all {channels} channels on {shown_names[j]}",
                    f"All {channels} channels on {shown_names[j]} (each map scaled to its own maximum).",
                )
            )
        across = settings.channels_across or channels
        picked = [int(c) for c in np.argsort(-stats.mean, kind="stable")[: min(across, channels)]]
        n_across = min(settings.channel_images or len(layer_maps), len(layer_maps))
        figs.append(
            store.add(
                f"{prefix}-across-images.png",
                figures.channel_across_images(layer_maps[:n_across], shown_images[:n_across], picked),
                f"{layer.name} channels across probe images",
                "First row: probe images. Each further row: one channel across them — the "
                f"{len(picked)} most active channels, in order: {', '.join(map(str, picked))}.",
            )
        )
    if layer.name in attributed.layer_cams:
        n = min(10, len(display_images))
        figs.append(
            store.add(
                f"{prefix}-grad-cam.png",
                figures.cam_row(display_images[:n], attributed.layer_cams[layer.name][:n]),
                f"Grad-CAM at {layer.name}",
                f"Grad-CAM at this layer for the explained class of the first {n} attribution images "
                "(inferno scale: dark is no evidence, yellow the map's strongest evidence).",
            )
        )
    figs.append(
        store.add(
            f"{prefix}-statistics.png",
            figures.statistics_chart(stats.mean, stats.firing, stats.max),
            f"{layer.name} statistics",
            "",
        )
    )
    alerts = []
    if stats.dead:
        alerts.append(f"Dead {unit}s (zero on every probe image): {', '.join(map(str, stats.dead))}")
    if stats.rare:
        rare = ", ".join(map(str, stats.rare))
        alerts.append(f"Rarely firing {unit}s (on fewer than {settings.rare_fraction:.0%} of probe images): {rare}")
    if stats.nonfinite_images:
        alerts.append(f"NaN or infinite outputs on {stats.nonfinite_images} probe images")
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
    summary, cards = _filter_cards(vis, layer, probe, store, prefix) if vis is not None else ("", ())
    return LayerView(section, title, layer.kind, tuple(facts), tuple(figs), tuple(alerts), rows, summary, cards)


def _filter_cards(
    vis: visualisation.FilterVisualisation, layer: Layer, probe: ProbeSet, store: FigureStore, prefix: str
) -> tuple[str, tuple[FilterCard, ...]]:
    """One card per visualised filter: its synthesised image and top probe patches."""
    rf = layer.receptive_field
    assert rf is not None
    cards = []
    for k, f in enumerate(vis.filters.tolist()):
        image = store.add(
            f"{prefix}-vis-{f:03d}.png",
            figures.thumbnail(vis.images[k, 0], zoom=2),
            f"{layer.name} filter {f} synthesised",
        )
        crops = [
            patches.crop(probe.images[int(i)], rf, int(r), int(c))
            for i, r, c in zip(vis.top.images[f], vis.top.rows[f], vis.top.cols[f], strict=True)
        ]
        patch_views = tuple(
            store.add(
                f"{prefix}-patch-{f:03d}-{j + 1}.png",
                figures.thumbnail(crop, zoom=figures.zoom_for(crop.shape[0], 32)),
                f"{layer.name} filter {f}: patch of {probe.names[int(vis.top.images[f, j])]}",
            )
            for j, crop in enumerate(crops)
        )
        dead = bool(vis.dead[k])
        status = "dead" if dead else ("beats" if vis.beats_probes[k] else "")
        caption = f"#{f} · {vis.activation[k]:.3g} (probes ≤ {vis.probe_best[k]:.3g})" + (" · dead" if dead else "")
        cards.append(FilterCard(image, patch_views, caption, status))
    fraction = vis.beat_fraction
    beaten = "no live filters" if fraction is None else f"{fraction:.0%} of the {int((~vis.dead).sum())} live ones"
    summary = (
        f"Synthesised images for {vis.selection}, beside the probe patches (the receptive field around the strongest"
        f" unit) that excite each filter most. The synthesised image beats every probe image for {beaten}."
    )
    return summary, tuple(cards)


def _prediction_view(
    i: int, probe: ProbeSet, pred: predictions.Predictions, classes: list[str], store: FigureStore, prefix: str
) -> PredictionView:
    label = int(pred.labels[i])
    verdict = "" if label < 0 else ("correct" if pred.predicted[i] == label else "wrong")
    image = store.add(f"{prefix}-{i + 1:04d}.png", figures.thumbnail(probe.images[i]), probe.names[i], "")
    top = tuple(Guess(classes[int(k)], f"{p:.1%}") for k, p in zip(pred.top_classes[i], pred.top_probs[i], strict=True))
    return PredictionView(image, probe.names[i], classes[label] if label >= 0 else "—", verdict, top)


def _class_cards(
    vis: visualisation.ClassVisualisation,
    probe: ProbeSet,
    pred: predictions.Predictions,
    classes: list[str],
    store: FigureStore,
) -> tuple[tuple[ClassCard, ...], str]:
    """Each class's synthesised image beside the first correctly classified probe image of it."""
    cards = []
    for k, name in enumerate(classes):
        image = store.add(f"class-{k:03d}.png", figures.thumbnail(vis.images[k, 0], zoom=3), f"{name} synthesised")
        hits = np.flatnonzero((probe.labels == k) & (pred.predicted == k))
        example = (
            store.add(
                f"class-{k:03d}-example.png", figures.thumbnail(probe.images[hits[0]], zoom=3), probe.names[hits[0]]
            )
            if len(hits)
            else None
        )
        cards.append(ClassCard(name, image, example, f"logit {vis.logits[k]:.3g}"))
    note = (
        "Each image maximises one class logit (before softmax), starting from noise; beside it, the first"
        " probe image of that class the model classifies correctly."
    )
    return tuple(cards), note


def rounded_tree(value: Any) -> Any:
    """`rounded` applied through dicts and lists."""
    if isinstance(value, dict):
        return {k: rounded_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded_tree(v) for v in value]
    return rounded(value)


def attribution_findings(summary: Mapping[str, Any]) -> list[Finding]:
    """A warning for each method whose maps survive randomising every layer."""
    return [
        Finding(
            "warning",
            "sanity-check",
            f"{methods.TITLES[name]} maps barely change when every layer's weights are randomised"
            f" (Spearman {scores['sanity_final']:.2f}): they do not show what this model learned",
            "attribution",
        )
        for name, scores in summary["methods"].items()
        if scores["flagged"]
    ]


def _attribution_view(
    result: attribution.AttributionResult,
    summary: Mapping[str, Any],
    probe: ProbeSet,
    classes: list[str],
    store: FigureStore,
) -> AttributionView:
    titles = tuple(methods.TITLES[m] for m in methods.METHODS)
    rows = []
    for k, i in enumerate(result.indices.tolist()):
        image = probe.images[i]
        tiles = tuple(
            store.add(
                f"attribution-{k + 1:03d}-{m.replace('_', '-')}.png",
                figures.attribution_tile(image, result.maps[m][k], m in methods.SIGNED),
                f"{methods.TITLES[m]} on {probe.names[i]}",
            )
            for m in methods.METHODS
        )
        picture = store.add(f"attribution-{k + 1:03d}-image.png", figures.thumbnail(image, zoom=2), probe.names[i])
        rows.append(AttributionRow(picture, probe.names[i], classes[int(result.targets[k])], tiles))
    scores = tuple(
        MethodScore(
            methods.TITLES[m],
            f"{summary['methods'][m]['deletion_auc']:.3f}",
            f"{summary['methods'][m]['insertion_auc']:.3f}",
            f"{summary['methods'][m]['sanity_final']:.2f}",
            "survives randomisation" if summary["methods"][m]["flagged"] else "",
        )
        for m in methods.METHODS
    )
    curves = store.add(
        "attribution-faithfulness.png",
        figures.faithfulness_chart(
            titles,
            np.stack([summary["methods"][m]["deletion_curve"] for m in methods.METHODS]),
            np.stack([summary["methods"][m]["insertion_curve"] for m in methods.METHODS]),
        ),
        "deletion and insertion curves",
        "Mean class probability as the most important pixels are removed (left, turned black) or revealed"
        " on a blurred copy (right).",
    )
    sanity_figure = store.add(
        "attribution-sanity.png",
        figures.sanity_chart(titles, result.sanity_layers, result.sanity),
        "cascading randomisation",
        f"Each step re-initialises one more layer, from the top down, on {result.sanity_images} images;"
        " a faithful method's correlation falls towards 0.",
    )
    s = summary["settings"]
    notes = (
        f"CAM methods use layer {result.cam_layer}; each conv and pooling layer's section shows Grad-CAM there.",
        f"SmoothGrad: {s['smoothgrad_samples']} samples, noise {s['smoothgrad_noise']:g} of the value range."
        f" Integrated Gradients: {s['ig_steps']} steps, {s['ig_rule']} rule, {s['ig_baseline']} baseline."
        f" Occlusion: {s['occlusion_window']}-pixel window, stride {s['occlusion_stride']}, black fill.",
        f"Explained class: {s['attribution_target']}.",
    )
    return AttributionView(titles, tuple(rows), scores, curves, sanity_figure, notes)


def _versions() -> dict[str, str]:
    out = {}
    for package in VERSIONED_PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _build_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return when.replace(microsecond=0).isoformat()


# ---------------------------------------------------------------------------------------------
# The build


def build(settings: Settings, command: str = "", progress: Progress | None = None) -> BuildResult:
    """Run every analysis and write the report folder atomically; raises UserError on bad input."""
    progress = progress or Progress(quiet=True)
    out = Path(settings.out)
    _check_out(out)
    enable_compilation_cache()

    progress.start("load model")
    model = load_model(
        settings.model,
        settings.checkpoint,
        step=settings.step,
        input_shape=settings.input_shape,
        model_kwargs=settings.model_kwargs,
        apply_kwargs=settings.apply_kwargs,
    )
    classes = read_classes(Path(settings.classes) if settings.classes else None, model.graph.num_classes)
    probe = _probe(settings, model, classes)
    progress.finish()

    engine = Engine(model.graph)
    inputs = to_model(probe.images, settings.preprocess)
    probs, finite, stats = _summaries(engine, model, inputs, settings.chunk_size, progress)
    layers = model.graph.layers
    spatial = [layer.name for layer in layers if layer.is_spatial]
    shown = display_indices(probe.labels, max(settings.activation_images, settings.channel_images))
    maps = _maps(engine, model, inputs[shown], spatial, settings.chunk_size, progress)
    pred = predictions.summarize(probs, probe.labels)
    layer_stats = {layer.name: activations.summarize(stats[layer.name], settings.rare_fraction) for layer in layers}

    black = to_model(np.zeros((1, *model.input_shape), np.float32), settings.preprocess)[0]
    attributed = attribution.run(
        engine,
        model,
        inputs,
        probe.labels,
        display_indices(probe.labels, settings.attribution_images),
        black,
        settings,
        progress,
    )

    filter_vis, class_vis = visualisation.run(engine, model, probe.images, stats, layer_stats, settings, progress)
    vis_by_layer = {v.layer: v for v in filter_vis}

    progress.start("figures", len(layers) + 2)
    found: list[Finding] = input_findings(probe.warnings, int((~finite).sum()))
    found += prediction_findings(pred, probe.names, classes)
    for i, layer in enumerate(layers):
        found += layer_findings(
            layer.name, layer_id(i, layer), layer_stats[layer.name], layer.output_shape[-1], unit_name(layer)
        )
    found = ordered(found)

    store = FigureStore(settings.external_figures)
    shown_names = [probe.names[i] for i in shown]
    layer_views = []
    for i, layer in enumerate(layers):
        layer_views.append(
            _layer_view(
                i,
                layer,
                layer_stats[layer.name],
                model,
                maps,
                probe.images[shown],
                shown_names,
                settings,
                store,
                attributed,
                probe.images[attributed.indices],
                vis_by_layer.get(layer.name),
                probe,
            )
        )
        progress.advance()
    prediction_views = tuple(_prediction_view(i, probe, pred, classes, store, "probe") for i in range(len(probe.names)))
    wrong = tuple(p for p in prediction_views if p.verdict == "wrong")
    confusion = (
        store.add(
            "confusion-matrix.png",
            figures.confusion_chart(pred.confusion),
            "confusion matrix",
            "Rows: true class; columns: predicted class; red boxes: errors.",
        )
        if pred.confusion is not None
        else None
    )
    progress.advance()
    attribution_json = attribution.to_json(
        attributed, list(probe.names), classes, settings.sanity_threshold, as_dict(settings)
    )
    found = ordered([*found, *attribution_findings(attribution_json)])
    attribution_view = _attribution_view(attributed, attribution_json, probe, classes, store)
    progress.advance()
    progress.finish()

    timings = dict(progress.timings)
    data = report_data(settings, command, model, probe, classes, pred, layer_stats, found, timings)
    data["attribution"] = rounded_tree({k: v for k, v in attribution_json.items() if k != "settings"})
    vis_json = visualisation.to_json(filter_vis, class_vis, classes, None)
    data["feature_visualisation"] = rounded_tree({k: v for k, v in vis_json.items() if k != "settings"})
    class_cards, classes_note = _class_cards(class_vis, probe, pred, classes, store)
    view = _report_view(
        settings,
        model,
        probe,
        pred,
        found,
        layer_views,
        prediction_views,
        wrong,
        confusion,
        attribution_view,
        class_cards,
        classes_note,
        data,
    )
    progress.start("write report")
    html = render(view)
    warnings = list(probe.warnings)
    budget = settings.size_budget_mb * 1e6
    if not settings.external_figures and len(html) > budget:
        warnings.append(
            f"report.html is {len(html) / 1e6:.1f} MB, over the {settings.size_budget_mb:g} MB budget;"
            " set external_figures = true to link figures/*.png instead of embedding them"
        )
    _write(out, html, data, store.files)
    progress.finish()
    return BuildResult(out, len(html), len(store.files), layers, tuple(found), tuple(warnings))


def report_data(
    settings: Settings,
    command: str,
    model: LoadedModel,
    probe: ProbeSet,
    classes: list[str],
    pred: predictions.Predictions,
    layer_stats: Mapping[str, LayerStatistics],
    found: list[Finding],
    timings: Mapping[str, float],
) -> dict[str, Any]:
    """Every number the report shows, JSON-ready (the source for comparisons between releases)."""
    reproducible = "SOURCE_DATE_EPOCH" in os.environ
    layers = []
    for layer in model.graph.layers:
        s = layer_stats[layer.name]
        rf = layer.receptive_field
        layers.append(
            {
                "name": layer.name,
                "kind": layer.kind,
                "activation": layer.activation,
                "output_shape": list(layer.output_shape),
                "params": layer.params,
                "flops": layer.flops,
                "receptive_field": None if rf is None else {"size": list(rf.size), "stride": list(rf.stride)},
                "statistics": {
                    "mean": rounded(s.mean),
                    "max": rounded(s.max),
                    "firing_fraction": rounded(s.firing),
                    "nonnegative": s.nonnegative,
                    "nonfinite_images": s.nonfinite_images,
                },
                "dead_filters": list(s.dead),
                "rare_filters": list(s.rare),
            }
        )
    images = [
        {
            "name": probe.names[i],
            "label": classes[int(probe.labels[i])] if probe.labels[i] >= 0 else None,
            "top": [
                {"class": classes[int(k)], "index": int(k), "probability": rounded(p)}
                for k, p in zip(pred.top_classes[i], pred.top_probs[i], strict=True)
            ],
            "correct": None if probe.labels[i] < 0 else bool(pred.predicted[i] == probe.labels[i]),
        }
        for i in range(len(probe.names))
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "spec": settings.model,
            "api": model.api,
            "class": model.class_name,
            "input_shape": list(model.input_shape),
            "num_classes": model.graph.num_classes,
            "params": model.num_params,
            "checkpoint": {
                "path": model.checkpoint.path,
                "step": model.checkpoint.step,
                "sha256": model.checkpoint.sha256,
                "files": model.checkpoint.files,
                "bytes": model.checkpoint.bytes,
            },
            "classes": classes,
        },
        "layers": layers,
        "predictions": {
            "accuracy": rounded(pred.accuracy),
            "labelled_images": int(pred.labelled.sum()),
            "images": images,
            "confusion": None if pred.confusion is None else pred.confusion.tolist(),
        },
        "findings": [
            {"severity": f.severity, "code": f.code, "message": f.message, "section": f.section} for f in found
        ],
        "provenance": {
            "versions": _versions(),
            "python": platform.python_version(),
            "devices": [str(d) for d in jax.devices()],
            "backend": jax.default_backend(),
            "settings": as_dict(settings),
            "seed": settings.seed,
            "command": command,
            "date": _build_date(),
            "probe_images": len(probe.names),
        },
        "timings": {} if reproducible else {k: round(v, 3) for k, v in timings.items()},
        "timings_recorded": not reproducible,
    }


def _report_view(
    settings: Settings,
    model: LoadedModel,
    probe: ProbeSet,
    pred: predictions.Predictions,
    found: list[Finding],
    layer_views: list[LayerView],
    prediction_views: tuple[PredictionView, ...],
    wrong: tuple[PredictionView, ...],
    confusion: FigureView | None,
    attribution_view: AttributionView,
    class_cards: tuple[ClassCard, ...],
    classes_note: str,
    data: Mapping[str, Any],
) -> ReportView:
    ck = model.checkpoint
    accuracy = (
        "no labels" if pred.accuracy is None else f"{pred.accuracy:.1%} of {int(pred.labelled.sum())} labelled images"
    )
    overview = (
        Fact("Model", settings.model),
        Fact("Model class", f"{model.class_name} (Flax {model.api})"),
        Fact("Checkpoint", ck.path + (f" (step {ck.step})" if ck.step is not None else "")),
        Fact("Checkpoint sha256", ck.sha256),
        Fact("Parameters", f"{model.num_params:,}"),
        Fact("Input shape", " × ".join(map(str, model.input_shape))),
        Fact("Classes", str(model.graph.num_classes)),
        Fact("Probe images", f"{len(probe.names)} from {settings.images}"),
        Fact("Probe accuracy", accuracy),
        Fact("Layers", str(len(model.graph.layers))),
    )
    architecture = tuple(
        ArchitectureRow(
            "#" + view.id,
            layer.name,
            layer.kind + (f" + {layer.activation}" if layer.activation else ""),
            " × ".join(map(str, layer.output_shape)),
            f"{layer.params:,}",
            human(layer.flops),
            receptive_text(layer, model.input_shape),
        )
        for layer, view in zip(model.graph.layers, layer_views, strict=True)
    )
    prov = data["provenance"]
    provenance = (
        *(Fact(k, v) for k, v in prov["versions"].items()),
        Fact("python", prov["python"]),
        Fact("backend", prov["backend"]),
        Fact("devices", ", ".join(prov["devices"])),
        Fact("seed", str(prov["seed"])),
        Fact("command", prov["command"] or "(Python API)"),
        Fact("date", prov["date"]),
    )
    timings = tuple(Fact(k, f"{v:.2f} s") for k, v in data["timings"].items())
    return ReportView(
        title=f"reportgen: {model.class_name}",
        csp=CSP_EXTERNAL if settings.external_figures else CSP,
        overview=overview,
        findings=tuple(FindingView(f.severity, f.message, "#" + f.section) for f in found),
        architecture=architecture,
        accuracy=accuracy,
        predictions=prediction_views,
        confusion=confusion,
        misclassified=wrong,
        attribution=attribution_view,
        layers=tuple(layer_views),
        classes=class_cards,
        classes_note=classes_note,
        provenance=provenance,
        timings=timings,
        settings_json=json.dumps(prov["settings"], indent=2, sort_keys=True),
    )


# ---------------------------------------------------------------------------------------------
# Files


def _check_out(out: Path) -> None:
    """Refuse to replace anything that is not a previous report."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").is_file():
        raise UserError(f"--out {out} exists and is not a reportgen report folder; choose an empty or new folder")


def _write(out: Path, html: str, data: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
    """Write into a temporary sibling folder, then swap it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "figures").mkdir(parents=True)
        for name, blob in sorted(files.items()):
            (tmp / "figures" / name).write_bytes(blob)
        (tmp / "report.json").write_text(
            json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
        )
        (tmp / "report.html").write_text(html, encoding="utf-8")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, for provenance."""
    args = sys.argv if argv is None else argv
    return " ".join(["reportgen", *args[1:]])
