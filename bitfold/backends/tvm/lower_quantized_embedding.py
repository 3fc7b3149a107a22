"""Lowering of ``bitfold::quantized_embedding`` to one TE kernel that decodes only the rows it reads.

The table stays packed in the compiled module: codes per row as bytes (two 4-bit codes per
byte, low nibble first, for formats of up to 4 bits), the format's code table, and scales
(and rounded zero points) per row or per group. For every looked-up id and column ``d``::

    code = (codes[id, d // 2] >> 4·(d % 2)) & 15          (one byte per code above 4 bits)
    y    = (table[code] − zero[id, d // g]) · scale[id, d // g]

bitfold's own decode, operation for operation, so the output is bit-identical to the
PyTorch simulation. The kernel is elementwise over ``ids.shape + [D]``; the default CPU/GPU
schedules parallelize and vectorize it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
from torch import fx
from tvm import relax, te, tirx

from bitfold.backends.tvm.importer import LoweringError, node_label, op_arguments
from bitfold.ir import formats
from bitfold.ir.formats import BlockFormat
from bitfold.ir.graph_utils import attr_value
from bitfold.ir.ops import PackedWeight

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import GraphImporter


def _row_bytes(codes: np.ndarray, bits: int) -> np.ndarray:
    if bits > 4:
        return codes.astype(np.uint8)
    codes = np.pad(codes.astype(np.uint8), ((0, 0), (0, codes.shape[1] % 2)))
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _decode_rows(ids: te.Tensor, codes: te.Tensor, table: te.Tensor, scale: te.Tensor, zero: Optional[te.Tensor],
                 dim: int, bits: int, group: int) -> te.Tensor:
    def value(*index):
        row, d = ids[index[:-1]], index[-1]
        if bits > 4:
            code = codes[row, d]
        else:
            byte = codes[row, d // 2]
            code = (byte >> (((d % 2) * 4).astype("uint8"))) & tirx.const(15, "uint8")
        level = table[code.astype("int32")]
        if zero is not None:
            level = level - zero[row, d // group]
        return level * scale[row, d // group]

    return te.compute((*ids.shape, dim), value, name="embedding_rows")


def lower_quantized_embedding(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    a = op_arguments(node)
    fmt = formats.get(a["fmt"])
    if isinstance(fmt, BlockFormat):
        raise LoweringError(f"{node_label(node)}: a {fmt.name} embedding (block scales) has no TVM lowering")
    tensors = {k: attr_value(imp.gm, a[k]) for k in ("packed_weight", "weight_scale", "weight_zero_point")}
    if tensors["packed_weight"] is None or tensors["weight_scale"] is None or (
            a["weight_zero_point"] is not None and tensors["weight_zero_point"] is None):
        raise LoweringError(f"{node_label(node)}: the packed table, scales and zero points must be constants")
    V, D = int(a["num_embeddings"]), int(a["embedding_dim"])
    table = PackedWeight(tensors["packed_weight"], fmt.name, V, D, tensors["weight_scale"], a["group_size"],
                         tensors["weight_zero_point"])
    codes = formats.unpack(table.packed, fmt.bits, V * D).reshape(V, D).numpy()
    scale = table.scale.detach().float().numpy().reshape(V, -1)
    group = D if a["group_size"] is None else int(a["group_size"])
    label = node.name
    args = [imp.env[a["indices"]], imp.tensor_value(_row_bytes(codes, fmt.bits), f"{label}.codes"),
            relax.const(fmt.codes.numpy().astype(np.float32)), imp.tensor_value(scale, f"{label}.scale")]
    if table.zero_point is not None:
        zero = np.round(table.zero_point.detach().float().numpy().reshape(V, -1)).astype(np.float32)
        args.append(imp.tensor_value(zero, f"{label}.zero_point"))

    def kernel(ids, codes_, levels, scale_, zero_=None):
        return _decode_rows(ids, codes_, levels, scale_, zero_, D, fmt.bits, group)

    return imp.block_builder.emit_te(kernel, *args, primfunc_name_hint="quantized_embedding")
