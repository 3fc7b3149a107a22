"""Call a hand-scheduled :mod:`bitfold.codegen` kernel from Relax on ``[M, K]`` rows.

The codegen kernels are destination-passing PrimFuncs ``f(x[M, K], *weight_arrays, y[M, N])``
with ``M`` symbolic. The input is flattened to rows, the kernel added to the module marked
``tirx.is_scheduled`` (so the default schedule rules leave it alone) and called with
``call_tir``; the result gets the input's leading dimensions back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from tvm import relax, tirx

from bitfold.backends.tvm.importer import dtype_of

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import GraphImporter


def flatten_rows(imp: "GraphImporter | relax.BlockBuilder", x: relax.Expr) -> relax.Expr:
    """``x`` viewed as ``[M, K]`` (all leading dimensions folded into ``M``), emitted by
    ``imp`` (the graph importer, or a Relax pass's block builder)."""
    shape = list(x.ty.shape)
    if len(shape) == 2:
        return x
    rows = 1
    for d in shape[:-1]:
        rows = rows * d
    return imp.emit(relax.op.reshape(x, [rows, shape[-1]]))


def unflatten_rows(imp: "GraphImporter | relax.BlockBuilder", y: relax.Expr, like: Sequence[Any],
                   features: Any) -> relax.Expr:
    """``y`` (``[M, N]``) reshaped back to ``like[:-1] + [N]``."""
    if len(like) == 2:
        return y
    return imp.emit(relax.op.reshape(y, list(like[:-1]) + [features]))


def call_row_kernel(
    imp: "GraphImporter",
    x: relax.Expr,
    kernel: tirx.PrimFunc,
    kernel_name: str,
    arrays: Sequence[np.ndarray],
    out_features: int,
    label: str,
) -> relax.Expr:
    """``y[..., N] = kernel(x[..., K] as rows, *arrays)``; ``label`` names the weight constants."""
    in_shape = list(x.ty.shape)
    rows = flatten_rows(imp, x)
    consts = [imp.tensor_value(np.asarray(a), f"{label}.{i}") for i, a in enumerate(arrays)]
    gv = imp.block_builder.add_func(kernel.with_attr("tirx.is_scheduled", True), kernel_name)
    out_ty = relax.TensorType([rows.ty.shape[0], out_features], dtype_of(x))
    y = imp.emit(relax.call_tir(gv, [rows, *consts], out_ty))
    return unflatten_rows(imp, y, in_shape, out_features)
