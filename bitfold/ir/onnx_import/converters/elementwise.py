"""Elementwise operators: unary math, arithmetic, comparisons, logic, Where, Clip, Min/Max/Sum/Mean.

A one-element constant operand becomes a Python scalar, as ``torch.export`` writes
``x * 0.5`` (``aten.mul.Tensor(x, 0.5)``, ``aten.rsub.Scalar(x, 1.0)``, ``aten.eq.Scalar``).
On shape values (:class:`SymInts`), arithmetic and comparisons are evaluated at import time
where they can be (``batch * seq`` becomes ``operator.mul`` on two ``sym_size`` nodes);
otherwise they run on tensors. Integer ``Div`` truncates, as ONNX specifies.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from bitfold.ir.onnx_import import shapes
from bitfold.ir.onnx_import.converters._common import aten, is_integer, is_runtime, scalar_operand
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import Const, SymInts, Value, int_elements, is_scalar_shape, shape_value

_UNARY = {
    "Sqrt": aten.sqrt.default, "Reciprocal": aten.reciprocal.default, "Neg": aten.neg.default,
    "Abs": aten.abs.default, "Exp": aten.exp.default, "Log": aten.log.default, "Floor": aten.floor.default,
    "Ceil": aten.ceil.default, "Tanh": aten.tanh.default, "Sigmoid": aten.sigmoid.default,
    "Relu": aten.relu.default, "Erf": aten.erf.default, "Sign": aten.sign.default, "Sin": aten.sin.default,
    "Cos": aten.cos.default, "Tan": aten.tan.default, "Round": aten.round.default,
    "Softplus": aten.softplus.default, "HardSwish": aten.hardswish.default, "Mish": aten.mish.default,
    "Not": aten.logical_not.default, "IsNaN": aten.isnan.default,
}


def _unary(ctx: NodeContext) -> Value:
    return ctx.b.call(_UNARY[ctx.node.op_type], ctx.input(0))


for _ops, _versions in (
    (("Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Floor", "Ceil", "Tanh", "Sigmoid"), (6, 13)),
    (("Relu",), (6, 14)),
    (("Erf", "Sign"), (9, 13)),
    (("Sin", "Cos", "Tan", "Softplus", "HardSwish", "Mish"), (1, 22)),
    (("Round",), (11, 22)),
    (("Not",), (1, 1)),
    (("IsNaN",), (9, 20)),
):
    converter(*_ops, versions=_versions)(_unary)


# -- arithmetic ---------------------------------------------------------------------------
_SHAPE_OPS = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Mod": "mod"}


def _symbolic(ctx: NodeContext, op: str, compare: bool) -> Optional[Value]:
    """``op`` on two shape values, at least one symbolic; ``None`` when it needs tensors."""
    a, b = ctx.input(0), ctx.input(1)
    if not (isinstance(a, SymInts) or isinstance(b, SymInts)):
        return None
    xs, ys = int_elements(a), int_elements(b)
    pairs = shapes.broadcast(xs, ys) if xs is not None and ys is not None else None
    if pairs is None:
        return None
    scalar = is_scalar_shape(a) and is_scalar_shape(b)
    if compare:
        flags = [shapes.compare(ctx.b, op, x, y) for x, y in pairs]
        if any(f is None for f in flags):
            return None
        data = torch.tensor(flags, dtype=torch.bool)
        return Const(data.reshape(()) if scalar else data, ctx.node.output[0])
    elems = [shapes.arith(ctx.b, op, x, y) for x, y in pairs]
    if any(e is None for e in elems):
        return None
    return shape_value(elems, scalar, ctx.dtype(0), ctx.node.output[0])


@converter("Add", "Sub", "Mul", "Div", versions=(7, 14))
def _arithmetic(ctx: NodeContext) -> Value:
    op = _SHAPE_OPS[ctx.node.op_type]
    symbolic = _symbolic(ctx, op, compare=False)
    if symbolic is not None:
        return symbolic
    a, b = ctx.input(0), ctx.input(1)
    rhs, lhs = scalar_operand(ctx, 1, 0), scalar_operand(ctx, 0, 1)
    if op == "div":
        if is_integer(ctx.maybe_dtype(0) or ctx.maybe_dtype(1)):
            return ctx.b.call(aten.div.Tensor_mode, a, b if rhs is None else rhs, rounding_mode="trunc")
        if lhs == 1:  # 1 / x rounds exactly like reciprocal(x); other numerators stay a division
            return ctx.b.call(aten.reciprocal.default, b)
        return ctx.b.call(aten.div.Tensor, a, b if rhs is None else rhs)
    target = {"add": aten.add.Tensor, "sub": aten.sub.Tensor, "mul": aten.mul.Tensor}[op]
    if rhs is not None:
        return ctx.b.call(target, a, rhs)
    if lhs is not None:
        return ctx.b.call(aten.rsub.Scalar, b, lhs) if op == "sub" else ctx.b.call(target, b, lhs)
    return ctx.b.call(target, a, b)


@converter("Mod", versions=(10, 28))
def _mod(ctx: NodeContext) -> Value:
    fmod = ctx.attr("fmod", 0)
    if not fmod:
        symbolic = _symbolic(ctx, "mod", compare=False)
        if symbolic is not None:
            return symbolic
    rhs = scalar_operand(ctx, 1, 0)
    ops = (aten.fmod.Tensor, aten.fmod.Scalar) if fmod else (aten.remainder.Tensor, aten.remainder.Scalar)
    tensor_op, scalar_op = ops
    if rhs is not None:
        return ctx.b.call(scalar_op, ctx.input(0), rhs)
    return ctx.b.call(tensor_op, ctx.input(0), ctx.input(1))


@converter("Pow", versions=(7, 15))
def _pow(ctx: NodeContext) -> Value:
    base, exponent = ctx.input(0), ctx.input(1)
    base_dtype, exp_dtype = ctx.maybe_dtype(0), ctx.maybe_dtype(1)
    rhs, lhs = scalar_operand(ctx, 1, 0), scalar_operand(ctx, 0, 1)
    rhs = rhs if isinstance(rhs, (int, float)) else None
    lhs = lhs if isinstance(lhs, (int, float)) else None
    produced: Optional[torch.dtype] = None
    if rhs is not None:
        if is_integer(base_dtype) and float(rhs).is_integer():
            rhs = int(rhs)
        result = ctx.b.call(aten.pow.Tensor_Scalar, base, rhs)
        if base_dtype is not None:
            produced = torch.result_type(torch.empty(1, dtype=base_dtype), rhs)
    elif lhs is not None:
        result = ctx.b.call(aten.pow.Scalar, lhs, exponent)
        if exp_dtype is not None:
            produced = torch.result_type(lhs, torch.empty(1, dtype=exp_dtype))
    else:
        result = ctx.b.call(aten.pow.Tensor_Tensor, base, exponent)
        if base_dtype is not None and exp_dtype is not None:
            produced = torch.promote_types(base_dtype, exp_dtype)
    # ONNX keeps the base's type where torch promotes (int ** float -> float).
    if produced is not None and produced != base_dtype:
        result = ctx.b.call(aten.to.dtype, result, base_dtype)
    return result


# -- comparisons and logic ----------------------------------------------------------------
_COMPARE = {
    "Equal": ("eq", aten.eq.Tensor, aten.eq.Scalar, aten.eq.Scalar),
    "Less": ("lt", aten.lt.Tensor, aten.lt.Scalar, aten.gt.Scalar),
    "Greater": ("gt", aten.gt.Tensor, aten.gt.Scalar, aten.lt.Scalar),
    "LessOrEqual": ("le", aten.le.Tensor, aten.le.Scalar, aten.ge.Scalar),
    "GreaterOrEqual": ("ge", aten.ge.Tensor, aten.ge.Scalar, aten.le.Scalar),
}


@converter("Equal", versions=(7, 19))
@converter("Less", "Greater", versions=(7, 13))
@converter("LessOrEqual", "GreaterOrEqual", versions=(12, 16))
def _compare(ctx: NodeContext) -> Value:
    op, tensor_op, scalar_op, flipped_op = _COMPARE[ctx.node.op_type]
    symbolic = _symbolic(ctx, op, compare=True)
    if symbolic is not None:
        return symbolic
    a, b = ctx.input(0), ctx.input(1)
    rhs, lhs = scalar_operand(ctx, 1, 0), scalar_operand(ctx, 0, 1)
    if rhs is not None:
        return ctx.b.call(scalar_op, a, rhs)
    if lhs is not None:
        return ctx.b.call(flipped_op, b, lhs)
    return ctx.b.call(tensor_op, a, b)


@converter("And", "Or", "Xor", versions=(7, 7))
def _logical(ctx: NodeContext) -> Value:
    target = {"And": aten.logical_and.default, "Or": aten.logical_or.default, "Xor": aten.logical_xor.default}
    return ctx.b.call(target[ctx.node.op_type], ctx.input(0), ctx.input(1))


@converter("Where", versions=(9, 16))
def _where(ctx: NodeContext) -> Value:
    cond, x, y = ctx.input(0), ctx.input(1), ctx.input(2)
    flags = cond.tensor.reshape(-1).tolist() if isinstance(cond, Const) and cond.tensor.dim() <= 1 else None
    xs, ys = int_elements(x), int_elements(y)
    if flags is not None and xs is not None and ys is not None and (isinstance(x, SymInts) or isinstance(y, SymInts)):
        n = max(len(flags), len(xs), len(ys))
        if all(len(v) in (1, n) for v in (flags, xs, ys)):
            flags, xs, ys = (v * n if len(v) == 1 else v for v in (flags, xs, ys))
            scalar = all(is_scalar_shape(v) for v in (cond, x, y))
            picked = [a if f else b for f, a, b in zip(flags, xs, ys)]
            return shape_value(picked, scalar, ctx.dtype(1), ctx.node.output[0])
    rhs = scalar_operand(ctx, 2, 1) if is_runtime(x) else None
    lhs = scalar_operand(ctx, 1, 2) if is_runtime(y) else None
    if rhs is not None:
        return ctx.b.call(aten.where.ScalarOther, cond, x, rhs)
    if lhs is not None:
        return ctx.b.call(aten.where.ScalarSelf, cond, lhs, y)
    return ctx.b.call(aten.where.self, cond, x, y)


# -- clamping and variadic ops ------------------------------------------------------------
@converter("Clip", versions=(6, 6))
def _clip_attrs(ctx: NodeContext) -> Value:
    low, high = ctx.attr("min"), ctx.attr("max")
    if low is None and high is None:
        return ctx.input(0)
    return ctx.b.call(aten.clamp.default, ctx.input(0), low, high)


@converter("Clip", versions=(11, 13))
def _clip(ctx: NodeContext) -> Value:
    x, low, high = ctx.input(0), ctx.input(1), ctx.input(2)
    if low is None and high is None:
        return x
    if is_runtime(low) or is_runtime(high):
        return ctx.b.call(aten.clamp.Tensor, x, low, high)
    return ctx.b.call(aten.clamp.default, x, *(None if v is None else v.item() for v in (low, high)))


@converter("Min", "Max", "Sum", "Mean", versions=(8, 13))
def _variadic(ctx: NodeContext) -> Value:
    op = ctx.node.op_type
    values: List[Value] = [v for v in ctx.inputs if v is not None]
    target = {"Min": aten.minimum.default, "Max": aten.maximum.default}.get(op, aten.add.Tensor)
    result = values[0]
    for v in values[1:]:
        result = ctx.b.call(target, result, v)
    if op == "Mean" and len(values) > 1:
        result = ctx.b.call(aten.div.Tensor, result, len(values))
    return result
