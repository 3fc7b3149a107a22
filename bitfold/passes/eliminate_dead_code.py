"""Remove nodes whose results nobody uses, and the constants only they referred to.

Rewrite: a pure node without users → nothing; a parameter or buffer no ``get_attr`` reads →
deleted from the module. Exact by definition.
"""

from __future__ import annotations

from torch import fx

from bitfold.ir.graph_utils import remove_unused_constants
from bitfold.passes.base import Pass, PassResult


class EliminateDeadCode(Pass):
    """Drop unused nodes and unused parameters/buffers."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        before = len(gm.graph.nodes)
        changed = gm.graph.eliminate_dead_code()
        removed = remove_unused_constants(gm)
        return PassResult(gm, bool(changed) or removed > 0 or len(gm.graph.nodes) != before)
