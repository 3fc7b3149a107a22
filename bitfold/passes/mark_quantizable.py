"""Annotate every op with whether it will be quantized, as what, and why (or why not).

Writes ``node.meta["bitfold_quant"]`` = :class:`bitfold.ir.quantizable.Decision` on each
``call_function`` node, so later passes select layers by ``kind`` and the report can answer
"why was this layer not quantized?". The graph itself is unchanged.
"""

from __future__ import annotations

from torch import fx

from bitfold.ir.quantizable import classify
from bitfold.passes.base import Pass, PassResult

META_KEY = "bitfold_quant"


class MarkQuantizable(Pass):
    """Record a quantization decision on every op (graph unchanged)."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        for node in gm.graph.nodes:
            decision = classify(gm, node)
            if decision is not None:
                node.meta[META_KEY] = decision
        return PassResult(gm, False)
