"""Lowering of ``bitfold::codebook_linear`` (SplitQuant's one-GEMM layer) to Relax.

The layer becomes one ``call_tir`` of the codebook kernel of :mod:`bitfold.codegen.codebook_linear`
on the input flattened to ``[M, K]``, with its weight-side arrays (combined code words and
per-channel value tables, the shift and bias) as constants — one pass over one
``b + 2``-bit matrix instead of the ``k`` dense low-bit GEMMs of the split layers. A layer
the kernels cannot take (wider codes, per-group scales, a target without AVX2) is an error
naming the node; there is no dense fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx
from tvm import relax

from bitfold.backends.tvm.importer import LoweringError, node_label
from bitfold.backends.tvm.kernel_call import call_row_kernel

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import GraphImporter


def lower_codebook_linear(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    """``y = (x · 2^-k) Ŵᵀ + b`` through the compiled codebook kernel (module docstring)."""
    from bitfold.codegen.codebook_linear import build_codebook_kernel, codebook_kernel_from_node

    try:
        spec, arrays = codebook_kernel_from_node(node, imp.gm)
        prim = build_codebook_kernel(spec, imp.target)
    except Exception as err:  # no kernel for this layer or target
        raise LoweringError(
            f"{node_label(node)}: bitfold.codegen has no codebook kernel for it on {imp.target.kind.name} "
            f"({type(err).__name__}: {err}); bitfold does not fall back to a dense product") from err
    return call_row_kernel(imp, imp.env[node.args[0]], prim, spec.name(None), arrays, spec.out_features, node.name)
