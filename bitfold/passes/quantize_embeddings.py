"""Replace planned embedding lookups with bitfold's weight-only quantized embedding.

For an embedding ``y = W[ids]`` (``W`` of shape ``[V, D]``) with a weight plan::

    y = bitfold.quantized_embedding(ids, pack(Q_f(W)), f, V, D, s, g, z)

with scales ``s`` per row (one per token) or per group of ``g`` columns, and zero points
``z`` for asymmetric integer formats: the layout of a quantized linear's weight with rows as
output channels. The table is the largest tensor of many language models (MiniLM: half the
parameters; SmolLM2: a fifth), so a compressed export is only small when it is quantized.
``padding_idx`` and the other ``aten.embedding`` flags only affect training and are dropped.
This pass changes numerics by design.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import fx

from bitfold.ir import ops
from bitfold.ir.graph_utils import attr_value, remove_unused_constants
from bitfold.passes.base import Pass, PassError, PassResult
from bitfold.passes.quantize_linears import WeightPlan, packed_weight_args, replace_layer, require_layers

aten = torch.ops.aten


class QuantizeEmbeddings(Pass):
    """Rewrite the ``aten.embedding`` nodes named in ``plans`` (see the module docstring)."""

    preserves_semantics = False

    def __init__(self, plans: Dict[str, WeightPlan]) -> None:
        self.plans = plans

    def requires(self, gm: fx.GraphModule) -> None:
        require_layers(gm, self.plans, aten.embedding.default, "quantize_embeddings", "embedding")

    def call(self, gm: fx.GraphModule) -> PassResult:
        for node in list(gm.graph.nodes):
            plan = self.plans.get(node.name)
            if plan is None or node.target != aten.embedding.default:
                continue
            w_node, indices = node.args[0], node.args[1]
            table = attr_value(gm, w_node)
            if table is None:
                raise PassError(f"quantize_embeddings: {node.name}'s table is not a constant")
            packed = ops.pack_weight(table.detach().float(), plan.fmt, plan.scale, plan.group_size, plan.zero_point,
                                     name=str(w_node.target))
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(torch.ops.bitfold.quantized_embedding.default,
                                             (indices, *packed_weight_args(gm, node.name, packed, plan)))
            replace_layer(gm, node, new)
        gm.graph.eliminate_dead_code()
        remove_unused_constants(gm)
        return PassResult(gm, bool(self.plans))
