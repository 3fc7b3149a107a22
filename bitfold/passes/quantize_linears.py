"""Replace planned linear layers with bitfold's quantized ops.

For a linear ``y = x Wᵀ + b`` with a plan, and an activation plan for its input ``x``::

    xs = x · c                                 (c = 2^k: LLM-FP4 pre-shift; or 1/s: SmoothQuant)
    xq = bitfold.fake_quantize(xs, fa, sa)     (per tensor; a block format fa has no sa: its
                                                scales come from each block's max at run time)
    y  = bitfold.quantized_linear(xq, pack(Q_fw(W · s)), fw, N, K, sw, g, zw, k, b)

(with a plan's ``values``, those are packed in place of ``W · s``: GPTQ-rounded weights).

``quantized_linear`` multiplies ``xq`` by ``2^-k`` (undoing the pre-shift exactly on the
already-quantized activation), so the layer computes ``Q(x·2^k; ρ)·2^-k · Ŵᵀ = Q(x; ρ+k) Ŵᵀ``:
the per-input-channel bias LLM-FP4 wants, with a per-tensor quantizer. SmoothQuant instead
scales ``W``'s columns by ``s`` before quantizing it. Linears that share one input (Q/K/V,
gate/up) share one shift and one activation quantizer node. The ``x · c`` multiply is a
separate node so :class:`~bitfold.passes.fold_preshift.FoldPreshift` can move it into the
producer. Weight-only plans skip the activation part. This pass changes numerics by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch import fx

from bitfold.ir import formats, ops
from bitfold.ir.conv_patches import conv_geometry
from bitfold.ir.graph_utils import attr_value, constant_node, remove_unused_constants
from bitfold.passes.base import Pass, PassError, PassResult

aten = torch.ops.aten


@dataclass
class ActivationPlan:
    """How the input of one or more linears is quantized."""

    fmt: str
    #: The per-tensor scale; ``None`` for a block format, which scales each block by its own max.
    scale: Optional[float]
    #: Integer exponents k (shape [K]): the input is multiplied by 2^k before quantizing.
    shift: Optional[torch.Tensor] = None
    #: SmoothQuant factors s (shape [K]): the input is divided by s, the weights multiplied.
    smooth: Optional[torch.Tensor] = None


@dataclass
class WeightPlan:
    """How one linear's weight is quantized (scales per output channel or per group)."""

    fmt: str
    scale: torch.Tensor
    group_size: Optional[int] = None
    zero_point: Optional[torch.Tensor] = None
    #: The weight to pack in place of the layer's own (already on the grid; shape [N, K],
    #: after any SmoothQuant scaling): error-compensated rounding (:mod:`bitfold.passes.gptq`).
    values: Optional[torch.Tensor] = None


def packed_weight_args(gm: fx.GraphModule, name: str, packed: ops.PackedWeight, plan: WeightPlan) -> list:
    """``packed_weight, fmt, N, K, weight_scale, group_size, weight_zero_point`` of a quantized
    op, the tensors as new constants named after ``name`` (insert with ``inserting_before``)."""
    return [
        constant_node(gm, f"{name}_packed_weight", packed.packed, parameter=False),
        formats.get(plan.fmt).name,
        packed.out_features,
        packed.in_features,
        constant_node(gm, f"{name}_weight_scale", packed.scale, parameter=False),
        plan.group_size,
        None if plan.zero_point is None else constant_node(
            gm, f"{name}_weight_zero_point", plan.zero_point.float(), parameter=False),
    ]


def replace_layer(gm: fx.GraphModule, node: fx.Node, new: fx.Node) -> None:
    """Put quantized op ``new`` in place of layer ``node``, keeping its bitfold metadata and shape."""
    new.meta.update({k: v for k, v in node.meta.items() if k.startswith("bitfold") or k == "val"})
    new.meta["bitfold_layer"] = node.name
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def require_layers(gm: fx.GraphModule, names: Iterable[str], target: Any, pass_name: str, kind: str) -> None:
    """A :class:`PassError` unless every name in ``names`` is a ``target`` node of ``gm``."""
    present = {n.name for n in gm.graph.nodes if n.target == target}
    missing = sorted(set(names) - present)
    if missing:
        raise PassError(f"{pass_name}: no {kind} node named {', '.join(missing)}")


def input_key(gm: fx.GraphModule, node: fx.Node) -> str:
    """The key of a layer's activation plan: its input's name, plus the geometry for a
    convolution (convolutions of different kernels reading one input quantize it separately)."""
    geometry = conv_geometry(gm, node)
    return node.args[0].name if geometry is None else f"{node.args[0].name}/{geometry.key()}"


