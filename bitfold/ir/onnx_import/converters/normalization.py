"""BatchNormalization, LayerNormalization, InstanceNormalization, GroupNormalization.

Inference forms only, with the argument lists ``torch.export`` writes:
``aten.batch_norm(x, γ, β, mean, var, False, 0.1, ε, False)`` (ONNX's momentum plays no
part in inference; PyTorch's default 0.1 is written), ``aten.layer_norm(x, shape, γ, β, ε,
False)``. The extra training outputs (running statistics, saved mean and inverse std) are
refused if a later node uses them.
"""

from __future__ import annotations

from typing import List

from bitfold.ir.onnx_import.converters._common import aten, normalize_axis
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import Value


def _only_first_output(ctx: NodeContext, what: str) -> None:
    for k in range(1, ctx.num_outputs):
        if ctx.output_used(k):
            raise ctx.fail(f"output #{k} ({what}) is only produced in training and is not supported")


@converter("BatchNormalization", versions=(7, 15))
def _batch_norm(ctx: NodeContext) -> Value:
    _only_first_output(ctx, "running statistics")
    if ctx.attr("training_mode", 0):
        raise ctx.bad_attr("training_mode", 1, "only inference is supported")
    if ctx.attr("spatial", 1) != 1:
        raise ctx.bad_attr("spatial", 0)
    x, scale, bias, mean, var = ctx.inputs[:5]
    return ctx.b.call(aten.batch_norm.default, x, scale, bias, mean, var, False, 0.1, ctx.attr("epsilon", 1e-5), False)


@converter("LayerNormalization", versions=(17, 17))
def _layer_norm(ctx: NodeContext) -> Value:
    _only_first_output(ctx, "mean / inverse standard deviation")
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    rank = ctx.rank(0)
    axis = normalize_axis(ctx, ctx.attr("axis", -1), rank)
    shape: List = ctx.dims(0)[axis:]
    eps = ctx.attr("epsilon", 1e-5)
    affine_fits = all(ctx.type_of(i) is not None and ctx.type_of(i).dims == tuple(shape)
                      for i in (1, 2) if ctx.has(i))
    if affine_fits:
        return ctx.b.call(aten.layer_norm.default, x, shape, scale, bias, eps, False)
    # γ/β that only broadcast to the normalized shape cannot be layer_norm's weight/bias.
    y = ctx.b.call(aten.layer_norm.default, x, shape, None, None, eps, False)
    y = ctx.b.call(aten.mul.Tensor, y, scale)
    return y if bias is None else ctx.b.call(aten.add.Tensor, y, bias)


@converter("InstanceNormalization", versions=(6, 22))
def _instance_norm(ctx: NodeContext) -> Value:
    x, scale, bias = ctx.inputs[:3]
    eps = ctx.attr("epsilon", 1e-5)
    return ctx.b.call(aten.instance_norm.default, x, scale, bias, None, None, True, 0.1, eps, False)


@converter("GroupNormalization", versions=(21, 21))
def _group_norm(ctx: NodeContext) -> Value:
    x, scale, bias = ctx.inputs[:3]
    groups = ctx.attr("num_groups")
    return ctx.b.call(aten.group_norm.default, x, groups, scale, bias, ctx.attr("epsilon", 1e-5), False)
