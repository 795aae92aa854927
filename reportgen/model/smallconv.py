"""Convolutions whose kernel spans their input, evaluated as one matrix product.

XLA's CPU convolution slows down by one to two orders of magnitude when the kernel window is
at least as wide as the input or output it slides over: a 3x3, 512-channel convolution on a
2x2 map (the last stage of a ResNet-18 at 64x64) runs at about 1 GFLOP/s forward, 100 times
slower than the same layer as the matrix product below, and its input gradient is slower
still (measured with jax 0.10 on 2 cores). There every output sees nearly every input, so the
patch matrix ("im2col", Chellapilla, Puri & Simard 2006, "High Performance Convolutional Neural
Networks for Document Processing") is barely larger than the input and one dense product does
the work; its gradient is again a product. The result equals `lax.conv_general_dilated`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def spans_input(params: dict[str, Any], lhs_shape: Sequence[int], rhs_shape: Sequence[int]) -> bool:
    """Whether a `conv_general_dilated` with these parameters and operand shapes has a kernel
    window at least as wide as its input or its output along some spatial axis (and is a plain
    convolution: no input dilation, no groups, no mixed-precision output)."""
    if (
        any(d != 1 for d in params["lhs_dilation"])
        or params["feature_group_count"] != 1
        or params["batch_group_count"] != 1
        or params.get("preferred_element_type") is not None
    ):
        return False
    lhs_spec, rhs_spec, _ = params["dimension_numbers"]
    for axis, (lhs_dim, rhs_dim) in enumerate(zip(lhs_spec[2:], rhs_spec[2:], strict=True)):
        window = (rhs_shape[rhs_dim] - 1) * params["rhs_dilation"][axis] + 1
        low, high = params["padding"][axis]
        padded = lhs_shape[lhs_dim] + low + high
        output = (padded - window) // params["window_strides"][axis] + 1
        if window >= min(lhs_shape[lhs_dim], output):
            return True
    return False


def conv_as_matmul(lhs: jax.Array, rhs: jax.Array, **params: Any) -> jax.Array:
    """`lax.conv_general_dilated(lhs, rhs, **params)` as patches times the flattened kernel;
    for the convolutions `spans_input` accepts."""
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    strides, dilation = params["window_strides"], params["rhs_dilation"]
    x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))  # (N, spatial..., C)
    w = jnp.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))  # (spatial..., C, O)
    pads = [(0, 0, 0), *[(low, high, 0) for low, high in params["padding"]], (0, 0, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), pads)
    kernel = w.shape[:-2]
    out = [(x.shape[1 + d] - (k - 1) * dilation[d] - 1) // strides[d] + 1 for d, k in enumerate(kernel)]
    taps = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        start = [o * r for o, r in zip(offset, dilation, strict=True)]
        limit = [s + (n - 1) * st + 1 for s, n, st in zip(start, out, strides, strict=True)]
        taps.append(lax.slice(x, [0, *start, 0], [x.shape[0], *limit, x.shape[-1]], [1, *strides, 1]))
    patches = jnp.concatenate(taps, axis=-1)  # (N, out..., taps * C), tap-major like w
    y = jnp.matmul(patches, w.reshape(-1, w.shape[-1]), precision=params.get("precision"))
    return jnp.transpose(y, [int(d) for d in np.argsort([out_spec[0], *out_spec[2:], out_spec[1]])])
