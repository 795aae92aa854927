"""Cost and memory model of a build, from the layer graph and the device.

Before anything heavy runs, the planner counts what one pass of the model costs — FLOPs of a
forward pass, FLOPs of a forward and input-gradient pass, and the bytes of every intermediate
value one example creates — and measures the device's own throughput on the model's layer
shapes. From those it chooses how many passes each stage holds at once (examples in a chunk, and
inside each example the batch of IG steps, SmoothGrad samples, occlusion windows, Score-CAM
channels, faithfulness steps; filters and classes in feature visualisation), so that peak memory
stays under the budget, and estimates each stage's time. A profile's wall-time budget then
decides what is computed in full and what is sampled; the plan and every sampling decision are
recorded in the report.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reportgen import figurestore
from reportgen.analyses.featurevis import Visualiser
from reportgen.config import Settings
from reportgen.errors import UserError
from reportgen.model.graph import Graph
from reportgen.results import SAMPLED_SETTINGS

GIB = 1024**3

FORWARD_MEMORY = 1.0
"""Peak bytes of a forward pass held in a batch, as a multiple of its activation bytes (XLA frees
most intermediates early, but fused producers keep a few layers alive)."""

GRADIENT_MEMORY = 2.5
"""Peak bytes of a forward + input-gradient pass: the saved residuals, the cotangents of the
widest layers, and workspace."""

SATURATION_FLOPS = {
    "cpu": {"forward": 2.5e9, "gradient": 2.5e9, "visualisation": 1e9},
    "gpu": {"forward": 2e11, "gradient": 2e11, "visualisation": 2e11},
    "tpu": {"forward": 4e11, "gradient": 4e11, "visualisation": 4e11},
}
"""FLOPs of one batched call (a gradient pass counted as two forward passes) beyond which a larger
batch no longer raises throughput on that platform, per kind of pass; batches stop growing there
even when memory would allow more. Measured on 2 CPU cores from two threads: input gradients of
the demo run at 38 GFLOP/s one example per call, 74 at 16 (2.5 GFLOP), 57 at 32; of a ResNet-18 at
64x64 at 24, 63 at 4 (2.4 GFLOP), 76 at 16. Feature-visualisation steps (Fourier image, warp, Adam
around the gradient) run slower at those sizes: the demo's six layers took 63 s in calls of up to
1 GFLOP, 118 s in calls of up to 2.5 GFLOP."""


def saturation(platform: str, kind: str) -> float:
    """FLOPs per call at which batches of `kind` ("forward", "gradient" or "visualisation") stop
    growing on `platform`."""
    return SATURATION_FLOPS.get(platform, SATURATION_FLOPS["gpu"])[kind]


BUDGET_FRACTION = {"cpu": 0.4, "gpu": 0.75, "tpu": 0.75}
"""Default memory budget: this fraction of the free host RAM (CPU) or device memory."""

PROFILE_SECONDS = {"quick": 180.0, "standard": 600.0, "full": math.inf}
"""The wall time each profile promises on the machine at hand (estimated before computing)."""


@dataclass(frozen=True)
class ModelCost:
    """What one example costs the model."""

    forward_flops: int  # one forward pass
    activation_bytes: int  # every intermediate value of one forward pass
    layer_flops: dict[str, int]  # forward FLOPs up to and including each layer
    layer_bytes: dict[str, int]  # activation bytes up to and including each layer
    widest_layer: str  # the layer with the largest output


def model_cost(graph: Graph) -> ModelCost:
    """Count FLOPs and activation bytes of one example from the flat jaxpr."""
    flat = graph.flat
    image = flat.inputs[-1]
    derived = {image}
    layer_vars = {layer.var: layer.name for layer in graph.layers}
    flops_so_far = bytes_so_far = 0
    layer_flops: dict[str, int] = {}
    layer_bytes: dict[str, int] = {}
    per_layer_flops = {layer.var: layer.flops for layer in graph.layers}
    for eqn in flat.eqns:
        if not any(isinstance(v, int) and v in derived for v in eqn.inputs):
            continue
        for out in eqn.outputs:
            derived.add(out)
            bytes_so_far += math.prod(flat.shapes[out]) * np.dtype(flat.dtypes[out]).itemsize
            if out in layer_vars:
                flops_so_far += per_layer_flops[out]
                layer_flops[layer_vars[out]] = flops_so_far
                layer_bytes[layer_vars[out]] = bytes_so_far
    widest = max(graph.layers, key=lambda layer: math.prod(layer.output_shape))
    return ModelCost(
        forward_flops=max(flops_so_far, 1),
        activation_bytes=max(bytes_so_far, 1),
        layer_flops=layer_flops,
        layer_bytes=layer_bytes,
        widest_layer=widest.name,
    )


def free_memory() -> tuple[str, int]:
    """(platform, free bytes) of this host's first device: its memory where JAX reports it, else
    host RAM. (In a multi-host run every host follows the plan of process 0.)"""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return device.platform, int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return device.platform, _available_ram()


def _available_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with orbax
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


@dataclass(frozen=True)
class Throughput:
    """What the device does with this model, measured before the build."""

    forward: float  # FLOP/s of batched forward passes
    gradient: float  # FLOP/s of batched forward + input-gradient passes (counted as 2 forward passes)
    visualisation: float  # FLOP/s of the same passes at feature visualisation's (smaller) batch
    compile_seconds: float  # one gradient program's compilation (a load, when the cache has it)
    vis_step_seconds: float = 0.0  # one image's visualisation step besides the model, per image


def measure_throughput(
    logits: Any,
    variables: Any,
    input_shape: tuple[int, ...],
    cost: ModelCost,
    passes: Budget,
    free_visualiser: Visualiser | None = None,
) -> Throughput:
    """The model's jit+vmap'd input gradient, at the attribution stages' batch and at the
    visualisation batch, and its forward pass, at a batch large enough to saturate the device,
    each run from `passes.workers` host threads at once (as the stages run), measured now. Gradient
    passes are often much slower per FLOP than forward passes (on a CPU a deep network's
    gradient batch of one runs at a third of the forward speed), so the plan times them apart.

    `free_visualiser` (the build's feature visualisation around an objective that costs nothing)
    times what a visualisation step costs besides the model: the Fourier image, the random warp,
    the penalties and Adam, about 1.3 ms per 64x64 image on 2 CPU cores, as much as a shallow
    layer's own gradient."""
    platform = jax.devices()[0].platform
    forward_batch = int(np.clip(saturation(platform, "forward") / cost.forward_flops, 1, 256))
    forward = jax.jit(jax.vmap(logits, in_axes=(None, 0)))
    gradient = jax.jit(jax.vmap(jax.grad(lambda v, x: logits(v, x).sum(), argnums=1), in_axes=(None, 0)))
    examples, seconds, first = _time(gradient, variables, input_shape, passes.gradient, passes.workers)
    gradient_flops = examples * 2 * cost.forward_flops / seconds
    compile_seconds = max(0.0, first - seconds)
    visualisation_flops = gradient_flops
    if (vis_batch := passes.visualisation_at(cost)) != passes.gradient:
        examples, seconds, _ = _time(gradient, variables, input_shape, vis_batch, passes.workers)
        visualisation_flops = examples * 2 * cost.forward_flops / seconds
    step_seconds = 0.0
    if free_visualiser is not None:
        examples, seconds, _ = _time(_one_step(free_visualiser), variables, input_shape, vis_batch, passes.workers)
        step_seconds = seconds / examples
    examples, seconds, _ = _time(forward, variables, input_shape, forward_batch, passes.workers)
    forward_flops = examples * cost.forward_flops / seconds
    return Throughput(forward_flops, gradient_flops, visualisation_flops, compile_seconds, step_seconds)


def _one_step(vis: Visualiser) -> Any:
    """(variables, images) -> the state after starting and taking one step of `vis` for each image
    (the images set only the batch size), jitted."""
    init = jax.vmap(vis.init, in_axes=(None, 0, 0))
    step = jax.vmap(vis.step, in_axes=(None, 0, 0, 0, None))

    def run(variables: Any, images: jax.Array) -> Any:
        indices = jnp.zeros(len(images), jnp.int32)
        keys = jax.random.key_data(jax.random.split(jax.random.key(0), len(images)))
        return step(variables, init(variables, indices, keys), indices, keys, 0)

    return jax.jit(run)


def _time(run: Any, variables: Any, input_shape: tuple[int, ...], batch: int, streams: int) -> tuple[int, float, float]:
    """(examples per round, seconds of the median round, seconds of the first call: compilation
    and one run) of `run` at `batch` examples (whole devices), a round being one call from each of
    `streams` threads at once. The median of five rounds, after one that warms the threads: the
    mean of three varied by a third between identical measurements on a busy machine."""
    devices = jax.device_count()
    batch = -(-batch // devices) * devices
    x = jnp.zeros((batch, *input_shape), jnp.float32)
    start = time.perf_counter()
    jax.block_until_ready(run(variables, x))
    first = time.perf_counter() - start

    def call(_: int) -> None:
        jax.block_until_ready(run(variables, x))

    rounds = []
    with ThreadPoolExecutor(streams) as pool:
        for _ in range(6):
            start = time.perf_counter()
            list(pool.map(call, range(streams)))
            rounds.append(time.perf_counter() - start)
    return batch * streams, float(np.median(rounds[1:])), first


@dataclass(frozen=True)
class Budget:
    """How many passes of the model may run at once."""

    memory_bytes: int
    forward: int  # forward passes held at once
    gradient: int  # forward + gradient passes held at once
    workers: int = 1  # concurrent streams, each with this budget

    def visualisation_at(self, cost: ModelCost, layer: str | None = None) -> int:
        """Feature-visualisation passes (forward + gradient) at once when evaluation stops at
        `layer` (None: the whole model, as class visualisation does)."""
        return passes_at(self.memory_bytes, cost, "visualisation", jax.devices()[0].platform, layer)


def passes_at(memory_bytes: int, cost: ModelCost, kind: str, platform: str, layer: str | None = None) -> int:
    """Passes of `kind` ("forward", "gradient" or "visualisation") held at once within `memory_bytes`, when
    evaluation stops at `layer` (None: the whole model), and no more than saturate the platform."""
    nbytes = cost.layer_bytes[layer] if layer else cost.activation_bytes
    flops = cost.layer_flops[layer] if layer else cost.forward_flops
    memory, work = (FORWARD_MEMORY, 1) if kind == "forward" else (GRADIENT_MEMORY, 2)
    by_memory = memory_bytes // max(int(memory * nbytes), 1)
    by_work = nearest_power_of_two(saturation(platform, kind) / max(work * flops, 1))
    return int(max(1, min(by_memory, by_work)))


def nearest_power_of_two(count: float) -> int:
    """The power of two nearest `count` (on a log scale), at least 1. Saturation is a rough
    figure; a power of two splits the usual power-of-two image counts into equal chunks, so that
    no worker stream idles through a last round (64 demo images at 15 gradient passes: five
    chunks, three rounds on two streams; at 16: four chunks, two rounds)."""
    return 1 << max(0, round(math.log2(max(count, 1.0))))


def budget(cost: ModelCost, memory_gb: float, platform: str, free_bytes: int, workers: int = 1) -> Budget:
    """The pass budget of each of `workers` concurrent streams for `memory_gb` in all (0: the
    default fraction of free memory); UserError when not even one example's gradient pass fits."""
    memory = int(memory_gb * GIB) if memory_gb > 0 else int(BUDGET_FRACTION.get(platform, 0.5) * free_bytes)
    memory //= max(1, workers)
    one = int(GRADIENT_MEMORY * cost.activation_bytes)
    if one > memory:
        raise UserError(
            f"one example needs about {size_text(one)} for a gradient pass (widest layer {cost.widest_layer}),"
            f" more than the {size_text(memory)} memory budget of each of {workers} streams;"
            " raise memory_budget or use a smaller input_shape"
        )
    forward = passes_at(memory, cost, "forward", platform)
    gradient = passes_at(memory, cost, "gradient", platform)
    return Budget(memory, forward, gradient, max(1, workers))


def spread(chunk: int, items: int, workers: int, devices: int = 1) -> int:
    """`chunk`, made small enough that every worker stream gets a chunk of the `items`, and a
    multiple of the device count."""
    chunk = max(1, min(chunk, -(-items // max(1, workers))))
    return -(-chunk // devices) * devices


def size_text(nbytes: float) -> str:
    """Bytes as a short human-readable size (KiB, MiB or GiB)."""
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes / 1024:.1f} KiB"


def split(passes: int, outer: int, inner: int, devices: int = 1) -> tuple[int, int]:
    """(outer chunk, inner batch) for `outer` items of `inner` passes each, at most `passes` at once.

    The outer chunk is a multiple of the device count (the example axis is sharded); inner work
    is batched first, since it shares the example's inputs.
    """
    slices = -(-inner // max(1, passes // devices))
    inner_batch = -(-inner // slices)  # equal slices: as little padding as the budget allows
    chunk = max(1, min(outer, passes // inner_batch))
    chunk = max(devices, chunk // devices * devices)  # whole rows of devices, within the budget
    return chunk, inner_batch


@dataclass(frozen=True)
class StagePlan:
    """One stage: its batching and its estimated cost."""

    name: str
    chunk: int  # outer items at once (examples, filters or classes)
    inner_batch: int  # inner passes at once per outer item (0: no inner axis)
    flops: float  # estimated FLOPs of the stage
    estimated_seconds: float
    estimated_bytes: int
    layers: tuple[str, ...] = ()  # feature visualisation: the conv layers whose filters it optimises


@dataclass(frozen=True)
class Plan:
    """Every stage's batching and estimates, the settings after the profile's time budget, and
    what was sampled to meet it."""

    passes: Budget
    throughput: Throughput  # measured before the build
    time_budget: float  # seconds the profile promises (inf: none)
    stages: tuple[StagePlan, ...]
    settings: Any  # reportgen.config.Settings after sampling
    sampled: tuple[str, ...]  # what was computed on a sample, and how to get the rest

    def stage(self, name: str) -> StagePlan:
        """The plan of the stage called `name`."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def estimated_seconds(self) -> float:
        """Estimated wall time of all stages."""
        return sum(stage.estimated_seconds for stage in self.stages)


CLASS_STAGE = "visualise classes"
"""The stage that synthesises images of each class (`images_per_filter` per class)."""

EVIDENCE_STAGE = "class evidence"
"""The stage that weighs every conv filter's evidence for each probe image's class."""

CONCEPT_STAGE = "concepts"
"""The stage that factorises the activations of the concept layers."""

CONCEPT_MAPS_STAGE = "concept maps"
"""The stage that computes the concept maps of each concept's strongest probe images."""

ATTRIBUTION_PROGRAMS = 10
"""Compilation of the attribution stage's programs, in units of one gradient program's (measured
on a ResNet-18 at 64x64: 27 s against 3 s)."""

VISUALISATION_PROGRAMS = 3
"""Compilation of a feature-visualisation stage (its init, step and finish programs), in units of
one gradient program's."""

ESTIMATE_MARGIN = 0.85
"""Share of the time left that a sampled plan's estimate may fill: a profile's wall time is a
promise, and on a 2-core CPU the estimates came out up to 15 % under the time taken (ResNet-18,
quick profile: 164 s estimated, 192 s taken; standard: 536 s, 610 s, where the shallowest
feature-visualisation stages ran at a third of the measured visualisation speed)."""

WRITE_SECONDS = 2.0
"""Rough seconds to render and write the report folder after the last stage."""

FIGURE_SECONDS = 0.01
"""Rough seconds to draw and encode one image figure (numpy tiles and PNG), for the estimate."""

IMPUTATION_FLOPS = 200
"""Cost of ROAD's imputation per input element and per unit of (height + width), in FLOPs at the
model's speed. It takes at most 2 (H + W) conjugate-gradient iterations of about 30 FLOPs per
element (eight neighbour taps and the vector updates), but a loop of small stencil operations
runs at about a third of a convolution's speed per FLOP: 200 matches the ROAD stages measured on
the demo (32x32, 0.72 ms per imputed image at 32 per call on 2 CPU cores, half a forward pass)
and on a ResNet-18 at 64x64, where 60 estimated them 1.4-1.6x low."""

CHART_SECONDS = 0.2
"""Rough seconds to draw one matplotlib chart (two per layer, statistics and filter norms, and an
evidence heatmap per visualised layer) in one process; charts are drawn in one process per core.
Measured on 2 cores: the ResNet-18's 51 layers took 23.6 s in one process, 14.6 s in two."""


@dataclass(frozen=True)
class Workload:
    """How much a build computes: the counts a profile's time budget can reduce."""

    probe_images: int
    shown_images: int  # images whose activation maps are drawn
    attribution_images: int
    sanity_images: int
    sanity_stages: int
    vis_filters: dict[str, int]  # visualised filters per conv layer
    classes: int  # class visualisations


def attribution_passes(settings: Any, cam_channels: int, windows: int) -> tuple[int, int]:
    """(gradient passes, forward passes) of every attribution method for one example."""
    a = settings.attribution
    gradient = 4 + a.smoothgrad_samples + a.ig_steps  # shared, guided, deconvnet, LRP, samples, path points
    forward = cam_channels + windows
    return gradient, forward


def concept_flops(graph: Graph, max_concepts: int, probe_images: int) -> tuple[float, float, int]:
    """(FLOPs of fitting every concept layer's factorisations, FLOPs per probe image of
    projecting its activations on the concepts and weighing their evidence, concept layers)."""
    from reportgen.analyses import concepts

    names = concepts.concept_layers(graph.layers) if max_concepts else []
    rows = probe_images * concepts.samples_per_image(probe_images)
    fit = project = 0.0
    for name in names:
        h, w, channels = graph.layer(name).output_shape
        k = min(max_concepts, channels)
        # every k up to the cap; both updates multiply the rows by a factor twice
        fit += k * concepts.FIT_ITERATIONS * 8 * rows * channels * k
        project += h * w * (6 * channels * k + 2 * concepts.PROJECT_ITERATIONS * k * k)
    return fit, project, len(names)


def stage_plans(
    settings: Any, graph: Graph, cost: ModelCost, passes: Budget, throughput: Throughput, work: Workload
) -> list[StagePlan]:
    """Every stage's batching, FLOPs, time and memory for `work`."""
    from reportgen.analyses import faithfulness
    from reportgen.analyses.catalogue import METHODS
    from reportgen.analyses.occlusion import window_masks
    from reportgen.analyses.road import FRACTIONS

    devices = jax.device_count()
    h, w = graph.input_shape[:2]
    windows = len(window_masks(h, w, settings.attribution.occlusion_window, settings.attribution.occlusion_stride))
    cam_channels = graph.layer(graph.cam_layer).output_shape[-1]
    grad_passes, fwd_passes = attribution_passes(settings, cam_channels, windows)
    f = cost.forward_flops
    a = settings.attribution
    maps = len(METHODS) + len(faithfulness.BASELINES)
    counts = faithfulness.step_counts(a.faithfulness_steps, h * w)
    distinct, _ = faithfulness.distinct_points(*faithfulness.curve_points(counts, maps), h * w)
    curve_points = len(distinct) + a.infidelity_samples + 1
    road_points = 2 * maps * len(FRACTIONS)
    road_flops = road_points * (f + IMPUTATION_FLOPS * (h + w) * h * w * graph.input_shape[2])
    grad_bytes = int(GRADIENT_MEMORY * cost.activation_bytes)
    fwd_bytes = int(FORWARD_MEMORY * cost.activation_bytes)
    compile_seconds = throughput.compile_seconds

    def stage(
        name: str,
        chunk: int,
        inner: int,
        forward: float,
        gradient: float,
        nbytes: int,
        programs: int = 1,
        gradient_rate: float = throughput.gradient,
        vis_steps: int = 0,
    ) -> StagePlan:
        """A stage of `forward` FLOPs of forward passes, `gradient` FLOPs of gradient passes and
        `vis_steps` visualisation steps of one image."""
        seconds = forward / throughput.forward + gradient / gradient_rate + programs * compile_seconds
        seconds += vis_steps * throughput.vis_step_seconds
        return StagePlan(name, chunk, inner, forward + gradient, seconds, nbytes)

    forward_chunk = spread(passes.forward, work.probe_images, passes.workers, devices)
    path_points = settings.layers.conductance_steps + 1  # gradient passes per probe image (1 without a path)
    evidence_chunk = spread(max(1, passes.gradient // path_points), work.probe_images, passes.workers, devices)
    inner = max(settings.attribution.smoothgrad_samples, 2)
    # the attribution stage batches as for the sanity images, whose runs then reuse its programs
    sized_for = work.sanity_images or work.attribution_images
    a_chunk, a_inner = split(passes.gradient, sized_for, inner)
    f_chunk, f_inner = split(passes.forward, work.attribution_images, curve_points)
    r_chunk, r_inner = split(passes.forward, work.attribution_images, road_points)
    explained = work.attribution_images
    # cumulative, independent, the other class, perturbed inputs
    checked = (2 * work.sanity_stages + 1 + a.sensitivity_samples) * work.sanity_images

    (low, low_rate), (high, high_rate) = sorted(
        [(passes.visualisation_at(cost), throughput.visualisation), (passes.gradient, throughput.gradient)]
    )

    def gradient_rate(batch: int) -> float:
        """Gradient speed at `batch` passes per call. It was measured at the visualisation batch
        and at the (larger) gradient batch; in between it is taken as geometric in the batch, and
        beyond them as the nearer measurement. A stage over fewer images than the gradient batch
        runs its one-pass methods (the shared pass, guided backprop, deconvnet) at that smaller
        batch: a ResNet-18's one-image sanity runs took 1.7 times an estimate at the larger
        batch's speed. Its groups of filters ran at 52 GFLOP/s two per call, between the 40
        measured at one and the 70 at four."""
        if batch <= low:
            return low_rate
        if batch >= high:
            return high_rate
        return low_rate * (high_rate / low_rate) ** (math.log(batch / low) / math.log(high / low))

    fit_flops, project_flops, concept_layers = concept_flops(graph, settings.layers.concepts, work.probe_images)
    concept_images = min(work.probe_images, concept_layers * settings.layers.concepts * settings.layers.top_patches)
    stages = [
        stage("forward pass", forward_chunk, 0, work.probe_images * f, 0, forward_chunk * fwd_bytes),
        stage("activation maps", forward_chunk, 0, work.shown_images * f, 0, forward_chunk * fwd_bytes),
        stage(CONCEPT_STAGE, 0, 0, fit_flops, 0, 0, programs=1 if fit_flops else 0),
        stage(
            EVIDENCE_STAGE,
            evidence_chunk,
            0,
            0,
            work.probe_images * (2 * f * path_points + project_flops),
            evidence_chunk * path_points * grad_bytes,
            gradient_rate=gradient_rate(min(work.probe_images, passes.gradient)),
        ),
        stage(CONCEPT_MAPS_STAGE, forward_chunk, 0, concept_images * f, 0, forward_chunk * fwd_bytes),
        stage(
            "attribution maps",
            a_chunk,
            a_inner,
            explained * f * fwd_passes,
            explained * 2 * f * grad_passes,
            a_chunk * a_inner * grad_bytes,
            ATTRIBUTION_PROGRAMS,
            gradient_rate(min(sized_for, passes.gradient)),
        ),
        stage("faithfulness curves", f_chunk, f_inner, explained * curve_points * f, 0, f_chunk * f_inner * fwd_bytes),
        stage("ROAD curves", r_chunk, r_inner, explained * road_flops, 0, r_chunk * r_inner * fwd_bytes),
        stage(
            "sanity check",
            a_chunk,
            a_inner,
            checked * f * fwd_passes,
            checked * 2 * f * grad_passes,
            a_chunk * a_inner * grad_bytes,
            0,
            gradient_rate(min(work.sanity_images, passes.gradient)),
        ),
    ]
    vis = settings.visualisation
    per_filter = vis.images_per_filter
    flops_per_filter = vis.steps * per_filter * 2
    per_flop = flops_per_filter / throughput.visualisation
    vis_compile = VISUALISATION_PROGRAMS * compile_seconds
    for layers in vis_groups(work.vis_filters, cost.layer_flops, per_flop, vis_compile):
        deepest = layers[-1]
        filters = sum(work.vis_filters[layer] for layer in layers)
        chunk = spread(passes.visualisation_at(cost, deepest) // per_filter, filters, passes.workers, devices)
        flops = filters * flops_per_filter * cost.layer_flops[deepest]
        nbytes = chunk * per_filter * int(GRADIENT_MEMORY * cost.layer_bytes[deepest])
        steps = filters * vis.steps * per_filter
        plan = stage(
            vis_stage_name(layers),
            chunk,
            0,
            0,
            flops,
            nbytes,
            VISUALISATION_PROGRAMS,
            gradient_rate(chunk * per_filter),
            steps,
        )
        stages.append(dataclasses.replace(plan, layers=layers))
    class_chunk = spread(passes.visualisation_at(cost) // per_filter, work.classes, passes.workers, devices)
    stages.append(
        stage(
            CLASS_STAGE,
            class_chunk,
            0,
            0,
            work.classes * vis.class_steps * per_filter * 2 * f,
            class_chunk * per_filter * grad_bytes,
            VISUALISATION_PROGRAMS,
            gradient_rate(class_chunk * per_filter),
            work.classes * vis.class_steps * per_filter,
        )
    )
    figures = len(graph.layers) * (
        4 + (work.shown_images if settings.layers.activation_images == 0 else settings.layers.activation_images)
    )
    figures += sum(work.vis_filters.values()) + work.classes + 2 * work.attribution_images
    charts = 2 * len(graph.layers) + len(work.vis_filters) + 3
    chart_seconds = charts * CHART_SECONDS / figurestore.workers()
    stages.append(StagePlan("figures", 0, 0, 0.0, figures * FIGURE_SECONDS + chart_seconds, 0))
    return stages


def vis_groups(
    filters: dict[str, int], depth_flops: dict[str, int], seconds_per_flop: float, compile_seconds: float
) -> list[tuple[str, ...]]:
    """Consecutive conv layers (in depth order) whose filters are visualised by one program.

    A group evaluates the model up to its deepest layer for every filter in it: merging layers
    spends FLOPs to save a compilation (seconds each on a CPU, minutes in all on a deep network
    with few filters per layer). A layer joins the group before it when the estimate says that is
    faster.
    """

    def seconds(group: tuple[str, ...]) -> float:
        deepest = max(depth_flops[layer] for layer in group)
        return sum(filters[layer] for layer in group) * deepest * seconds_per_flop + compile_seconds

    groups: list[tuple[str, ...]] = []
    for layer in filters:
        if groups and seconds((*groups[-1], layer)) <= seconds(groups[-1]) + seconds((layer,)):
            groups[-1] = (*groups[-1], layer)
        else:
            groups.append((layer,))
    return groups


def vis_stage_name(layers: tuple[str, ...]) -> str:
    """The stage that visualises these layers' filters."""
    if len(layers) == 1:
        return f"visualise {layers[0]}"
    return f"visualise {layers[0]} to {layers[-1]} ({len(layers)} layers)"


def sampled_counts(work: Workload) -> dict[str, int]:
    """Each of SAMPLED_SETTINGS as `work` computes it (filters: the widest layer's count)."""
    return {
        "visualisation.filters": max(work.vis_filters.values(), default=0),
        "visualisation.classes": work.classes,
        "attribution.sanity_stages": work.sanity_stages,
        "attribution.images": work.attribution_images,
        "attribution.sanity_images": work.sanity_images,
    }


def with_counts(work: Workload, counts: dict[str, int]) -> Workload:
    """`work` computing `counts` (see `sampled_counts`). Filters are capped as
    `visualisation.filters` caps them: every layer keeps up to that many."""
    cap = counts["visualisation.filters"]
    return dataclasses.replace(
        work,
        attribution_images=counts["attribution.images"],
        sanity_images=counts["attribution.sanity_images"],
        sanity_stages=counts["attribution.sanity_stages"],
        vis_filters={layer: min(count, cap) for layer, count in work.vis_filters.items()},
        classes=counts["visualisation.classes"],
    )


def scaled(work: Workload, fraction: float) -> Workload:
    """`work` with every reducible count scaled by `fraction` (at least 1 of each; 2 sanity stages)."""

    def part(count: int, least: int) -> int:
        return min(count, max(least, round(count * fraction)))

    least = {"attribution.sanity_stages": 2}
    return with_counts(work, {key: part(count, least.get(key, 1)) for key, count in sampled_counts(work).items()})


def replaced(settings: Settings, name: str, value: Any) -> Settings:
    """Settings with one stage setting ("table.name") changed."""
    table, field = name.split(".")
    return dataclasses.replace(settings, **{table: dataclasses.replace(getattr(settings, table), **{field: value})})


PRECEDENT_SLACK = 1.5
"""How far over the time left an earlier build's sampling may be estimated and still be repeated.
On a 2-core CPU the planner's speed measurements vary by up to 1.9x between builds of the same
model, and its feature-visualisation estimates of a ResNet-18 ran 1.3-1.9x high, so identical
workloads are estimated differently from build to build."""


@dataclass(frozen=True)
class Precedent:
    """An earlier build's sampling, which this build repeats so that the two reports compare the
    same filters, classes, images and sanity stages."""

    name: str  # how the plan's notes name it, e.g. "release v1.2"
    time_budget: float  # the seconds that build was given
    counts: dict[str, int]  # each of SAMPLED_SETTINGS as that build computed it

    @classmethod
    def of(cls, name: str, settings: dict[str, Any], sampled: tuple[str, ...]) -> Precedent | None:
        """The precedent set by a build with these recorded settings and sampling notes; None
        when it sampled nothing or its record lacks a setting."""
        if not sampled:
            return None
        try:
            counts = {key: int(settings[key.split(".")[0]][key.split(".")[1]]) for key in SAMPLED_SETTINGS}
            limit = settings["time_budget"]
            limit = math.inf if limit is None else float(limit) or PROFILE_SECONDS[settings["profile"]]
        except (KeyError, TypeError, ValueError):
            return None
        return cls(name, limit, counts)

    def applied(self, work: Workload) -> Workload:
        """`work` cut to what the earlier build computed (never more than `work`)."""

        def cap(full: int, key: str) -> int:
            kept = self.counts[key]
            return min(full, kept) if kept > 0 or key == "attribution.sanity_images" else full

        return with_counts(work, {key: cap(count, key) for key, count in sampled_counts(work).items()})


def make_plan(
    settings: Any,
    graph: Graph,
    cost: ModelCost,
    passes: Budget,
    throughput: Throughput,
    work: Workload,
    spent: float = 0.0,
    precedent: Precedent | None = None,
) -> Plan:
    """The plan of a build: the full workload when its estimate fits what is left of the
    profile's time budget (`spent` seconds are gone). Otherwise the `precedent`'s sampling when
    the earlier build had the same time budget and its workload is estimated within
    PRECEDENT_SLACK of the time left, else every reducible count (most active filters, most
    predicted classes, explained images, sanity images and stages) scaled down by one common
    fraction until the estimate fits."""
    limit = settings.time_budget or PROFILE_SECONDS[settings.profile]
    left = limit - spent - WRITE_SECONDS  # loading and planning are done; writing comes after

    def total(candidate: Workload) -> float:
        return sum(s.estimated_seconds for s in stage_plans(settings, graph, cost, passes, throughput, candidate))

    sampled: list[str] = []
    if (needed := total(work)) > ESTIMATE_MARGIN * left:
        full = work
        same_budget = precedent is not None and math.isclose(precedent.time_budget, limit, rel_tol=1e-5)
        follows = precedent if same_budget else None  # budgets are recorded to 6 significant digits
        reason = (
            f"why: everything was estimated at {needed:,.0f} s, and the {settings.profile} profile's {limit:,.0f} s"
            f" leave {ESTIMATE_MARGIN * left:,.0f} s for it (after loading, planning, writing and a"
            f" {1 - ESTIMATE_MARGIN:.0%} margin)"
        )
        repeated = follows.applied(full) if follows is not None else None
        repeated_seconds = total(repeated) if repeated is not None else math.inf
        if follows is not None and repeated is not None and repeated_seconds <= PRECEDENT_SLACK * left:
            work = repeated
            reason += f"; {follows.name} sampled the same, and this build repeats it so that the two compare"
        else:
            low, high = 0.0, 1.0
            for _ in range(20):
                middle = (low + high) / 2
                low, high = (middle, high) if total(scaled(full, middle)) <= ESTIMATE_MARGIN * left else (low, middle)
            work = scaled(full, low)
            if follows is not None:
                reason += (
                    f"; {follows.name}'s sampling was estimated at {repeated_seconds:,.0f} s, over"
                    f" {PRECEDENT_SLACK:g} times the {left:,.0f} s left, so this build sampled anew"
                )
        settings, notes = sampled_settings(settings, full, work)
        if notes:
            sampled = [*notes, reason, "time_budget = inf (or --profile full) computes everything"]
    stages = stage_plans(settings, graph, cost, passes, throughput, work)
    return Plan(passes, throughput, limit, tuple(stages), settings, tuple(sampled))


def sampled_settings(settings: Settings, full: Workload, work: Workload) -> tuple[Settings, list[str]]:
    """`settings` lowered to compute `work` instead of `full`, and a note for each setting lowered."""
    kept, whole = sampled_counts(work), sampled_counts(full)
    filters = kept["visualisation.filters"]
    most_active = "the most active filter" if filters == 1 else f"the {filters} most active filters"
    notes = {
        "visualisation.filters": (
            f"feature visualisation: {most_active} of each layer (of up to {whole['visualisation.filters']})"
        ),
        "visualisation.classes": (
            f"class visualisation: the {kept['visualisation.classes']} of {whole['visualisation.classes']}"
            " classes predicted most often"
        ),
        "attribution.sanity_stages": (
            f"sanity check: {kept['attribution.sanity_stages']} stages of consecutive layers"
            f" instead of {whole['attribution.sanity_stages']}"
        ),
        "attribution.images": (
            f"attribution: {kept['attribution.images']} of {whole['attribution.images']} images explained"
        ),
        "attribution.sanity_images": (
            f"sanity check: {kept['attribution.sanity_images']} of {whole['attribution.sanity_images']} images"
        ),
    }
    lowered = [key for key in SAMPLED_SETTINGS if kept[key] < whole[key]]
    for key in lowered:
        settings = replaced(settings, key, kept[key])
    return settings, [notes[key] for key in lowered]
