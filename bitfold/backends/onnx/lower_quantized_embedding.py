"""Lowering of ``bitfold::quantized_embedding`` (``y = Ŵ[ids]``, weight-only).

* **simulate**: the table decoded at export time, exactly as PyTorch decodes it, as a
  float32 ``[V, D]`` initializer read by ``Gather``.
* **compressed**: gather the rows first, decode only those. The codes are stored per row
  as ``uint8`` — two 4-bit codes per byte (low nibble first) for formats of up to 4 bits,
  one per byte above — because ONNX's ``Gather`` does not take ``int4``/``uint4``. Then::

      rows   = Gather(codes, ids)                        [..., D/2] bytes
      codes  = Concat(rows & 15, rows >> 4) → [..., D]   (BitwiseAnd, BitShift)
      levels = Gather(code table, codes)                 the format's values
      y      = (levels − Gather(zero, ids)) · Gather(scale, ids)   per row or per group

  the same arithmetic as bitfold's decode (a table value, minus the rounded zero point,
  times the scale), so the file reproduces the simulation bit for bit. A lookup decodes
  ``D`` values per token instead of the whole table per call.
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch
from onnx import TensorProto

from bitfold.backends.onnx.emitter import Emitter
from bitfold.backends.onnx.lower_quantized_linear import packed_weight
from bitfold.backends.onnx.lowering import BitfoldNode, LoweringContext
from bitfold.backends.onnx.registry import register_lowering
from bitfold.backends.onnx.weight_storage import weight_codes
from bitfold.ir import formats
from bitfold.ir.formats import BlockFormat

# quantized_embedding(indices, packed_weight, fmt, num_embeddings, embedding_dim, weight_scale,
#                     group_size, weight_zero_point): tensor inputs in that order.
_IDS = 0


def _output(indices, packed_weight, fmt, num_embeddings, embedding_dim, *args, **kwargs):
    return (*indices.shape, embedding_dim), torch.float32


def _row_codes(codes: np.ndarray, bits: int, padded: int) -> np.ndarray:
    """``[V, D]`` codes as ``[V, padded/2]`` nibble pairs (bits ≤ 4) or ``[V, padded]`` bytes."""
    codes = np.pad(codes.astype(np.uint8), ((0, 0), (0, padded - codes.shape[1])))
    if bits > 4:
        return codes
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _unpack_rows(em: Emitter, rows: str, bits: int, keep: List[int], last_axis: str) -> str:
    """Bytes ``[..., P]`` → codes ``[..., 2P]`` (low nibble first) for bits ≤ 4."""
    if bits > 4:
        return rows
    four = em.const(np.array(4, np.uint8), "four")
    low = em.op("BitwiseAnd", rows, em.const(np.array(15, np.uint8), "low_mask"), hint="low_codes")
    high = em.op("BitShift", rows, four, direction="RIGHT", hint="high_codes")
    pairs = em.op("Concat", em.op("Unsqueeze", low, last_axis), em.op("Unsqueeze", high, last_axis), axis=-1,
                  hint="code_pairs")
    return em.op("Reshape", pairs, em.ints(keep + [-1], "codes_shape"), hint="codes")


@register_lowering(torch.ops.bitfold.quantized_embedding.default, output=_output)
def lower_quantized_embedding(node: BitfoldNode, ctx: LoweringContext) -> None:
    table = packed_weight(node, ctx, "num_embeddings", "embedding_dim")
    fmt = formats.get(table.fmt)
    ids = node.input(_IDS)
    em = ctx.emitter(node)
    V, D = table.out_features, table.in_features
    g = table.group_size
    facts = {"op": "quantized_embedding", "weight_format": fmt.name, "shape": [V, D],
             "granularity": "channel" if g is None else f"group{g}"}
    if ctx.mode == "simulate":
        decoded = em.const(table.unpack().numpy(), "table")
        y = em.op("Gather", decoded, ids, axis=0, hint="rows")
        facts.update(lowering="Gather(float32 table on its grid)", stored_bytes=V * D * 4)
        ctx.record(node, **facts)
        ctx.finish(node, em, y)
        return
    if isinstance(fmt, BlockFormat):
        raise ctx.fail(node, f"compressed export of a {fmt.name} embedding (block scales) is not supported; "
                             "export in simulate mode or quantize the table with a per-row or per-group format")
    rank = len(ctx.shape(ids) or [])
    if rank == 0:
        raise ctx.fail(node, "the rank of its indices is unknown")
    keep = [0] * rank
    padded = D if g is None else -(-D // g) * g
    padded += padded % 2 if fmt.bits <= 4 else 0
    stored = _row_codes(weight_codes(table), fmt.bits, padded)
    last_axis, start = em.ints([-1], "last_axis"), em.ints([0], "start")

    def first_columns(x: str, width: int, hint: str) -> str:
        return em.op("Slice", x, start, em.ints([width], hint), last_axis)

    def rows_of(values: np.ndarray, hint: str) -> str:
        """``values[ids]`` as ``[..., groups, 1]`` (per group) or ``[..., 1]`` (per row)."""
        table_ = values if g is not None else values[:, 0]
        return em.op("Unsqueeze", em.op("Gather", em.const(table_, hint), ids, axis=0), last_axis)

    rows = em.op("Gather", em.const(stored, "codes"), ids, axis=0, hint="code_rows")
    codes = _unpack_rows(em, rows, fmt.bits, keep, last_axis)
    levels = em.op("Gather", em.const(fmt.codes.numpy().astype(np.float32), "code_table"),
                   em.op("Cast", codes, to=TensorProto.INT64), hint="levels")
    scale = table.scale.detach().float().numpy().reshape(V, -1)
    groups = scale.shape[1]
    if g is not None:
        levels = em.op("Reshape", first_columns(levels, groups * g, "grouped"), em.ints(keep + [groups, g], "group_view"))
    else:
        levels = first_columns(levels, D, "width")
    nbytes = stored.nbytes + scale.nbytes
    if table.zero_point is not None:
        zero = np.round(table.zero_point.detach().float().numpy().reshape(V, -1)).astype(np.float32)
        levels = em.op("Sub", levels, rows_of(zero, "zero_point"), hint="centered")
        nbytes += zero.nbytes
    y = em.op("Mul", levels, rows_of(scale, "scale"), hint="rows")
    if g is not None:
        y = em.op("Reshape", y, em.ints(keep + [-1], "flat_view"))
        if groups * g != D:
            y = first_columns(y, D, "width")
    container = "uint8 (4-bit pairs)" if fmt.bits <= 4 else "uint8"
    facts.update(lowering=f"Gather rows of {container} codes, then decode", container=container,
                 stored_bytes=int(nbytes))
    ctx.record(node, **facts)
    ctx.finish(node, em, y)
