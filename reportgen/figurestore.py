"""The report's figures: drawn on worker threads (numpy and PIL) or worker processes (matplotlib
charts), kept as PNG bytes by file name, and shown in the page either linked (figures/NAME) or
embedded as data URIs while the page is written.

Embedded figures are not put into the HTML when the sections are built. Their `src` is a marker
holding the figure's name and a per-build nonce (so no user string can imitate one), and
`FigureStore.page` replaces every marker with the figure's data URI chunk by chunk as the file is
written. The full page is never held in memory, and a figure can still be drawing while the
sections around it are laid out.
"""

from __future__ import annotations

import base64
import functools
import multiprocessing
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from reportgen.views import FigureView

DATA_URI = b"data:image/png;base64,"


def workers() -> int:
    """Threads that draw figures: the CPU cores this process may use (numpy and the PNG encoder
    release the GIL for their heavy work)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


MAIN_GUARD = re.compile(r"""__name__\s*==\s*["']__main__["']""")


@functools.cache
def processes_can_start() -> bool:
    """Whether chart worker processes may be spawned. A spawned process imports the main script
    again: harmless under `python -m reportgen`, the `reportgen` command, pytest, interactive
    sessions and notebooks, but a script that builds a report at its top level, outside
    `if __name__ == "__main__":`, would build it again in every worker."""
    if multiprocessing.parent_process() is not None:
        return False  # this is a worker process
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None:
        return True  # nothing to import again
    try:
        return MAIN_GUARD.search(Path(path).read_text(encoding="utf-8", errors="replace")) is not None
    except OSError:
        return False


def _chart_worker() -> None:
    """Set up a chart worker process. Ctrl-C reaches the whole process group: the build stops and
    shuts the workers down, so they ignore it rather than print a traceback each. Should a chart's
    data ever hold a JAX array, unpickling it here must not claim the build's accelerator."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["JAX_PLATFORMS"] = "cpu"


class FigureStore:
    """PNG figures by file name and the views that show them; a context manager that owns the
    drawing threads. A few figures at most wait to be drawn: the caller blocks rather than run
    ahead, so that what the waiting figures hold stays small."""

    def __init__(self, external: bool) -> None:
        self.external = external
        self._figures: dict[str, Future[bytes]] = {}
        self._pool = ThreadPoolExecutor(workers(), thread_name_prefix="figures")
        self._charts: ProcessPoolExecutor | None = None  # started with the first chart
        self._slots = threading.BoundedSemaphore(2 * workers())  # figures queued or drawing at once
        self._marker = f"@figure-{secrets.token_hex(8)}@"

    def __enter__(self) -> FigureStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._charts is not None:
            self._charts.shutdown(wait=True, cancel_futures=True)

    def __contains__(self, name: str) -> bool:
        return name in self._figures

    def add(self, name: str, figure: bytes | Callable[[], bytes], alt: str, caption: str = "") -> FigureView:
        """Keep a figure and return its view: PNG bytes, or a function that draws one with numpy
        and PIL, called on a worker thread."""
        self._check_new(name)
        if isinstance(figure, bytes):
            done: Future[bytes] = Future()
            done.set_result(figure)
            return self._keep(name, done, alt, caption)
        return self._keep(name, self._submit(self._pool, figure), alt, caption)

    def chart(self, name: str, draw: Callable[[], bytes], alt: str, caption: str = "") -> FigureView:
        """Keep a matplotlib chart and return its view. `draw` (a module-level function or a
        `functools.partial` of one, with picklable arguments) runs in a worker process: matplotlib
        holds the GIL while it lays out text and ticks, 0.2-0.5 s a chart, and a report draws two
        for every layer."""
        self._check_new(name)
        if not processes_can_start():
            return self.add(name, draw(), alt, caption)
        if self._charts is None:
            spawn = multiprocessing.get_context("spawn")  # a fork would copy JAX's threads' locks
            self._charts = ProcessPoolExecutor(workers(), mp_context=spawn, initializer=_chart_worker)
        return self._keep(name, self._submit(self._charts, draw), alt, caption)

    def _submit(self, pool: Executor, draw: Callable[[], bytes]) -> Future[bytes]:
        """`draw` run on `pool`, once fewer than the slots' figures are waiting."""
        self._slots.acquire()
        drawing = pool.submit(draw)
        drawing.add_done_callback(lambda _: self._slots.release())
        return drawing

    def _check_new(self, name: str) -> None:
        if name in self._figures:
            raise ValueError(f"duplicate figure name {name}")

    def _keep(self, name: str, figure: Future[bytes], alt: str, caption: str) -> FigureView:
        self._figures[name] = figure
        return self.view(name, alt, caption)

    def view(self, name: str, alt: str, caption: str = "") -> FigureView:
        """A view of a figure already kept, to show it again."""
        if name not in self._figures:
            raise KeyError(name)
        src = f"figures/{name}" if self.external else f"{self._marker}{name}{self._marker}"
        return FigureView(src, alt, caption)

    def files(self) -> dict[str, bytes]:
        """Every figure's PNG bytes by name, once drawn (an error while drawing is raised here)."""
        return {name: figure.result() for name, figure in self._figures.items()}

    def page(self, html: str) -> tuple[int, Iterator[bytes]]:
        """The size in bytes of the page `html` with every figure marker replaced by the figure's data
        URI, and the page's UTF-8 chunks in order."""
        parts = re.split(re.escape(self._marker) + r"([^@]+)" + re.escape(self._marker), html)
        texts = [text.encode() for text in parts[::2]]
        names = parts[1::2]
        size = sum(map(len, texts)) + sum(len(DATA_URI) + 4 * -(-len(self._figures[n].result()) // 3) for n in names)

        def chunks() -> Iterator[bytes]:
            for text, name in zip(texts, [*names, None], strict=True):
                yield text
                if name is not None:
                    yield DATA_URI + base64.b64encode(self._figures[name].result())

        return size, chunks()
