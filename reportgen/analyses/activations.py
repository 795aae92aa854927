"""Activation maps and per-filter statistics (Zeiler & Fergus 2014; Quiver's per-layer view).

`channel_statistics` reduces one example's layer output to per-channel numbers; `summarize`
aggregates them over the probe set into mean activation, firing fraction and maximum, and finds
dead filters (zero on every probe image) and rarely firing ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


def channel_statistics(activation: jax.Array) -> dict[str, jax.Array]:
    """Per-channel mean, max, min and flat arg-max position of one example's layer output, and
    whether it is finite. A (H, W, C) map is reduced over its spatial axes; a (C,) vector is its
    own statistics (arg-max 0).
    """
    spatial = tuple(range(activation.ndim - 1))
    channels = activation.shape[-1]
    return {
        "mean": activation.mean(axis=spatial),
        "max": activation.max(axis=spatial),
        "min": activation.min(axis=spatial),
        "argmax": jnp.argmax(activation.reshape(-1, channels), axis=0),
        "finite": jnp.isfinite(activation).all(),
    }


@dataclass(frozen=True)
class LayerStatistics:
    """Per-filter statistics over the probe set."""

    mean: np.ndarray  # (C,) mean activation over images and positions
    max: np.ndarray  # (C,) largest activation on any image
    firing: np.ndarray  # (C,) fraction of probe images on which the filter is ever > 0
    nonnegative: bool  # every output >= 0 (post-ReLU): dead / rare are meaningful
    dead: tuple[int, ...]  # filters that are zero on every probe image
    rare: tuple[int, ...]  # filters firing on fewer than the rare fraction of probe images
    nonfinite_images: int  # probe images on which some output was NaN or infinite


def summarize(stats: dict[str, np.ndarray], rare_fraction: float) -> LayerStatistics:
    """Aggregate `channel_statistics` stacked over N probe images."""
    fired = stats["max"] > 0
    firing = fired.mean(axis=0)
    nonnegative = bool((stats["min"] >= 0).all())
    dead = tuple(int(c) for c in np.flatnonzero(~fired.any(axis=0))) if nonnegative else ()
    rare = tuple(int(c) for c in np.flatnonzero((firing > 0) & (firing < rare_fraction))) if nonnegative else ()
    return LayerStatistics(
        mean=stats["mean"].mean(axis=0),
        max=stats["max"].max(axis=0),
        firing=firing,
        nonnegative=nonnegative,
        dead=dead,
        rare=rare,
        nonfinite_images=int((~stats["finite"]).sum()),
    )
