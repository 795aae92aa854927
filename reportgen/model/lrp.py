"""Layer-wise relevance propagation (LRP) as a modified gradient through the engine.

Bach et al. 2015, "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
Relevance Propagation"; the rules and the composite follow Montavon et al. 2019, "Layer-Wise
Relevance Propagation: An Overview" (§10.3): the bounded z^B rule at the first layer, the γ rule
(positive weights favoured by γ) at the other convolutions, and the ε rule at dense layers.

Every rule of a linear layer z = x·w redistributes the relevance R_k of its outputs as
R_j = Σ_k x_j w'_jk R_k / d_k, where d = x·w' (plus the ε stabiliser) is the rule's modified
output. With R_k = z_k g_k this is x_j (w'ᵀ (g · z / d))_j, so each rule is a gradient whose
backward pass goes through the modified weights and is scaled by z / d: `relevance_layer`
returns z in the forward pass and has exactly that backward pass. ReLUs pass relevance where
they are active, max pooling to the winner, sums and means in proportion: their ordinary
gradients. Biases are separate inputs that absorb their share; BatchNorm after a convolution is
folded into it by the same gradient (exact when its scales are positive). Relevance at the input
is x·g plus the bounds' terms of the z^B rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from reportgen.model.graph import FlatJaxpr

Rule = Literal["bounded", "gamma", "epsilon"]
WEIGHTED = ("conv_general_dilated", "dot_general")


@dataclass(frozen=True)
class Composite:
    """The rule parameters: γ of the convolutions, ε stabilising every denominator."""

    gamma: float = 0.25
    epsilon: float = 1e-6


DEFAULT_COMPOSITE = Composite()


@dataclass(frozen=True)
class RulePlan:
    """Which rule each weighted equation gets, and where the first one reads its input."""

    rules: dict[int, tuple[Rule, int]]  # equation index -> (rule, position of its activation operand)
    first_input: int  # the variable the first weighted layer reads (relevance is taken there)


def plan_rules(flat: FlatJaxpr, active: set[int]) -> RulePlan:
    """The composite's rule for every convolution and matrix product of an activation with
    parameters: z^B for the first, γ for other convolutions, ε for dense layers."""
    rules: dict[int, tuple[Rule, int]] = {}
    first_input = -1
    for i, eqn in enumerate(flat.eqns):
        if eqn.primitive.name not in WEIGHTED:
            continue
        sides = [isinstance(v, int) and v in active for v in eqn.inputs]
        if sides.count(True) != 1:
            continue
        position = sides.index(True)
        if not rules:
            first = eqn.inputs[position]
            assert isinstance(first, int)
            first_input = first
            rules[i] = ("bounded", position)
        else:
            rules[i] = ("gamma" if eqn.primitive.name == "conv_general_dilated" else "epsilon", position)
    if not rules:
        raise ValueError("LRP needs at least one convolution or dense layer")
    return RulePlan(rules, first_input)


def _stabilised(d: jax.Array, epsilon: float) -> jax.Array:
    return d + epsilon * jnp.where(d >= 0, 1.0, -1.0)


def relevance_layer(
    bind: Callable[[jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    w: jax.Array,
    rule: Rule,
    composite: Composite,
    bounds: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """`bind(x, w)` in the forward pass; in the backward pass the rule's redistribution (see the
    module docstring). `bounds` (low, high) are the first layer's input bounds for z^B: make them
    arguments of the differentiated function to get their relevance terms."""
    z = bind(x, w)
    if rule == "epsilon":
        d = z
    elif rule == "gamma":
        d = bind(x, w + composite.gamma * jax.nn.relu(w))
    else:
        assert bounds is not None
        low, high = bounds
        d = z - bind(low, jax.nn.relu(w)) - bind(high, jnp.minimum(w, 0))
    ratio = jax.lax.stop_gradient(z / _stabilised(d, composite.epsilon))
    return jax.lax.stop_gradient(z) + (d - jax.lax.stop_gradient(d)) * ratio
