"""Release audits: `reportgen diff` between two real builds, `--fail-on` gates, the release
archive, and bad input. Release v2 is v1 with one conv1 filter killed and the Dense bias pushed
towards class "a", so what must change is known from the weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tiny_models
from conftest import SPEC, linen_variables, save

from reportgen import cli, diff, gates, plan, results, serial
from reportgen.analyses.ranks import spearman
from reportgen.data import read_probe
from reportgen.diff_sections import compared
from reportgen.errors import UserError

KILLED = 3


def v2_variables() -> dict:
    """v1 with conv1 filter KILLED dead (zero kernel, negative bias) and class "a" favoured."""
    variables = jax.tree.map(np.array, linen_variables())
    variables["params"]["conv1"]["kernel"][..., KILLED] = 0.0
    variables["params"]["conv1"]["bias"][KILLED] = -1.0
    variables["params"]["Dense_0"]["bias"][0] += 5.0
    return variables


def build(
    archive: Path, release: str, checkpoint: Path, probe: Path, classes: Path, *rules: str, config: Path | None = None
) -> int:
    argv = ["build", "--model", f"{SPEC}:TinyLinen", "--checkpoint", str(checkpoint), "--images", str(probe)]
    argv += ["--classes", str(classes), "--release", release, "--archive", str(archive), "--quiet"]
    argv += ["--config", str(config)] if config else []
    for rule in rules:
        argv += ["--fail-on", rule]
    return cli.main(argv)


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path
) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOURCE_DATE_EPOCH", "1700000000")
        folder = tmp_path_factory.mktemp("archive") / "releases"
        v2 = save(tmp_path_factory.mktemp("v2") / "ckpt", v2_variables())
        assert build(folder, "v1", linen_checkpoint, tiny_probe, tiny_classes) == 0
        # A build gate: the tiny model has an error finding (low accuracy), so the build exits 1
        # but still writes its report.
        assert build(folder, "v2", v2, tiny_probe, tiny_classes, "finding:error", "prediction-changes>100") == 1
    return folder


def predicted(variables: dict, probe: Path) -> np.ndarray:
    images = read_probe(probe, (8, 8, 3), ["a", "b", "c"]).images
    return np.asarray(tiny_models.TinyLinen().apply(variables, images)).argmax(-1)


def run_diff(archive: Path, out: Path, *rules: str) -> int:
    argv = ["diff", str(archive / "v1"), str(archive / "v2" / "report.json"), "--out", str(out), "--quiet"]
    for rule in rules:
        argv += ["--fail-on", rule]
    return cli.main(argv)


def test_diff_shows_the_changes_made_to_the_weights(archive: Path, tmp_path: Path, tiny_probe: Path) -> None:
    assert run_diff(archive, tmp_path / "d") == 0
    d = serial.from_json(diff.Diff, json.loads((tmp_path / "d" / "diff.json").read_text()))
    # Predictions: computed here from the two sets of weights, independently of reportgen.
    before, after = predicted(linen_variables(), tiny_probe), predicted(v2_variables(), tiny_probe)
    assert len(d.prediction_changes) == int((before != after).sum()) > 0
    assert d.common_images == len(before)
    # Filters: exactly the killed one died, in conv1 only.
    died = {layer.name: layer.died for layer in d.layers if layer.died}
    assert died == {"conv1": (KILLED,)}
    assert d.headline_value("dead filters").new == d.headline_value("dead filters").old + 1
    # Findings: the dead filter is new; misclassifications move with the predictions.
    introduced = {(f.code, f.subject) for f in d.findings_introduced}
    assert ("dead-filters", "conv1") in introduced
    old = results.load(archive / "v1")
    new = results.load(archive / "v2")

    def failing(report: results.Report) -> set[str]:  # classes with 3 or more misclassified images
        labels = [i.label for i in report.predictions.images if i.correct is False]
        return {label for label in labels if labels.count(label) >= 3}

    assert failing(new) != failing(old)
    assert {s for c, s in introduced if c == "misclassified-class"} == failing(new) - failing(old)
    resolved = {f.subject for f in d.findings_resolved if f.code == "misclassified-class"}
    assert resolved == failing(old) - failing(new)
    # Provenance: the checkpoint hash differs and is highlighted, the settings are the same.
    rows = {row.key: row for row in d.provenance}
    assert rows["checkpoint.sha256"].changed and not rows["settings.seed"].changed
    # ROAD and infidelity of each release's own report, old beside new.
    scores = {r: {m.name: m for m in report.attribution.methods} for r, report in (("old", old), ("new", new))}
    for m in d.methods:
        assert (m.old_road_morf, m.new_road_morf) == (scores["old"][m.name].road_morf, scores["new"][m.name].road_morf)
        assert m.new_infidelity == scores["new"][m.name].infidelity is not None
    # Maps on the same images: correlations are real correlations.
    assert all(-1 <= m.map_correlation <= 1 for m in d.methods if m.map_correlation is not None)
    # Each method compares the images where neither release's map is constant (no ranking there).
    earlier = {image.sha256: image for image in old.attribution.images}
    for m in d.methods:
        pairs = [(earlier[i.sha256].maps[m.name].array(), i.maps[m.name].array()) for i in new.attribution.images]
        ranked = sum(1 for a, b in pairs if np.ptp(a) > 0 and np.ptp(b) > 0)
        assert m.compared_images == ranked and (m.map_correlation is None) == (ranked == 0)


def test_diff_page_is_self_contained_with_both_thumbnails(archive: Path, tmp_path: Path) -> None:
    assert run_diff(archive, tmp_path / "d") == 0
    html = (tmp_path / "d" / "diff.html").read_text()
    changes = json.loads((tmp_path / "d" / "diff.json").read_text())["prediction_changes"]
    assert html.count('src="data:image/png;base64,') == 2 * len(changes)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    summary = (tmp_path / "d" / "summary.md").read_text()
    assert "[diff.html](diff.html)" in summary and len(summary.encode()) <= 60_000
    assert f"## Predictions that changed ({len(changes)} of 12 common images)" in summary


def test_diff_is_byte_identical_and_leaves_its_inputs_alone(archive: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in sorted(archive.rglob("*")) if p.is_file()}
    assert run_diff(archive, tmp_path / "a") == 0
    assert run_diff(archive, tmp_path / "b") == 0
    for name in ("diff.html", "diff.json", "summary.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert {p: p.read_bytes() for p in sorted(archive.rglob("*")) if p.is_file()} == before


def test_diff_gates_exit_1_with_one_line_per_broken_rule(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run_diff(archive, tmp_path / "held", "prediction-changes>100", "new-dead-filters>1", "accuracy-drop>0.5") == 0
    )
    capsys.readouterr()
    status = run_diff(archive, tmp_path / "broken", "prediction-changes>0", "new-dead-filters", "accuracy-drop>0.5")
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert [line.split(":")[2].strip() for line in lines] == ["prediction-changes>0", "new-dead-filters"]
    assert (tmp_path / "broken" / "diff.html").is_file()  # the comparison is written either way


def test_archive_index_links_every_release_and_its_diff(archive: Path) -> None:
    index = (archive / "index.html").read_text()
    for link in ("v1/report.html", "v2/report.html", "diffs/v1--v2/diff.html"):
        assert f'href="{link}"' in index and (archive / link).is_file()
    assert index.index('href="v2/report.html"') < index.index('href="v1/report.html"')  # newest first
    assert results.load(archive / "v2").provenance.release == "v2"
    assert json.loads((archive / "releases.json").read_text()) == {"releases": ["v1", "v2"]}


def test_comparisons_and_view_building_import_no_jax() -> None:
    modules = "reportgen.compare, reportgen.archive, reportgen.sections, reportgen.summary"
    code = f"import sys, {modules}; print(any(m.startswith('jax') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def _edited(archive: Path, tmp_path: Path, edit: str) -> Path:
    folder = tmp_path / "edited"
    folder.mkdir()
    text = (archive / "v1" / "report.json").read_text()
    if edit == "truncated":
        text = text[: len(text) // 2]
    else:
        data = json.loads(text)
        if edit == "schema":
            data["schema_version"] = 1
        else:
            data["layers"][0]["statistics"]["mean"] = "high"
        text = json.dumps(data)
    (folder / "report.json").write_text(text)
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated", "is not valid JSON"),
        ("schema", "has report schema version 1, this reportgen reads version 2"),
        ("hand-edited", "$.layers[0].statistics.mean: expected a list"),
        ("no report", "is not a report: no report.json there"),
        ("out inside input", "a diff never writes into its inputs"),
        ("unknown rule", "is not a rule"),
    ],
)
def test_bad_diff_input_is_one_line_and_status_2(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    old, out, rules = archive / "v1", tmp_path / "out", ["--fail-on", "accuracy-drop>0.01"]
    if case in ("truncated", "schema", "hand-edited"):
        old = _edited(archive, tmp_path, case)
    elif case == "no report":
        old = tmp_path
    elif case == "out inside input":
        out = archive / "v1" / "comparison"
    else:
        rules = ["--fail-on", "accuracy-falls-a-lot"]
    before = sorted(archive.rglob("*"))
    status = cli.main(["diff", str(old), str(archive / "v2"), "--out", str(out), *rules])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() and sorted(archive.rglob("*")) == before


def test_rules_that_compare_two_reports_are_refused_on_a_plain_build() -> None:
    with pytest.raises(UserError, match="compares two reports"):
        gates.parse_all(["accuracy-drop>0.01"], diff=False)
    with pytest.raises(UserError, match="needs a threshold"):
        gates.parse_all(["accuracy"], diff=False)
    rule = gates.parse("accuracy<0.9", diff=False)
    assert (rule.metric, rule.op, rule.threshold) == ("accuracy", "<", 0.9)


def test_spearman_with_ties_matches_hand_computed_values() -> None:
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    # ranks (0.5, 0.5, 2) against (0, 1, 2): covariance 1.5, norms sqrt(1.5) and sqrt(2).
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.5 / np.sqrt(3))
    assert spearman(np.ones(4), np.arange(4.0)) is None


def test_a_change_reads_better_or_worse_in_the_right_direction() -> None:
    dead = compared("dead", 2, 3, "{:,.0f}", "lower")
    assert (dead.old, dead.new, dead.change, dead.tone) == ("2", "3", "+1", "worse")
    assert compared("acc", 0.9, 0.95, "{:.1%}", "higher").tone == "better"
    assert compared("mean", 0.2500001, 0.2500002, "{:.3g}").change == ""  # rounding noise is no change
    # 0.296 and 0.292 print as 0.30 and 0.29: the change is shown, not as "−0.00".
    assert compared("infidelity", 0.296, 0.292, "{:.2f}", "lower").change == "−0.004"


def test_different_architectures_compare_matching_layers_and_list_the_rest(archive: Path) -> None:
    import dataclasses

    old = results.load(archive / "v1")
    renamed = tuple(dataclasses.replace(layer, name="stem") if layer.name == "conv1" else layer for layer in old.layers)
    d = diff.compare(old, dataclasses.replace(old, layers=renamed))
    assert (d.layers_only_old, d.layers_only_new) == (("conv1",), ("stem",))
    assert [layer.name for layer in d.layers] == [layer.name for layer in old.layers if layer.name != "conv1"]
    assert all(layer.filters_correspond and not layer.died for layer in d.layers)  # same weights
    assert not d.prediction_changes and not d.findings_introduced


def test_strongest_filters_per_class_are_compared_where_filters_correspond(archive: Path) -> None:
    import dataclasses

    old = results.load(archive / "v1")
    row = old.class_evidence[0]
    first, second = [d for d in row.filters if d.layer == "conv1"][:2]
    swapped = tuple(second if d is first else first if d is second else d for d in row.filters)
    new = dataclasses.replace(old, class_evidence=(dataclasses.replace(row, filters=swapped), *old.class_evidence[1:]))
    d = diff.compare(old, new)
    assert [(e.name, e.layer, e.old_filter, e.new_filter) for e in d.evidence] == [
        (row.name, "conv1", first.filter, second.filter)
    ]
    layers = {d.layer for r in old.class_evidence for d in r.filters}
    assert d.evidence_unchanged == len(old.class_evidence) * len(layers) - 1
    # Where conv1's filters do not correspond (their activation profile is reversed), it is not compared.
    reversed_means = tuple(
        dataclasses.replace(layer, statistics=dataclasses.replace(layer.statistics, mean=layer.statistics.mean[::-1]))
        if layer.name == "conv1"
        else layer
        for layer in new.layers
    )
    d = diff.compare(old, dataclasses.replace(new, layers=reversed_means))
    assert not d.evidence and d.evidence_unchanged == len(old.class_evidence) * (len(layers) - 1)


def test_an_archived_release_repeats_the_sampling_of_the_release_before_it(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner's speed measurements vary between builds, so two builds over one time budget
    sample differently; an archived release computes what the release before it computed, and
    the diff compares the same filters, classes, images and sanity stages."""
    config = tmp_path / "budget.toml"
    config.write_text("time_budget = 3000\n[layers]\nconcepts = 0\n")

    def measured_at(flops_per_second: float) -> None:
        speed = plan.Throughput(flops_per_second, flops_per_second, flops_per_second, 0.0)
        monkeypatch.setattr(plan, "measure_throughput", lambda *args: speed)

    def sampled(folder: Path) -> tuple[dict[str, int], tuple[str, ...]]:
        recorded = results.load(folder).provenance
        counts = {key: recorded.settings[key.split(".")[0]][key.split(".")[1]] for key in plan.SAMPLED_SETTINGS}
        return counts, recorded.plan.sampled

    folder = tmp_path / "releases"
    measured_at(1e6)
    assert build(folder, "v1", linen_checkpoint, tiny_probe, tiny_classes, config=config) == 0
    measured_at(0.7e6)
    assert build(folder, "v2", linen_checkpoint, tiny_probe, tiny_classes, config=config) == 0
    argv = ["build", "--model", f"{SPEC}:TinyLinen", "--checkpoint", str(linen_checkpoint), "--quiet"]
    argv += ["--images", str(tiny_probe), "--classes", str(tiny_classes), "--config", str(config)]
    assert cli.main([*argv, "--out", str(tmp_path / "alone")]) == 0

    first, notes = sampled(folder / "v1")
    assert notes and not any("release" in note for note in notes)
    alone, _ = sampled(tmp_path / "alone")
    assert alone != first, "a build outside the archive samples anew at the slower speed"
    second, notes = sampled(folder / "v2")
    assert second == first
    assert any("release v1 sampled the same, and this build repeats it" in note for note in notes)
    assert "computed different samples" not in (folder / "diffs" / "v1--v2" / "diff.html").read_text()
    assert cli.main(["diff", str(folder / "v1"), str(tmp_path / "alone"), "--out", str(tmp_path / "d"), "--quiet"]) == 0
    changed = [f"{key} {first[key]} → {alone[key]}" for key in plan.SAMPLED_SETTINGS if first[key] != alone[key]]
    for page in ("diff.html", "summary.md"):
        text = (tmp_path / "d" / page).read_text()
        assert "The two reports computed different samples" in text and all(c in text for c in changed)
