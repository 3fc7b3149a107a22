"""Fuse the quantized parts of a split linear into one codebook GEMM.

After :class:`~bitfold.passes.split_layers.SplitLayers` and quantization, a SplitQuant layer
is ``k`` quantized linears on one input, summed::

    y = Σ_c quantized_linear(x, pack(Q_c), fmt, N, K, s_c, g, z_c, shift, b_c)

Each part ``c`` dequantizes to ``Ŵ_c``, which is zero outside cluster ``c`` (its quantizer
represents zero exactly), so at most one part is nonzero at any element. Then::

    Σ_c x Ŵ_cᵀ + b_c  =  x Ŵᵀ + Σ_c b_c     with   Ŵ[n, j] = Ŵ_{id[n, j]}[n, j]

where ``id[n, j]`` is the part that is nonzero there (the first part where all are zero; every
part's code there decodes to zero). The rewrite keeps part ``id``'s code for each element,
the ids, and the stacked scales ``[s_0 … s_{k−1}]`` / zero points, as one
``bitfold::codebook_linear``: one GEMM and one ``bits + ceil(log2 k)``-bit matrix instead of
``k`` GEMMs over ``k`` matrices. The pass checks ``decode(codebook) == Σ_c Ŵ_c`` bit for bit
before rewriting; the output changes only by float reassociation of the sum over parts.

Refused, with the reason recorded on the sum node, when the parts are not all quantized,
disagree on input, format, layout or input shift, feed other nodes, or overlap.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import fx

from bitfold.ir import formats, ops
from bitfold.ir.graph_utils import attr_value, constant_node
from bitfold.passes.base import PassError
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule
from bitfold.passes.split_layers import SUM_KEY

aten = torch.ops.aten
QUANTIZED_LINEAR = torch.ops.bitfold.quantized_linear.default

# quantized_linear's argument positions.
_X, _PACKED, _FMT, _N, _K, _SCALE, _GROUP, _ZERO, _SHIFT, _BIAS = range(10)


def _arg(node: fx.Node, index: int):
    return node.args[index] if len(node.args) > index else None


def _summands(anchor: fx.Node) -> Optional[tuple]:
    """The leaves of the left-deep add chain ``((p0 + p1) + p2) …`` ending at ``anchor``, and its adds."""
    leaves, adds = [], []
    node = anchor
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target is aten.add.Tensor and (
        node is anchor or len(node.users) == 1
    ) and len(node.args) == 2 and not node.kwargs:
        adds.append(node)
        leaves.append(node.args[1])
        node = node.args[0]
    leaves.append(node)
    if not all(isinstance(leaf, fx.Node) for leaf in leaves):
        return None
    return leaves[::-1], adds


class FuseSplitLinearRule(RewriteRule):
    """``Σ_c quantized_linear(x, …part c…)`` of one split layer → ``codebook_linear`` (module doc)."""

    anchors = (aten.add.Tensor,)

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        if SUM_KEY not in node.meta:
            return None
        found = _summands(node)
        if found is None:
            return self.fail("the split layer's sum is not a chain of adds over its parts")
        parts, adds = found
        floats = [p.name for p in parts if p.target is not QUANTIZED_LINEAR]
        if floats:
            return self.fail(f"parts {', '.join(floats)} are not bitfold.quantized_linear; only quantized parts fuse")
        nodes = {f"add{i}": a for i, a in enumerate(adds)}
        nodes.update({f"part{c}": p for c, p in enumerate(parts)})
        return Match(node, nodes)

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        parts = self._parts(match)
        first = parts[0]
        for p in parts:
            if len(p.users) != 1:
                return self.fail(f"part {p.name} also feeds other nodes")
            for index, what in ((_X, "input"), (_FMT, "format"), (_N, "output features"), (_K, "input features"),
                                (_GROUP, "group size")):
                if _arg(p, index) != _arg(first, index):
                    return self.fail(f"parts {first.name} and {p.name} differ in {what}")
            if (_arg(p, _ZERO) is None) != (_arg(first, _ZERO) is None):
                return self.fail(f"parts {first.name} and {p.name} differ in having a zero point")
            shift, shift0 = attr_value(gm, _arg(p, _SHIFT)), attr_value(gm, _arg(first, _SHIFT))
            if (_arg(p, _SHIFT) is None) != (_arg(first, _SHIFT) is None) or (
                shift0 is not None and (shift is None or not torch.equal(shift, shift0))
            ):
                return self.fail(f"parts {first.name} and {p.name} differ in their input shift")
            for index in (_PACKED, _SCALE) + ((_ZERO,) if _arg(p, _ZERO) is not None else ()):
                if attr_value(gm, _arg(p, index)) is None:
                    return self.fail(f"part {p.name}'s argument {index} is not a constant")
            if _arg(p, _BIAS) is not None and attr_value(gm, _arg(p, _BIAS)) is None:
                return self.fail(f"part {p.name}'s bias is computed at run time")
        weights = torch.stack([self._dequantized(gm, p) for p in parts])
        overlap = int(((weights != 0).sum(0) > 1).sum())
        if overlap:
            return self.fail(f"the parts' dequantized weights are nonzero in more than one part at {overlap} "
                             "element(s): they are not a split of one layer")
        return None

    @staticmethod
    def _parts(match: Match) -> List[fx.Node]:
        return [match[f"part{c}"] for c in range(sum(1 for name in match.nodes if name.startswith("part")))]

    @staticmethod
    def _dequantized(gm: fx.GraphModule, p: fx.Node) -> torch.Tensor:
        zero = _arg(p, _ZERO)
        return ops.unpack_weight(attr_value(gm, p.args[_PACKED]), p.args[_FMT], p.args[_N], p.args[_K],
                                 attr_value(gm, p.args[_SCALE]), _arg(p, _GROUP),
                                 None if zero is None else attr_value(gm, zero))

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        parts = self._parts(match)
        first = parts[0]
        fmt, n, k, group = first.args[_FMT], first.args[_N], first.args[_K], _arg(first, _GROUP)
        f = formats.get(fmt)
        weights = torch.stack([self._dequantized(gm, p) for p in parts])
        ids = (weights != 0).to(torch.uint8).argmax(0)
        codes = torch.stack([
            formats.unpack(attr_value(gm, p.args[_PACKED]), f.bits, n * k).reshape(n, k) for p in parts
        ]).gather(0, ids[None].long())[0]
        scale = torch.stack([attr_value(gm, p.args[_SCALE]).float() for p in parts])
        zero = None if _arg(first, _ZERO) is None else torch.stack(
            [attr_value(gm, p.args[_ZERO]).float() for p in parts])
        weight = ops.codebook_from_codes(codes, ids, fmt, scale, group, zero)
        if not torch.equal(weight.unpack(), weights.sum(0)):
            raise PassError(f"fuse_split_linears: the codebook form of {match.anchor.name} does not decode to "
                                 "the sum of its parts")
        biases = [attr_value(gm, _arg(p, _BIAS)) for p in parts if _arg(p, _BIAS) is not None]
        layer = match.anchor.meta[SUM_KEY]
        args = [
            first.args[_X],
            constant_node(gm, f"{layer}_codes", weight.packed_codes, parameter=False),
            constant_node(gm, f"{layer}_cluster_ids", weight.packed_ids, parameter=False),
            fmt, n, k, len(parts),
            constant_node(gm, f"{layer}_cluster_scale", weight.scale, parameter=False),
            group,
            None if zero is None else constant_node(gm, f"{layer}_cluster_zero_point", weight.zero_point,
                                                    parameter=False),
            _arg(first, _SHIFT),
            None if not biases else constant_node(gm, f"{layer}_bias", torch.stack(biases).sum(0)),
        ]
        new = gm.graph.create_node("call_function", torch.ops.bitfold.codebook_linear.default, tuple(args),
                                   name=f"{layer}_codebook")
        new.meta["bitfold_layer"] = layer
        return new


class FuseSplitLinears(RewritePass):
    """Turn every quantized split linear into one ``bitfold::codebook_linear`` (module docstring)."""

    #: One GEMM over the summed weight instead of k partial GEMMs: float reassociation only.
    tolerance = 1e-4

    def __init__(self) -> None:
        super().__init__([FuseSplitLinearRule()])
