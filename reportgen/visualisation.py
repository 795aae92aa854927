"""The feature-visualisation stage of a build: activation maximisation for the filters of every
conv layer and for every class, and each filter's top activating probe patches."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.analyses import featurevis, patches
from reportgen.analyses.activations import LayerStatistics
from reportgen.compute import example_keys, iterate_examples
from reportgen.config import Preprocess, Settings
from reportgen.model.engine import Engine
from reportgen.model.load import LoadedModel
from reportgen.plan import CLASS_STAGE, StagePlan
from reportgen.progress import Progress


def visualised_layers(model: LoadedModel) -> list[str]:
    """The layers whose filters are visualised: every spatial convolution."""
    return [layer.name for layer in model.graph.layers if layer.kind == "conv" and layer.is_spatial]


@dataclass(frozen=True)
class FilterVisualisation:
    """Synthesised images of a conv layer's filters, with how they compare with the probe set."""

    layer: str
    filters: np.ndarray  # (F,) filter indices visualised
    selection: str  # how they were chosen
    images: np.ndarray  # (F, B, H, W, C) in [0, 1]
    activation: np.ndarray  # (F,) objective reached by the first image of each filter
    probe_best: np.ndarray  # (F,) the best probe image's value of the same objective
    dead: np.ndarray  # (F,) bool
    top: patches.TopPatches  # for every filter of the layer

    @property
    def beats_probes(self) -> np.ndarray:
        """(F,) the synthesised image reaches a higher activation than every probe image."""
        return self.activation > self.probe_best

    @property
    def beat_fraction(self) -> float | None:
        """Fraction of visualised, non-dead filters whose image beats every probe image."""
        alive = ~self.dead
        return float(self.beats_probes[alive].mean()) if alive.any() else None


@dataclass(frozen=True)
class ClassVisualisation:
    """Synthesised images of each class (B = `images_per_filter` per class) and the logit reached."""

    classes: np.ndarray  # (K,) class indices visualised
    images: np.ndarray  # (K, B, H, W, C)
    logits: np.ndarray  # (K,) the class logit of each class's first image


def vis_config(settings: Settings) -> featurevis.VisConfig:
    """The visualisation settings as the static optimisation config."""
    return featurevis.VisConfig(
        steps=settings.visualisation.steps,
        learning_rate=settings.visualisation.learning_rate,
        parameterisation=settings.visualisation.parameterisation,
        decorrelate=settings.visualisation.parameterisation == "fourier",
        jitter=settings.visualisation.jitter,
        rotation_deg=settings.visualisation.rotation,
        tv_weight=settings.visualisation.tv,
        l2_weight=settings.visualisation.l2,
        blur_weight=settings.visualisation.blur,
        objective=settings.visualisation.objective,
        images_per_filter=settings.visualisation.images_per_filter,
        diversity_weight=settings.visualisation.diversity,
    )


def preprocessing(pre: Preprocess, channels: int) -> featurevis.Preprocessing:
    """The configured preprocessing as per-channel constants."""
    mean = np.broadcast_to(np.asarray(pre.mean, np.float32), (channels,)).copy()
    std = np.broadcast_to(np.asarray(pre.std, np.float32), (channels,)).copy()
    return featurevis.Preprocessing(pre.scale, mean, std)


def free_visualiser(settings: Settings, shape: tuple[int, int, int]) -> featurevis.Visualiser:
    """The build's filter visualisation around an objective that costs nothing (the image's mean):
    timing it tells the planner what a step costs besides the model."""
    basis = np.eye(shape[-1], dtype=np.float32)
    pre = preprocessing(settings.preprocess, shape[-1])
    return featurevis.visualise(featurevis.image_mean, vis_config(settings), shape, basis, pre)


