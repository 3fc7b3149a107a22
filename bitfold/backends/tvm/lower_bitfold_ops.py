"""Lowerings of bitfold's own operators (:mod:`bitfold.ir.ops`) to Relax.

* ``bitfold::fake_quantize`` → one TE kernel (:func:`.lower_fake_quantize.fake_quantize_te`),
  bit-exact with the PyTorch simulation for every format it can carry;
* ``bitfold::quantized_linear`` → the low-bit GEMM/GEMV of :mod:`bitfold.codegen`, called with
  ``call_tir`` on the input flattened to ``[M, K]`` and the packed weight-side arrays (with
  ``int8_activations``, its W4A8 variant; with ``lookup_tables``, the lookup-table variant for
  2-bit integer weights). A format or layout without a kernel is an error
  naming the node: the backend never silently substitutes a dequantized dense product;
* ``bitfold::fused_linear`` / ``bitfold::fused_conv2d`` → :mod:`.lower_dense`;
* ``bitfold::quantized_embedding`` → :mod:`.lower_quantized_embedding` (rows decoded from
  the packed table as they are looked up);
* ``bitfold::quantized_conv2d`` → :mod:`.lower_quantized_conv2d` (the packed weight decoded in
  the module, then ``conv2d``);
* ``bitfold::gelu`` → the steps of :func:`bitfold.ir.stable_gelu.spell_gelu` as Relax
  elementwise ops (fused into one kernel; ``exp`` becomes ``fast_exp`` like every other);
* ``bitfold::hadamard`` → :mod:`bitfold.codegen.hadamard`'s kernel on the input viewed as
  ``[groups, block]`` (the same butterflies as PyTorch, bit-identical).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict

import numpy as np
import torch
from torch import fx
from tvm import relax

from bitfold.backends.tvm.importer import LoweringError, dtype_of, node_label, op_arguments
from bitfold.backends.tvm.lower_codebook_linear import lower_codebook_linear
from bitfold.backends.tvm.kernel_call import call_row_kernel
from bitfold.backends.tvm.lower_dense import emit_conv2d, emit_linear
from bitfold.backends.tvm.lower_fake_quantize import codebook_grid, fake_quantize_te
from bitfold.backends.tvm.lower_quantized_conv2d import lower_quantized_conv2d
from bitfold.backends.tvm.lower_quantized_embedding import lower_quantized_embedding
from bitfold.codegen.hadamard import build_hadamard_kernel
from bitfold.ir.hadamard import HadamardError, check_block
from bitfold.ir.stable_gelu import APPROXIMATIONS, spell_gelu

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import Converter, GraphImporter

bitfold_ops = torch.ops.bitfold


def _fake_quantize(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    a = op_arguments(node)
    x = imp.env[a["x"]]
    scale = None if a["scale"] is None else imp.env[a["scale"]]
    zero_point = None if a["zero_point"] is None else imp.env[a["zero_point"]]
    levels = codebook_grid(a["fmt"])
    grid = None if levels is None else relax.const(np.asarray(levels, dtype="float32"))
    return imp.block_builder.emit_te(
        fake_quantize_te, x, scale, zero_point, grid, a["fmt"], a["axis"], a["group_size"],
        primfunc_name_hint="fake_quantize")


def _quantized_linear(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    try:
        from bitfold import codegen
        from bitfold.codegen.inputs import lookup_supported

        spec = codegen.spec_from_node(node)
        plan = codegen.decode_plan(spec.weight_format)
        lookup = imp.lookup_tables and plan.bits == 2 and lookup_supported(plan)
        spec = dataclasses.replace(spec, int8_activations=imp.int8_activations and not lookup, lookup_tables=lookup)
        arrays = codegen.kernel_inputs(spec, node, imp.gm)
        prim = codegen.build_linear_kernel(spec, imp.target)
    except Exception as err:  # no kernel for this format/layout, or codegen not available
        raise LoweringError(
            f"{node_label(node)}: bitfold.codegen has no low-bit kernel for it on {imp.target.kind.name} "
            f"({type(err).__name__}: {err}); bitfold does not fall back to a dense product") from err
    a = op_arguments(node)
    return call_row_kernel(imp, imp.env[a["x"]], prim, codegen.kernel_name(spec, None), arrays,
                           a["out_features"], node.name)


def _fused_linear(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    a = op_arguments(node)
    return emit_linear(imp, node, a["x"], a["weight"], a["bias"], a["activation"])


def _fused_conv2d(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    return emit_conv2d(imp, node, op_arguments(node))


class RelaxArithmetic:
    """:class:`~bitfold.ir.stable_gelu.Arithmetic` emitting Relax ops of one dtype, one binding per step."""

    def __init__(self, builder: relax.BlockBuilder, dtype: str) -> None:
        self.emit = builder.emit
        self.dtype = dtype

    def const(self, value: float) -> relax.Expr:
        return relax.const(value, self.dtype)

    def abs(self, x: relax.Expr) -> relax.Expr:
        return self.emit(relax.op.abs(x))

    def add(self, a: relax.Expr, b: relax.Expr) -> relax.Expr:
        return self.emit(relax.op.add(a, b))

    def sub(self, a: relax.Expr, b: relax.Expr) -> relax.Expr:
        return self.emit(relax.op.subtract(a, b))

    def mul(self, a: relax.Expr, b: relax.Expr) -> relax.Expr:
        return self.emit(relax.op.multiply(a, b))

    def div(self, a: relax.Expr, b: relax.Expr) -> relax.Expr:
        return self.emit(relax.op.divide(a, b))

    def exp(self, x: relax.Expr) -> relax.Expr:
        return self.emit(relax.op.exp(x))

    def where_negative(self, x: relax.Expr, if_negative: relax.Expr, otherwise: relax.Expr) -> relax.Expr:
        negative = self.emit(relax.op.less(x, self.const(0.0)))
        return self.emit(relax.op.where(negative, if_negative, otherwise))


def _gelu(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    a = op_arguments(node)
    if a["approximate"] not in APPROXIMATIONS:
        raise LoweringError(f"{node_label(node)}: approximate={a['approximate']!r} is not one of {APPROXIMATIONS}")
    x = imp.env[a["x"]]
    return spell_gelu(x, RelaxArithmetic(imp.block_builder, dtype_of(x)), a["approximate"])


def _hadamard(imp: "GraphImporter", node: fx.Node) -> relax.Expr:
    a = op_arguments(node)
    x = imp.env[a["x"]]
    block, shape = a["block"], list(x.ty.shape)
    try:
        check_block(block, int(shape[-1]))
    except (HadamardError, TypeError) as err:
        raise LoweringError(f"{node_label(node)}: {err}") from None
    if dtype_of(x) != "float32":
        raise LoweringError(f"{node_label(node)}: the Hadamard kernel is float32, the input is {dtype_of(x)}")
    groups = 1
    for d in shape:
        groups = groups * d
    flat = imp.emit(relax.op.reshape(x, [groups // block, block]))
    kernel = imp.block_builder.add_func(build_hadamard_kernel(block, imp.target), f"bitfold_hadamard{block}")
    y = imp.emit(relax.call_tir(kernel, [flat], flat.ty))
    return imp.emit(relax.op.reshape(y, shape))


def converters(imp: "GraphImporter") -> Dict[Any, "Converter"]:
    """Converters keyed by the bitfold op overloads themselves."""
    table = {
        bitfold_ops.fake_quantize.default: _fake_quantize,
        bitfold_ops.quantized_linear.default: _quantized_linear,
        bitfold_ops.codebook_linear.default: lower_codebook_linear,
        bitfold_ops.fused_linear.default: _fused_linear,
        bitfold_ops.fused_conv2d.default: _fused_conv2d,
        bitfold_ops.gelu.default: _gelu,
        bitfold_ops.hadamard.default: _hadamard,
        bitfold_ops.quantized_embedding.default: lower_quantized_embedding,
        bitfold_ops.quantized_conv2d.default: lower_quantized_conv2d,
    }
    return {op: (lambda node, fn=fn: fn(imp, node)) for op, fn in table.items()}
