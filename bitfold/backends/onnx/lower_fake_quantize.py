"""Lowering of ``bitfold::fake_quantize`` (``fmt.quantize(x, scale, axis, group_size, zero_point)``).

The same in both export modes: a quantize point of
:func:`~bitfold.backends.onnx.quantize_points.emit_quantizer` — ``QuantizeLinear`` →
``DequantizeLinear`` where ONNX Runtime has the type, the format's local function where
it does not. Constant scales are read as values (so per-channel and per-group layouts
can be arranged); a scale computed at run time is passed through for per-tensor use.
"""

from __future__ import annotations

import torch

from bitfold.backends.onnx.lowering import BitfoldNode, LoweringContext
from bitfold.backends.onnx.quantize_points import QuantizePoint, emit_quantizer
from bitfold.backends.onnx.registry import register_lowering
from bitfold.ir import formats

_X, _SCALE, _ZERO = range(3)


def _output(x, *args, **kwargs):
    return x.shape, x.dtype


@register_lowering(torch.ops.bitfold.fake_quantize.default, output=_output)
def lower_fake_quantize(node: BitfoldNode, ctx: LoweringContext) -> None:
    fmt = formats.get(node.attrs["fmt"])
    scale = ctx.value(node.input(_SCALE))
    zero = ctx.value(node.input(_ZERO))
    qp = QuantizePoint(
        fmt,
        scale if scale is not None else node.input(_SCALE),
        zero if zero is not None else node.input(_ZERO),
        node.attrs.get("axis"),
        node.attrs.get("group_size"),
    )
    em = ctx.emitter(node)
    x = node.input(_X)
    y = emit_quantizer(em, ctx.library, x, qp, ctx.shape(x), f"{node.op} node {node.name!r}")
    kind = "QuantizeLinear/DequantizeLinear" if any(n.op_type == "QuantizeLinear" for n in em.nodes) \
        else "local function"
    ctx.record(node, op="fake_quantize", format=fmt.name, lowering=kind,
               scale=float(scale) if scale is not None and scale.size == 1 else None)
    ctx.finish(node, em, y)
