"""Lowerings of bitfold's own operators (:mod:`bitfold.ir.ops`) to Relax.

* ``bitfold::fake_quantize`` → one TE kernel (:func:`.lower_fake_quantize.fake_quantize_te`),
  bit-exact with the PyTorch simulation for every format it can carry;
* ``bitfold::quantized_linear`` → the low-bit GEMM/GEMV of :mod:`bitfold.codegen`, called with
  ``call_tir`` on the input flattened to ``[M, K]`` and the packed weight-side arrays (with
  ``int8_activations``, its W4A8 variant). A format or layout without a kernel is an error
  naming the node: the backend never silently substitutes a dequantized dense product;
* ``bitfold::fused_linear`` / ``bitfold::fused_conv2d`` → :mod:`.lower_dense`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

import numpy as np
import torch
from torch import fx
from tvm import relax

from bitfold.backends.tvm.importer import LoweringError, node_label
from bitfold.backends.tvm.lower_codebook_linear import lower_codebook_linear
from bitfold.backends.tvm.kernel_call import call_row_kernel
from bitfold.backends.tvm.lower_dense import emit_conv2d, emit_linear
from bitfold.backends.tvm.lower_fake_quantize import codebook_grid, fake_quantize_te

if TYPE_CHECKING:
    from bitfold.backends.tvm.importer import Converter, GraphImporter

bitfold_ops = torch.ops.bitfold


def op_arguments(node: fx.Node) -> Dict[str, Any]:
    """``node``'s arguments by schema name, defaults filled in."""
    schema = node.target._schema
    values: Dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            values[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            values[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            values[arg.name] = arg.default_value
        else:
            raise LoweringError(f"{node_label(node)}: missing argument {arg.name!r}")
    return values


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

        spec = codegen.spec_from_node(node, int8_activations=imp.int8_activations)
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


def converters(imp: "GraphImporter") -> Dict[Any, "Converter"]:
    """Converters keyed by the bitfold op overloads themselves."""
    table = {
        bitfold_ops.fake_quantize.default: _fake_quantize,
        bitfold_ops.quantized_linear.default: _quantized_linear,
        bitfold_ops.codebook_linear.default: lower_codebook_linear,
        bitfold_ops.fused_linear.default: _fused_linear,
        bitfold_ops.fused_conv2d.default: _fused_conv2d,
    }
    return {op: (lambda node, fn=fn: fn(imp, node)) for op, fn in table.items()}
