"""Output folders: refuse to replace what reportgen did not write, and write atomically (into a
temporary sibling folder, then renamed into place), so a failed run never leaves half an output
and never destroys the previous one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from reportgen.errors import UserError


def check_out(out: Path, marker: str, what: str) -> None:
    """Refuse an output folder that exists, is not empty and does not hold `marker` (the file only
    a previous output of the same kind has)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder for the {what}")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise UserError(f"--out {out} exists and is not a reportgen {what} folder; choose an empty or new folder")


def write_folder(out: Path, files: Mapping[str, bytes | str]) -> None:
    """Write `files` (relative path -> content) as the folder `out`, replacing it atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, content in sorted(files.items()):
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            else:
                path.write_bytes(content)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_file(path: Path, content: str) -> None:
    """Replace one text file atomically."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)
