"""Compute quantized GELUs without float32 cancellation, the same way in every backend.

Rewrites a GELU whose output is quantized::

    gelu(x, approximate)   →   bitfold.gelu(x, approximate)

"Quantized" means it reaches, through views, multiplies by constants (LLM-FP4's
pre-shift, SmoothQuant's scales) and Hadamard rotations (:mod:`bitfold.ir.hadamard`),
either a ``bitfold::fake_quantize`` or the input of a layer named in ``quantized_inputs``.
The second form lets :func:`bitfold.quantize` run the pass on the float graph, before
calibration, so that calibration, the format search and the final model all see the same
GELU values.

``bitfold::gelu`` (:mod:`bitfold.ir.stable_gelu`) evaluates ``x·Φ(x)`` through ``erfc``,
which does not cancel for ``x < 0``: relative error ≤ 3e-6 where ATen's float32 GELU is up
to 100% off in the far tail, and a fixed sequence of float32 steps that the ONNX and TVM
lowerings repeat, so the exported and compiled models round the same tail values to the
same codes as the PyTorch simulation. GELUs whose output stays float are left alone:
there, runtime differences stay at float rounding level.
"""

from __future__ import annotations

from typing import FrozenSet, Iterable, Union

import torch
from torch import fx

from bitfold.ir import ops  # noqa: F401  (registers the bitfold ops)
from bitfold.ir.graph_utils import attr_value
from bitfold.ir.op_groups import IDENTITIES, VIEWS
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule

aten = torch.ops.aten
_SCALINGS = frozenset({aten.mul.Tensor, aten.div.Tensor, aten.mul.Scalar, aten.div.Scalar})
_FAKE_QUANTIZE = torch.ops.bitfold.fake_quantize.default
_PASS_THROUGH = VIEWS | IDENTITIES | {torch.ops.bitfold.hadamard.default}


def _scales_by_constant(user: fx.Node, value: fx.Node, gm: fx.GraphModule) -> bool:
    if user.target not in _SCALINGS or len(user.args) < 2 or user.args[0] is not value:
        return False
    return not isinstance(user.args[1], fx.Node) or attr_value(gm, user.args[1]) is not None


def _reaches_quantizer(node: fx.Node, gm: fx.GraphModule, quantized_inputs: FrozenSet[str]) -> bool:
    """Whether ``node``'s value is quantized, directly or after views and constant scalings."""
    frontier, seen = [node], set()
    while frontier:
        value = frontier.pop()
        for user in value.users:
            if user in seen or user.op != "call_function":
                continue
            seen.add(user)
            if (user.target is _FAKE_QUANTIZE or user.name in quantized_inputs) and user.args[0] is value:
                return True
            if user.target in _PASS_THROUGH or _scales_by_constant(user, value, gm):
                frontier.append(user)
    return False


class GeluToStableGelu(RewriteRule):
    anchors = (aten.gelu.default,)

    def __init__(self, quantized_inputs: Iterable[str] = ()) -> None:
        self.quantized_inputs = frozenset(quantized_inputs)

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        if not _reaches_quantizer(node, gm, self.quantized_inputs):
            return self.fail("its output is not quantized, so ATen's GELU stays")
        return Match(node, {"gelu": node}, [])

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        node = match["gelu"]
        approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return gm.graph.call_function(torch.ops.bitfold.gelu.default, (node.args[0], approximate))


class StabilizeGelu(RewritePass):
    """``gelu`` feeding a quantizer → ``bitfold.gelu`` (same function, no tail cancellation).

    ``quantized_inputs``: names of layer nodes whose first input will be quantized.
    """

    def __init__(self, quantized_inputs: Iterable[str] = ()) -> None:
        super().__init__([GeluToStableGelu(quantized_inputs)])
