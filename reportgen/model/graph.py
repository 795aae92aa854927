"""Discover a CNN's layers from its traced computation.

The model's apply function is traced for one example to a jaxpr, nested calls (jit, custom_jvp,
custom_vjp, closed calls, remat) are inlined into one flat list of equations, and the equations
that matter become layers: convolutions, dense layers, pooling, global pooling and normalisation.
A convolution or dense layer absorbs the elementwise operations that follow it (bias add,
activation), so its output is post-activation, as Keras shows it. Layers are found whether the
model calls activations and pooling as modules or as plain functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.extend.core as jcore
import numpy as np

from reportgen.errors import UserError

INLINED_CALLS = frozenset(
    {
        "pjit",
        "jit",
        "closed_call",
        "core_call",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
        "remat",
        "remat2",
        "checkpoint",
    }
)
ELEMENTWISE = frozenset(
    {
        "abs", "add", "add_any", "and", "clamp", "convert_element_type", "copy", "copy_p", "cos",
        "div", "eq", "erf", "erfc", "exp", "exp2", "ge", "gt", "integer_pow", "is_finite", "le",
        "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "not", "or", "pow",
        "rsqrt", "select_n", "sign", "sin", "sqrt", "square", "stop_gradient", "sub", "tanh",
    }
)  # fmt: skip
MERGES = frozenset({"add", "concatenate"})
"""Primitives that join two branches of activations into one layer: a residual sum, a concatenation."""
POOL_KINDS = {"reduce_window_max": "max_pool", "reduce_window_sum": "avg_pool", "reduce_window": "pool"}
GLOBAL_POOL_KINDS = {"reduce_max": "global_max_pool", "reduce_sum": "global_avg_pool"}
MAP_KINDS = ("conv", "merge", "norm")
"""Layers whose output is a feature map computed by the network (not a pooling of one)."""


@dataclass(frozen=True)
class Const:
    """A constant operand (a jaxpr literal or closed-over constant)."""

    value: Any


Operand = int | Const


@dataclass(frozen=True)
class Eqn:
    """One equation of the flattened computation; variables are integer ids."""

    primitive: jcore.Primitive
    params: dict[str, Any]
    inputs: tuple[Operand, ...]
    outputs: tuple[int, ...]
    scope: str


@dataclass(frozen=True)
class FlatJaxpr:
    """A jaxpr with every nested call inlined: inputs are the variable leaves, then the image."""

    inputs: tuple[int, ...]
    outputs: tuple[Operand, ...]
    eqns: tuple[Eqn, ...]
    shapes: dict[int, tuple[int, ...]]
    dtypes: dict[int, Any]


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer's output units in input pixels, per spatial axis (H, W).

    `size` is the side of the input window one output unit sees, `stride` the step in input pixels
    between neighbouring output units, and `start` the input coordinate of the centre of output
    unit 0 (pixel centres are at integer coordinates; it can be negative with padding).
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    start: tuple[float, float]


@dataclass(frozen=True)
class Layer:
    """A layer as the report shows it."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int
    receptive_field: ReceptiveField | None  # None: the whole input (after flatten or global pool)
    activation: str | None
    var: int = field(repr=False)  # id of the output variable in the flat jaxpr
    param_paths: tuple[str, ...] = field(repr=False, default=())

    @property
    def is_spatial(self) -> bool:
        """True when the output is a (H, W, C) feature map."""
        return len(self.output_shape) == 3 and self.receptive_field is not None


