"""The stages' arrays -> typed results (`reportgen.results`): the one place that decides what a
report records about each layer, the predictions, the attribution and the build."""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import jax
import numpy as np

from reportgen import attribution, plan, results, visualisation
from reportgen.analyses import catalogue, classfilters, concepts, faithfulness, patches, predictions, road, sanity
from reportgen.analyses.activations import LayerStatistics
from reportgen.config import Settings, as_dict
from reportgen.data import ProbeSet
from reportgen.model.graph import Layer
from reportgen.model.load import LoadedModel
from reportgen.progress import Progress
from reportgen.views import slug

VERSIONED_PACKAGES = ("reportgen", "jax", "jaxlib", "flax", "orbax-checkpoint", "numpy", "jinja2", "matplotlib")


def section_id(index: int, name: str) -> str:
    """HTML id of the section of the layer at `index`."""
    return f"layer-{index + 1}-{slug(name)}"


def unit_name(layer: Layer) -> str:
    """What one output channel of a layer is called: a filter, or a unit of a dense layer."""
    return "filter" if layer.is_spatial else "unit"


def _floats(values: np.ndarray) -> tuple[float | None, ...]:
    return tuple(float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64).ravel())


def _float(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def feature_visualisation(vis: visualisation.FilterVisualisation) -> results.FeatureVisualisation:
    """A layer's feature visualisation, without its images."""
    top = vis.top
    return results.FeatureVisualisation(
        selection=vis.selection,
        filters=tuple(int(f) for f in vis.filters),
        activation=_floats(vis.activation),
        probe_best=_floats(vis.probe_best),
        beats_probes=tuple(bool(b) for b in vis.beats_probes),
        beat_fraction=_float(vis.beat_fraction),
        dead=tuple(bool(d) for d in vis.dead),
        top_patches=_top_patches(top),
    )


def _top_patches(top: patches.TopPatches) -> results.TopPatches:
    return results.TopPatches(
        images=tuple(tuple(int(i) for i in row) for row in top.images),
        rows=tuple(tuple(int(i) for i in row) for row in top.rows),
        cols=tuple(tuple(int(i) for i in row) for row in top.cols),
        values=tuple(_floats(row) for row in top.values),
    )


CONCEPT_FILTERS = 5
"""Filters recorded per concept, the largest weight first."""

CONCEPT_CLASSES = 5
"""Classes recorded per concept, the largest share of their evidence first."""


def concepts_result(found: concepts.LayerConcepts, classes: list[str]) -> results.Concepts:
    """A layer's concepts: what they mix, where they are strongest and which classes they serve."""
    basis = found.factorisation.basis
    shares = np.nan_to_num(found.share(), nan=-np.inf)
    out = []
    for c in range(len(basis)):
        filters = np.argsort(-basis[c], kind="stable")[:CONCEPT_FILTERS]
        served = [int(k) for k in np.argsort(-shares[:, c], kind="stable")[:CONCEPT_CLASSES] if shares[k, c] > 0]
        one = patches.TopPatches(
            *(a[c : c + 1] for a in (found.top.images, found.top.rows, found.top.cols, found.top.values))
        )
        out.append(
            results.Concept(
                presence=float(found.factorisation.presence[c]),
                filters=tuple(int(f) for f in filters),
                weights=_floats(basis[c, filters]),  # type: ignore[arg-type]
                top_patches=_top_patches(one),
                classes=tuple(
                    results.ConceptClass(classes[k], k, float(shares[k, c]), float(found.contribution[k, c]))
                    for k in served
                ),
            )
        )
    return results.Concepts(
        found.factorisation.rows,
        _floats(found.factorisation.errors),
        concepts.GAIN,
        tuple(out),
        _float(found.evidence) if out else None,
        _float(found.total) if out else None,
    )


def layer_result(
    index: int,
    layer: Layer,
    stats: LayerStatistics,
    vis: visualisation.FilterVisualisation | None,
    nonfinite_weights: tuple[int, ...] = (),
    found: concepts.LayerConcepts | None = None,
    classes: list[str] | None = None,
) -> results.LayerResult:
    """One layer's facts, statistics, dead and rare filters and feature visualisation."""
    rf = layer.receptive_field
    return results.LayerResult(
        name=layer.name,
        section=section_id(index, layer.name),
        kind=layer.kind,
        activation=layer.activation,
        unit=unit_name(layer),
        output_shape=tuple(layer.output_shape),
        params=layer.params,
        flops=layer.flops,
        receptive_field=None if rf is None else results.ReceptiveField(tuple(rf.size), tuple(rf.stride)),  # type: ignore[arg-type]
        statistics=results.ChannelStatistics(
            mean=_floats(stats.mean),
            max=_floats(stats.max),
            firing_fraction=_floats(stats.firing),
            nonnegative=bool(stats.nonnegative),
            nonfinite_images=int(stats.nonfinite_images),
        ),
        dead_filters=tuple(int(c) for c in stats.dead),
        rare_filters=tuple(int(c) for c in stats.rare),
        nonfinite_weights=nonfinite_weights,
        feature_visualisation=None if vis is None else feature_visualisation(vis),
        concepts=None if found is None or classes is None else concepts_result(found, classes),
    )


def predictions_result(
    pred: predictions.Predictions,
    probe: ProbeSet,
    classes: list[str],
    nonfinite_logits: int,
    outputs_are_probabilities: bool = False,
) -> results.Predictions:
    """Every probe image's content hash, label and top-5, with accuracy and confusion."""
    images = tuple(
        results.ImagePrediction(
            name=probe.names[i],
            sha256=results.image_hash(probe.images[i]),
            label=classes[int(probe.labels[i])] if probe.labels[i] >= 0 else None,
            label_index=int(probe.labels[i]) if probe.labels[i] >= 0 else None,
            top=tuple(
                results.ClassScore(classes[int(k)], int(k), _float(float(p)))
                for k, p in zip(pred.top_classes[i], pred.top_probs[i], strict=True)
            ),
            correct=None if probe.labels[i] < 0 else bool(pred.predicted[i] == probe.labels[i]),
        )
        for i in range(len(probe.names))
    )
    return results.Predictions(
        accuracy=_float(pred.accuracy),
        labelled_images=int(pred.labelled.sum()),
        nonfinite_logits=nonfinite_logits,
        outputs_are_probabilities=outputs_are_probabilities,
        images=images,
        confusion=None if pred.confusion is None else tuple(tuple(int(v) for v in row) for row in pred.confusion),
    )


def attribution_result(
    result: attribution.AttributionResult,
    probe: ProbeSet,
    classes: list[str],
    threshold: float,
    class_threshold: float,
) -> results.Attribution:
    """Per-method scores (mean over the explained images) and each explained image's AUCs and maps."""
    deletion, insertion = result.deletion_auc(), result.insertion_auc()
    scores = []
    for m, name in enumerate(catalogue.METHODS):
        final = _float(float(result.sanity[m, -1])) if result.sanity.shape[1] else None
        head = _float(float(result.sanity[m, result.head_stage])) if result.sanity.shape[1] else None
        class_spearman, class_ssim = (_float(float(v[m])) for v in (result.class_spearman, result.class_ssim))
        scores.append(
            results.MethodScores(
                name=name,
                title=catalogue.TITLES[name],
                signed=name in catalogue.SIGNED,
                deletion_auc=_float(float(deletion[:, m].mean())),
                insertion_auc=_float(float(insertion[:, m].mean())),
                deletion_curve=_floats(result.deletion[:, m].mean(axis=0)),
                insertion_curve=_floats(result.insertion[:, m].mean(axis=0)),
                sanity_spearman=_floats(result.sanity[m]),
                sanity_head=head,
                sanity_final=final,
                flagged=any(v is not None and abs(v) > threshold for v in (head, final)),
                sanity_ssim=_floats(result.sanity_ssim[m]),
                class_spearman=class_spearman,
                class_ssim=class_ssim,
                class_insensitive=all(v is not None and v > class_threshold for v in (class_spearman, class_ssim)),
                independent_spearman=_floats(result.independent[m]),
                independent_ssim=_floats(result.independent_ssim[m]),
                max_sensitivity=_float(float(result.max_sensitivity[m])),
                **_removal_scores(result.road_morf[:, m], result.road_lerf[:, m], result.infidelity[:, m]),
            )
        )
    images = tuple(
        results.ExplainedImage(
            name=probe.names[int(i)],
            sha256=results.image_hash(probe.images[int(i)]),
            target=classes[int(result.targets[k])],
            target_index=int(result.targets[k]),
            deletion_auc={name: _float(float(deletion[k, m])) for m, name in enumerate(catalogue.METHODS)},
            insertion_auc={name: _float(float(insertion[k, m])) for m, name in enumerate(catalogue.METHODS)},
            maps={name: results.stored_map(result.maps[name][k]) for name in catalogue.METHODS},
            ig_completeness_error=_float(float(result.ig_completeness_error[k])),
        )
        for k, i in enumerate(result.indices)
    )
    base_deletion, base_insertion = (
        np.asarray(faithfulness.area(curves)) for curves in (result.baseline_deletion, result.baseline_insertion)
    )
    baselines = tuple(
        results.BaselineScores(
            name=name,
            title=faithfulness.BASELINE_TITLES[name],
            deletion_auc=_float(float(base_deletion[:, b].mean())),
            insertion_auc=_float(float(base_insertion[:, b].mean())),
            deletion_curve=_floats(result.baseline_deletion[:, b].mean(axis=0)),
            insertion_curve=_floats(result.baseline_insertion[:, b].mean(axis=0)),
            **_removal_scores(
                result.baseline_road_morf[:, b], result.baseline_road_lerf[:, b], result.baseline_infidelity[:, b]
            ),
        )
        for b, name in enumerate(faithfulness.BASELINES)
    )
    return results.Attribution(
        cam_layer=result.cam_layer,
        methods=tuple(scores),
        images=images,
        sanity_stages=tuple(result.sanity_layers),
        head_stage=int(result.head_stage),
        sanity_images=int(result.sanity_images),
        sanity_threshold=float(threshold),
        class_threshold=float(class_threshold),
        baselines=baselines,
        road_fractions=road.FRACTIONS,
    )


def _removal_scores(morf: np.ndarray, lerf: np.ndarray, unfaithful: np.ndarray) -> dict[str, Any]:
    """ROAD and infidelity fields of one map's scores from its per-image ROAD curves (N, points)
    and infidelity (N,), averaged over the images."""
    return {
        "road_morf": _float(float(morf.mean())),
        "road_lerf": _float(float(lerf.mean())),
        "road_morf_curve": _floats(morf.mean(axis=0)),
        "road_lerf_curve": _floats(lerf.mean(axis=0)),
        "infidelity": _float(float(sanity.finite_mean(unfaithful, axis=0))),
    }


def class_images(vis: visualisation.ClassVisualisation, classes: list[str]) -> tuple[results.ClassImage, ...]:
    """The visualised classes and the logits their images reach."""
    return tuple(
        results.ClassImage(classes[int(k)], int(k), _float(float(v)))
        for k, v in zip(vis.classes, vis.logits, strict=True)
    )


DECIDING_FILTERS = 5
"""Filters recorded per class and layer in report.json, the strongest first."""


def class_evidence(
    evidence: list[classfilters.LayerEvidence], targets: np.ndarray, classes: list[str]
) -> tuple[results.ClassEvidence, ...]:
    """For every class with probe images, the filters of each layer giving its logit the most evidence."""
    counts = np.bincount(targets, minlength=len(classes))
    shares = {layer.layer: layer.share() for layer in evidence}
    conducted = {
        layer.layer: classfilters.share(layer.conductance) for layer in evidence if layer.conductance is not None
    }

    def conductance(layer: classfilters.LayerEvidence, k: int, f: int) -> tuple[float | None, float | None]:
        if layer.conductance is None:
            return None, None
        return float(layer.conductance[k, f]), float(np.nan_to_num(conducted[layer.layer][k, f]))

    out = []
    for k in np.flatnonzero(counts):
        filters = tuple(
            results.DecidingFilter(
                layer.layer,
                int(f),
                float(layer.contribution[k, f]),
                float(np.nan_to_num(shares[layer.layer][k, f])),
                float(layer.weight[k, f]),
                *conductance(layer, int(k), int(f)),
            )
            for layer in evidence
            for f in layer.top(int(k), DECIDING_FILTERS)
        )
        out.append(results.ClassEvidence(classes[int(k)], int(k), int(counts[k]), filters))
    return tuple(out)


def model_result(settings: Settings, model: LoadedModel, classes: list[str]) -> results.Model:
    """The model's spec, shapes, parameters and checkpoint."""
    ck = model.checkpoint
    return results.Model(
        spec=settings.model,
        api=model.api,
        class_name=model.class_name,
        input_shape=tuple(model.input_shape),
        num_classes=model.graph.num_classes,
        params=model.num_params,
        checkpoint=results.Checkpoint(ck.path, ck.step, ck.sha256, ck.files, ck.bytes),
        classes=tuple(classes),
    )


def plan_record(build_plan: plan.Plan, progress: Progress, reproducible: bool) -> results.PlanRecord:
    """The plan: budgets, batching, estimates and what each stage measured (time, peak memory,
    effective throughput). A reproducible build records only what was sampled: the rest depends
    on the machine's free memory and speed."""
    sampled = tuple(build_plan.sampled)
    if reproducible:
        return results.PlanRecord(False, sampled, None, None, None, None, None, None, ())
    stages = []
    for stage in build_plan.stages:
        seconds = progress.timings.get(stage.name)
        stages.append(
            results.PlanStage(
                name=stage.name,
                chunk=stage.chunk,
                inner_batch=stage.inner_batch,
                gflops=stage.flops / 1e9,
                estimated_seconds=stage.estimated_seconds,
                estimated_bytes=int(stage.estimated_bytes),
                measured_seconds=seconds,
                measured_peak_bytes=progress.peaks.get(stage.name) if seconds is not None else None,
                gflops_per_second=stage.flops / seconds / 1e9 if seconds else None,
                compile_seconds=progress.compile_seconds.get(stage.name, 0.0) if seconds is not None else None,
            )
        )
    return results.PlanRecord(
        recorded=True,
        sampled=sampled,
        memory_budget_bytes=int(build_plan.passes.memory_bytes),
        gradient_passes=build_plan.passes.gradient,
        forward_passes=build_plan.passes.forward,
        forward_gflops_per_second=build_plan.throughput.forward / 1e9,
        gradient_gflops_per_second=build_plan.throughput.gradient / 1e9,
        visualisation_gflops_per_second=build_plan.throughput.visualisation / 1e9,
        visualisation_step_ms=build_plan.throughput.vis_step_seconds * 1e3,
        time_budget_seconds=_float(build_plan.time_budget),
        estimated_seconds=build_plan.estimated_seconds,
        stages=tuple(stages),
    )


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers."""
    out = {}
    for package in VERSIONED_PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def build_date() -> str:
    """Now, or SOURCE_DATE_EPOCH when set (reproducible builds), as ISO 8601 UTC."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return when.replace(microsecond=0).isoformat()


def provenance(
    settings: Settings,
    command: str,
    probe: ProbeSet,
    timings: Mapping[str, float],
    plan_recorded: results.PlanRecord,
    release: str | None,
) -> results.Provenance:
    """What is needed to rebuild the report, and what the build measured."""
    reproducible = "SOURCE_DATE_EPOCH" in os.environ
    return results.Provenance(
        release=release,
        versions=versions(),
        python=platform.python_version(),
        backend=jax.default_backend(),
        devices=tuple(str(d) for d in jax.devices()),
        settings=as_dict(settings),
        seed=settings.seed,
        command=command,
        date=build_date(),
        probe_folder=str(settings.images),
        probe_images=len(probe.names),
        probe_warnings=tuple(probe.warnings),
        timings_recorded=not reproducible,
        timings={} if reproducible else {k: round(v, 3) for k, v in timings.items()},
        plan=plan_recorded,
    )
