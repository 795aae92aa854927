"""Build a report: run the analyses, make the figures, write report.json, figures/ and report.html.

The only module that writes files. Output goes into a temporary folder beside OUT and is renamed
into place at the end, so a failed build never leaves a half-written report or destroys the
previous one.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reportgen import (
    attribution,
    collect,
    distributed,
    findings,
    output,
    plan,
    results,
    sections,
    summary,
    visualisation,
)
from reportgen.analyses import activations, classfilters, concepts, patches, predictions
from reportgen.compute import enable_compilation_cache, map_examples, workers
from reportgen.config import Settings
from reportgen.data import ProbeSet, check_preprocess, read_classes, read_probe, to_model
from reportgen.errors import UserError
from reportgen.figurestore import FigureStore
from reportgen.model.engine import Engine
from reportgen.model.graph import Layer
from reportgen.model.load import LoadedModel, leaf_paths, load_model
from reportgen.progress import Progress
from reportgen.redact import redact
from reportgen.render import render


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote."""

    out: Path
    html_bytes: int
    figures: int
    layers: tuple[Layer, ...]
    report: results.Report
    warnings: tuple[str, ...]

    @property
    def findings(self) -> tuple[results.Finding, ...]:
        """The report's findings, most severe first."""
        return self.report.findings


# ---------------------------------------------------------------------------------------------
# Computation


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


def _check_model_settings(settings: Settings, model: LoadedModel) -> None:
    """Settings that only make sense for some models: checked before any computation."""
    height, width, channels = model.input_shape
    check_preprocess(settings.preprocess, channels)
    window = settings.attribution.occlusion_window
    if window > min(height, width):
        raise UserError(
            f"attribution.occlusion_window {window} is larger than the {height}×{width} input;"
            f" choose at most {min(height, width)}"
        )
    model.graph.cam_layer  # noqa: B018  (UserError when the model has no spatial convolution)


def _probe(settings: Settings, model: LoadedModel, classes: list[str]) -> ProbeSet:
    if settings.images is None:
        raise UserError("no probe images; pass --images DIR with PNG or JPEG files (sub-folders named by class)")
    return read_probe(Path(settings.images), model.input_shape, classes, settings.resize)


def _plan(
    settings: Settings,
    model: LoadedModel,
    engine: Engine,
    probe: ProbeSet,
    started: float,
    precedent: plan.Precedent | None,
) -> plan.Plan:
    """Measure the device, count the model's cost and plan every stage within the budgets, the
    profile's time counted from `started` (a `time.perf_counter()` reading), repeating the
    `precedent`'s sampling where the budget calls for sampling."""
    graph = model.graph
    cost = plan.model_cost(graph)
    platform, free = plan.free_memory()
    passes = plan.budget(cost, settings.memory_budget, platform, free, workers())
    overhead = visualisation.free_visualiser(settings, model.input_shape)
    throughput = plan.measure_throughput(engine.logits, model.variables, model.input_shape, cost, passes, overhead)
    n = len(probe.names)
    shown = len(display_indices(probe.labels, max(settings.layers.activation_images, settings.layers.channel_images)))
    vis = {
        name: min(
            settings.visualisation.filters or graph.layer(name).output_shape[-1], graph.layer(name).output_shape[-1]
        )
        for name in visualisation.visualised_layers(model)
    }
    explained = len(display_indices(probe.labels, settings.attribution.images))
    stages = sum(1 for layer in graph.layers if layer.param_paths)
    work = plan.Workload(
        n,
        shown,
        explained,
        min(settings.attribution.sanity_images, explained),
        min(settings.attribution.sanity_stages or stages, stages),
        vis,
        min(settings.visualisation.classes or graph.num_classes, graph.num_classes),
    )
    chosen = plan.make_plan(settings, graph, cost, passes, throughput, work, time.perf_counter() - started, precedent)
    return distributed.agree(chosen)  # hosts measure different speeds; all must run the same programs


def kernel_of(leaves: Mapping[str, Any], layer: Layer) -> np.ndarray | None:
    """The layer's 4-D convolution kernel (kh, kw, C_in, F), if it has exactly one; `leaves` maps
    parameter paths to arrays."""
    kernels = [np.asarray(leaves[p]) for p in layer.param_paths if np.ndim(leaves[p]) == 4]
    return kernels[0] if len(kernels) == 1 else None


