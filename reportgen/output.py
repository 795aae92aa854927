"""Output folders: recognise what reportgen wrote, refuse to replace anything else, and write
atomically (into a temporary sibling folder, then renamed into place), so a failed run never
leaves half an output and never destroys the previous one or a file reportgen did not write.

Every output folder holds MARKER: the kind of output and the list of files reportgen wrote. A
folder is replaced only when it holds the marker of the same kind and nothing the marker does
not list.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from reportgen.errors import UserError

MARKER = ".reportgen.json"

Content = bytes | str | Iterator[bytes]
"""A file's content: bytes, text (written as UTF-8), or chunks of bytes written as they come."""


def _written_by_us(folder: Path, kind: str) -> tuple[bool, list[str]]:
    """Whether `folder` holds a `kind` marker, and the files in it the marker does not list."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        listed = set(marker["files"]) if marker.get("kind") == kind else None
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    if listed is None:
        return False, present
    return True, [name for name in present if name != MARKER and name not in listed]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(out: Path) -> None:
    """Remove the temporary folders of runs that were killed before they could."""
    if not out.parent.is_dir():
        return
    for leftover in out.parent.iterdir():
        stem, _, pid = leftover.name.rpartition("-")
        if stem in (f".{out.name}.tmp", f".{out.name}.old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def check_out(out: Path, kind: str) -> None:
    """Before any work: refuse an output folder reportgen may not replace or cannot write to."""
    where = out.resolve()
    if where == Path.cwd().resolve() or where in Path.cwd().resolve().parents:
        raise UserError(
            f"--out {out} is the current folder or holds it; choose a new folder, e.g. --out {kind}s/latest"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder for the {kind}")
    if out.is_dir() and any(out.iterdir()):
        ours, foreign = _written_by_us(out, kind)
        if not ours:
            raise UserError(
                f"--out {out} exists and is not a reportgen {kind} folder (no {MARKER} of a {kind});"
                " choose an empty or new folder"
            )
        if foreign:
            raise UserError(
                f"--out {out} holds files reportgen did not write ({', '.join(foreign[:3])});"
                " move them away or choose another folder"
            )
    _clean_leftovers(out)
    probe = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a writable folder") from e


def write_folder(out: Path, kind: str, files: Mapping[str, Content], schema_version: int) -> None:
    """Write `files` (relative path -> content) and the marker (with the schema version of the
    JSON it holds) as the folder `out`, replacing it atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    marker = json.dumps({"kind": kind, "schema_version": schema_version, "files": sorted(files)}, indent=1) + "\n"
    try:
        tmp.mkdir()
        for name, content in sorted({**files, MARKER: marker}.items()):
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                with path.open("wb") as stream:
                    stream.writelines(content)
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
