"""Weights kept packed in a compiled module, decoded by a TE kernel where they are read.

A quantized table or weight matrix (``[rows, columns]`` codes with scales per row or per
group of ``g`` columns, optional zero points) is stored as bytes — two 4-bit codes per byte,
low nibble first, for formats of up to 4 bits, one byte per code above — next to the
format's code table and float32 scales (and rounded zero points). One element decodes as::

    code = (codes[row, col // 2] >> 4·(col % 2)) & 15          (one byte per code above 4 bits)
    w    = (table[code] − zero[row, col // g]) · scale[row, col // g]

which is bitfold's own decode, operation for operation, so the values are bit-identical to
the PyTorch simulation's. Which element a kernel index reads is the caller's choice: an
embedding gathers rows by id (:mod:`.lower_quantized_embedding`), a convolution decodes its
whole weight (:mod:`.lower_quantized_conv2d`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from torch import fx
from tvm import relax, te, tirx

from bitfold.backends.tvm.importer import LoweringError, node_label
from bitfold.ir import formats
from bitfold.ir.formats import BlockFormat
from bitfold.ir.graph_utils import attr_value
from bitfold.ir.ops import PackedWeight

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import GraphImporter

#: ``index -> (row, column)`` of the element a kernel index decodes.
Locate = Callable[[Tuple[Any, ...]], Tuple[Any, Any]]


def row_bytes(codes: np.ndarray, bits: int) -> np.ndarray:
    """``[rows, columns]`` codes as bytes, two 4-bit codes per byte (low nibble first) up to 4 bits."""
    if bits > 4:
        return codes.astype(np.uint8)
    codes = np.pad(codes.astype(np.uint8), ((0, 0), (0, codes.shape[1] % 2)))
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def packed_constant(imp: "GraphImporter", node: fx.Node, args: dict, rows: str, columns: str) -> PackedWeight:
    """The constant packed weight of a quantized op (arguments ``packed_weight``,
    ``weight_scale``, ``weight_zero_point``, ``group_size``, ``fmt``; shape from ``rows`` × ``columns``)."""
    fmt = formats.get(args["fmt"])
    if isinstance(fmt, BlockFormat):
        raise LoweringError(f"{node_label(node)}: a {fmt.name} weight (block scales) has no TVM lowering here")
    tensors = {k: attr_value(imp.gm, args[k]) for k in ("packed_weight", "weight_scale", "weight_zero_point")}
    if tensors["packed_weight"] is None or tensors["weight_scale"] is None or (
            args["weight_zero_point"] is not None and tensors["weight_zero_point"] is None):
        raise LoweringError(f"{node_label(node)}: the packed weight, scales and zero points must be constants")
    return PackedWeight(tensors["packed_weight"], fmt.name, int(args[rows]), int(args[columns]),
                        tensors["weight_scale"], args["group_size"], tensors["weight_zero_point"])


def packed_inputs(imp: "GraphImporter", weight: PackedWeight, label: str) -> List[relax.Expr]:
    """Relax values of the stored bytes, code table, scales and (if any) rounded zero points."""
    fmt = formats.get(weight.fmt)
    rows, columns = weight.out_features, weight.in_features
    codes = formats.unpack(weight.packed, fmt.bits, rows * columns).reshape(rows, columns).numpy()
    scale = weight.scale.detach().float().numpy().reshape(rows, -1)
    values = [imp.tensor_value(row_bytes(codes, fmt.bits), f"{label}.codes"),
              relax.const(fmt.codes.numpy().astype(np.float32)), imp.tensor_value(scale, f"{label}.scale")]
    if weight.zero_point is not None:
        zero = np.round(weight.zero_point.detach().float().numpy().reshape(rows, -1)).astype(np.float32)
        values.append(imp.tensor_value(zero, f"{label}.zero_point"))
    return values


def decode_te(shape: Sequence, locate: Locate, codes: te.Tensor, table: te.Tensor, scale: te.Tensor,
              zero: Optional[te.Tensor], bits: int, group: int, name: str) -> te.Tensor:
    """``shape`` decoded elements, each the one at ``locate(index)`` (see the module docstring)."""
    def value(*index):
        row, col = locate(index)
        if bits > 4:
            code = codes[row, col]
        else:
            byte = codes[row, col // 2]
            code = (byte >> (((col % 2) * 4).astype("uint8"))) & tirx.const(15, "uint8")
        level = table[code.astype("int32")]
        if zero is not None:
            level = level - zero[row, col // group]
        return level * scale[row, col // group]

    return te.compute(tuple(shape), value, name=name)
