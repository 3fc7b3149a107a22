"""Shared helpers: capture a module, count ops, compare outputs."""

from typing import Any, Callable

import torch
from torch import fx

from bitfold.ir import from_torch
from bitfold.ir.graph_utils import propagate_shapes


def capture(model: torch.nn.Module, *inputs: Any) -> fx.GraphModule:
    gm = from_torch(model.eval(), inputs)
    propagate_shapes(gm, *inputs)
    return gm


def count(gm: fx.GraphModule, target: Callable) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target == target)


def assert_same_outputs(gm: fx.GraphModule, model: torch.nn.Module, *inputs: Any, rtol: float = 1e-5) -> None:
    with torch.no_grad():
        got, want = gm(*inputs), model(*inputs)
    got = got[0] if isinstance(got, (tuple, list)) else got
    err = (got - want).abs().max() / want.abs().max().clamp_min(1e-30)
    assert float(err) <= rtol, f"relative error {float(err):.3g} > {rtol}"
