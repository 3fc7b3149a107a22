"""Activations with attributes, and Softmax/LogSoftmax.

Where an ONNX activation equals an ATen one only for particular attribute values
(HardSigmoid with α = 1/6, β = 1/2; Selu with its standard constants), those values map to
the ATen op and others are spelled out with ``mul``/``add``/``clamp``, so nothing is
approximated. Softmax before opset 13 flattens the input to 2-D at ``axis``; that becomes a
plain ``softmax`` on the last axis when ``axis`` is the last one, and reshapes otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from bitfold.ir.onnx_import import shapes
from bitfold.ir.onnx_import.converters._common import aten, normalize_axis
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import Value

_SELU_ALPHA = 1.6732632423543772
_SELU_GAMMA = 1.0507009873554805


def _f32_equal(a: float, b: float) -> bool:
    return np.float32(a) == np.float32(b)


@converter("LeakyRelu", versions=(6, 16))
def _leaky_relu(ctx: NodeContext) -> Value:
    return ctx.b.call(aten.leaky_relu.default, ctx.input(0), ctx.attr("alpha", 0.01))


@converter("Elu", versions=(6, 22))
def _elu(ctx: NodeContext) -> Value:
    return ctx.b.call(aten.elu.default, ctx.input(0), ctx.attr("alpha", 1.0))


@converter("Selu", versions=(6, 22))
def _selu(ctx: NodeContext) -> Value:
    alpha, gamma = ctx.attr("alpha", _SELU_ALPHA), ctx.attr("gamma", _SELU_GAMMA)
    if _f32_equal(alpha, _SELU_ALPHA) and _f32_equal(gamma, _SELU_GAMMA):
        return ctx.b.call(aten.selu.default, ctx.input(0))
    return ctx.b.call(aten.elu.default, ctx.input(0), alpha, gamma)


@converter("Gelu", versions=(20, 20))
def _gelu(ctx: NodeContext) -> Value:
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.bad_attr("approximate", approximate)
    return ctx.b.call(aten.gelu.default, ctx.input(0), approximate=approximate)


@converter("HardSigmoid", versions=(6, 22))
def _hard_sigmoid(ctx: NodeContext) -> Value:
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    x = ctx.input(0)
    if _f32_equal(alpha, 1 / 6) and _f32_equal(beta, 0.5):
        return ctx.b.call(aten.hardsigmoid.default, x)
    linear = ctx.b.call(aten.add.Tensor, ctx.b.call(aten.mul.Tensor, x, alpha), beta)
    return ctx.b.call(aten.clamp.default, linear, 0.0, 1.0)


@converter("Softsign", versions=(1, 22))
def _softsign(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return ctx.b.call(aten.div.Tensor, x, ctx.b.call(aten.add.Tensor, ctx.b.call(aten.abs.default, x), 1))


@converter("PRelu", versions=(7, 16))
def _prelu(ctx: NodeContext) -> Value:
    """``aten.prelu`` when the slope is per channel (dim 1) or shared; ``where`` otherwise."""
    x, slope = ctx.input(0), ctx.input(1)
    rank, slope_dims = ctx.maybe_rank(0), ctx.type_of(1).dims if ctx.type_of(1) else None
    if rank is not None and slope_dims is not None and None not in slope_dims and len(slope_dims) <= rank:
        aligned = [1] * (rank - len(slope_dims)) + list(slope_dims)
        channels = aligned[1] if rank >= 2 else 1
        if all(d == 1 for k, d in enumerate(aligned) if k != 1):
            if list(slope_dims) != [channels]:
                slope = ctx.b.call(aten.reshape.default, slope, [channels])
            return ctx.b.call(aten.prelu.default, x, slope)
    return ctx.b.call(aten.where.self, ctx.b.call(aten.lt.Scalar, x, 0), ctx.b.call(aten.mul.Tensor, x, slope), x)


def _softmax(ctx: NodeContext, target: torch._ops.OpOverload, legacy: bool) -> Value:
    x = ctx.input(0)
    axis = ctx.attr("axis", 1 if legacy else -1)
    if not legacy:
        return ctx.b.call(target, x, axis)
    rank = ctx.rank(0)
    axis = normalize_axis(ctx, axis, rank)
    if axis == rank - 1:
        return ctx.b.call(target, x, -1)
    dims = ctx.dims(0)
    flat = ctx.b.call(aten.reshape.default, x, [shapes.product(ctx.b, dims[:axis]), -1])
    return ctx.b.call(aten.reshape.default, ctx.b.call(target, flat, 1), dims)


@converter("Softmax", "LogSoftmax", versions=(1, 11))
def _softmax_2d(ctx: NodeContext) -> Value:
    target = aten.softmax.int if ctx.node.op_type == "Softmax" else aten.log_softmax.int
    return _softmax(ctx, target, legacy=True)


@converter("Softmax", "LogSoftmax", versions=(13, 13))
def _softmax_axis(ctx: NodeContext) -> Value:
    target = aten.softmax.int if ctx.node.op_type == "Softmax" else aten.log_softmax.int
    return _softmax(ctx, target, legacy=False)
