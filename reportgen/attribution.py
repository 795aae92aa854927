"""The attribution stage: every method on the chosen probe images, their faithfulness curves, and
the cascading randomisation sanity check.

Methods are computed in families that share passes: one forward and backward pass per example
gives saliency, gradient × input and the CAMs at every layer; guided backprop and deconvnet take
one pass each; SmoothGrad samples, IG path points, Score-CAM channels, occlusion windows and
faithfulness curve points are inner axes, run as fixed-size slices of (examples × inner points)
whose size the planner picks (`compute.map_inner`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reportgen.analyses import cam, catalogue, faithfulness, infidelity, methods, occlusion, road, saliency, sanity
from reportgen.compute import chunk_size, example_keys, map_examples, map_inner
from reportgen.config import Settings
from reportgen.model.engine import Engine
from reportgen.model.graph import Layer
from reportgen.model.load import LoadedModel
from reportgen.plan import Budget as Passes
from reportgen.plan import split
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
    head_stage: int  # first stage at which the classifier head and the last convolution are randomised
    sanity: np.ndarray  # (M, stages) mean Spearman correlation of absolute values with the original maps
    sanity_images: int
    sanity_ssim: np.ndarray  # (M, stages) mean SSIM with the original maps
    independent: np.ndarray  # (M, stages) mean Spearman of absolute values, only that stage's layers randomised
    independent_ssim: np.ndarray  # (M, stages)
    class_spearman: np.ndarray  # (M,) mean Spearman of absolute values, explained class against the other
    class_ssim: np.ndarray  # (M,) mean SSIM, explained class against the other
    baseline_deletion: np.ndarray  # (N, B, steps + 1): the reference maps' curves (faithfulness.BASELINES)
    baseline_insertion: np.ndarray  # (N, B, steps + 1)
    ig_completeness_error: np.ndarray  # (N,) |Σ IG map − (f(x) − f(x′))| / |f(x) − f(x′)|; NaN where f(x) = f(x′)
    road_morf: np.ndarray  # (N, M, len(road.FRACTIONS)) ROAD, most relevant removed first
    road_lerf: np.ndarray  # (N, M, len(road.FRACTIONS)) ROAD, least relevant removed first
    baseline_road_morf: np.ndarray  # (N, B, len(road.FRACTIONS))
    baseline_road_lerf: np.ndarray  # (N, B, len(road.FRACTIONS))
    infidelity: np.ndarray  # (N, M) relative infidelity under square removals
    baseline_infidelity: np.ndarray  # (N, B)
    max_sensitivity: np.ndarray  # (M,) mean over the sanity images; NaN without perturbed samples

    def deletion_auc(self) -> np.ndarray:
        """(N, M) area under each deletion curve (lower is better)."""
        return np.asarray(faithfulness.area(self.deletion))

    def insertion_auc(self) -> np.ndarray:
        """(N, M) area under each insertion curve (higher is better)."""
        return np.asarray(faithfulness.area(self.insertion))


@dataclass(frozen=True)
class MethodOutputs:
    """Raw outputs of the requested methods for N images."""

    raw: dict[str, np.ndarray]  # method -> (N, H, W, C) gradient maps or (N, H, W) maps
    layer_cams: dict[str, dict[str, np.ndarray]]  # layer -> LAYER_CAMS method -> (N, h, w)
    targets: np.ndarray  # (N,) the class explained
    logits: np.ndarray | None  # (N, K); None when nothing needed them (given targets, one-rule methods)
    start_logits: np.ndarray | None = None  # (N, K) at Integrated Gradients' starting images, when computed


@dataclass
class _Job:
    """One call of `MethodRunner.run`: its inputs, the shared pass, and outputs other methods reuse."""

    variables: Any
    images: np.ndarray
    targets: np.ndarray
    keys: np.ndarray
    passes: Passes
    sized_for: int  # the number of examples the chunks are sized for
    shared: dict[str, Any]
    starts: np.ndarray | None
    cache: dict[str, np.ndarray]

    @property
    def gradient_chunk(self) -> int:
        """Examples per call of a one-pass gradient program."""
        return chunk_size(self.sized_for, self.passes.gradient)

    @property
    def forward_chunk(self) -> int:
        """Examples per call of a forward program."""
        return chunk_size(self.sized_for, self.passes.forward)


INPUT_GRADIENT_METHODS = ("saliency", "gradient_x_input")
"""The shared pass's outputs that need its backward pass all the way to the image."""


