"""Lowering of ``bitfold::quantized_conv2d``: the packed weight decoded in the module, then ``conv2d``.

The weight stays packed in the compiled module (:mod:`.packed_rows`): one TE kernel decodes
the ``[N, K]`` code matrix bit-identically to the PyTorch simulation straight into the
``[N, C/G, kh, kw]`` OIHW weight (element ``(o, c, i, j)`` is code ``(o, (c·kh + i)·kw + j)``),
and Relax's ``conv2d`` (with the default schedules) runs the convolution; a per-input-channel
shift is an exact multiply of the input by ``2^-k``.
Decoding costs one pass over ``N·K`` codes per call — for a convolution, small next to the
``N·K·H·W`` multiply-adds — and the file keeps 4-bit codes where a float weight would take 32.
(Weights small enough to be embedded as constants are decoded once, at build time, by
Relax's constant folding.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import fx
from tvm import relax

from bitfold.backends.tvm.importer import LoweringError, node_label, op_arguments
from bitfold.backends.tvm.lower_dense import conv2d_values
from bitfold.backends.tvm.packed_rows import decode_te, packed_constant, packed_inputs
from bitfold.ir import formats
from bitfold.ir.graph_utils import attr_value

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import GraphImporter


def lower_quantized_conv2d(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    a = op_arguments(node)
    weight = packed_constant(imp, node, a, "out_channels", "in_features")
    bits = formats.get(weight.fmt).bits
    n, k = weight.out_features, weight.in_features
    kh, kw = (int(v) for v in a["kernel_size"])
    group = k if weight.group_size is None else int(weight.group_size)

    def oihw(index):
        o, c, i, j = index
        return o, (c * kh + i) * kw + j

    def kernel(codes, levels, scale, zero=None):
        return decode_te((n, k // (kh * kw), kh, kw), oihw, codes, levels, scale, zero, bits, group, "conv_weight")

    w = imp.block_builder.emit_te(kernel, *packed_inputs(imp, weight, node.name),
                                  primfunc_name_hint="decode_conv_weight")
    x = imp.env[a["x"]]
    if a["input_shift"] is not None:
        shift = attr_value(imp.gm, a["input_shift"])
        if shift is None:
            raise LoweringError(f"{node_label(node)}: its input shift must be a constant")
        factor = np.ldexp(np.float32(1), -shift.numpy().astype(np.int32)).astype(np.float32).reshape(1, -1, 1, 1)
        x = imp.emit(relax.op.multiply(x, relax.const(factor)))
    bias = None if a["bias"] is None else imp.env[a["bias"]]
    return conv2d_values(imp, x, w, bias, a["stride"], a["padding"], a["dilation"], a["groups"])
