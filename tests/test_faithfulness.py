"""Faithfulness scores and their reference maps, and Integrated Gradients' completeness error,
against values worked out by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models
from conftest import SPEC, save

from reportgen import api, findings, results, sections
from reportgen.analyses import catalogue, faithfulness, infidelity, road
from reportgen.analyses.methods import AttributionConfig
from reportgen.attribution import MethodRunner, completeness_error
from reportgen.compute import example_keys
from reportgen.model.engine import Engine


def test_area_is_the_trapezoid_rule_on_unit_steps() -> None:
    # [1, 0.5, 0] at x = 0, 0.5, 1: 0.5 * (1 + 0.5) / 2 + 0.5 * (0.5 + 0) / 2 = 0.5
    assert float(faithfulness.area(np.array([1.0, 0.5, 0.0]))) == pytest.approx(0.5)
    # [0, 1, 1, 1] at thirds: (0 + 1) / 6 + 1 / 3 + 1 / 3 = 5 / 6
    assert float(faithfulness.area(np.array([0.0, 1.0, 1.0, 1.0]))) == pytest.approx(5 / 6)


def test_pixel_ranks_put_the_most_important_pixel_first_and_break_ties_by_position() -> None:
    ranks = faithfulness.pixel_ranks(np.array([[0.1, 0.9], [0.5, 0.5]]))
    np.testing.assert_array_equal(ranks, [[3, 0], [1, 2]])


def test_sobel_magnitude_of_a_vertical_step_is_four_beside_the_step() -> None:
    image = np.zeros((1, 5, 6, 1))
    image[..., 3:, 0] = 1.0  # columns 0-2 dark, 3-5 bright
    # Horizontal kernel [-1 0 1] x [1 2 1]: 1 + 2 + 1 = 4 where the step is between the taps.
    expected = np.zeros((5, 6))
    expected[:, [2, 3]] = 4.0
    np.testing.assert_allclose(faithfulness.sobel_magnitude(image)[0], expected)
    two_channels = np.concatenate([image, 2 * image], axis=-1)
    np.testing.assert_allclose(faithfulness.sobel_magnitude(two_channels)[0], 3 * expected)


def test_reference_maps_centre_noise_and_edges() -> None:
    images = np.random.default_rng(0).random((3, 5, 7, 3)).astype(np.float32)
    maps = faithfulness.baseline_maps(images, seed=4, indices=np.array([10, 11, 12]))
    assert maps.shape == (3, len(faithfulness.BASELINES), 5, 7)
    random, centre, edge = (faithfulness.BASELINES.index(name) for name in ("random", "centre", "edge"))
    ranks = faithfulness.pixel_ranks(maps[0, centre])
    assert ranks[2, 3] == 0  # the centre pixel comes first
    assert ranks[0, 0] == 5 * 7 - 4  # the corners last (ties by position)
    np.testing.assert_allclose(maps[:, edge], faithfulness.sobel_magnitude(images), rtol=1e-6)
    # An image's noise depends on the seed and its probe index only.
    alone = faithfulness.baseline_maps(images[1:2], seed=4, indices=np.array([11]))
    np.testing.assert_array_equal(alone[0, random], maps[1, random])
    assert not np.allclose(maps[0, random], maps[1, random])
    other_seed = faithfulness.baseline_maps(images, seed=5, indices=np.array([10, 11, 12]))
    assert not np.allclose(other_seed[:, random], maps[:, random])


@pytest.fixture(scope="module")
def conv_gap(tmp_path_factory: pytest.TempPathFactory):
    """conv + ReLU, pooling, dense, with non-zero conv biases: without them the model would be
    positively homogeneous and linear along IG's path from the black image."""
    variables = tiny_models.init_linen(tiny_models.ConvGap(), seed=6)
    bias = np.random.default_rng(2).normal(size=variables["params"]["conv"]["bias"].shape).astype(np.float32)
    variables["params"]["conv"]["bias"] = bias
    return api.load_model(f"{SPEC}:ConvGap", save(tmp_path_factory.mktemp("gap") / "ck", variables))


