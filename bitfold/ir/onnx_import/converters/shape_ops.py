"""Shape, Size, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Expand, Tile.

``Shape`` of a run-time tensor yields its static sizes as ints and the dynamic ones as
``aten.sym_size.int`` nodes, so ``Reshape(x, Concat(Gather(Shape(x), 0), [12, 64]))``
becomes ``aten.reshape(x, [sym_size(x, 0), 12, 64])``. Squeeze/Unsqueeze/Reshape/Transpose
of such shape values are evaluated at import time as well.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import fx

from bitfold.ir.onnx_import import shapes
from bitfold.ir.onnx_import.converters._common import aten, normalize_axes
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import SymElem, SymInts, Value, shape_value


@converter("Shape", versions=(1, 25))
def _shape(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    if isinstance(x, fx.Node):
        dims = ctx.dims(0)
    else:
        dims = [int(d) for d in ctx.type_of(0).dims]
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return shape_value(dims[start:end], False, torch.int64, ctx.node.output[0])


@converter("Size", versions=(1, 25))
def _size(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    dims = ctx.dims(0) if isinstance(x, fx.Node) else [int(d) for d in ctx.type_of(0).dims]
    return shape_value([shapes.product(ctx.b, dims)], True, torch.int64, ctx.node.output[0])


def _reshape_symbolic(ctx: NodeContext, x: SymInts, target: List[SymElem]) -> Optional[Value]:
    """Reshape of a shape value between 0-d and 1-d, the only ranks shape values have."""
    if len(target) > 1 or (len(target) == 1 and target[0] not in (-1, len(x.elems))):
        return None
    if not target and len(x.elems) != 1:
        return None
    return SymInts(x.elems, scalar=not target, dtype=x.dtype)


@converter("Reshape", versions=(5, 25))
def _reshape(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    target = ctx.elements(1)
    if not ctx.attr("allowzero", 0) and any(isinstance(e, int) and e == 0 for e in target):
        dims = ctx.dims(0)
        target = [dims[k] if isinstance(e, int) and e == 0 else e for k, e in enumerate(target)]
    if isinstance(x, SymInts):
        reshaped = _reshape_symbolic(ctx, x, target)
        if reshaped is not None:
            return reshaped
    return ctx.b.call(aten.reshape.default, x, target)


@converter("Flatten", versions=(1, 25))
def _flatten(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    rank = ctx.rank(0)
    axis = ctx.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    if axis == 1 and rank >= 2:
        return ctx.b.call(aten.flatten.using_ints, x, 1)
    if axis == 0:
        return ctx.b.call(aten.reshape.default, x, [1, -1])
    return ctx.b.call(aten.reshape.default, x, [shapes.product(ctx.b, ctx.dims(0)[:axis]), -1])


@converter("Transpose", versions=(1, 25))
def _transpose(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    if isinstance(x, SymInts):
        return x
    perm = ctx.attr("perm") or list(reversed(range(ctx.rank(0))))
    return ctx.b.call(aten.permute.default, x, perm)


def _squeeze(ctx: NodeContext, axes: Optional[List[int]]) -> Value:
    x = ctx.input(0)
    if isinstance(x, SymInts):
        if x.scalar or len(x.elems) != 1:
            raise ctx.fail("cannot squeeze a shape value with more than one element")
        return SymInts(x.elems, scalar=True, dtype=x.dtype)
    if not axes:
        return ctx.b.call(aten.squeeze.default, x)
    if len(axes) == 1:
        return ctx.b.call(aten.squeeze.dim, x, axes[0])
    return ctx.b.call(aten.squeeze.dims, x, axes)


def _unsqueeze(ctx: NodeContext, axes: List[int]) -> Value:
    x = ctx.input(0)
    if isinstance(x, SymInts):
        if not x.scalar or len(axes) != 1:
            raise ctx.fail("cannot unsqueeze a 1-d shape value")
        return SymInts(x.elems, scalar=False, dtype=x.dtype)
    if len(axes) == 1:
        return ctx.b.call(aten.unsqueeze.default, x, axes[0])
    for axis in sorted(normalize_axes(ctx, axes, ctx.rank(0) + len(axes))):
        x = ctx.b.call(aten.unsqueeze.default, x, axis)
    return x


@converter("Squeeze", versions=(1, 11))
def _squeeze_attr(ctx: NodeContext) -> Value:
    return _squeeze(ctx, ctx.attr("axes"))


@converter("Squeeze", versions=(13, 25))
def _squeeze_input(ctx: NodeContext) -> Value:
    return _squeeze(ctx, ctx.const_ints(1, "axes") if ctx.has(1) else None)


@converter("Unsqueeze", versions=(1, 11))
def _unsqueeze_attr(ctx: NodeContext) -> Value:
    return _unsqueeze(ctx, ctx.attr("axes"))


@converter("Unsqueeze", versions=(13, 25))
def _unsqueeze_input(ctx: NodeContext) -> Value:
    return _unsqueeze(ctx, ctx.const_ints(1, "axes"))


@converter("Expand", versions=(8, 13))
def _expand(ctx: NodeContext) -> Value:
    """ONNX broadcasts both ways; ``aten.expand`` only grows size-1 axes, and -1 keeps one."""
    x = ctx.input(0)
    shape = ctx.elements(1)
    have = ctx.static_dims(0)
    n = max(len(shape), len(have))
    shape = [1] * (n - len(shape)) + shape
    sizes: List[SymElem] = []
    for k, want in enumerate(shape):
        j = k - (n - len(have))
        size = have[j] if j >= 0 else 1
        if j >= 0 and (want == 1 and isinstance(want, int) or (size not in (None, 1) and not isinstance(want, int))):
            sizes.append(-1)
        elif size not in (None, 1) and isinstance(want, int) and want != size:
            raise ctx.fail(f"cannot expand size {size} to {want} on axis {k}")
        else:
            sizes.append(want)
    return ctx.b.call(aten.expand.default, x, sizes)


@converter("Tile", versions=(6, 13))
def _tile(ctx: NodeContext) -> Value:
    return ctx.b.call(aten.repeat.default, ctx.input(0), ctx.elements(1))
