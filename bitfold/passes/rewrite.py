"""Rewrite rules: pattern, check, rewrite — and a recorded reason whenever a check fails.

A :class:`RewriteRule` finds candidate subgraphs in one of two ways:

* **traced patterns** — :meth:`RewriteRule.patterns` returns small Python functions written
  with ``torch.ops.aten`` calls, like the model itself; they are traced with
  ``fx.symbolic_trace`` and matched with torch.fx's ``SubgraphMatcher``. A literal argument
  that may vary (an epsilon, reduced dims, a conv's stride, an optional bias) is a pattern
  *input*: it binds to whatever the graph holds there, and the check validates it. Literals
  written into a pattern must match exactly. Variants of one rewrite differ only in their
  pattern.
* **anchors** — :meth:`RewriteRule.match_anchor` is offered every node whose target is in
  :attr:`RewriteRule.anchors` and walks the graph itself; useful when the interesting
  failures ("a ReLU sits between this conv and its BatchNorm") start at one node.

:meth:`RewriteRule.check` returns ``None`` to accept a match or ``self.fail("why")`` to
reject it; :meth:`RewriteRule.rewrite` builds the replacement and returns the node that
takes the place of the match's output. Rejections are stored on the node in
``node.meta["bitfold_why"]`` so :func:`explain` can tell a user why a node was left alone.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from torch import fx
from torch.fx.passes.utils.matcher_utils import InternalMatch, SubgraphMatcher

from bitfold.ir.graph_utils import remove_unused_constants
from bitfold.passes.base import Pass, PassResult

WHY_KEY = "bitfold_why"


@dataclass
class Failure:
    """A rejected match: which rule, and why."""

    rule: str
    reason: str

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"{self.rule}: {self.reason}"


class Match:
    """A matched subgraph: pattern names → graph nodes (or bound literals), and the anchor.

    The anchor is the graph node matched to the pattern's output.
    """

    def __init__(self, anchor: fx.Node, nodes: Dict[str, Any], inputs: Sequence[str] = ()) -> None:
        self.anchor = anchor
        self.nodes = nodes
        #: Names of the pattern's inputs (bound to nodes outside the matched subgraph).
        self.inputs = set(inputs)

    @classmethod
    def from_internal(cls, internal: InternalMatch) -> "Match":
        nodes = {p.name: g for p, g in internal.nodes_map.items() if p.op != "output"}
        inputs = [p.name for p in internal.nodes_map if p.op == "placeholder"]
        return cls(internal.returning_nodes[0], nodes, inputs)

    def __getitem__(self, name: str) -> Any:
        return self.nodes[name]

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def one(self, target: Callable) -> fx.Node:
        """The single matched node calling ``target`` (pattern ops are named after their op)."""
        found = [n for n in self.internal_nodes() if n.target == target]
        if len(found) != 1:
            raise KeyError(f"the match has {len(found)} nodes calling {target}, not one")
        return found[0]

    def internal_nodes(self) -> List[fx.Node]:
        """The matched nodes that the rewrite replaces (not the pattern's inputs)."""
        return [n for name, n in self.nodes.items() if name not in self.inputs and isinstance(n, fx.Node)]


def record_why(node: fx.Node, failure: Failure) -> None:
    """Store ``failure`` on ``node``, replacing an older reason from the same rule."""
    reasons = [r for r in node.meta.get(WHY_KEY, []) if not r.startswith(f"{failure.rule}: ")]
    reasons.append(str(failure))
    node.meta[WHY_KEY] = reasons


def explain(gm: fx.GraphModule, node_name: str) -> List[str]:
    """Why the rules left node ``node_name`` alone (empty if no rule rejected it)."""
    for node in gm.graph.nodes:
        if node.name == node_name:
            return list(node.meta.get(WHY_KEY, []))
    raise KeyError(f"no node named {node_name!r} in the graph")


class RewriteRule(abc.ABC):
    """One rewrite: a pattern (traced functions or an anchor matcher), a check, a rewrite."""

    #: Node targets offered to :meth:`match_anchor` (anchor-style rules only).
    anchors: Sequence[Callable] = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    def patterns(self) -> Sequence[Callable]:
        """Pattern functions over ``torch.ops.aten`` calls; empty for anchor-style rules."""
        return ()

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        """For anchor-style rules: a match rooted at ``node``, a failure, or ``None`` (not relevant)."""
        return None

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        """``None`` to accept ``match``, ``self.fail(reason)`` to reject it."""
        return None

    @abc.abstractmethod
    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        """Insert the replacement (before ``match.anchor``) and return its output node."""

    def fail(self, reason: str) -> Failure:
        return Failure(self.name, reason)

    def _traced(self) -> List[fx.Graph]:
        cached = getattr(self, "_traced_patterns", None)
        if cached is None:
            cached = [fx.symbolic_trace(p).graph for p in self.patterns()]
            self._traced_patterns = cached
        return cached

    def find(self, gm: fx.GraphModule, erased: Optional[set] = None) -> Iterable[Match]:
        """Candidate matches in ``gm``, found lazily so earlier rewrites are seen.

        Anchor-style failures are recorded on their node. Nodes in ``erased`` are skipped.
        """
        erased = set() if erased is None else erased
        for pattern in self._traced():
            matcher = SubgraphMatcher(pattern, remove_overlapping_matches=True)
            for internal in matcher.match(gm.graph):
                yield Match.from_internal(internal)
        if self.anchors:
            for node in list(gm.graph.nodes):
                if node in erased:
                    continue
                if node.op == "call_function" and node.target in self.anchors:
                    found = self.match_anchor(node, gm)
                    if isinstance(found, Failure):
                        record_why(node, found)
                    elif found is not None:
                        yield found


class RewritePass(Pass):
    """Apply a list of rules once over the graph; failed checks are recorded, not raised."""

    def __init__(self, rules: Sequence[RewriteRule]) -> None:
        self.rules = list(rules)

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        notes: List[str] = []
        for rule in self.rules:
            erased: set = set()
            for match in rule.find(gm, erased):
                if any(n in erased for n in match.nodes.values() if isinstance(n, fx.Node)):
                    continue  # an earlier rewrite consumed part of it; the next iteration retries
                failure = rule.check(match, gm)
                if failure is not None:
                    record_why(match.anchor, failure)
                    notes.append(f"{match.anchor.name}: {failure}")
                    continue
                with gm.graph.inserting_before(match.anchor):
                    replacement = rule.rewrite(match, gm)
                if replacement is not match.anchor:
                    replacement.meta.update({k: v for k, v in match.anchor.meta.items() if k not in replacement.meta})
                    match.anchor.replace_all_uses_with(replacement)
                    # Erase explicitly: DCE keeps ops it deems impure (e.g. dropout).
                    for node in sorted(match.internal_nodes(), key=_position(gm), reverse=True):
                        if not node.users and node is not replacement:
                            gm.graph.erase_node(node)
                            erased.add(node)
                erased.update(match.internal_nodes())
                modified = True
        if modified:
            gm.graph.eliminate_dead_code()
            remove_unused_constants(gm)
        return PassResult(gm, modified, notes)


def _position(gm: fx.GraphModule) -> Callable[[fx.Node], int]:
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    return lambda n: index.get(n, -1)
