"""MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

PyTorch pools pad symmetrically and at most half a kernel. Other ONNX paddings become an
explicit ``aten.pad`` (with −∞ for max pooling, zeros for an average that counts padding);
an average that excludes padding cannot be padded explicitly, so that case is refused.
GlobalAveragePool maps to ``aten.adaptive_avg_pool{1,2,3}d(x, 1)``, as
``nn.AdaptiveAvgPool2d(1)`` exports to it.
"""

from __future__ import annotations

from typing import List, Sequence

import torch

from bitfold.ir.onnx_import.converters._common import aten, explicit_pads, torch_pad_list
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import Value

_MAX = {1: aten.max_pool1d.default, 2: aten.max_pool2d.default, 3: aten.max_pool3d.default}
_AVG = {1: aten.avg_pool1d.default, 2: aten.avg_pool2d.default, 3: aten.avg_pool3d.default}
_ADAPTIVE = {1: aten.adaptive_avg_pool1d.default, 2: aten.adaptive_avg_pool2d.default,
             3: aten.adaptive_avg_pool3d.default}


def _window(ctx: NodeContext):
    kernel = ctx.attr("kernel_shape")
    if kernel is None:
        raise ctx.fail("kernel_shape is required")
    n = len(kernel)
    if n not in _MAX:
        raise ctx.fail(f"{n}-D pooling is not supported (1-D to 3-D are)")
    strides, dilations = ctx.attr("strides", [1] * n), ctx.attr("dilations", [1] * n)
    rank = ctx.maybe_rank(0)
    spatial = ctx.static_dims(0)[2:] if rank is not None else [None] * n
    begin, end = explicit_pads(ctx, spatial, kernel, strides, dilations)
    return kernel, strides, dilations, begin, end


def _torch_can_pad(begin: Sequence[int], end: Sequence[int], kernel: Sequence[int], dilations: Sequence[int]) -> bool:
    return list(begin) == list(end) and all(p <= ((k - 1) * d + 1) // 2 for p, k, d in zip(begin, kernel, dilations))


@converter("MaxPool", versions=(8, 22))
def _max_pool(ctx: NodeContext) -> Value:
    if ctx.output_used(1):
        raise ctx.fail("the Indices output of MaxPool is not supported")
    x = ctx.input(0)
    kernel, strides, dilations, begin, end = _window(ctx)
    padding: List[int] = begin
    if not _torch_can_pad(begin, end, kernel, dilations):
        dtype = ctx.dtype(0)
        low = float("-inf") if dtype.is_floating_point else torch.iinfo(dtype).min
        x = ctx.b.call(aten.pad.default, x, torch_pad_list(begin, end), "constant", low)
        padding = [0] * len(kernel)
    return ctx.b.call(_MAX[len(kernel)], x, kernel, strides, padding, dilations, bool(ctx.attr("ceil_mode", 0)))


@converter("AveragePool", versions=(7, 22))
def _avg_pool(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    kernel, strides, dilations, begin, end = _window(ctx)
    if any(d != 1 for d in dilations):
        raise ctx.bad_attr("dilations", dilations, "PyTorch's average pooling has no dilation")
    count_pad = bool(ctx.attr("count_include_pad", 0))
    padding: List[int] = begin
    if not _torch_can_pad(begin, end, kernel, dilations):
        if not count_pad:
            raise ctx.bad_attr("pads", begin + end, "asymmetric or over-wide padding needs count_include_pad=1")
        x = ctx.b.call(aten.pad.default, x, torch_pad_list(begin, end))
        padding = [0] * len(kernel)
    return ctx.b.call(_AVG[len(kernel)], x, kernel, strides, padding, bool(ctx.attr("ceil_mode", 0)), count_pad)


@converter("GlobalAveragePool", versions=(1, 22))
def _global_avg_pool(ctx: NodeContext) -> Value:
    n = ctx.rank(0) - 2
    if n in _ADAPTIVE:
        return ctx.b.call(_ADAPTIVE[n], ctx.input(0), [1] * n)
    return ctx.b.call(aten.mean.dim, ctx.input(0), list(range(2, n + 2)), True)


@converter("GlobalMaxPool", versions=(1, 22))
def _global_max_pool(ctx: NodeContext) -> Value:
    n = ctx.rank(0) - 2
    return ctx.b.call(aten.amax.default, ctx.input(0), list(range(2, n + 2)), True)
