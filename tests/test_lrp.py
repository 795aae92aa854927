"""Layer-wise relevance propagation: the composite's rules against a network propagated by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SPEC, save

from reportgen import api
from reportgen.model.engine import Engine
from reportgen.model.load import LoadedModel
from reportgen.model.lrp import Composite

EPSILON = 1e-6


def stabilised(d: np.ndarray) -> np.ndarray:
    return d + EPSILON * np.where(d >= 0, 1.0, -1.0)


@pytest.fixture(scope="module")
def lrp_net(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, dict]:
    rng = np.random.default_rng(5)
    # Mostly positive weights with some negative ones, so that units fire and both signs matter.
    signs = {"first": [[1, -1, 1], [1, 1, -1]], "second": [[1, -1], [1, 1], [-1, 1]]}
    params = {
        "first": {"kernel": (np.abs(rng.normal(size=(2, 3))) * signs["first"]).reshape(1, 1, 2, 3).astype(np.float32)},
        "second": {
            "kernel": (np.abs(rng.normal(size=(3, 2))) * signs["second"]).reshape(1, 1, 3, 2).astype(np.float32)
        },
        "out": {"kernel": rng.normal(size=(8, 2)).astype(np.float32)},
    }
    variables = {"params": jax.tree.map(jnp.asarray, params)}
    model = api.load_model(f"{SPEC}:LrpNet", save(tmp_path_factory.mktemp("lrp") / "ck", variables))
    return model, params


def by_hand(x: np.ndarray, p: dict, target: int, gamma: float, low: float, high: float) -> np.ndarray:
    """Montavon et al. 2019's rules, one layer at a time: ε at the dense layer, γ at the second
    convolution, z^B at the first."""
    w1, w2, w3 = p["first"]["kernel"][0, 0], p["second"]["kernel"][0, 0], p["out"]["kernel"]
    a1 = np.maximum(x @ w1, 0)  # (2, 2, 3)
    a2 = np.maximum(a1 @ w2, 0)  # (2, 2, 2)
    f = a2.reshape(8)
    z3 = f @ w3
    r3 = np.zeros(2)
    r3[target] = z3[target]
    r_f = np.array([sum(f[j] * w3[j, k] * r3[k] / stabilised(z3[k]) for k in range(2)) for j in range(8)])
    r_a2 = r_f.reshape(2, 2, 2)  # a ReLU passes relevance on where it is active (elsewhere it is 0)
    w2g = w2 + gamma * np.maximum(w2, 0)
    r_a1 = np.zeros_like(a1)
    for pos in np.ndindex(2, 2):
        d = a1[pos] @ w2g
        r_a1[pos] = [sum(a1[pos][j] * w2g[j, k] * r_a2[pos][k] / stabilised(d[k]) for k in range(2)) for j in range(3)]
    plus, minus = np.maximum(w1, 0), np.minimum(w1, 0)
    r_x = np.zeros_like(x)
    for pos in np.ndindex(2, 2):
        zb = x[pos] @ w1 - low * plus.sum(axis=0) - high * minus.sum(axis=0)
        r_x[pos] = [
            sum(
                (x[pos][j] * w1[j, k] - low * plus[j, k] - high * minus[j, k]) * r_a1[pos][k] / stabilised(zb[k])
                for k in range(3)
            )
            for j in range(2)
        ]
    return r_x


@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0])
def test_lrp_matches_the_rules_propagated_by_hand(lrp_net, gamma: float) -> None:
    model, p = lrp_net
    engine = Engine(model.graph)
    x = np.random.default_rng(6).uniform(0, 1, (2, 2, 2)).astype(np.float32)
    assert not np.allclose(by_hand(x, p, 0, gamma, 0.0, 1.0), by_hand(x, p, 0, gamma + 0.5, 0.0, 1.0))
    for target in (0, 1):
        assert np.abs(by_hand(x, p, target, gamma, 0.0, 1.0)).sum() > 0.1
        got = engine.lrp(
            model.variables,
            jnp.asarray(x),
            jnp.int32(target),
            jnp.float32(0.0),
            jnp.float32(1.0),
            Composite(gamma, EPSILON),
        )
        np.testing.assert_allclose(got, by_hand(x.astype(np.float64), p, target, gamma, 0.0, 1.0), rtol=1e-4, atol=1e-5)


def test_relevance_is_conserved_from_the_logit_to_the_pixels(lrp_net) -> None:
    model, _ = lrp_net
    engine = Engine(model.graph)
    x = np.random.default_rng(7).uniform(0, 1, (5, 2, 2, 2)).astype(np.float32)
    logits = api.predict(model, x)
    for image, logit in zip(x, logits, strict=True):
        target = int(np.argmax(logit))
        relevance = engine.lrp(
            model.variables, jnp.asarray(image), jnp.int32(target), jnp.float32(0.0), jnp.float32(1.0)
        )
        assert float(relevance.sum()) == pytest.approx(float(logit[target]), rel=1e-4)


def test_api_and_the_report_runner_give_the_engine_relevance(lrp_net) -> None:
    model, _ = lrp_net
    engine = Engine(model.graph)
    x = np.random.default_rng(8).uniform(0, 1, (3, 2, 2, 2)).astype(np.float32)
    targets = np.array([1, 0, 1])
    expected = np.stack(
        [engine.lrp(model.variables, jnp.asarray(xi), jnp.int32(t), 0.0, 1.0) for xi, t in zip(x, targets, strict=True)]
    )
    np.testing.assert_allclose(api.lrp(model, x, targets), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(api.attribute(model, x, targets, methods=["lrp"])["lrp"], expected, rtol=1e-5, atol=1e-6)
    shifted = np.stack(
        [
            engine.lrp(model.variables, jnp.asarray(xi), jnp.int32(t), -1.0, 2.0)
            for xi, t in zip(x, targets, strict=True)
        ]
    )
    np.testing.assert_allclose(api.lrp(model, x, targets, low=-1.0, high=2.0), shifted, rtol=1e-5, atol=1e-6)
    assert not np.allclose(shifted, expected)


@pytest.mark.parametrize("scale_signs", [(1, 1, 1, 1, 1, 1, 1), (1, -1, 1, -1, -1, 1, -1)])
def test_batchnorm_is_relevance_as_if_folded_into_its_convolution(
    tmp_path_factory: pytest.TempPathFactory, scale_signs: tuple[int, ...]
) -> None:
    import tiny_models

    rng = np.random.default_rng(11)
    variables = jax.tree.map(np.array, tiny_models.init_linen(tiny_models.ConvBatchNorm(), seed=3))
    p, stats = variables["params"], variables["batch_stats"]
    folded = {"out": p["out"]}
    signs = np.array(scale_signs, np.float32)
    for conv, bn, sign in (("conv1", "bn1", signs[:4]), ("conv2", "bn2", signs[4:])):
        width = p[conv]["bias"].shape[0]
        p[conv]["bias"] = rng.normal(size=width).astype(np.float32) * 0.1
        p[bn]["scale"] = (rng.uniform(0.5, 1.5, width) * sign).astype(np.float32)
        p[bn]["bias"] = rng.normal(size=width).astype(np.float32) * 0.1
        stats[bn]["mean"] = rng.normal(size=width).astype(np.float32) * 0.1
        stats[bn]["var"] = rng.uniform(0.5, 2.0, width).astype(np.float32)
        s = p[bn]["scale"] / np.sqrt(stats[bn]["var"] + 1e-5)  # flax's BatchNorm epsilon
        folded[conv] = {
            "kernel": p[conv]["kernel"] * s,
            "bias": (p[conv]["bias"] - stats[bn]["mean"]) * s + p[bn]["bias"],
        }
    folder = tmp_path_factory.mktemp("bn")
    with_bn = api.load_model(f"{SPEC}:ConvBatchNorm", save(folder / "bn", variables))
    without = api.load_model(f"{SPEC}:ConvFolded", save(folder / "folded", {"params": folded}))
    x = rng.uniform(0, 1, (3, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(api.predict(with_bn, x), api.predict(without, x), rtol=1e-4, atol=1e-5)
    targets = np.array([0, 1, 0])
    np.testing.assert_allclose(
        api.lrp(with_bn, x, targets, gamma=0.5), api.lrp(without, x, targets, gamma=0.5), rtol=1e-3, atol=1e-5
    )


def test_a_scale_is_folded_only_into_a_convolution_whose_output_nothing_else_reads(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import tiny_models

    folder = tmp_path_factory.mktemp("skip")
    counts = {}
    for name in ("ConvBatchNorm", "ConvSkipBatchNorm"):
        variables = tiny_models.init_linen(getattr(tiny_models, name)())
        model = api.load_model(f"{SPEC}:{name}", save(folder / name, variables))
        counts[name] = len(Engine(model.graph).lrp_plan.scales)
    assert counts == {"ConvBatchNorm": 2, "ConvSkipBatchNorm": 0}
