"""Evaluate a model's flat computation with taps on its layers.

An interpreter over the flattened jaxpr of `graph.py`. For one example it can return chosen layer
outputs, add zero-valued probes to layer outputs (so that the gradient with respect to a probe is
the gradient with respect to that activation), stop after the last equation the request needs,
and swap the ReLU backward rule for guided backpropagation or deconvnet. A convolution whose
kernel spans its input runs as a matrix product (`smallconv.py`), and max pooling as a running
maximum with a scatter-free gradient (`maxpool.py`). Everything it does is ordinary
JAX, so it composes with jit, vmap and grad.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from reportgen.model.graph import Const, FlatJaxpr, Graph, activation_vars
from reportgen.model.lrp import DEFAULT_COMPOSITE, Composite, RulePlan, plan_rules, relevance_layer
from reportgen.model.maxpool import undilated, window_max
from reportgen.model.smallconv import conv_as_matmul, spans_input

ReluRule = Literal["standard", "guided", "deconvnet", "redirected"]


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass keeps only positive gradients at positive inputs.

    Springenberg et al. 2014, "Striving for Simplicity: The All Convolutional Net".
    """
    return jnp.maximum(x, 0)


def _guided_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.maximum(x, 0), x


def _guided_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconvnet_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass is a ReLU of the gradient, ignoring the input's sign.

    Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks".
    """
    return jnp.maximum(x, 0)


def _deconv_fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return jnp.maximum(x, 0), None


def _deconv_bwd(_: None, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.maximum(g, 0),)


deconvnet_relu.defvjp(_deconv_fwd, _deconv_bwd)


@jax.custom_vjp
def redirected_relu(x: jax.Array, redirect: jax.Array) -> jax.Array:
    """ReLU whose backward pass, while `redirect` is true, also lets through gradients that would
    raise a negative input (and is the plain ReLU gradient otherwise).

    For the first steps of activation maximisation, so that a unit inactive on the starting image
    still receives a gradient (Olah, Mordvintsev & Schubert 2017, "Feature Visualization").
    Assumes the objective is minimised: a negative cotangent raises the input. `redirect` is a
    traced flag, so one compiled step serves both phases.
    """
    return jnp.maximum(x, 0)


def _redirected_fwd(x: jax.Array, redirect: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return jnp.maximum(x, 0), (x, redirect)


def _redirected_bwd(saved: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, redirect = saved
    passes = (x > 0) | ((g < 0) & redirect)
    return jnp.where(passes, g, jnp.zeros_like(g)), jnp.zeros_like(redirect)


redirected_relu.defvjp(_redirected_fwd, _redirected_bwd)

_RELUS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "guided": guided_relu,
    "deconvnet": deconvnet_relu,
}


def _needed_eqns(flat: FlatJaxpr, targets: Sequence[int]) -> list[int]:
    """Indices of the equations the targets depend on, in order (everything else is skipped)."""
    needed = set(targets)
    keep: list[int] = []
    for i in range(len(flat.eqns) - 1, -1, -1):
        eqn = flat.eqns[i]
        if any(o in needed for o in eqn.outputs):
            keep.append(i)
            needed.update(v for v in eqn.inputs if isinstance(v, int))
    return keep[::-1]


def _bind(primitive: Any, params: dict[str, Any], args: list[Any]) -> Any:
    """Apply a primitive as `jax.core.eval_jaxpr` does (older JAX also returns sub-functions)."""
    bound = primitive.get_bind_params(params)
    subfuns, bind_params = bound if isinstance(bound, tuple) else ((), bound)
    return primitive.bind(*subfuns, *args, **bind_params)


def _flag(redirect: jax.Array | Mapping[int, jax.Array] | None, eqn: int) -> jax.Array:
    """The "redirected" rule's flag for one ReLU equation: always on without a flag, one flag
    for all, or the equation's own (off when the mapping leaves it out)."""
    if redirect is None:
        return jnp.asarray(True)
    if isinstance(redirect, Mapping):
        return jnp.asarray(redirect.get(eqn, False), bool)
    return jnp.asarray(redirect, bool)


class LrpCall(NamedTuple):
    """LRP's rules for one evaluation: the plan, its parameters, and the first layer's input
    bounds (differentiate with respect to them for their relevance terms)."""

    plan: RulePlan
    composite: Composite
    bounds: tuple[jax.Array, jax.Array]
    signs: Mapping[int, jax.Array] = MappingProxyType({})  # equation -> sign of the scale after each output channel


def _apply(primitive: Any, params: dict[str, Any], args: list[Any]) -> Any:
    """One equation, a convolution whose kernel spans its input as a matrix product."""
    if primitive.name == "conv_general_dilated" and spans_input(params, args[0].shape, args[1].shape):
        return conv_as_matmul(*args, **params)
    return _bind(primitive, params, args)


