"""Gold-file test of the report HTML; `make update-gold` rewrites the gold file after intended changes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import TESTS
from test_report import build

GOLD = TESTS / "gold" / "tiny_report.html"


def scrub(html: str, root: Path) -> str:
    """Remove what legitimately varies between machines: image bytes, paths, versions, provenance."""
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,IMAGE", html)
    html = html.replace(str(root), "TMP").replace(str(TESTS), "TESTS")
    html = re.sub(
        r'<section id="provenance">.*?</section>', '<section id="provenance">PROVENANCE</section>', html, flags=re.S
    )
    return re.sub(r"[0-9a-f]{64}", "SHA256", html)


def test_html_matches_the_gold_file(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    build(tmp_path / "r", linen_checkpoint, tiny_probe, tiny_classes)
    html = (tmp_path / "r" / "report.html").read_text()
    html = scrub(html, tmp_path).replace(str(linen_checkpoint), "CHECKPOINT").replace(str(tiny_probe), "PROBE")
    if os.environ.get("REPORTGEN_UPDATE_GOLD"):
        GOLD.parent.mkdir(exist_ok=True)
        GOLD.write_text(html)
        pytest.fail("gold file rewritten: review `git diff tests/gold`, then run the test again without the variable")
    assert GOLD.exists(), "no gold file: run make update-gold"
    assert html == GOLD.read_text(), "report HTML changed; if intended, run make update-gold and review the diff"
