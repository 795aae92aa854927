"""The one place for jit, vmap, chunking, sharding and the compilation cache.

Analyses are written for one example. `map_examples` vmaps them, jit-compiles them once per
function and chunk size, and feeds fixed-size chunks (the last one padded) so shapes never change
and nothing recompiles. The example axis is sharded over a mesh of the host's devices, so the same
code runs on one CPU, several GPUs or a TPU slice; in a multi-host run (`reportgen.distributed`)
the hosts take turns at the chunks.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reportgen import distributed

AXIS = "examples"

RANDOM_BITS = jax.threefry_partitionable(False)
"""The context every compiled analysis runs in. Analyses draw per-example random numbers inside
`vmap` (SmoothGrad noise, feature-visualisation transforms); with JAX's partitionable threefry,
XLA takes about 20 times longer to compile such batched draws (10 s against 0.5 s for one
(8, 3264) batch on a CPU). Keys are derived per example, so the numbers do not depend on the
batching or the devices either way."""


def cache_dir() -> Path:
    """The persistent compilation cache folder under the user's cache directory."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reportgen" / "jax"


def enable_compilation_cache() -> None:
    """Let a second run reuse compiled programs from disk, the quick ones too: on 2 CPU cores
    loading one of the demo's small programs took about 15 ms where compiling it took 70, and the
    demo's warm build spent 10 s instead of 12 s compiling."""
    jax.config.update("jax_compilation_cache_dir", str(cache_dir()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@functools.cache
def _mesh() -> Mesh:
    """This host's devices: in a multi-host run each host computes whole chunks of its own. A CPU
    host there counts as one device (XLA's virtual CPU devices would exchange data over gloo,
    whose collectives between the devices of one process were seen to deadlock)."""
    devices = jax.local_devices()
    if distributed.processes() > 1 and devices[0].platform == "cpu":
        devices = devices[:1]
    return Mesh(np.asarray(devices), (AXIS,))


def chunk_for(requested: int) -> int:
    """The chunk size actually used: a multiple of the number of devices sharing a chunk."""
    devices = _mesh().devices.size
    return max(devices, -(-requested // devices) * devices)


_COMPILED: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Callable[..., Any]]] = weakref.WeakKeyDictionary()


class _CompileOnce:
    """A jitted function whose first call with each argument signature holds a lock, so chunks
    dispatched from several threads at once never compile the same program twice. A call returns
    once its program is compiled and dispatched, so the lock is not held while it computes."""

    def __init__(self, jitted: Callable[..., Any]) -> None:
        self.jitted = jitted
        self._ready: set[Any] = set()
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        signature = (tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves))
        if signature in self._ready:
            return self.jitted(*args)
        with self._lock:
            out = self.jitted(*args)
            self._ready.add(signature)
        return out


def _compiled(fn: Callable[..., Any], shared: int, per_example: int, inner: int = 0) -> Callable[..., Any]:
    """jit(vmap(fn)) over the per-example arguments, kept as long as `fn` itself lives (a bound
    method: as long as its object), so a dropped model's functions and programs go with it."""
    owner, method = (fn.__self__, fn.__func__) if inspect.ismethod(fn) else (fn, None)
    by_layout = _COMPILED.setdefault(owner, {})
    layout = (method, shared, per_example, inner)
    if layout not in by_layout:
        in_axes = (None,) * shared + (0,) * per_example + (None,) * inner
        ref = weakref.WeakMethod(fn) if method is not None else weakref.ref(fn)  # not keeping `fn` alive

        def batched(*args: Any) -> Any:
            target = ref()
            assert target is not None
            return jax.vmap(target, in_axes=in_axes)(*args)

        by_layout[layout] = _CompileOnce(jax.jit(batched))
    return by_layout[layout]


def workers() -> int:
    """Chunks computed at once, each from its own host thread. On a CPU, XLA runs a small batched
    program mostly on one core, so two chunks in flight use two cores (measured on the demo:
    feature visualisation of one layer 31 s with one thread, 17 s with two). Accelerators take
    one stream; JAX's asynchronous dispatch already keeps them busy."""
    if jax.devices()[0].platform != "cpu":
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def chunk_size(n: int, chunk: int) -> int:
    """The size of every chunk of n examples taken `chunk` at a time."""
    return chunk_for(min(chunk, 1 << max(0, n - 1).bit_length()))


def _chunks(
    n: int,
    chunk: int,
    compute_chunk: Callable[[int, int], Any],
    progress: Callable[[int], None] | None,
) -> Any:
    """`compute_chunk(start, size)` for every chunk of n examples (fixed size, the last one padded
    by the callee; a chunk larger than n shrinks to the power of two above n, so a handful of
    examples is not padded to a budget of thousands), on `workers()` threads at once; results
    trimmed to the valid rows and written into arrays of n rows allocated once (no list of pieces
    to concatenate: peak memory holds the result once). The size depends on n only through that
    power of two, so new data of another length rarely needs a new program."""
    size = chunk_size(n, chunk)
    if distributed.processes() > 1:  # process 0's size: hosts with more free memory would pick larger
        return _chunks_across_hosts(n, distributed.agree(size), compute_chunk, progress)
    lock = threading.Lock()
    stacked: list[Any] = []  # the result, allocated when the first chunk arrives

    def one(start: int) -> None:
        with RANDOM_BITS:
            out = compute_chunk(start, size)
        valid = min(size, n - start)
        piece = jax.tree.map(lambda x: np.asarray(x)[:valid], out)
        with lock:
            if not stacked:
                stacked.append(jax.tree.map(lambda x: np.empty((n, *x.shape[1:]), x.dtype), piece))
            jax.tree.map(lambda whole, part: np.copyto(whole[start : start + valid], part), stacked[0], piece)
            if progress is not None:
                progress(valid)

    starts = range(0, n, size)
    if len(starts) > 1 and workers() > 1:
        with ThreadPoolExecutor(workers()) as pool:
            list(pool.map(one, starts))
    else:
        for start in starts:
            one(start)
    return stacked[0]


def _chunks_across_hosts(
    n: int, size: int, compute_chunk: Callable[[int, int], Any], progress: Callable[[int], None] | None
) -> Any:
    """`_chunks` in a multi-host run: chunk c is computed by process c mod P on its own devices,
    every process computing the same number of chunks (its last repeated as padding), and one
    all-gather puts them in order on every process. Programs hold no cross-host collectives, whose
    latency over a data-centre network (or gloo on CPUs) would be paid at every step."""
    hosts, me = distributed.processes(), distributed.index()
    count = -(-n // size)
    rounds = -(-count // hosts)
    mine = [min(c, count - 1) for c in range(me, rounds * hosts, hosts)]
    lock = threading.Lock()

    def one(c: int) -> Any:
        with RANDOM_BITS:
            out = jax.tree.map(np.asarray, compute_chunk(c * size, size))
        if progress is not None:
            with lock:
                progress(min(size, n - c * size))
        return out

    with ThreadPoolExecutor(workers()) as pool:
        pieces = list(pool.map(one, mine))
    local = jax.tree.map(lambda *xs: np.stack(xs), *pieces)  # (rounds, size, ...)
    gathered = distributed.gather(local)  # (hosts, rounds, size, ...): chunk c at [c % P, c // P]
    if progress is not None:
        progress(n - sum(min(size, n - c * size) for c in mine))  # the other hosts' rows
    return jax.tree.map(lambda g: np.swapaxes(g, 0, 1).reshape(-1, *g.shape[3:])[:n], gathered)


def _shard(arrays: tuple[np.ndarray, ...], start: int, size: int) -> list[jax.Array]:
    """Rows start .. start + size of each array (the last rows repeated as padding), sharded over
    the example axis of the device mesh."""
    batch = [_pad(a[start : start + size], size) for a in arrays]
    return jax.device_put(batch, NamedSharding(_mesh(), PartitionSpec(AXIS)))


def _replicate(values: Any) -> Any:
    return jax.device_put(values, NamedSharding(_mesh(), PartitionSpec()))


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
    run = _compiled(fn, len(shared), len(per_example))
    shared = _replicate(shared)
    return _chunks(
        len(per_example[0]), chunk, lambda start, size: run(*shared, *_shard(per_example, start, size)), progress
    )


def map_inner(
    fn: Callable[..., Any],
    shared: tuple[Any, ...],
    per_example: tuple[np.ndarray, ...],
    inner: tuple[np.ndarray, ...],
    *,
    chunk: int,
    inner_batch: int,
    combine: str,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """`fn(*shared, *example_slices, *inner_slices)` for every example and every slice of an inner
    axis (IG steps, SmoothGrad samples, occlusion windows, Score-CAM channels, faithfulness
    steps), `chunk` examples × `inner_batch` inner points at a time.

    `inner` arrays share their first axis, the inner axis; `fn` receives `inner_batch` of them at
    once (the last slice zero-padded). With `combine="sum"` the slices' results are added (padding
    must contribute zero, e.g. through a zero weight); with `"concat"` they are joined on axis 1
    and the padding dropped. With fewer chunks than worker streams, a chunk's slices run on the
    streams side by side. The slices are driven from the host rather than by `lax.map`: XLA's
    CPU backend runs convolution gradients inside a loop body about four times slower than the
    same program outside one, and one fixed slice shape still compiles once.
    """
    if combine not in ("sum", "concat"):
        raise ValueError(f"combine must be 'sum' or 'concat', not {combine!r}")
    m = len(inner[0])
    step = max(1, min(inner_batch, m))
    run = _compiled(fn, len(shared), len(per_example), len(inner))
    shared = _replicate(shared)
    slices = [_replicate([_pad_zeros(a[j : j + step], step) for a in inner]) for j in range(0, m, step)]

    n = len(per_example[0])
    streams = workers()
    spare_streams = len(slices) > 1 and -(-n // chunk_size(n, chunk)) < streams

    def compute_chunk(start: int, size: int) -> Any:
        batch = _shard(per_example, start, size)
        if spare_streams:  # fewer chunks than streams (one image checked, say): run its slices side by side
            with ThreadPoolExecutor(streams) as pool:
                outs = list(pool.map(lambda part: jax.block_until_ready(run(*shared, *batch, *part)), slices))
        else:
            outs = [run(*shared, *batch, *inner_slice) for inner_slice in slices]
        if combine == "sum":
            return functools.reduce(lambda a, b: jax.tree.map(jax.numpy.add, a, b), outs)
        return jax.tree.map(lambda *xs: jax.numpy.concatenate(xs, axis=1)[:, :m], *outs)

    return _chunks(len(per_example[0]), chunk, compute_chunk, progress)


def iterate_examples(
    init: Callable[..., Any],
    step: Callable[..., Any],
    steps: int,
    finish: Callable[..., Any],
    shared: tuple[Any, ...],
    *per_example: np.ndarray,
    chunk: int,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """An iterative per-example computation (an optimisation), `chunk` examples at a time:
    `state = init(*shared, *example)`, then `state = step(*shared, state, *example, t)` for
    t = 0 … steps − 1, and finally `finish(*shared, state, *example)`, stacked on axis 0 as numpy
    arrays.

    The steps are driven from the host, one compiled call each, not by `lax.scan`: XLA's CPU
    backend runs convolution gradients inside a loop body about four times slower.
    """
    first = _compiled(init, len(shared), len(per_example))
    advance = _compiled(step, len(shared), 1 + len(per_example), 1)
    last = _compiled(finish, len(shared), 1 + len(per_example))
    shared = _replicate(shared)

    def compute_chunk(start: int, size: int) -> Any:
        batch = _shard(per_example, start, size)
        state = first(*shared, *batch)
        for t in range(steps):
            state = advance(*shared, state, *batch, np.int32(t))
        return last(*shared, state, *batch)

    return _chunks(len(per_example[0]), chunk, compute_chunk, progress)


def _pad_zeros(array: np.ndarray, size: int) -> np.ndarray:
    missing = size - len(array)
    if missing == 0:
        return array
    return np.concatenate([array, np.zeros((missing, *array.shape[1:]), array.dtype)])


def example_keys(seed: int, indices: np.ndarray, stream: int = 0) -> np.ndarray:
    """Raw PRNG key data, one row per index, derived from the seed alone: the same example (or
    filter) gets the same key whatever else is computed. Raw data batches like any array;
    unwrap it with `jax.random.wrap_key_data`."""
    with RANDOM_BITS:
        base = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), stream))
        return np.asarray(_fold_in_indices(base, np.asarray(indices, np.int32)))


@jax.jit
def _fold_in_indices(base: jax.Array, indices: jax.Array) -> jax.Array:
    """Raw key data of `fold_in(base, i)` for every index i, as one program (traced op by op,
    the same keys took 6 ms for 64 indices, a tenth of a demo saliency call)."""
    key = jax.random.wrap_key_data(base)
    return jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(key, i))(indices))


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    missing = size - len(array)
    if missing == 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])