def evaluate(
    graph: Graph,
    leaves: Sequence[jax.Array],
    image: jax.Array,
    targets: Sequence[int],
    probes: Mapping[int, jax.Array] | None = None,
    relu: ReluRule = "standard",
    relu_at: frozenset[int] | None = None,
    redirect: jax.Array | Mapping[int, jax.Array] | None = None,
    lrp: LrpCall | None = None,
) -> list[jax.Array]:
    """Values of the target variables for one example, computing only what they need.

    `probes` maps variable ids to arrays added to those variables as soon as they are computed.
    `relu` replaces the backward rule of every ReLU, or only of the ReLU equations in `relu_at`;
    the "redirected" rule redirects while the boolean `redirect` is true (default: always), or,
    with a mapping from equation index to flag, while that equation's flag is. `lrp` gives every
    weighted layer its LRP rule's backward pass (`lrp.py`).
    """
    flat = graph.flat
    probes = probes or {}
    env: dict[int, Any] = dict(zip(flat.inputs, [*leaves, image], strict=True))
    for vid in flat.inputs:
        if vid in probes:
            env[vid] = env[vid] + probes[vid]
    replaced = frozenset() if relu == "standard" else graph.relu_eqns if relu_at is None else graph.relu_eqns & relu_at
    for i in _needed_eqns(flat, targets):
        eqn = flat.eqns[i]
        args = [v.value if isinstance(v, Const) else env[v] for v in eqn.inputs]
        if i in replaced:
            x = next(a for v, a in zip(eqn.inputs, args, strict=True) if not isinstance(v, Const))
            outs = [redirected_relu(x, _flag(redirect, i)) if relu == "redirected" else _RELUS[relu](x)]
        elif lrp is not None and i in lrp.plan.rules:
            rule, position = lrp.plan.rules[i]

            def bind(a: jax.Array, b: jax.Array, eqn: Any = eqn, position: int = position) -> jax.Array:
                return _apply(eqn.primitive, eqn.params, [a, b] if position == 0 else [b, a])

            bounds = lrp.bounds if rule == "bounded" else None
            w = args[1 - position]
            axis = eqn.params["dimension_numbers"].rhs_spec[0] if eqn.primitive.name == "conv_general_dilated" else -1
            sign = lrp.signs.get(i)
            outs = [relevance_layer(bind, args[position], w, rule, lrp.composite, bounds, sign, axis)]
        elif eqn.primitive.name == "reduce_window_max" and undilated(eqn.params):
            p = eqn.params
            outs = [window_max(args[0], p["window_dimensions"], p["window_strides"], p["padding"])]
        else:
            result = _apply(eqn.primitive, eqn.params, args)
            outs = list(result) if eqn.primitive.multiple_results else [result]
        for vid, value in zip(eqn.outputs, outs, strict=True):
            env[vid] = value + probes[vid] if vid in probes else value
    return [env[t] for t in targets]


class Gradients(NamedTuple):
    """Result of `Engine.gradients`."""

    value: jax.Array  # the objective
    outputs: dict[str, jax.Array]  # the named layers' outputs
    layer_grads: dict[str, jax.Array]  # d objective / d each named layer output
    image_grad: jax.Array  # d objective / d image
    logits: jax.Array  # the model output


