"""Lowering of ``bitfold::quantized_conv2d`` (``y = conv2d(x · 2^-k, Ŵ, b, …)``) to ONNX ``Conv``.

* **simulate**: ``Ŵ`` is decoded at export time exactly as PyTorch decodes it, the
  per-input-channel ``2^-k`` is folded into the weight (exact: a power of two, barring
  subnormals), and the ``[N, C/G, kh, kw]`` float32 initializer feeds ``Conv``.
* **compressed**: the codes stay low-bit and are decoded by the same nodes as a quantized
  linear's (:mod:`~bitfold.backends.onnx.weight_storage`, which yields ``[K, N]``), then
  ``Transpose`` + ``Reshape`` give the OIHW weight; the shift stays an exact ``Mul`` by
  ``2^-k`` on the input, shaped ``[1, C, 1, 1]``. ``MatMulNBits`` has no convolution form.
"""

from __future__ import annotations

import numpy as np
import torch

from bitfold.backends.onnx.lower_quantized_linear import exact_pow2, input_shift, packed_weight
from bitfold.backends.onnx.lowering import BitfoldNode, LoweringContext
from bitfold.backends.onnx.registry import register_lowering
from bitfold.backends.onnx.weight_storage import emit_weight, group_size
from bitfold.ir import formats
from bitfold.ir.ops import conv2d_output_shape

# tensor inputs of quantized_conv2d, in order: x, packed_weight, weight_scale, weight_zero_point,
# input_shift, bias (the same as quantized_linear's)
_X, _BIAS = 0, 5


def _output(x, packed_weight, fmt, out_channels, in_features, weight_scale, group_size, weight_zero_point,
            input_shift, bias, kernel_size, stride, padding, dilation, groups):
    return conv2d_output_shape(x.shape, out_channels, kernel_size, stride, padding, dilation), x.dtype


@register_lowering(torch.ops.bitfold.quantized_conv2d.default, output=_output)
def lower_quantized_conv2d(node: BitfoldNode, ctx: LoweringContext) -> None:
    weight = packed_weight(node, ctx, rows="out_channels")
    shift = input_shift(node, ctx)
    attrs = node.attrs
    kh, kw = (int(v) for v in attrs["kernel_size"])
    groups = int(attrs["groups"])
    n = weight.out_features
    oihw = [n, weight.in_features // (kh * kw), kh, kw]
    x, bias = node.input(_X), node.input(_BIAS)
    em = ctx.emitter(node)
    fmt = formats.get(weight.fmt)
    g = group_size(weight)
    facts = {"op": "quantized_conv2d", "weight_format": fmt.name, "shape": oihw,
             "granularity": "channel" if g is None else f"group{g}", "input_shift": shift is not None}
    if ctx.mode == "simulate":
        w = weight.unpack().reshape(oihw)
        if shift is not None:
            # input channel c = group·(C/G) + local; output channel n belongs to group n // (N/G)
            per_group = shift.to(torch.int32).reshape(groups, 1, oihw[1])
            w = torch.ldexp(w, -per_group.expand(groups, n // groups, oihw[1]).reshape(n, oihw[1], 1, 1))
        w_name = em.const(w.contiguous().numpy(), "weight")
        facts.update(lowering="Conv(float32 weight on its grid)", stored_bytes=int(w.numel() * 4))
    else:
        if shift is not None:
            factor = exact_pow2(-shift).reshape(1, -1, 1, 1)
            x = em.op("Mul", x, em.const(factor, "input_shift_factor"), hint="unshifted_input")
        w_kn, stored = emit_weight(em, weight, "weight")
        w_nk = em.op("Transpose", w_kn, perm=[1, 0], hint="weight_nk")
        w_name = em.op("Reshape", w_nk, em.const(np.asarray(oihw, dtype=np.int64), "weight_shape"), hint="weight_oihw")
        facts.update(lowering=f"{stored.decode} → Transpose → Reshape", container=stored.container,
                     stored_bytes=stored.stored_bytes)
    pads = [int(p) for p in attrs["padding"]]
    y = em.op("Conv", x, w_name, bias, hint="conv", kernel_shape=[kh, kw], strides=[int(s) for s in attrs["stride"]],
              pads=pads + pads, dilations=[int(d) for d in attrs["dilation"]], group=groups)
    ctx.record(node, **facts)
    ctx.finish(node, em, y)
