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
gradients. Biases are separate inputs that absorb their share. BatchNorm after a convolution is
folded into it: its shift is a bias, its scale s passes the gradient, and the rules take the
positive part of each weight as the folded weight s·w sees it (for a channel with s < 0, the
negative weights), so the relevance equals that of the folded network. Relevance at the input is
x·g plus the bounds' terms of the z^B rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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
    scales: dict[int, int] = field(default_factory=dict)  # equation -> the variable scaling its output (BatchNorm)


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
    uses = Counter(v for eqn in flat.eqns for v in eqn.inputs if isinstance(v, int))
    uses.update(v for v in flat.outputs if isinstance(v, int))
    scales = {i: v for i in rules if (v := _scale_after(flat, i, active, uses)) is not None}
    return RulePlan(rules, first_input, scales)


def _scale_after(flat: FlatJaxpr, index: int, active: set[int], uses: Counter[int]) -> int | None:
    """The parameter-derived variable that multiplies equation `index`'s output after adds and
    subtractions of parameters only (a bias, BatchNorm's mean): BatchNorm's scale, if it has one
    and nothing else reads the output on the way (a skip connection would bypass the scale)."""
    value = flat.eqns[index].outputs[0]
    for eqn in flat.eqns[index + 1 :]:
        if value not in eqn.inputs:
            continue
        if uses[value] != 1:
            return None
        others = [v for v in eqn.inputs if v != value]
        if len(others) != 1 or (isinstance(others[0], int) and others[0] in active):
            return None
        if eqn.primitive.name == "mul":
            return others[0] if isinstance(others[0], int) else None
        if eqn.primitive.name not in ("add", "sub"):
            return None
        value = eqn.outputs[0]
    return None


def _stabilised(d: jax.Array, epsilon: float) -> jax.Array:
    return d + epsilon * jnp.where(d >= 0, 1.0, -1.0)


def positive_part(w: jax.Array, sign: jax.Array | None, axis: int) -> jax.Array:
    """The weights that are positive once scaled by the output channels' `sign` (along `axis` of
    w; None: all +1), zero elsewhere."""
    if sign is None:
        return jax.nn.relu(w)
    shape = [1] * w.ndim
    shape[axis] = -1
    sign = sign.reshape(shape).astype(w.dtype)
    return sign * jax.nn.relu(sign * w)


def relevance_layer(
    bind: Callable[[jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    w: jax.Array,
    rule: Rule,
    composite: Composite,
    bounds: tuple[jax.Array, jax.Array] | None = None,
    sign: jax.Array | None = None,
    axis: int = -1,
) -> jax.Array:
    """`bind(x, w)` in the forward pass; in the backward pass the rule's redistribution (see the
    module docstring). `bounds` (low, high) are the first layer's input bounds for z^B: make them
    arguments of the differentiated function to get their relevance terms. `sign` is the sign of
    the scale that follows each output channel (BatchNorm), along `axis` of w."""
    z = bind(x, w)
    positive = positive_part(w, sign, axis)
    if rule == "epsilon":
        d = z
    elif rule == "gamma":
        d = bind(x, w + composite.gamma * positive)
    else:
        assert bounds is not None
        low, high = bounds
        d = z - bind(low, positive) - bind(high, w - positive)
    ratio = jax.lax.stop_gradient(z / _stabilised(d, composite.epsilon))
    return jax.lax.stop_gradient(z) + (d - jax.lax.stop_gradient(d)) * ratio