@pytest.mark.parametrize(("steps", "rule"), [(2, "riemann"), (64, "gauss-legendre")])
def test_integrated_gradients_completeness_error_on_a_relu_model(conv_gap, steps: int, rule: str) -> None:
    """The error the report shows is |Σ map − (f(x) − f(x′))| / |f(x) − f(x′)| with x′ the black
    baseline; the model is nonlinear (ReLU), so a coarse path misses and a fine one does not."""
    model = conv_gap
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 3)).astype(np.float32)
    black = np.zeros(model.input_shape, np.float32)
    config = AttributionConfig(ig_steps=steps, ig_rule=rule, ig_baseline="black")
    runner = MethodRunner(Engine(model.graph), config, "conv", [], black)
    passes = api._passes(model, None)
    targets = np.full(len(x), -1, np.int32)
    out = runner.run(model.variables, x, targets, example_keys(0, np.arange(4)), passes, ["integrated_gradients"])
    error = completeness_error(out)

    target = api.predict(model, x).argmax(1)
    rows = np.arange(len(x))
    change = api.predict(model, x)[rows, target] - api.predict(model, np.zeros_like(x))[rows, target]
    maps = api.integrated_gradients(model, x, target, steps=steps, baseline="black", rule=rule)
    expected = np.abs(maps.reshape(len(x), -1).sum(1) - change) / np.abs(change)
    np.testing.assert_allclose(error, expected, rtol=1e-3, atol=1e-6)
    if steps == 2:
        assert expected.max() > 0.05  # two steps really miss on this model: the check can tell
    else:
        assert expected.max() < 0.01  # well inside the report's 5 % limit


def summary_with(gaps: dict[str, float], random_gap: float, errors: list[float | None]) -> results.Attribution:
    """An Attribution summary whose methods have the given insertion − deletion gaps."""
    methods = tuple(
        results.MethodScores(
            name, catalogue.TITLES[name], False, 0.2, 0.2 + gap, (), (), (), None, None, False
        )
        for name, gap in gaps.items()
    )  # fmt: skip
    baselines = tuple(
        results.BaselineScores(name, faithfulness.BASELINE_TITLES[name], 0.3, 0.3 + gap, (), ())
        for name, gap in (("random", random_gap), ("centre", 0.1), ("edge", 0.25))
    )
    images = tuple(results.ExplainedImage(f"{k}.png", "", "a", 0, {}, {}, {}, error) for k, error in enumerate(errors))
    return results.Attribution("conv", methods, images, (), 0, 1, 0.5, baselines)


def test_methods_rank_among_the_reference_maps_by_insertion_minus_deletion() -> None:
    summary = summary_with({"saliency": 0.05, "grad_cam": 0.3, "occlusion": 0.2}, random_gap=0.0, errors=[])
    rows = sections.score_rows(summary)
    assert [(r.rank, r.title) for r in rows] == [
        (1, "Grad-CAM"),
        (2, "Edge detector"),
        (3, "Occlusion"),
        (4, "Centre map"),
        (5, "Saliency"),
        (6, "Random map"),
    ]
    by_title = {r.title: r for r in rows}
    assert by_title["Grad-CAM"].beats == "random, centre, edge"
    assert by_title["Occlusion"].beats == "random, centre"
    assert by_title["Saliency"].beats == "random"
    assert by_title["Edge detector"].reference and not by_title["Occlusion"].reference
    assert by_title["Saliency"].gap == "0.050"


def test_a_method_no_better_than_random_noise_is_a_finding() -> None:
    summary = summary_with({"saliency": 0.04, "grad_cam": 0.3}, random_gap=0.05, errors=[])
    (finding,) = findings.faithfulness_findings(summary)
    assert (finding.code, finding.subject) == ("faithfulness", "saliency")
    assert "0.040" in finding.message and "0.050" in finding.message
    assert findings.faithfulness_findings(dataclasses.replace(summary, baselines=())) == []


def test_integrated_gradients_beyond_five_percent_completeness_error_is_a_finding() -> None:
    within = summary_with({}, 0.0, errors=[0.01, 0.049, None])
    assert findings.completeness_findings(within) == []
    beyond = summary_with({}, 0.0, errors=[0.01, 0.08, 0.2, None])
    (finding,) = findings.completeness_findings(beyond)
    assert (finding.code, finding.subject) == ("ig-completeness", "integrated_gradients")
    assert "on 2 of 3 explained images (worst 20.0%, 2.png)" in finding.message


def test_reports_without_reference_maps_or_completeness_still_read(tmp_path: Path) -> None:
    """Version-2 reports written before the reference maps and completeness errors existed."""
    from reportgen import serial

    summary = summary_with({"saliency": 0.1}, 0.0, errors=[0.01])
    data = serial.to_json(summary)
    del data["baselines"]
    del data["images"][0]["ig_completeness_error"]
    old = serial.from_json(results.Attribution, data)
    assert old.baselines == () and old.images[0].ig_completeness_error is None
    assert findings.faithfulness_findings(old) == [] and findings.completeness_findings(old) == []


