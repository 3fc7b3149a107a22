"""Lowering of ``bitfold::quantized_linear`` (``y = (x · 2^-k) @ Ŵᵀ + b``).

* **simulate**: ``Ŵ`` is decoded at export time exactly as PyTorch decodes it, the
  pre-shift ``2^-k`` is folded into its columns — exact, since scaling by a power of two
  is (``(x_j·2^-k_j)·w = x_j·(w·2^-k_j)`` bit for bit, barring subnormals) — and the
  result is a float32 ``[K, N]`` initializer feeding ``MatMul``. Weights are constants,
  so their quantization happens here once; activations keep their quantize points.
* **compressed**: the codes stay low-bit (:mod:`~bitfold.backends.onnx.weight_storage`),
  or, for INT4 weights, go to ``MatMulNBits`` (:mod:`~bitfold.backends.onnx.matmul_nbits`)
  unless that is turned off. The pre-shift cannot be folded into per-output-channel
  scales, so it stays an exact ``Mul`` by ``2^-k`` on the activation (``K`` values).
"""

from __future__ import annotations

import numpy as np
import torch

from bitfold.backends.onnx.lowering import BitfoldNode, LoweringContext
from bitfold.backends.onnx.matmul_nbits import MICROSOFT_DOMAIN, emit_matmul_nbits, unsupported_reason
from bitfold.backends.onnx.registry import register_lowering
from bitfold.backends.onnx.weight_storage import emit_weight, group_size
from bitfold.ir import formats
from bitfold.ir.ops import PackedWeight

# quantized_linear(x, packed_weight, fmt, out_features, in_features, weight_scale, group_size,
#                  weight_zero_point, input_shift, bias): tensor inputs in that order.
_X, _PACKED, _SCALE, _ZERO, _SHIFT, _BIAS = range(6)


def _output(x, packed_weight, fmt, out_features, *args, **kwargs):
    return (*x.shape[:-1], out_features), x.dtype


def packed_weight(node: BitfoldNode, ctx: LoweringContext, rows: str = "out_features",
                  columns: str = "in_features") -> PackedWeight:
    """The constant packed weight of a quantized op whose tensor inputs 1, 2, 3 are the packed
    codes, the scale and the zero point, its shape in the attributes ``rows`` × ``columns``."""
    zero = ctx.value(node.input(_ZERO))
    if node.input(_ZERO) and zero is None:
        raise ctx.fail(node, "its weight zero point must be a constant to export")
    return PackedWeight(
        torch.from_numpy(ctx.require(node, _PACKED, "packed weight")), node.attrs["fmt"],
        int(node.attrs[rows]), int(node.attrs[columns]),
        torch.from_numpy(ctx.require(node, _SCALE, "weight scale")), node.attrs.get("group_size"),
        None if zero is None else torch.from_numpy(zero),
    )


def input_shift(node: BitfoldNode, ctx: LoweringContext):
    if not node.input(_SHIFT):
        return None
    return torch.from_numpy(ctx.require(node, _SHIFT, "input shift").astype(np.int32))


def exact_pow2(k: torch.Tensor) -> np.ndarray:
    """``2^k`` for integer ``k`` as exact float32."""
    return np.ldexp(np.float32(1), k.numpy().astype(np.int32)).astype(np.float32)


@register_lowering(torch.ops.bitfold.quantized_linear.default, output=_output)
def lower_quantized_linear(node: BitfoldNode, ctx: LoweringContext) -> None:
    weight = packed_weight(node, ctx)
    shift = input_shift(node, ctx)
    x, bias = node.input(_X), node.input(_BIAS)
    em = ctx.emitter(node)
    fmt = formats.get(weight.fmt)
    g = group_size(weight)
    facts = {"op": "quantized_linear", "weight_format": fmt.name, "shape": [weight.out_features, weight.in_features],
             "granularity": "channel" if g is None else f"group{g}", "input_shift": shift is not None}
    if ctx.mode == "simulate":
        w = weight.unpack()
        if shift is not None:
            w = torch.ldexp(w, -shift.to(torch.int32))
        w_kn = em.const(w.T.contiguous().numpy(), "weight")
        y = em.op("MatMul", x, w_kn, hint="matmul")
        facts.update(lowering="MatMul(float32 weight on its grid)", stored_bytes=int(w.numel() * 4))
    else:
        if shift is not None:
            x = em.op("Mul", x, em.const(exact_pow2(-shift), "input_shift_factor"), hint="unshifted_input")
        reason = unsupported_reason(weight)
        if ctx.options.matmul_nbits and reason is None:
            y, stored = emit_matmul_nbits(em, x, weight, bias, ctx.options.accuracy_level, "weight")
            ctx.use_domain(MICROSOFT_DOMAIN)
            bias = None
            facts["accuracy_level"] = ctx.options.accuracy_level
        else:
            w_kn, stored = emit_weight(em, weight, "weight")
            y = em.op("MatMul", x, w_kn, hint="matmul")
            if ctx.options.matmul_nbits and fmt.bits == 4 and isinstance(fmt, formats.IntFormat):
                facts["matmul_nbits_refused"] = reason
        facts.update(lowering=stored.decode, container=stored.container, stored_bytes=stored.stored_bytes)
    if bias is not None:
        y = em.op("Add", y, bias, hint="bias")
    ctx.record(node, **facts)
    ctx.finish(node, em, y)
