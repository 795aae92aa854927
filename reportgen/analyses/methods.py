"""The attribution methods: names, titles, which are signed, their settings, and how a raw output
becomes a 2-D importance map. `reportgen.attribution.MethodRunner` computes them, sharing passes."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

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
    occlusion_fill: float | None = None  # occluded pixels' value in model space (None: the black image)


def importance(method: str, attribution: jax.Array) -> jax.Array:
    """A 2-D map from a method's raw output: signed maps summed over channels, gradient maps as the
    largest magnitude over channels (Simonyan et al. 2013), CAM and occlusion maps as they are."""
    if attribution.ndim == 2:
        return attribution
    if method in SIGNED:
        return attribution.sum(axis=-1)
    return jnp.abs(attribution).max(axis=-1)
