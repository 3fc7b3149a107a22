"""``QuantizeLinear``/``DequantizeLinear`` converters for :func:`bitfold.ir.from_onnx`.

Simulate-mode files hold Q/DQ pairs; for ``from_onnx(export_onnx(q))`` to re-import them,
bitfold's importer needs these two operators. They are registered into the importer's
converter registry (``bitfold.ir.onnx_import.registry.converter``) when
:mod:`bitfold.backends.onnx` is imported, and emit the same ATen arithmetic bitfold's
formats use, so the re-imported graph computes exactly what the file does::

    QuantizeLinear:    q = clamp(round_half_even(x / s) + z, qmin, qmax)      (integers, as float levels)
                       q = float8(clamp(x / s, -max, max))                      (float8 types)
    DequantizeLinear:  y = (q - z) · s

Scales per tensor, per axis and per block are supported. Types torch cannot hold as
tensors (``int4``/``uint4`` initializers, as compressed-mode weights use) stay unsupported
by the importer; the quantized activations of simulate mode carry no such initializer
(their zero point is implied by ``output_dtype`` when it is 0).
"""

from __future__ import annotations

from typing import Optional

import torch
from onnx import TensorProto

from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import Const, Value

aten = torch.ops.aten

_INT_RANGES = {
    TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255),
    TensorProto.INT4: (-8, 7), TensorProto.UINT4: (0, 15),
    TensorProto.INT16: (-(2**15), 2**15 - 1), TensorProto.UINT16: (0, 2**16 - 1),
}
_FLOAT8 = {TensorProto.FLOAT8E4M3FN: (torch.float8_e4m3fn, 448.0), TensorProto.FLOAT8E5M2: (torch.float8_e5m2, 57344.0)}
_TORCH_TO_ONNX = {torch.int8: TensorProto.INT8, torch.uint8: TensorProto.UINT8, torch.int16: TensorProto.INT16,
                  torch.uint16: TensorProto.UINT16, torch.float8_e4m3fn: TensorProto.FLOAT8E4M3FN,
                  torch.float8_e5m2: TensorProto.FLOAT8E5M2}


def _quantized_type(ctx: NodeContext) -> int:
    declared = ctx.attr("output_dtype", 0)
    if declared:
        return declared
    zero = ctx.input(2)
    if isinstance(zero, Const):
        if zero.tensor.dtype not in _TORCH_TO_ONNX:
            raise ctx.fail(f"zero point of type {zero.tensor.dtype} is not supported")
        return _TORCH_TO_ONNX[zero.tensor.dtype]
    if zero is not None:
        raise ctx.fail("the zero point must be a constant")
    return TensorProto.UINT8


def _aligned(ctx: NodeContext, value: Optional[Value], i_ref: int) -> Optional[Value]:
    """A per-axis or per-block scale / zero point reshaped to broadcast against input ``i_ref``."""
    if value is None or not isinstance(value, Const) or value.tensor.numel() == 1:
        return value if not isinstance(value, Const) else Const(value.tensor.reshape(()).float(), value.name)
    rank = ctx.rank(i_ref)
    axis = ctx.attr("axis", 1) % rank
    block = ctx.attr("block_size", 0)
    data = value.tensor.float()
    if block:
        size = ctx.static_dims(i_ref)[axis]
        if size is None:
            raise ctx.fail("a blocked scale needs a static size along its axis")
        data = data.repeat_interleave(block, dim=axis).narrow(axis, 0, size)
    else:
        view = [1] * rank
        view[axis] = data.numel()
        data = data.reshape(view)
    return Const(data, value.name)


@converter("QuantizeLinear", versions=(10, 21))
def _quantize_linear(ctx: NodeContext) -> Value:
    qtype = _quantized_type(ctx)
    scale, zero = _aligned(ctx, ctx.input(1), 0), _aligned(ctx, ctx.input(2), 0)
    y = ctx.b.call(aten.div.Tensor, ctx.input(0), scale)
    if qtype in _FLOAT8:
        dtype, top = _FLOAT8[qtype]
        return ctx.b.call(aten._to_copy.default, ctx.b.call(aten.clamp.default, y, -top, top), dtype=dtype)
    if qtype not in _INT_RANGES:
        raise ctx.fail(f"quantizing to {TensorProto.DataType.Name(qtype)} is not supported")
    lo, hi = _INT_RANGES[qtype]
    q = ctx.b.call(aten.round.default, y)
    if zero is not None:
        q = ctx.b.call(aten.add.Tensor, q, zero)
    return ctx.b.call(aten.clamp.default, q, lo, hi)


@converter("DequantizeLinear", versions=(10, 21))
def _dequantize_linear(ctx: NodeContext) -> Value:
    scale, zero = _aligned(ctx, ctx.input(1), 0), _aligned(ctx, ctx.input(2), 0)
    q = ctx.b.call(aten._to_copy.default, ctx.input(0), dtype=torch.float32)
    if zero is not None:
        q = ctx.b.call(aten.sub.Tensor, q, zero)
    return ctx.b.call(aten.mul.Tensor, q, scale)
