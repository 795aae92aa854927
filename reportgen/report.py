"""Build a report: run the analyses, make the figures, write report.json, figures/ and report.html.

The only module that writes files. Output goes into a temporary folder beside OUT and is renamed
into place at the end, so a failed build never leaves a half-written report or destroys the
previous one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
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

from reportgen import attribution, plan, sections, visualisation
from reportgen.analyses import activations, predictions
from reportgen.analyses.activations import LayerStatistics
from reportgen.compute import enable_compilation_cache, map_examples, workers
from reportgen.config import Settings, as_dict
from reportgen.data import ProbeSet, read_classes, read_probe, to_model
from reportgen.errors import UserError
from reportgen.findings import (
    Finding,
    attribution_findings,
    input_findings,
    layer_findings,
    ordered,
    prediction_findings,
)
from reportgen.model.engine import Engine
from reportgen.model.graph import Layer
from reportgen.model.load import LoadedModel, load_model
from reportgen.progress import Progress
from reportgen.render import render

SCHEMA_VERSION = 1
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


def rounded(value: Any) -> Any:
    """JSON-ready values, through dicts and lists: floats to 6 significant digits, non-finite as None."""
    if isinstance(value, Mapping):
        return {k: rounded(v) for k, v in value.items()}
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


def _plan(settings: Settings, model: LoadedModel, engine: Engine, probe: ProbeSet) -> plan.Plan:
    """Measure the device, count the model's cost and plan every stage within the budgets."""
    graph = model.graph
    cost = plan.model_cost(graph)
    platform, _, free = plan.free_memory()
    passes = plan.budget(cost, settings.memory_budget, platform, free, workers())
    throughput = plan.measure_throughput(engine.logits, model.variables, model.input_shape, cost, workers())
    n = len(probe.names)
    shown = len(display_indices(probe.labels, max(settings.activation_images, settings.channel_images)))
    vis = {
        name: min(settings.vis_filters or graph.layer(name).output_shape[-1], graph.layer(name).output_shape[-1])
        for name in visualisation.visualised_layers(model)
    }
    explained = len(display_indices(probe.labels, settings.attribution_images))
    stages = sum(1 for layer in graph.layers if layer.param_paths)
    work = plan.Workload(
        n,
        shown,
        explained,
        min(settings.sanity_images, explained),
        min(settings.sanity_stages or stages, stages),
        vis,
        min(settings.vis_classes or graph.num_classes, graph.num_classes),
    )
    return plan.make_plan(settings, graph, cost, passes, throughput, work)


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


# ---------------------------------------------------------------------------------------------
# Sections


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
    progress.start("plan")
    build_plan = _plan(settings, model, engine, probe)
    settings = build_plan.settings
    progress.finish()
    progress.expect({stage.name: stage.estimated_seconds for stage in build_plan.stages})
    inputs = to_model(probe.images, settings.preprocess)
    layers = model.graph.layers
    probs, finite, stats = _summaries(engine, model, inputs, build_plan.stage("forward pass").chunk, progress)
    pred = predictions.summarize(probs, probe.labels)
    layer_stats = {layer.name: activations.summarize(stats[layer.name], settings.rare_fraction) for layer in layers}
    shown = display_indices(probe.labels, max(settings.activation_images, settings.channel_images))
    spatial = [layer.name for layer in layers if layer.is_spatial]
    maps = _maps(engine, model, inputs[shown], spatial, build_plan.stage("activation maps").chunk, progress)
    black = to_model(np.zeros((1, *model.input_shape), np.float32), settings.preprocess)[0]
    explained = display_indices(probe.labels, settings.attribution_images)
    runner = attribution.runner_for(engine, model, settings, black)
    attributed = attribution.run(runner, model, inputs, probe.labels, explained, settings, build_plan.passes, progress)
    attribution_json = attribution.to_json(attributed, list(probe.names), classes, settings.sanity_threshold)
    vis_chunks = {
        s.name.removeprefix("visualise "): s.chunk for s in build_plan.stages if s.name.startswith("visualise ")
    }
    class_order = np.argsort(-np.bincount(pred.predicted, minlength=model.graph.num_classes), kind="stable")
    filter_vis, class_vis = visualisation.run(
        engine, model, probe.images, stats, layer_stats, settings, vis_chunks, class_order, progress
    )
    found = _findings(probe, pred, classes, layers, layer_stats, int((~finite).sum()), attribution_json)

    progress.start("figures", len(layers) + 3)
    store = sections.FigureStore(settings.external_figures)
    vis_by_layer = {v.layer: v for v in filter_vis}
    shown_probe = sections.Shown(probe.images[shown], [probe.names[i] for i in shown])
    layer_views = []
    for i, layer in enumerate(layers):
        layer_views.append(
            sections.layer_view(
                i,
                layer,
                layer_stats[layer.name],
                model,
                maps,
                shown_probe,
                settings,
                store,
                attributed,
                vis_by_layer.get(layer.name),
                probe,
            )
        )
        progress.advance()
    predictions_section = sections.predictions_section(probe, pred, classes, store)
    progress.advance()
    attribution_section = sections.attribution_view(attributed, attribution_json, probe, classes, settings, store)
    progress.advance()
    class_section = sections.class_cards(class_vis, probe, pred, classes, store)
    progress.advance()
    progress.finish()

    data = report_data(settings, command, model, probe, classes, pred, layer_stats, found, dict(progress.timings))
    data["provenance"]["plan"] = plan_json(build_plan, progress, reproducible="SOURCE_DATE_EPOCH" in os.environ)
    data["attribution"] = rounded(attribution_json)
    data["feature_visualisation"] = rounded(visualisation.to_json(filter_vis, class_vis, classes))
    view = sections.report_view(
        settings, model, probe, pred, found, layer_views, predictions_section, attribution_section, class_section, data
    )
    progress.start("write report")
    html = render(view)
    warnings = list(probe.warnings)
    if not settings.external_figures and len(html) > settings.size_budget_mb * 1e6:
        warnings.append(
            f"report.html is {len(html) / 1e6:.1f} MB, over the {settings.size_budget_mb:g} MB budget;"
            " set external_figures = true to link figures/*.png instead of embedding them"
        )
    _write(out, html, data, store.files)
    progress.finish()
    return BuildResult(out, len(html), len(store.files), layers, tuple(found), tuple(warnings))


