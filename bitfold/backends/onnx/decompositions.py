"""bitfold ops that ATen expresses exactly, handed to ``torch.onnx.export`` as ATen calls.

``fused_linear`` and ``fused_conv2d`` are a linear / convolution with bias and an
elementwise activation in one node, for backends that want one kernel; for ONNX they are
the ops they fuse, which ``torch.onnx.export`` translates (and ONNX Runtime fuses again).
"""

from __future__ import annotations

import torch

from bitfold.backends.onnx.registry import register_decomposition
from bitfold.ir.ops import _apply_activation


@register_decomposition(torch.ops.bitfold.fused_linear.default)
def fused_linear(x, weight, bias, activation):
    return _apply_activation(torch.nn.functional.linear(x, weight, bias), activation)


@register_decomposition(torch.ops.bitfold.fused_conv2d.default)
def fused_conv2d(x, weight, bias, stride, padding, dilation, groups, activation):
    y = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return _apply_activation(y, activation)
