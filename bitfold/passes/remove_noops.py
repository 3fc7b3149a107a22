"""Remove ops that return their input unchanged.

Rewrites (each only when the output has the input's shape and dtype, so nothing downstream
can tell):

    dropout(x, p, train=False), clone(x), alias(x), contiguous(x), detach(x)   →  x
    reshape/view/unsqueeze/squeeze/flatten(x) to x's own shape                  →  x
    expand(x, x.shape), permute(x, identity), slice(x, d, 0, ≥ size, 1)         →  x
    _to_copy / to(x, x.dtype)                                                   →  x
    x + 0, x - 0, x * 1, x / 1                                                  →  x
    cat([x])                                                                    →  x

Dropout in training mode is left alone, and says so. Exact by construction.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import fx

from bitfold.ir.graph_utils import node_shape
from bitfold.ir.op_groups import IDENTITIES, VIEWS
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule

aten = torch.ops.aten
_NEUTRAL = {aten.add.Tensor: 0, aten.sub.Tensor: 0, aten.mul.Tensor: 1, aten.div.Tensor: 1}
_CASTS = {aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.type_as.default}
_SHAPE_KEEPERS = {aten.expand.default, aten.permute.default, aten.slice.Tensor}


def _dtype(node: Any) -> Optional[torch.dtype]:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def _same_value_type(a: Any, b: fx.Node) -> bool:
    shape_a, shape_b = node_shape(a), node_shape(b)
    dtype_a, dtype_b = _dtype(a), _dtype(b)
    return shape_a is not None and shape_a == shape_b and dtype_a is not None and dtype_a == dtype_b


class DropNoOp(RewriteRule):
    """An op whose output equals its first input."""

    anchors = tuple(IDENTITIES | VIEWS | _CASTS | _SHAPE_KEEPERS | set(_NEUTRAL) | {aten.cat.default})

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        target = node.target
        if target is aten.cat.default:
            tensors = node.args[0]
            x = tensors[0] if len(tensors) == 1 else None
        else:
            x = node.args[0] if node.args else None
        if not isinstance(x, fx.Node):
            return None
        if target in (aten.dropout.default, aten.feature_dropout.default):
            train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False)
            if train:
                return self.fail("dropout in training mode changes values; export the model in eval mode")
            return Match(node, {"x": x, "op": node}, ["x"])
        if target in IDENTITIES:
            return Match(node, {"x": x, "op": node}, ["x"])
        if target in _NEUTRAL:
            other = node.args[1] if len(node.args) > 1 else None
            if isinstance(other, fx.Node) or other != _NEUTRAL[target]:
                return None
        elif target is aten.permute.default:
            if list(node.args[1]) != list(range(len(node.args[1]))):
                return None
        elif target is aten.slice.Tensor:
            start = node.args[2] if len(node.args) > 2 else None
            step = node.args[4] if len(node.args) > 4 else 1
            if start not in (None, 0) or step != 1:
                return None
        if not _same_value_type(x, node):
            return None
        return Match(node, {"x": x, "op": node}, ["x"])

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        return match["x"]


class RemoveNoOps(RewritePass):
    """Drop identity ops (see the module docstring for the list)."""

    def __init__(self) -> None:
        super().__init__([DropNoOp()])
