"""Fuse a Linear or Conv2d with the elementwise activation that follows it.

Rewrites (the layer's only user being the activation)::

    act(linear(x, W, b))                    →  bitfold.fused_linear(x, W, b, "act")
    act(conv2d(x, W, b, s, p, d, g))        →  bitfold.fused_conv2d(x, W, b, s, p, d, g, "act")

with ``act`` one of relu, gelu (exact or tanh), silu, sigmoid, tanh, hardswish, hardsigmoid,
relu6 (also spelled ``clamp(·, 0, 6)`` / ``hardtanh(·, 0, 6)``, and ``clamp(·, min=0)`` as
relu). A bare layer is not rewritten: the fused op exists to hand backends one kernel.
Exact: the same functions in the same order. Run it after quantization passes, which look
for ``aten.linear``/``aten.conv2d``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import fx

from bitfold.ir import ops  # noqa: F401  (registers the bitfold ops)
from bitfold.ir.op_groups import ACTIVATIONS, CLAMPS
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule

aten = torch.ops.aten
_CLAMPS = tuple(CLAMPS)


def _activation_name(node: fx.Node) -> Optional[str]:
    if node.target is aten.gelu.default:
        approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return "gelu_tanh" if approximate == "tanh" else "gelu"
    if node.target in ACTIVATIONS:
        return ACTIVATIONS[node.target]
    if node.target in _CLAMPS:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
        if lo == 0 and hi == 6:
            return "relu6"
        if lo == 0 and hi is None:
            return "relu"
    return None


class FuseLayerActivation(RewriteRule):
    anchors = tuple(ACTIVATIONS) + _CLAMPS

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        layer = node.args[0]
        if not isinstance(layer, fx.Node) or layer.target not in (aten.linear.default, aten.conv2d.default):
            return None
        if _activation_name(node) is None:
            return self.fail(f"{node.target.__name__} with these arguments is not a fusable activation")
        if len(layer.users) != 1:
            return self.fail(f"{layer.name} also feeds other nodes, so its pre-activation output is needed")
        return Match(node, {"layer": layer, "act": node}, [])

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        layer, act = match["layer"], _activation_name(match["act"])
        x, w = layer.args[0], layer.args[1]
        b = layer.args[2] if len(layer.args) > 2 else None
        if layer.target is aten.linear.default:
            return gm.graph.call_function(torch.ops.bitfold.fused_linear.default, (x, w, b, act))
        rest = list(layer.args[3:]) + [None] * (4 - len(layer.args[3:]))
        stride, padding, dilation, groups = rest
        return gm.graph.call_function(
            torch.ops.bitfold.fused_conv2d.default,
            (x, w, b, list(stride or [1, 1]), _pair(padding or [0, 0]), list(dilation or [1, 1]), groups or 1, act),
        )


def _pair(padding):
    if isinstance(padding, str):
        raise ValueError(f"string padding {padding!r} is not supported by fused_conv2d")
    return list(padding) * (2 // len(padding)) if len(padding) == 1 else list(padding)


class FuseActivation(RewritePass):
    """linear/conv2d + activation → ``bitfold.fused_linear`` / ``bitfold.fused_conv2d``."""

    def __init__(self) -> None:
        super().__init__([FuseLayerActivation()])
