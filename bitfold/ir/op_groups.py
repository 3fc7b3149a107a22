"""Named groups of canonical ATen ops that passes reason about.

Keeping them in one place means "is this a linear layer?" has one answer across passes,
the summary and the backends.
"""

from __future__ import annotations

import torch

aten = torch.ops.aten
bitfold_ops = torch.ops.bitfold

LINEAR = frozenset({aten.linear.default})
CONV = frozenset({aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default})
MATMUL = frozenset({aten.matmul.default, aten.mm.default, aten.bmm.default})
EMBEDDING = frozenset({aten.embedding.default})
LAYER_NORM = frozenset({aten.layer_norm.default})
RMS_NORM = frozenset({aten.rms_norm.default})
NORMS = LAYER_NORM | RMS_NORM | frozenset({aten.batch_norm.default, aten.group_norm.default})
SOFTMAX = frozenset({aten.softmax.int, aten._softmax.default, aten.log_softmax.int})
ADD = frozenset({aten.add.Tensor})

#: Elementwise activations a linear/conv can absorb, by the name the fused op records.
ACTIVATIONS = {
    aten.relu.default: "relu",
    aten.gelu.default: "gelu",
    aten.silu.default: "silu",
    aten.sigmoid.default: "sigmoid",
    aten.tanh.default: "tanh",
    aten.hardswish.default: "hardswish",
    aten.hardsigmoid.default: "hardsigmoid",
    aten.relu6.default: "relu6",
}
#: Activations that are only fusable for some arguments (clamp(0, 6) is relu6).
CLAMPS = frozenset({aten.clamp.default, aten.hardtanh.default})

#: Ops that only move or relabel data (no arithmetic) when their arguments say so.
VIEWS = frozenset({
    aten.reshape.default, aten.view.default, aten.unsqueeze.default, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.flatten.using_ints, aten._unsafe_view.default,
})
#: Ops that return their input unchanged in inference.
IDENTITIES = frozenset({
    aten.clone.default, aten.alias.default, aten.contiguous.default, aten.detach.default,
    aten.dropout.default, aten.feature_dropout.default, aten.lift_fresh_copy.default,
})
