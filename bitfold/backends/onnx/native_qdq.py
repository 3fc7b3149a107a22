"""Formats that ONNX ``QuantizeLinear``/``DequantizeLinear`` express exactly in ONNX Runtime.

ONNX (opset 21) has ``int8``, ``uint8``, ``int4``, ``uint4``, ``float8e4m3fn`` and
``float8e5m2`` quantized types, and ONNX Runtime 1.32's CPU provider implements
QuantizeLinear/DequantizeLinear for all of them (per tensor, per axis and blocked). It
divides by the scale (not a multiply by its reciprocal) and rounds half to even,
saturating, so ``DQ(Q(x))`` equals bitfold's quantizer bit for bit (tested in
``tests/backends/onnx/test_quantizers.py``). Not used, after checking:

* ``float4e2m1`` (opset 23): ONNX Runtime 1.32 has no CPU kernel for QuantizeLinear,
  DequantizeLinear or Cast on it, so E2M1 goes through the ``ExMy`` subgraph;
* ``int2``/``uint2`` exist only from opset 25; bitfold exports opset 21 and uses the
  integer subgraph for them;
* bitfold's LLM-FP ``e4m3``/``e5m2`` are not ``float8e4m3fn``/``float8e5m2``: they have no
  NaN/Inf codes, so their largest values (480, 114688) do not exist in the ONNX types.
  Only the ml_dtypes formats ``fp8_e4m3`` and ``fp8_e5m2`` map to them.
"""

from __future__ import annotations

from typing import Optional

import ml_dtypes
import numpy as np
from onnx import TensorProto, numpy_helper

from bitfold.backends.onnx.emitter import Emitter
from bitfold.ir.formats import FloatFormat, Format, IntFormat

_INT_TYPES = {
    (8, True): (TensorProto.INT8, np.int8),
    (8, False): (TensorProto.UINT8, np.uint8),
    (4, True): (TensorProto.INT4, ml_dtypes.int4),
    (4, False): (TensorProto.UINT4, ml_dtypes.uint4),
}
_FLOAT_TYPES = {
    (4, 3, 7, "fn"): (TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn),
    (5, 2, 15, "ieee"): (TensorProto.FLOAT8E5M2, ml_dtypes.float8_e5m2),
}


def native_type(fmt: Format) -> Optional[tuple]:
    """``(onnx element type, numpy dtype)`` when ``fmt`` has an exact ONNX Q/DQ type, else ``None``."""
    if isinstance(fmt, IntFormat):
        return _INT_TYPES.get((fmt.bits, fmt.signed))
    if isinstance(fmt, FloatFormat):
        return _FLOAT_TYPES.get((fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.special))
    return None


def typed_zero_point(fmt: Format, zero_point: Optional[np.ndarray], shape: tuple, hint: str,
                     em: Emitter) -> Optional[str]:
    """The zero-point constant in ``fmt``'s ONNX type, or ``None`` when it is 0 everywhere
    (then QuantizeLinear's ``output_dtype`` names the type and no 4-bit initializer is needed)."""
    if zero_point is None or not np.any(np.round(zero_point)):
        return None
    _, dtype = native_type(fmt)
    return em.const(numpy_helper.from_array(np.round(zero_point).reshape(shape).astype(dtype)), hint)


def quantize_dequantize(
    em: Emitter, x: str, fmt: Format, scale: str, zero_point: Optional[str], axis: Optional[int] = None
) -> str:
    """``DequantizeLinear(QuantizeLinear(x))`` with a per-tensor or per-``axis`` scale."""
    onnx_type, _ = native_type(fmt)
    q = em.op("QuantizeLinear", x, scale, zero_point, axis=axis, hint=f"{fmt.name}_codes",
              output_dtype=onnx_type if zero_point is None else None)
    return em.op("DequantizeLinear", q, scale, zero_point, axis=axis, hint=f"{fmt.name}_dequantized")
