"""Gather, GatherElements, GatherND, Slice, Split, Concat, Trilu, Pad.

Gather of a 2-D float weight along axis 0 is a table lookup and becomes
``aten.embedding(weight, indices)``, what ``nn.Embedding`` exports to. Otherwise a constant
scalar index is ``aten.select``, a constant 1-D index ``aten.index_select``, and a run-time
index ``aten.index.Tensor`` (which, like ONNX, accepts negative indices). Slices with a
negative step, which ``aten.slice`` lacks, are a ``slice`` + ``flip`` + strided ``slice``.
All of these are evaluated at import time on shape values. GatherElements is
``aten.gather``, which rejects negative run-time indices (ONNX counts them from the end).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from bitfold.ir.onnx_import import shapes
from bitfold.ir.onnx_import.converters._common import aten, normalize_axis, torch_pad_list
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import Const, SymElem, SymInts, Value, int_elements, is_shape_like, shape_value

_END = 9223372036854775807


# -- Gather -------------------------------------------------------------------------------
@converter("Gather", versions=(1, 13))
def _gather(ctx: NodeContext) -> Value:
    data, indices = ctx.input(0), ctx.input(1)
    axis = ctx.attr("axis", 0)
    if isinstance(data, SymInts) and isinstance(indices, Const):
        picked = [data.elems[i] for i in indices.tensor.reshape(-1).tolist()]
        return shape_value(picked, indices.tensor.dim() == 0, data.dtype, ctx.node.output[0])
    if isinstance(data, Const) and data.weight and data.tensor.dim() == 2 and axis in (0, -2):
        return ctx.b.call(aten.embedding.default, data, indices)
    if isinstance(indices, Const) and indices.tensor.dim() == 0:
        return ctx.b.call(aten.select.int, data, axis, int(indices.item()))
    if isinstance(indices, Const) and indices.tensor.dim() == 1:
        return ctx.b.call(aten.index_select.default, data, axis, _nonnegative(ctx, indices, axis))
    axis = normalize_axis(ctx, axis, ctx.rank(0))
    return ctx.b.call(aten.index.Tensor, data, [None] * axis + [indices])


@converter("GatherElements", versions=(11, 13))
def _gather_elements(ctx: NodeContext) -> Value:
    """``aten.gather``; constant negative indices are resolved now, run-time ones must be >= 0."""
    data, indices = ctx.input(0), ctx.input(1)
    axis = ctx.attr("axis", 0)
    if isinstance(indices, Const) and bool((indices.tensor < 0).any()):
        indices = _nonnegative(ctx, indices, axis)
    return ctx.b.call(aten.gather.default, data, axis, indices)


@converter("GatherND", versions=(11, 13))
def _gather_nd(ctx: NodeContext) -> Value:
    """``data[i0, i1, …]`` with ``i_k = indices[..., k]``: ``aten.index.Tensor`` (negatives count from the end)."""
    if ctx.attr("batch_dims", 0):
        raise ctx.bad_attr("batch_dims", ctx.attr("batch_dims"))
    indices = ctx.input(1)
    depth = ctx.static_dims(1)[-1]
    if depth is None:
        raise ctx.fail("the last axis of GatherND's indices must have a static size")
    columns = [ctx.b.call(aten.select.int, indices, -1, k) for k in range(depth)]
    return ctx.b.call(aten.index.Tensor, ctx.input(0), columns)


def _nonnegative(ctx: NodeContext, indices: Const, axis: int) -> Const:
    """``indices`` with negative entries counted from the end (``index_select`` needs that)."""
    if not bool((indices.tensor < 0).any()):
        return indices
    size = ctx.static_dims(0)[axis]
    if size is None:
        raise ctx.fail("negative Gather indices along an axis of dynamic size are not supported")
    return Const(torch.where(indices.tensor < 0, indices.tensor + size, indices.tensor), indices.name)


# -- Slice --------------------------------------------------------------------------------
def _slice(ctx: NodeContext, starts: List[SymElem], ends: List[SymElem], axes: Optional[List[int]],
           steps: Optional[List[int]]) -> Value:
    x = ctx.input(0)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if isinstance(x, SymInts):
        if any(not isinstance(v, int) for v in starts + ends):
            raise ctx.fail("slicing a shape value needs constant starts and ends")
        elems = list(x.elems)[slice(starts[0], ends[0], steps[0])]
        return shape_value(elems, False, x.dtype, ctx.node.output[0])
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step > 0:
            x = ctx.b.call(aten.slice.Tensor, x, axis, start, end, step)
        else:
            x = _reverse_slice(ctx, x, axis, start, end, step)
    return x


def _reverse_slice(ctx: NodeContext, x: Value, axis: int, start: SymElem, end: SymElem, step: int) -> Value:
    size = ctx.static_dims(0)[axis]
    if size is None or not isinstance(start, int) or not isinstance(end, int):
        raise ctx.fail("Slice with a negative step needs a static size and constant starts/ends")
    picked = range(size)[slice(start, end, step)]
    if not picked:
        return ctx.b.call(aten.slice.Tensor, x, axis, 0, 0)
    window = ctx.b.call(aten.slice.Tensor, x, axis, picked[-1], picked[0] + 1)
    flipped = ctx.b.call(aten.flip.default, window, [axis])
    return ctx.b.call(aten.slice.Tensor, flipped, axis, 0, _END, -step)


@converter("Slice", versions=(1, 1))
def _slice_attrs(ctx: NodeContext) -> Value:
    return _slice(ctx, ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None)


@converter("Slice", versions=(10, 13))
def _slice_inputs(ctx: NodeContext) -> Value:
    axes = ctx.const_ints(3, "axes") if ctx.has(3) else None
    steps = ctx.const_ints(4, "steps") if ctx.has(4) else None
    return _slice(ctx, ctx.elements(1), ctx.elements(2), axes, steps)


# -- Split and Concat ---------------------------------------------------------------------
def _split(ctx: NodeContext, sizes: Optional[List[SymElem]], uneven: bool) -> List[Value]:
    x = ctx.input(0)
    axis = ctx.attr("axis", 0)
    count = ctx.attr("num_outputs", ctx.num_outputs)
    if sizes is None:
        total = ctx.dims(0)[axis]
        chunk = shapes.arith(ctx.b, "div", shapes.arith(ctx.b, "add", total, count - 1) if uneven else total, count)
        last = shapes.arith(ctx.b, "sub", total, shapes.arith(ctx.b, "mul", chunk, count - 1))
        sizes = [chunk] * (count - 1) + [last]
    if isinstance(x, SymInts):
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        return [shape_value(list(x.elems[a:b]), False, x.dtype, name) for a, b, name in
                zip(offsets, offsets[1:], ctx.node.output)]
    return ctx.b.call_multi(aten.split_with_sizes.default, len(sizes), x, sizes, axis)


@converter("Split", versions=(2, 11))
def _split_attr(ctx: NodeContext) -> List[Value]:
    return _split(ctx, ctx.attr("split"), uneven=False)


@converter("Split", versions=(13, 13))
def _split_input(ctx: NodeContext) -> List[Value]:
    return _split(ctx, ctx.elements(1) if ctx.has(1) else None, uneven=False)


@converter("Split", versions=(18, 18))
def _split_num_outputs(ctx: NodeContext) -> List[Value]:
    return _split(ctx, ctx.elements(1) if ctx.has(1) else None, uneven=True)


@converter("Concat", versions=(4, 13))
def _concat(ctx: NodeContext) -> Value:
    values = [v for v in ctx.inputs if v is not None]
    if any(isinstance(v, SymInts) for v in values) and all(is_shape_like(v) for v in values):
        elems = [e for v in values for e in int_elements(v)]
        return shape_value(elems, False, ctx.dtype(0), ctx.node.output[0])
    if len(values) > 1:
        values = [v for v in values if not (isinstance(v, Const) and v.tensor.numel() == 0)] or values[:1]
    return ctx.b.call(aten.cat.default, values, ctx.attr("axis"))


# -- Trilu and Pad ------------------------------------------------------------------------
@converter("Trilu", versions=(14, 14))
def _trilu(ctx: NodeContext) -> Value:
    k = ctx.elements(1)[0] if ctx.has(1) else 0
    target = aten.triu.default if ctx.attr("upper", 1) else aten.tril.default
    return ctx.b.call(target, ctx.input(0), k)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad(ctx: NodeContext, pads: List[SymElem], value: Optional[float], axes: Optional[List[int]]) -> Value:
    mode = ctx.attr("mode", "constant")
    if mode not in _PAD_MODES or (mode == "wrap" and ctx.version < 19):
        raise ctx.bad_attr("mode", mode)
    n = len(pads) // 2
    if axes is None:
        begin, end = pads[:n], pads[n:]
    else:
        rank = ctx.rank(0)
        begin, end = [0] * rank, [0] * rank
        for k, axis in enumerate(axes):
            axis = normalize_axis(ctx, axis, rank)
            begin[axis], end[axis] = pads[k], pads[k + n]
    torch_pads = torch_pad_list(begin, end)
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    x = ctx.input(0)
    if mode == "constant":
        return ctx.b.call(aten.pad.default, x, torch_pads, "constant", value or None)
    # torch pads the last k <= 3 axes of a (k+1)- or (k+2)-D tensor in the other modes.
    rank, k = ctx.rank(0), len(torch_pads) // 2
    if rank > k + 2:
        torch_pads = torch_pads + [0, 0] * (rank - 2 - k)
    if len(torch_pads) > 6:
        raise ctx.bad_attr("mode", mode, f"pads more than 3 axes of a rank-{rank} tensor")
    batch = max(k + 1 - rank, 0)
    for _ in range(batch):
        x = ctx.b.call(aten.unsqueeze.default, x, 0)
    y = ctx.b.call(aten.pad.default, x, torch_pads, _PAD_MODES[mode])
    for _ in range(batch):
        y = ctx.b.call(aten.squeeze.dim, y, 0)
    return y


@converter("Pad", versions=(2, 2))
def _pad_attrs(ctx: NodeContext) -> Value:
    return _pad(ctx, ctx.attr("pads"), ctx.attr("value", 0.0), None)


@converter("Pad", versions=(11, 25))
def _pad_inputs(ctx: NodeContext) -> Value:
    value = ctx.scalar(2) if ctx.has(2) else None
    axes = ctx.const_ints(3, "axes") if ctx.has(3) else None
    return _pad(ctx, ctx.elements(1), value, axes)
