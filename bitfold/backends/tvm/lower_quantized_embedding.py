"""Lowering of ``bitfold::quantized_embedding`` to one TE kernel that decodes only the rows it reads.

The table stays packed in the compiled module (:mod:`.packed_rows`); for every looked-up id
and column ``d`` the kernel decodes element ``(id, d)``, bit-identical to the PyTorch
simulation. The kernel is elementwise over ``ids.shape + [D]``; the default CPU/GPU
schedules parallelize and vectorize it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx
from tvm import relax

from bitfold.backends.tvm.importer import op_arguments
from bitfold.backends.tvm.packed_rows import decode_te, packed_constant, packed_inputs
from bitfold.ir import formats

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import GraphImporter


def lower_quantized_embedding(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    a = op_arguments(node)
    table = packed_constant(imp, node, a, "num_embeddings", "embedding_dim")
    bits = formats.get(table.fmt).bits
    dim = table.in_features
    group = dim if table.group_size is None else int(table.group_size)

    def kernel(ids, codes, levels, scale, zero=None):
        return decode_te((*ids.shape, dim), lambda index: (ids[index[:-1]], index[-1]), codes, levels, scale, zero,
                         bits, group, "embedding_rows")

    args = [imp.env[a["indices"]], *packed_inputs(imp, table, node.name)]
    return imp.block_builder.emit_te(kernel, *args, primfunc_name_hint="quantized_embedding")