def nonfinite_weights(leaves: Mapping[str, Any], layer: Layer) -> tuple[int, ...]:
    """Output channels of the layer whose parameters hold NaN or infinity."""
    width = layer.output_shape[-1]
    broken = np.zeros(width, bool)
    for path in layer.param_paths:
        values = np.asarray(leaves[path])
        if values.ndim and values.shape[-1] == width:
            broken |= ~np.isfinite(values.reshape(-1, width)).all(axis=0)
    return tuple(int(c) for c in np.flatnonzero(broken))


def _summaries(
    engine: Engine,
    model: LoadedModel,
    images: np.ndarray,
    picks: np.ndarray,
    concept_names: list[str],
    chunk: int,
    progress: Progress,
) -> Any:
    """Model outputs, finiteness and per-channel statistics of every layer, for every image, and
    the activation vectors at the positions `picks` (N, S) (uniform in [0, 1)) choose from each
    image for the concepts of `concept_names`."""
    names = [layer.name for layer in model.graph.layers]

    def per_example(variables: Any, image: jax.Array, pick: jax.Array) -> Any:
        logits, outs = engine.forward(variables, image, names)
        stats = {n: activations.channel_statistics(outs[n]) for n in names}
        samples = {n: concepts.sample_rows(outs[n], pick) for n in concept_names}
        return logits, jnp.isfinite(logits).all(), stats, samples

    progress.start("forward pass", len(images))
    result = map_examples(per_example, (model.variables,), images, picks, chunk=chunk, progress=progress.advance)
    progress.finish()
    return result


def _factorise(
    samples: dict[str, np.ndarray], max_concepts: int, seed: int, progress: Progress
) -> dict[str, concepts.Factorisation]:
    """Each layer's concepts from its sampled activation vectors (N, S, C); layers whose
    activations are all zero have none."""
    progress.start(plan.CONCEPT_STAGE, len(samples))
    found = {}
    for name, rows in samples.items():
        found[name] = concepts.factorise(rows.reshape(-1, rows.shape[-1]), max_concepts, seed)
        progress.advance()
    progress.finish()
    return found


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


def _class_evidence(
    engine: Engine,
    model: LoadedModel,
    images: np.ndarray,
    targets: np.ndarray,
    names: list[str],
    found: dict[str, concepts.Factorisation],
    baseline: np.ndarray,
    steps: int,
    chunk: int,
    progress: Progress,
) -> tuple[list[classfilters.LayerEvidence], dict[str, dict[str, np.ndarray]]]:
    """Every visualised layer's filters against every class, and every concept's evidence and
    strongest position per image, from the gradient of each probe image's class logit (its label;
    the predicted class where it has none); with `steps`, also each filter's conductance along
    the path from `baseline`, whose last point gives the rest."""
    bases = {name: (f.basis, f.inverse) for name, f in found.items() if len(f.basis)}
    layers = list(dict.fromkeys([*names, *bases]))

    def per_example(variables: Any, bases: Any, image: jax.Array, target: jax.Array) -> Any:
        found = classfilters.image_evidence(engine, variables, image, target, layers, baseline, steps)
        outs, grads = found.outputs, found.gradients
        return found.per_filter(names), {n: concepts.concept_evidence(outs[n], grads[n], *bases[n]) for n in bases}

    progress.start(plan.EVIDENCE_STAGE, len(images))
    filters, per_concept = map_examples(
        per_example, (model.variables, bases), images, targets, chunk=chunk, progress=progress.advance
    )
    progress.finish()
    return classfilters.aggregate(filters, names, targets, model.graph.num_classes), per_concept


