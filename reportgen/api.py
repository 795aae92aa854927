"""Python API for notebooks and scripts: the same machinery as `reportgen build`.

    from reportgen import api
    model = api.load_model("models/traffic_signs/model.py:TrafficSignNet", "models/traffic_signs/checkpoint")
    model.layers                                   # layer names in forward order
    maps = api.activations(model, images, ["conv1"])["conv1"]   # (N, 32, 32, 32)

Images are float arrays (N, H, W, C) in the model's input space; results are numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reportgen.analyses import cam, featurevis
from reportgen.analyses import occlusion as occlusion_methods
from reportgen.analyses import saliency as saliency_methods
from reportgen.compute import example_keys, map_examples
from reportgen.config import Preprocess
from reportgen.model.engine import Engine
from reportgen.model.graph import Layer
from reportgen.model.load import LoadedModel, load_model
from reportgen.visualisation import preprocessing

__all__ = [
    "LoadedModel",
    "activation_maximization",
    "activations",
    "class_visualization",
    "deconvnet",
    "grad_cam",
    "grad_cam_pp",
    "gradient_x_input",
    "guided_backprop",
    "integrated_gradients",
    "layer_cam",
    "layer_info",
    "load_model",
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


def predict(model: LoadedModel, images: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Logits (N, K)."""
    engine = Engine(model.graph)
    return map_examples(engine.logits, (model.variables,), _images(model, images), chunk=chunk)


def activations(
    model: LoadedModel, images: np.ndarray, layers: Sequence[str] | None = None, chunk: int = 32
) -> dict[str, np.ndarray]:
    """Outputs of the named layers (all by default), each (N, *layer.output_shape)."""
    engine = Engine(model.graph)
    names = list(layers) if layers is not None else model.layers
    for name in names:
        model.graph.layer(name)

    def per_example(variables: Any, image: jax.Array) -> dict[str, jax.Array]:
        return engine.layer_outputs(variables, image, names)

    return map_examples(per_example, (model.variables,), _images(model, images), chunk=chunk)


# ---------------------------------------------------------------------------------------------
# Attribution: raw, signed, un-normalised maps for (N, H, W, C) images in the model's input space.

_FUNCTIONS: dict[tuple[Any, ...], tuple[Any, Callable[..., Any]]] = {}


def _batched(
    model: LoadedModel, name: str, options: tuple[Any, ...], build: Callable[[Engine], Callable[..., Any]]
) -> Callable[..., Any]:
    """The per-example function for a method and options, built once per model so it compiles once."""
    key = (id(model.graph), name, options)
    cached = _FUNCTIONS.get(key)
    if cached is None or cached[0] is not model.graph:
        cached = (model.graph, build(Engine(model.graph)))
        _FUNCTIONS[key] = cached
    return cached[1]


