"""Move a per-channel input scaling into the norm that produces it.

LLM-FP4's pre-shift multiplies a quantized layer's input channel ``j`` by ``2^k_j``;
SmoothQuant divides it by ``s_j``. Both arrive from
:class:`~bitfold.passes.quantize_linears.QuantizeLinears` as ``mul(h, c)`` with a constant
``c`` per channel of the last axis (or a scalar). When ``h`` is a norm over that axis whose
only user is that multiply::

    layer_norm(x, shape, γ, β, ε) · c   →   layer_norm(x, shape, γ·c, β·c, ε)
    rms_norm(x, shape, γ, ε) · c        →   rms_norm(x, shape, γ·c, ε)
    (a · up(x)) · c                     →   a · up'(x),  up' = up with row n scaled by c_n

because the norm's output is affine in (γ, β). Exact for powers of two; for SmoothQuant
factors it is the rounding of one multiply. When the norm output also feeds something
else (post-LN BERT's residual), the multiply stays and says why: the quantize op then
applies the shift itself.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import fx

from bitfold.ir.graph_utils import attr_value, constant_node
from bitfold.ir.op_groups import LAYER_NORM, RMS_NORM
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule

aten = torch.ops.aten


class FoldScaleIntoNorm(RewriteRule):
    anchors = (aten.mul.Tensor,)

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        h = node.args[0]
        c = attr_value(gm, node.args[1]) if len(node.args) > 1 else None
        if not isinstance(h, fx.Node) or c is None or h.target not in LAYER_NORM | RMS_NORM:
            return None
        shape = h.args[1]
        if len(shape) != 1 or c.squeeze().dim() > 1 or c.dim() > 1 and any(d != 1 for d in c.shape[:-1]):
            return None
        if c.numel() not in (1, shape[0]):
            return None
        if len(h.users) != 1:
            return self.fail(f"{h.name} also feeds other nodes (e.g. a residual), so its gamma/beta must stay")
        return Match(node, {"norm": h, "c": node.args[1], "mul": node}, ["norm", "c"])

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        norm = match["norm"]
        gamma = norm.args[2] if len(norm.args) > 2 else None
        if gamma is None or attr_value(gm, gamma) is None:
            return self.fail(f"{norm.name} has no constant gamma to scale")
        if norm.target in LAYER_NORM and (len(norm.args) > 3 and norm.args[3] is not None
                                         and attr_value(gm, norm.args[3]) is None):
            return self.fail(f"{norm.name}'s beta is not a constant")
        return None

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        norm, c = match["norm"], attr_value(gm, match["c"]).reshape(-1)
        args = list(norm.args)
        args[2] = constant_node(gm, f"{norm.name}_weight_shifted", attr_value(gm, args[2]) * c)
        if norm.target in LAYER_NORM and len(args) > 3 and args[3] is not None:
            args[3] = constant_node(gm, f"{norm.name}_bias_shifted", attr_value(gm, args[3]) * c)
        return gm.graph.call_function(norm.target, tuple(args), dict(norm.kwargs))


_QUANTIZED_LINEAR = torch.ops.bitfold.quantized_linear.default


class FoldScaleIntoGatedProjection(RewriteRule):
    """``(a · up(x)) · c → a · up'(x)``, ``up'`` with output rows scaled by ``c``.

    LLaMA's ``down_proj`` reads ``silu(gate(x)) · up(x)``, which is linear in ``up``'s output,
    so the per-channel scaling of ``down_proj``'s input goes into ``up``'s rows: its weight
    scales (a quantized linear: ``(level − z)·s·c`` decodes row ``n`` times ``c_n``) or its
    weight rows (a float linear), and its bias.
    """

    anchors = (aten.mul.Tensor,)

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        product = node.args[0]
        c = attr_value(gm, node.args[1]) if len(node.args) > 1 else None
        if not isinstance(product, fx.Node) or c is None or product.target is not aten.mul.Tensor:
            return None
        if c.dim() > 1 and any(d != 1 for d in c.shape[:-1]):
            return None
        factors = [f for f in product.args if isinstance(f, fx.Node)]
        up = next((f for f in factors if f.target in (_QUANTIZED_LINEAR, aten.linear.default)), None)
        if up is None or len(factors) != 2 or factors[0] is factors[1]:
            return None
        if len(product.users) != 1 or len(up.users) != 1:
            return self.fail(f"{product.name} or {up.name} also feeds other nodes, so {up.name}'s rows must stay")
        return Match(node, {"product": product, "up": up, "c": node.args[1], "mul": node}, ["c"])

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        up = match["up"]
        scaled = up.args[5] if up.target is _QUANTIZED_LINEAR else up.args[1]
        bias = up.args[9] if up.target is _QUANTIZED_LINEAR and len(up.args) > 9 else \
            (up.args[2] if up.target is aten.linear.default and len(up.args) > 2 else None)
        if attr_value(gm, scaled) is None or bias is not None and attr_value(gm, bias) is None:
            return self.fail(f"{up.name}'s weight scale or bias is not a constant")
        return None

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        up, product = match["up"], match["product"]
        c = attr_value(gm, match["c"]).reshape(-1)
        args = list(up.args)
        where, bias_at = (5, 9) if up.target is _QUANTIZED_LINEAR else (1, 2)
        scaled = attr_value(gm, args[where])
        rows = c if c.numel() > 1 else c.expand(scaled.shape[0])
        args[where] = constant_node(gm, f"{up.name}_rows_shifted", scaled * rows.reshape(-1, *[1] * (scaled.dim() - 1)),
                                    parameter=False)
        if len(args) > bias_at and args[bias_at] is not None:
            args[bias_at] = constant_node(gm, f"{up.name}_bias_shifted", attr_value(gm, args[bias_at]) * rows,
                                          parameter=False)
        new_up = gm.graph.call_function(up.target, tuple(args), dict(up.kwargs))
        new_up.meta.update(up.meta)
        factors = [new_up if f is up else f for f in product.args]
        return gm.graph.call_function(aten.mul.Tensor, tuple(factors))


class FoldPreshift(RewritePass):
    """Fold input scalings of quantized layers into the producing norm's gamma/beta, or into
    the rows of ``up_proj`` when the input is a gated product (LLaMA's ``down_proj``)."""

    tolerance = 1e-5

    def __init__(self) -> None:
        super().__init__([FoldScaleIntoNorm(), FoldScaleIntoGatedProjection()])
