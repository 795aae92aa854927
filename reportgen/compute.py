"""The one place for jit, vmap, chunking, sharding and the compilation cache.

Analyses are written for one example. `map_examples` vmaps them, jit-compiles them once per
function and chunk size, and feeds fixed-size chunks (the last one padded) so shapes never change
and nothing recompiles. The example axis is sharded over a mesh of every device, so the same code
runs on one CPU, several GPUs or a TPU slice.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "examples"


def cache_dir() -> Path:
    """The persistent compilation cache folder under the user's cache directory."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reportgen" / "jax"


def enable_compilation_cache() -> None:
    """Let a second run reuse compiled programs from disk."""
    jax.config.update("jax_compilation_cache_dir", str(cache_dir()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@functools.cache
def _mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def chunk_for(requested: int) -> int:
    """The chunk size actually used: a multiple of the device count."""
    devices = len(jax.devices())
    return max(devices, -(-requested // devices) * devices)


@functools.cache
def _compiled(fn: Callable[..., Any], static_args: int) -> Callable[..., Any]:
    in_axes = (None,) * static_args
    return jax.jit(lambda *args: jax.vmap(fn, in_axes=(*in_axes, *(0,) * (len(args) - static_args)))(*args))


def map_examples(
    fn: Callable[..., Any],
    shared: tuple[Any, ...],
    *per_example: np.ndarray,
    chunk: int = 32,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """`fn(*shared, *example_slices)` for every example, as numpy arrays stacked on axis 0.

    `shared` (variables, keys, ...) is broadcast to every example; `per_example` arrays share
    their first axis. Results equal a per-example loop, whatever the chunk size.
    """
    n = len(per_example[0])
    size = chunk_for(chunk)
    run = _compiled(fn, len(shared))
    sharding = NamedSharding(_mesh(), PartitionSpec(AXIS))
    replicated = NamedSharding(_mesh(), PartitionSpec())
    shared = jax.device_put(shared, replicated)
    pieces = []
    for start in range(0, n, size):
        batch = [_pad(a[start : start + size], size) for a in per_example]
        out = run(*shared, *jax.device_put(batch, sharding))
        valid = min(size, n - start)
        pieces.append(jax.tree.map(lambda x, valid=valid: np.asarray(x)[:valid], out))
        if progress is not None:
            progress(valid)
    return jax.tree.map(lambda *xs: np.concatenate(xs), *pieces)


def example_keys(seed: int, indices: np.ndarray, stream: int = 0) -> np.ndarray:
    """Raw PRNG key data, one row per index, derived from the seed alone: the same example (or
    filter) gets the same key whatever else is computed. Raw data batches like any array;
    unwrap it with `jax.random.wrap_key_data`."""
    base = jax.random.fold_in(jax.random.key(seed), stream)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(np.asarray(indices, np.int32))
    return np.asarray(jax.random.key_data(keys))


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    missing = size - len(array)
    if missing == 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])