class MethodRunner:
    """Every attribution method of one model and configuration, as per-example functions built
    once (so each compiles once, whatever the variables: the sanity cascade reuses them)."""

    def __init__(
        self,
        engine: Engine,
        config: methods.AttributionConfig,
        cam_layer: str,
        layer_cams: Sequence[str],
        black: np.ndarray,
        white: np.ndarray | None = None,
        layer_cam_methods: Sequence[str] = catalogue.LAYER_CAMS,
    ) -> None:
        """`layer_cam_methods` are the CAMs computed at each of `layer_cams` (the `cam_layer`
        always gets all of them); `black` and `white` are the darkest and brightest input images
        (default: white one above black)."""
        order = [layer.name for layer in engine.graph.layers]
        self.engine = engine
        self.config = config
        self.cam_layer = cam_layer
        self.layer_cams = list(layer_cams)
        self.layer_cam_methods = tuple(layer_cam_methods)
        self.black = np.asarray(black, np.float32)
        self.white = self.black + 1.0 if white is None else np.asarray(white, np.float32)
        tapped = sorted({cam_layer, *layer_cams}, key=order.index)
        black_image = jnp.asarray(self.black)

        def shared_pass(input_gradient: bool, cam_methods: tuple[str, ...]) -> Callable[..., dict[str, Any]]:
            """The shared forward and backward pass, with the input gradient or without it (XLA then
            drops its backward pass below the deepest tapped layer) and `cam_methods` at the CAM layer."""

            def run(variables: Any, image: jax.Array, target: jax.Array) -> dict[str, Any]:
                result = saliency.shared_pass(engine, variables, image, target, tapped)
                cams = {
                    name: {
                        m: getattr(cam, m)(result.activations[name], result.gradients[name])
                        for m in (cam_methods if name == cam_layer else layer_cam_methods)
                    }
                    for name in tapped
                }
                out = {
                    "upsampled": {m: cam.upsample(cams[cam_layer][m], image.shape[:2]) for m in cam_methods},
                    "target": result.target,
                    "logits": result.logits,
                    "cam_activation": result.activations[cam_layer],
                    "cams": cams,
                }
                if input_gradient:
                    out.update(saliency=result.saliency, gradient_x_input=result.gradient_x_input)
                return out

            return run

        def guided(variables: Any, image: jax.Array, target: jax.Array) -> jax.Array:
            return saliency.guided_backprop(engine, variables, image, target)

        def deconvnet(variables: Any, image: jax.Array, target: jax.Array) -> jax.Array:
            return saliency.deconvnet(engine, variables, image, target)

        def lrp(variables: Any, low: jax.Array, high: jax.Array, image: jax.Array, target: jax.Array) -> jax.Array:
            return engine.lrp(variables, image, target, low, high)

        def smoothgrad(
            variables: Any, image: jax.Array, target: jax.Array, key: jax.Array, ids: jax.Array, weights: jax.Array
        ) -> jax.Array:
            return saliency.smoothgrad_part(
                engine, variables, image, target, key, ids, weights, config.smoothgrad_noise
            )

        def starts(image: jax.Array, key: jax.Array) -> jax.Array:
            return saliency.baseline(image, config.ig_baseline, jax.random.wrap_key_data(key), black_image)

        def integrated(
            variables: Any, image: jax.Array, target: jax.Array, start: jax.Array, alphas: jax.Array, weights: jax.Array
        ) -> jax.Array:
            return saliency.integrated_gradients_part(engine, variables, image, target, start, alphas, weights)

        def score(
            variables: Any, image: jax.Array, target: jax.Array, activation: jax.Array, channels: jax.Array
        ) -> jax.Array:
            return cam.score_cam_probabilities(engine, variables, image, target, activation, channels, black_image)

        fill = black_image if config.occlusion_fill is None else jnp.float32(config.occlusion_fill)

        def occluded(variables: Any, image: jax.Array, target: jax.Array, masks: jax.Array) -> jax.Array:
            return occlusion.occluded_probabilities(engine, variables, image, target, masks, fill)

        def curve(
            variables: Any,
            image: jax.Array,
            target: jax.Array,
            ranks: jax.Array,
            method: jax.Array,
            count: jax.Array,
            deleting: jax.Array,
        ) -> jax.Array:
            start = saliency.blur(image, sigma=max(image.shape[0], image.shape[1]) / 4)
            removed = jnp.broadcast_to(black_image, image.shape)
            return faithfulness.point_probabilities(
                engine, variables, image, target, ranks, removed, start, method, count, deleting
            )

        self._shared_pass = functools.cache(shared_pass)
        self._smoothgrad_part = smoothgrad
        self._logits = engine.logits
        self._lrp = lrp
        self._relu_rules = {"guided_backprop": guided, "deconvnet": deconvnet}
        self._starts, self._integrated = starts, integrated

        def road_curve(
            variables: Any,
            image: jax.Array,
            target: jax.Array,
            ranks: jax.Array,
            key: jax.Array,
            method: jax.Array,
            count: jax.Array,
            most_relevant_first: jax.Array,
            point: jax.Array,
        ) -> jax.Array:
            return road.point_probabilities(
                engine, variables, image, target, ranks, key, method, count, most_relevant_first, point
            )

        def squares(variables: Any, image: jax.Array, target: jax.Array, masks: jax.Array) -> jax.Array:
            return occlusion.occluded_probabilities(engine, variables, image, target, masks, black_image)

        self._score, self._occluded, self._squares = score, occluded, squares
        self._curve, self._road = curve, road_curve
        self._compute: dict[str, Callable[[_Job], np.ndarray]] = {
            **{name: self._from_shared(name) for name in ("saliency", "gradient_x_input", *catalogue.LAYER_CAMS)},
            **{name: self._relu_rule(name) for name in self._relu_rules},
            "guided_grad_cam": self._guided_grad_cam,
            "lrp": self._lrp_maps,
            "smoothgrad": self._smoothgrad,
            "integrated_gradients": self._integrated_gradients,
            "score_cam": self._score_cam,
            "occlusion": self._occlusion,
        }
        assert set(self._compute) == set(catalogue.METHODS), "every catalogue row needs a function here"

    @functools.cached_property
    def masks(self) -> np.ndarray:
        """(P, H, W) occlusion windows."""
        h, w = self.engine.graph.input_shape[:2]
        return occlusion.window_masks(h, w, self.config.occlusion_window, self.config.occlusion_stride)

    def run(
        self,
        variables: Any,
        images: np.ndarray,
        targets: np.ndarray,
        keys: np.ndarray,
        passes: Passes,
        wanted: Sequence[str] = catalogue.METHODS,
        advance: Callable[[int], None] | None = None,
        starts: np.ndarray | None = None,
        sized_for: int | None = None,
    ) -> MethodOutputs:
        """Raw outputs of the `wanted` methods for `images` (model space); target -1 is the
        predicted class; `keys` are per-example PRNG key data; `starts` are IG's starting images
        (default: the configured baseline). Programs over whole examples take them in chunks
        sized for `sized_for` examples (default: these), so that runs over different numbers of
        images can share their compiled programs."""
        rows = [catalogue.method(name) for name in wanted]
        like = len(images) if sized_for is None else sized_for
        if self.layer_cams or any(row.shared_pass for row in rows):
            pass_fn = self._shared_pass(any(row.name in INPUT_GRADIENT_METHODS for row in rows), self._cams(wanted))
            shared = map_examples(pass_fn, (variables,), images, targets, chunk=chunk_size(like, passes.gradient))
            targets, logits = np.asarray(shared["target"], np.int32), shared["logits"]
        else:  # the methods asked for need only the targets: one forward pass gives them, if not given
            shared = {"cams": {}}
            logits = None
            if (targets < 0).any() or "integrated_gradients" in wanted:  # IG's completeness reads them
                logits = map_examples(self._logits, (variables,), images, chunk=chunk_size(like, passes.forward))
                targets = np.where(targets < 0, logits.argmax(axis=-1), targets).astype(np.int32)
        job = _Job(variables, images, targets, keys, passes, like, shared, starts, {})
        raw = {row.name: self._compute[row.name](job) for row in rows}
        if advance is not None:
            advance(len(images))
        return MethodOutputs(raw, shared["cams"], targets, logits, job.cache.get("start_logits"))

    def _cams(self, wanted: Sequence[str]) -> tuple[str, ...]:
        """The CAMs the shared pass computes at the CAM layer: those wanted (Grad-CAM for guided
        Grad-CAM too), and the layer CAMs where the CAM layer is one of the layer CAM layers."""
        needed = set(wanted) | ({"grad_cam"} if "guided_grad_cam" in wanted else set())
        if self.cam_layer in self.layer_cams:
            needed |= set(self.layer_cam_methods)
        return tuple(m for m in catalogue.LAYER_CAMS if m in needed)

    # One function per catalogue row: the method's raw output for the job's images.

    def _from_shared(self, name: str) -> Callable[[_Job], np.ndarray]:
        def compute(job: _Job) -> np.ndarray:
            upsampled = job.shared["upsampled"]
            return upsampled[name] if name in upsampled else job.shared[name]

        return compute

    def _relu_rule(self, name: str) -> Callable[[_Job], np.ndarray]:
        def compute(job: _Job) -> np.ndarray:
            if name not in job.cache:
                rule = self._relu_rules[name]
                job.cache[name] = map_examples(
                    rule, (job.variables,), job.images, job.targets, chunk=job.gradient_chunk
                )
            return job.cache[name]

        return compute

    def _lrp_maps(self, job: _Job) -> np.ndarray:
        """LRP with the z^B rule's bounds at the darkest and brightest input images."""
        shared = (job.variables, self.black, self.white)
        return map_examples(self._lrp, shared, job.images, job.targets, chunk=job.gradient_chunk)

    def _guided_grad_cam(self, job: _Job) -> np.ndarray:
        return self._relu_rule("guided_backprop")(job) * job.shared["upsampled"]["grad_cam"][..., None]

    def _smoothgrad(self, job: _Job) -> np.ndarray:
        samples = self.config.smoothgrad_samples
        ids = np.arange(samples, dtype=np.int32)
        weights = np.full(samples, 1.0 / samples, np.float32)
        chunk, batch = split(job.passes.gradient, job.sized_for, samples)
        return map_inner(
            self._smoothgrad_part, (job.variables,), (job.images, job.targets, job.keys), (ids, weights),
            chunk=chunk, inner_batch=batch, combine="sum",
        )  # fmt: skip

    def _integrated_gradients(self, job: _Job) -> np.ndarray:
        alphas, weights = saliency.path_points(self.config.ig_steps, self.config.ig_rule)
        chunk, batch = split(job.passes.gradient, job.sized_for, len(alphas))
        starts = job.starts
        if starts is None:
            starts = map_examples(self._starts, (), job.images, job.keys, chunk=job.forward_chunk)
        job.cache["start_logits"] = map_examples(self._logits, (job.variables,), starts, chunk=job.forward_chunk)
        return map_inner(
            self._integrated, (job.variables,), (job.images, job.targets, starts),
            (alphas.astype(np.float32), weights.astype(np.float32)),
            chunk=chunk, inner_batch=batch, combine="sum",
        )  # fmt: skip

    def _score_cam(self, job: _Job) -> np.ndarray:
        activation = job.shared["cam_activation"]
        channels = np.arange(activation.shape[-1], dtype=np.int32)
        chunk, batch = split(job.passes.forward, job.sized_for, len(channels))
        scores = map_inner(
            self._score, (job.variables,), (job.images, job.targets, activation), (channels,),
            chunk=chunk, inner_batch=batch, combine="concat",
        )  # fmt: skip
        maps = jax.vmap(cam.score_cam)(jnp.asarray(activation), jnp.asarray(scores))
        job.shared["cams"][self.cam_layer]["score_cam"] = np.asarray(maps)
        size = job.images.shape[1:3]
        return np.asarray(jax.vmap(lambda c: cam.upsample(c, size))(maps))

    def _occlusion(self, job: _Job) -> np.ndarray:
        # The unoccluded image comes first, through the same program as the occluded ones.
        masks = np.concatenate([np.zeros_like(self.masks[:1]), self.masks])
        chunk, batch = split(job.passes.forward, job.sized_for, len(masks))
        occluded = map_inner(
            self._occluded, (job.variables,), (job.images, job.targets), (masks,),
            chunk=chunk, inner_batch=batch, combine="concat",
        )  # fmt: skip
        return occlusion.occlusion_map(occluded[:, 0], occluded[:, 1:], self.masks)

    def curves(
        self,
        variables: Any,
        images: np.ndarray,
        targets: np.ndarray,
        maps: np.ndarray,
        passes: Passes,
        advance: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Deletion and insertion curves (N, M, steps + 1) of `maps` (N, M, H, W)."""
        n, count = maps.shape[:2]
        steps = self.config.faithfulness_steps
        counts = faithfulness.step_counts(steps, maps.shape[2] * maps.shape[3])
        method, pixels, deleting = faithfulness.curve_points(counts, count)
        distinct, back = faithfulness.distinct_points(method, pixels, deleting, int(counts[-1]))
        chunk, batch = split(passes.forward, n, len(distinct))
        values = map_inner(
            self._curve, (variables,), (images, targets, faithfulness.pixel_ranks(maps)),
            (method[distinct], pixels[distinct], deleting[distinct]),
            chunk=chunk, inner_batch=batch, combine="concat", progress=advance,
        )  # fmt: skip
        deletion, insertion = values[:, back].reshape(n, 2, count, steps + 1).transpose(1, 0, 2, 3)
        return deletion, insertion

    def road_curves(
        self,
        variables: Any,
        images: np.ndarray,
        targets: np.ndarray,
        maps: np.ndarray,
        keys: np.ndarray,
        passes: Passes,
        advance: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """ROAD's most- and least-relevant-first curves (N, M, len(road.FRACTIONS)) of `maps`
        (N, M, H, W); `keys` seed the imputation noise per example."""
        n, count = maps.shape[:2]
        counts = road.removed_counts(maps.shape[2] * maps.shape[3])
        method, pixels, most_relevant_first = faithfulness.curve_points(counts, count)
        points = np.arange(len(method), dtype=np.int32)
        chunk, batch = split(passes.forward, n, len(method))
        values = map_inner(
            self._road, (variables,), (images, targets, faithfulness.pixel_ranks(maps), keys),
            (method, pixels, most_relevant_first, points),
            chunk=chunk, inner_batch=batch, combine="concat", progress=advance,
        )  # fmt: skip
        morf, lerf = values.reshape(n, 2, count, len(road.FRACTIONS)).transpose(1, 0, 2, 3)
        return morf, lerf

    def infidelity_scores(
        self, variables: Any, images: np.ndarray, targets: np.ndarray, maps: np.ndarray, passes: Passes, seed: int
    ) -> np.ndarray:
        """(N, M) relative infidelity of `maps` (N, M, H, W) under `infidelity_samples` random
        square removals (`infidelity.infidelity`), the squares filled like the deletion curves'."""
        h, w = images.shape[1:3]
        squares = infidelity.square_masks(h, w, self.config.infidelity_samples, seed)
        masks = np.concatenate([np.zeros_like(squares[:1]), squares])  # the image itself first
        chunk, batch = split(passes.forward, len(images), len(masks))
        probabilities = map_inner(
            self._squares, (variables,), (images, targets), (masks,),
            chunk=chunk, inner_batch=batch, combine="concat",
        )  # fmt: skip
        return infidelity.infidelity(maps, squares, probabilities[:, :1] - probabilities[:, 1:])


def completeness_error(outputs: MethodOutputs) -> np.ndarray:
    """(N,) relative completeness error of the Integrated Gradients maps: the map should sum to
    f(x) − f(x′), the target logit's change from the starting image (Sundararajan et al. 2017,
    "Axiomatic Attribution", Prop. 1); what is left is the quadrature error of the path integral.
    NaN where the two logits are equal."""
    assert outputs.start_logits is not None and outputs.logits is not None, "Integrated Gradients was not computed"
    rows = np.arange(len(outputs.targets))
    gap = (outputs.logits[rows, outputs.targets] - outputs.start_logits[rows, outputs.targets]).astype(np.float64)
    total = outputs.raw["integrated_gradients"].reshape(len(rows), -1).sum(axis=1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap != 0, np.abs(total - gap) / np.abs(gap), np.nan)


def importance_maps(outputs: MethodOutputs, wanted: Sequence[str] = catalogue.METHODS) -> np.ndarray:
    """(N, M, H, W) 2-D importance of each wanted method."""
    maps = [np.asarray(jax.vmap(functools.partial(methods.importance, m))(jnp.asarray(outputs.raw[m]))) for m in wanted]
    return np.stack(maps, axis=1)


def config_from(settings: Settings) -> methods.AttributionConfig:
    """The attribution settings as the static config of the methods (the fields they share)."""
    given = dataclasses.asdict(settings.attribution)
    names = [f.name for f in dataclasses.fields(methods.AttributionConfig) if f.name in given]
    return methods.AttributionConfig(**{name: given[name] for name in names})


def targets_for(settings: Settings, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class to explain per image: -1 (predicted), the true label, or a fixed class index."""
    if settings.attribution.target == "predicted":
        return np.full(len(labels), -1, np.int32)
    if settings.attribution.target == "label":
        return np.where(labels >= 0, labels, -1).astype(np.int32)
    k = int(settings.attribution.target)
    if not 0 <= k < num_classes:
        raise ValueError(f"attribution_target {k} is not a class index below {num_classes}")
    return np.full(len(labels), k, np.int32)


def runner_for(
    engine: Engine, model: LoadedModel, settings: Settings, black: np.ndarray, white: np.ndarray
) -> MethodRunner:
    """The method runner of a build: CAMs at every conv and pooling layer, the Attribution
    section's at the graph's CAM layer."""
    spatial = [layer for layer in model.graph.layers if layer.is_spatial]
    cam_layers = [layer.name for layer in spatial if layer.kind != "norm"]
    return MethodRunner(engine, config_from(settings), model.graph.cam_layer, cam_layers, black, white)


def run(
    runner: MethodRunner,
    model: LoadedModel,
    inputs: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    settings: Settings,
    passes: Passes,
    progress: Progress,
) -> AttributionResult:
    """All methods, faithfulness and sanity for the probe images at `indices`."""
    images = inputs[indices]
    targets = targets_for(settings, labels[indices], model.graph.num_classes)
    keys = example_keys(settings.seed, indices)

    n_sanity = min(settings.attribution.sanity_images, len(images))
    progress.start("attribution maps", len(images))
    # chunks sized for the sanity images, so that the sanity check reuses these programs
    out = runner.run(
        model.variables, images, targets, keys, passes, advance=progress.advance, sized_for=n_sanity or None
    )
    progress.finish()
    stacked = importance_maps(out)

    progress.start("faithfulness curves", len(images))
    references = faithfulness.baseline_maps(images, settings.seed, indices)
    every_map = np.concatenate([stacked, references], axis=1)
    curves = runner.curves(model.variables, images, out.targets, every_map, passes, progress.advance)
    (deletion, baseline_deletion), (insertion, baseline_insertion) = (
        np.split(curve, [stacked.shape[1]], axis=1) for curve in curves
    )
    unfaithful = runner.infidelity_scores(model.variables, images, out.targets, every_map, passes, settings.seed)
    progress.finish()

    progress.start("ROAD curves", len(images))
    road_keys = example_keys(settings.seed, indices, stream=4)
    removal = runner.road_curves(model.variables, images, out.targets, every_map, road_keys, passes, progress.advance)
    (road_morf, baseline_road_morf), (road_lerf, baseline_road_lerf) = (
        np.split(curve, [stacked.shape[1]], axis=1) for curve in removal
    )
    progress.finish()

    groups = sanity_groups([layer for layer in reversed(model.graph.layers) if layer.param_paths], settings)
    samples = settings.attribution.sensitivity_samples
    progress.start("sanity check", 2 * len(groups) + 1 + samples)
    sample = (images[:n_sanity], out.targets[:n_sanity], keys[:n_sanity])
    cascade = [
        cascade_similarity(
            lambda variables: importance_maps(runner.run(variables, *sample, passes)),
            model.variables,
            [[path for layer in group for path in layer.param_paths] for group in groups],
            stacked[:n_sanity],
            settings.seed,
            cumulative,
            progress.advance,
        )
        for cumulative in (True, False)
    ]
    (correlations, structure), (independent, independent_ssim) = cascade
    others = other_classes(out.targets[:n_sanity], model.graph.num_classes, settings.seed, indices[:n_sanity])
    class_spearman = class_ssim = np.full(len(catalogue.METHODS), np.nan)
    if model.graph.num_classes > 1:
        contrast = importance_maps(runner.run(model.variables, images[:n_sanity], others, keys[:n_sanity], passes))
        class_spearman, class_ssim = sanity.similarity(stacked[:n_sanity], contrast)
    progress.advance(1)
    sensitivity = max_sensitivity(
        lambda noisy: importance_maps(runner.run(model.variables, noisy, *sample[1:], passes)),
        sample[0], stacked[:n_sanity], indices[:n_sanity], settings.seed, samples, progress.advance,
    )  # fmt: skip
    progress.finish()
    return AttributionResult(
        indices=indices,
        targets=out.targets,
        maps={m: stacked[:, k] for k, m in enumerate(catalogue.METHODS)},
        layer_cams={layer: dict(cams) for layer, cams in out.layer_cams.items() if layer in runner.layer_cams},
        cam_layer=runner.cam_layer,
        deletion=deletion,
        insertion=insertion,
        sanity_layers=tuple(group[-1].name for group in groups),
        head_stage=head_stage(groups, model.graph.last_conv),
        sanity=correlations,
        sanity_images=n_sanity,
        sanity_ssim=structure,
        independent=independent,
        independent_ssim=independent_ssim,
        class_spearman=class_spearman,
        class_ssim=class_ssim,
        baseline_deletion=baseline_deletion,
        baseline_insertion=baseline_insertion,
        ig_completeness_error=completeness_error(out),
        road_morf=road_morf,
        road_lerf=road_lerf,
        baseline_road_morf=baseline_road_morf,
        baseline_road_lerf=baseline_road_lerf,
        infidelity=unfaithful[:, : stacked.shape[1]],
        baseline_infidelity=unfaithful[:, stacked.shape[1] :],
        max_sensitivity=sensitivity,
    )


def head_stage(groups: Sequence[Sequence[Layer]], last_conv: str) -> int:
    """The first cascade stage at which every layer from the output down to the last convolution
    is randomised: the classifier head and the last conv block (Adebayo et al. 2018 show that
    guided backprop keeps its maps even then)."""
    for stage, group in enumerate(groups):
        if any(layer.name == last_conv for layer in group):
            return stage
    return len(groups) - 1


def sanity_groups(top_down: Sequence[Layer], settings: Settings) -> list[list[Layer]]:
    """The cascade's stages: the layers with parameters, top down, in at most `sanity_stages`
    groups of consecutive layers (one layer each with 0). Stage s randomises groups 1 … s."""
    count = min(settings.attribution.sanity_stages or len(top_down), len(top_down))
    bounds = np.linspace(0, len(top_down), count + 1).round().astype(int)
    return [list(top_down[int(a) : int(b)]) for a, b in itertools.pairwise(bounds)]


def cascade_similarity(
    maps_of: Callable[[Any], np.ndarray],
    variables: Any,
    layers_top_down: Sequence[Sequence[str]],
    original: np.ndarray,
    seed: int,
    cumulative: bool = True,
    advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(M, stages) mean Spearman correlation of absolute values and (M, stages) mean SSIM of each
    method's maps with `original` (N, M, H, W) at every randomisation stage (cumulative, or one
    stage's layers at a time); `maps_of(variables)` computes the maps with other weights."""
    stages = sanity.randomised_stages(variables, layers_top_down, seed, cumulative)
    rho = np.zeros((original.shape[1], len(layers_top_down)))
    structure = np.zeros_like(rho)
    for s, randomised_variables in enumerate(stages):
        rho[:, s], structure[:, s] = sanity.similarity(original, maps_of(randomised_variables))
        if advance is not None:
            advance(1)
    return rho, structure


def max_sensitivity(
    maps_of: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    original: np.ndarray,
    indices: np.ndarray,
    seed: int,
    samples: int,
    advance: Callable[[int], None],
) -> np.ndarray:
    """(M,) mean over `images` of each method's max-sensitivity (`infidelity.max_sensitivity`)
    over `samples` perturbed copies; `maps_of(images)` computes the (N, M, H, W) maps with the
    original targets and keys, so only the input moves. NaN without samples."""
    perturbed = []
    for draw in range(samples):
        perturbed.append(maps_of(infidelity.sensitivity_inputs(images, seed, indices, draw)))
        advance(1)
    if not perturbed:
        return np.full(original.shape[1], np.nan)
    return sanity.finite_mean(infidelity.max_sensitivity(original, np.stack(perturbed)), axis=0)


def other_classes(explained: np.ndarray, num_classes: int, seed: int, indices: np.ndarray) -> np.ndarray:
    """(N,) a class other than the explained one per image, drawn uniformly from (seed, probe
    index): the random logit of the class-sensitivity check (Sixt et al. 2020)."""
    draws = [np.random.default_rng((seed, int(i), 1)).integers(max(1, num_classes - 1)) for i in indices]
    return np.array([d + (d >= e) for d, e in zip(draws, explained, strict=True)], np.int32)
