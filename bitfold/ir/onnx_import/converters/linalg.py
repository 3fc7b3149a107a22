"""Matrix products: MatMul, Gemm, Einsum.

``Gemm(A, B, C)`` with ``transB=1``, no ``transA``, ``α = β = 1`` and a 1-D (or absent) ``C``
is exactly ``aten.linear(A, B, C)`` — what ``nn.Linear`` exports to. Any other Gemm is written
literally: transposes as ``permute``, ``matmul``, scaling by α and β, ``add``. MatMul stays
``aten.matmul`` even when a bias ``Add`` follows; fusing is a pass's job.
"""

from __future__ import annotations

from bitfold.ir.onnx_import.converters._common import aten
from bitfold.ir.onnx_import.registry import NodeContext, converter
from bitfold.ir.onnx_import.values import Value


@converter("MatMul", versions=(1, 13))
def _matmul(ctx: NodeContext) -> Value:
    return ctx.b.call(aten.matmul.default, ctx.input(0), ctx.input(1))


def _is_bias_for(ctx: NodeContext, c: int, b: int) -> bool:
    """Input ``c`` is 1-D with as many entries as ``B`` (``[N, K]``) has rows."""
    c_type, b_type = ctx.type_of(c), ctx.type_of(b)
    if c_type is None or b_type is None or c_type.dims is None or b_type.dims is None:
        return False
    if len(c_type.dims) != 1 or len(b_type.dims) != 2:
        return False
    return c_type.dims[0] is not None and c_type.dims[0] == b_type.dims[0]


@converter("Gemm", versions=(7, 13))
def _gemm(ctx: NodeContext) -> Value:
    a, b, c = ctx.input(0), ctx.input(1), ctx.input(2)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    if trans_b and not trans_a and alpha == 1.0 and (c is None or (beta == 1.0 and _is_bias_for(ctx, 2, 1))):
        return ctx.b.call(aten.linear.default, a, b, c)
    if trans_a:
        a = ctx.b.call(aten.permute.default, a, [1, 0])
    if trans_b:
        b = ctx.b.call(aten.permute.default, b, [1, 0])
    y = ctx.b.call(aten.matmul.default, a, b)
    if alpha != 1.0:
        y = ctx.b.call(aten.mul.Tensor, y, alpha)
    if c is None or beta == 0.0:
        return y
    if beta != 1.0:
        c = ctx.b.call(aten.mul.Tensor, c, beta)
    return ctx.b.call(aten.add.Tensor, y, c)


@converter("Einsum", versions=(12, 28))
def _einsum(ctx: NodeContext) -> Value:
    equation = ctx.attr("equation").replace(" ", "")
    return ctx.b.call(aten.einsum.default, equation, list(ctx.inputs))
