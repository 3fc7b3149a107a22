"""Conv and ConvTranspose over 1 to 3 spatial axes.

PyTorch's convolutions pad symmetrically. Asymmetric ONNX ``pads`` (and ``auto_pad=SAME_*``
with an odd total) become an explicit ``aten.pad`` before the convolution, which then
pads nothing; a transposed convolution instead trims its output with ``aten.slice``.
"""

from __future__ import annotations

from typing import List

from bitfold.ir.onnx_import.converters._common import aten, explicit_pads, torch_pad_list
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import Value

_CONV = {1: aten.conv1d.default, 2: aten.conv2d.default, 3: aten.conv3d.default}
_CONV_TRANSPOSE = {1: aten.conv_transpose1d.default, 2: aten.conv_transpose2d.input, 3: aten.conv_transpose3d.input}
_END = 9223372036854775807


def _kernel(ctx: NodeContext) -> List[int]:
    kernel = ctx.attr("kernel_shape")
    if kernel is None:
        kernel = ctx.static_dims(1)[2:]
        if None in kernel:
            raise ctx.fail("the kernel size is unknown: give kernel_shape or a weight of static shape")
    return list(kernel)


def _spatial_rank(ctx: NodeContext, table: dict) -> int:
    n = len(_kernel(ctx))
    if n not in table:
        raise ctx.fail(f"{n}-D convolutions are not supported (1-D to 3-D are)")
    return n


@converter("Conv", versions=(1, 22))
def _conv(ctx: NodeContext) -> Value:
    x, weight, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    n = _spatial_rank(ctx, _CONV)
    kernel = _kernel(ctx)
    strides, dilations = ctx.attr("strides", [1] * n), ctx.attr("dilations", [1] * n)
    rank = ctx.maybe_rank(0)
    spatial = ctx.static_dims(0)[2:] if rank is not None else [None] * n
    begin, end = explicit_pads(ctx, spatial, kernel, strides, dilations)
    padding = begin
    if begin != end:
        x = ctx.b.call(aten.pad.default, x, torch_pad_list(begin, end))
        padding = [0] * n
    return ctx.b.call(_CONV[n], x, weight, bias, strides, padding, dilations, ctx.attr("group", 1))


@converter("ConvTranspose", versions=(1, 22))
def _conv_transpose(ctx: NodeContext) -> Value:
    x, weight, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    n = _spatial_rank(ctx, _CONV_TRANSPOSE)
    if ctx.has_attr("output_shape"):
        raise ctx.bad_attr("output_shape", ctx.attr("output_shape"), "give pads and output_padding instead")
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise ctx.bad_attr("auto_pad", auto_pad, "ConvTranspose supports NOTSET and VALID")
    strides, dilations = ctx.attr("strides", [1] * n), ctx.attr("dilations", [1] * n)
    output_padding = ctx.attr("output_padding", [0] * n)
    pads = [0] * (2 * n) if auto_pad == "VALID" else ctx.attr("pads", [0] * (2 * n))
    begin, end = pads[:n], pads[n:]
    padding = [min(b, e) for b, e in zip(begin, end)]
    groups = ctx.attr("group", 1)
    y = ctx.b.call(_CONV_TRANSPOSE[n], x, weight, bias, strides, padding, output_padding, groups, dilations)
    for axis, (b, e, p) in enumerate(zip(begin, end, padding)):
        if b != e:
            y = ctx.b.call(aten.slice.Tensor, y, 2 + axis, b - p, -(e - p) if e > p else _END)
    return y
