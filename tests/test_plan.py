"""The planner (costs, pass budgets, batching, time budgets) and the batched drivers it feeds."""

from __future__ import annotations

import dataclasses
import gc
import io
import math
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models
from conftest import SPEC, save

from reportgen import api, compute, plan, visualisation
from reportgen.analyses import faithfulness
from reportgen.config import Settings, as_dict
from reportgen.errors import UserError
from reportgen.model.load import LoadedModel
from reportgen.progress import Progress


@pytest.fixture(scope="module")
def two_conv(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    variables = tiny_models.init_linen(tiny_models.TwoConvPool(), seed=2)
    return api.load_model(f"{SPEC}:TwoConvPool", save(tmp_path_factory.mktemp("two") / "ck", variables))


def test_model_cost_by_hand(two_conv: LoadedModel) -> None:
    cost = plan.model_cost(two_conv.graph)
    # 12x12x1 input, SAME 3x3 convs: a (1 -> 2), b (2 -> 2), 2x2 max pool, dense 72 -> 2. A conv
    # layer counts its multiply-adds twice, plus one operation per output for the bias and the ReLU.
    outputs = 144 * 2
    a, b = 2 * outputs * 9 * 1 + 2 * outputs, 2 * outputs * 9 * 2 + 2 * outputs
    assert cost.layer_flops["a"] == a
    assert cost.layer_flops["b"] == a + b
    assert cost.forward_flops >= a + b + 2 * 72 * 2
    outputs = sum(4 * math.prod(layer.output_shape) for layer in two_conv.graph.layers)
    assert cost.activation_bytes >= outputs
    assert cost.layer_bytes["a"] < cost.layer_bytes["b"] <= cost.activation_bytes
    assert cost.widest_layer in ("a", "b")


@pytest.mark.parametrize("passes", [1, 2, 5, 12, 100])
@pytest.mark.parametrize("inner", [1, 7, 16, 50])
@pytest.mark.parametrize("devices", [1, 4])
def test_split_stays_within_the_budget_with_equal_slices(passes: int, inner: int, devices: int) -> None:
    outer = 43
    chunk, batch = plan.split(passes, outer, inner, devices)
    slices = -(-inner // batch)
    assert 1 <= batch <= inner
    assert batch * slices - inner < slices  # at most one padded point per slice
    assert chunk % devices == 0
    if passes >= devices * batch:
        assert chunk * batch <= max(passes, devices * batch)
    else:
        assert batch == 1 or batch <= passes


def test_a_model_that_cannot_fit_one_example_is_refused(two_conv: LoadedModel) -> None:
    cost = plan.model_cost(two_conv.graph)
    with pytest.raises(UserError, match=r"one example needs about .* KiB .*widest layer [ab]\b.*memory_budget"):
        plan.budget(cost, 1e-9, "cpu", 2**34)
    passes = plan.budget(cost, 0.0, "cpu", 2**34)
    assert passes.gradient >= 1 and passes.forward >= passes.gradient


def workload(filters: int) -> plan.Workload:
    return plan.Workload(12, 4, 12, 4, 3, {"a": min(filters, 2), "b": filters}, 2)


def test_profile_time_budget_samples_the_most_active_filters_first(two_conv: LoadedModel) -> None:
    graph = two_conv.graph
    cost = plan.model_cost(graph)
    passes = plan.Budget(2**30, forward=8, gradient=4)
    settings = Settings(model="m", checkpoint="c", time_budget=math.inf)
    full = plan.make_plan(settings, graph, cost, passes, plan.Throughput(1e6, 1e6, 1e6, 3.0), workload(2))
    assert full.sampled == () and full.settings.visualisation.filters == 0
    limit = full.estimated_seconds * 0.6
    tight = plan.make_plan(
        dataclasses.replace(settings, time_budget=limit),
        graph,
        cost,
        passes,
        plan.Throughput(1e6, 1e6, 1e6, 3.0),
        workload(2),
    )
    assert tight.sampled, "an over-budget plan must say what it sampled"
    assert tight.estimated_seconds <= limit
    assert tight.settings.visualisation.filters < 2 or tight.settings.attribution.images < 12
    assert any("time_budget = inf" in line for line in tight.sampled)


def test_a_sampled_plan_estimates_what_its_settings_will_compute(two_conv: LoadedModel) -> None:
    """The estimate of an over-budget plan is of the work its chosen settings really do: a
    filter cap keeps up to that many filters in every layer, so a narrow layer keeps all of its
    own (a proportional cut per layer would underestimate it)."""
    graph, cost = two_conv.graph, plan.model_cost(two_conv.graph)
    passes, throughput = plan.Budget(2**30, forward=8, gradient=4), plan.Throughput(1e6, 1e6, 1e6, 3.0)
    work = plan.Workload(12, 4, 12, 4, 3, {"a": 2, "b": 16}, 2)
    settings = Settings(model="m", checkpoint="c", time_budget=math.inf)
    full = plan.make_plan(settings, graph, cost, passes, throughput, work)
    tight = plan.make_plan(
        dataclasses.replace(settings, time_budget=full.estimated_seconds * 0.5), graph, cost, passes, throughput, work
    )
    chosen = tight.settings
    cap = chosen.visualisation.filters
    assert 2 < cap < 16, "the cap must bind on the wide layer only for this check"
    explained = min(chosen.attribution.images or 12, 12)
    done = plan.Workload(
        12, 4, explained, min(chosen.attribution.sanity_images, 4, explained),
        min(chosen.attribution.sanity_stages or 3, 3), {"a": 2, "b": cap}, min(chosen.visualisation.classes or 2, 2),
    )  # fmt: skip
    assert tight.stages == tuple(plan.stage_plans(chosen, graph, cost, passes, throughput, done))


def sampled_counts(settings: Settings) -> dict[str, int]:
    return {key: getattr(getattr(settings, key.split(".")[0]), key.split(".")[1]) for key in plan.SAMPLED_SETTINGS}


def test_a_build_repeats_the_sampling_of_the_release_before_it(two_conv: LoadedModel) -> None:
    """Two releases planned on a machine whose measured speed differs by 30 % would sample
    different filters, images and stages; the second repeats the first's, so that their diff
    compares like with like, unless that is estimated far over its time or its budget differs."""
    graph, cost = two_conv.graph, plan.model_cost(two_conv.graph)
    passes = plan.Budget(2**30, forward=8, gradient=4)
    work = plan.Workload(12, 4, 12, 4, 3, {"a": 2, "b": 16}, 2)
    fast, slower, much_slower = (plan.Throughput(r, r, r, 3.0) for r in (1e6, 0.77e6, 0.3e6))
    unlimited = Settings(model="m", checkpoint="c", time_budget=math.inf)
    limit = plan.make_plan(unlimited, graph, cost, passes, fast, work).estimated_seconds * 0.5
    settings = dataclasses.replace(unlimited, time_budget=limit)
    first = plan.make_plan(settings, graph, cost, passes, fast, work)
    precedent = plan.Precedent.of("release v1", as_dict(first.settings), first.sampled)
    assert precedent is not None and precedent.time_budget == limit

    anew = plan.make_plan(settings, graph, cost, passes, slower, work)
    assert sampled_counts(anew.settings) != sampled_counts(first.settings), "the speeds must change the sampling"
    repeated = plan.make_plan(settings, graph, cost, passes, slower, work, precedent=precedent)
    assert sampled_counts(repeated.settings) == sampled_counts(first.settings)
    assert any("release v1 sampled the same, and this build repeats it" in line for line in repeated.sampled)
    assert [stage.flops for stage in repeated.stages] == [stage.flops for stage in first.stages]  # the same work

    too_slow = plan.make_plan(settings, graph, cost, passes, much_slower, work, precedent=precedent)
    assert too_slow.estimated_seconds <= limit
    assert any("release v1's sampling was estimated at" in line for line in too_slow.sampled)
    other_budget = dataclasses.replace(settings, time_budget=limit * 0.9)
    assert plan.make_plan(other_budget, graph, cost, passes, slower, work, precedent=precedent).sampled == (
        plan.make_plan(other_budget, graph, cost, passes, slower, work).sampled
    )
    assert plan.Precedent.of("release v0", as_dict(settings), ()) is None


def test_map_inner_sums_and_concatenates_whatever_the_batching() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    w = rng.normal(size=(11,)).astype(np.float32)
    scale = np.float32(2.0)

    def products(s: jax.Array, row: jax.Array, weights: jax.Array) -> jax.Array:
        return s * row[None, :] * weights[:, None]  # (B, 3)

    def summed(s: jax.Array, row: jax.Array, weights: jax.Array) -> jax.Array:
        return products(s, row, weights).sum(axis=0)

    expected = 2.0 * x[:, None, :] * w[None, :, None]
    for chunk, batch in ((1, 1), (3, 4), (7, 11), (64, 64)):
        joined = compute.map_inner(products, (scale,), (x,), (w,), chunk=chunk, inner_batch=batch, combine="concat")
        np.testing.assert_allclose(joined, expected, rtol=1e-6)
        total = compute.map_inner(summed, (scale,), (x,), (w,), chunk=chunk, inner_batch=batch, combine="sum")
        np.testing.assert_allclose(total, expected.sum(axis=1), rtol=1e-5)


def test_every_method_is_independent_of_the_pass_budget(tmp_path: Path) -> None:
    variables = tiny_models.init_linen(tiny_models.ConvGap(), seed=6)
    model = api.load_model(f"{SPEC}:ConvGap", save(tmp_path / "ck", variables))
    x = np.random.default_rng(3).normal(size=(5, 6, 6, 3)).astype(np.float32)
    options = {"smoothgrad_samples": 5, "ig_steps": 7, "occlusion_window": 3, "occlusion_stride": 2}
    results = [api.attribute(model, x, chunk=c, **options) for c in (1, 3, 64)]
    for name, value in results[0].items():
        if name == "layer_cams":
            continue
        for other in results[1:]:
            np.testing.assert_allclose(other[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_faithfulness_curves_are_independent_of_the_pass_budget(tmp_path: Path) -> None:
    from reportgen.analyses.methods import AttributionConfig
    from reportgen.attribution import MethodRunner
    from reportgen.model.engine import Engine

    variables = tiny_models.init_linen(tiny_models.ConvGap(), seed=6)
    model = api.load_model(f"{SPEC}:ConvGap", save(tmp_path / "ck", variables))
    runner = MethodRunner(
        Engine(model.graph), AttributionConfig(faithfulness_steps=5), "conv", ["conv"], np.zeros((6, 6, 3))
    )
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 6, 6, 3)).astype(np.float32)
    maps = rng.normal(size=(3, 2, 6, 6)).astype(np.float32)
    targets = np.array([0, 1, 0], np.int32)
    curves = [runner.curves(model.variables, x, targets, maps, plan.Budget(0, c, c)) for c in (1, 4, 500)]
    for deletion, insertion in curves[1:]:
        np.testing.assert_allclose(deletion, curves[0][0], rtol=1e-6)
        np.testing.assert_allclose(insertion, curves[0][1], rtol=1e-6)
    deletion, insertion = curves[0]
    assert deletion.shape == insertion.shape == (3, 2, 6)
    # Every curve ends where the other starts: all pixels deleted is the black image, none the image.
    probs = np.asarray(jax.nn.softmax(api.predict(model, x), axis=-1))[np.arange(3), targets]
    np.testing.assert_allclose(deletion[:, :, 0], probs[:, None].repeat(2, 1), rtol=1e-5)
    np.testing.assert_allclose(insertion[:, :, -1], probs[:, None].repeat(2, 1), rtol=1e-5)
    # Inside the curves, by hand: the 14 most important pixels of the second map (of 36; point 2 of 5
    # steps) set to black, or revealed on the blurred image.
    from reportgen.analyses.saliency import blur

    top = (faithfulness.pixel_ranks(maps[:, 1]) < 14)[..., None]
    blurred = np.stack([np.asarray(blur(jnp.asarray(image), sigma=6 / 4)) for image in x])
    for curve, edited in ((deletion, np.where(top, 0.0, x)), (insertion, np.where(top, x, blurred))):
        expected = np.asarray(jax.nn.softmax(api.predict(model, edited.astype(np.float32)), axis=-1))
        np.testing.assert_allclose(curve[:, 1, 2], expected[np.arange(3), targets], rtol=1e-5)


def test_a_run_sized_for_fewer_images_shares_their_programs(tmp_path: Path) -> None:
    """The attribution stage batches its images as it will batch the sanity images, so the sanity
    runs compile nothing new; batching that way changes no output."""
    from reportgen.analyses.methods import AttributionConfig
    from reportgen.attribution import MethodRunner
    from reportgen.model.engine import Engine

    variables = tiny_models.init_linen(tiny_models.ConvGap(), seed=6)
    model = api.load_model(f"{SPEC}:ConvGap", save(tmp_path / "ck", variables))
    config = AttributionConfig(smoothgrad_samples=3, ig_steps=4, occlusion_window=3, occlusion_stride=3)
    runner = MethodRunner(Engine(model.graph), config, "conv", ["conv"], np.zeros((6, 6, 3)))
    x = np.random.default_rng(5).normal(size=(6, 6, 6, 3)).astype(np.float32)
    targets, keys = np.full(6, -1, np.int32), compute.example_keys(0, np.arange(6))
    passes = plan.Budget(0, forward=4, gradient=4)

    def signatures() -> int:
        return sum(len(program._ready) for programs in compute._COMPILED.values() for program in programs.values())

    plain = runner.run(model.variables, x, targets, keys, passes)
    sized = runner.run(model.variables, x, targets, keys, passes, sized_for=2)
    before = signatures()
    runner.run(model.variables, x[:2], targets[:2], keys[:2], passes)
    assert signatures() == before
    for name, value in plain.raw.items():
        np.testing.assert_allclose(sized.raw[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_api_compiles_once_and_does_not_keep_models_alive(tmp_path: Path) -> None:
    variables = tiny_models.init_linen(tiny_models.ConvGap(), seed=6)
    model = api.load_model(f"{SPEC}:ConvGap", save(tmp_path / "ck", variables))
    rng = np.random.default_rng(5)
    for _ in range(2):
        api.saliency(model, rng.normal(size=(4, 6, 6, 3)).astype(np.float32), chunk=4)
    runner = next(v for k, v in api._RUNNERS[model].items() if k[0] == "runner")
    assert compute._compiled(runner._shared_pass(True, ()), 1, 2).jitted._cache_size() == 1
    alive = weakref.ref(model)
    del model, runner
    gc.collect()
    assert alive() is None


def test_progress_writes_one_line_per_stage_with_the_time_left() -> None:
    stream = io.StringIO()
    progress = Progress(stream=stream)
    progress.expect({"first": 1.0, "second": 3.0})
    progress.start("first", 2)
    jnp.zeros(3).block_until_ready()
    progress.advance(2)
    progress.finish()
    progress.start("second")
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("first") and "left" in lines[0]
    assert lines[1].startswith("second") and "left" not in lines[1]
    assert set(progress.peaks) == {"first", "second"} and progress.peaks["first"] > 0


def test_layers_share_a_visualisation_program_only_when_that_is_faster() -> None:
    # 4 filters each; 1 s per FLOP of a filter's optimisation; a compilation costs 10 s.
    # Shallow then deep: 4·1 + 10 and 4·100 + 10 alone, 8·100 + 10 together -> apart.
    assert plan.vis_groups({"a": 4, "b": 4}, {"a": 1, "b": 100}, 1.0, 10.0) == [("a",), ("b",)]
    # Similar depths: 14 + 18 alone against 8·2 + 10 = 26 together -> one program.
    assert plan.vis_groups({"a": 4, "b": 4}, {"a": 1, "b": 2}, 1.0, 10.0) == [("a", "b")]
    # Free compilation never merges; a third layer joins only the group just before it.
    assert plan.vis_groups({"a": 1, "b": 1}, {"a": 1, "b": 2}, 1.0, 0.0) == [("a",), ("b",)]
    three = plan.vis_groups({"a": 4, "b": 4, "c": 1}, {"a": 1, "b": 100, "c": 101}, 1.0, 10.0)
    assert three == [("a",), ("b", "c")]


def test_visualisation_stages_count_each_image_step_besides_the_model(two_conv: LoadedModel) -> None:
    """A visualisation stage's estimate adds the measured cost of an image's step outside the
    model (Fourier image, warp, penalties, Adam) for every filter, step and image, and the class
    stage for every class at its own step count; no other stage changes."""
    graph, cost = two_conv.graph, plan.model_cost(two_conv.graph)
    passes = plan.Budget(2**30, forward=8, gradient=4)
    settings = Settings(model="m", checkpoint="c", time_budget=math.inf)
    vis = settings.visualisation
    work = plan.Workload(12, 4, 12, 4, 3, {"a": 2, "b": 2}, 2)
    free = plan.stage_plans(settings, graph, cost, passes, plan.Throughput(1e6, 1e6, 1e6, 3.0), work)
    costly = plan.stage_plans(settings, graph, cost, passes, plan.Throughput(1e6, 1e6, 1e6, 3.0, 0.5), work)
    added = {a.name: b.estimated_seconds - a.estimated_seconds for a, b in zip(free, costly, strict=True)}
    expected = {
        s.name: 0.5 * sum(work.vis_filters[layer] for layer in s.layers) * vis.steps * vis.images_per_filter
        for s in free
        if s.layers
    }
    expected[plan.CLASS_STAGE] = 0.5 * work.classes * vis.class_steps * vis.images_per_filter
    assert expected and all(math.isclose(added[name], seconds) for name, seconds in expected.items())
    assert all(seconds == 0 for name, seconds in added.items() if name not in expected)


def test_the_free_visualiser_measures_a_step_without_the_model(two_conv: LoadedModel) -> None:
    """The planner times one step of the build's visualisation around the free objective; that
    step must move the image (so it does the real work) and reach no model variable."""
    settings = Settings(model="m", checkpoint="c")
    vis = visualisation.free_visualiser(settings, two_conv.input_shape)
    run = plan._one_step(vis)
    params, _ = run(None, jnp.zeros((3, *two_conv.input_shape)))
    keys = jax.random.key_data(jax.random.split(jax.random.key(0), 3))  # the keys `_one_step` uses
    start, _ = jax.vmap(vis.init, in_axes=(None, 0, 0))(None, jnp.zeros(3, jnp.int32), keys)
    assert params.shape == start.shape and not np.allclose(params, start)
