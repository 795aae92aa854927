"""The figure store: figures drawn on worker threads, embedded into the page as it is written."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

from reportgen import output
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
