"""Property-based tests (hypothesis, derandomised with a bounded number of examples so CI is
repeatable): whatever a user feeds in, probe images, class files, TOML settings and model specs
either work or end in a UserError, never in another exception."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reportgen.config import resolve
from reportgen.data import read_classes, read_probe
from reportgen.errors import UserError
from reportgen.model.load import import_spec

BOUNDED = settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@BOUNDED
@given(
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    mode=st.sampled_from(["L", "RGB", "RGBA", "I;16"]),
    channels=st.sampled_from([1, 3, 4]),
    rule=st.sampled_from(["crop", "pad", "stretch"]),
    seed=st.integers(0, 2**16),
)
def test_any_png_reads_into_the_model_shape_in_range(
    height: int, width: int, mode: str, channels: int, rule: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    depth = {"L": (), "RGB": (3,), "RGBA": (4,), "I;16": ()}[mode]
    top = 65535 if mode == "I;16" else 255
    pixels = rng.integers(0, top + 1, size=(height, width, *depth)).astype(np.uint16 if mode == "I;16" else np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        Image.fromarray(pixels).save(Path(folder) / "x.png")
        probe = read_probe(Path(folder), (8, 8, channels), ["a"], resize=rule)
    assert probe.images.shape == (1, 8, 8, channels) and probe.images.dtype == np.float32
    assert np.isfinite(probe.images).all() and probe.images.min() >= 0 and probe.images.max() <= 1
    if (height, width) == (8, 8) and mode == "L" and channels == 1:  # nothing to convert: exact
        np.testing.assert_array_equal(probe.images[0, ..., 0], pixels / 255.0)


NAME = st.text(st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]), min_size=1, max_size=20).filter(
    lambda s: s.strip() == s and s != ""
)


@BOUNDED
@given(names=st.lists(NAME, min_size=1, max_size=30, unique=True), blanks=st.integers(0, 3), duplicate=st.booleans())
def test_class_files_give_their_names_or_one_error(names: list[str], blanks: int, duplicate: bool) -> None:
    lines = [*names, names[0]] if duplicate else names
    text = ("\n" * (blanks + 1)).join(f"  {name}\t" for name in lines) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classes.txt"
        path.write_text(text, encoding="utf-8")
        if duplicate:
            with pytest.raises(UserError, match="twice"):
                read_classes(path, len(lines))
        else:
            assert read_classes(path, len(names)) == names


KEYS = st.sampled_from(
    ["seed", "profile", "resize", "redact", "memory_budget", "time_budget", "preprocess", "colour", "ig_steps",
     "layers", "attribution", "visualisation", "input_shape", "external_figures"]
)  # fmt: skip
SCALARS = st.one_of(
    st.integers(-5, 100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(-2, 40), max_size=4),
)
SECTION = st.dictionaries(
    st.sampled_from(["images", "ig_steps", "steps", "rare_fraction", "target", "ig_rule", "filters", "nope"]),
    SCALARS,
    max_size=3,
)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


@BOUNDED
@given(top=st.dictionaries(KEYS, st.one_of(SCALARS, SECTION), max_size=4))
def test_any_settings_file_resolves_or_is_one_user_error(top: dict[str, object]) -> None:
    lines, tables = [], []
    for key, value in top.items():
        if isinstance(value, dict):
            tables += [f"[{key}]", *(f"{k} = {toml_value(v)}" for k, v in value.items())]
        else:
            lines.append(f"{key} = {toml_value(value)}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "settings.toml"
        path.write_text("\n".join([*lines, *tables]) + "\n")
        try:
            resolved = resolve({"model": "pkg.mod:Net", "checkpoint": "ck"}, str(path), cwd=Path(folder))
        except UserError as e:
            assert "\n" not in str(e)
        else:
            assert resolved.attribution.ig_steps >= 2 and math.isfinite(resolved.memory_budget)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(parts=st.lists(st.sampled_from([*"abc.:/_-", "json", "os", ".py", "..", ":x", "loads"]), max_size=8))
def test_any_model_spec_imports_or_is_one_user_error(parts: list[str]) -> None:
    spec = "".join(parts)
    try:
        import_spec(spec)
    except UserError as e:
        assert "\n" not in str(e)
