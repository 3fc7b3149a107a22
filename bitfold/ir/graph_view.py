"""A networkx view of an FX graph, for analyses that passes share.

Passes ask structural questions — who produces and consumes a value, which node dominates
another, what a LayerNorm fans out to (Q/K/V share one normalized input), what is
reachable from where — and get them answered here once, instead of re-walking
``node.users`` in every pass. The view is a snapshot: rebuild it after mutating the graph.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Set

import networkx as nx
from torch import fx

NodePredicate = Callable[[fx.Node], bool]


class GraphView:
    """A directed graph of ``fx.Node`` (edges producer → consumer) with helpers."""

    def __init__(self, graph: fx.Graph | fx.GraphModule) -> None:
        self.graph = graph.graph if isinstance(graph, fx.GraphModule) else graph
        self.g = nx.DiGraph()
        for node in self.graph.nodes:
            self.g.add_node(node)
            for inp in node.all_input_nodes:
                self.g.add_edge(inp, node)
        # Dominance follows activations: constants are not where data enters the graph.
        self._roots = [n for n in self.graph.nodes if n.op == "placeholder"]
        self._idom: Optional[Dict[fx.Node, fx.Node]] = None

    def producers(self, node: fx.Node) -> List[fx.Node]:
        return list(self.g.predecessors(node))

    def consumers(self, node: fx.Node) -> List[fx.Node]:
        return list(self.g.successors(node))

    def reachable(self, src: fx.Node, dst: fx.Node) -> bool:
        """True when ``dst`` depends on ``src``."""
        return src is dst or nx.has_path(self.g, src, dst)

    def descendants(self, node: fx.Node) -> Set[fx.Node]:
        return nx.descendants(self.g, node)

    def ancestors(self, node: fx.Node) -> Set[fx.Node]:
        return nx.ancestors(self.g, node)

    def immediate_dominators(self) -> Dict[fx.Node, fx.Node]:
        """Immediate dominator of every node reachable from the graph's inputs."""
        if self._idom is None:
            entry = object()
            flow = self.g.copy()
            flow.add_node(entry)
            for root in self._roots:
                flow.add_edge(entry, root)
            idom = nx.immediate_dominators(flow, entry)
            self._idom = {n: d for n, d in idom.items() if n is not entry and d is not entry}
        return self._idom

    def dominates(self, a: fx.Node, b: fx.Node) -> bool:
        """True when every path from the graph's inputs to ``b`` passes through ``a``."""
        idom = self.immediate_dominators()
        node: Optional[fx.Node] = b
        while node is not None:
            if node is a:
                return True
            nxt = idom.get(node)
            node = None if nxt is node else nxt
        return False

    def fan_out(
        self, node: fx.Node, target: NodePredicate, through: NodePredicate = lambda n: False
    ) -> List[fx.Node]:
        """Consumers of ``node`` that match ``target``, looking through nodes matching ``through``.

        E.g. the Q/K/V linears fed by a LayerNorm, through views/casts in between.
        """
        found: List[fx.Node] = []
        stack = list(self.consumers(node))
        seen: Set[fx.Node] = set()
        while stack:
            user = stack.pop()
            if user in seen:
                continue
            seen.add(user)
            if target(user):
                found.append(user)
            elif through(user):
                stack.extend(self.consumers(user))
        return sorted(found, key=_order(self.graph))

    def topological(self) -> Iterable[fx.Node]:
        return iter(self.graph.nodes)


def _order(graph: fx.Graph) -> Callable[[fx.Node], int]:
    index = {n: i for i, n in enumerate(graph.nodes)}
    return lambda n: index[n]
