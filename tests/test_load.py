"""Model specs and checkpoint restore, including every way they can be wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tiny_models
from conftest import SPEC, linen_variables, save

from reportgen.errors import UserError
from reportgen.model.engine import Engine
from reportgen.model.load import load_model


def test_batch_stats_are_restored_and_used(linen_checkpoint: Path) -> None:
    model = load_model(f"{SPEC}:TinyLinen", linen_checkpoint)
    restored = model.variables["batch_stats"]["ResidualBlock_0"]["BatchNorm_0"]["mean"]
    np.testing.assert_array_equal(restored, linen_variables()["batch_stats"]["ResidualBlock_0"]["BatchNorm_0"]["mean"])
    x = np.random.default_rng(0).uniform(0, 1, (8, 8, 3)).astype(np.float32)
    expected = tiny_models.TinyLinen().apply(linen_variables(), x[None])[0]
    np.testing.assert_allclose(Engine(model.graph).logits(model.variables, x), expected, rtol=1e-5, atol=1e-6)


def test_factory_and_instance_specs(linen_checkpoint: Path) -> None:
    assert load_model(f"{SPEC}:make_tiny_linen", linen_checkpoint).layers[0] == "conv1"


def test_package_module_spec(linen_checkpoint: Path) -> None:
    assert load_model("tiny_models:TinyLinen", linen_checkpoint).api == "linen"


def test_checkpoint_manager_root_latest_and_chosen_step(tmp_path: Path) -> None:
    root = tmp_path / "run"
    variables = linen_variables()
    with ocp.CheckpointManager(root.resolve()) as manager:
        for step in (10, 20):
            scaled = jax.tree.map(lambda a, s=step: a * (s / 10), variables)
            manager.save(step, args=ocp.args.StandardSave(scaled))
        manager.wait_until_finished()
    latest = load_model(f"{SPEC}:TinyLinen", root)
    first = load_model(f"{SPEC}:TinyLinen", root, step=10)
    assert latest.checkpoint.step == 20 and first.checkpoint.step == 10
    kernel = variables["params"]["conv1"]["kernel"]
    np.testing.assert_allclose(latest.variables["params"]["conv1"]["kernel"], kernel * 2)
    with pytest.raises(UserError, match="available steps: 10, 20"):
        load_model(f"{SPEC}:TinyLinen", root, step=30)


def test_train_state_with_optimizer_state(tmp_path: Path) -> None:
    variables = linen_variables()
    opt_state = optax.adam(1e-3).init(variables["params"])
    state = {
        "step": np.int32(5),
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt_state": opt_state,
    }
    ckpt = save(tmp_path / "state", jax.tree.map(np.asarray, state))
    assert load_model(f"{SPEC}:TinyLinen", ckpt).num_params == tiny_models_param_count()


def tiny_models_param_count() -> int:
    return sum(int(np.size(a)) for a in jax.tree.leaves(linen_variables()))


def test_params_only_checkpoint(tmp_path: Path) -> None:
    variables = tiny_models.init_linen(tiny_models.TwoConvPool())
    ckpt = save(tmp_path / "p", variables["params"])
    assert load_model(f"{SPEC}:TwoConvPool", ckpt).layers == ["a", "b", "max_pool_0", "head"]


@pytest.mark.parametrize(
    ("spec", "checkpoint", "message"),
    [
        ("nowhere/model.py:Net", "ck", "model file nowhere/model.py does not exist"),
        ("TinyLinen", "ck", "not of the form"),
        (f"{SPEC}:Missing", "ck", "has no attribute 'Missing'"),
        (f"{SPEC}:SPEC_NOT_A_MODULE", "ck", "not a Flax"),
        (f"{SPEC}:TinyLinen", "/does/not/exist", "does not exist"),
    ],
)
def test_bad_specs_and_paths(spec: str, checkpoint: str, message: str, linen_checkpoint: Path) -> None:
    if checkpoint == "ck":
        checkpoint = str(linen_checkpoint)
    with pytest.raises(UserError, match=message):
        load_model(spec.replace("SPEC_NOT_A_MODULE", "jax"), checkpoint)


def test_checkpoint_of_a_different_model_lists_the_leaves(linen_checkpoint: Path) -> None:
    with pytest.raises(UserError) as info:
        load_model(f"{SPEC}:TwoConvPool", linen_checkpoint)
    message = str(info.value)
    assert "\n" not in message
    # TwoConvPool has 6 leaves (a, b, head), TinyLinen 10 (4 modules' params plus 2 batch stats).
    assert "6 missing (params/a/bias, params/a/kernel, params/b/bias, +3 more)" in message
    assert "10 unexpected (batch_stats/" in message


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    variables = tiny_models.init_linen(tiny_models.TinyLinen(num_classes=5))
    ckpt = save(tmp_path / "five", variables)
    with pytest.raises(
        UserError, match=r"mismatched.*params/Dense_0/bias: checkpoint float32\(5,\) vs model float32\(3,\)"
    ):
        load_model(f"{SPEC}:TinyLinen", ckpt)
    # The right constructor arguments make it load.
    assert load_model(f"{SPEC}:TinyLinen", ckpt, model_kwargs={"num_classes": 5}).graph.num_classes == 5


def test_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="is not an orbax checkpoint"):
        load_model(f"{SPEC}:TinyLinen", tmp_path)


# tensorstore's outstanding reads call back into orbax's closed event loop after the failed restore
# (see `load._silent_stderr_on_failure`); pytest reports that callback's error as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_checkpoint(linen_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(linen_checkpoint, broken)
    for f in broken.rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.unlink()
    with pytest.raises(UserError, match="truncated"):
        load_model(f"{SPEC}:TinyLinen", broken)


def test_model_without_convolution(tmp_path: Path) -> None:
    ckpt = save(tmp_path / "dense", tiny_models.init_linen(tiny_models.NoConv()))
    with pytest.raises(UserError, match="no convolution"):
        load_model(f"{SPEC}:NoConv", ckpt)


def test_wrong_input_channels(linen_checkpoint: Path) -> None:
    with pytest.raises(
        UserError, match=r"conv1/kernel: checkpoint float32\(3, 3, 3, 8\) vs model float32\(3, 3, 5, 8\)"
    ):
        load_model(f"{SPEC}:TinyLinen", linen_checkpoint, input_shape=(8, 8, 5))


def test_input_too_small_for_the_model(tmp_path: Path) -> None:
    ckpt = save(tmp_path / "ck", tiny_models.init_linen(tiny_models.TwoConvPool()))
    with pytest.raises(UserError, match=r"does not match|cannot run"):
        load_model(f"{SPEC}:TwoConvPool", ckpt, input_shape=(10, 10, 1))
