"""End-to-end builds of a tiny model's report: files, sections, safety, determinism, numbers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import tiny_models
from conftest import SPEC, linen_variables, write_png

from reportgen import config, findings, report, results, serial
from reportgen.data import read_probe
from reportgen.errors import UserError


def build(out: Path, checkpoint: Path, images: Path, classes: Path | None, **extra) -> report.BuildResult:
    flags = {"model": f"{SPEC}:TinyLinen", "checkpoint": str(checkpoint), "images": str(images), "out": str(out)}
    flags["classes"] = str(classes) if classes else None
    settings = config.resolve({**flags, **extra}, cwd=out.parent)
    result = report.build(settings, command="reportgen build (test)")
    assert result is not None, "a single-process build writes its report"
    return result


class Links(HTMLParser):
    """Collects ids, details sections and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.urls: list[str] = []
        self.scripts = 0
        self.csp = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.append(value)
            if name in ("src", "href", "action", "poster", "srcset") and value:
                self.urls.append(value)
        if tag == "script":
            self.scripts += 1
        if tag == "meta" and dict(attrs).get("http-equiv") == "Content-Security-Policy":
            self.csp = dict(attrs).get("content") or ""


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path
) -> Path:
    out = tmp_path_factory.mktemp("build") / "report"
    build(out, linen_checkpoint, tiny_probe, tiny_classes)
    return out


def test_writes_the_three_outputs(built: Path) -> None:
    assert (built / "report.html").is_file() and (built / "report.json").is_file()
    pngs = sorted((built / "figures").glob("*.png"))
    assert pngs
    html = (built / "report.html").read_text()
    import base64

    for png in pngs:  # the same bytes as embedded
        assert base64.b64encode(png.read_bytes()).decode() in html
    assert not list(built.parent.glob(".report.*"))  # no temporary folders left behind


def test_a_section_for_every_layer_and_nothing_external(built: Path) -> None:
    html = (built / "report.html").read_text()
    data = json.loads((built / "report.json").read_text())
    parser = Links()
    parser.feed(html)
    layer_ids = [i for i in parser.ids if i.startswith("layer-") and "-filter-" not in i]
    assert len(layer_ids) == len(data["layers"]) == 8
    for section in ("overview", "findings", "architecture", "predictions", "provenance"):
        assert section in parser.ids
    for url in parser.urls:
        assert url.startswith(("#", "data:image/png;base64,")), url
        assert not url.startswith("#") or url[1:] in parser.ids, url  # every link has its target
    assert any("-filter-" in url for url in parser.urls)  # class evidence links to filter cards
    assert not re.search(r"url\(", html)
    assert "http://" not in html and "https://" not in html
    assert parser.scripts == 0
    assert "default-src 'none'" in parser.csp and "img-src data:;" in parser.csp


def test_report_json_validates_against_the_shipped_schema_and_reads_back(built: Path) -> None:
    import jsonschema

    text = (built / "report.json").read_text()
    data = json.loads(text)
    shipped = json.loads(results.SCHEMA_FILE.read_text())
    assert shipped == results.schema()  # the shipped file is regenerated whenever the types change
    jsonschema.validate(data, shipped)
    broken = json.loads(text)
    broken["layers"][0]["statistics"]["mean"] = "high"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, shipped)
    assert "NaN" not in text and "Infinity" not in text
    assert results.dumps(results.load(built)) == text  # to_json(from_json(x)) == x
    # A report written before a field with a default existed still reads; any other gap does not.
    plan = data["provenance"]["plan"]
    assert plan["gradient_gflops_per_second"] > 0 and plan["visualisation_step_ms"] > 0
    older = json.loads(text)
    del older["provenance"]["plan"]["gradient_gflops_per_second"]
    jsonschema.validate(older, shipped)
    assert serial.from_json(results.Report, older).provenance.plan.gradient_gflops_per_second is None
    del older["provenance"]["plan"]["forward_gflops_per_second"]
    with pytest.raises(serial.SchemaError, match="missing field 'forward_gflops_per_second'"):
        serial.from_json(results.Report, older)


