"""Give every Linear and Conv its bias, and turn constant-weight MatMuls into Linears.

ONNX graphs (and some PyTorch code) write ``x @ W + b`` op by op; backends and quantization
passes want one ``aten.linear``. Rewrites, with ``W`` and ``b`` constants::

    matmul(x, W)                    →  linear(x, Wᵀ)            (W of shape [K, N])
    linear(x, W, b0) + b            →  linear(x, W, b0 + b)     (b of shape [N] or [1, …, N])
    conv2d(x, W, b0, …) + b         →  conv2d(x, W, b0 + b, …)  (b of shape [C, 1, 1] or [1, C, 1, 1])

A missing ``b0`` counts as zero. Refused (with the reason recorded) when the addend is not a
constant or would broadcast along more than the output channels. Exact: the same sum,
computed in the same place.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import fx

from bitfold.ir.graph_utils import attr_value, constant_node, node_rank
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule

aten = torch.ops.aten


class MatMulToLinear(RewriteRule):
    def patterns(self) -> Sequence[Callable]:
        return [lambda x, w: aten.matmul.default(x, w)]

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        w = attr_value(gm, match["w"])
        if w is None:
            return self.fail("the right operand is computed at run time (a matmul between activations stays)")
        if w.dim() != 2:
            return self.fail(f"the constant operand has rank {w.dim()}, not 2")
        if node_rank(match["x"]) in (None, 0, 1):
            return self.fail("the left operand's rank is unknown or below 2")
        return None

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        w = attr_value(gm, match["w"])
        w_node = constant_node(gm, f"{match['w'].target}_t", w.t().contiguous())
        return gm.graph.call_function(aten.linear.default, (match["x"], w_node, None))


def _bias_vector(gm: fx.GraphModule, node: fx.Node, channels: int, channel_axis: int, rank: int):
    """The addend as a [channels] vector if it only varies along the output channel axis."""
    b = attr_value(gm, node)
    if b is None:
        return None
    if b.dim() > rank:
        return None
    shape = [1] * (rank - b.dim()) + list(b.shape)
    if shape[channel_axis] not in (1, channels) or any(
        s != 1 for i, s in enumerate(shape) if i != channel_axis
    ):
        return None
    return b.reshape(shape).reshape(-1).expand(channels).contiguous()


class _AddBias(RewriteRule):
    layer_op: Callable
    channel_axis: int

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        layer = match.one(self.layer_op)
        if len(layer.users) != 1:
            return self.fail(f"{layer.name} also feeds other nodes")
        if attr_value(gm, layer.args[1]) is None:
            return self.fail(f"{layer.name}'s weight is not a constant")
        rank = node_rank(layer)
        if rank is None:
            return self.fail("the output's rank is unknown; propagate shapes first")
        axis = self.channel_axis % rank
        channels = attr_value(gm, layer.args[1]).shape[0]
        if not isinstance(match["b"], fx.Node) or _bias_vector(gm, match["b"], channels, axis, rank) is None:
            return self.fail("the addend is not a constant that varies only along the output channels")
        old = layer.args[2] if len(layer.args) > 2 else None
        if old is not None and attr_value(gm, old) is None:
            return self.fail(f"{layer.name}'s existing bias is not a constant")
        return None

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        layer = match.one(self.layer_op)
        w = attr_value(gm, layer.args[1])
        rank = node_rank(layer)
        extra = _bias_vector(gm, match["b"], w.shape[0], self.channel_axis % rank, rank)
        old = layer.args[2] if len(layer.args) > 2 else None
        total = extra if old is None else attr_value(gm, old) + extra
        bias = constant_node(gm, f"{layer.name}_bias", total.to(w.dtype))
        args = list(layer.args)
        if len(args) > 2:
            args[2] = bias
        else:
            args.append(bias)
        return gm.graph.call_function(layer.target, tuple(args), dict(layer.kwargs))


class LinearAddBias(_AddBias):
    layer_op = aten.linear.default
    channel_axis = -1

    def patterns(self) -> Sequence[Callable]:
        def right(x, w, b0, b):
            layer = aten.linear.default(x, w, b0)
            return aten.add.Tensor(layer, b)

        def left(x, w, b0, b):
            layer = aten.linear.default(x, w, b0)
            return aten.add.Tensor(b, layer)

        return [right, left]


class ConvAddBias(_AddBias):
    layer_op = aten.conv2d.default
    channel_axis = 1

    def patterns(self) -> Sequence[Callable]:
        def right(x, w, b0, stride, padding, dilation, groups, b):
            layer = aten.conv2d.default(x, w, b0, stride, padding, dilation, groups)
            return aten.add.Tensor(layer, b)

        def left(x, w, b0, stride, padding, dilation, groups, b):
            layer = aten.conv2d.default(x, w, b0, stride, padding, dilation, groups)
            return aten.add.Tensor(b, layer)

        return [right, left]


class FuseBias(RewritePass):
    """MatMul with a constant → Linear; a following constant add → the layer's bias."""

    def __init__(self) -> None:
        super().__init__([MatMulToLinear(), LinearAddBias(), ConvAddBias()])
