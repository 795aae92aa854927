"""Python API for notebooks and scripts: the same machinery as `reportgen build`.

    from reportgen import api
    model = api.load_model("models/traffic_signs/model.py:TrafficSignNet", "models/traffic_signs/checkpoint")
    model.layers                                   # layer names in forward order
    maps = api.activations(model, images, ["conv1"])["conv1"]   # (N, 32, 32, 32)

Images are float arrays (N, H, W, C) in the model's input space; results are numpy arrays.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reportgen import plan
from reportgen.analyses import cam, catalogue, classfilters, featurevis
from reportgen.analyses import concepts as concept_analysis
from reportgen.analyses import methods as method_names
from reportgen.attribution import MethodRunner, Passes
from reportgen.compute import example_keys, map_examples, workers
from reportgen.config import Preprocess
from reportgen.model.engine import Engine
from reportgen.model.graph import Layer
from reportgen.model.load import LoadedModel, load_model
from reportgen.model.lrp import Composite
from reportgen.visualisation import optimise, preprocessing, visualised_layers

__all__ = [
    "LoadedModel",
    "activation_maximization",
    "activations",
    "attribute",
    "class_filters",
    "class_visualization",
    "concepts",
    "deconvnet",
    "eigen_cam",
    "grad_cam",
    "grad_cam_pp",
    "gradient_x_input",
    "guided_backprop",
    "hires_cam",
    "integrated_gradients",
    "layer_cam",
    "layer_info",
    "load_model",
    "lrp",
    "occlusion",
    "predict",
    "saliency",
    "score_cam",
    "smoothgrad",
]


def _images(model: LoadedModel, images: np.ndarray) -> np.ndarray:
    array = np.asarray(images, np.float32)
    if array.ndim != 4 or tuple(array.shape[1:]) != model.input_shape:
        raise ValueError(f"images must have shape (N, {', '.join(map(str, model.input_shape))}); got {array.shape}")
    return array


def layer_info(model: LoadedModel) -> list[Layer]:
    """Every layer with its kind, output shape, parameters, FLOPs and receptive field."""
    return list(model.graph.layers)


def predict(model: LoadedModel, images: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Logits (N, K). `chunk` bounds the examples at once (default: the planner's budget)."""
    engine = _engine(model)
    logits = _cached(model, ("logits",), lambda: lambda variables, image: engine.logits(variables, image))
    return map_examples(logits, (model.variables,), _images(model, images), chunk=_passes(model, chunk).forward)


def activations(
    model: LoadedModel, images: np.ndarray, layers: Sequence[str] | None = None, chunk: int | None = None
) -> dict[str, np.ndarray]:
    """Outputs of the named layers (all by default), each (N, *layer.output_shape); `chunk` bounds
    the examples at once (default: the planner's budget)."""
    engine = _engine(model)
    names = list(layers) if layers is not None else model.layers
    for name in names:
        model.graph.layer(name)

    def build() -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
        return lambda variables, image: engine.layer_outputs(variables, image, names)

    per_example = _cached(model, ("activations", tuple(names)), build)
    return map_examples(per_example, (model.variables,), _images(model, images), chunk=_passes(model, chunk).forward)


