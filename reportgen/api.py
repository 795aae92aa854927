"""Python API for notebooks and scripts: the same machinery as `reportgen build`.

    from reportgen import api
    model = api.load_model("models/traffic_signs/model.py:TrafficSignNet", "models/traffic_signs/checkpoint")
    model.layers                                   # layer names in forward order
    maps = api.activations(model, images, ["conv1"])["conv1"]   # (N, 32, 32, 32)

Images are float arrays (N, H, W, C) in the model's input space; results are numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from reportgen.compute import map_examples
from reportgen.model.engine import Engine
from reportgen.model.graph import Layer
from reportgen.model.load import LoadedModel, load_model

__all__ = ["LoadedModel", "activations", "layer_info", "load_model", "predict"]


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