class Engine:
    """Per-example functions of a model with taps on its layers; all compose with jit/vmap/grad.

    Layer values are returned without the batch axis: a conv layer gives (H, W, C).
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        (out,) = graph.flat.outputs
        if not isinstance(out, int):
            raise ValueError("the model output is a constant")
        self._logits_var = out

    def _vars(self, names: Sequence[str]) -> list[int]:
        return [self.graph.layer(n).var for n in names]

    def logits(self, variables: Any, image: jax.Array) -> jax.Array:
        """Model output for one example, (K,)."""
        (value,) = evaluate(self.graph, jax.tree.leaves(variables), image, [self._logits_var])
        return value

    def layer_outputs(
        self,
        variables: Any,
        image: jax.Array,
        names: Sequence[str],
        relu: ReluRule = "standard",
        relu_layers: Sequence[str] | None = None,
        redirect: jax.Array | Mapping[str, jax.Array] | None = None,
    ) -> dict[str, jax.Array]:
        """Outputs of the named layers for one example; stops after the last one needed.

        `relu` swaps the backward rule of every ReLU, or with `relu_layers` only of the ReLUs
        that produce those layers' outputs; `redirect` is the flag of the "redirected" rule, one
        for all, or one per layer name (a layer left out never redirects).
        """
        relu_at = None if relu_layers is None else self.output_relus(relu_layers)
        flags: jax.Array | Mapping[int, jax.Array] | None = (
            {i: flag for name, flag in redirect.items() for i in self.output_relus([name])}
            if isinstance(redirect, Mapping)
            else redirect
        )
        leaves = jax.tree.leaves(variables)
        values = evaluate(self.graph, leaves, image, self._vars(names), relu=relu, relu_at=relu_at, redirect=flags)
        return {n: v[0] for n, v in zip(names, values, strict=True)}

    def output_relus(self, names: Sequence[str]) -> frozenset[int]:
        """Indices of the ReLU equations whose output is one of the named layers' outputs."""
        outputs = set(self._vars(names))
        return frozenset(i for i in self.graph.relu_eqns if self.graph.flat.eqns[i].outputs[0] in outputs)

    def forward(self, variables: Any, image: jax.Array, names: Sequence[str]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Logits and the named layers' outputs in one pass."""
        targets = [self._logits_var, *self._vars(names)]
        logits, *values = evaluate(self.graph, jax.tree.leaves(variables), image, targets)
        return logits, {n: v[0] for n, v in zip(names, values, strict=True)}

    @functools.cached_property
    def lrp_plan(self) -> RulePlan:
        """The LRP composite's rule for every weighted layer of the model."""
        return plan_rules(self.graph.flat, activation_vars(self.graph.flat, self.graph.flat.inputs[-1]))

    def _scale_signs(self, leaves: Sequence[jax.Array], image: jax.Array) -> dict[int, jax.Array]:
        """For each weighted equation a BatchNorm scales, the sign of its scale per output channel
        (the scales depend on parameters only)."""
        plan = self.lrp_plan
        if not plan.scales:
            return {}
        values = evaluate(self.graph, leaves, image, list(plan.scales.values()))
        signs = {}
        for (i, _), value in zip(plan.scales.items(), values, strict=True):
            eqn = self.graph.flat.eqns[i]
            width = self.graph.flat.shapes[eqn.outputs[0]][-1]
            if value.size in (1, width):  # one scale, or one per output channel
                signs[i] = jnp.broadcast_to(jnp.sign(value.reshape(-1)), (width,))
        return signs

    def lrp(
        self,
        variables: Any,
        image: jax.Array,
        target: jax.Array,
        low: jax.Array,
        high: jax.Array,
        composite: Composite = DEFAULT_COMPOSITE,
    ) -> jax.Array:
        """LRP relevance of the target logit for one example, (H, W, C) (`lrp.py`); `low` and
        `high` are the lowest and highest input images (the z^B rule's bounds)."""
        plan = self.lrp_plan
        leaves = jax.tree.leaves(variables)
        first = plan.first_input
        shape = self.graph.flat.shapes[first]
        if math.prod(shape) != math.prod(image.shape) or tuple(shape[-len(image.shape) :]) != tuple(image.shape):
            raise ValueError(
                f"LRP takes relevance at the first layer's input, of shape {shape}, not the image's {image.shape}"
            )
        (x,) = evaluate(self.graph, leaves, image, [first])
        (low_in,) = evaluate(self.graph, leaves, jnp.broadcast_to(low, image.shape), [first])
        (high_in,) = evaluate(self.graph, leaves, jnp.broadcast_to(high, image.shape), [first])
        signs = self._scale_signs(leaves, image)

        def logit(probe: jax.Array, bound_low: jax.Array, bound_high: jax.Array) -> jax.Array:
            call = LrpCall(plan, composite, (bound_low, bound_high), signs)
            (logits,) = evaluate(self.graph, leaves, image, [self._logits_var], {first: probe}, lrp=call)
            return logits[target]

        grads = jax.grad(logit, argnums=(0, 1, 2))(jnp.zeros(shape, x.dtype), low_in, high_in)
        relevance = x * grads[0] + low_in * grads[1] + high_in * grads[2]
        return relevance.reshape(image.shape)

    def gradients(
        self,
        variables: Any,
        image: jax.Array,
        names: Sequence[str],
        objective: Callable[[jax.Array, dict[str, jax.Array]], jax.Array],
        relu: ReluRule = "standard",
    ) -> Gradients:
        """Value and gradients of a scalar objective of the logits and the named layer outputs.

        `relu` swaps the backward rule of every ReLU (`ReluRule`).
        """
        leaves = jax.tree.leaves(variables)
        layer_vars = self._vars(names)
        targets = [self._logits_var, *layer_vars]
        probe_shapes = {v: self.graph.flat.shapes[v] for v in layer_vars}

        def run(probes: dict[int, jax.Array], x: jax.Array) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
            logits, *values = evaluate(self.graph, leaves, x, targets, probes, relu)
            outs = {n: v[0] for n, v in zip(names, values, strict=True)}
            return objective(logits, outs), (logits, outs)

        zeros = {v: jnp.zeros(s, self.graph.flat.dtypes[v]) for v, s in probe_shapes.items()}
        grad_fn = jax.value_and_grad(run, argnums=(0, 1), has_aux=True)
        (value, (logits, outs)), (probe_grads, image_grad) = grad_fn(zeros, image)
        layer_grads = {n: probe_grads[v][0] for n, v in zip(names, layer_vars, strict=True)}
        return Gradients(value, outs, layer_grads, image_grad, logits)