def test_roads_imputation_is_the_weighted_mean_of_the_neighbours() -> None:
    """Rong et al.'s weights: 1/6 for the four edge neighbours, 1/12 for the diagonal ones."""
    image = np.array([[5.0, 1.0, 6.0], [2.0, 0.0, 3.0], [7.0, 4.0, 8.0]], np.float32)[..., None]
    centre = np.zeros((3, 3), bool)
    centre[1, 1] = True
    filled = np.asarray(road.impute(jnp.asarray(image), jnp.asarray(centre)))
    assert filled[1, 1, 0] == pytest.approx((1 + 2 + 3 + 4) / 6 + (5 + 6 + 7 + 8) / 12, rel=1e-5)
    np.testing.assert_array_equal(np.delete(filled.ravel(), 4), np.delete(image.ravel(), 4))
    # A corner has three neighbours inside the image: their weights are renormalised.
    corner = np.zeros((3, 3), bool)
    corner[0, 0] = True
    filled = np.asarray(road.impute(jnp.asarray(image), jnp.asarray(corner)))
    assert filled[0, 0, 0] == pytest.approx((1 / 6 + 2 / 6 + 0 / 12) / (5 / 12), rel=1e-5)


def test_infidelity_fits_the_best_non_negative_scale_worked_by_hand() -> None:
    squares = np.zeros((2, 2, 2), bool)
    squares[0, 0, 0] = True  # one pixel
    squares[1] = True  # the whole image
    maps = np.array([[[[1.0, 0.0], [0.0, 1.0]]]])  # summed over the squares: a = (1, 2)
    got = infidelity.infidelity(maps, squares, np.array([[1.0, 2.0], [2.0, 1.0], [-1.0, -2.0], [0.0, 0.0]]))
    # b = a: predicted exactly. b = (2, 1): 1 - (ab)² / (a² b²) = 1 - 16 / 25. b = -a: beta 0, so 1.
    np.testing.assert_allclose(got[:3, 0], [0.0, 0.36, 1.0], atol=1e-12)
    assert np.isnan(got[3, 0])  # no square changed the probability
    scaled = infidelity.infidelity(7 * maps, squares, np.array([[2.0, 1.0]]))
    assert scaled[0, 0] == pytest.approx(0.36)  # the map's scale does not matter


def test_max_sensitivity_is_the_largest_relative_change_worked_by_hand() -> None:
    original = np.array([[[[3.0, 4.0]]]])  # one image, one method, a 1x2 map of norm 5
    perturbed = np.stack([original + np.array([0.0, 1.0]), original + np.array([3.0, 0.0])])
    assert infidelity.max_sensitivity(original, perturbed)[0, 0] == pytest.approx(3 / 5)
    assert np.isnan(infidelity.max_sensitivity(0 * original, perturbed)[0, 0])


def test_sensitivity_inputs_stay_in_the_box_and_depend_on_seed_index_and_sample() -> None:
    images = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32) * 4
    noisy = infidelity.sensitivity_inputs(images, seed=1, indices=np.array([5, 9]), sample=0)
    spread = images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))
    change = np.abs(noisy - images).max(axis=(1, 2, 3))
    assert np.all(change <= infidelity.SENSITIVITY_RADIUS * spread + 1e-6) and np.all(change > 0)
    alone = infidelity.sensitivity_inputs(images[1:], seed=1, indices=np.array([9]), sample=0)
    np.testing.assert_array_equal(alone[0], noisy[1])
    assert not np.allclose(infidelity.sensitivity_inputs(images, 1, np.array([5, 9]), sample=1), noisy)


def test_square_masks_are_squares_inside_the_image_from_the_seed() -> None:
    masks = infidelity.square_masks(16, 12, count=50, seed=3)
    for mask in masks:
        rows, cols = np.nonzero(mask)
        side = rows.max() - rows.min() + 1
        assert side == cols.max() - cols.min() + 1 and mask.sum() == side * side
        assert 12 // 8 <= side <= 12 // 2
    np.testing.assert_array_equal(masks, infidelity.square_masks(16, 12, count=50, seed=3))
    assert not np.array_equal(masks, infidelity.square_masks(16, 12, count=50, seed=4))


def test_curve_ends_are_computed_once_for_every_map() -> None:
    pixels, methods = 4, 2
    counts = faithfulness.step_counts(2, pixels)  # 0, 2, 4 pixels
    method, count, deleting = faithfulness.curve_points(counts, methods)
    distinct, back = faithfulness.distinct_points(method, count, deleting, pixels)
    ranks = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])  # two maps ordering four pixels oppositely

    def shown(i: int) -> tuple[str, ...]:
        """What each pixel shows at point i: the image, the removal value or the blurred start."""
        changed = ranks[method[i]] < count[i]
        if deleting[i]:
            return tuple("removed" if c else "image" for c in changed)
        return tuple("image" if c else "start" for c in changed)

    points = len(method)
    assert [shown(int(distinct[back[i]])) for i in range(points)] == [shown(i) for i in range(points)]
    assert len({shown(int(i)) for i in distinct}) == len(distinct) == 7  # 3 shared ends, 2 maps x 2 middles