def _concepts(
    engine: Engine,
    model: LoadedModel,
    images: np.ndarray,
    targets: np.ndarray,
    found: dict[str, concepts.Factorisation],
    per_image: dict[str, dict[str, np.ndarray]],
    settings: Settings,
    chunk: int,
    progress: Progress,
) -> dict[str, concepts.LayerConcepts]:
    """Each layer's concepts with their evidence per class, their strongest probe images and
    the concept maps of those images (none for a layer that is zero everywhere)."""
    bases = {name: (f.basis, f.inverse) for name, f in found.items() if len(f.basis)}
    tops = {
        name: patches.top_patches(
            per_image[name]["max"],
            per_image[name]["argmax"],
            model.graph.layer(name).output_shape[1],
            settings.layers.top_patches,
        )
        for name in bases
    }
    needed = np.unique(np.concatenate([top.images.ravel() for top in tops.values()] or [np.zeros(0, np.int64)]))

    def per_example(variables: Any, bases: Any, image: jax.Array) -> Any:
        outs = engine.layer_outputs(variables, image, list(bases))
        return {n: concepts.project(outs[n], *bases[n]) for n in bases}

    progress.start(plan.CONCEPT_MAPS_STAGE, len(needed))
    maps = (
        map_examples(per_example, (model.variables, bases), images[needed], chunk=chunk, progress=progress.advance)
        if len(needed)
        else {}
    )
    progress.finish()
    result = {}
    for name, factorisation in found.items():
        if name not in bases:
            result[name] = concepts.LayerConcepts.none(name, factorisation, model.graph.num_classes)
            continue
        contribution = per_image[name]["contribution"]
        result[name] = concepts.LayerConcepts(
            name,
            factorisation,
            classfilters.per_class(contribution, targets, model.graph.num_classes),
            float(contribution.sum(axis=1).mean()),
            float(per_image[name]["total"].mean()),
            tops[name],
            {int(i): maps[name][j] for j, i in enumerate(needed) if i in tops[name].images},
        )
    return result


# ---------------------------------------------------------------------------------------------
# The build


