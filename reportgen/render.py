"""One jinja2 environment: view models -> the self-contained report HTML."""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2

from reportgen.views import DiffView, ReportView


def templates_dir() -> Path:
    """The templates folder: inside the installed package, or at the top of a source checkout."""
    packaged = Path(__file__).resolve().parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "templates"


@functools.cache
def environment() -> jinja2.Environment:
    """Autoescaping, strictly undefined, whitespace-trimmed environment."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(view: ReportView) -> str:
    """The report HTML for a view model."""
    return environment().get_template("report.html.j2").render(report=view)


def render_diff(view: DiffView) -> str:
    """The comparison page HTML for a view model."""
    return environment().get_template("diff.html.j2").render(diff=view)
