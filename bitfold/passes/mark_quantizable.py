"""Annotate every op with whether it will be quantized, as what, and why (or why not).

Writes ``node.meta["bitfold_quant"]`` = :class:`bitfold.ir.quantizable.Decision` on each
``call_function`` node, so later passes select layers by ``kind`` and the report can answer
"why was this layer not quantized?". A linear fed by a norm also gets
``node.meta["bitfold_input_norm"]`` = that norm's name: layers sharing one normalized input
(Q/K/V) must share the per-channel activation shifts LLM-FP4 folds into the norm. The graph
itself is unchanged.
"""

from __future__ import annotations

from torch import fx

from bitfold.ir.quantizable import classify, norm_inputs
from bitfold.passes.base import Pass, PassResult

META_KEY = "bitfold_quant"
NORM_KEY = "bitfold_input_norm"


class MarkQuantizable(Pass):
    """Record a quantization decision on every op (graph unchanged)."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        for node in gm.graph.nodes:
            decision = classify(gm, node)
            if decision is not None:
                node.meta[META_KEY] = decision
        for layer, norm in norm_inputs(gm).items():
            layer.meta[NORM_KEY] = norm.name
        return PassResult(gm, False)