def build(
    settings: Settings,
    command: str = "",
    progress: Progress | None = None,
    release: str | None = None,
    precedent: plan.Precedent | None = None,
) -> BuildResult | None:
    """Run every analysis and write the report folder atomically; raises UserError on bad input.
    Where the profile's time budget calls for sampling, the `precedent`'s (an earlier release's)
    sampling is repeated when it fits (see `plan.make_plan`). In a multi-host run
    (`reportgen.distributed`) every process computes and only the first writes; the others
    return None."""
    started = time.perf_counter()
    progress = progress or Progress(quiet=True)
    out = Path(settings.out)
    output.check_out(out, "report")
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
    _check_model_settings(settings, model)
    classes = read_classes(Path(settings.classes) if settings.classes else None, model.graph.num_classes)
    probe = _probe(settings, model, classes)
    progress.finish()

    engine = Engine(model.graph)
    progress.start("plan")
    build_plan = _plan(settings, model, engine, probe, started, precedent)
    settings = build_plan.settings
    progress.finish()
    progress.expect({stage.name: stage.estimated_seconds for stage in build_plan.stages})
    inputs = to_model(probe.images, settings.preprocess)
    layers = model.graph.layers
    concept_names = concepts.concept_layers(layers) if settings.layers.concepts else []
    picks = np.random.default_rng(settings.seed).random((len(inputs), concepts.samples_per_image(len(inputs))))
    outputs, finite, stats, samples = _summaries(
        engine, model, inputs, picks.astype(np.float32), concept_names, build_plan.stage("forward pass").chunk, progress
    )
    given_probabilities = settings.outputs == "probabilities" or (
        settings.outputs == "auto" and predictions.looks_like_probabilities(outputs)
    )
    probs = outputs if given_probabilities else np.asarray(jax.nn.softmax(outputs, axis=-1))
    pred = predictions.summarize(probs, probe.labels)
    layer_stats = {
        layer.name: activations.summarize(stats[layer.name], settings.layers.rare_fraction) for layer in layers
    }
    shown = display_indices(probe.labels, max(settings.layers.activation_images, settings.layers.channel_images))
    spatial = [layer.name for layer in layers if layer.is_spatial]
    maps = _maps(engine, model, inputs[shown], spatial, build_plan.stage("activation maps").chunk, progress)
    found = _factorise(samples, settings.layers.concepts, settings.seed, progress)
    evidence_targets = np.where(probe.labels >= 0, probe.labels, pred.predicted).astype(np.int32)
    black = to_model(np.zeros((1, *model.input_shape), np.float32), settings.preprocess)[0]
    evidence, per_concept = _class_evidence(
        engine,
        model,
        inputs,
        evidence_targets,
        visualisation.visualised_layers(model),
        found,
        black,
        settings.layers.conductance_steps,
        build_plan.stage(plan.EVIDENCE_STAGE).chunk,
        progress,
    )
    layer_concepts = _concepts(
        engine,
        model,
        inputs,
        evidence_targets,
        found,
        per_concept,
        settings,
        build_plan.stage(plan.CONCEPT_MAPS_STAGE).chunk,
        progress,
    )
    white = to_model(np.ones((1, *model.input_shape), np.float32), settings.preprocess)[0]
    explained = display_indices(probe.labels, settings.attribution.images)
    runner = attribution.runner_for(engine, model, settings, black, white)
    attributed = attribution.run(runner, model, inputs, probe.labels, explained, settings, build_plan.passes, progress)
    class_order = np.argsort(-np.bincount(pred.predicted, minlength=model.graph.num_classes), kind="stable")
    filter_vis, class_vis = visualisation.run(
        engine, model, probe.images, stats, layer_stats, settings, build_plan.stages, class_order, progress
    )
    if not distributed.is_first():
        return None  # another host of a multi-host run: its share is computed, process 0 writes
    vis_by_layer = {v.layer: v for v in filter_vis}
    parameters = dict(zip(leaf_paths(model.variables), jax.tree.leaves(model.variables), strict=True))
    result = results.Report(
        schema_version=results.SCHEMA_VERSION,
        model=collect.model_result(settings, model, classes),
        layers=tuple(
            collect.layer_result(
                i,
                layer,
                layer_stats[layer.name],
                vis_by_layer.get(layer.name),
                nonfinite_weights(parameters, layer),
                layer_concepts.get(layer.name),
                classes,
            )
            for i, layer in enumerate(layers)
        ),
        predictions=collect.predictions_result(pred, probe, classes, int((~finite).sum()), given_probabilities),
        attribution=collect.attribution_result(
            attributed, probe, classes, settings.attribution.sanity_threshold, settings.attribution.class_threshold
        ),
        class_visualisation=collect.class_images(class_vis, classes),
        class_evidence=collect.class_evidence(evidence, evidence_targets, classes),
        findings=(),
        provenance=collect.provenance(
            settings, command, probe, {}, collect.plan_record(build_plan, progress, True), release
        ),
    )
    result = result.with_findings(findings.of(result))

    progress.start("figures", len(layers) + 3)
    with FigureStore(settings.external_figures) as store:
        shown_probe = sections.Shown(probe.images[shown], [probe.names[i] for i in shown])
        layer_views = []
        for i, layer in enumerate(layers):
            layer_views.append(
                sections.layer_view(
                    i,
                    layer,
                    result.layers[i],
                    layer_stats[layer.name],
                    kernel_of(parameters, layer) if layer.kind == "conv" else None,
                    maps,
                    shown_probe,
                    settings,
                    store,
                    attributed,
                    vis_by_layer.get(layer.name),
                    probe,
                    result.findings,
                    layer_concepts.get(layer.name),
                )
            )
            progress.advance()
        predictions_section = sections.predictions_section(probe, pred, classes, store)
        progress.advance()
        attribution_section = sections.attribution_view(attributed, result.attribution, probe, classes, settings, store)
        progress.advance()
        class_section = sections.class_cards(class_vis, probe, pred, classes, store)
        evidence_section = sections.evidence_section(
            result.class_evidence,
            evidence,
            layers,
            {layer.name: layer.section for layer in result.layers},
            stats,
            evidence_targets,
            probe,
            store,
        )
        progress.advance()
        drawn = store.files()
    progress.finish()

    reproducible = "SOURCE_DATE_EPOCH" in os.environ
    recorded = collect.plan_record(build_plan, progress, reproducible)
    result = dataclasses.replace(
        result,
        provenance=collect.provenance(settings, command, probe, progress.timings, recorded, release),
    )
    if settings.redact:
        result = redact(result)
    view = sections.report_view(
        settings, result, layer_views, predictions_section, attribution_section, class_section, evidence_section
    )
    progress.start("write report")
    html_bytes, html = store.page(render(view))
    warnings = list(probe.warnings)
    if not settings.external_figures and html_bytes > settings.size_budget_mb * 1e6:
        warnings.append(
            f"report.html is {html_bytes / 1e6:.1f} MB, over the {settings.size_budget_mb:g} MB budget;"
            " set external_figures = true to link figures/*.png instead of embedding them"
        )
    files: dict[str, output.Content] = {f"figures/{name}": blob for name, blob in drawn.items()}
    files |= {"report.json": results.dumps(result), "summary.md": summary.report_markdown(result), "report.html": html}
    output.write_folder(out, "report", files, results.SCHEMA_VERSION)
    progress.finish()
    return BuildResult(out, html_bytes, len(drawn), layers, result, tuple(warnings))


# ---------------------------------------------------------------------------------------------
# Files


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, for provenance."""
    args = sys.argv if argv is None else argv
    return " ".join(["reportgen", *args[1:]])
