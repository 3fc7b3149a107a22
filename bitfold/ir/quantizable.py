"""Which nodes of a canonical graph bitfold can quantize, and why the others stay float.

One classification serves the ``mark_quantizable`` pass, the graph summary and the report:

========================  ==============  =====================================================
node                      kind            decision
========================  ==============  =====================================================
linear / fused_linear     ``linear``      quantizable when its weight is a constant
conv / fused_conv2d       ``conv``        quantizable when its weight is a constant
matmul of 2 activations   ``act_matmul``  quantizable (attention QKᵀ and PV)
embedding                 ``embedding``   quantizable (weight only, per row)
bitfold quantized ops     ``quantized``   already quantized
norms, softmax, adds, …   —               float, with the reason
========================  ==============  =====================================================

:func:`norm_inputs` adds which LayerNorm/RMSNorm feeds each linear (looking through views),
so layers that share one normalized input (Q/K/V, gate/up) can be treated as a group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import fx

from bitfold.ir import ops  # noqa: F401  (registers the bitfold ops)
from bitfold.ir.graph_utils import attr_value
from bitfold.ir.graph_view import GraphView
from bitfold.ir.op_groups import (
    ACTIVATIONS, ADD, CLAMPS, CONV, EMBEDDING, IDENTITIES, LAYER_NORM, LINEAR, MATMUL, NORMS, RMS_NORM, SOFTMAX, VIEWS,
)

aten = torch.ops.aten
_FUSED_LINEAR = {torch.ops.bitfold.fused_linear.default}
_FUSED_CONV = {torch.ops.bitfold.fused_conv2d.default}
_QUANTIZED = {torch.ops.bitfold.quantized_linear.default, torch.ops.bitfold.quantized_conv2d.default,
              torch.ops.bitfold.quantized_embedding.default, torch.ops.bitfold.codebook_linear.default,
              torch.ops.bitfold.fake_quantize.default}


@dataclass(frozen=True)
class Decision:
    """Whether a node is quantizable, as what kind of layer, and the reason."""

    kind: Optional[str]
    quantizable: bool
    reason: str


def _op_name(node: fx.Node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target)).replace(".default", "")


def classify(gm: fx.GraphModule, node: fx.Node) -> Optional[Decision]:
    """The decision for ``node``; ``None`` for graph inputs, constants and the output."""
    if node.op != "call_function":
        return None
    target = node.target
    if target in LINEAR | CONV | _FUSED_LINEAR | _FUSED_CONV:
        kind = "linear" if target in LINEAR | _FUSED_LINEAR else "conv"
        if attr_value(gm, node.args[1]) is None:
            return Decision(kind, False, "its weight is computed at run time, not a constant")
        return Decision(kind, True, f"{kind} layer with a constant weight")
    if target in MATMUL:
        a, b = node.args[0], node.args[1]
        if attr_value(gm, a) is None and attr_value(gm, b) is None:
            return Decision("act_matmul", True, "matmul between two activations (e.g. attention)")
        return Decision("linear", False, "matmul with a constant operand: run FuseBias to make it a linear")
    if target in EMBEDDING:
        if attr_value(gm, node.args[0]) is None:
            return Decision("embedding", False, "its table is computed at run time")
        return Decision("embedding", True, "embedding table (weight-only, per row)")
    if target in _QUANTIZED:
        return Decision("quantized", False, "already a bitfold quantized op")
    if target is torch.ops.bitfold.hadamard.default:
        return Decision(None, False, "Hadamard rotation stays float (its output is what gets quantized)")
    if target in NORMS:
        return Decision(None, False, "normalization stays float (statistics are precision-sensitive)")
    if target in SOFTMAX:
        return Decision(None, False, "softmax stays float (exponentials of small differences)")
    if target in ADD and all(isinstance(a, fx.Node) and attr_value(gm, a) is None for a in node.args[:2]):
        return Decision(None, False, "residual/elementwise add of two activations stays float")
    if target in ACTIVATIONS or target in CLAMPS:
        return Decision(None, False, "elementwise activation: no weights to quantize")
    if target in VIEWS or target in (aten.permute.default, aten.transpose.int, aten.expand.default,
                                     aten.slice.Tensor, aten.select.int, aten.cat.default):
        return Decision(None, False, "data movement: no arithmetic to quantize")
    return Decision(None, False, f"{_op_name(node)}: no weights, stays float")


def norm_inputs(gm: fx.GraphModule, view: Optional[GraphView] = None) -> Dict[fx.Node, fx.Node]:
    """For each linear fed by a LayerNorm/RMSNorm (through views and identities): that norm."""
    view = view or GraphView(gm)
    linears = LINEAR | _FUSED_LINEAR
    fed: Dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in LAYER_NORM | RMS_NORM:
            for layer in view.fan_out(node, target=lambda n: n.target in linears,
                                      through=lambda n: n.target in VIEWS | IDENTITIES):
                if layer.args[0] is node or layer.args[0].target in VIEWS | IDENTITIES:
                    fed[layer] = node
    return fed
