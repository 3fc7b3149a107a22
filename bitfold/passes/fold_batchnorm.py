"""Fold an inference-mode BatchNorm into the Conv or Linear that produces its input.

With ``σ = sqrt(running_var + ε)`` and per output channel ``c``::

    BN(conv(x; W, b)) = conv(x; W', b')   where   W'[c] = W[c] · γ[c] / σ[c]
                                                  b'[c] = (b[c] - μ[c]) · γ[c] / σ[c] + β[c]

(``b = 0`` when the producer has no bias; ``γ = 1``, ``β = 0`` without affine parameters.)
The same holds for Linear, whose output channels are its last dimension.

Between producer and BN there may be ops that keep channel ``c`` of the producer at BN's
channel axis 1 with unchanged values: identities (dropout in eval, clone…) and reshapes
that keep the first two dimensions (e.g. a Linear's ``[B, C]`` unsqueezed to ``[B, C, 1]``
for BatchNorm1d). The fold is refused, with the reason recorded on the BN node, when a
nonlinearity sits in between (Conv → ReLU → BN), when the producer's output has other
users, or when its weights are not constants. Exact up to float rounding of ``W · γ/σ``.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import fx

from bitfold.ir.graph_utils import attr_value, constant_node, node_shape
from bitfold.ir.op_groups import CONV, IDENTITIES, LINEAR, VIEWS
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule

aten = torch.ops.aten


class FoldBatchNormRule(RewriteRule):
    """conv/linear → [identities, channel-preserving reshapes] → batch_norm(eval)."""

    anchors = (aten.batch_norm.default,)

    def match_anchor(self, bn: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        if bn.args[5]:
            return self.fail("BatchNorm in training mode uses batch statistics; export in eval mode")
        chain: List[fx.Node] = []
        node = bn.args[0]
        while isinstance(node, fx.Node) and node.op == "call_function" and (
            node.target in IDENTITIES or node.target in VIEWS
        ):
            if node.target in VIEWS:
                before, after = node_shape(node.args[0]), node_shape(node)
                if before is None or after is None or len(before) < 2 or before[:2] != after[:2]:
                    return self.fail(
                        f"{node.name} ({node.target.__name__}) between the producer and BatchNorm may move "
                        "the channel axis"
                    )
            chain.append(node)
            node = node.args[0]
        if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in CONV | LINEAR:
            what = node.target.__name__ if isinstance(node, fx.Node) and node.op == "call_function" else "an input"
            return self.fail(f"its input comes from {what}, not directly from a Conv/Linear (a nonlinearity "
                             "or other op sits between), so the scale cannot move into weights")
        producer = node
        for n in [producer, *chain]:
            if len(n.users) != 1:
                return self.fail(f"{n.name} also feeds other nodes; folding would change them too")
        if producer.target in LINEAR:
            rank = len(node_shape(producer) or ())
            if rank != 2:
                return self.fail(f"{producer.name} is a Linear with a rank-{rank} output: its channels are not "
                                 "on BatchNorm's axis 1")
        if producer.target is aten.convolution.default and producer.args[6]:
            return self.fail(f"{producer.name} is a transposed convolution (channels on weight axis 1)")
        if attr_value(gm, producer.args[1]) is None:
            return self.fail(f"{producer.name}'s weight is computed at run time, not a constant")
        return Match(bn, {"producer": producer, "bn": bn}, [])

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        bn = match["bn"]
        for name, arg in zip(("weight", "bias", "running_mean", "running_var"), bn.args[1:5]):
            if arg is not None and attr_value(gm, arg) is None:
                return self.fail(f"BatchNorm {name} is not a constant")
        producer = match["producer"]
        bias = producer.args[2] if len(producer.args) > 2 else None
        if bias is not None and attr_value(gm, bias) is None:
            return self.fail(f"{producer.name}'s bias is computed at run time")
        return None

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        bn, producer = match["bn"], match["producer"]
        gamma, beta, mean, var = (attr_value(gm, a) if a is not None else None for a in bn.args[1:5])
        eps = bn.args[7]
        w = attr_value(gm, producer.args[1])
        old_bias = producer.args[2] if len(producer.args) > 2 else None
        b = attr_value(gm, old_bias) if old_bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        with torch.no_grad():
            inv_std = torch.rsqrt(var.double() + eps)
            factor = inv_std if gamma is None else gamma.double() * inv_std
            new_w = (w.double() * factor.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
            new_b = (b.double() - mean.double()) * factor + (0.0 if beta is None else beta.double())
        with gm.graph.inserting_before(producer):
            w_node = constant_node(gm, f"{producer.args[1].target}_bn_folded", new_w)
            b_node = constant_node(gm, f"{producer.name}_bias_bn_folded", new_b.to(w.dtype))
        args = list(producer.args)
        args[1] = w_node
        if len(args) > 2:
            args[2] = b_node
        else:
            args.append(b_node)
        producer.args = tuple(args)
        return bn.args[0]


class FoldBatchNorm(RewritePass):
    """Fold inference BatchNorms into the preceding Conv/Linear (see the module docstring)."""

    tolerance = 1e-5

    def __init__(self) -> None:
        super().__init__([FoldBatchNormRule()])
