"""Reductions (ReduceMean/Sum/Max/Min/Prod/L1/L2/LogSumExp), ArgMax/ArgMin, CumSum, TopK.

Reduce ops took ``axes`` as an attribute until they took it as an input (ReduceSum at
opset 13, the others at 18); both forms share one implementation. No axes reduces every
axis, unless ``noop_with_empty_axes`` makes the op an identity.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from bitfold.ir.onnx_import import shapes
from bitfold.ir.onnx_import.converters._common import aten, is_integer
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import SymInts, Value, shape_value


def _reduce(ctx: NodeContext, axes: Optional[List[int]]) -> Value:
    x = ctx.input(0)
    keepdim = bool(ctx.attr("keepdims", 1))
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(ctx.rank(0)))
    op = ctx.node.op_type
    if op == "ReduceMean":
        return ctx.b.call(aten.mean.dim, x, axes, keepdim)
    if op == "ReduceSum":
        return ctx.b.call(aten.sum.dim_IntList, x, axes, keepdim)
    if op == "ReduceMax":
        return ctx.b.call(aten.amax.default, x, axes, keepdim)
    if op == "ReduceMin":
        return ctx.b.call(aten.amin.default, x, axes, keepdim)
    if op == "ReduceLogSumExp":
        return ctx.b.call(aten.logsumexp.default, x, axes, keepdim)
    if op == "ReduceProd":
        return _prod(ctx, x, axes, keepdim)
    order = 2 if op == "ReduceL2" else 1
    return ctx.b.call(aten.linalg_vector_norm.default, x, order, axes, keepdim)


def _prod(ctx: NodeContext, x: Value, axes: List[int], keepdim: bool) -> Value:
    """A product of sizes stays symbolic (``numel`` in exported shape code); tensors use ``prod.dim_int``."""
    if isinstance(x, SymInts) and not x.scalar:
        size = shapes.product(ctx.b, x.elems)
        return shape_value([size], not keepdim, x.dtype, ctx.node.output[0])
    rank = ctx.rank(0)
    for axis in sorted((a % rank for a in axes), reverse=True):
        x = ctx.b.call(aten.prod.dim_int, x, axis, keepdim)
    return x


_ATTR_AXES = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSumExp")


@converter(*_ATTR_AXES, versions=(1, 13))
@converter("ReduceSum", versions=(1, 11))
def _reduce_attr(ctx: NodeContext) -> Value:
    return _reduce(ctx, ctx.attr("axes"))


@converter("ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", versions=(18, 18))
@converter("ReduceLogSumExp", versions=(18, 28))
@converter("ReduceMax", "ReduceMin", versions=(18, 20))
@converter("ReduceSum", versions=(13, 13))
def _reduce_input(ctx: NodeContext) -> Value:
    return _reduce(ctx, ctx.const_ints(1, "axes") if ctx.has(1) else None)


@converter("ArgMax", "ArgMin", versions=(1, 13))
def _arg_reduce(ctx: NodeContext) -> Value:
    if ctx.attr("select_last_index", 0):
        raise ctx.bad_attr("select_last_index", 1)
    target = aten.argmax.default if ctx.node.op_type == "ArgMax" else aten.argmin.default
    return ctx.b.call(target, ctx.input(0), ctx.attr("axis", 0), bool(ctx.attr("keepdims", 1)))


@converter("CumSum", versions=(11, 14))
def _cumsum(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    axis = ctx.const_ints(1, "axis")[0]
    dtype = ctx.maybe_dtype(0)
    # torch accumulates integers in int64; ONNX keeps the input type.
    kwargs = {"dtype": dtype} if is_integer(dtype) and dtype != torch.int64 else {}
    reverse, exclusive = ctx.attr("reverse", 0), ctx.attr("exclusive", 0)
    if reverse:
        x = ctx.b.call(aten.flip.default, x, [axis])
    y = ctx.b.call(aten.cumsum.default, x, axis, **kwargs)
    if exclusive:
        y = ctx.b.call(aten.sub.Tensor, y, x)
    return ctx.b.call(aten.flip.default, y, [axis]) if reverse else y


@converter("TopK", versions=(11, 24))
def _topk(ctx: NodeContext) -> List[Value]:
    k = ctx.elements(1)[0]
    largest, ordered = bool(ctx.attr("largest", 1)), bool(ctx.attr("sorted", 1))
    return ctx.b.call_multi(aten.topk.default, 2, ctx.input(0), k, ctx.attr("axis", -1), largest, ordered)
