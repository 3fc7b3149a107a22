"""Constant, ConstantOfShape, Range, Cast, CastLike, Identity, Dropout.

These produce values rather than compute on them: constants stay import-time values until
something uses them at run time, ``Cast`` of a shape value to another integer type stays
symbolic, and Identity/Dropout (inference) return their input unchanged.
"""

from __future__ import annotations

import torch
from torch import fx

from bitfold.ir.onnx_import.converters._common import aten, is_integer
from bitfold.ir.onnx_import.dtypes import torch_dtype
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import Const, SymInts, Value

_FLOAT8 = {torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz}


@converter("Constant", versions=(1, 25))
def _constant(ctx: NodeContext) -> Value:
    name = ctx.node.output[0]
    for key in ("sparse_value", "value_string", "value_strings"):
        if ctx.has_attr(key):
            raise ctx.bad_attr(key, "...", "only numeric dense constants are supported")
    if ctx.has_attr("value"):
        data = ctx.attr("value")
    elif ctx.has_attr("value_float") or ctx.has_attr("value_floats"):
        data = torch.tensor(ctx.attr("value_float", ctx.attr("value_floats")), dtype=torch.float32)
    elif ctx.has_attr("value_int") or ctx.has_attr("value_ints"):
        data = torch.tensor(ctx.attr("value_int", ctx.attr("value_ints")), dtype=torch.int64)
    else:
        raise ctx.fail("Constant has no value attribute")
    return Const(data, name)


@converter("ConstantOfShape", versions=(9, 25))
def _constant_of_shape(ctx: NodeContext) -> Value:
    value = ctx.attr("value")
    fill = value.reshape(-1)[0] if value is not None else torch.tensor(0.0)
    return ctx.b.call(aten.full.default, ctx.elements(0), fill.item(), dtype=fill.dtype)


@converter("Range", versions=(11, 11))
def _range(ctx: NodeContext) -> Value:
    dtype = ctx.dtype(0)
    bounds = []
    for i in range(3):
        value = ctx.input(i)
        if isinstance(value, Const):
            bounds.append(value.item())
        elif is_integer(dtype):
            bounds.append(ctx.elements(i)[0])
        else:
            bounds.append(ctx.b.emit(aten.item.default, ctx.b.tensor(value)))
    return ctx.b.call(aten.arange.start_step, *bounds, dtype=dtype)


def _cast(ctx: NodeContext, dtype: torch.dtype) -> Value:
    x = ctx.input(0)
    if dtype in _FLOAT8:
        raise ctx.fail(f"casts to {dtype} are not supported")
    if isinstance(x, SymInts) and is_integer(dtype):
        return SymInts(x.elems, x.scalar, dtype)
    return ctx.b.call(aten.to.dtype, x, dtype)


@converter("Cast", versions=(6, 28))
def _cast_to(ctx: NodeContext) -> Value:
    to = ctx.attr("to")
    try:
        dtype = torch_dtype(to, "Cast")
    except ValueError:
        raise ctx.bad_attr("to", to, "the target type has no torch equivalent") from None
    return _cast(ctx, dtype)


@converter("CastLike", versions=(15, 25))
def _cast_like(ctx: NodeContext) -> Value:
    return _cast(ctx, ctx.dtype(1))


@converter("Identity", versions=(1, 25))
def _identity(ctx: NodeContext) -> Value:
    return ctx.input(0)


@converter("Dropout", versions=(7, 22))
def _dropout(ctx: NodeContext) -> Value:
    if ctx.output_used(1):
        raise ctx.fail("the mask output of Dropout is not supported")
    training = ctx.input(2)
    if training is not None and (isinstance(training, fx.Node) or bool(training.item())):
        raise ctx.fail("Dropout in training mode is not supported")
    return ctx.input(0)
