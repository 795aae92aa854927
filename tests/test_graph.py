"""Layer discovery: names, kinds, shapes, parameters, FLOPs and receptive fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SPEC

from reportgen import api
from reportgen.model.load import load_model


def test_linen_layers_match_the_definition(linen_checkpoint: Path) -> None:
    model = api.load_model(f"{SPEC}:TinyLinen", linen_checkpoint)
    got = [(layer.name, layer.kind, layer.output_shape, layer.params) for layer in api.layer_info(model)]
    assert got == [
        ("conv1", "conv", (8, 8, 8), 3 * 3 * 3 * 8 + 8),
        ("ResidualBlock_0/Conv_0", "conv", (8, 8, 8), 3 * 3 * 8 * 8 + 8),
        ("ResidualBlock_0/BatchNorm_0", "norm", (8, 8, 8), 4 * 8),  # scale, bias, mean, var
        ("ResidualBlock_0", "merge", (8, 8, 8), 0),  # conv1 + relu(BatchNorm_0)
        ("max_pool_0", "max_pool", (4, 4, 8), 0),
        ("avg_pool_0", "avg_pool", (2, 2, 8), 0),
        ("global_avg_pool_0", "global_avg_pool", (8,), 0),
        ("Dense_0", "dense", (3,), 8 * 3 + 3),
    ]
    assert model.graph.layer("conv1").activation == "relu"
    assert model.graph.layer("ResidualBlock_0/BatchNorm_0").activation == "relu"
    assert model.num_params == sum(layer.params for layer in model.graph.layers)


def test_nnx_layers_use_attribute_paths(nnx_checkpoint: Path) -> None:
    model = load_model(f"{SPEC}:TinyNNX", nnx_checkpoint)
    got = [(layer.name, layer.kind, layer.output_shape, layer.params) for layer in model.graph.layers]
    assert got == [
        ("conv1", "conv", (8, 8, 8), 224),
        ("bn", "norm", (8, 8, 8), 32),
        ("max_pool_0", "max_pool", (4, 4, 8), 0),
        ("global_avg_pool_0", "global_avg_pool", (8,), 0),
        ("head", "dense", (3,), 27),
    ]
    assert model.api == "nnx"


def test_receptive_fields_of_a_known_stack(tmp_path: Path) -> None:
    import tiny_models
    from conftest import save

    ckpt = save(tmp_path / "ck", tiny_models.init_linen(tiny_models.TwoConvPool()))
    layers = {layer.name: layer for layer in load_model(f"{SPEC}:TwoConvPool", ckpt).graph.layers}
    assert layers["a"].receptive_field.size == (3, 3)
    assert layers["b"].receptive_field.size == (5, 5)
    assert layers["b"].receptive_field.stride == (1, 1)
    pool = layers["max_pool_0"].receptive_field
    assert pool.size == (6, 6) and pool.stride == (2, 2)
    # Unit 0 of the pool sees input rows -2..3 with SAME padding: centre 0.5.
    assert pool.start == (0.5, 0.5)
    assert layers["head"].receptive_field is None


def test_receptive_fields_and_flops_of_strided_dilated_and_pooled_layers(tmp_path: Path) -> None:
    import tiny_models
    from conftest import save

    ckpt = save(tmp_path / "ck", tiny_models.init_linen(tiny_models.StridedDilated()))
    layers = {layer.name: layer for layer in load_model(f"{SPEC}:StridedDilated", ckpt).graph.layers}
    strided, dilated, pool = layers["strided"], layers["dilated"], layers["avg_pool_0"]
    assert (strided.receptive_field.size, strided.receptive_field.stride) == ((3, 3), (2, 2))
    assert (dilated.receptive_field.size, dilated.receptive_field.stride) == ((11, 11), (2, 2))
    assert (pool.receptive_field.size, pool.receptive_field.stride) == ((13, 13), (4, 4))
    outputs = 4 * 4 * 4  # 8x8 input, stride 2, SAME padding; the dilated conv keeps 4x4
    # 2 per multiply-add (3x3x3 and 3x3x4 taps; dilation spreads taps, it adds none), bias, relu.
    assert strided.flops == 2 * outputs * 27 + outputs + outputs
    assert dilated.flops == 2 * outputs * 36 + outputs + outputs


def test_flops_of_a_convolution(linen_checkpoint: Path) -> None:
    conv1 = load_model(f"{SPEC}:TinyLinen", linen_checkpoint).graph.layer("conv1")
    outputs = 8 * 8 * 8
    # 2 per multiply-add of the 3x3x3 kernel, plus the bias add and the relu.
    assert conv1.flops == 2 * outputs * 27 + outputs + outputs


def test_unknown_layer_name_lists_the_valid_ones(linen_checkpoint: Path) -> None:
    graph = load_model(f"{SPEC}:TinyLinen", linen_checkpoint).graph
    with pytest.raises(KeyError, match="conv1"):
        graph.layer("nope")


def test_merges_are_layers_named_after_their_block(linen_checkpoint: Path, tmp_path: Path) -> None:
    import tiny_models
    from conftest import save

    graph = load_model(f"{SPEC}:TinyLinen", linen_checkpoint).graph
    merge = graph.layer("ResidualBlock_0")
    # The union of the skip path's 3x3 field (conv1) and the block path's 5x5 (conv1 then Conv_0).
    assert merge.receptive_field.size == (5, 5) and merge.activation is None
    assert graph.cam_layer == "ResidualBlock_0"  # the last feature map before pooling
    assert graph.last_conv == "ResidualBlock_0/Conv_0"

    ckpt = save(tmp_path / "ck", tiny_models.init_linen(tiny_models.Branches()))
    graph = load_model(f"{SPEC}:Branches", ckpt).graph
    joined = graph.layer("Mixed")
    assert (joined.kind, joined.output_shape, joined.activation) == ("merge", (6, 6, 5), "relu")
    assert joined.receptive_field.size == (5, 5)  # the wider of a 1x1 and a 5x5 branch
    assert graph.cam_layer == "Mixed"
