"""Progress of a build on stderr, and what each stage measured (wall time, peak memory).

In a terminal, a rich progress bar per stage with the time left; elsewhere (CI logs, a piped
`make report`), one line per finished stage with its time and an estimate for the rest, from the
plan's estimates scaled by how the finished stages compared with theirs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

import jax
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bars


class PeakMemory:
    """Samples memory in a background thread between `start` and `stop`: the process's resident
    set on CPU, the device's bytes in use where JAX reports them (GPU, TPU)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._device: Any = None  # found at the first reading: making one starts no backend
        self._process: Any = None

    def current(self) -> int:
        """Bytes in use now."""
        if self._device is None:
            self._device, self._process = jax.local_devices()[0], _this_process()
        stats = self._device.memory_stats() if self._device.platform != "cpu" else None
        if stats and "bytes_in_use" in stats:
            return int(stats["bytes_in_use"])
        return int(self._process.memory_info().rss) if self._process is not None else 0

    def start(self) -> None:
        """Begin sampling, from the current value."""
        self.peak = self.current()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """End sampling; the peak bytes seen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.current())
        return self.peak

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.current())


def _this_process() -> Any:
    """This process as psutil sees it (made once: sampled every few milliseconds), or None."""
    try:
        import psutil

        return psutil.Process()
    except ImportError:  # pragma: no cover - psutil comes with orbax
        return None


COMPILE_EVENTS = "/jax/core/compile/"
"""Prefix of JAX's monitoring events that time tracing, lowering and compiling."""

_compiling: list[Progress] = []  # the Progress whose stage is running, if any
_listening = False


def _on_event(event: str, duration_secs: float, **_: str | int) -> None:
    if event.startswith(COMPILE_EVENTS) and _compiling:
        _compiling[-1].add_compile_time(duration_secs)


class Progress:
    """Stages of a build: bars or log lines, and the time, peak memory and compile time of each."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = self.stream.isatty() and not quiet
        self.timings: dict[str, float] = {}
        self.peaks: dict[str, int] = {}
        self.compile_seconds: dict[str, float] = {}
        self._estimates: dict[str, float] = {}
        self._stage = ""
        self._start = 0.0
        self._memory = PeakMemory()
        self._lock = threading.Lock()
        self._bars: Bars | None = None
        self._task: int | None = None

    def expect(self, estimates: Mapping[str, float]) -> None:
        """The plan's estimated seconds of the stages still to come, in order."""
        self._estimates = dict(estimates)

    def start(self, stage: str, total: int = 0) -> None:
        """Begin a stage of `total` units (0: no bar)."""
        global _listening
        if not _listening:
            jax.monitoring.register_event_duration_secs_listener(_on_event)
            _listening = True
        self._stage, self._start = stage, time.perf_counter()
        self.compile_seconds[stage] = 0.0
        _compiling[:] = [self]
        self._memory.start()
        if self.interactive:
            self._bars = Bars(
                TextColumn("{task.description:<26}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bars.start()
            self._task = self._bars.add_task(stage, total=total or None)

    def advance(self, units: int = 1) -> None:
        """Count finished units of the current stage."""
        if self._bars is not None and self._task is not None:
            self._bars.advance(self._task, units)  # type: ignore[arg-type]

    def finish(self) -> None:
        """End the current stage and record its time and peak memory."""
        elapsed = time.perf_counter() - self._start
        self.timings[self._stage] = elapsed
        self.peaks[self._stage] = self._memory.stop()
        _compiling.clear()
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        if self.quiet:
            return
        line = f"{self._stage:<26} {elapsed:7.1f} s"
        rest = self.remaining()
        if rest is not None:
            line += f"   about {_duration(rest)} left"
        self.stream.write(line + "\n")
        self.stream.flush()

    def add_compile_time(self, seconds: float) -> None:
        """Count time JAX spent tracing and compiling during the current stage."""
        with self._lock:
            self.compile_seconds[self._stage] = self.compile_seconds.get(self._stage, 0.0) + seconds

    def remaining(self) -> float | None:
        """Estimated seconds of the stages not yet run, corrected by how the finished ones compared
        with their estimates; None without estimates."""
        left = [s for s in self._estimates if s not in self.timings]
        if not left:
            return None
        done = [s for s in self._estimates if s in self.timings]
        estimated = sum(self._estimates[s] for s in done)
        # Until the finished stages add up to a few seconds their ratio is mostly noise.
        ratio = sum(self.timings[s] for s in done) / estimated if estimated > 5.0 else 1.0
        return ratio * sum(self._estimates[s] for s in left)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