def test_numbers_agree_with_a_direct_computation(built: Path, tiny_probe: Path) -> None:
    data = json.loads((built / "report.json").read_text())
    probe = read_probe(tiny_probe, (8, 8, 3), ["a", "b", "c"])
    module = tiny_models.TinyLinen()
    variables = linen_variables()
    logits = np.asarray(module.apply(variables, probe.images))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for i, entry in enumerate(data["predictions"]["images"]):
        assert entry["sha256"] == hashlib.sha256(probe.images[i].astype(np.float32).tobytes()).hexdigest()
        assert entry["top"][0]["index"] == int(probs[i].argmax())
        assert entry["top"][0]["probability"] == pytest.approx(probs[i].max(), rel=1e-4)
    accuracy = (probs.argmax(1) == probe.labels).mean()
    assert data["predictions"]["accuracy"] == pytest.approx(accuracy)
    # conv1 statistics from Flax directly: relu(conv(x)) averaged over images and positions.
    import flax.linen as nn

    conv1 = np.asarray(nn.relu(nn.Conv(8, (3, 3)).apply({"params": variables["params"]["conv1"]}, probe.images)))
    stats = next(layer for layer in data["layers"] if layer["name"] == "conv1")["statistics"]
    np.testing.assert_allclose(stats["mean"], conv1.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["max"], conv1.max(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    fires = (conv1.max(axis=(1, 2)) > 0).mean(axis=0)
    np.testing.assert_allclose(stats["firing_fraction"], fires, atol=1e-6)
    dead = next(layer for layer in data["layers"] if layer["name"] == "conv1")["dead_filters"]
    assert dead == [int(c) for c in np.flatnonzero(conv1.max(axis=(0, 1, 2)) <= 0)]


def test_double_build_is_byte_identical(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "r"
    build(out, linen_checkpoint, tiny_probe, tiny_classes)
    outputs = ("report.html", "report.json", "summary.md")
    first = {name: (out / name).read_bytes() for name in outputs}
    build(out, linen_checkpoint, tiny_probe, tiny_classes)
    second = {name: (out / name).read_bytes() for name in outputs}
    assert first == second
    assert b"2023-11-14T22:13:20+00:00" in first["report.html"]


HOSTILE = ["<script>alert(1)</script>", '$\\alpha$ & "quotes"', "<img src=x onerror=alert(2)>"]


def test_hostile_names_are_escaped(tmp_path: Path, linen_checkpoint: Path) -> None:
    probe = tmp_path / "probe"
    rng = np.random.default_rng(0)
    write_png(probe / "<b>bold</b>.png", rng.uniform(0, 1, (8, 8, 3)))
    write_png(probe / "2" / "$x^2$.png", rng.uniform(0, 1, (8, 8, 3)))
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(HOSTILE) + "\n")
    out = tmp_path / "out"
    build(out, linen_checkpoint, probe, classes)
    html = (out / "report.html").read_text()
    assert "<script>" not in html and "<b>bold" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;.png" in html
    assert "$x^2$.png" in html


def test_bad_probe_inputs_give_warnings(tmp_path: Path, linen_checkpoint: Path, tiny_classes: Path) -> None:
    from PIL import Image

    probe = tmp_path / "probe"
    rng = np.random.default_rng(0)
    write_png(probe / "a" / "ok.png", rng.uniform(0, 1, (8, 8, 3)))
    (probe / "notes.txt").write_text("not an image")
    (probe / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.fromarray((rng.uniform(0, 1, (20, 20)) * 255).astype(np.uint8), mode="L").save(probe / "b" / "gray.png") if (
        probe / "b"
    ).mkdir() is None else None
    Image.fromarray((rng.uniform(0, 1, (8, 8, 4)) * 255).astype(np.uint8), mode="RGBA").save(probe / "b" / "rgba.png")
    Image.fromarray((rng.uniform(0, 1, (9, 9)) * 65535).astype(np.uint16)).save(probe / "c" / "deep.png") if (
        probe / "c"
    ).mkdir() is None else None
    Image.fromarray((rng.uniform(0, 1, (2000, 1500, 3)) * 255).astype(np.uint8)).save(probe / "c" / "big.jpg")
    (probe / "zebra").mkdir()
    write_png(probe / "zebra" / "z.png", rng.uniform(0, 1, (8, 8, 3)))
    result = build(tmp_path / "out", linen_checkpoint, probe, tiny_classes)
    warnings = " | ".join(result.warnings)
    assert "skipped notes.txt: not a PNG or JPEG" in warnings
    assert "skipped a/corrupt.png: unreadable image" in warnings
    assert "'zebra' is not a class name" in warnings
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    names = [i["name"] for i in data["predictions"]["images"]]
    assert names == ["a/ok.png", "b/gray.png", "b/rgba.png", "c/big.jpg", "c/deep.png", "zebra/z.png"]
    labels = [i["label"] for i in data["predictions"]["images"]]
    assert labels == ["a", "b", "b", "c", "c", None]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "has no readable PNG or JPEG images"),
        ("short-classes", "has 2 class names but the model has 3 outputs"),
        ("out-is-foreign", "is not a reportgen report folder"),
        ("stray-report-json", "is not a reportgen report folder"),
        ("user-file-in-report", r"holds files reportgen did not write \(notes.txt\)"),
        ("out-is-cwd", "is the current folder or holds it"),
    ],
)
def test_bad_input_errors_destroy_nothing(
    case: str,
    message: str,
    tmp_path: Path,
    linen_checkpoint: Path,
    tiny_probe: Path,
    tiny_classes: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    images, classes = tiny_probe, tiny_classes
    if case == "empty":
        images = tmp_path / "empty"
        images.mkdir()
    if case == "short-classes":
        classes = tmp_path / "two.txt"
        classes.write_text("a\nb\n")
    if case in ("out-is-foreign", "stray-report-json"):
        out.mkdir()
        (out / "thesis.tex").write_text("precious")
        if case == "stray-report-json":
            (out / "report.json").write_text("{}")
    elif case == "out-is-cwd":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        monkeypatch.chdir(out)
    else:
        build(out, linen_checkpoint, tiny_probe, tiny_classes)
        if case == "user-file-in-report":
            (out / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=message):
        build(out, linen_checkpoint, images, classes)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after
    assert not list(tmp_path.glob(".out.*"))


def test_a_killed_runs_leftovers_are_cleaned_and_a_report_is_replaced(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path
) -> None:
    out = tmp_path / "out"
    build(out, linen_checkpoint, tiny_probe, tiny_classes)
    dead = tmp_path / ".out.tmp-999999999"  # no process has this id
    (dead / "figures").mkdir(parents=True)
    mine = tmp_path / ".out.tmp-notes"  # not a leftover: not ours
    mine.mkdir()
    build(out, linen_checkpoint, tiny_probe, tiny_classes)  # a report folder is replaced
    assert not dead.exists() and mine.is_dir()
    marker = json.loads((out / ".reportgen.json").read_text())
    assert marker["kind"] == "report" and "report.json" in marker["files"]
    assert marker["schema_version"] == results.SCHEMA_VERSION


def test_size_budget_warns_and_external_figures_link_files(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path
) -> None:
    result = build(tmp_path / "a", linen_checkpoint, tiny_probe, tiny_classes, size_budget_mb=0.01)
    assert any("over the 0.01 MB budget" in w for w in result.warnings)
    build(tmp_path / "b", linen_checkpoint, tiny_probe, tiny_classes, external_figures=True)
    html = (tmp_path / "b" / "report.html").read_text()
    parser = Links()
    parser.feed(html)
    srcs = [u for u in parser.urls if not u.startswith("#")]
    assert srcs and all(u.startswith("figures/") and (tmp_path / "b" / u).is_file() for u in srcs)


def test_pooling_does_not_repeat_the_dead_filters_of_its_input(built: Path) -> None:
    loaded = results.load(built)
    conv = dataclasses.replace(loaded.layer("conv1"), dead_filters=(1, 2), rare_filters=())
    pool = dataclasses.replace(conv, name="pool", kind="max_pool", section="layer-pool", dead_filters=(1, 2, 3))
    found = findings.layer_findings(conv, None) + findings.layer_findings(pool, conv)
    dead = [f.message for f in found if f.code == "dead-filters"]
    assert dead == [
        "conv1: 2 of 8 filters are dead (zero on every probe image): 1, 2",
        "pool: 1 of 8 filters are dead (zero on every probe image): 3",
    ]


def test_layer_sections_show_the_findings_about_them(built: Path) -> None:
    loaded = results.load(built)
    html = (built / "report.html").read_text()
    about_layers = [f for f in loaded.findings if f.section.startswith("layer-")]
    assert about_layers  # the tiny model has dead filters
    for finding in about_layers:
        section = html[html.index(f'id="{finding.section}"') :]
        section = section[: section.index("</section>")] if "</section>" in section else section
        assert escape(finding.message.split(": ", 1)[1]) in section


def test_summary_markdown_lists_findings_and_layers(built: Path) -> None:
    text = (built / "summary.md").read_text()
    loaded = results.load(built)
    assert "[report.html](report.html)" in text and "data:" not in text
    assert len(text.encode()) <= 60_000
    for layer in loaded.layers:
        assert f"| `{layer.name}` |" in text
    errors = sum(f.severity == "error" for f in loaded.findings)
    warnings = sum(f.severity == "warning" for f in loaded.findings)
    assert f"| Findings | {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}," in text


def test_a_class_that_fails_is_one_finding_and_a_stray_error_is_its_own() -> None:
    def image(name: str, label: str, predicted: str) -> results.ImagePrediction:
        top = (results.ClassScore(predicted, 0, 0.9),)
        return results.ImagePrediction(name, name, label, 0, top, label == predicted)

    images = [image(f"one/{i}.png", "one", "seven" if i < 3 else "four") for i in range(4)]
    images += [image("one/ok.png", "one", "one"), image("two/0.png", "two", "one"), image("two/1.png", "two", "two")]
    found = findings.prediction_findings(results.Predictions(3 / 7, 7, 0, False, tuple(images), None))
    by_code = [(f.code, f.subject) for f in found]
    assert by_code == [("low-accuracy", "probe"), ("misclassified-class", "one"), ("misclassified", "two/0.png")]
    assert found[1].message == (
        "class one: 4 of 5 labelled probe images are misclassified, most often as seven (3):"
        " one/0.png, one/1.png, one/2.png, one/3.png"
    )


def test_class_evidence_agrees_with_a_direct_computation(built: Path, tiny_probe: Path) -> None:
    import flax.linen as nn
    import jax

    loaded = results.load(built)
    probe = read_probe(tiny_probe, (8, 8, 3), ["a", "b", "c"])
    module, variables = tiny_models.TinyLinen(), linen_variables()

    def logit(scale: jax.Array, image: np.ndarray, k: int) -> jax.Array:
        """Class k's logit with each conv1 filter's output multiplied by `scale`: its gradient at
        1 is Σ activation × d logit / d activation per filter (ReLU commutes with scale > 0)."""

        def scaled(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            is_conv1 = context.module.name == "conv1" and context.method_name == "__call__"
            return out * scale if is_conv1 else out

        with nn.intercept_methods(scaled):
            return module.apply(variables, image[None])[0, k]

    targets = np.where(probe.labels >= 0, probe.labels, -1)
    assert (targets >= 0).all()
    per_image = np.stack([jax.grad(logit)(np.ones(8), x, int(k)) for x, k in zip(probe.images, targets, strict=True)])
    assert [row.index for row in loaded.class_evidence] == sorted(set(targets.tolist()))
    for row in loaded.class_evidence:
        mean = per_image[targets == row.index].mean(axis=0)
        conv1 = [d for d in row.filters if d.layer == "conv1"]
        assert [d.filter for d in conv1] == list(np.argsort(-mean, kind="stable")[: len(conv1)])
        np.testing.assert_allclose([d.contribution for d in conv1], np.sort(mean)[::-1][: len(conv1)], rtol=1e-4)
        positive = np.maximum(mean, 0).sum()
        expected_share = np.sort(mean)[::-1][: len(conv1)] / positive
        np.testing.assert_allclose([d.share for d in conv1], expected_share, rtol=1e-4, atol=1e-7)
        assert all(d.conductance is not None and d.conductance_share is not None for d in row.filters)


def test_evidence_findings_name_shared_and_rare_filters(built: Path) -> None:
    loaded = results.load(built)
    conv = dataclasses.replace(loaded.layer("conv1"), rare_filters=(5,))

    def evidence(name: str, index: int, top: int, share: float) -> results.ClassEvidence:
        return results.ClassEvidence(name, index, 1, (results.DecidingFilter("conv1", top, 1.0, share, 0.1),))

    rows = [evidence("a", 0, 2, 0.3), evidence("b", 1, 2, 0.3), evidence("c", 2, 2, 0.05), evidence("d", 3, 5, 0.4)]
    found = findings.evidence_findings(rows, [conv])
    assert [(f.code, f.subject) for f in found] == [("rare-filter-evidence", "d/conv1"), ("shared-filter", "conv1/2")]
    assert "strongest evidence for 3 of 4 classes (a, b, c)" in found[1].message
    # Two classes on one filter are no pattern; a small share of a rare filter is no reliance.
    assert findings.evidence_findings([*rows[:2], evidence("d", 3, 5, 0.05)], [conv]) == []
