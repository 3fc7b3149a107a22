"""Replace planned 2-D convolutions with ``bitfold.quantized_conv2d``.

A convolution quantizes as the linear layer over its input patches
(:mod:`bitfold.ir.conv_patches`): its ``[N, C/G, kh, kw]`` weight is packed as the ``[N, K]``
matrix ``W.reshape(N, K)``, and with an activation plan for its input ``x``::

    xs = x · c                                  (c = 2^k per channel, shaped [C, 1, 1]: pre-shift)
    xq = bitfold.fake_quantize(xs, fa, sa)      (per tensor)
    y  = bitfold.quantized_conv2d(xq, pack(Q_fw(W)), fw, N, K, sw, g, zw, k, b, kernel, stride, padding,
                                  dilation, groups)

``quantized_conv2d`` multiplies ``xq`` by ``2^-k`` per input channel, so the layer computes
``conv(Q(x·2^k; ρ)·2^-k, Ŵ)``, the per-channel-biased activation of LLM-FP4 — only planned
for pointwise convolutions, where that factor is one patch column. Convolutions sharing an
input and a geometry share one activation quantizer node, keyed like their plan
(:func:`~bitfold.passes.quantize_linears.input_key`). This pass changes numerics by design.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import fx

from bitfold.ir.conv_patches import CONV2D, conv_geometry
from bitfold.ir.graph_utils import remove_unused_constants
from bitfold.passes.base import Pass, PassResult
from bitfold.passes.quantize_linears import (
    ActivationPlan, WeightPlan, input_key, packed_weight_args, planned_weight, quantized_input, replace_layer,
    require_layers, shift_constant,
)


class QuantizeConvs(Pass):
    """Rewrite the convolutions named in ``weights`` into quantized ops (see the module docstring)."""

    preserves_semantics = False

    def __init__(self, weights: Dict[str, WeightPlan], activations: Dict[str, ActivationPlan]) -> None:
        self.weights = weights
        self.activations = activations

    def requires(self, gm: fx.GraphModule) -> None:
        require_layers(gm, self.weights, CONV2D, "quantize_convs", "conv2d")

    def call(self, gm: fx.GraphModule) -> PassResult:
        cache: Dict[str, fx.Node] = {}
        for node in list(gm.graph.nodes):
            plan = self.weights.get(node.name)
            if plan is None or node.target != CONV2D:
                continue
            geometry = conv_geometry(gm, node)
            key = input_key(gm, node)
            act = self.activations.get(key)
            packed = planned_weight(gm, node, plan, act, "quantize_convs")
            xq = quantized_input(gm, node.args[0], key, act, cache, node, channel_shape=(-1, 1, 1))
            bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            with gm.graph.inserting_before(node):
                args = [xq, *packed_weight_args(gm, node.name, packed, plan), shift_constant(gm, node, act), bias,
                        list(geometry.kernel_size), list(geometry.stride), list(geometry.padding),
                        list(geometry.dilation), geometry.groups]
                new = gm.graph.call_function(torch.ops.bitfold.quantized_conv2d.default, tuple(args))
            replace_layer(gm, node, new)
        gm.graph.eliminate_dead_code()
        remove_unused_constants(gm)
        return PassResult(gm, bool(self.weights))
