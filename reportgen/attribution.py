"""The attribution stage of a build: every method on the chosen probe images, their faithfulness
curves, and the cascading randomisation sanity check, batched through `compute.map_examples`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.analyses import faithfulness, methods, sanity
from reportgen.compute import example_keys, map_examples
from reportgen.config import Settings
from reportgen.model.engine import Engine
from reportgen.model.load import LoadedModel
from reportgen.progress import Progress


@dataclass(frozen=True)
class AttributionResult:
    """Maps and scores of every method on the attribution images."""

    indices: np.ndarray  # (N,) probe image indices
    targets: np.ndarray  # (N,) class explained
    maps: dict[str, np.ndarray]  # method -> (N, H, W)
    layer_cams: dict[str, dict[str, np.ndarray]]  # layer -> LAYER_CAMS method -> (N, h, w)
    cam_layer: str
    deletion: np.ndarray  # (N, M, steps + 1)
    insertion: np.ndarray  # (N, M, steps + 1)
    sanity_layers: tuple[str, ...]  # layers randomised at each stage, top down
    sanity: np.ndarray  # (M, stages) mean Spearman correlation with the original maps
    sanity_images: int

    def deletion_auc(self) -> np.ndarray:
        """(N, M) area under each deletion curve (lower is better)."""
        return np.asarray(faithfulness.area(self.deletion))

    def insertion_auc(self) -> np.ndarray:
        """(N, M) area under each insertion curve (higher is better)."""
        return np.asarray(faithfulness.area(self.insertion))


def config_from(settings: Settings) -> methods.AttributionConfig:
    """The attribution settings as the static config of the methods."""
    return methods.AttributionConfig(
        smoothgrad_samples=settings.smoothgrad_samples,
        smoothgrad_noise=settings.smoothgrad_noise,
        ig_steps=settings.ig_steps,
        ig_baseline=settings.ig_baseline,
        ig_rule=settings.ig_rule,
        occlusion_window=settings.occlusion_window,
        occlusion_stride=settings.occlusion_stride,
        faithfulness_steps=settings.faithfulness_steps,
    )


def targets_for(settings: Settings, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class to explain per image: -1 (predicted), the true label, or a fixed class index."""
    if settings.attribution_target == "predicted":
        return np.full(len(labels), -1, np.int32)
    if settings.attribution_target == "label":
        return np.where(labels >= 0, labels, -1).astype(np.int32)
    k = int(settings.attribution_target)
    if not 0 <= k < num_classes:
        raise ValueError(f"attribution_target {k} is not a class index below {num_classes}")
    return np.full(len(labels), k, np.int32)


def run(
    engine: Engine,
    model: LoadedModel,
    inputs: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    black: np.ndarray,
    settings: Settings,
    progress: Progress,
) -> AttributionResult:
    """All methods, faithfulness and sanity for the probe images at `indices`."""
    config = config_from(settings)
    spatial = [layer for layer in model.graph.layers if layer.is_spatial]
    cam_layers = [layer.name for layer in spatial if layer.kind != "norm"]
    cam_layer = [layer.name for layer in spatial if layer.kind == "conv"][-1]
    maps_fn = methods.maps_function(engine, config, cam_layer, cam_layers, black)
    images = inputs[indices]
    targets = targets_for(settings, labels[indices], model.graph.num_classes)
    keys = example_keys(settings.seed, indices)
    chunk = min(settings.chunk_size, 8)

    progress.start("attribution maps", len(images))
    out = map_examples(maps_fn, (model.variables,), images, targets, keys, chunk=chunk, progress=progress.advance)
    progress.finish()
    stacked = np.stack([out["maps"][m] for m in methods.METHODS], axis=1)

    progress.start("faithfulness curves", len(images))
    faith_fn = methods.faithfulness_function(engine, config.faithfulness_steps, black)
    deletion, insertion = map_examples(
        faith_fn, (model.variables,), images, out["target"], stacked, chunk=chunk, progress=progress.advance
    )
    progress.finish()

    top_down = [layer for layer in reversed(model.graph.layers) if layer.param_paths]
    n_sanity = min(settings.sanity_images, len(images))
    progress.start("sanity check", len(top_down))
    correlations = cascade_correlations(
        maps_fn,
        model.variables,
        [layer.param_paths for layer in top_down],
        images[:n_sanity],
        out["target"][:n_sanity],
        keys[:n_sanity],
        {m: out["maps"][m][:n_sanity] for m in methods.METHODS},
        settings.seed,
        chunk,
        progress.advance,
    )
    progress.finish()
    correlation = np.stack([correlations[m] for m in methods.METHODS])
    return AttributionResult(
        indices=indices,
        targets=np.asarray(out["target"]),
        maps={m: stacked[:, k] for k, m in enumerate(methods.METHODS)},
        layer_cams={layer: dict(cams) for layer, cams in out["layer_cams"].items()},
        cam_layer=cam_layer,
        deletion=np.asarray(deletion),
        insertion=np.asarray(insertion),
        sanity_layers=tuple(layer.name for layer in top_down),
        sanity=correlation,
        sanity_images=n_sanity,
    )


def cascade_correlations(
    maps_fn: Callable[..., dict[str, Any]],
    variables: Any,
    layers_top_down: Sequence[Sequence[str]],
    images: np.ndarray,
    targets: np.ndarray,
    keys: np.ndarray,
    original: Mapping[str, np.ndarray],
    seed: int,
    chunk: int,
    advance: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Mean Spearman correlation of each method's maps with `original` at every randomisation stage.

    `maps_fn(variables, image, target, key_data)` returns {"maps": {method: (H, W)}}.
    """
    stages = sanity.randomised_stages(variables, layers_top_down, seed)
    result = {name: np.zeros(len(stages)) for name in original}
    for s, randomised_variables in enumerate(stages):
        randomised = map_examples(maps_fn, (randomised_variables,), images, targets, keys, chunk=chunk)["maps"]
        for name, maps in original.items():
            result[name][s] = np.mean([sanity.spearman(maps[i], randomised[name][i]) for i in range(len(images))])
        if advance is not None:
            advance(1)
    return result


def to_json(result: AttributionResult, names: list[str], classes: list[str], threshold: float) -> dict[str, Any]:
    """The attribution numbers for report.json."""
    deletion, insertion = result.deletion_auc(), result.insertion_auc()
    per_method = {}
    for m, name in enumerate(methods.METHODS):
        final = float(result.sanity[m, -1])
        per_method[name] = {
            "deletion_auc": float(deletion[:, m].mean()),
            "insertion_auc": float(insertion[:, m].mean()),
            "deletion_curve": result.deletion[:, m].mean(axis=0).tolist(),
            "insertion_curve": result.insertion[:, m].mean(axis=0).tolist(),
            "sanity_spearman": result.sanity[m].tolist(),
            "sanity_final": final,
            "flagged": abs(final) > threshold,
        }
    images = [
        {
            "name": names[int(i)],
            "target": classes[int(result.targets[k])],
            "deletion_auc": {name: float(deletion[k, m]) for m, name in enumerate(methods.METHODS)},
            "insertion_auc": {name: float(insertion[k, m]) for m, name in enumerate(methods.METHODS)},
        }
        for k, i in enumerate(result.indices)
    ]
    return {
        "cam_layer": result.cam_layer,
        "methods": per_method,
        "images": images,
        "sanity_stages": list(result.sanity_layers),
        "sanity_images": result.sanity_images,
        "sanity_threshold": threshold,
    }