def _targets(images: np.ndarray, targets: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if targets is None:
        return np.full(len(images), -1, np.int32)
    array = np.asarray(targets, np.int32).reshape(-1)
    if array.shape != (len(images),):
        raise ValueError(f"targets must have one class index per image ({len(images)}); got shape {array.shape}")
    return array


def _gradient_method(model: LoadedModel, images: np.ndarray, targets: Any, name: str, chunk: int) -> np.ndarray:
    method = getattr(saliency_methods, name)
    fn = _batched(model, name, (), lambda e: lambda v, x, t: method(e, v, x, t))
    x = _images(model, images)
    return map_examples(fn, (model.variables,), x, _targets(x, targets), chunk=chunk)


def saliency(model: LoadedModel, images: np.ndarray, targets: Any = None, *, chunk: int = 32) -> np.ndarray:
    """d logit[target] / d image, (N, H, W, C). Simonyan, Vedaldi & Zisserman 2013,
    "Deep Inside Convolutional Networks". Targets default to the predicted class."""
    return _gradient_method(model, images, targets, "saliency", chunk)


def guided_backprop(model: LoadedModel, images: np.ndarray, targets: Any = None, *, chunk: int = 32) -> np.ndarray:
    """Guided backpropagation, (N, H, W, C). Springenberg et al. 2014, "Striving for Simplicity"."""
    return _gradient_method(model, images, targets, "guided_backprop", chunk)


def deconvnet(model: LoadedModel, images: np.ndarray, targets: Any = None, *, chunk: int = 32) -> np.ndarray:
    """Deconvnet backward pass, (N, H, W, C). Zeiler & Fergus 2014, "Visualizing and Understanding CNNs"."""
    return _gradient_method(model, images, targets, "deconvnet", chunk)


def gradient_x_input(model: LoadedModel, images: np.ndarray, targets: Any = None, *, chunk: int = 32) -> np.ndarray:
    """Gradient times input, (N, H, W, C). Shrikumar et al. 2016, "Not Just a Black Box"."""
    return _gradient_method(model, images, targets, "gradient_x_input", chunk)


def smoothgrad(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    samples: int = 16,
    noise: float = 0.15,
    seed: int = 0,
    chunk: int = 32,
) -> np.ndarray:
    """Mean gradient over `samples` copies with Gaussian noise of std `noise` × the image's value
    range, (N, H, W, C). Smilkov et al. 2017, "SmoothGrad"."""

    def build(e: Engine) -> Callable[..., Any]:
        return lambda v, x, t, k: saliency_methods.smoothgrad(e, v, x, t, jax.random.wrap_key_data(k), samples, noise)

    fn = _batched(model, "smoothgrad", (samples, noise), build)
    x = _images(model, images)
    return map_examples(
        fn, (model.variables,), x, _targets(x, targets), example_keys(seed, np.arange(len(x))), chunk=chunk
    )


def integrated_gradients(
    model: LoadedModel,
    images: np.ndarray,
    targets: Any = None,
    *,
    steps: int = 32,
    baseline: str | np.ndarray = "black",
    rule: str = "gauss-legendre",
    seed: int = 0,
    chunk: int = 32,
) -> np.ndarray:
    """Integrated Gradients, (N, H, W, C); sums to f(x) − f(baseline) for the target logit.

    `baseline`: "black" (zeros in the model's input space), "blurred", "uniform" (noise over the
    image's value range) or an array of the input shape. `rule`: "riemann", "trapezoid" or
    "gauss-legendre". Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks".
    """
    x = _images(model, images)
    if isinstance(baseline, str):
        kind = baseline
        zeros = np.zeros(model.input_shape, np.float32)

        def build(e: Engine) -> Callable[..., Any]:
            def per_example(v: Any, image: jax.Array, t: jax.Array, k: jax.Array) -> jax.Array:
                start = saliency_methods.baseline(image, kind, jax.random.wrap_key_data(k), zeros)
                return saliency_methods.integrated_gradients(e, v, image, t, start, steps, rule)

            return per_example

        fn = _batched(model, "integrated_gradients", (steps, kind, rule), build)
        return map_examples(
            fn, (model.variables,), x, _targets(x, targets), example_keys(seed, np.arange(len(x))), chunk=chunk
        )
    starts = np.broadcast_to(np.asarray(baseline, np.float32), x.shape)

    def build_array(e: Engine) -> Callable[..., Any]:
        return lambda v, image, t, start: saliency_methods.integrated_gradients(e, v, image, t, start, steps, rule)

    fn = _batched(model, "integrated_gradients_array", (steps, rule), build_array)
    return map_examples(fn, (model.variables,), x, _targets(x, targets), np.ascontiguousarray(starts), chunk=chunk)


def _cam_method(
    model: LoadedModel, images: np.ndarray, targets: Any, layer: str, upsample: bool, chunk: int, name: str
) -> np.ndarray:
    if not model.graph.layer(layer).is_spatial:
        raise ValueError(f"layer {layer!r} has no spatial output; CAMs need a conv or pooling layer")
    x = _images(model, images)
    zeros = np.zeros(model.input_shape, np.float32)

    def build(e: Engine) -> Callable[..., Any]:
        def per_example(v: Any, image: jax.Array, t: jax.Array) -> jax.Array:
            shared = saliency_methods.shared_pass(e, v, image, t, [layer])
            activation, gradient = shared.activations[layer], shared.gradients[layer]
            if name == "score_cam":
                result = cam.score_cam(e, v, image, shared.target, activation, jnp.asarray(zeros))
            else:
                result = getattr(cam, name)(activation, gradient)
            return cam.upsample(result, image.shape[:2]) if upsample else result

        return per_example

    fn = _batched(model, name, (layer, upsample), build)
    return map_examples(fn, (model.variables,), x, _targets(x, targets), chunk=chunk)


def grad_cam(
    model: LoadedModel, images: np.ndarray, targets: Any = None, *, layer: str, upsample: bool = False, chunk: int = 32
) -> np.ndarray:
    """Grad-CAM at `layer`, (N, h, w), or (N, H, W) with `upsample=True`.
    Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks"."""
    return _cam_method(model, images, targets, layer, upsample, chunk, "grad_cam")


def grad_cam_pp(
    model: LoadedModel, images: np.ndarray, targets: Any = None, *, layer: str, upsample: bool = False, chunk: int = 32
) -> np.ndarray:
    """Grad-CAM++ at `layer`. Chattopadhyay et al. 2018, "Grad-CAM++"."""
    return _cam_method(model, images, targets, layer, upsample, chunk, "grad_cam_pp")


def layer_cam(
    model: LoadedModel, images: np.ndarray, targets: Any = None, *, layer: str, upsample: bool = False, chunk: int = 32
) -> np.ndarray:
    """Layer-CAM at `layer`. Jiang et al. 2021, "LayerCAM"."""
    return _cam_method(model, images, targets, layer, upsample, chunk, "layer_cam")


def score_cam(
    model: LoadedModel, images: np.ndarray, targets: Any = None, *, layer: str, upsample: bool = False, chunk: int = 8
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
    chunk: int = 8,
) -> np.ndarray:
    """Drop in the target class probability when a `window`-pixel square is set to `baseline`,
    averaged over the windows covering each pixel, (N, H, W). Zeiler & Fergus 2014."""
    x = _images(model, images)
    masks = occlusion_methods.window_masks(model.input_shape[0], model.input_shape[1], window, stride)

    def build(e: Engine) -> Callable[..., Any]:
        return lambda v, image, t: occlusion_methods.occlusion(e, v, image, t, masks, jnp.float32(baseline))

    fn = _batched(model, "occlusion", (window, stride, baseline), build)
    return map_examples(fn, (model.variables,), x, _targets(x, targets), chunk=chunk)


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
    objective: featurevis.Objective,
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
    fn = featurevis.visualise(objective, config, model.input_shape, basis, pre)
    keys = example_keys(seed, indices)
    images, _ = map_examples(fn, (model.variables,), indices, keys, chunk=chunk)
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
    objective = featurevis.layer_objective(Engine(model.graph), layer, objective_kind)
    return _visualise(model, objective, indices, {"steps": steps, "objective": objective_kind, **options}, chunk)


def class_visualization(
    model: LoadedModel, classes: Sequence[int] | None = None, steps: int = 128, *, chunk: int = 32, **options: Any
) -> np.ndarray:
    """Images that maximise each class logit (before softmax), (K, H, W, C) in [0, 1].
    Simonyan, Vedaldi & Zisserman 2013; options as for `activation_maximization`."""
    indices = np.arange(model.graph.num_classes, dtype=np.int32) if classes is None else np.asarray(classes, np.int32)
    objective = featurevis.logit_objective(Engine(model.graph))
    options = {"learning_rate": 0.05, "tv_weight": 0.05, **options}
    return _visualise(model, objective, indices, {"steps": steps, **options}, chunk)
