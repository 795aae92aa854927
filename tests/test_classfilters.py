"""Which filters decide each class: contributions worked by hand, averaging and ordering."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import tiny_models
from conftest import SPEC, save

from reportgen import api
from reportgen.analyses import classfilters
from reportgen.compute import map_examples
from reportgen.model.engine import Engine


def test_contributions_of_a_linear_head_are_activation_times_weight_and_add_up_to_the_logit(tmp_path: Path) -> None:
    variables = tiny_models.init_linen(tiny_models.LinearConv(), seed=12)
    model = api.load_model(f"{SPEC}:LinearConv", save(tmp_path / "ck", variables))
    p = jax.tree.map(np.asarray, variables["params"])
    x = np.random.default_rng(3).uniform(0, 1, (4, 6, 6, 3)).astype(np.float32)
    targets = np.array([2, 0, 1, 2], np.int32)
    engine = Engine(model.graph)

    def per_example(v, image, target):
        return classfilters.image_evidence(engine, v, image, target, ["mix"]).per_filter(["mix"])

    got = map_examples(per_example, (model.variables,), x, targets, chunk=3)["mix"]
    acts = np.einsum("nhwc,cf->nhwf", x, p["mix"]["kernel"][0, 0]) + p["mix"]["bias"]  # (N, 6, 6, 2)
    v = p["out"]["kernel"].reshape(6, 6, 2, 3)[..., targets].transpose(3, 0, 1, 2)  # d logit / d A
    np.testing.assert_allclose(got["contribution"], (acts * v).sum(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["weight"], v.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    logits = api.predict(model, x)[np.arange(4), targets]
    np.testing.assert_allclose(
        got["contribution"].sum(axis=1) + p["out"]["bias"][targets], logits, rtol=1e-4, atol=1e-5
    )


def test_per_class_means_and_shares_by_hand() -> None:
    values = np.array([[1.0, 3.0], [3.0, -1.0], [2.0, 2.0]])
    classes = np.array([0, 0, 2])
    means = classfilters.per_class(values, classes, 3)
    np.testing.assert_allclose(means[0], [2.0, 1.0])
    assert np.isnan(means[1]).all()  # no images of class 1
    np.testing.assert_allclose(means[2], [2.0, 2.0])
    evidence = classfilters.LayerEvidence("conv", np.array([[3.0, -1.0, 1.0]]), np.zeros((1, 3)))
    np.testing.assert_allclose(evidence.share(), [[0.75, -0.25, 0.25]])
    np.testing.assert_array_equal(evidence.top(0, 2), [0, 2])


def test_orders_put_classes_sharing_filters_together() -> None:
    # Classes 0 and 2 rely on filters 0 and 1; classes 1 and 3 on filter 2; class 4 has no images.
    contribution = np.array(
        [[5.0, 4.0, 0.0], [0.0, 0.1, 6.0], [4.0, 5.0, 0.1], [0.2, 0.0, 5.0], [np.nan, np.nan, np.nan]]
    )
    order = classfilters.class_order(contribution)
    assert order[-1] == 4
    position = {int(k): i for i, k in enumerate(order)}
    assert abs(position[0] - position[2]) == 1 and abs(position[1] - position[3]) == 1
    share = np.array([[0.1, 0.8, 0.0, -0.2], [0.0, 0.1, 0.0, 0.9]])
    # Class 0: filter 1, then filter 0 (weakly); class 1: filter 3; filter 2 serves no class.
    np.testing.assert_array_equal(classfilters.filter_order(share), [1, 0, 3, 2])


def test_api_class_filters_averages_over_each_class_and_defaults_to_the_prediction(tmp_path: Path) -> None:
    variables = tiny_models.init_linen(tiny_models.LinearConv(), seed=13)
    model = api.load_model(f"{SPEC}:LinearConv", save(tmp_path / "ck", variables))
    p = jax.tree.map(np.asarray, variables["params"])
    x = np.random.default_rng(4).uniform(0, 1, (5, 6, 6, 3)).astype(np.float32)
    acts = np.einsum("nhwc,cf->nhwf", x, p["mix"]["kernel"][0, 0]) + p["mix"]["bias"]
    kernel = p["out"]["kernel"].reshape(6, 6, 2, 3)

    def by_hand(targets: np.ndarray) -> np.ndarray:
        per_image = np.einsum("nhwf,hwfn->nf", acts, kernel[..., targets])
        return np.stack(
            [per_image[targets == k].mean(axis=0) if (targets == k).any() else [np.nan] * 2 for k in range(3)]
        )

    given = np.array([0, 0, 2, 2, 2])
    got = api.class_filters(model, x, given)["mix"]
    np.testing.assert_allclose(got["contribution"], by_hand(given), rtol=1e-4, atol=1e-5)
    assert np.isnan(got["contribution"][1]).all()
    predicted = api.predict(model, x).argmax(axis=-1)
    np.testing.assert_allclose(
        api.class_filters(model, x)["mix"]["contribution"], by_hand(predicted), rtol=1e-4, atol=1e-5
    )


def test_conductance_of_a_linear_head_is_the_activation_change_times_the_weight(tmp_path: Path) -> None:
    variables = tiny_models.init_linen(tiny_models.LinearConv(), seed=5)
    model = api.load_model(f"{SPEC}:LinearConv", save(tmp_path / "ck", variables))
    p = jax.tree.map(np.asarray, variables["params"])
    x = np.random.default_rng(8).uniform(0, 1, (3, 6, 6, 3)).astype(np.float32)
    baseline = np.full((6, 6, 3), 0.25, np.float32)
    targets = np.array([1, 1, 2], np.int32)
    got = api.class_filters(model, x, targets, ["mix"], conductance_steps=3, baseline=baseline)["mix"]
    change = np.einsum("nhwc,cf->nhwf", x - baseline, p["mix"]["kernel"][0, 0])  # A(x) - A(baseline)
    v = p["out"]["kernel"].reshape(6, 6, 2, 3)[..., targets].transpose(3, 0, 1, 2)
    per_image = (change * v).sum(axis=(1, 2))
    np.testing.assert_allclose(got["conductance"][1], per_image[:2].mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["conductance"][2], per_image[2], rtol=1e-4, atol=1e-5)
    assert np.isnan(got["conductance"][0]).all()


def test_conductance_at_a_layer_every_path_crosses_adds_up_to_the_logit_change(linen_checkpoint: Path) -> None:
    model = api.load_model(f"{SPEC}:TinyLinen", linen_checkpoint)
    x = np.random.default_rng(9).uniform(0, 1, (6, 8, 8, 3)).astype(np.float32)
    targets = np.array([0, 1, 2, 0, 1, 2], np.int32)
    got = api.class_filters(model, x, targets, ["conv1"], conductance_steps=32)["conv1"]["conductance"]
    logits = api.predict(model, x)[np.arange(6), targets]
    at_black = api.predict(model, np.zeros((1, 8, 8, 3), np.float32))[0, targets]
    change = np.array([(logits - at_black)[targets == k].mean() for k in range(3)])
    np.testing.assert_allclose(got.sum(axis=1), change, atol=1e-2 * np.abs(change).max())
