"""Benchmarks: reportgen's engine against the model's own Flax apply, measured in the same run,
and the time of every attribution method on the demo probe set.

    make bench          # prints a table; ratios are engine / direct (1.0 = no overhead)

Times are the median of repeated runs after compilation; the machine is noisy, so compare the
ratios, not the absolute numbers, between machines.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "traffic_signs"
sys.path.insert(0, str(DEMO))

from model import TrafficSignNet  # noqa: E402

from reportgen import api  # noqa: E402
from reportgen.data import read_classes, read_probe  # noqa: E402
from reportgen.model.engine import Engine  # noqa: E402


def median_time(fn: Callable[[], Any], repeats: int = 5) -> float:
    """Median seconds of fn() after one warm-up call (compilation)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Run every benchmark and print the results."""
    model = api.load_model(f"{DEMO / 'model.py'}:TrafficSignNet", DEMO / "checkpoint")
    probe = read_probe(DEMO / "probe", model.input_shape, read_classes(DEMO / "classes.txt", 43))
    images = jnp.asarray(probe.images)
    engine = Engine(model.graph)
    module = TrafficSignNet()
    print(f"devices: {jax.devices()}  probe images: {len(images)}")

    direct_forward = jax.jit(lambda v, x: module.apply(v, x))
    engine_forward = jax.jit(jax.vmap(engine.logits, in_axes=(None, 0)))
    t_direct = median_time(lambda: direct_forward(model.variables, images))
    t_engine = median_time(lambda: engine_forward(model.variables, images))
    print(
        f"forward, {len(images)} images: direct {t_direct * 1e3:.1f} ms,"
        f" engine {t_engine * 1e3:.1f} ms, ratio {t_engine / t_direct:.2f}"
    )

    def direct_saliency(v: Any, x: jax.Array) -> jax.Array:
        def one(xi: jax.Array) -> jax.Array:
            logits = module.apply(v, xi[None])[0]
            return logits[jnp.argmax(jax.lax.stop_gradient(logits))]

        return jax.vmap(jax.grad(one))(x)

    def engine_saliency(v: Any, x: jax.Array) -> jax.Array:
        from reportgen.analyses.saliency import saliency

        return jax.vmap(lambda xi: saliency(engine, v, xi, jnp.int32(-1)))(x)

    direct_grad = jax.jit(direct_saliency)
    engine_grad = jax.jit(engine_saliency)
    np.testing.assert_allclose(
        direct_grad(model.variables, images), engine_grad(model.variables, images), rtol=1e-3, atol=1e-5
    )
    t_direct = median_time(lambda: direct_grad(model.variables, images))
    t_engine = median_time(lambda: engine_grad(model.variables, images))
    print(
        f"saliency, {len(images)} images: direct {t_direct * 1e3:.1f} ms,"
        f" engine {t_engine * 1e3:.1f} ms, ratio {t_engine / t_direct:.2f}"
    )

    x = probe.images
    methods: dict[str, Callable[[], Any]] = {
        "saliency": lambda: api.saliency(model, x),
        "guided_backprop": lambda: api.guided_backprop(model, x),
        "deconvnet": lambda: api.deconvnet(model, x),
        "gradient_x_input": lambda: api.gradient_x_input(model, x),
        "smoothgrad (16 samples)": lambda: api.smoothgrad(model, x, samples=16),
        "integrated_gradients (32 steps)": lambda: api.integrated_gradients(model, x, steps=32),
        "grad_cam (conv6)": lambda: api.grad_cam(model, x, layer="conv6"),
        "grad_cam_pp (conv6)": lambda: api.grad_cam_pp(model, x, layer="conv6"),
        "layer_cam (conv6)": lambda: api.layer_cam(model, x, layer="conv6"),
        "score_cam (conv6, 128 channels)": lambda: api.score_cam(model, x, layer="conv6"),
        "occlusion (8 px window, stride 4)": lambda: api.occlusion(model, x),
    }
    print(f"\nattribution on all {len(x)} probe images (median of 3 after compilation):")
    for name, run in methods.items():
        print(f"  {name:36s} {median_time(run, repeats=3):7.2f} s")


if __name__ == "__main__":
    main()
