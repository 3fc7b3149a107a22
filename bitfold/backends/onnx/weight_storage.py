"""Compressed weights: low-bit codes as ONNX initializers, and the nodes that decode them.

A linear's weight ``Ŵ`` (``[N, K]``, codes plus scales) is stored transposed, ``[K, N]``,
so that ``MatMul(x, decoded)`` needs no Transpose at run time, in the smallest container
ONNX Runtime can read:

* ``int8``/``uint8``/``int4``/``uint4`` and ``fp8_e4m3``/``fp8_e5m2``: an initializer of
  that ONNX type (4-bit types pack two codes per byte, low nibble first) decoded by
  ``DequantizeLinear`` — per output channel (``axis=1``) or blocked along K
  (``axis=0, block_size=g``), with the zero point in the same type;
* every other format (LLM-FP ``ExMy`` with any bias — ONNX Runtime implements no
  ``float4e2m1`` kernel —, NF4, POST, 3-bit integers, MX elements): the codes as
  ``uint4`` (up to 4 bits) or ``uint8`` (5 to 8 bits), decoded by
  ``Gather(code table, Cast(codes))``, then the zero point subtracted and the scale
  multiplied, per channel or per group (``[G, g, N] · [G, 1, N]``).

Both decodings are bitfold's own, operation for operation: a table value, minus the
rounded zero point, times the scale. Note that ONNX Runtime itself rewrites a blocked
``int4``/``uint4`` DequantizeLinear feeding MatMul into MatMulNBits, at the accuracy level
of its session option ``session.qdq_matmulnbits_accuracy_level`` (default 4: int8
activations); :func:`~bitfold.backends.onnx.runtime.ort_session` can set it. MX block scales are stored as their E8M0 byte and
decoded by a 256-entry table of powers of two; other scales are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import ml_dtypes
import numpy as np
import torch
from onnx import TensorProto, numpy_helper

from bitfold.backends.onnx.emitter import Emitter
from bitfold.backends.onnx.native_qdq import native_type
from bitfold.ir import formats
from bitfold.ir.formats import BlockFormat, Format, IntFormat
from bitfold.ir.ops import PackedWeight


@dataclass(frozen=True)
class StoredWeight:
    """How a weight was stored: the ONNX container type and the decoding used."""

    container: str
    decode: str
    stored_bytes: int


def weight_codes(weight: PackedWeight) -> np.ndarray:
    """The ``[N, K]`` codes (uint8) of a packed weight."""
    f = formats.get(weight.fmt)
    codes = formats.unpack(weight.packed, f.bits, weight.out_features * weight.in_features)
    return codes.reshape(weight.out_features, weight.in_features).numpy()


def group_size(weight: PackedWeight) -> Optional[int]:
    """Input channels per scale (``None``: one scale per output channel)."""
    f = formats.get(weight.fmt)
    return f.block_size if isinstance(f, BlockFormat) else weight.group_size


def _scale_kn(weight: PackedWeight) -> np.ndarray:
    """The scale as ``[N]`` (per channel) or ``[G, N]`` (per group), float32."""
    scale = weight.scale.detach().to(torch.float32).numpy()
    return scale.reshape(-1) if group_size(weight) is None else scale.reshape(weight.out_features, -1).T.copy()


def _zero_kn(weight: PackedWeight) -> Optional[np.ndarray]:
    if weight.zero_point is None:
        return None
    zero = np.round(weight.zero_point.detach().to(torch.float32).numpy())
    return zero.reshape(-1) if group_size(weight) is None else zero.reshape(weight.out_features, -1).T.copy()


def emit_weight(em: Emitter, weight: PackedWeight, hint: str) -> Tuple[str, StoredWeight]:
    """Nodes producing the float32 ``[K, N]`` weight from its stored codes; returns its name."""
    f = formats.get(weight.fmt)
    codes_kn = weight_codes(weight).T.copy()
    native = native_type(f)
    if native is not None:
        return _emit_dequantize_linear(em, weight, f, codes_kn, native, hint)
    return _emit_gather(em, weight, f, codes_kn, hint)


def _emit_dequantize_linear(em: Emitter, weight: PackedWeight, f: Format, codes_kn: np.ndarray, native: tuple,
                            hint: str) -> Tuple[str, StoredWeight]:
    onnx_type, dtype = native
    if isinstance(f, IntFormat):
        values = f.codes.numpy()[codes_kn].astype(np.int32).astype(dtype)
    else:
        values = codes_kn.astype(np.uint8).view(dtype)
    tensor = numpy_helper.from_array(values)
    codes = em.const(tensor, f"{hint}_codes")
    scale_kn = _scale_kn(weight)
    scale = em.const(scale_kn, f"{hint}_scale")
    zero_kn = _zero_kn(weight)
    zero_values = np.zeros(scale_kn.shape, np.float32) if zero_kn is None else zero_kn
    zero = em.const(numpy_helper.from_array(zero_values.astype(dtype)), f"{hint}_zero_point")
    g = group_size(weight)
    attrs = {"axis": 1} if g is None else {"axis": 0, "block_size": g}
    out = em.op("DequantizeLinear", codes, scale, zero, hint=f"{hint}_dequantized", **attrs)
    size = len(tensor.raw_data) + scale_kn.nbytes + zero_values.size * (f.bits / 8)
    name = TensorProto.DataType.Name(onnx_type).lower()
    return out, StoredWeight(name, f"DequantizeLinear({name})", int(size))


def _scale_values(em: Emitter, weight: PackedWeight, f: Format, hint: str) -> Tuple[str, int]:
    """The scale constant, shaped to broadcast against ``[K, N]`` or ``[G, g, N]``, and its stored bytes."""
    scale_kn = _scale_kn(weight)
    if group_size(weight) is None:
        return em.const(scale_kn.reshape(1, -1), f"{hint}_scale"), scale_kn.nbytes
    if isinstance(f, BlockFormat) and f.scale_kind == "e8m0":
        codes = f.scale_codes(torch.from_numpy(scale_kn)).numpy()
        powers = np.ldexp(np.float32(1), np.arange(-127, 128, dtype=np.int32)).astype(np.float32)
        table = np.append(powers, np.float32(np.nan))  # E8M0's code 255 is NaN
        stored = em.const(codes[:, None, :], f"{hint}_scale_e8m0")
        decoded = em.op("Gather", em.const(table, f"{hint}_e8m0_table"), em.op("Cast", stored, to=TensorProto.INT64),
                        hint=f"{hint}_scale")
        return decoded, codes.nbytes
    return em.const(scale_kn[:, None, :], f"{hint}_scale"), scale_kn.nbytes


def _emit_gather(em: Emitter, weight: PackedWeight, f: Format, codes_kn: np.ndarray,
                 hint: str) -> Tuple[str, StoredWeight]:
    K, N = codes_kn.shape
    g = group_size(weight)
    padded_k = K if g is None else -(-K // g) * g
    if padded_k != K:
        codes_kn = np.concatenate([codes_kn, np.zeros((padded_k - K, N), codes_kn.dtype)])
    if f.bits <= 4:
        container, dtype = "uint4", ml_dtypes.uint4
    else:
        container, dtype = "uint8", np.uint8
    tensor = numpy_helper.from_array(codes_kn.astype(dtype))
    codes = em.const(tensor, f"{hint}_codes")
    table = f.codes.numpy().astype(np.float32)
    values = em.op("Gather", em.const(table, f"{hint}_code_table"), em.op("Cast", codes, to=TensorProto.INT64),
                   hint=f"{hint}_levels")
    size = len(tensor.raw_data)
    zero_kn = _zero_kn(weight)
    if g is not None:
        values = em.op("Reshape", values, em.ints([padded_k // g, g, N], f"{hint}_group_view"))
    if zero_kn is not None:
        zero = zero_kn.reshape(1, -1) if g is None else zero_kn[:, None, :]
        zero = zero.astype(np.float32)
        values = em.op("Sub", values, em.const(zero, f"{hint}_zero_point"), hint=f"{hint}_centered")
        size += zero.nbytes
    scale, scale_bytes = _scale_values(em, weight, f, hint)
    out = em.op("Mul", values, scale, hint=f"{hint}_dequantized")
    if g is not None:
        out = em.op("Reshape", out, em.ints([padded_k, N], f"{hint}_flat_view"))
        if padded_k != K:
            out = em.op("Slice", out, em.ints([0], "start"), em.ints([K], f"{hint}_rows"), em.ints([0], "axis0"))
    return out, StoredWeight(container, f"Gather({container} codes)", size + scale_bytes)
