"""Evaluate every node whose inputs are all constants and store the result as a constant.

Rewrite: ``f(c1, c2, …)`` with every ``ci`` a ``get_attr`` or a literal (so constructors
such as ``aten.ones([16, 16])`` count) → ``get_attr r`` with ``r = f(c1, c2, …)`` computed
once. Typical catches: a transposed weight feeding ONNX ``MatMul``, ``Reshape`` of a bias,
shape arithmetic on initializers. Never folded: random ops, ``empty``, bitfold's own ops (a
fake-quantize of a weight must stay visible to passes and backends), and results over
64 Mi elements (folding an ``expand`` would bloat the model). Exact: the same kernels run,
only earlier.
"""

from __future__ import annotations

import torch
from torch import fx

from bitfold.ir.graph_utils import attr_value, constant_node, remove_unused_constants
from bitfold.passes.base import Pass, PassResult

_MAX_FOLDED_ELEMENTS = 64 * 2**20
_NONDETERMINISTIC = {torch.Tag.nondeterministic_seeded, torch.Tag.nondeterministic_bitwise}
_UNINITIALIZED = {
    torch.ops.aten.empty.memory_format, torch.ops.aten.empty_like.default,
    torch.ops.aten.empty_strided.default, torch.ops.aten.new_empty.default,
}


def _foldable(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    target = node.target
    is_aten = isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"
    if not is_aten and (getattr(target, "__module__", None) != "_operator" or not node.all_input_nodes):
        return False
    if is_aten and (target._schema.is_mutable or _NONDETERMINISTIC & set(target.tags) or target in _UNINITIALIZED):
        return False
    return all(attr_value(gm, n) is not None for n in node.all_input_nodes)


class FoldConstants(Pass):
    """Replace constant subexpressions by their values."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if not _foldable(gm, node):
                continue
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: attr_value(gm, n))
            with torch.no_grad():
                value = node.target(*args, **kwargs)
            if not isinstance(value, torch.Tensor) or value.numel() > _MAX_FOLDED_ELEMENTS:
                continue
            with gm.graph.inserting_before(node):
                const = constant_node(gm, f"folded_{node.name}", value.clone().contiguous(), parameter=False)
            node.replace_all_uses_with(const)
            gm.graph.erase_node(node)
            modified = True
        if modified:
            remove_unused_constants(gm)
        return PassResult(gm, modified)
