"""Split Linear, Conv and Embedding layers into k equivalent layers by clustering weight values (SplitQuant).

SplitQuant (Song & Kim, arXiv 2501.12428) gives low-bit quantization more resolution without
clipping outliers: the values of a layer's weight are clustered into ``k`` groups (lower,
middle, upper for ``k = 3``) and the layer becomes ``k`` layers, one per group, each of
which then gets its own, much tighter, quantization range.

For a layer ``y = f(x; W, b)`` that is linear in its parameters — Linear, Conv of any rank
(grouped, depthwise and transposed too), Embedding (no bias) — with clusters ``c = 0 … k−1``
of ``W``'s values and masks ``M_c = [t_{c−1} < W ≤ t_c]``::

    W_c = where(M_c, W, 0)        b_c = where(B_c, b, 0)      (B_c: the bias's own clusters)
    f(x; W, b) = Σ_c f(x; W_c, b_c)

because ``f`` is linear in ``(W, b)`` and ``Σ_c W_c = W`` holds exactly in floating point:
every element lands in exactly one part, the other parts hold ``+0``, and ``w + 0 = w``.
The pass checks that identity for every layer it splits (bit for bit, weights and biases).
The outputs then differ from the unsplit layer only in the order of the dot products'
additions (float reassociation); the pass manager verifies them within :attr:`tolerance`.

Clustering is the exact 1-D k-means of :mod:`bitfold.passes.cluster1d`: over all values of
``W`` (``per_channel=False``, as the SplitQuant code does), or separately for each row of
``W`` (``per_channel=True``: an output channel of a Linear or Conv, a token of an Embedding —
the rows that per-channel quantization gives their own scales). A bias is clustered over
its whole vector. The rewrite, for ``k = 3``::

    y = linear(x, W, b)   →   y0 = linear(x, W_0, b_0)
                              y1 = linear(x, W_1, b_1)
                              y2 = linear(x, W_2, b_2)
                              y  = (y0 + y1) + y2

Parts carry ``meta["bitfold_split"] = {"layer", "part", "clusters"}`` and the last add
``meta["bitfold_split_sum"] = layer``, so quantization and
:class:`~bitfold.passes.fuse_split_linears.FuseSplitLinears` can find them; a part is never
split again. What the released SplitQuant code got wrong and this pass does not: its k-means
is unseeded (here the optimum is computed, so the same model always splits the same way);
an all-zero bias silently skipped the layer (here it is one cluster and the layer is split);
Conv2d crashed; only ``k = 3`` worked (here 2 to 4); its "activation splitting" cut the
sequence axis of transformers (not offered).
"""

from __future__ import annotations

from typing import Collection, Dict, List, Optional, Tuple, Union

import torch
from torch import fx

from bitfold.ir.graph_utils import attr_value, constant_node
from bitfold.ir.op_groups import CONV, EMBEDDING, LINEAR
from bitfold.passes.base import PassError
from bitfold.passes.cluster1d import kmeans_1d
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule

aten = torch.ops.aten

#: Transposed convolutions keep output channels on weight axis 1 (``[C_in, C_out / groups, …]``).
TRANSPOSED_CONV = frozenset({aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input})
#: Layer kinds and the targets that make them, with the argument positions of weight and bias.
KINDS: Dict[str, Tuple[frozenset, int, Optional[int]]] = {
    "linear": (LINEAR, 1, 2),
    "conv": (CONV | TRANSPOSED_CONV, 1, 2),
    "embedding": (EMBEDDING, 0, None),
}
SPLIT_KEY = "bitfold_split"
SUM_KEY = "bitfold_split_sum"
MIN_CLUSTERS, MAX_CLUSTERS = 2, 4


def cluster_masks(values: torch.Tensor, k: int, per_channel: bool) -> torch.Tensor:
    """Cluster ids (int64, ``values``' shape) from exact k-means over all values or per row (dim 0)."""
    rows = values.reshape(values.shape[0], -1) if per_channel and values.dim() > 1 else values.reshape(-1)
    return kmeans_1d(rows, k).assign(rows).reshape(values.shape)


def split_tensor(values: torch.Tensor, ids: torch.Tensor, k: int) -> List[torch.Tensor]:
    """``[where(ids == c, values, 0) for c < k]``: parts that sum exactly to ``values``."""
    zero = torch.zeros((), dtype=values.dtype)
    return [torch.where(ids == c, values, zero) for c in range(k)]


def _exact_sum(parts: List[torch.Tensor]) -> torch.Tensor:
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


