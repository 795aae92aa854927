"""Progress bars per stage on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """One line per stage: a bar while it runs when interactive, then its duration."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = self.stream.isatty() and not quiet
        self.timings: dict[str, float] = {}
        self._stage = ""
        self._total = 0
        self._done = 0
        self._start = 0.0

    def start(self, stage: str, total: int = 0) -> None:
        """Begin a stage of `total` units (0: no bar)."""
        self._stage, self._total, self._done, self._start = stage, total, 0, time.perf_counter()
        self._draw()

    def advance(self, units: int = 1) -> None:
        """Count finished units of the current stage."""
        self._done += units
        self._draw()

    def finish(self) -> None:
        """End the current stage and record its time."""
        elapsed = time.perf_counter() - self._start
        self.timings[self._stage] = elapsed
        if self.interactive:
            self.stream.write(f"\r\033[K{self._stage:<24} done in {elapsed:5.1f} s\n")
            self.stream.flush()

    def _draw(self) -> None:
        if not self.interactive:
            return
        if self._total:
            filled = int(30 * self._done / self._total)
            bar = "#" * filled + "." * (30 - filled)
            text = f"{self._stage:<24} [{bar}] {self._done}/{self._total}"
        else:
            text = f"{self._stage:<24} ..."
        self.stream.write(f"\r\033[K{text}")
        self.stream.flush()
