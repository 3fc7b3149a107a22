"""Turn one-element constant tensors in arithmetic into Python scalars.

Rewrite (``c`` a constant holding a single value that broadcasting does not expand)::

    aten.add.Tensor(x, get_attr c)          →  aten.add.Tensor(x, c.item())
    aten.pow.Tensor_Tensor(x, get_attr c)   →  aten.pow.Tensor_Scalar(x, c.item())

and likewise for ``sub``, ``mul``, ``div``. ONNX graphs carry epsilons and exponents as
initializers while torch.export writes literals; after this pass both look the same, so one
pattern (e.g. a decomposed LayerNorm's ``+ eps``) matches graphs from either source. Exact:
a 0-dim tensor and a Python scalar promote identically.
"""

from __future__ import annotations

import torch
from torch import fx

from bitfold.ir.graph_utils import attr_value, node_rank
from bitfold.passes.base import Pass, PassResult

aten = torch.ops.aten
_BINARY = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor}
_COMMUTATIVE = {aten.add.Tensor, aten.mul.Tensor}


class InlineScalarConstants(Pass):
    """One-element constants in elementwise arithmetic become scalar literals."""

    def _scalar(self, gm: fx.GraphModule, const: object, other: object):
        value = attr_value(gm, const)
        if value is None or value.numel() != 1 or value.is_complex():
            return None
        rank = node_rank(other) if isinstance(other, fx.Node) else None
        # A [1, 1, 1] constant would broadcast a rank-1 operand up to rank 3.
        if value.dim() > 0 and (rank is None or value.dim() > rank):
            return None
        return value.item()

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in gm.graph.nodes:
            if node.op != "call_function" or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
                continue
            a, b = node.args
            if node.target in _BINARY:
                scalar = self._scalar(gm, b, a)
                if scalar is not None:
                    node.args = (a, scalar)
                    modified = True
                elif node.target in _COMMUTATIVE and (scalar := self._scalar(gm, a, b)) is not None:
                    node.args = (b, scalar)
                    modified = True
            elif node.target == aten.pow.Tensor_Tensor:
                scalar = self._scalar(gm, b, a)
                if scalar is not None:
                    node.target = aten.pow.Tensor_Scalar
                    node.args = (a, scalar)
                    modified = True
        return PassResult(gm, modified)