def quantized_input(gm: fx.GraphModule, x: fx.Node, key: str, plan: Optional[ActivationPlan],
                    cache: Dict[str, fx.Node], first_user: fx.Node, channel_shape: Tuple[int, ...] = (-1,)) -> fx.Node:
    """``x`` quantized by ``plan`` (``x`` itself without one), built once per ``key`` before its
    first quantized consumer; per-channel factors are viewed as ``channel_shape`` (``(-1, 1,
    1)`` for NCHW)."""
    if plan is None:
        return x
    if key in cache:
        return cache[key]
    with gm.graph.inserting_before(first_user):
        factor = None
        if plan.shift is not None:
            factor = torch.exp2(plan.shift.to(torch.float32))
        if plan.smooth is not None:
            factor = (1.0 / plan.smooth) if factor is None else factor / plan.smooth
        node = x
        if factor is not None:
            c = constant_node(gm, f"{x.name}_input_scale", factor.to(torch.float32).reshape(channel_shape),
                              parameter=False)
            node = gm.graph.call_function(aten.mul.Tensor, (x, c))
        args: Tuple[Any, ...] = (node, plan.fmt)
        if plan.scale is not None:
            args += (constant_node(gm, f"{x.name}_act_scale", torch.tensor(float(plan.scale)), parameter=False),)
        node = gm.graph.call_function(torch.ops.bitfold.fake_quantize.default, args)
    cache[key] = node
    return node


def planned_weight(gm: fx.GraphModule, node: fx.Node, plan: WeightPlan, act: Optional[ActivationPlan],
                   pass_name: str) -> ops.PackedWeight:
    """The packed ``[N, K]`` weight of layer ``node`` under ``plan`` (a convolution's flattened
    per output channel), with SmoothQuant's factors or the plan's own rounded values."""
    w_node = node.args[1]
    weight = attr_value(gm, w_node)
    if weight is None:
        raise PassError(f"{pass_name}: {node.name}'s weight is not a constant")
    weight = weight.reshape(weight.shape[0], -1)
    if plan.values is not None:
        if plan.values.shape != weight.shape:
            raise PassError(f"{pass_name}: {node.name}: planned values of shape {tuple(plan.values.shape)} "
                            f"for a weight of shape {tuple(weight.shape)}")
        weight = plan.values
    elif act is not None and act.smooth is not None:
        weight = weight * act.smooth.to(weight.dtype)
    return ops.pack_weight(weight.float(), plan.fmt, plan.scale, plan.group_size, plan.zero_point,
                           name=str(w_node.target))


def shift_constant(gm: fx.GraphModule, node: fx.Node, act: Optional[ActivationPlan]) -> Optional[fx.Node]:
    """The ``input_shift`` argument of quantized op replacing ``node`` (insert with ``inserting_before``)."""
    if act is None or act.shift is None:
        return None
    return constant_node(gm, f"{node.name}_input_shift", act.shift.to(torch.int32), parameter=False)


class QuantizeLinears(Pass):
    """Rewrite the linears named in ``weights`` into quantized ops (see the module docstring)."""

    preserves_semantics = False

    def __init__(self, weights: Dict[str, WeightPlan], activations: Dict[str, ActivationPlan]) -> None:
        self.weights = weights
        self.activations = activations

    def requires(self, gm: fx.GraphModule) -> None:
        require_layers(gm, self.weights, aten.linear.default, "quantize_linears", "linear")

    def call(self, gm: fx.GraphModule) -> PassResult:
        cache: Dict[str, fx.Node] = {}
        for node in list(gm.graph.nodes):
            plan = self.weights.get(node.name)
            if plan is None or node.target != aten.linear.default:
                continue
            x = node.args[0]
            bias = node.args[2] if len(node.args) > 2 else None
            act = self.activations.get(x.name)
            packed = planned_weight(gm, node, plan, act, "quantize_linears")
            xq = quantized_input(gm, x, x.name, act, cache, node)
            with gm.graph.inserting_before(node):
                args = [xq, *packed_weight_args(gm, node.name, packed, plan), shift_constant(gm, node, act), bias]
                new = gm.graph.call_function(torch.ops.bitfold.quantized_linear.default, tuple(args))
            replace_layer(gm, node, new)
        gm.graph.eliminate_dead_code()
        remove_unused_constants(gm)
        return PassResult(gm, bool(self.weights))
