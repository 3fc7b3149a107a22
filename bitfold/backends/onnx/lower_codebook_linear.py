"""Lowering of ``bitfold::codebook_linear``, SplitQuant's one-GEMM layer (``y = (x · 2^-k) @ Ŵᵀ + b``).

Every weight element holds a ``b``-bit code ``q`` and a cluster id ``c`` and decodes with
its cluster's scale and zero point, ``Ŵ[n, j] = (t[q] − z[c, n, g]) · s[c, n, g]`` (``t`` the
format's code table, ``g = j // group_size``).

* **simulate**: ``Ŵ`` is decoded at export time exactly as PyTorch decodes it, the pre-shift
  ``2^-k`` folded into its columns (exact for powers of two), and fed to one ``MatMul`` as a
  float32 ``[K, N]`` initializer.
* **compressed**: code and id are stored as one combined code ``u = c · 2^b + q`` of
  ``b + ceil(log2 k)`` bits (uint4 when that is at most 4 — SplitQuant INT2 with 3 or 4
  clusters: exactly the bits bitfold itself stores —, else uint8), ``[K, N]``. For each
  output channel (and group) the ``2^(b+id bits)`` possible values ``(t[q] − z[c]) · s[c]``
  form a small table computed here in float32 with PyTorch's arithmetic, and one
  ``GatherElements(table, u)`` decodes the whole weight, bit for bit, before one ``MatMul``.
  The pre-shift stays an exact ``Mul`` by ``2^-k`` on the activation.

No standard ONNX operator multiplies by a per-element codebook, so ONNX Runtime materializes
the decoded weight per call in compressed mode; the bytes on disk are the point there.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch
from onnx import TensorProto, numpy_helper

from bitfold.backends.onnx.lowering import BitfoldNode, LoweringContext
from bitfold.backends.onnx.registry import register_lowering
from bitfold.ir import formats
from bitfold.ir.ops import CodebookWeight

# codebook_linear(x, packed_codes, packed_ids, fmt, out_features, in_features, clusters, weight_scale,
#                 group_size, weight_zero_point, input_shift, bias): tensor inputs in that order.
_X, _CODES, _IDS, _SCALE, _ZERO, _SHIFT, _BIAS = range(7)
#: Widest combined code (code bits + id bits) compressed mode stores; its tables have 2^bits rows.
MAX_COMBINED_BITS = 8


def _output(x, packed_codes, packed_ids, fmt, out_features, *args, **kwargs):
    return (*x.shape[:-1], out_features), x.dtype


def _weight(node: BitfoldNode, ctx: LoweringContext) -> CodebookWeight:
    zero = ctx.value(node.input(_ZERO))
    if node.input(_ZERO) and zero is None:
        raise ctx.fail(node, "its weight zero point must be a constant to export")
    return CodebookWeight(
        torch.from_numpy(ctx.require(node, _CODES, "packed codes")),
        torch.from_numpy(ctx.require(node, _IDS, "packed cluster ids")),
        node.attrs["fmt"], int(node.attrs["out_features"]), int(node.attrs["in_features"]),
        int(node.attrs["clusters"]), torch.from_numpy(ctx.require(node, _SCALE, "cluster scales")),
        node.attrs.get("group_size"), None if zero is None else torch.from_numpy(zero),
    )


def _emit_compressed_weight(em, node: BitfoldNode, ctx: LoweringContext, weight: CodebookWeight):
    f = formats.get(weight.fmt)
    bits = weight.combined_bits
    if bits > MAX_COMBINED_BITS:
        raise ctx.fail(node, f"a {f.bits}-bit code and a {bits - f.bits}-bit cluster id need {bits} bits; "
                             f"compressed export stores at most {MAX_COMBINED_BITS} (export with mode='simulate')")
    container = TensorProto.UINT4 if bits <= 4 else TensorProto.UINT8
    combined_kn = weight.combined_codes().T.numpy().copy()
    tables = weight.value_tables().numpy()
    groups, rows, n = tables.shape
    k = weight.in_features
    stored = numpy_helper.from_array(combined_kn.astype(ml_dtypes.uint4 if container == TensorProto.UINT4 else np.uint8))
    index = em.op("Cast", em.const(stored, "combined_codes"), to=TensorProto.INT64, hint="combined_index")
    if groups > 1:
        # Row j of the weight reads table rows of its group: index · G + g(j).
        group_of_row = (np.arange(k, dtype=np.int64) // weight.group_size)[:, None]
        index = em.op("Add", em.op("Mul", index, em.ints([groups], "groups"), hint="group_major"),
                      em.const(group_of_row, "group_of_row"), hint="table_index")
    table = tables.transpose(1, 0, 2).reshape(rows * groups, n)  # row u·G + g
    decoded = em.op("GatherElements", em.const(table, "value_table"), index, axis=0, hint="weight")
    stored_bytes = -(-combined_kn.size * (4 if container == TensorProto.UINT4 else 8) // 8) + table.nbytes
    name = "uint4" if container == TensorProto.UINT4 else "uint8"
    return decoded, name, stored_bytes


@register_lowering(torch.ops.bitfold.codebook_linear.default, output=_output)
def lower_codebook_linear(node: BitfoldNode, ctx: LoweringContext) -> None:
    weight = _weight(node, ctx)
    shift = None if not node.input(_SHIFT) else ctx.require(node, _SHIFT, "input shift").astype(np.int32)
    x, bias = node.input(_X), node.input(_BIAS)
    em = ctx.emitter(node)
    facts = {"op": "codebook_linear", "weight_format": weight.fmt, "clusters": weight.clusters,
             "shape": [weight.out_features, weight.in_features],
             "granularity": "channel" if weight.group_size is None else f"group{weight.group_size}",
             "input_shift": shift is not None}
    if ctx.mode == "simulate":
        w = weight.unpack()
        if shift is not None:
            w = torch.ldexp(w, -torch.from_numpy(shift))
        y = em.op("MatMul", x, em.const(w.T.contiguous().numpy(), "weight"), hint="matmul")
        facts.update(lowering="MatMul(float32 weight on its grid)", stored_bytes=int(w.numel() * 4))
    else:
        if shift is not None:
            factor = np.ldexp(np.float32(1), -shift).astype(np.float32)
            x = em.op("Mul", x, em.const(factor, "input_shift_factor"), hint="unshifted_input")
        w_kn, container, stored_bytes = _emit_compressed_weight(em, node, ctx, weight)
        y = em.op("MatMul", x, w_kn, hint="matmul")
        facts.update(lowering=f"GatherElements(value table, {container} code+cluster) + MatMul",
                     container=container, stored_bytes=int(stored_bytes))
    if bias is not None:
        y = em.op("Add", y, bias, hint="bias")
    ctx.record(node, **facts)
    ctx.finish(node, em, y)
