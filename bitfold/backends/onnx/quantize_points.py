"""Emit one fake-quantize point: Q/DQ where ONNX Runtime has the type, a function otherwise.

:func:`emit_quantizer` is what the ``fake_quantize`` lowering (and any other lowering
that needs a quantizer) calls. It chooses, per format:

* ``QuantizeLinear`` → ``DequantizeLinear`` for the types of
  :mod:`~bitfold.backends.onnx.native_qdq`, per tensor or per axis, when the zero point
  is a constant;
* otherwise a call of the format's local function (one definition per format, in the
  ``bitfold.quant`` domain): ``ExMy`` formats (any bias; real or per-channel biases are
  scales), integers of other widths, NF4/POST codebooks, and MX/NVFP4 blocks.

Scales per channel or per group are constants here; they are reshaped (groups: repeated
to full length along their axis) so that they broadcast against ``x``, which makes the
function bodies granularity-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from bitfold.backends.onnx.block_quantizer import block_quantizer_body
from bitfold.backends.onnx.codebook_quantizer import nearest_level
from bitfold.backends.onnx.emitter import Emitter
from bitfold.backends.onnx.errors import OnnxExportError
from bitfold.backends.onnx.float_quantizer import round_to_grid
from bitfold.backends.onnx.functions import FunctionLibrary, scaled_quantizer_body
from bitfold.backends.onnx.int_quantizer import int_quantizer_body
from bitfold.backends.onnx.native_qdq import native_type, quantize_dequantize, typed_zero_point
from bitfold.ir.formats import BlockFormat, CodebookFormat, FloatFormat, Format, IntFormat

Tensorish = Union[str, np.ndarray]


@dataclass(frozen=True)
class QuantizePoint:
    """What one quantizer needs: format, scale (a constant or a graph value) and layout."""

    fmt: Format
    scale: Optional[Tensorish]
    zero_point: Optional[Tensorish] = None
    axis: Optional[int] = None
    group_size: Optional[int] = None


def _function_name(fmt: Format, suffix: str = "") -> str:
    return "FakeQuantize_" + "".join(c if c.isalnum() else "_" for c in fmt.name) + suffix


def _broadcast(value: np.ndarray, qp: QuantizePoint, shape: Optional[Sequence[Optional[int]]], where: str,
               what: str) -> np.ndarray:
    """``value`` laid out to broadcast against a tensor of ``shape`` (see the module docstring)."""
    value = np.asarray(value, dtype=np.float32)
    if qp.axis is None or value.size == 1:
        return value.reshape(()) if value.size == 1 else value
    if shape is None:
        raise OnnxExportError(f"{where}: a per-channel {what} needs the rank of its input, which is unknown")
    rank = len(shape)
    axis = qp.axis % rank
    if qp.group_size is None:
        view = [1] * rank
        view[axis] = value.size
        return value.reshape(view)
    size = shape[axis]
    if size is None:
        raise OnnxExportError(f"{where}: a per-group {what} needs a static size along axis {axis}")
    if value.ndim == 1:
        view = [1] * rank
        view[axis] = value.size
        value = value.reshape(view)
    return np.repeat(value, qp.group_size, axis=axis).take(np.arange(size), axis=axis)


def _per_axis_ok(qp: QuantizePoint, scale: np.ndarray) -> bool:
    return qp.group_size is None and (scale.size == 1 or scale.ndim == 1)


def emit_quantizer(
    em: Emitter, library: FunctionLibrary, x: str, qp: QuantizePoint,
    shape: Optional[Sequence[Optional[int]]], where: str,
) -> str:
    """Nodes computing ``fmt.quantize(x, scale, axis, group_size, zero_point)``; returns the output name."""
    fmt = qp.fmt
    hint = f"{fmt.name}_quantize"
    if isinstance(fmt, BlockFormat):
        return _emit_block(em, library, x, qp, shape, where)
    if qp.scale is None:
        raise OnnxExportError(f"{where}: format {fmt.name} needs a scale")
    const_scale = None if isinstance(qp.scale, str) else np.asarray(qp.scale, np.float32)
    const_zero = None if qp.zero_point is None or isinstance(qp.zero_point, str) else np.asarray(qp.zero_point)
    if qp.axis is not None and const_scale is None:
        raise OnnxExportError(f"{where}: a per-channel or per-group scale must be a constant to export")
    if native_type(fmt) is not None and (qp.zero_point is None or const_zero is not None) and (
            const_scale is None or _per_axis_ok(qp, const_scale)):
        per_axis = const_scale is not None and const_scale.size > 1
        scale = qp.scale if const_scale is None else em.const(
            const_scale.reshape(-1) if per_axis else const_scale.reshape(()), "scale")
        zshape = (const_scale.size,) if per_axis else ()
        zero = typed_zero_point(fmt, const_zero, zshape, "zero_point", em)
        axis = None if not per_axis else qp.axis % len(shape) if shape is not None else qp.axis
        return quantize_dequantize(em, x, fmt, scale, zero, axis)
    scale = qp.scale if const_scale is None else em.const(_broadcast(const_scale, qp, shape, where, "scale"), "scale")
    if isinstance(fmt, (FloatFormat, CodebookFormat)):
        rounding = round_to_grid if isinstance(fmt, FloatFormat) else nearest_level
        body = scaled_quantizer_body(lambda e, y: rounding(e, y, fmt))
        return library.call(em, _function_name(fmt), [x, scale], ["x", "scale"], body,
                            f"bitfold {fmt.name} fake-quantizer (exact to bitfold's PyTorch one)", hint)
    if isinstance(fmt, IntFormat):
        if qp.zero_point is None:
            return library.call(em, _function_name(fmt), [x, scale], ["x", "scale"],
                                int_quantizer_body(fmt, False), f"bitfold {fmt.name} fake-quantizer", hint)
        zero = qp.zero_point if const_zero is None else em.const(
            _broadcast(const_zero, qp, shape, where, "zero point"), "zero_point")
        return library.call(em, _function_name(fmt, "_zero_point"), [x, scale, zero], ["x", "scale", "zero_point"],
                            int_quantizer_body(fmt, True), f"bitfold {fmt.name} fake-quantizer with zero point",
                            hint)
    raise OnnxExportError(f"{where}: format {fmt.name} ({type(fmt).__name__}) has no ONNX quantizer")


def _emit_block(em: Emitter, library: FunctionLibrary, x: str, qp: QuantizePoint,
                shape: Optional[Sequence[Optional[int]]], where: str) -> str:
    fmt = qp.fmt
    if qp.scale is not None or qp.zero_point is not None:
        raise OnnxExportError(f"{where}: {fmt.name} computes its block scales from the data; "
                              "exporting given block scales is not supported")
    if shape is None:
        raise OnnxExportError(f"{where}: {fmt.name} needs the rank of its input, which is unknown")
    rank = len(shape)
    axis = -1 if qp.axis is None else qp.axis
    axis %= rank
    perm = list(range(rank))
    if axis != rank - 1:
        perm = [d for d in range(rank) if d != axis] + [axis]
        x = em.op("Transpose", x, perm=perm, hint="block_axis_last")
    y = library.call(em, _function_name(fmt, f"_rank{rank}"), [x], ["x"], block_quantizer_body(fmt, rank),
                     f"bitfold {fmt.name} fake-quantizer (blocks of {fmt.block_size} along the last axis)",
                     f"{fmt.name}_quantize")
    if axis != rank - 1:
        y = em.op("Transpose", y, perm=list(np.argsort(perm)), hint="block_axis_back")
    return y
