"""Several hosts: one `reportgen build` process per host, sharing out the chunks of every stage.

JAX runs a multi-host computation as one process per host (`jax.distributed`). `reportgen.compute`
gives each host whole chunks of examples (or of feature visualisation's filters) to compute on its
own devices; this module holds the rest: starting the runtime, agreeing on decisions that depend
on the clock (the plan), and gathering the hosts' chunks. The first process writes the report.
"""

from __future__ import annotations

import pickle
from typing import Any, TypeVar

import jax
import numpy as np

from reportgen.errors import UserError

T = TypeVar("T")


def start(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-host run: `coordinator` (HOST:PORT of process 0), the number of processes
    and this one's index; any left out are detected from the cluster (Slurm, Open MPI, Cloud TPU,
    Kubernetes) by `jax.distributed.initialize`. CPU hosts exchange data over gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (ValueError, RuntimeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not join the multi-host run: {first_line}") from e


def processes() -> int:
    """The number of processes (hosts) in this run: 1 unless `start` joined a larger one."""
    return jax.process_count()


def index() -> int:
    """This process's index in the run, 0 to `processes()` - 1."""
    return jax.process_index()


def is_first() -> bool:
    """Whether this is process 0, the one that writes the report."""
    return index() == 0


def agree(value: T) -> T:
    """Process 0's `value` on every process (any picklable object), so that decisions taken from
    clocks and free memory, which differ between hosts, are the same everywhere."""
    if processes() == 1:
        return value
    from jax.experimental import multihost_utils

    blob = np.frombuffer(pickle.dumps(value), np.uint8) if is_first() else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int64(blob.size)))
    padded = np.zeros(size, np.uint8)
    padded[: blob.size] = blob
    agreed = np.asarray(multihost_utils.broadcast_one_to_all(padded), np.uint8)
    return pickle.loads(agreed.tobytes())  # bytes from process 0 of this run


def gather(tree: Any) -> Any:
    """Every process's `tree` (numpy arrays of the same shapes everywhere), stacked on a new first
    axis in process order, on every process."""
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree))
