"""The attribution methods' settings, and how a raw output becomes a 2-D importance map. The
methods themselves are listed in `reportgen.analyses.catalogue`."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from reportgen.analyses.catalogue import SIGNED


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
    infidelity_samples: int = 32
    occlusion_fill: float | None = None  # occluded pixels' value in model space (None: the black image)


def importance(method: str, attribution: jax.Array) -> jax.Array:
    """A 2-D map from a method's raw output: signed maps summed over channels, gradient maps as the
    largest magnitude over channels (Simonyan et al. 2013), CAM and occlusion maps as they are."""
    if attribution.ndim == 2:
        return attribution
    if method in SIGNED:
        return attribution.sum(axis=-1)
    return jnp.abs(attribution).max(axis=-1)