def _findings(
    probe: ProbeSet,
    pred: predictions.Predictions,
    classes: list[str],
    layers: tuple[Layer, ...],
    layer_stats: Mapping[str, LayerStatistics],
    nonfinite_logits: int,
    attribution_json: Mapping[str, Any],
) -> list[Finding]:
    """Every finding, most severe first."""
    found = input_findings(probe.warnings, nonfinite_logits)
    found += prediction_findings(pred, probe.names, classes)
    previous: LayerStatistics | None = None
    for i, layer in enumerate(layers):
        stats = layer_stats[layer.name]
        if "pool" in layer.kind and previous is not None and len(previous.mean) == len(stats.mean):
            # A pooled dead channel is dead because its input is: report only what pooling adds.
            stats = dataclasses.replace(
                stats,
                dead=tuple(c for c in stats.dead if c not in previous.dead),
                rare=tuple(c for c in stats.rare if c not in previous.rare and c not in previous.dead),
            )
        found += layer_findings(
            layer.name, sections.layer_id(i, layer), stats, layer.output_shape[-1], sections.unit_name(layer)
        )
        previous = layer_stats[layer.name]
    found += attribution_findings(attribution_json)
    return ordered(found)


def plan_json(build_plan: plan.Plan, progress: Progress, reproducible: bool) -> dict[str, Any]:
    """The plan for report.json: budgets, batching, estimates and what each stage measured (time,
    peak memory, effective throughput). A reproducible build records only what was sampled: the
    rest depends on the machine's free memory and speed."""
    if reproducible:
        return {"sampled": list(build_plan.sampled), "recorded": False}
    stages: list[dict[str, Any]] = []
    for stage in build_plan.stages:
        row: dict[str, Any] = {
            "name": stage.name,
            "chunk": stage.chunk,
            "inner_batch": stage.inner_batch,
            "gflops": rounded(stage.flops / 1e9),
            "estimated_seconds": rounded(stage.estimated_seconds),
            "estimated_bytes": stage.estimated_bytes,
        }
        seconds = progress.timings.get(stage.name)
        if seconds is not None:
            row["measured_seconds"] = rounded(seconds)
            row["measured_peak_bytes"] = progress.peaks.get(stage.name)
            row["gflops_per_second"] = rounded(stage.flops / seconds / 1e9) if seconds > 0 else None
            row["compile_seconds"] = rounded(progress.compile_seconds.get(stage.name, 0.0))
        stages.append(row)
    return {
        "recorded": True,
        "memory_budget_bytes": build_plan.passes.memory_bytes,
        "passes_at_once": {"gradient": build_plan.passes.gradient, "forward": build_plan.passes.forward},
        "forward_gflops_per_second": rounded(build_plan.throughput / 1e9),
        "time_budget_seconds": rounded(build_plan.time_budget),
        "estimated_seconds": rounded(build_plan.estimated_seconds),
        "sampled": list(build_plan.sampled),
        "stages": stages,
    }


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
