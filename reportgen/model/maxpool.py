"""Max pooling as a running maximum over the window's offsets, with a scatter-free gradient.

`lax.reduce_window` with a max differentiates through XLA's select-and-scatter, which on a CPU is
slow: for a ResNet's 3x3, stride-2 pooling of a (16, 32, 32, 64) batch its gradient took about
20 ms, against 6 ms for this module (jax 0.10, 2 cores), and the convolution before it costs
less. Here the pooled value is the running maximum of one strided slice of the padded input per
window offset (row-major), keeping the first offset that reaches it; the gradient goes to that
first maximum of each window, exactly where select-and-scatter sends it, by padding each
offset's share back into place with interior padding (stride - 1): dense elementwise work that
XLA fuses. Only the index of the maximum is kept for the backward pass, not the input.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pairs = tuple[tuple[int, int], ...]


def undilated(params: dict[str, Any]) -> bool:
    """Whether a `reduce_window_max` equation has no base or window dilation (the pools of CNNs)."""
    return all(d == 1 for d in (*params["base_dilation"], *params["window_dilation"]))


def window_max(
    x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: Sequence[Sequence[int]]
) -> jax.Array:
    """`lax.reduce_window(x, lowest, lax.max, window, strides, padding)`, gradient included."""
    pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _window_max(x, tuple(window), tuple(strides), pairs, tuple(x.shape))


def _lowest(dtype: Any) -> Any:
    return -np.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min


def _sizes(shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...], padding: Pairs) -> list[int]:
    """The pooled shape."""
    return [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(shape, window, strides, padding, strict=True)]


def _slices(x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...], padding: Pairs) -> Iterator[jax.Array]:
    """For each window offset in row-major order, the strided slice of the padded input that
    holds that element of every window."""
    padded = lax.pad(x, jnp.asarray(_lowest(x.dtype), x.dtype), [(lo, hi, 0) for lo, hi in padding])
    sizes = _sizes(x.shape, window, strides, padding)
    for offset in itertools.product(*(range(k) for k in window)):
        end = [o + s * (m - 1) + 1 for o, s, m in zip(offset, strides, sizes, strict=True)]
        yield lax.slice(padded, offset, end, strides)


def _first_max(
    x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...], padding: Pairs
) -> tuple[jax.Array, jax.Array]:
    """Each window's maximum and the row-major offset index of its first occurrence."""
    parts = _slices(x, window, strides, padding)
    best = next(parts)
    first = jnp.zeros(best.shape, jnp.int32)
    for k, part in enumerate(parts, start=1):
        higher = part > best
        best = jnp.where(higher, part, best)
        first = jnp.where(higher, k, first)
    return best, first


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _window_max(
    x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...], padding: Pairs, shape: tuple[int, ...]
) -> jax.Array:
    return _first_max(x, window, strides, padding)[0]


def _window_max_fwd(
    x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...], padding: Pairs, shape: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    return _first_max(x, window, strides, padding)


def _window_max_bwd(
    window: tuple[int, ...],
    strides: tuple[int, ...],
    padding: Pairs,
    shape: tuple[int, ...],
    first: jax.Array,
    g: jax.Array,
) -> tuple[jax.Array]:
    padded = [n + lo + hi for n, (lo, hi) in zip(shape, padding, strict=True)]
    zero = jnp.zeros((), g.dtype)
    total = jnp.zeros(padded, g.dtype)
    for k, offset in enumerate(itertools.product(*(range(n) for n in window))):
        share = jnp.where(first == k, g, zero)
        config = [
            (o, p - o - s * (m - 1) - 1, s - 1) for o, p, s, m in zip(offset, padded, strides, g.shape, strict=True)
        ]
        total = total + lax.pad(share, zero, config)
    return (lax.slice(total, [lo for lo, _ in padding], [lo + n for (lo, _), n in zip(padding, shape, strict=True)]),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)