def class_filters(
    model: LoadedModel,
    images: np.ndarray,
    targets: Sequence[int] | np.ndarray | None = None,
    layers: Sequence[str] | None = None,
    conductance_steps: int = 0,
    baseline: np.ndarray | None = None,
    chunk: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Which filters decide each class: {layer: {"contribution": (K, C), "weight": (K, C)}} for
    the named layers (default: every spatial conv layer). Row k averages, over the images whose
    target is k (default: the predicted class), each filter's Σ activation × d logit_k /
    d activation ("contribution") and its Grad-CAM channel weight mean d logit_k / d activation
    ("weight"); rows of classes without images are NaN. With `conductance_steps`, also each
    filter's conductance ("conductance") along the straight path from `baseline` (default: zeros)
    to the image, by the trapezoid rule. See `reportgen.analyses.classfilters`."""
    x = _images(model, images)
    names = list(layers) if layers is not None else visualised_layers(model)
    for name in names:
        if not model.graph.layer(name).is_spatial:
            raise ValueError(f"layer {name!r} has no spatial output; class filters need a conv or pooling layer")
    if conductance_steps < 0:
        raise ValueError(f"conductance_steps must not be negative, not {conductance_steps}")
    wanted = _resolved_targets(model, x, targets, chunk)
    engine = _engine(model)
    start = np.zeros(model.input_shape, np.float32) if baseline is None else np.asarray(baseline, np.float32)
    if start.shape != model.input_shape:
        raise ValueError(f"baseline must have shape {model.input_shape}; got {start.shape}")

    def build() -> Callable[..., Any]:
        def per_example(variables: Any, start: jax.Array, image: jax.Array, target: jax.Array) -> Any:
            found = classfilters.image_evidence(engine, variables, image, target, names, start, conductance_steps)
            return found.per_filter(names)

        return per_example

    per_example = _cached(model, ("class_filters", tuple(names), conductance_steps), build)
    passes = _passes(model, chunk).gradient // (conductance_steps + 1)  # gradient passes per image
    per_image = map_examples(per_example, (model.variables, start), x, wanted, chunk=max(1, passes))
    found = classfilters.aggregate(per_image, names, wanted, model.graph.num_classes)
    return {
        layer.layer: {"contribution": layer.contribution, "weight": layer.weight}
        | ({} if layer.conductance is None else {"conductance": layer.conductance})
        for layer in found
    }


def concepts(
    model: LoadedModel,
    images: np.ndarray,
    layer: str,
    targets: Sequence[int] | np.ndarray | None = None,
    max_concepts: int = 8,
    seed: int = 0,
    chunk: int | None = None,
) -> dict[str, np.ndarray]:
    """Concepts of a layer (Deep Feature Factorization), fitted on activation vectors sampled
    from the images' maps, k chosen by reconstruction error up to `max_concepts`:
    "basis" (k, C) unit-length mixes of filters, the most present first; "errors" (max_concepts,)
    the relative reconstruction error for 1 … max_concepts concepts; "maps" (N, h, w, k) each
    concept's coefficient at every position; "contribution" (N, k) each concept's evidence
    Σ coefficient × (concept · d logit / d activation) for the image's target class (default: the
    predicted class). See `reportgen.analyses.concepts`."""
    x = _images(model, images)
    spec = model.graph.layer(layer)
    if not spec.is_spatial:
        raise ValueError(f"layer {layer!r} has no spatial output; concepts need a conv, norm or merge layer")
    if max_concepts < 1:
        raise ValueError(f"max_concepts must be at least 1, not {max_concepts}")
    wanted = _resolved_targets(model, x, targets, chunk)
    engine = _engine(model)
    picks = np.random.default_rng(seed).random((len(x), concept_analysis.samples_per_image(len(x)))).astype(np.float32)

    def sample(variables: Any, image: jax.Array, pick: jax.Array) -> jax.Array:
        return concept_analysis.sample_rows(engine.layer_outputs(variables, image, [layer])[layer], pick)

    sampler = _cached(model, ("concept_rows", layer), lambda: sample)
    rows = map_examples(sampler, (model.variables,), x, picks, chunk=_passes(model, chunk).forward)
    if (rows < 0).any():
        raise ValueError(f"layer {layer!r} has negative outputs; concepts need non-negative activations (after a ReLU)")
    found = concept_analysis.factorise(rows.reshape(-1, rows.shape[-1]), max_concepts, seed)
    if not len(found.basis):
        raise ValueError(f"layer {layer!r} is zero on every image; it has no concepts")

    def evidence(variables: Any, basis: Any, inverse: Any, image: jax.Array, target: jax.Array) -> Any:
        found = classfilters.image_evidence(engine, variables, image, target, [layer])
        activation, gradient = found.outputs[layer], found.gradients[layer]
        maps = concept_analysis.project(activation, basis, inverse)
        return maps, concept_analysis.concept_evidence(activation, gradient, basis, inverse)["contribution"]

    per_example = _cached(model, ("concepts", layer), lambda: evidence)
    shared = (model.variables, found.basis, found.inverse)
    maps, contribution = map_examples(per_example, shared, x, wanted, chunk=_passes(model, chunk).gradient)
    return {"basis": found.basis, "errors": found.errors, "maps": maps, "contribution": contribution}


# ---------------------------------------------------------------------------------------------
# Attribution: raw, signed, un-normalised maps for (N, H, W, C) images in the model's input space.

_RUNNERS: weakref.WeakKeyDictionary[LoadedModel, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()
"""Per model: method runners, engines and pass budgets, built once so that a second call with the
same options does not recompile; they go when the model goes."""


def _cached(model: LoadedModel, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    cache = _RUNNERS.setdefault(model, {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _engine(model: LoadedModel) -> Engine:
    return _cached(model, ("engine",), lambda: Engine(model.graph))


def _passes(model: LoadedModel, chunk: int | None) -> Passes:
    """Passes at once: `chunk` of each kind, or the planner's budget for this model and device."""
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {chunk}")
        return Passes(0, forward=chunk, gradient=chunk)

    def default() -> Passes:
        platform, free = plan.free_memory()
        return plan.budget(plan.model_cost(model.graph), 0.0, platform, free, workers())

    return _cached(model, ("passes",), default)


