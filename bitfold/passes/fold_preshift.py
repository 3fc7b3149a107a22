"""Move a per-channel input scaling into the norm that produces it.

LLM-FP4's pre-shift multiplies a quantized layer's input channel ``j`` by ``2^k_j``;
SmoothQuant divides it by ``s_j``. Both arrive from
:class:`~bitfold.passes.quantize_linears.QuantizeLinears` as ``mul(h, c)`` with a constant
``c`` per channel of the last axis (or a scalar). When ``h`` is a norm over that axis whose
only user is that multiply::

    layer_norm(x, shape, γ, β, ε) · c   →   layer_norm(x, shape, γ·c, β·c, ε)
    rms_norm(x, shape, γ, ε) · c        →   rms_norm(x, shape, γ·c, ε)
    (a · up(x)) · c                     →   a · up'(x),  up' = up with row n scaled by c_n
    merge(P · split(v(x))) · c          →   merge(P · split(v'(x))),  v' = v with row n scaled by c_n

because the norm's output is affine in (γ, β), and the gated product and the attention
context are linear in ``up``'s and ``v``'s output channels. Exact for powers of two; for
SmoothQuant factors it is the rounding of one multiply. When the norm output also feeds something
else (post-LN BERT's residual), the multiply stays and says why: the quantize op then
applies the shift itself.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
from torch import fx

from bitfold.ir.graph_utils import attr_value, constant_node, raw_shape
from bitfold.ir.op_groups import IDENTITIES, LAYER_NORM, MATMUL, RMS_NORM
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


class _FoldIntoRows(RewriteRule):
    """A rule that moves the scaling into the output rows of the linear ``match[self.layer]``."""

    anchors = (aten.mul.Tensor,)
    layer = ""

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        layer = match[self.layer]
        where, bias_at = _row_arguments(layer)
        bias = layer.args[bias_at] if len(layer.args) > bias_at else None
        if attr_value(gm, layer.args[where]) is None or bias is not None and attr_value(gm, bias) is None:
            return self.fail(f"{layer.name}'s weight scale or bias is not a constant")
        return None


class FoldScaleIntoGatedProjection(_FoldIntoRows):
    """``(a · up(x)) · c → a · up'(x)``, ``up'`` with output rows scaled by ``c``.

    LLaMA's ``down_proj`` reads ``silu(gate(x)) · up(x)``, which is linear in ``up``'s output,
    so the per-channel scaling of ``down_proj``'s input goes into ``up``'s rows: its weight
    scales (a quantized linear: ``(level − z)·s·c`` decodes row ``n`` times ``c_n``) or its
    weight rows (a float linear), and its bias.
    """

    layer = "up"

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

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        up, product = match["up"], match["product"]
        new_up = _scale_rows(gm, up, attr_value(gm, match["c"]).reshape(-1))
        factors = [new_up if f is up else f for f in product.args]
        return gm.graph.call_function(aten.mul.Tensor, tuple(factors))


def _row_arguments(layer: fx.Node) -> Tuple[int, int]:
    """Where a (quantized) linear keeps what scales its output rows, and its bias."""
    return (5, 9) if layer.target is _QUANTIZED_LINEAR else (1, 2)


def _scale_rows(gm: fx.GraphModule, layer: fx.Node, c: torch.Tensor) -> fx.Node:
    """A copy of ``layer`` whose output row ``n`` is multiplied by ``c_n`` (its weight scales for
    a quantized linear: ``(level − z)·s·c`` decodes row ``n`` times ``c_n``; its weight rows for
    a float one; and its bias)."""
    args = list(layer.args)
    where, bias_at = _row_arguments(layer)
    scaled = attr_value(gm, args[where])
    rows = c if c.numel() > 1 else c.expand(scaled.shape[0])
    args[where] = constant_node(gm, f"{layer.name}_rows_shifted", scaled * rows.reshape(-1, *[1] * (scaled.dim() - 1)),
                                parameter=False)
    if len(args) > bias_at and args[bias_at] is not None:
        args[bias_at] = constant_node(gm, f"{layer.name}_bias_shifted", attr_value(gm, args[bias_at]) * rows,
                                      parameter=False)
    new_layer = gm.graph.call_function(layer.target, tuple(args), dict(layer.kwargs))
    new_layer.meta.update(layer.meta)
    return new_layer


_SWAPS = frozenset({aten.transpose.int, aten.permute.default})
_MERGES = frozenset({aten.reshape.default, aten.view.default, aten._unsafe_view.default})


def _swapped_axes(node: fx.Node, rank: int) -> List[int]:
    """The axis permutation a transpose/permute applies (``out[i] = in[perm[i]]``)."""
    if node.target is aten.permute.default:
        return [d % rank for d in node.args[1]]
    a, b = node.args[1] % rank, node.args[2] % rank
    perm = list(range(rank))
    perm[a], perm[b] = b, a
    return perm


class FoldScaleIntoValueProjection(_FoldIntoRows):
    """``merge_heads(P · split_heads(v(x))) · c → merge_heads(P · split_heads(v'(x)))``,
    ``v'`` with output rows scaled by ``c``.

    The attention output projection reads the heads' contexts ``P_h V_h`` side by side, and
    each context channel is a mix of one channel of ``v_proj``'s output over tokens, so the
    per-channel scaling of its input goes into ``v_proj``'s rows. The path is checked
    structurally: ``v_proj``'s last axis split into ``[heads, head_dim]``, transposes that
    never move the last axis, ``V`` as the right operand of the matmul with the head axis
    among its batch axes, and the last two axes ``[heads, head_dim]`` merged back, so
    channel ``h·D + d`` of the input is row ``h·D + d`` of ``v_proj``.
    """

    layer = "v_proj"

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        merged = node.args[0]
        c = attr_value(gm, node.args[1]) if len(node.args) > 1 else None
        if not isinstance(merged, fx.Node) or c is None or merged.target not in _MERGES:
            return None
        if c.dim() > 1 and any(d != 1 for d in c.shape[:-1]):
            return None
        path = [merged]
        matmul = _through_swaps(merged.args[0], path)
        if not isinstance(matmul, fx.Node) or matmul.target not in MATMUL:
            return None
        path.append(matmul)
        v_side = _through_swaps(matmul.args[1], path)
        if not isinstance(v_side, fx.Node) or v_side.target not in _MERGES:
            return None
        split, v_proj = v_side, v_side.args[0]
        if not isinstance(v_proj, fx.Node) or v_proj.target not in (_QUANTIZED_LINEAR, aten.linear.default):
            return None
        path += [split, v_proj]
        if any(len(n.users) != 1 for n in path):
            return self.fail(f"a node between {v_proj.name} and {node.name} has other users, so {v_proj.name}'s "
                             "rows must stay")
        reason = _heads_line_up(path, split, matmul)
        if reason is not None:
            return self.fail(reason)
        return Match(node, {"v_proj": v_proj, "split": split, "merged": merged, "c": node.args[1], "mul": node},
                     ["c", "split", "merged"])

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        v_proj, split = match["v_proj"], match["split"]
        with gm.graph.inserting_before(split):
            new_v = _scale_rows(gm, v_proj, attr_value(gm, match["c"]).reshape(-1))
        split.replace_input_with(v_proj, new_v)
        return match["merged"]


def _through_swaps(value: Any, path: List[fx.Node]) -> Any:
    """The first node up from ``value`` that is not a transpose/permute/identity (those go on ``path``)."""
    while isinstance(value, fx.Node) and value.target in _SWAPS | IDENTITIES:
        path.append(value)
        value = value.args[0]
    return value


def _follow_head(swaps: List[fx.Node], head: int, rank: int) -> Union[int, str]:
    """Where the head axis is after ``swaps`` (in order), or why the head_dim axis moved."""
    for node in swaps:
        if node.target in _SWAPS:
            perm = _swapped_axes(node, rank)
            if perm[rank - 1] != rank - 1:
                return f"{node.name} moves the head_dim axis"
            head = perm.index(head)
    return head


def _heads_line_up(path: List[fx.Node], split: fx.Node, matmul: fx.Node) -> Optional[str]:
    """Why channel ``j`` of the merged context might not be row ``j`` of ``v_proj`` (``None`` if it is)."""
    split_shape, merged_shape, v_shape = raw_shape(split), raw_shape(path[0]), raw_shape(split.args[0])
    if split_shape is None or merged_shape is None or v_shape is None or len(split_shape) < 3:
        return "the shapes between v_proj and the output projection are not recorded"
    rank = len(split_shape)
    sizes = (split_shape[-2], split_shape[-1], v_shape[-1], merged_shape[-1])
    if not all(isinstance(d, int) for d in sizes) or [str(d) for d in split_shape[:-2]] != [
            str(d) for d in v_shape[:-1]] or split_shape[-2] * split_shape[-1] != v_shape[-1]:
        return "v_proj's output is not split into [heads, head_dim] on its last axis"
    at = path.index(matmul)
    head = _follow_head(path[at + 1:-2][::-1], rank - 2, rank)
    if isinstance(head, str):
        return head
    if head >= rank - 2:
        return "the head axis of V is not a batch axis of the attention matmul"
    head = _follow_head(path[1:at][::-1], head, rank)
    if isinstance(head, str):
        return head
    if head != rank - 2 or merged_shape[-1] != v_shape[-1]:
        return "the output projection's input does not merge [heads, head_dim] back in v_proj's order"
    return None


class FoldPreshift(RewritePass):
    """Fold input scalings of quantized layers into the producing norm's gamma/beta, into
    the rows of ``up_proj`` when the input is a gated product (LLaMA's ``down_proj``), or into
    the rows of ``v_proj`` when it is the attention's merged heads (the output projection)."""

    tolerance = 1e-5

    def __init__(self) -> None:
        super().__init__([FoldScaleIntoNorm(), FoldScaleIntoGatedProjection(), FoldScaleIntoValueProjection()])
