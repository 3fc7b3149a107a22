"""Dense (fp32) linear and 2-D convolution with bias and activation, as Relax ops.

``y = act(x Wᵀ + b)``: the weight is laid out once, at import time, for the GEMM that reads
it. On CPU it is packed into column panels ``Wp[N/nr, K, nr]`` (``Wp[p, k, c] = W[p·nr + c, k]``,
``nr`` = the micro-kernel's two vectors): the kernel streams one contiguous panel per tile
instead of ``K`` rows ``N·4`` bytes apart, which for ``N`` a multiple of 1024 map onto the
same few L1 sets (MiniLM's 384→1536 layer ran at a third of the speed of the 384→384 one
before packing). Elsewhere the weight is transposed to ``Wᵀ`` (``[K, N]``) for ``matmul``.
The bias add and activation follow as elementwise ops that Relax's ``FuseOps`` puts into
the GEMM's kernel. A weight that is not a constant falls back to ``relax.op.linear``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from torch import fx
from tvm import relax, te, tirx

from bitfold.backends.tvm.importer import LoweringError, dtype_of, node_label, to_numpy
from bitfold.ir.graph_utils import attr_value

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import GraphImporter


def apply_activation(imp: "GraphImporter", y: relax.Expr, activation: str, node: fx.Node) -> relax.Expr:
    """``activation(y)`` with the same definitions as :mod:`bitfold.ir.ops`."""
    op = relax.op
    dtype = dtype_of(y)

    def c(value: float) -> relax.Expr:
        return relax.const(value, dtype)

    if activation == "none":
        return y
    simple = {"relu": op.nn.relu, "gelu": op.nn.gelu, "gelu_tanh": op.nn.gelu_tanh, "silu": op.nn.silu,
              "sigmoid": op.sigmoid, "tanh": op.tanh}
    if activation in simple:
        return imp.emit(simple[activation](y))
    if activation == "relu6":
        return imp.emit(op.clip(y, 0.0, 6.0))
    if activation == "hardsigmoid":  # relu6(y + 3) / 6
        return imp.emit(op.divide(op.clip(op.add(y, c(3.0)), 0.0, 6.0), c(6.0)))
    if activation == "hardswish":  # y · relu6(y + 3) / 6
        return imp.emit(op.divide(op.multiply(y, op.clip(op.add(y, c(3.0)), 0.0, 6.0)), c(6.0)))
    raise LoweringError(f"{node_label(node)}: unknown activation {activation!r}")


def pack_panels(weight: np.ndarray, nr: int) -> np.ndarray:
    """``[N, K]`` weight → ``[N/nr, K, nr]`` column panels (``N`` divisible by ``nr``)."""
    n, k = weight.shape
    return np.ascontiguousarray(weight.reshape(n // nr, nr, k).transpose(0, 2, 1))


def dense_packed_te(x: te.Tensor, panels: te.Tensor) -> te.Tensor:
    """``y[..., i, j] = Σ_k x[..., min(i, M-1), k] · Wp[j // nr, k, j % nr]`` (no bias).

    The row index is clamped (a no-op inside the domain) so that the CPU schedule may run
    whole row tiles past ``M`` without a guard in the inner loop: the extra rows re-read
    row ``M-1`` and their results are never written back (see :mod:`.schedule_cpu`).
    """
    p, k_dim, nr = panels.shape
    k = te.reduce_axis((0, k_dim), name="k")
    last_row = x.shape[-2] - 1 if len(x.shape) >= 2 else None

    def body(*idx):
        j = idx[-1]
        rows = (*idx[:-2], tirx.min(idx[-2], last_row)) if last_row is not None else idx[:-1]
        return te.sum(x[(*rows, k)] * panels[tirx.floordiv(j, nr), k, tirx.floormod(j, nr)], axis=k)

    return te.compute((*x.shape[:-1], p * nr), body, name="dense")


def emit_linear(
    imp: "GraphImporter", node: fx.Node, x_node: Any, w_node: Any, b_node: Optional[Any], activation: str
) -> relax.Expr:
    """``activation(x Wᵀ + b)`` for ``aten.linear`` and ``bitfold::fused_linear``."""
    x = imp.env[x_node]
    weight = attr_value(imp.gm, w_node)
    bias = imp.env[b_node] if b_node is not None else None
    if weight is None:
        y = imp.emit(relax.op.linear(x, imp.env[w_node], bias))
        return apply_activation(imp, y, activation, node)
    if weight.dim() != 2 or weight.shape[1] != x.ty.shape[-1]:
        raise LoweringError(
            f"{node_label(node)}: weight of shape {tuple(weight.shape)} does not fit an input with "
            f"{x.ty.shape[-1]} features")
    w = to_numpy(weight).astype(dtype_of(x))
    nr = imp.panel_width
    if nr and w.shape[0] % nr == 0:
        panels = imp.tensor_value(pack_panels(w, nr), f"{w_node.target}.panels{nr}")
        y = imp.block_builder.emit_te(dense_packed_te, x, panels, primfunc_name_hint="dense")
    else:
        y = imp.emit(relax.op.matmul(x, imp.tensor_value(np.ascontiguousarray(w.T), f"{w_node.target}.T")))
    if bias is not None:
        y = imp.emit(relax.op.add(y, bias))
    return apply_activation(imp, y, activation, node)


def conv2d_values(imp: "GraphImporter", x: relax.Expr, w: relax.Expr, bias: Optional[relax.Expr], stride, padding,
                  dilation, groups: int) -> relax.Expr:
    """``conv2d(x, w) + bias`` (NCHW, OIHW) of Relax values."""
    y = imp.emit(relax.op.nn.conv2d(x, w, strides=list(stride), padding=list(padding), dilation=list(dilation),
                                    groups=int(groups), out_dtype=dtype_of(x)))
    if bias is not None:
        y = imp.emit(relax.op.add(y, imp.emit(relax.op.reshape(bias, [1, -1, 1, 1]))))
    return y


def emit_conv2d(imp: "GraphImporter", node: fx.Node, args: dict) -> relax.Expr:
    """``activation(conv2d(x, W, b, stride, padding, dilation, groups))`` (NCHW, OIHW)."""
    bias = imp.env[args["bias"]] if args["bias"] is not None else None
    y = conv2d_values(imp, imp.env[args["x"]], imp.env[args["weight"]], bias, args["stride"], args["padding"],
                      args["dilation"], args["groups"])
    return apply_activation(imp, y, args["activation"], node)
