"""Concepts per layer: the factorisation on planted concepts, the choice of k, the projection and
each concept's evidence worked by hand, and the report's concepts against the API's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import SPEC

from reportgen import api, config, report, results
from reportgen.analyses import concepts
from reportgen.data import read_probe


def planted(seed: int = 0, rows: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """V = W H with three sparse non-negative concepts over 12 channels."""
    rng = np.random.default_rng(seed)
    h = np.zeros((3, 12))
    h[0, [0, 1, 2]] = [3.0, 2.0, 1.0]
    h[1, [2, 5, 6]] = [1.0, 2.0, 2.0]
    h[2, [9, 10, 11]] = [2.0, 1.0, 3.0]
    w = rng.exponential(1.0, (rows, 3)) * (rng.random((rows, 3)) < 0.6)
    return (w @ h).astype(np.float32), w, h


def test_factorisation_finds_planted_concepts_and_their_number() -> None:
    v, _, h = planted()
    found = concepts.factorise(v, max_concepts=6, seed=0)
    assert len(found.basis) == 3
    assert found.errors[2] < 0.02 and found.errors[0] > 0.3
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    cosine = found.basis @ unit.T  # each found concept matches one planted concept
    assert np.sort(cosine.max(axis=1)).min() > 0.99
    assert sorted(cosine.argmax(axis=1).tolist()) == [0, 1, 2]
    np.testing.assert_allclose(np.linalg.norm(found.basis, axis=1), 1.0, rtol=1e-5)
    assert found.presence.sum() == pytest.approx(1.0) and (np.diff(found.presence) <= 0).all()
    again = concepts.factorise(v, max_concepts=6, seed=0)
    np.testing.assert_array_equal(found.basis, again.basis)


def test_all_zero_activations_have_no_concepts_and_vectors_that_are_not_finite_are_left_out() -> None:
    found = concepts.factorise(np.zeros((50, 4), np.float32), max_concepts=3, seed=0)
    assert found.basis.shape == (0, 4) and len(found.presence) == 0 and found.rows == 50
    v, _, _ = planted()
    v[:10, 3] = np.nan
    found = concepts.factorise(v, max_concepts=6, seed=0)
    assert found.rows == len(v) - 10 and len(found.basis) == 3
    broken = concepts.factorise(np.full((5, 4), np.inf, np.float32), max_concepts=3, seed=0)
    assert broken.rows == 0 and len(broken.basis) == 0


def test_k_is_the_first_count_one_more_concept_improves_by_less_than_the_gain() -> None:
    assert concepts.choose(np.array([0.5, 0.3, 0.29, 0.1])) == 2
    assert concepts.choose(np.array([0.5, 0.45, 0.4])) == 3  # always improving: the cap
    assert concepts.choose(np.array([0.2, 0.2, 0.2])) == 1
    assert concepts.choose(np.array([np.nan, np.nan])) == 0  # all-zero activations: none


def test_projection_recovers_non_negative_coefficients() -> None:
    v, w, h = planted(seed=1, rows=300)
    basis = (h / np.linalg.norm(h, axis=1, keepdims=True)).astype(np.float32)
    scaled = w * np.linalg.norm(h, axis=1)
    got = np.asarray(concepts.project(v, basis, concepts.inverse_gram(basis)))
    assert (got >= 0).all()
    np.testing.assert_allclose(got, scaled, atol=2e-3 * scaled.max())


def test_concept_evidence_is_coefficient_times_gradient_along_the_concept() -> None:
    rng = np.random.default_rng(4)
    v, w, h = planted(seed=2, rows=20)
    basis = (h / np.linalg.norm(h, axis=1, keepdims=True)).astype(np.float32)
    coefficients = w * np.linalg.norm(h, axis=1)  # (20, 3): the activation is exactly their mix
    activation = v.reshape(4, 5, 12)
    gradient = rng.normal(size=(4, 5, 12)).astype(np.float32)
    got = concepts.concept_evidence(activation, gradient, basis, concepts.inverse_gram(basis))
    by_hand = (coefficients * (gradient.reshape(20, 12) @ basis.T)).sum(axis=0)
    np.testing.assert_allclose(got["contribution"], by_hand, rtol=1e-3, atol=1e-3)
    # an exact factorisation carries all of the filters' evidence Σ A·G
    assert float(np.sum(got["contribution"])) == pytest.approx(float((activation * gradient).sum()), rel=1e-3)
    np.testing.assert_array_equal(got["argmax"], coefficients.argmax(axis=0))


def layer(name: str, kind: str, activation: str | None, spatial: bool = True) -> SimpleNamespace:
    return SimpleNamespace(name=name, kind=kind, activation=activation, is_spatial=spatial)


def test_concept_layers_are_block_outputs_where_residual_merges_end_in_a_relu() -> None:
    plain = [layer("c1", "conv", "relu"), layer("p", "max_pool", None), layer("c2", "conv", None)]
    plain += [layer("bn", "norm", "relu"), layer("fc", "dense", "relu", spatial=False)]
    assert concepts.concept_layers(plain) == ["c1", "bn"]
    residual = [*plain, layer("block1", "merge", "relu"), layer("block2", "merge", "relu")]
    assert concepts.concept_layers(residual) == ["block1", "block2"]


def test_report_concepts_agree_with_the_api(
    tmp_path: Path, linen_checkpoint: Path, tiny_probe: Path, tiny_classes: Path
) -> None:
    flags = {
        "model": f"{SPEC}:TinyLinen",
        "checkpoint": str(linen_checkpoint),
        "images": str(tiny_probe),
        "classes": str(tiny_classes),
        "out": str(tmp_path / "report"),
        "profile": "quick",
    }
    report.build(config.resolve(flags, cwd=tmp_path))
    loaded = results.load(tmp_path / "report")
    recorded = {entry.name: entry.concepts for entry in loaded.layers if entry.concepts is not None}
    assert sorted(recorded) == ["ResidualBlock_0/BatchNorm_0", "conv1"]
    probe = read_probe(tiny_probe, (8, 8, 3), ["a", "b", "c"])
    model = api.load_model(f"{SPEC}:TinyLinen", linen_checkpoint)
    for name, found in recorded.items():
        direct = api.concepts(model, probe.images, name, targets=probe.labels, seed=0)
        assert len(found.concepts) == len(direct["basis"]) == concepts.choose(np.asarray(found.errors))
        np.testing.assert_allclose(found.errors, direct["errors"], rtol=1e-4)
        assert found.evidence == pytest.approx(float(direct["contribution"].sum(axis=1).mean()), rel=1e-3, abs=1e-6)
        by_class = api.class_filters(model, probe.images, probe.labels, [name])[name]["contribution"].sum(axis=1)
        counts = np.bincount(probe.labels, minlength=3)
        assert found.layer_evidence == pytest.approx(float((by_class * counts).sum() / counts.sum()), rel=1e-3)
        peaks = direct["maps"].reshape(len(probe.images), -1, len(direct["basis"])).max(axis=1)  # (N, k)
        per_class = np.stack([direct["contribution"][probe.labels == k].mean(axis=0) for k in range(3)])
        positive = np.maximum(per_class, 0).sum(axis=1)
        for c, concept in enumerate(found.concepts):
            top = concept.top_patches
            np.testing.assert_allclose(top.values[0], np.sort(peaks[:, c])[::-1][: len(top.values[0])], rtol=1e-4)
            assert list(concept.filters) == list(np.argsort(-direct["basis"][c], kind="stable")[: len(concept.filters)])
            for served in concept.classes:
                share = per_class[served.index, c] / positive[served.index]
                assert served.share == pytest.approx(share, rel=1e-3, abs=1e-6)
            assert [s.share for s in concept.classes] == sorted((s.share for s in concept.classes), reverse=True)
    assert all(d.conductance is None for row in loaded.class_evidence for d in row.filters)  # quick: no paths
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count('class="concept"') == sum(len(found.concepts) for found in recorded.values())


def test_api_concepts_refuses_layers_without_non_negative_spatial_outputs(linen_checkpoint: Path) -> None:
    model = api.load_model(f"{SPEC}:TinyLinen", linen_checkpoint)
    images = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="negative outputs"):
        api.concepts(model, images, "ResidualBlock_0/Conv_0")  # a convolution before its BatchNorm
    dense = next(layer.name for layer in model.graph.layers if not layer.is_spatial)
    with pytest.raises(ValueError, match="no spatial output"):
        api.concepts(model, images, dense)
    with pytest.raises(ValueError, match="at least 1"):
        api.concepts(model, images, "conv1", max_concepts=0)