@dataclass(frozen=True)
class Graph:
    """The flat computation and its layers in forward order."""

    flat: FlatJaxpr
    layers: tuple[Layer, ...]
    relu_eqns: frozenset[int]  # indices of max(x, 0) equations (ReLUs)
    input_shape: tuple[int, ...]

    def layer(self, name: str) -> Layer:
        """The layer called `name`; KeyError lists the valid names."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers are: {', '.join(layer.name for layer in self.layers)}")

    @property
    def last_conv(self) -> str:
        """The last convolution with a spatial output."""
        convs = [layer.name for layer in self.layers if layer.kind == "conv" and layer.is_spatial]
        if not convs:
            raise UserError(
                "the model has no convolution with a spatial output (after concatenation or flattening, none is"
                " left); reportgen explains CNNs and needs at least one for class activation maps"
            )
        return convs[-1]

    @property
    def cam_layer(self) -> str:
        """The layer class activation maps are taken at by default: the last convolution, merge or
        normalisation with a spatial output, so on a ResNet the last block's output (Selvaraju et
        al. 2017 take Grad-CAM at the last convolutional feature map)."""
        last_conv = self.last_conv  # raises for a model without a spatial convolution
        return next(
            (layer.name for layer in reversed(self.layers) if layer.kind in MAP_KINDS and layer.is_spatial), last_conv
        )

    @property
    def num_classes(self) -> int:
        """Width of the model output."""
        (out,) = self.flat.outputs
        assert isinstance(out, int)
        return self.flat.shapes[out][-1]


# ---------------------------------------------------------------------------------------------
# Tracing and flattening


def trace(apply: Callable[[Any, jax.Array], jax.Array], variables: Any, input_shape: Sequence[int]) -> FlatJaxpr:
    """Trace `apply(variables, x)` for one example `x` of `input_shape` and flatten it.

    `apply` takes one example (H, W, C) and returns its logits (K,); the batch axis it adds
    internally is axis 0 of every intermediate.
    """
    leaves, treedef = jax.tree.flatten(variables)

    def flat_apply(leaves: list[Any], x: jax.Array) -> jax.Array:
        return apply(jax.tree.unflatten(treedef, leaves), x)

    abstract_leaves = [jax.ShapeDtypeStruct(np.shape(v), v.dtype) for v in leaves]
    x = jax.ShapeDtypeStruct(tuple(input_shape), np.float32)
    closed = jax.make_jaxpr(flat_apply)(abstract_leaves, x)
    return _flatten(closed)


class _Flattener:
    def __init__(self) -> None:
        self.eqns: list[Eqn] = []
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.dtypes: dict[int, Any] = {}
        self.count = 0

    def new_var(self, var: jcore.Var) -> int:
        """A fresh integer id for a jaxpr variable, recording its shape and dtype."""
        vid = self.count
        self.count += 1
        aval: Any = var.aval
        self.shapes[vid] = tuple(aval.shape)
        self.dtypes[vid] = aval.dtype
        return vid

    def inline(self, jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: Sequence[Operand], scope: str) -> list[Operand]:
        """Append the equations of `jaxpr` applied to `args`, recursing into calls; its outputs."""
        env: dict[jcore.Var, Operand] = {}
        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = Const(value)
        for var, arg in zip(jaxpr.invars, args, strict=True):
            env[var] = arg

        def read(v: Any) -> Operand:
            return Const(v.val) if isinstance(v, jcore.Literal) else env[v]

        for eqn in jaxpr.eqns:
            inner = _join_scope(scope, str(eqn.source_info.name_stack))
            inputs = [read(v) for v in eqn.invars]
            sub = _called_jaxpr(eqn)
            if sub is not None:
                sub_jaxpr, sub_consts = sub
                outs = self.inline(sub_jaxpr, sub_consts, inputs, inner)
                for var, out in zip(eqn.outvars, outs, strict=True):
                    env[var] = out
                continue
            outputs = tuple(self.new_var(v) for v in eqn.outvars)
            for var, vid in zip(eqn.outvars, outputs, strict=True):
                env[var] = vid
            self.eqns.append(Eqn(eqn.primitive, dict(eqn.params), tuple(inputs), outputs, inner))
        return [read(v) for v in jaxpr.outvars]


def _called_jaxpr(eqn: jcore.JaxprEqn) -> tuple[jcore.Jaxpr, Sequence[Any]] | None:
    """The body of a call-like equation that can be inlined, else None."""
    if eqn.primitive.name not in INLINED_CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub.jaxpr, sub.consts
        if isinstance(sub, jcore.Jaxpr):
            return sub, ()
    return None


def _join_scope(outer: str, inner: str) -> str:
    """Join name stacks, dropping transformation entries such as `jit(relu)` or `jvp(...)`."""
    parts = [p for p in f"{outer}/{inner}".split("/") if p and "(" not in p]
    return "/".join(parts)


def _flatten(closed: jcore.ClosedJaxpr) -> FlatJaxpr:
    flattener = _Flattener()
    inputs = tuple(flattener.new_var(v) for v in closed.jaxpr.invars)
    outputs = flattener.inline(closed.jaxpr, closed.consts, inputs, "")
    return FlatJaxpr(inputs, tuple(outputs), tuple(flattener.eqns), flattener.shapes, flattener.dtypes)


def strip_scope_root(flat: FlatJaxpr) -> FlatJaxpr:
    """Drop the first name-stack entry shared by every scoped equation (Linen's root module)."""
    roots = {e.scope.split("/")[0] for e in flat.eqns if e.scope}
    if len(roots) != 1:
        return flat
    (root,) = roots
    eqns = tuple(
        Eqn(e.primitive, e.params, e.inputs, e.outputs, e.scope[len(root) + 1 :] if e.scope else "") for e in flat.eqns
    )
    return FlatJaxpr(flat.inputs, flat.outputs, eqns, flat.shapes, flat.dtypes)


# ---------------------------------------------------------------------------------------------
# Layer discovery


def build_graph(flat: FlatJaxpr, param_paths: Sequence[str]) -> Graph:
    """Find the layers of a flattened computation whose last input is the image.

    `param_paths` names the variable leaves (all inputs but the last), for parameter counts.
    """
    image = flat.inputs[-1]
    active = activation_vars(flat, image)
    leaf_of = {vid: path for vid, path in zip(flat.inputs[:-1], param_paths, strict=True)}
    leaf_sizes = {vid: math.prod(flat.shapes[vid]) for vid in leaf_of}
    feeds = _param_feeds(flat, active, set(leaf_of))
    fields = _receptive_fields(flat, active, image)
    norm_scopes = _norm_scopes(flat, active)

    layers: list[Layer] = []
    claimed: set[int] = set()
    anchors = _anchors(flat, active, norm_scopes)
    names = _layer_names(flat, anchors)
    for (index, kind), name in zip(anchors, names, strict=True):
        members = _members(flat, active, index, kind, norm_scopes) - claimed
        claimed |= members
        out = _member_output(flat, members)
        leaves = sorted({leaf for i in members for leaf in feeds[i]})
        shape = flat.shapes[out][1:]
        layers.append(
            Layer(
                name=name,
                kind=kind,
                output_shape=shape,
                params=sum(leaf_sizes[v] for v in leaves),
                flops=sum(_flops(flat, flat.eqns[i], active) for i in members),
                receptive_field=fields.get(out) if len(shape) == 3 else None,
                activation=_activation_name(flat, members, index),
                var=out,
                param_paths=tuple(leaf_of[v] for v in leaves),
            )
        )
    return Graph(flat, tuple(layers), _relu_eqns(flat, active), flat.shapes[image])


def activation_vars(flat: FlatJaxpr, image: int) -> set[int]:
    """Variables that depend on the image (everything else is parameters and constants)."""
    active = {image}
    for eqn in flat.eqns:
        if any(isinstance(v, int) and v in active for v in eqn.inputs):
            active.update(eqn.outputs)
    return active


def _active_inputs(eqn: Eqn, active: set[int]) -> list[int]:
    return [v for v in eqn.inputs if isinstance(v, int) and v in active]


def _is_active(eqn: Eqn, active: set[int]) -> bool:
    return any(v in active for v in eqn.outputs)


def _param_feeds(flat: FlatJaxpr, active: set[int], leaves: set[int]) -> list[frozenset[int]]:
    """For each equation, the variable leaves that reach it through parameter-side equations."""
    origin: dict[int, frozenset[int]] = {v: frozenset({v}) for v in leaves}
    feeds: list[frozenset[int]] = []
    for eqn in flat.eqns:
        reached = frozenset().union(
            *(origin.get(v, frozenset()) for v in eqn.inputs if isinstance(v, int) and v not in active)
        )
        feeds.append(reached)
        if not _is_active(eqn, active):
            for out in eqn.outputs:
                origin[out] = reached
    return feeds


def _norm_scopes(flat: FlatJaxpr, active: set[int]) -> set[str]:
    """Module scopes that normalise: they compute an rsqrt and hold no conv or dense product."""
    with_rsqrt = {e.scope for e in flat.eqns if e.primitive.name == "rsqrt" and e.scope}
    with_products = {
        e.scope
        for e in flat.eqns
        if e.primitive.name in ("conv_general_dilated", "dot_general") and _is_active(e, active)
    }
    return with_rsqrt - with_products


def _anchor_kind(flat: FlatJaxpr, eqn: Eqn, active: set[int]) -> str | None:
    name = eqn.primitive.name
    inputs = _active_inputs(eqn, active)
    if not inputs:
        return None
    if name == "conv_general_dilated" and eqn.inputs[0] in active:
        return "conv"
    if name == "dot_general" and len(inputs) == 1:
        return "dense"
    if name in POOL_KINDS:
        return POOL_KINDS[name]
    if name in GLOBAL_POOL_KINDS:
        rank = len(flat.shapes[inputs[0]])
        if rank >= 4 and tuple(eqn.params["axes"]) == tuple(range(1, rank - 1)):
            return GLOBAL_POOL_KINDS[name]
    if name in MERGES and len(set(inputs)) >= 2 and len(flat.shapes[inputs[0]]) >= 4:
        return "merge"
    return None


def _anchors(flat: FlatJaxpr, active: set[int], norm_scopes: set[str]) -> list[tuple[int, str]]:
    """(equation index, kind) of the first equation of every layer, in forward order."""
    anchors: list[tuple[int, str]] = []
    seen_norm: set[str] = set()
    for i, eqn in enumerate(flat.eqns):
        if not _is_active(eqn, active):
            continue
        if eqn.scope in norm_scopes:
            if eqn.scope not in seen_norm:
                seen_norm.add(eqn.scope)
                anchors.append((i, "norm"))
            continue
        kind = _anchor_kind(flat, eqn, active)
        if kind is not None:
            anchors.append((i, kind))
    return anchors


def _layer_names(flat: FlatJaxpr, anchors: list[tuple[int, str]]) -> list[str]:
    """A module's path when it holds one layer, else scope/kind_k; unique."""
    per_scope: dict[str, int] = {}
    for index, _ in anchors:
        scope = flat.eqns[index].scope
        per_scope[scope] = per_scope.get(scope, 0) + 1
    counters: dict[tuple[str, str], int] = {}
    names: list[str] = []
    for index, kind in anchors:
        scope = flat.eqns[index].scope
        if scope and per_scope[scope] == 1:
            name = scope
        else:
            k = counters.get((scope, kind), 0)
            counters[(scope, kind)] = k + 1
            name = f"{scope}/{kind}_{k}" if scope else f"{kind}_{k}"
        while name in names:
            name += "'"
        names.append(name)
    return names


def _members(flat: FlatJaxpr, active: set[int], index: int, kind: str, norm_scopes: set[str]) -> set[int]:
    """Equation indices forming the layer that starts at `index`."""
    eqns = flat.eqns
    if kind == "norm":
        scope = eqns[index].scope
        members = {i for i, e in enumerate(eqns) if e.scope == scope and _is_active(e, active)}
        region = {v for i in members for v in eqns[i].outputs}
        last = max(members)
    else:
        members = {index}
        region = set(eqns[index].outputs)
        last = index
    if kind in ("conv", "dense", "norm", "merge", "global_avg_pool", "avg_pool"):
        shape = flat.shapes[eqns[last].outputs[0]]
        for j in range(last + 1, len(eqns)):
            e = eqns[j]
            inputs = set(_active_inputs(e, active))
            if not inputs & region:
                continue
            foldable = (
                e.primitive.name in ELEMENTWISE
                and inputs <= region
                and all(flat.shapes[o] == shape for o in e.outputs)
                and e.scope not in norm_scopes
            )
            if not foldable:
                break
            members.add(j)
            region.update(e.outputs)
    return members


def _member_output(flat: FlatJaxpr, members: set[int]) -> int:
    return flat.eqns[max(members)].outputs[0]


def _activation_name(flat: FlatJaxpr, members: set[int], anchor: int) -> str | None:
    """Name of the nonlinearity folded into the layer, if any."""
    names = [flat.eqns[i].primitive.name for i in sorted(members) if i > anchor]
    for prim, label in (("max", "relu"), ("tanh", "tanh"), ("logistic", "sigmoid"), ("erf", "gelu")):
        if prim in names:
            return label
    return None


def _is_zero(operand: Operand) -> bool:
    return isinstance(operand, Const) and bool(np.all(np.asarray(operand.value) == 0))


def _relu_eqns(flat: FlatJaxpr, active: set[int]) -> frozenset[int]:
    """Equations computing max(x, 0) on activations: the ReLUs."""
    return frozenset(
        i
        for i, e in enumerate(flat.eqns)
        if e.primitive.name == "max" and len(_active_inputs(e, active)) == 1 and any(_is_zero(v) for v in e.inputs)
    )


def _flops(flat: FlatJaxpr, eqn: Eqn, active: set[int]) -> int:
    """Floating-point operations of one activation equation (a multiply-add counts as two)."""
    out_size = math.prod(flat.shapes[eqn.outputs[0]])
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        rhs = eqn.inputs[1]
        kernel = flat.shapes[rhs] if isinstance(rhs, int) else np.shape(rhs.value)
        spec = eqn.params["dimension_numbers"].rhs_spec
        per_output = math.prod(kernel[d] for d in spec[2:]) * kernel[spec[1]]
        return 2 * out_size * per_output
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.inputs[0]
        lhs_shape = flat.shapes[lhs] if isinstance(lhs, int) else np.shape(lhs.value)
        return 2 * out_size * math.prod(lhs_shape[d] for d in contract)
    if name.startswith("reduce_window"):
        return out_size * math.prod(eqn.params["window_dimensions"])
    if name.startswith("reduce_"):
        return math.prod(flat.shapes[_active_inputs(eqn, active)[0]])
    return out_size


# ---------------------------------------------------------------------------------------------
# Receptive fields

_Axes = dict[int, tuple[float, float, float]]  # array axis -> (size, stride, start)
GLOBAL: _Axes = {}


def _receptive_fields(flat: FlatJaxpr, active: set[int], image: int) -> dict[int, ReceptiveField]:
    """Receptive field of every spatial activation variable, propagated from the image."""
    rank = len(flat.shapes[image])
    axes: dict[int, _Axes] = {image: {a: (1.0, 1.0, 0.0) for a in range(rank - 1)}}
    for eqn in flat.eqns:
        if not _is_active(eqn, active):
            continue
        result = _propagate(flat, eqn, active, axes)
        for out in eqn.outputs:
            axes[out] = result
    fields: dict[int, ReceptiveField] = {}
    for vid, ax in axes.items():
        if len(ax) == 2:
            (_, (sh, jh, th)), (_, (sw, jw, tw)) = sorted(ax.items())
            fields[vid] = ReceptiveField((int(sh), int(sw)), (int(jh), int(jw)), (th, tw))
    return fields


def _window(
    field: tuple[float, float, float], k: int, dilation: int, stride: int, pad_lo: int
) -> tuple[float, float, float]:
    size, jump, start = field
    extent = (k - 1) * dilation + 1
    return size + (extent - 1) * jump, jump * stride, start + ((extent - 1) / 2 - pad_lo) * jump


def _propagate(flat: FlatJaxpr, eqn: Eqn, active: set[int], axes: dict[int, _Axes]) -> _Axes:
    inputs = _active_inputs(eqn, active)
    first = axes.get(inputs[0], GLOBAL)
    name, p = eqn.primitive.name, eqn.params
    out_shape = flat.shapes[eqn.outputs[0]]
    if name == "conv_general_dilated":
        dn = p["dimension_numbers"]
        rhs = eqn.inputs[1]
        kernel = flat.shapes[rhs] if isinstance(rhs, int) else np.shape(rhs.value)
        result: _Axes = {}
        for i, (lhs_axis, out_axis) in enumerate(zip(dn.lhs_spec[2:], dn.out_spec[2:], strict=True)):
            if lhs_axis not in first:
                return GLOBAL
            k = kernel[dn.rhs_spec[2 + i]]
            result[out_axis] = _window(
                first[lhs_axis], k, p["rhs_dilation"][i], p["window_strides"][i], p["padding"][i][0]
            )
        return result
    if name.startswith("reduce_window"):
        result = {}
        for axis, field_ in first.items():
            result[axis] = _window(
                field_,
                p["window_dimensions"][axis],
                p["window_dilation"][axis],
                p["window_strides"][axis],
                p["padding"][axis][0],
            )
        return result
    if name == "broadcast_in_dim":
        return {p["broadcast_dimensions"][a]: f for a, f in first.items()}
    if name == "transpose":
        inverse = {src: dst for dst, src in enumerate(p["permutation"])}
        return {inverse[a]: f for a, f in first.items()}
    if name in ("reshape", "squeeze", "expand_dims"):
        return _reshape_axes(flat.shapes[inputs[0]], out_shape, first)
    if name == "pad":
        return {a: (s, j, t - p["padding_config"][a][0] * j) for a, (s, j, t) in first.items()}
    if name == "dot_general":
        (contract, _), (batch, _) = p["dimension_numbers"]
        if len(inputs) != 1 or eqn.inputs[0] != inputs[0] or set(contract) & set(first) or batch:
            return GLOBAL
        free = [a for a in range(len(flat.shapes[inputs[0]])) if a not in contract]
        return {free.index(a): f for a, f in first.items()}
    if name == "concatenate":  # along the channels: each unit sees the union of its inputs' windows
        fields = [axes.get(v, GLOBAL) for v in inputs]
        if not first or p["dimension"] in first or any(f.keys() != first.keys() for f in fields):
            return GLOBAL
        return {a: max(f[a] for f in fields) for a in first}
    if name in ELEMENTWISE or all(flat.shapes[v] == out_shape for v in inputs):
        candidates = [axes.get(v, GLOBAL) for v in inputs if flat.shapes[v] == out_shape]
        if not candidates or any(not c for c in candidates):
            return GLOBAL
        return {a: max(c[a] for c in candidates if a in c) for a in candidates[0]}
    return GLOBAL


def _reshape_axes(in_shape: tuple[int, ...], out_shape: tuple[int, ...], first: _Axes) -> _Axes:
    """Follow axes through a reshape that only adds or removes unit dimensions."""
    in_axes = [a for a, n in enumerate(in_shape) if n != 1]
    out_axes = [a for a, n in enumerate(out_shape) if n != 1]
    if [in_shape[a] for a in in_axes] != [out_shape[a] for a in out_axes]:
        return GLOBAL
    mapping = dict(zip(in_axes, out_axes, strict=True))
    if any(a not in mapping for a in first):
        return GLOBAL
    return {mapping[a]: f for a, f in first.items()}