def _targets(model: LoadedModel, images: np.ndarray, targets: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if targets is None:
        return np.full(len(images), -1, np.int32)
    array = np.asarray(targets).reshape(-1)
    if array.shape != (len(images),):
        raise ValueError(f"targets must have one class index per image ({len(images)}); got shape {array.shape}")
    classes = model.graph.num_classes
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= classes:
        raise ValueError(f"targets must be class indices in 0..{classes - 1}; got {array.tolist()[:8]}")
    return array.astype(np.int32)


def _resolved_targets(model: LoadedModel, x: np.ndarray, targets: Any, chunk: int | None) -> np.ndarray:
    """`_targets`, with the predicted class where none was given."""
    wanted = _targets(model, x, targets)
    if (wanted < 0).any():
        wanted = np.where(wanted < 0, predict(model, x, chunk).argmax(axis=-1), wanted).astype(np.int32)
    return wanted


def attribute(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    methods: Sequence[str] = catalogue.METHODS,
    cam_layer: str | None = None,
    cam_layers: Sequence[str] = (),
    layer_cam_methods: Sequence[str] = catalogue.LAYER_CAMS,
    seed: int = 0,
    baselines: np.ndarray | None = None,
    chunk: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Several attribution methods at once, sharing passes: {method: raw output}, plus
    `"layer_cams"`: {layer: {CAM: (N, h, w)}} for every layer of `cam_layers` (the CAMs of
    `layer_cam_methods`: Grad-CAM, Grad-CAM++, Layer-CAM, HiResCAM and EigenCAM by default) and
    for `cam_layer` (the CAMs among `methods`, Grad-CAM too for guided Grad-CAM), from the same
    backward pass. Only the CAMs asked for are computed.

    `cam_layer` (default: the last conv, merge or normalisation output, the feature map before the
    classifier) is where Grad-CAM, Grad-CAM++, Layer-CAM, Score-CAM and guided Grad-CAM are taken;
    their maps are upsampled to the input. Options are the fields of
    `reportgen.analyses.methods.AttributionConfig` (`smoothgrad_samples`, `smoothgrad_noise`,
    `ig_steps`, `ig_baseline`, `ig_rule`, `occlusion_window`, `occlusion_stride`,
    `occlusion_fill`). `baselines` (N, H, W, C) replaces `ig_baseline` with one IG starting
    image per example. `chunk` bounds the passes held at once (default: the planner's budget).
    """
    x = _images(model, images)
    try:
        config = method_names.AttributionConfig(**options)
    except TypeError as e:
        raise ValueError(f"unknown attribution option: {e}") from e
    layer = cam_layer or model.graph.cam_layer
    for name in (layer, *cam_layers):
        if not model.graph.layer(name).is_spatial:
            raise ValueError(f"layer {name!r} has no spatial output; CAMs need a conv or pooling layer")
    unknown = set(layer_cam_methods) - set(catalogue.LAYER_CAMS)
    if unknown:
        raise ValueError(f"layer_cam_methods must be among {', '.join(catalogue.LAYER_CAMS)}; got {sorted(unknown)}")
    key = ("runner", config, layer, tuple(cam_layers), tuple(layer_cam_methods))
    black = np.zeros(model.input_shape, np.float32)
    runner = _cached(
        model,
        key,
        lambda: MethodRunner(_engine(model), config, layer, cam_layers, black, layer_cam_methods=layer_cam_methods),
    )
    keys = example_keys(seed, np.arange(len(x)))
    passes = _passes(model, chunk)
    out = runner.run(model.variables, x, _targets(model, x, targets), keys, passes, list(methods), starts=baselines)
    return {**out.raw, "layer_cams": out.layer_cams}


def _single(model: LoadedModel, images: np.ndarray, targets: Any, method: str, chunk: int | None, **kw: Any) -> Any:
    return attribute(model, images, targets, methods=[method], chunk=chunk, **kw)[method]


def saliency(model: LoadedModel, images: np.ndarray, targets: Any = None, *, chunk: int | None = None) -> np.ndarray:
    """d logit[target] / d image, (N, H, W, C). Simonyan, Vedaldi & Zisserman 2013,
    "Deep Inside Convolutional Networks". Targets default to the predicted class."""
    return _single(model, images, targets, "saliency", chunk)


def guided_backprop(
    model: LoadedModel, images: np.ndarray, targets: Any = None, *, chunk: int | None = None
) -> np.ndarray:
    """Guided backpropagation, (N, H, W, C). Springenberg et al. 2014, "Striving for Simplicity"."""
    return _single(model, images, targets, "guided_backprop", chunk)


def deconvnet(model: LoadedModel, images: np.ndarray, targets: Any = None, *, chunk: int | None = None) -> np.ndarray:
    """Deconvnet backward pass, (N, H, W, C). Zeiler & Fergus 2014, "Visualizing and Understanding CNNs"."""
    return _single(model, images, targets, "deconvnet", chunk)


def gradient_x_input(
    model: LoadedModel, images: np.ndarray, targets: Any = None, *, chunk: int | None = None
) -> np.ndarray:
    """Gradient times input, (N, H, W, C). Shrikumar et al. 2016, "Not Just a Black Box"."""
    return _single(model, images, targets, "gradient_x_input", chunk)


def lrp(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    low: float = 0.0,
    high: float = 1.0,
    gamma: float = 0.25,
    epsilon: float = 1e-6,
    chunk: int | None = None,
) -> np.ndarray:
    """Layer-wise relevance propagation of the target logit, (N, H, W, C): the z^B rule at the
    first layer (inputs bounded by `low` and `high`), the γ rule at the other convolutions and the
    ε rule at dense layers (Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview";
    Bach et al. 2015). With no biases the relevance sums to the logit."""
    x = _images(model, images)
    wanted = _resolved_targets(model, x, targets, chunk)
    engine = _engine(model)
    composite = Composite(gamma, epsilon)

    def build() -> Callable[..., Any]:
        return lambda variables, lo, hi, image, target: engine.lrp(variables, image, target, lo, hi, composite)

    per_example = _cached(model, ("lrp", composite), build)
    bounds = (np.full(model.input_shape, low, np.float32), np.full(model.input_shape, high, np.float32))
    return map_examples(per_example, (model.variables, *bounds), x, wanted, chunk=_passes(model, chunk).gradient)


def smoothgrad(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    samples: int = 16,
    noise: float = 0.15,
    seed: int = 0,
    chunk: int | None = None,
) -> np.ndarray:
    """Mean gradient over `samples` copies with Gaussian noise of std `noise` × the image's value
    range, (N, H, W, C). Smilkov et al. 2017, "SmoothGrad"."""
    options = {"smoothgrad_samples": samples, "smoothgrad_noise": noise, "seed": seed}
    return _single(model, images, targets, "smoothgrad", chunk, **options)


def integrated_gradients(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    steps: int = 32,
    baseline: str | np.ndarray = "black",
    rule: str = "gauss-legendre",
    seed: int = 0,
    chunk: int | None = None,
) -> np.ndarray:
    """Integrated Gradients, (N, H, W, C); sums to f(x) − f(baseline) for the target logit.

    `baseline`: "black" (zeros in the model's input space), "blurred", "uniform" (noise over the
    image's value range) or an array of the input shape (or one per image). `rule`: "riemann",
    "trapezoid" or "gauss-legendre". Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for
    Deep Networks".
    """
    x = _images(model, images)
    if isinstance(baseline, str):
        options = {"ig_steps": steps, "ig_baseline": baseline, "ig_rule": rule, "seed": seed}
        return _single(model, x, targets, "integrated_gradients", chunk, **options)
    starts = np.ascontiguousarray(np.broadcast_to(np.asarray(baseline, np.float32), x.shape))
    options = {"ig_steps": steps, "ig_rule": rule, "baselines": starts}
    return _single(model, x, targets, "integrated_gradients", chunk, **options)


def _cam_method(
    model: LoadedModel, images: np.ndarray, targets: Any, layer: str, upsample: bool, chunk: int | None, name: str
) -> np.ndarray:
    out = attribute(model, images, targets, methods=[name], cam_layer=layer, chunk=chunk)
    return out[name] if upsample else out["layer_cams"][layer][name]


def grad_cam(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    layer: str | Sequence[str],
    upsample: bool = False,
    chunk: int | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """Grad-CAM at `layer`, (N, h, w), or (N, H, W) with `upsample=True`; with a sequence of layers,
    {layer: map} for all of them from one shared backward pass.
    Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks"."""
    if isinstance(layer, str):
        return _cam_method(model, images, targets, layer, upsample, chunk, "grad_cam")
    layers = list(layer)
    out = attribute(
        model, images, targets, methods=[], cam_layer=layers[-1], cam_layers=layers, layer_cam_methods=["grad_cam"],
        chunk=chunk,
    )  # fmt: skip
    size = model.input_shape[:2]
    maps = {name: out["layer_cams"][name]["grad_cam"] for name in layers}
    return {name: _upsampled(m, size) for name, m in maps.items()} if upsample else maps


def _upsampled(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    return np.asarray(jax.vmap(lambda m: cam.upsample(m, size))(jnp.asarray(maps)))


def grad_cam_pp(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    layer: str,
    upsample: bool = False,
    chunk: int | None = None,
) -> np.ndarray:
    """Grad-CAM++ at `layer`. Chattopadhyay et al. 2018, "Grad-CAM++"."""
    return _cam_method(model, images, targets, layer, upsample, chunk, "grad_cam_pp")


def layer_cam(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    layer: str,
    upsample: bool = False,
    chunk: int | None = None,
) -> np.ndarray:
    """Layer-CAM at `layer`. Jiang et al. 2021, "LayerCAM"."""
    return _cam_method(model, images, targets, layer, upsample, chunk, "layer_cam")


def hires_cam(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    layer: str,
    upsample: bool = False,
    chunk: int | None = None,
) -> np.ndarray:
    """HiResCAM at `layer`: ReLU(Σ_k G_k ⊙ A_k). Draelos & Carin 2020, "Use HiResCAM instead of
    Grad-CAM for faithful explanations of convolutional neural networks"."""
    return _cam_method(model, images, targets, layer, upsample, chunk, "hires_cam")


def eigen_cam(
    model: LoadedModel,
    images: np.ndarray,
    *,
    layer: str,
    upsample: bool = False,
    chunk: int | None = None,
) -> np.ndarray:
    """EigenCAM at `layer`: the activation's first principal component over positions; it reads
    no class. Muhammad & Yeasin 2020, "Eigen-CAM"."""
    return _cam_method(model, images, None, layer, upsample, chunk, "eigen_cam")


def score_cam(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    layer: str,
    upsample: bool = False,
    chunk: int | None = None,
) -> np.ndarray:
    """Score-CAM at `layer` (one forward pass per channel; masks blend towards zeros).
    Wang et al. 2020, "Score-CAM"."""
    return _cam_method(model, images, targets, layer, upsample, chunk, "score_cam")


def occlusion(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    window: int = 8,
    stride: int = 4,
    baseline: float = 0.0,
    chunk: int | None = None,
) -> np.ndarray:
    """Drop in the target class probability when a `window`-pixel square is set to `baseline`,
    averaged over the windows covering each pixel, (N, H, W). Zeiler & Fergus 2014."""
    options = {"occlusion_window": window, "occlusion_stride": stride, "occlusion_fill": float(baseline)}
    return _single(model, images, targets, "occlusion", chunk, **options)


# ---------------------------------------------------------------------------------------------
# Feature visualisation: images in display space [0, 1].


def _vis_config(options: dict[str, Any]) -> tuple[featurevis.VisConfig, int, np.ndarray | None, Preprocess]:
    seed = int(options.pop("seed", 0))
    basis_images = options.pop("basis_images", None)
    preprocess = options.pop("preprocess", Preprocess())
    parameterisation = options.get("parameterisation", "fourier")
    options.setdefault("decorrelate", parameterisation == "fourier" and basis_images is not None)
    try:
        config = featurevis.VisConfig(**options)
    except TypeError as e:
        raise ValueError(f"unknown visualisation option: {e}") from e
    return config, seed, basis_images, preprocess


def _visualise(
    model: LoadedModel,
    target: str,
    objective: Callable[[], featurevis.Objective],
    indices: np.ndarray,
    options: dict[str, Any],
    chunk: int,
) -> np.ndarray:
    config, seed, basis_images, preprocess = _vis_config(dict(options))
    channels = model.input_shape[-1]
    basis = (
        featurevis.colour_basis(np.asarray(basis_images, np.float32))
        if basis_images is not None
        else np.eye(channels, dtype=np.float32)
    )
    pre = preprocessing(preprocess, channels)
    key = ("visualise", target, config, basis.tobytes(), preprocess)
    vis = _cached(model, key, lambda: featurevis.visualise(objective(), config, model.input_shape, basis, pre))
    keys = example_keys(seed, indices)
    images, _ = optimise(vis, model.variables, indices, keys, chunk)
    return images[:, 0] if config.images_per_filter == 1 else images


def activation_maximization(
    model: LoadedModel,
    layer: str,
    filters: Sequence[int] | None = None,
    steps: int = 64,
    *,
    chunk: int = 32,
    **options: Any,
) -> np.ndarray:
    """Images that maximise each filter of a conv `layer`, (F, H, W, C) in [0, 1] ((F, B, H, W, C)
    with `images_per_filter=B`), vmapped across filters, the forward pass stopped at `layer`.

    Options (see `featurevis.VisConfig`): `learning_rate`, `parameterisation` ("fourier" or
    "pixels"), `objective` ("channel_mean" or "centre"), `jitter`, `scale`, `rotation_deg`,
    `tv_weight`, `l2_weight`, `blur_weight`, `images_per_filter`, `diversity_weight`, `seed`,
    `basis_images` (images whose colour statistics decorrelate the Fourier parameterisation) and
    `preprocess` (a `reportgen.config.Preprocess` from display to model space).
    Erhan et al. 2009; Olah, Mordvintsev & Schubert 2017, "Feature Visualization".
    """
    info = model.graph.layer(layer)
    if not info.is_spatial:
        raise ValueError(f"layer {layer!r} is not a convolution or pooling layer")
    indices = np.arange(info.output_shape[-1], dtype=np.int32) if filters is None else np.asarray(filters, np.int32)
    objective_kind = options.pop("objective", "channel_mean")

    def objective() -> featurevis.Objective:
        return featurevis.layer_objective(_engine(model), layer, objective_kind)

    options = {"steps": steps, "objective": objective_kind, **options}
    return _visualise(model, f"layer {layer}", objective, indices, options, chunk)


def class_visualization(
    model: LoadedModel, classes: Sequence[int] | None = None, steps: int = 128, *, chunk: int = 32, **options: Any
) -> np.ndarray:
    """Images that maximise each class logit (before softmax), (K, H, W, C) in [0, 1].
    Simonyan, Vedaldi & Zisserman 2013; options as for `activation_maximization`."""
    indices = np.arange(model.graph.num_classes, dtype=np.int32) if classes is None else np.asarray(classes, np.int32)

    def objective() -> featurevis.Objective:
        return featurevis.logit_objective(_engine(model))

    options = {"learning_rate": 0.05, "tv_weight": 0.05, **options}
    return _visualise(model, "classes", objective, indices, {"steps": steps, **options}, chunk)
