"""The figure store: figures drawn on worker threads and charts in worker processes, embedded into
the page as it is written."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from reportgen import figures, output
from reportgen.figurestore import FigureStore


def drawn_on_a_worker(data: bytes, threads: list[str]) -> bytes:
    threads.append(threading.current_thread().name)
    return data


def test_embedded_figures_become_data_uris_as_the_page_is_written(tmp_path: Path) -> None:
    threads: list[str] = []
    with FigureStore(external=False) as store:
        chart = store.add("chart.png", b"\x89PNG chart", "a chart")
        drawn = store.add("maps.png", lambda: drawn_on_a_worker(b"\x89PNG maps", threads), "maps", "caption")
        again = store.view("maps.png", "maps again")
        files = store.files()
    assert files == {"chart.png": b"\x89PNG chart", "maps.png": b"\x89PNG maps"}
    assert threads and threads[0] != threading.main_thread().name
    html = f'<img src="{chart.src}"><p>&lt;text&gt; ü</p><img src="{drawn.src}"><img src="{again.src}">'
    size, chunks = store.page(html)
    output.write_folder(tmp_path / "r", "report", {"report.html": chunks}, 1)
    written = (tmp_path / "r" / "report.html").read_bytes()
    uri = {name: "data:image/png;base64," + base64.b64encode(data).decode() for name, data in files.items()}
    expected = (
        f'<img src="{uri["chart.png"]}"><p>&lt;text&gt; ü</p><img src="{uri["maps.png"]}"><img src="{uri["maps.png"]}">'
    )
    assert written.decode() == expected
    assert size == len(written)


def test_a_page_that_imitates_a_marker_keeps_its_text() -> None:
    with FigureStore(external=False) as store:
        store.add("a.png", b"png", "a")
    for lookalike in ("@figure-0000000000000000@a.png@figure-0000000000000000@", "@a.png@", "figures/a.png"):
        size, chunks = store.page(lookalike)
        assert b"".join(chunks) == lookalike.encode()
        assert size == len(lookalike)


def test_linked_figures_point_into_the_figures_folder() -> None:
    with FigureStore(external=True) as store:
        view = store.add("b.png", lambda: b"png", "b")
    assert view.src == "figures/b.png"
    assert store.page(view.src)[0] == len("figures/b.png")


def test_an_error_while_drawing_reaches_the_build() -> None:
    def broken() -> bytes:
        raise RuntimeError("cannot draw")

    with FigureStore(external=False) as store:
        store.add("c.png", broken, "c")
        with pytest.raises(RuntimeError, match="cannot draw"):
            store.files()


def test_a_figure_name_is_kept_once() -> None:
    with FigureStore(external=False) as store:
        store.add("d.png", b"png", "d")
        with pytest.raises(ValueError, match="duplicate"):
            store.add("d.png", b"png", "d")


def process_id() -> bytes:
    return str(os.getpid()).encode()


def broken_chart() -> bytes:
    raise RuntimeError("cannot draw in a worker process")


def test_charts_are_drawn_in_worker_processes_exactly_as_here() -> None:
    rng = np.random.default_rng(0)
    statistics = (rng.normal(size=64), rng.uniform(size=64), rng.gamma(2.0, size=64))
    with FigureStore(external=False) as store:
        store.chart("statistics.png", partial(figures.statistics_chart, *statistics), "statistics")
        store.chart("pid.png", process_id, "pid")
        with pytest.raises(ValueError, match="duplicate"):
            store.chart("pid.png", process_id, "pid")
        drawn = store.files()
    with FigureStore(external=False) as store:
        store.chart("broken.png", broken_chart, "broken")
        with pytest.raises(RuntimeError, match="cannot draw in a worker process"):
            store.files()
    assert int(drawn["pid.png"]) != os.getpid()
    assert drawn["statistics.png"] == figures.statistics_chart(*statistics)


@pytest.mark.parametrize(("script", "spawns"), [("", False), ('if __name__ == "__main__":\n    pass\n', True)])
def test_charts_stay_in_process_when_a_worker_would_run_the_main_script_again(
    tmp_path: Path, script: str, spawns: bool
) -> None:
    """A spawned process imports the main script again: one that builds a report outside a
    `__main__` guard would build it again in every worker."""
    path = tmp_path / "build_script.py"
    path.write_text(f"from reportgen.figurestore import processes_can_start\nprint(processes_can_start())\n{script}")
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, check=True)
    assert done.stdout == f"{spawns}\n"
