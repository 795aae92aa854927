"""`--redact`: a report to attach where its readers should not learn the machine it was built on.
Absolute paths keep only their last part (`/home/ana/models/model.py` becomes `…/model.py`), and
the user and host names are replaced wherever they appear."""

from __future__ import annotations

import getpass
import re
import socket
from typing import Any

from reportgen import serial
from reportgen.results import Report

ABSOLUTE_PATH = re.compile(r"(?<![\w./-])(?:[A-Za-z]:\\|/)[^\s:'\",;]*")
"""A POSIX or Windows absolute path, not preceded by a name character (so relative paths such
as `stop/1.png` and fractions stay)."""


def _names() -> dict[str, str]:
    names = {}
    for value, label in ((_safe(getpass.getuser), "[user]"), (_safe(socket.gethostname), "[host]")):
        if value and len(value) >= 3:
            names[value] = label
    return names


def _safe(get: Any) -> str:
    try:
        return str(get())
    except Exception:  # no user database entry, no network name: nothing to hide
        return ""


def text(value: str, names: dict[str, str] | None = None) -> str:
    """One string with its absolute paths shortened and the user and host names replaced."""

    def last_part(match: re.Match[str]) -> str:
        parts = [p for p in re.split(r"[/\\]", match.group(0)) if p]
        return "…/" + parts[-1] if parts else "…/"

    value = ABSOLUTE_PATH.sub(last_part, value)
    for name, label in (names if names is not None else _names()).items():
        value = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", label, value)
    return value


def redact(report: Report) -> Report:
    """The same report with every string redacted."""
    names = _names()

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return text(value, names)
        if isinstance(value, dict):
            return {walk(k): walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return serial.from_json(Report, walk(serial.to_json(report)))