class SplitLayerRule(RewriteRule):
    """A Linear / Conv / Embedding with constant weights → ``k`` layers summed (module docstring)."""

    def __init__(self, k: int, per_channel: bool, kinds: Collection[str], layers: Optional[Collection[str]]) -> None:
        self.k = k
        self.per_channel = per_channel
        self.kinds = list(kinds)
        self.layers = None if layers is None else set(layers)
        self.anchors = tuple(t for kind in self.kinds for t in KINDS[kind][0])

    def _positions(self, node: fx.Node) -> Tuple[int, Optional[int]]:
        kind = next(kind for kind in self.kinds if node.target in KINDS[kind][0])
        return KINDS[kind][1], KINDS[kind][2]

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        if SPLIT_KEY in node.meta or (self.layers is not None and node.name not in self.layers):
            return None
        w_pos, b_pos = self._positions(node)
        weight = attr_value(gm, node.args[w_pos]) if len(node.args) > w_pos else None
        if weight is None:
            return self.fail("its weight is computed at run time, not a constant")
        if not weight.is_floating_point():
            return self.fail(f"its weight has dtype {weight.dtype}, not a floating-point type")
        bias = node.args[b_pos] if b_pos is not None and len(node.args) > b_pos else None
        if bias is not None and attr_value(gm, bias) is None:
            return self.fail("its bias is computed at run time, not a constant")
        transposed = node.target in TRANSPOSED_CONV or (node.target is aten.convolution.default and node.args[6])
        if self.per_channel and transposed:
            return self.fail("per-channel clustering needs output channels on weight axis 0; a transposed "
                             "convolution has them on axis 1 (split it with per_channel=False)")
        if not bool(torch.isfinite(weight).all()):
            raise PassError(f"split_layers: the weight of {node.name} ({node.args[w_pos].target}) holds NaN/Inf")
        return Match(node, {"layer": node})

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        node = match.anchor
        w_pos, b_pos = self._positions(node)
        w_node = node.args[w_pos]
        weight = attr_value(gm, w_node).detach()
        w_parts = split_tensor(weight, cluster_masks(weight, self.k, self.per_channel), self.k)
        b_node = node.args[b_pos] if b_pos is not None and len(node.args) > b_pos else None
        b_parts: List[Optional[torch.Tensor]] = [None] * self.k
        if b_node is not None:
            bias = attr_value(gm, b_node).detach()
            b_parts = split_tensor(bias, cluster_masks(bias, self.k, per_channel=False), self.k)
            if not torch.equal(_exact_sum(b_parts), bias):
                raise PassError(f"split_layers: the bias parts of {node.name} do not sum to its bias")
        if not torch.equal(_exact_sum(w_parts), weight):
            raise PassError(f"split_layers: the weight parts of {node.name} do not sum to its weight")
        total = None
        for c, (w, b) in enumerate(zip(w_parts, b_parts)):
            args = list(node.args)
            args[w_pos] = constant_node(gm, f"{w_node.target}_split{c}", w)
            if b is not None:
                args[b_pos] = constant_node(gm, f"{b_node.target}_split{c}", b)
            part = gm.graph.create_node("call_function", node.target, tuple(args), dict(node.kwargs),
                                        name=f"{node.name}_split{c}")
            part.meta[SPLIT_KEY] = {"layer": node.name, "part": c, "clusters": self.k}
            total = part if total is None else gm.graph.call_function(aten.add.Tensor, (total, part))
        total.meta[SUM_KEY] = node.name
        return total


class SplitLayers(RewritePass):
    """Split layers into ``k`` value clusters, exactly (see the module docstring).

    ``kinds``: which of ``linear``, ``conv``, ``embedding`` to split; ``layers``: node names
    to split (default: every layer of those kinds with constant weights).
    """

    #: Splitting reorders each dot product's additions into k partial sums; float32
    #: reassociation over thousands of terms and a few dozen layers stays well below this.
    tolerance = 1e-4

    def __init__(
        self,
        k: int = 3,
        per_channel: bool = True,
        kinds: Collection[str] = ("linear", "conv", "embedding"),
        layers: Optional[Collection[str]] = None,
    ) -> None:
        if not MIN_CLUSTERS <= k <= MAX_CLUSTERS:
            raise ValueError(f"split_layers: k must be between {MIN_CLUSTERS} and {MAX_CLUSTERS}, got {k}")
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"split_layers: unknown layer kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
        super().__init__([SplitLayerRule(k, per_channel, kinds, layers)])
