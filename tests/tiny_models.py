"""Tiny Linen and NNX CNNs for the tests, importable as model specs (tests/tiny_models.py:NAME)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


class ResidualBlock(nn.Module):
    """conv -> BatchNorm -> relu, added to the input."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = nn.Conv(8, (3, 3))(x)
        y = nn.BatchNorm(use_running_average=not train)(y)
        return x + nn.relu(y)


class TinyLinen(nn.Module):
    """conv1+relu, a residual block with BatchNorm, max pool, avg pool, global mean, dropout, dense."""

    num_classes: int = 3
    input_shape = (8, 8, 3)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        x = ResidualBlock()(x, train)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class TwoConvPool(nn.Module):
    """Two 3x3 convs then a 2x2 stride-2 pool: receptive fields 3, 5 and 6 px."""

    input_shape = (12, 12, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(2, (3, 3), name="a")(x))
        x = nn.relu(nn.Conv(2, (3, 3), name="b")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(2, name="head")(x.reshape((x.shape[0], -1)))


class StridedDilated(nn.Module):
    """A stride-2 3x3 conv, a 3x3 conv with dilation 2, a 2x2 stride-2 average pool: receptive
    fields 3, 3 + 4 * 2 = 11 and 11 + 1 * 2 = 13 px, strides 2, 2 and 4."""

    input_shape = (8, 8, 3)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), name="strided")(x))
        x = nn.relu(nn.Conv(4, (3, 3), kernel_dilation=(2, 2), name="dilated")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(2, name="head")(x.reshape((x.shape[0], -1)))


class SignSplit(nn.Module):
    """1x1 conv into relu(x) and relu(-x), global mean, then logit = mean(relu(x)) - mean(relu(-x)).

    Weights are set by hand in the tests: conv kernel [[1, -1]], dense kernel [[1], [-1]].
    """

    input_shape = (2, 2, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(2, (1, 1), use_bias=False, name="split")(x))
        x = x.mean(axis=(1, 2))
        return nn.Dense(1, use_bias=False, name="out")(x)


class NoConv(nn.Module):
    """A dense-only model, which reportgen refuses."""

    input_shape = (4, 4, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(2)(x.reshape((x.shape[0], -1)))


class TinyNNX(nnx.Module):
    """NNX: conv -> BatchNorm -> relu -> max pool -> global mean -> dropout -> linear."""

    input_shape = (8, 8, 3)

    def __init__(self, rngs: nnx.Rngs, num_classes: int = 3) -> None:
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(8, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.conv1(x)))
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = self.drop(x.mean(axis=(1, 2)))
        return self.head(x)


def make_tiny_linen() -> TinyLinen:
    """A factory returning a Linen module."""
    return TinyLinen()


def init_linen(module: nn.Module, seed: int = 0) -> dict:
    """Real variables for a Linen test model."""
    return module.init(jax.random.key(seed), jnp.zeros((1, *module.input_shape)))


class LinearConv(nn.Module):
    """A linear model: 1x1 conv (no activation), flatten, dense. logits = x · W_eff + b."""

    input_shape = (6, 6, 3)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(2, (1, 1), name="mix")(x)
        return nn.Dense(3, name="out")(x.reshape((x.shape[0], -1)))


class ConvGap(nn.Module):
    """conv + relu, global average pooling, dense: Grad-CAM has a closed form."""

    input_shape = (6, 6, 3)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(3, name="out")(x.mean(axis=(1, 2)))


class EdgeNet(nn.Module):
    """One 5x5 conv filter on grayscale input, then global mean and a dense head."""

    input_shape = (16, 16, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(1, (5, 5), name="edge")(x))
        return nn.Dense(2, name="out")(x.mean(axis=(1, 2)))


class SoftmaxHead(nn.Module):
    """A model that returns probabilities instead of logits."""

    input_shape = (8, 8, 3)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.softmax(nn.Dense(3, name="head")(x.mean(axis=(1, 2))))


class ShrinkingNet(nn.Module):
    """Strided convolutions down to a 2x2 map, then 3x3 and dilated kernels wider than that map."""

    input_shape = (8, 8, 3)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(6, (3, 3), (2, 2), name="down1")(x))
        x = nn.relu(nn.Conv(6, (3, 3), (2, 2), name="down2")(x))
        x = nn.relu(nn.Conv(5, (3, 3), name="wide")(x))
        x = nn.relu(nn.Conv(5, (2, 2), kernel_dilation=(2, 2), padding=((1, 1), (0, 1)), name="dilated")(x))
        return nn.Dense(3, name="out")(x.reshape((x.shape[0], -1)))


class Mixed(nn.Module):
    """A 1x1 and a 5x5 branch concatenated along the channels, then a ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        narrow = nn.Conv(2, (1, 1), name="narrow")(x)
        wide = nn.Conv(3, (5, 5), name="wide")(x)
        return nn.relu(jnp.concatenate([narrow, wide], axis=-1))


class Branches(nn.Module):
    """An Inception-style block, global average pooling and a dense head."""

    input_shape = (6, 6, 3)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Mixed(name="Mixed")(x)
        return nn.Dense(2, name="out")(x.mean(axis=(1, 2)))


class LrpNet(nn.Module):
    """1x1 conv + relu, 1x1 conv + relu, flatten, dense; no biases: LRP by hand, relevance conserved."""

    input_shape = (2, 2, 2)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(3, (1, 1), use_bias=False, name="first")(x))
        x = nn.relu(nn.Conv(2, (1, 1), use_bias=False, name="second")(x))
        return nn.Dense(2, use_bias=False, name="out")(x.reshape((x.shape[0], -1)))


class ConvBatchNorm(nn.Module):
    """Two 3x3 convs, each followed by BatchNorm and a ReLU, then a dense head: LRP must treat
    each BatchNorm as folded into its convolution."""

    input_shape = (6, 6, 2)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(nn.Conv(4, (3, 3), name="conv1")(x)))
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn2")(nn.Conv(3, (3, 3), name="conv2")(x)))
        return nn.Dense(2, name="out")(x.reshape((x.shape[0], -1)))


class ConvFolded(nn.Module):
    """ConvBatchNorm with each BatchNorm folded into the convolution before it."""

    input_shape = (6, 6, 2)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(3, (3, 3), name="conv2")(x))
        return nn.Dense(2, name="out")(x.reshape((x.shape[0], -1)))


class ConvSkipBatchNorm(nn.Module):
    """A convolution whose output goes both through BatchNorm and around it: the scale must not be
    folded into it."""

    input_shape = (6, 6, 2)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Conv(4, (3, 3), name="conv1")(x)
        y = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(y)) + y
        return nn.Dense(2, name="out")(y.reshape((y.shape[0], -1)))