def optimise(
    vis: featurevis.Visualiser,
    variables: Any,
    indices: np.ndarray,
    keys: np.ndarray,
    chunk: int,
    advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, B, H, W, C) and final objective values (N, B) of the filters (or classes) at
    `indices`, `chunk` of them optimised at once."""
    return iterate_examples(
        vis.init, vis.step, vis.steps, vis.finish, (variables,), indices, keys, chunk=chunk, progress=advance
    )


def chosen_filters(stats: LayerStatistics, count: int) -> tuple[np.ndarray, str]:
    """All filters, or the `count` with the highest mean activation over the probe set."""
    channels = len(stats.mean)
    if count <= 0 or count >= channels:
        return np.arange(channels, dtype=np.int32), f"all {channels} filters"
    order = np.argsort(-stats.mean, kind="stable")[:count]
    chosen = "the filter" if count == 1 else f"the {count} filters"
    return np.sort(order).astype(np.int32), f"{chosen} of {channels} with the highest mean activation"


def run(
    engine: Engine,
    model: LoadedModel,
    probe_images: np.ndarray,
    stats: Mapping[str, Mapping[str, np.ndarray]],
    layer_stats: Mapping[str, LayerStatistics],
    settings: Settings,
    stages: Sequence[StagePlan],
    class_order: np.ndarray,
    progress: Progress,
) -> tuple[list[FilterVisualisation], ClassVisualisation]:
    """Visualise the filters of every conv layer and every class, as the planned `stages` say:
    each stage with `layers` optimises those layers' filters together, `chunk` at once, and the
    class stage the first `visualisation.classes` of `class_order` (all with 0).

    A filter's key comes from the seed, its layer's position and its index, so its image does not
    depend on which layers share its stage."""
    config = vis_config(settings)
    shape = model.input_shape
    basis = featurevis.colour_basis(probe_images)
    pre = preprocessing(settings.preprocess, shape[-1])
    streams = {name: stream for stream, name in enumerate(visualised_layers(model), start=1)}
    results = []
    for stage in (s for s in stages if s.layers):
        chosen = [chosen_filters(layer_stats[name], settings.visualisation.filters) for name in stage.layers]
        slots = np.concatenate([np.full(len(f), k, np.int32) for k, (f, _) in enumerate(chosen)])
        filters = np.concatenate([f for f, _ in chosen])
        keys = np.concatenate(
            [example_keys(settings.seed, f, streams[name]) for (f, _), name in zip(chosen, stage.layers, strict=True)]
        )
        progress.start(stage.name, len(filters))
        objective = featurevis.layers_objective(engine, stage.layers, config.objective)
        vis = featurevis.visualise(objective, config, shape, basis, pre)
        images, values = optimise(
            vis, model.variables, np.stack([slots, filters], axis=1), keys, stage.chunk, progress.advance
        )
        progress.finish()
        for k, (name, (layer_filters, selection)) in enumerate(zip(stage.layers, chosen, strict=True)):
            rows = slots == k
            layer = model.graph.layer(name)
            layer_stat = stats[name]
            results.append(
                FilterVisualisation(
                    layer=name,
                    filters=layer_filters,
                    selection=selection,
                    images=images[rows],
                    activation=values[rows, 0],
                    probe_best=_probe_objective(layer_stat, config.objective)[layer_filters],
                    dead=np.isin(layer_filters, layer_stats[name].dead),
                    top=patches.top_patches(
                        layer_stat["max"], layer_stat["argmax"], layer.output_shape[1], settings.layers.top_patches
                    ),
                )
            )
    classes = np.sort(class_order[: settings.visualisation.classes or len(class_order)]).astype(np.int32)
    class_stage = next(s for s in stages if s.name == CLASS_STAGE)
    progress.start(CLASS_STAGE, len(classes))
    class_config = dataclasses.replace(
        config,
        steps=settings.visualisation.class_steps,
        learning_rate=settings.visualisation.class_learning_rate,
        tv_weight=settings.visualisation.class_tv,
        rotation_deg=8.0,
        scale=(0.92, 1.08),
    )
    vis = featurevis.visualise(featurevis.logit_objective(engine), class_config, shape, basis, pre)
    keys = example_keys(settings.seed, classes)
    images, values = optimise(vis, model.variables, classes, keys, class_stage.chunk, progress.advance)
    progress.finish()
    return results, ClassVisualisation(classes, images, values[:, 0])


def _probe_objective(stat: Mapping[str, np.ndarray], objective: str) -> np.ndarray:
    """The best value of the visualisation objective over the probe images, per channel."""
    if objective == "channel_mean":
        return stat["mean"].max(axis=0)
    # centre unit: only the maximum over all positions is recorded, an upper bound of the centre.
    return stat["max"].max(axis=0)
