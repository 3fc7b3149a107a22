"""Lowerings of the ATen overloads that TVM's converter map lacks or that bitfold lowers itself.

* ``sym_size.int``: the size as a TIR expression (dynamic) or a Python int (static), so that
  shape arguments such as ``view(x, [1, s, -1, 32])`` stay symbolic;
* ``to.device``: a dtype cast when one is given (bitfold compiles for one device);
* ``where.ScalarOther`` / ``where.ScalarSelf`` / ``where.Scalar``: ``where`` with Python numbers
  (the condition must already be ``bool``, as PyTorch requires);
* ``new_ones`` / ``new_zeros`` / ``ones_like`` / ``zeros_like`` / ``empty_like``: constant-filled
  tensors in the ``dtype=`` the node asks for (TVM's converters drop it and use the input's
  dtype, so a BERT attention mask built with ``new_ones(x, [], dtype=torch.bool)`` came out
  ``int64`` and the ``where`` it feeds could not be lowered);
* ``slice.Tensor``: with a symbolic bound the slice is taken as in range (``0 <= end <= size``):
  ``torch.export`` only leaves a size symbolic in a slice bound when the traced program
  indexed within it, and TVM would otherwise give the result an unknown shape;
* ``rsub.Scalar``: ``other - alpha · x`` (TVM's converter gives the number an int dtype);
* ``rms_norm.default``: ``x · rsqrt(mean(x², axes) + eps) · weight``, eps defaulting to the
  dtype's machine epsilon as in PyTorch;
* ``linear.default``: a dense product with the weight laid out for the kernel at import time
  (:func:`bitfold.backends.tvm.lower_dense.emit_linear`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import numpy as np
from torch import fx
from tvm import relax

from bitfold.backends.tvm.importer import LoweringError, dtype_of, node_label
from bitfold.backends.tvm.lower_dense import emit_linear

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import Converter, GraphImporter


def _clamp_bound(bound, size: int):
    """A Python-int slice bound clamped into ``[0, size]`` the way PyTorch does; symbols pass."""
    if not isinstance(bound, int):
        return bound
    if bound < 0:
        bound += size
    return min(max(bound, 0), size)


def converters(imp: "GraphImporter") -> Dict[str, "Converter"]:
    """Converters keyed by ATen overload name, as in TVM's ``convert_map``."""

    def sym_size(node: fx.Node):
        x = imp.env[node.args[0]]
        axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        size = x.ty.shape[axis]
        return int(size.value) if hasattr(size, "value") else size

    def to_device(node: fx.Node) -> relax.Expr:
        x = imp.env[node.args[0]]
        dtype = node.args[2] if len(node.args) > 2 else node.kwargs.get("dtype")
        if dtype is None:
            return x
        return imp.emit(relax.op.astype(x, imp._convert_data_type(dtype)))

    def where_with_scalars(node: fx.Node) -> relax.Expr:
        """``where(cond, a, b)`` where ``a`` and/or ``b`` is a Python number."""
        cond = imp.env[node.args[0]]
        if dtype_of(cond) != "bool":
            raise LoweringError(f"{node_label(node)}: the condition {node.args[0]} lowered to {dtype_of(cond)}, "
                                f"not bool (a converter upstream lost its dtype)")
        tensors = [imp.env[a] for a in node.args[1:3] if isinstance(a, fx.Node)]
        recorded = node.meta.get("val")
        if tensors:
            dtype = dtype_of(tensors[0])
        elif recorded is not None:
            dtype = imp._convert_data_type(recorded.dtype)
        else:
            dtype = "float32"
        a, b = (imp.env[v] if isinstance(v, fx.Node) else relax.const(v, dtype) for v in node.args[1:3])
        return imp.emit(relax.op.where(cond, a, b))

    def filled(value: float, shape_arg: bool):
        """``new_<value>s(x, size, dtype=)`` (``shape_arg``) or ``<value>s_like(x, dtype=)``."""

        def convert(node: fx.Node) -> relax.Expr:
            x = imp.env[node.args[0]]
            dtype = node.kwargs.get("dtype")
            dtype = dtype_of(x) if dtype is None else imp._convert_data_type(dtype)
            fill = relax.const(value, dtype)
            if not shape_arg:
                return imp.emit(relax.op.full_like(x, fill, dtype))
            size = node.args[1] if len(node.args) > 1 else node.kwargs["size"]
            shape = relax.ShapeExpr([imp.env[d] if isinstance(d, fx.Node) else d for d in size])
            return imp.emit(relax.op.full(shape, fill, dtype))

        return convert

    def slice_tensor(node: fx.Node) -> relax.Expr:
        x = imp.env[node.args[0]]
        axis, start, end, step = (list(node.args[1:]) + [0, None, None, 1][len(node.args) - 1:])[:4]
        axis %= x.ty.ndim
        size = x.ty.shape[axis]
        static = int(size.value) if hasattr(size, "value") else None
        start = 0 if start is None else imp.env[start] if isinstance(start, fx.Node) else start
        end = size if end is None else imp.env[end] if isinstance(end, fx.Node) else end
        if static is not None:
            start = _clamp_bound(start, static)
            end = _clamp_bound(end, static)
        if isinstance(start, int) and start == 0 and step == 1 and (end is size or end == static):
            return x
        return imp.emit(relax.op.strided_slice(x, [axis], [start], [end], [step], assume_inbound=True))

    def rsub_scalar(node: fx.Node) -> relax.Expr:
        """``other - alpha · x`` with the Python number ``other`` in ``x``'s dtype."""
        x = imp.env[node.args[0]]
        other = node.args[1]
        alpha = node.args[2] if len(node.args) > 2 else node.kwargs.get("alpha", 1)
        scaled = x if alpha == 1 else imp.emit(relax.op.multiply(x, relax.const(alpha, dtype_of(x))))
        return imp.emit(relax.op.subtract(relax.const(other, dtype_of(x)), scaled))

    def rms_norm(node: fx.Node) -> relax.Expr:
        x = imp.env[node.args[0]]
        shape = node.args[1]
        weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
        eps = node.args[3] if len(node.args) > 3 else node.kwargs.get("eps")
        if eps is None:
            eps = float(np.finfo(dtype_of(x)).eps)
        axes = list(range(x.ty.ndim - len(shape), x.ty.ndim))
        gamma = imp.env[weight] if weight is not None else relax.const(np.ones(shape, dtype_of(x)))
        return imp.emit(relax.op.nn.rms_norm(x, gamma, axes, float(eps)))

    def linear(node: fx.Node) -> relax.Expr:
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        return emit_linear(imp, node, node.args[0], node.args[1], bias, "none")

    return {
        "sym_size.int": sym_size,
        "to.device": to_device,
        "where.ScalarOther": where_with_scalars,
        "where.ScalarSelf": where_with_scalars,
        "where.Scalar": where_with_scalars,
        "new_ones.default": filled(1, shape_arg=True),
        "new_zeros.default": filled(0, shape_arg=True),
        "ones_like.default": filled(1, shape_arg=False),
        "zeros_like.default": filled(0, shape_arg=False),
        "empty_like.default": filled(0, shape_arg=False),
        "slice.Tensor": slice_tensor,
        "rms_norm.default": rms_norm,
        "rsub.Scalar": rsub_scalar,
        "linear.default": linear,
    }
