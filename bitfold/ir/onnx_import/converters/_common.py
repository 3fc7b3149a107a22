"""Helpers shared by the converters: axes, scalar operands, run-time checks, conv/pool padding."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import fx

from bitfold.ir.onnx_import.registry import NodeContext
from bitfold.ir.onnx_import.values import Const, SymInts

aten = torch.ops.aten

Number = Union[int, float, bool]


def is_runtime(value: object) -> bool:
    """Known only at run time (a node or symbolic ints), or a weight that must stay a parameter."""
    return isinstance(value, (fx.Node, SymInts)) or (isinstance(value, Const) and value.weight)


def normalize_axis(ctx: NodeContext, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def normalize_axes(ctx: NodeContext, axes: Sequence[int], rank: int) -> List[int]:
    return [normalize_axis(ctx, a, rank) for a in axes]


def scalar_operand(ctx: NodeContext, i: int, other: int) -> Optional[Union[Number, fx.Node]]:
    """Input ``i`` as a Python number (or an int-valued size node) when it holds one element
    and input ``other`` is a run-time tensor whose rank broadcasting keeps, so the result's
    shape does not change: ``x * 0.5`` and ``x * sym_size(y, 0)``, as ``torch.export`` writes."""
    value = ctx.input(i)
    if isinstance(value, SymInts) and len(value.elems) == 1:
        element, dims = value.elems[0], 0 if value.scalar else 1
    elif isinstance(value, Const) and value.is_scalar_like:
        element, dims = value.item(), value.tensor.dim()
    else:
        return None
    if not is_runtime(ctx.input(other)):
        return None
    if dims > 0:
        rank = ctx.maybe_rank(other)
        if rank is None or rank < dims:
            return None
    return element


def is_integer(dtype: Optional[torch.dtype]) -> bool:
    return dtype is not None and not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def explicit_pads(ctx: NodeContext, spatial: Sequence[Optional[int]], kernel: Sequence[int],
                  strides: Sequence[int], dilations: Sequence[int]) -> Tuple[List[int], List[int]]:
    """Begin and end paddings per spatial axis from ``pads`` or ``auto_pad`` (conv and pooling).

    ``SAME_UPPER``/``SAME_LOWER`` pad so that ``out = ceil(in / stride)``; with strides of 1
    that total is ``(k - 1) * d`` for any size, otherwise the input sizes must be static.
    """
    n = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = ctx.attr("pads", [0] * (2 * n))
        return list(pads[:n]), list(pads[n:])
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.bad_attr("auto_pad", auto_pad)
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        span = (k - 1) * d + 1
        if s == 1:
            total = span - 1
        elif size is None:
            raise ctx.bad_attr("auto_pad", auto_pad, "with strides > 1 it needs static spatial sizes")
        else:
            total = max((-(-size // s) - 1) * s + span - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin, end


def torch_pad_list(begin: Sequence, end: Sequence) -> List:
    """ONNX begin/end pads of the trailing axes as ``aten.pad``'s list (last axis first)."""
    pads: List = []
    for b, e in zip(reversed(begin), reversed(end)):
        pads += [b, e]
    return pads
