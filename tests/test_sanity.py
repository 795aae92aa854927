"""The sanity checks' similarity measures and the class-sensitivity check, against values worked
out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from reportgen import findings, results
from reportgen.analyses import catalogue, sanity
from reportgen.attribution import other_classes


def test_ssim_with_a_window_wider_than_the_map_is_the_global_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a very wide window every local statistic is the map's global one, so SSIM is Wang et
    al.'s formula on the whole map: worked out here from means, variances and the covariance."""
    monkeypatch.setattr(sanity, "SSIM_SIGMA", 1e4)
    a = np.array([[0.0, 1.0], [2.0, 4.0]])
    b = np.array([[1.0, 1.0], [2.0, 2.0]])
    x, y = a / 4.0, b / 2.0  # each scaled by its largest magnitude
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert sanity.ssim(a, b) == pytest.approx(expected, rel=1e-4)
    assert sanity.ssim(a, -3 * a) == pytest.approx(1.0)  # magnitudes, each scaled to [0, 1]


def test_ssim_of_a_map_and_its_shifted_copy_is_below_one() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((16, 16))
    assert sanity.ssim(a, a) == pytest.approx(1.0)
    assert sanity.ssim(a, np.roll(a, 3, axis=1)) < 0.5


def test_similarity_compares_absolute_values_per_method() -> None:
    rng = np.random.default_rng(1)
    original = rng.normal(size=(3, 2, 8, 8))
    other = original.copy()
    other[:, 0] *= -1  # method 0: the same magnitudes, signs flipped
    other[:, 1] = rng.normal(size=(3, 8, 8))  # method 1: unrelated maps
    rho, structure = sanity.similarity(original, other)
    assert rho[0] == pytest.approx(1.0) and structure[0] == pytest.approx(1.0)
    assert abs(rho[1]) < 0.3 and structure[1] < 0.5
    expected = np.mean([sanity.spearman(np.abs(original[i, 1]), np.abs(other[i, 1])) for i in range(3)])
    assert rho[1] == pytest.approx(expected)


def test_the_other_class_is_never_the_explained_one_and_depends_on_seed_and_image_only() -> None:
    explained = np.array([0, 4, 2, 4] * 50)
    indices = np.arange(200)
    others = other_classes(explained, 5, seed=3, indices=indices)
    assert ((others >= 0) & (others < 5)).all() and (others != explained).all()
    for k in range(5):  # every other class is drawn
        assert set(others[explained == k]) == set(range(5)) - {k} or not (explained == k).any()
    again = other_classes(explained[7:9], 5, seed=3, indices=indices[7:9])
    np.testing.assert_array_equal(again, others[7:9])
    assert not np.array_equal(other_classes(explained, 5, seed=4, indices=indices), others)


def test_a_method_with_the_same_map_for_another_class_is_a_finding() -> None:
    def scores(name: str, rho: float) -> results.MethodScores:
        return results.MethodScores(
            name, catalogue.TITLES[name], False, 0.1, 0.5, (), (), (), 0.0, 0.0, False, (),
            rho, 0.7, class_insensitive=rho > 0.6,
        )  # fmt: skip

    summary = results.Attribution(
        "conv", (scores("guided_backprop", 0.92), scores("grad_cam", 0.2)), (), ("a",), 0, 3, 0.5, class_threshold=0.6
    )
    (finding,) = findings.attribution_findings(summary)
    assert (finding.code, finding.subject) == ("class-insensitive", "guided_backprop")
    assert "(Spearman 0.92, SSIM 0.70, both above 0.6, on 3 images)" in finding.message


def test_class_insensitive_needs_both_measures_above_the_threshold() -> None:
    from conftest import attribution_result, one_image_probe

    from reportgen import collect

    m = len(catalogue.METHODS)
    spearman, ssim = np.zeros(m), np.zeros(m)
    spearman[:3], ssim[:3] = [0.95, 0.95, 0.5], [0.95, 0.5, 0.95]
    result = attribution_result(class_spearman=spearman, class_ssim=ssim)
    summary = collect.attribution_result(result, one_image_probe(), ["a", "b"], threshold=0.5, class_threshold=0.9)
    assert [s.class_insensitive for s in summary.methods] == [True, False, False] + [False] * (m - 3)


def test_independent_stages_randomise_one_layer_with_the_cascades_noise() -> None:
    variables = {"params": {name: {"kernel": np.full((3, 3), k + 1.0, np.float32)} for k, name in enumerate("abc")}}
    groups = [["params/c/kernel"], ["params/b/kernel"], ["params/a/kernel"]]
    cascade = list(sanity.randomised_stages(variables, groups, seed=0))
    alone = list(sanity.randomised_stages(variables, groups, seed=0, cumulative=False))
    for stage, (layers_together, layer_alone) in enumerate(zip(cascade, alone, strict=True)):
        randomised = {g[0].split("/")[1] for g in groups[: stage + 1]}
        for name in "abc":
            together, single = layers_together["params"][name]["kernel"], layer_alone["params"][name]["kernel"]
            original = variables["params"][name]["kernel"]
            assert (not np.array_equal(together, original)) == (name in randomised)
            if name == groups[stage][0].split("/")[1]:
                np.testing.assert_array_equal(single, together)  # the same noise in both variants
                assert not np.array_equal(single, original)
            else:
                np.testing.assert_array_equal(single, original)


def test_running_statistics_are_not_randomised_so_variances_stay_positive() -> None:
    variables = {
        "params": {"bn": {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}},
        "batch_stats": {"bn": {"mean": np.zeros(4, np.float32), "var": np.full(4, 0.5, np.float32)}},
    }
    paths = ["batch_stats/bn/mean", "batch_stats/bn/var", "params/bn/bias", "params/bn/scale"]
    (stage,) = sanity.randomised_stages(variables, [paths], seed=0)
    np.testing.assert_array_equal(stage["batch_stats"]["bn"]["var"], 0.5)
    np.testing.assert_array_equal(stage["batch_stats"]["bn"]["mean"], 0.0)
    assert not np.array_equal(stage["params"]["bn"]["scale"], 1.0)
    assert sanity.is_statistic("bn/var") and sanity.is_statistic("bn/mean")  # NNX's names
    assert not sanity.is_statistic("params/conv/kernel")


def test_ssim_of_a_constant_map_is_undefined_and_left_out_of_the_mean() -> None:
    rng = np.random.default_rng(2)
    assert np.isnan(sanity.ssim(np.zeros((8, 8)), rng.random((8, 8))))
    original = rng.random((2, 1, 8, 8))
    other = original.copy()
    other[0, 0] = 0.0  # image 0: the other map is constant
    _, structure = sanity.similarity(original, other)
    assert structure[0] == pytest.approx(1.0)  # image 1 alone
    _, nowhere = sanity.similarity(original, np.zeros_like(original))
    assert np.isnan(nowhere[0])
