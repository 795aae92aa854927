"""The attribution catalogue: every method for one example, sharing passes where they can.

One forward and one backward pass give saliency, gradient × input and the activation and
gradient of every CAM layer, hence Grad-CAM, Grad-CAM++ and Layer-CAM at all of them; the other
methods need their own passes (a different ReLU rule, noisy copies, a path, masked images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reportgen.analyses import cam, faithfulness, occlusion, saliency
from reportgen.model.engine import Engine

METHODS = (
    "saliency",
    "guided_backprop",
    "deconvnet",
    "gradient_x_input",
    "smoothgrad",
    "integrated_gradients",
    "grad_cam",
    "grad_cam_pp",
    "layer_cam",
    "score_cam",
    "guided_grad_cam",
    "occlusion",
)
LAYER_CAMS = ("grad_cam", "grad_cam_pp", "layer_cam")
"""CAMs drawn at every conv and pooling layer: all three come from the one shared backward pass."""

SIGNED = frozenset({"gradient_x_input", "integrated_gradients", "occlusion"})
"""Methods whose sign means something (evidence for or against the class)."""

TITLES = {
    "saliency": "Saliency",
    "guided_backprop": "Guided backprop",
    "deconvnet": "Deconvnet",
    "gradient_x_input": "Gradient × input",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated Gradients",
    "grad_cam": "Grad-CAM",
    "grad_cam_pp": "Grad-CAM++",
    "layer_cam": "Layer-CAM",
    "score_cam": "Score-CAM",
    "guided_grad_cam": "Guided Grad-CAM",
    "occlusion": "Occlusion",
}


@dataclass(frozen=True)
class AttributionConfig:
    """Settings of every attribution method (static: they shape the compiled program)."""

    smoothgrad_samples: int = 16
    smoothgrad_noise: float = 0.15
    ig_steps: int = 32
    ig_baseline: str = "black"
    ig_rule: str = "gauss-legendre"
    occlusion_window: int = 8
    occlusion_stride: int = 4
    faithfulness_steps: int = 16


def importance(method: str, attribution: jax.Array) -> jax.Array:
    """A 2-D map from a method's raw output: signed maps summed over channels, gradient maps as the
    largest magnitude over channels (Simonyan et al. 2013), CAM and occlusion maps as they are."""
    if attribution.ndim == 2:
        return attribution
    if method in SIGNED:
        return attribution.sum(axis=-1)
    return jnp.abs(attribution).max(axis=-1)


def maps_function(
    engine: Engine,
    config: AttributionConfig,
    cam_layer: str,
    layer_cams: Sequence[str],
    black: np.ndarray,
) -> Callable[[Any, jax.Array, jax.Array, jax.Array], dict[str, Any]]:
    """Per-example function (variables, image, target, key_data) -> every method's 2-D map at input
    resolution (`maps`), the LAYER_CAMS at each of `layer_cams` at its own resolution (`layer_cams`),
    the target used and the logits. Target -1 means the predicted class; `key_data` is
    `jax.random.key_data` of the example's key (plain integers batch like any array)."""
    layers = sorted({cam_layer, *layer_cams}, key=[layer.name for layer in engine.graph.layers].index)
    black_image = jnp.asarray(black)

    def per_example(variables: Any, image: jax.Array, target: jax.Array, key: jax.Array) -> dict[str, Any]:
        size = image.shape[:2]
        masks = occlusion.window_masks(size[0], size[1], config.occlusion_window, config.occlusion_stride)
        shared = saliency.shared_pass(engine, variables, image, target, layers)
        target = shared.target
        activation, gradient = shared.activations[cam_layer], shared.gradients[cam_layer]
        guided = saliency.guided_backprop(engine, variables, image, target)
        ig_key, smooth_key = jax.random.split(jax.random.wrap_key_data(key))
        start = saliency.baseline(image, config.ig_baseline, ig_key, black_image)
        grad_cam_map = cam.upsample(cam.grad_cam(activation, gradient), size)
        raw = {
            "saliency": shared.saliency,
            "guided_backprop": guided,
            "deconvnet": saliency.deconvnet(engine, variables, image, target),
            "gradient_x_input": shared.gradient_x_input,
            "smoothgrad": saliency.smoothgrad(
                engine, variables, image, target, smooth_key, config.smoothgrad_samples, config.smoothgrad_noise
            ),
            "integrated_gradients": saliency.integrated_gradients(
                engine, variables, image, target, start, config.ig_steps, config.ig_rule
            ),
            "grad_cam": grad_cam_map,
            "grad_cam_pp": cam.upsample(cam.grad_cam_pp(activation, gradient), size),
            "layer_cam": cam.upsample(cam.layer_cam(activation, gradient), size),
            "score_cam": cam.upsample(cam.score_cam(engine, variables, image, target, activation, black_image), size),
            "guided_grad_cam": guided * grad_cam_map[..., None],
            "occlusion": occlusion.occlusion(engine, variables, image, target, masks, black_image),
        }
        return {
            "maps": {name: importance(name, value) for name, value in raw.items()},
            "layer_cams": {
                name: {
                    method: getattr(cam, method)(shared.activations[name], shared.gradients[name])
                    for method in LAYER_CAMS
                }
                for name in layer_cams
            },
            "target": target,
            "logits": shared.logits,
        }

    return per_example


def faithfulness_function(
    engine: Engine, steps: int, black: np.ndarray
) -> Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """Per-example function (variables, image, target, maps (M, H, W)) -> deletion and insertion
    curves (M, steps + 1). Deleted pixels turn black; insertion starts from a blurred image."""
    black_image = jnp.asarray(black)

    def per_example(
        variables: Any, image: jax.Array, target: jax.Array, maps: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        start = saliency.blur(image, sigma=max(image.shape[0], image.shape[1]) / 4)
        removed = jnp.broadcast_to(black_image, image.shape)
        return jax.vmap(lambda m: faithfulness.curves(engine, variables, image, target, m, removed, start, steps))(maps)

    return per_example
