"""Which embedding tables a recipe quantizes, and how (weight-only, no calibration needed).

A recipe with ``embedding`` in ``layers`` quantizes every ``aten.embedding`` whose table is
a constant and that no ``exclude`` pattern names, in the recipe's weight format and
granularity (``channel``: one scale per row, i.e. per token; ``group``: per group of
``group_size`` columns), with MinMax scales. Where the recipe lists several candidate
formats (LLM-FP4's search recipes), the table takes the one with the smallest relative
error: an embedding has no input to calibrate a search against, and its rows are looked
up, not multiplied, so the table's own error is the output error.
"""

from __future__ import annotations

import time
from typing import Dict, List, Tuple

import torch
from torch import fx

from bitfold.api.plan import LayerReport, _dequant, _minmax_weight, granularity, select_nodes
from bitfold.ir import formats
from bitfold.ir.graph_utils import attr_value
from bitfold.passes.quantize_linears import WeightPlan
from bitfold.recipes import Recipe

aten = torch.ops.aten


def select_embeddings(gm: fx.GraphModule, recipe: Recipe) -> Tuple[List[fx.Node], Dict[str, str]]:
    """The embeddings the recipe quantizes, and why each other one stays float."""
    return select_nodes(gm, recipe, aten.embedding.default, "embedding", 0)


def _table_error(W: torch.Tensor, Wq: torch.Tensor) -> float:
    return float((Wq - W).pow(2).sum().div(W.pow(2).sum().clamp_min(1e-30)).sqrt())


def plan_embeddings(gm: fx.GraphModule, recipe: Recipe, nodes: List[fx.Node]) -> Tuple[Dict[str, WeightPlan],
                                                                                         List[LayerReport]]:
    """A weight plan and a report row per embedding in ``nodes`` (see the module docstring)."""
    plans: Dict[str, WeightPlan] = {}
    reports: List[LayerReport] = []
    for node in nodes:
        start = time.perf_counter()
        W = attr_value(gm, node.args[0]).detach().float()
        best = None
        for name in recipe.weight_formats():
            plan = _minmax_weight(W, recipe.weights, formats.get(name))
            error = _table_error(W, _dequant(W, plan))
            if best is None or error < best[1]:
                best = (plan, error)
        plan, error = best
        plans[node.name] = plan
        reports.append(LayerReport(
            layer=node.name, weight_name=str(node.args[0].target), shape=tuple(W.shape), weight_format=plan.fmt,
            granularity=granularity(plan), group="embedding",
            output_rel_error=error, seconds=time.perf_counter() - start,
            notes=["embedding: weight-only; the error is the table's"],
        ))
    return plans, reports
