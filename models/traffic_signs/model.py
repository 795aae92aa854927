"""The demo traffic-sign classifier: a VGG-style Flax Linen CNN for the 43 GTSRB classes.

Three blocks of two 3x3 convolutions with ReLU (32, 64, 128 filters), each followed by 2x2 max
pooling, then a dense head with dropout. Activations and pooling are plain functions between the
modules, the way most Flax CNNs are written.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class TrafficSignNet(nn.Module):
    """VGG-style CNN; input (N, 32, 32, 3) in [0, 1], output (N, 43) logits."""

    num_classes: int = 43
    dropout_rate: float = 0.3

    input_shape = (32, 32, 3)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for block, features in enumerate((32, 64, 128), start=1):
            x = nn.relu(nn.Conv(features, (3, 3), name=f"conv{2 * block - 1}")(x))
            x = nn.relu(nn.Conv(features, (3, 3), name=f"conv{2 * block}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(256, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="logits")(x)
