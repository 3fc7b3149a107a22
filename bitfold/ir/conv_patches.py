"""A 2-D convolution seen as a matrix product over its input patches.

``conv2d(x, W)`` with ``W`` of shape ``[N, C/G, kh, kw]`` is, per group ``g`` of the ``G``
groups, the product of the im2col patches of ``x``'s channels in ``g`` with that group's
weight rows ``W.reshape(N, K)`` (``K = C/G · kh · kw``, channel-major as in OIHW)::

    y[b, n, p] = Σ_k patches[b, p, g(n), k] · W[n, k]        (g(n) = n // (N/G))

So a convolution quantizes like a linear layer of ``in_features = K``: per-output-channel
(or per-group) weight scales over those ``K`` values, and a per-tensor activation
quantizer, which the patches see unchanged (a patch only copies input values, padding adds
exact zeros). Calibration samples patch rows (:func:`patch_rows`), one row per output
position and group, and remembers each row's group, so that the output of a sampled row is
computed with its own group's weights only (:func:`grouped_product`).

A per-input-channel quantity (LLM-FP4's pre-shift ``2^k_j``, SmoothQuant's factor) maps to
one patch column only when the convolution is *pointwise*: a 1×1 kernel with one group,
where a patch is the channel vector at one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import fx

from bitfold.ir.graph_utils import attr_value

aten = torch.ops.aten
CONV2D = aten.conv2d.default


def _pair(value, default: int) -> Tuple[int, int]:
    if value is None:
        return (default, default)
    if isinstance(value, int):
        return (value, value)
    values = [int(v) for v in value]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


@dataclass(frozen=True)
class ConvGeometry:
    """The shape arguments of one ``aten.conv2d`` node."""

    out_channels: int
    in_channels: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1

    @classmethod
    def of(cls, node: fx.Node, weight: torch.Tensor) -> "ConvGeometry":
        """The geometry of ``aten.conv2d(x, weight, bias, stride, padding, dilation, groups)``."""
        if node.target != CONV2D or weight.dim() != 4:
            raise ValueError(f"node '{node.name}' is not a 2-D convolution with a 4-D weight")
        args = list(node.args) + [None] * (7 - len(node.args))
        for i, key in enumerate(("stride", "padding", "dilation", "groups"), start=3):
            if key in node.kwargs:
                args[i] = node.kwargs[key]
        groups = 1 if args[6] is None else int(args[6])
        return cls(int(weight.shape[0]), int(weight.shape[1]) * groups, (int(weight.shape[2]), int(weight.shape[3])),
                   _pair(args[3], 1), _pair(args[4], 0), _pair(args[5], 1), groups)

    @property
    def in_features(self) -> int:
        """``K``: the weight values per output channel."""
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    @property
    def pointwise(self) -> bool:
        """A 1×1 kernel and one group: patch column ``j`` is input channel ``j``."""
        return self.kernel_size == (1, 1) and self.groups == 1

    def describe(self) -> str:
        """``3x3/s2 depthwise``, ``1x1``, ``5x5 groups 4``."""
        kind = "depthwise" if self.groups == self.in_channels and self.groups > 1 else (
            f"groups {self.groups}" if self.groups > 1 else "")
        stride = "" if self.stride == (1, 1) else f"/s{self.stride[0]}" if self.stride[0] == self.stride[1] \
            else f"/s{self.stride[0]}x{self.stride[1]}"
        return " ".join(p for p in (f"{self.kernel_size[0]}x{self.kernel_size[1]}{stride}", kind) if p)

    def key(self) -> str:
        """A short string that differs between geometries (groups of layers sharing an input)."""
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        return f"conv{k[0]}x{k[1]}s{s[0]}x{s[1]}p{p[0]}x{p[1]}d{d[0]}x{d[1]}g{self.groups}"


def conv_geometry(gm: fx.GraphModule, node: fx.Node) -> Optional[ConvGeometry]:
    """The geometry of ``aten.conv2d`` node ``node`` of ``gm`` (read from its constant weight); ``None``
    for any other node."""
    if node.target != CONV2D:
        return None
    return ConvGeometry.of(node, attr_value(gm, node.args[1]))


def patch_rows(x: torch.Tensor, geometry: ConvGeometry) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(rows, group)``: the im2col patches of NCHW ``x`` as ``[B·P·G, K]`` rows (``P`` output
    positions), and each row's group index (``None`` for one group)."""
    if x.dim() != 4 or x.shape[1] != geometry.in_channels:
        raise ValueError(f"expected an NCHW input with {geometry.in_channels} channels, got shape {tuple(x.shape)}")
    if geometry.kernel_size == (1, 1) and geometry.padding == (0, 0):
        sh, sw = geometry.stride
        cols = x[:, :, ::sh, ::sw].flatten(2)  # a 1x1 patch is the pixel: skip unfold's copy
    else:
        cols = torch.nn.functional.unfold(x, geometry.kernel_size, geometry.dilation, geometry.padding,
                                          geometry.stride)
    g = geometry.groups
    b, _, positions = cols.shape
    rows = cols.reshape(b, g, geometry.in_features, positions).permute(0, 3, 1, 2).reshape(-1, geometry.in_features)
    if g == 1:
        return rows, None
    return rows, torch.arange(g, dtype=torch.int32).repeat(b * positions)


def grouped_product(X: torch.Tensor, W: torch.Tensor, group: Optional[torch.Tensor], groups: int) -> torch.Tensor:
    """Each row of ``X`` times the weight rows of its own group: ``[T, N/G]`` (``X @ Wᵀ`` when
    ``group`` is ``None``)."""
    if group is None:
        return X @ W.T
    per_group = W.reshape(groups, W.shape[0] // groups, W.shape[1])
    return torch.einsum("tk,tnk->tn", X, per_group[group.long()])
